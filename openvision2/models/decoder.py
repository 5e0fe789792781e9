"""LLaMA-architecture text decoder with a visual prefix.

RMSNorm, SwiGLU, RoPE, no biases, optional grouped-query attention and tied
or untied embeddings: exactly HF `LlamaForCausalLM`, so a trained decoder
exports to it and a pretrained LLM can initialise it.

The input sequence is `[visual ; text]` with causal attention over all of it.
Positions are passed in explicitly: kept visual tokens carry their original
patch index and text starts after the full grid, so a masked training
sequence and an unmasked inference sequence see the same RoPE positions.

Three modes share one set of parameters:
- `train`: full sequence, no cache;
- `prefill`: full sequence, also returns each layer's keys/values;
- `decode`: one new token per call against a fixed-size cache.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from openvision2.sizes import DecoderSize
from openvision2.models import layers

Dtype = Any


class DecoderBlock(nn.Module):
    size: DecoderSize
    kv_heads: int
    mode: str
    rope_theta: float
    dtype: Dtype
    param_dtype: Dtype
    attention_impl: str | None
    cross: bool = False  # a cross-attention sublayer over `context` after self-attention (CoCa)

    @nn.compact
    def __call__(self, x, cache, positions, cache_index, context=None):
        s, kw = self.size, dict(dtype=self.dtype, param_dtype=self.param_dtype)
        head_dim = s.width // s.heads
        b, t, _ = x.shape
        y = layers.RMSNorm(name="ln1", **kw)(x)
        q = layers.project_heads(y, s.heads, head_dim, ("embed", "heads"), use_bias=False, name="q", **kw)
        k = layers.project_heads(y, self.kv_heads, head_dim, ("embed", "kv"), use_bias=False, name="k", **kw)
        v = layers.project_heads(y, self.kv_heads, head_dim, ("embed", "kv"), use_bias=False, name="v", **kw)
        q = layers.rope(q, positions, self.rope_theta)
        k = layers.rope(k, positions, self.rope_theta)
        if self.mode == "decode":
            ck, cv = cache
            ck = jax.lax.dynamic_update_slice_in_dim(ck, k.astype(ck.dtype), cache_index, axis=1)
            cv = jax.lax.dynamic_update_slice_in_dim(cv, v.astype(cv.dtype), cache_index, axis=1)
            # New token i (at cache slot cache_index + i) sees the cache and the new tokens up to itself,
            # so several tokens decoded at once attend causally, as in one forward pass.
            valid = jnp.arange(ck.shape[1])[None, :] <= cache_index + jnp.arange(t)[:, None]
            y = layers.attention(q, ck, cv, causal=False, implementation=None,
                                 mask=jnp.broadcast_to(valid, (b, 1, t, ck.shape[1])))
            new_cache = (ck, cv)
        else:
            y = layers.attention(q, k, v, causal=True, implementation=self.attention_impl)
            new_cache = (k, v) if self.mode == "prefill" else None
        y = layers.merge_heads(checkpoint_name(y, "attn_out"), s.width, use_bias=False, name="o", **kw)
        x = layers.constrain(x + y, ("act_batch", "act_len", "act_embed"))
        if self.cross:
            # No positions on either side: the context is a set (pooled image queries).
            y = layers.RMSNorm(name="ln_cross", **kw)(x)
            y = layers.multihead_attention(y, context, width=s.width, heads=s.heads, use_bias=False,
                                           names=("cross_q", "cross_k", "cross_v", "cross_o"), **kw)
            x = layers.constrain(x + y, ("act_batch", "act_len", "act_embed"))
        y = layers.RMSNorm(name="ln2", **kw)(x)
        gate = layers.dense(s.mlp_dim, ("embed", "mlp"), use_bias=False, name="gate", **kw)(y)
        up = layers.dense(s.mlp_dim, ("embed", "mlp"), use_bias=False, name="up", **kw)(y)
        y = layers.constrain(nn.silu(gate) * up, ("act_batch", "act_len", "act_mlp"))
        y = layers.dense(s.width, ("mlp", "embed"), use_bias=False, name="down", **kw)(y)
        x = layers.constrain(x + y, ("act_batch", "act_len", "act_embed"))
        return x, new_cache


class Projector(nn.Module):
    """Visual tokens -> decoder width: `linear` or LLaVA's 2-layer GELU MLP."""

    kind: str
    width: int
    dtype: Dtype
    param_dtype: Dtype

    @nn.compact
    def __call__(self, x):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        if self.kind == "linear":
            return layers.dense(self.width, ("embed", "embed_out"), use_bias=False, name="linear", **kw)(x)
        if self.kind == "mlp":
            x = layers.dense(self.width, ("embed", "embed_out"), use_bias=True, name="fc1", **kw)(x)
            # exact (erf) GELU: LLaVA's projector uses torch's default "gelu".
            x = nn.gelu(x, approximate=False)
            return layers.dense(self.width, ("embed_out", "embed"), use_bias=True, name="fc2", **kw)(x)
        raise ValueError(f"projector must be 'linear' or 'mlp', got {self.kind!r}.")


