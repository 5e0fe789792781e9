"""Connectors between a vision encoder and an LLM: encoder patch tokens -> what the LLM reads.

Every connector but the last takes the encoder's tokens `[B, N, D_vis]` (a square patch grid,
no CLS token) and returns `[B, M, llm_width]` visual tokens to prepend to the LLM's sequence:

- `MLP`: LLaVA-1.5 (Liu et al. 2023, "Improved Baselines with Visual Instruction Tuning"),
  Linear -> GELU -> Linear on every patch token (M = N); `decoder.Projector("mlp")` itself.
- `PixelUnshuffle`: InternVL 1.5 (Chen et al. 2024, "How Far Are We to GPT-4V?"), each 2x2
  block of the grid regrouped into channels (M = N / 4), then LayerNorm -> Linear -> GELU ->
  Linear, as its `mlp1`. The regrouping alone is `pixel_unshuffle`.
- `Perceiver`: the Perceiver resampler of Flamingo (Alayrac et al. 2022) / Idefics2
  (Laurencon et al. 2024): `num_latents` learned latents cross-attend to the projected image
  features concatenated with themselves (keys/values = [image ; latents], as OpenFlamingo's
  `PerceiverAttention`), then a GELU MLP, pre-norm residual; M = num_latents whatever N.
- `QFormer`: a miniature BLIP-2 Q-Former (Li et al. 2023): `num_queries` learned queries,
  self-attention among them, cross-attention to the image (every `cross_every`-th layer,
  BLIP-2's `cross_attention_freq`), a GELU MLP; pre-norm residual here (BERT is post-norm)
  and randomly initialised (no BERT weights); M = num_queries.
- `GatedCrossAttention`: Flamingo's gated xattn-dense block, inserted into a frozen LLM every
  k layers rather than prepending tokens (M = 0): it maps LLM hidden states `[B, T, d_llm]`
  and visual tokens `[B, N, d]` to `[B, T, d_llm]` with tanh gates that start at 0, so at
  init the block is the identity. Every text token sees every visual token (Flamingo's
  per-image media masking is left to the caller's choice of visual tokens).

`build(name, ...)` makes one by name and `visual_tokens(name, num_patches, ...)` says how many
tokens it adds to the LLM's sequence. Attention reuses `layers.multihead_attention` (no
positions: the latents/queries are a set, and the encoder has already added its own).
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from openvision2.models import layers
from openvision2.models.decoder import Projector

Dtype = Any

NAMES = ("mlp", "pixel_unshuffle", "perceiver", "qformer", "xattn")
DEFAULT_FACTOR = 2
DEFAULT_LATENTS = 64
DEFAULT_QUERIES = 32


def grid_side(num_tokens: int) -> int:
    """The side of a square grid of `num_tokens` patches; an error if it is not square."""
    side = math.isqrt(num_tokens)
    if side * side != num_tokens:
        raise ValueError(f"expected a square patch grid without CLS, got {num_tokens} tokens.")
    return side


def pixel_unshuffle(tokens, factor: int = DEFAULT_FACTOR):
    """Regroups each `factor x factor` block of the (row-major) grid into channels:
    [B, h*w, C] -> [B, (h/f)*(w/f), f*f*C], output tokens row-major over the coarse grid and
    channels ordered (dy, dx, c) within a block."""
    b, n, c = tokens.shape
    side = grid_side(n)
    if side % factor:
        raise ValueError(f"pixel_unshuffle: grid side {side} ({n} tokens) is not divisible by factor {factor}.")
    s = side // factor
    x = tokens.reshape(b, s, factor, s, factor, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, s * s, factor * factor * c)


def _mlp(x, hidden: int, out: int, *, use_bias: bool, dtype, param_dtype):
    """The residual GELU MLP of the transformer layers here (submodules `fc1`, `fc2`)."""
    kw = dict(use_bias=use_bias, dtype=dtype, param_dtype=param_dtype)
    x = layers.dense(hidden, ("embed", "mlp"), name="fc1", **kw)(x)
    x = nn.gelu(x, approximate=False)
    return layers.dense(out, ("mlp", "embed"), name="fc2", **kw)(x)


def _learned(module: nn.Module, name: str, count: int, width: int, batch: int, dtype):
    """`count` learned vectors (latents / queries), broadcast over the batch."""
    p = module.param(name, nn.with_logical_partitioning(nn.initializers.normal(stddev=0.02), (None, "embed")),
                     (count, width), module.param_dtype)
    return jnp.broadcast_to(p.astype(dtype), (batch, count, width))


class MLP(nn.Module):
    """LLaVA-1.5's projector: [B, N, D_vis] -> [B, N, llm_width] (`decoder.Projector("mlp")`)."""

    llm_width: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, tokens):
        return Projector("mlp", self.llm_width, dtype=self.dtype, param_dtype=self.param_dtype,
                         name="projector")(tokens)


