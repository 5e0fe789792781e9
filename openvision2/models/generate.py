"""Greedy captioning with a KV cache, one jitted function, for every captioning model.

A captioning model offers `prefill` and `decode_step` (see `decoder.PrefixCaptioning`; CoCa
has its own pair): the prefix is run once in `prefill` mode, and each further token is a
single-position `decode` call against a fixed-size cache inside `lax.scan`, so a whole
generation compiles once per (batch, length).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def make_greedy_fn(prefill_model, decode_model, max_new_tokens: int, bos_id: int, eos_id: int, pad_id: int = 0):
    """Returns jitted `fn(params, images_uint8, boxes=None) -> tokens [B, max_new_tokens]`.

    `prefill_model` / `decode_model` are the same model built in its prefill and decode modes.
    `boxes` [B, 4] (region-level models) captions those regions instead of whole images.
    Tokens after the first `[eos]` are `pad_id`.
    """

    @jax.jit
    def greedy(params, images, boxes=None):
        b = images.shape[0]
        logits, cache, n = prefill_model.apply(
            {"params": params}, images, jnp.full((b,), bos_id, jnp.int32), max_new_tokens, boxes, method="prefill")
        first = jnp.argmax(logits, axis=-1).astype(jnp.int32)

        def body(carry, i):
            token, done, cache = carry
            position = jnp.full((b,), n + 1 + i, jnp.int32)
            logits, cache = decode_model.apply({"params": params}, token, position, cache, n + 1 + i,
                                               method="decode_step")
            out = jnp.where(done, pad_id, token)
            done = done | (token == eos_id)
            return (jnp.argmax(logits, axis=-1).astype(jnp.int32), done, cache), out

        init = (first, jnp.zeros((b,), bool), cache)
        _, tokens = jax.lax.scan(body, init, jnp.arange(max_new_tokens))
        return tokens.T

    return greedy


def strip(tokens, eos_id: int, pad_id: int = 0) -> list[int]:
    """Token ids up to (excluding) the first eos, pads dropped."""
    out = []
    for t in list(tokens):
        t = int(t)
        if t == eos_id:
            break
        if t != pad_id:
            out.append(t)
    return out