class Decoder(nn.Module):
    size: DecoderSize
    vocab_size: int
    kv_heads: int = 0  # 0 = multi-head attention (kv_heads == heads)
    tie_embeddings: bool = False
    rope_theta: float = 10_000.0
    mode: str = "train"  # train | prefill | decode
    scan: bool = True
    remat_policy: str = "none"
    attention_impl: str | None = None
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def setup(self):
        s = self.size
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        self.embed = nn.Embed(self.vocab_size, s.width, name="embed", embedding_init=nn.with_logical_partitioning(
            nn.initializers.normal(stddev=0.02), ("vocab", "embed")), **kw)
        stack = block_stack(s.depth, scan=self.scan, remat_policy=self.remat_policy, mode=self.mode, size=s,
                            kv_heads=self.kv_heads or s.heads, rope_theta=self.rope_theta,
                            attention_impl=self.attention_impl, **kw)
        if self.scan:
            self.blocks = stack
        else:
            self.block_list = stack
        self.ln_final = layers.RMSNorm(**kw)
        if not self.tie_embeddings:
            self.lm_head = layers.dense(self.vocab_size, ("embed", "vocab"), use_bias=False, name="lm_head",
                                        kernel_init=nn.initializers.normal(stddev=0.02), **kw)

    def embed_tokens(self, ids):
        return self.embed(ids)

    def features(self, x, positions, cache=None, cache_index=None):
        """Final (normed) hidden states [B,T,width] of `x` and the new cache."""
        x, new_cache = run_stack(self.blocks if self.scan else self.block_list,
                                 layers.constrain(x.astype(self.dtype), ("act_batch", "act_len", "act_embed")),
                                 positions, cache, cache_index)
        return self.ln_final(x), new_cache

    def logits(self, h):
        logits = self.embed.attend(h) if self.tie_embeddings else self.lm_head(h)
        return layers.constrain(logits, ("act_batch", "act_len", "act_vocab"))

    def __call__(self, x, positions, cache=None, cache_index=None):
        """x: [B,T,width] already-embedded inputs; returns (logits [B,T,vocab], new cache).

        `cache` is a (keys, values) pair stacked over layers, [depth,B,S,kv,hd] each.
        """
        h, new_cache = self.features(x, positions, cache, cache_index)
        return self.logits(h), new_cache


def block_stack(depth: int, *, scan: bool, remat_policy: str, mode: str, prefix: str = "block", **block_kw):
    """For `setup()`: `depth` decoder blocks, one scanned module (named by the attribute it is
    assigned to, params stacked on a `layers` axis) or a list of blocks `<prefix>_0`, ..."""
    block = layers.remat(DecoderBlock, remat_policy) if mode == "train" else DecoderBlock
    block_kw = dict(mode=mode, **block_kw)
    if scan:
        return nn.scan(block, variable_axes={"params": 0}, split_rngs={"params": True}, length=depth,
                       in_axes=(0, nn.broadcast, nn.broadcast, nn.broadcast),
                       metadata_params={nn.PARTITION_NAME: "layers"})(**block_kw)
    return [block(name=f"{prefix}_{i}", **block_kw) for i in range(depth)]


def run_stack(stack, x, positions, cache=None, cache_index=None, context=None):
    """Runs a `block_stack`; returns (x, new cache stacked over layers or None)."""
    if not isinstance(stack, (list, tuple)):
        return stack(x, cache, positions, cache_index, context)
    caches = []
    for i, blk in enumerate(stack):
        layer_cache = None if cache is None else jax.tree.map(lambda c: c[i], cache)
        x, c = blk(x, layer_cache, positions, cache_index, context)
        caches.append(c)
    return x, None if caches[0] is None else jax.tree.map(lambda *c: jnp.stack(c), *caches)


def pad_cache(cache, total: int):
    """Pads a prefill cache ([depth,B,S,kv,hd] keys and values) to `total` positions for decoding."""
    def pad(c):
        widths = [(0, 0)] * c.ndim
        widths[2] = (0, total - c.shape[2])
        return jnp.pad(c, widths)

    return jax.tree.map(pad, cache)


class PrefixCaptioning:
    """Greedy captioning for a model whose one decoder (`self.decoder`) reads a visual prefix and
    then the caption: `caption_prefix(images, boxes)` gives the prefix and its positions.

    Every captioning model offers the same two methods, which `models.generate` drives:
    - `prefill(images, bos_ids, max_new_tokens, boxes=None)` -> (logits after `[bos]`, decoding
      state with room for `max_new_tokens`, the text position of `[bos]`);
    - `decode_step(token, position, state, cache_index)` -> (logits of the next token, state).
    The prefix is `[visual tokens (all of them: no masking at inference) ; bos]`, run once.
    """

    def prefill(self, images_uint8, bos_ids, max_new_tokens: int, boxes=None):
        prefix, pos = self.caption_prefix(images_uint8, boxes)
        n = prefix.shape[1]
        x = jnp.concatenate([prefix.astype(self.decoder.dtype), self.decoder.embed_tokens(bos_ids[:, None])], axis=1)
        pos = jnp.concatenate([pos, jnp.full((x.shape[0], 1), n, jnp.int32)], axis=1)
        logits, cache = self.decoder(x, pos)
        return logits[:, -1], pad_cache(cache, n + 1 + max_new_tokens), n

    def decode_step(self, token, position, cache, cache_index):
        x = self.decoder.embed_tokens(token[:, None])
        logits, cache = self.decoder(x, position[:, None], cache, cache_index)
        return logits[:, 0], cache