class PixelUnshuffle(nn.Module):
    """InternVL 1.5: `pixel_unshuffle` then LayerNorm(f*f*C) -> Linear -> GELU -> Linear:
    [B, N, D_vis] -> [B, N / f^2, llm_width]."""

    llm_width: int
    factor: int = DEFAULT_FACTOR
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, tokens):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        x = layers.layer_norm(name="ln", eps=1e-5, **kw)(pixel_unshuffle(tokens, self.factor))
        return Projector("mlp", self.llm_width, name="projector", **kw)(x)


class PerceiverLayer(nn.Module):
    """One resampler layer: latents += Attn(LN(latents), [LN(x) ; LN(latents)]); latents += MLP(LN(latents))."""

    heads: int
    mlp_ratio: int
    dtype: Dtype
    param_dtype: Dtype

    @nn.compact
    def __call__(self, latents, x):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        width = latents.shape[-1]
        x = layers.layer_norm(name="ln_media", eps=1e-5, **kw)(x)
        y = layers.layer_norm(name="ln_latents", eps=1e-5, **kw)(latents)
        context = jnp.concatenate([x, y], axis=1)
        latents = latents + layers.multihead_attention(y, context, width=width, heads=self.heads, use_bias=False, **kw)
        y = layers.layer_norm(name="ln_mlp", eps=1e-5, **kw)(latents)
        return latents + _mlp(y, self.mlp_ratio * width, width, use_bias=False, **kw)


def _readout(queries, llm_width: int, eps: float, **kw):
    """The learned queries' last step (inside the caller's compact scope): LayerNorm, then Linear to the LLM."""
    queries = layers.layer_norm(name="ln_out", eps=eps, **kw)(queries)
    return layers.dense(llm_width, ("embed", "embed_out"), use_bias=True, name="out_proj", **kw)(queries)


class Perceiver(nn.Module):
    """Flamingo / Idefics2 Perceiver resampler: [B, N, D_vis] -> [B, num_latents, llm_width].

    The image tokens are first projected to the latent `width` (0 = D_vis); after `depth`
    layers the latents are normed and projected to `llm_width`.
    """

    llm_width: int
    num_latents: int = DEFAULT_LATENTS
    depth: int = 3
    width: int = 0
    heads: int = 8
    mlp_ratio: int = 4
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, tokens):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        width = self.width or tokens.shape[-1]
        x = layers.dense(width, ("embed", "embed_out"), use_bias=True, name="in_proj", **kw)(tokens)
        latents = _learned(self, "latents", self.num_latents, width, tokens.shape[0], self.dtype)
        for i in range(self.depth):
            latents = PerceiverLayer(self.heads, self.mlp_ratio, name=f"layer_{i}", **kw)(latents, x)
        return _readout(latents, self.llm_width, 1e-5, **kw)


class QFormerLayer(nn.Module):
    """Queries += SelfAttn(LN(q)); [queries += CrossAttn(LN(q), image)]; queries += MLP(LN(q))."""

    heads: int
    mlp_ratio: int
    cross: bool
    dtype: Dtype
    param_dtype: Dtype

    @nn.compact
    def __call__(self, q, image):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        width = q.shape[-1]
        y = layers.layer_norm(name="ln_self", eps=1e-12, **kw)(q)
        q = q + layers.multihead_attention(y, y, width=width, heads=self.heads, use_bias=True, **kw)
        if self.cross:
            y = layers.layer_norm(name="ln_cross", eps=1e-12, **kw)(q)
            q = q + layers.multihead_attention(y, image, width=width, heads=self.heads, use_bias=True,
                                               names=("cross_q", "cross_k", "cross_v", "cross_o"), **kw)
        y = layers.layer_norm(name="ln_mlp", eps=1e-12, **kw)(q)
        return q + _mlp(y, self.mlp_ratio * width, width, use_bias=True, **kw)


