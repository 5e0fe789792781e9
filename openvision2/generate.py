"""Greedy captioning with a KV cache, one jitted function, for every captioning recipe.

The prefix `[visual tokens (all of them: no masking at inference) ; bos]` is
run once in `prefill` mode; each further token is a single-position `decode`
call against a fixed-size cache inside `lax.scan`, so the whole generation
compiles once per (batch, length). A model supplies its prefix through
`caption_prefix` (captioners, MM-GEM) or its own `prefill` / `decode_step`
(CoCa, whose decoder cross-attends to the image instead).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from openvision2.models import build_model
from openvision2.models.decoder import pad_cache


def _prefill(module, images, bos_ids, max_new_tokens, boxes):
    """(logits after `[bos]`, decoding state with room for `max_new_tokens`, position of `[bos]`)."""
    if hasattr(module, "prefill"):  # models whose decoder is not a prefix LM (CoCa)
        return module.prefill(images, bos_ids, max_new_tokens)
    prefix, pos = module.caption_prefix(images) if boxes is None else module.caption_prefix(images, boxes)
    n = prefix.shape[1]
    x = jnp.concatenate([prefix.astype(module.decoder.dtype), module.decoder.embed_tokens(bos_ids[:, None])], axis=1)
    pos = jnp.concatenate([pos, jnp.full((x.shape[0], 1), n, jnp.int32)], axis=1)
    logits, cache = module.decoder(x, pos)
    return logits[:, -1], pad_cache(cache, n + 1 + max_new_tokens), n


def _decode_one(module, token, position, cache, cache_index):
    if hasattr(module, "decode_step"):
        return module.decode_step(token, position, cache, cache_index)
    x = module.decoder.embed_tokens(token[:, None])
    logits, cache = module.decoder(x, position[:, None], cache, cache_index)
    return logits[:, 0], cache


def make_greedy_fn(cfg, max_new_tokens: int, bos_id: int, eos_id: int, pad_id: int = 0):
    """Returns jitted `fn(params, images_uint8, boxes=None) -> tokens [B, max_new_tokens]`.

    `boxes` [B, 4] (region-level models) captions those regions instead of whole images.
    Tokens after the first `[eos]` are `pad_id`.
    """
    prefill_model = build_model(cfg, mode="prefill")
    decode_model = build_model(cfg, mode="decode")

    @jax.jit
    def greedy(params, images, boxes=None):
        b = images.shape[0]
        logits, cache, n = prefill_model.apply(
            {"params": params}, images, jnp.full((b,), bos_id, jnp.int32), max_new_tokens, boxes, method=_prefill)
        first = jnp.argmax(logits, axis=-1).astype(jnp.int32)

        def body(carry, i):
            token, done, cache = carry
            position = jnp.full((b,), n + 1 + i, jnp.int32)
            logits, cache = decode_model.apply({"params": params}, token, position, cache, n + 1 + i,
                                               method=_decode_one)
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