class QFormer(nn.Module):
    """A miniature BLIP-2 Q-Former: [B, N, D_vis] -> [B, num_queries, llm_width].

    The image is layer-normed once (BLIP-2's `ln_vision`) and cross-attended at its own width
    D_vis (keys/values project D_vis -> `width`, 0 = D_vis) in layers 0, cross_every, ...;
    the queries are normed and projected to `llm_width` at the end (BLIP-2's `llm_proj`).
    """

    llm_width: int
    num_queries: int = DEFAULT_QUERIES
    depth: int = 2
    width: int = 0
    heads: int = 8
    mlp_ratio: int = 4
    cross_every: int = 1
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, tokens):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        if self.cross_every < 1:
            raise ValueError(f"qformer cross_every must be >= 1, got {self.cross_every}.")
        width = self.width or tokens.shape[-1]
        image = layers.layer_norm(name="ln_vision", eps=1e-5, **kw)(tokens)
        q = _learned(self, "queries", self.num_queries, width, tokens.shape[0], self.dtype)
        for i in range(self.depth):
            q = QFormerLayer(self.heads, self.mlp_ratio, i % self.cross_every == 0, name=f"layer_{i}", **kw)(q, image)
        return _readout(q, self.llm_width, 1e-12, **kw)


class GatedCrossAttention(nn.Module):
    """Flamingo's gated cross-attention dense block, for a frozen LLM:
    x += tanh(alpha) * CrossAttn(LN(x), image); x += tanh(beta) * FFN(LN(x)), alpha = beta = 0 at init.

    `__call__(x [B, T, llm_width], visual [B, N, d]) -> [B, T, llm_width]`; the visual tokens
    are projected to `llm_width` here. Attention and FFN have no biases, as Flamingo's.
    """

    llm_width: int
    heads: int = 8
    mlp_ratio: int = 4
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, visual):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        d = self.llm_width
        if x.shape[-1] != d:
            raise ValueError(f"GatedCrossAttention: hidden states are {x.shape[-1]} wide, llm_width is {d}.")
        gate = nn.with_logical_partitioning(nn.initializers.zeros_init(), ())
        alpha = self.param("attn_gate", gate, (), self.param_dtype)
        beta = self.param("ff_gate", gate, (), self.param_dtype)
        image = layers.dense(d, ("embed", "embed_out"), use_bias=True, name="visual_proj", **kw)(visual)
        y = layers.layer_norm(name="ln_attn", eps=1e-5, **kw)(x)
        y = layers.multihead_attention(y, image, width=d, heads=self.heads, use_bias=False, **kw)
        x = x + jnp.tanh(alpha).astype(y.dtype) * y
        y = layers.layer_norm(name="ln_ff", eps=1e-5, **kw)(x)
        y = _mlp(y, self.mlp_ratio * d, d, use_bias=False, **kw)
        return x + jnp.tanh(beta).astype(y.dtype) * y


_CLASSES = {"mlp": MLP, "pixel_unshuffle": PixelUnshuffle, "perceiver": Perceiver, "qformer": QFormer,
            "xattn": GatedCrossAttention}


def _check(name: str):
    if name not in _CLASSES:
        raise ValueError(f"Unknown connector {name!r}; choose one of {' | '.join(NAMES)}.")


def build(name: str, *, llm_width: int, dtype=jnp.float32, param_dtype=jnp.float32, **options) -> nn.Module:
    """The connector `name` (mlp | pixel_unshuffle | perceiver | qformer | xattn); `options` are its fields."""
    _check(name)
    return _CLASSES[name](llm_width=llm_width, dtype=dtype, param_dtype=param_dtype, **options)


def visual_tokens(name: str, num_patches: int, **options) -> int:
    """How many tokens connector `name` adds to the LLM's sequence for `num_patches` patch tokens
    (`options` as for `build`; others are ignored): N, N / f^2, num_latents, num_queries or 0."""
    _check(name)
    if name == "mlp":
        return num_patches
    if name == "pixel_unshuffle":
        factor = options.get("factor", DEFAULT_FACTOR)
        side = grid_side(num_patches)
        if side % factor:
            raise ValueError(f"pixel_unshuffle: grid side {side} is not divisible by factor {factor}.")
        return (side // factor) ** 2
    if name == "perceiver":
        return options.get("num_latents", DEFAULT_LATENTS)
    if name == "qformer":
        return options.get("num_queries", DEFAULT_QUERIES)
    return 0
