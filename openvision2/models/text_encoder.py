"""The text tower of the contrastive recipes (OpenVision v1 / CLIPS, CLIP, SigLIP).

CLIP-style: token embeddings plus learned position embeddings, pre-LN blocks
with causal attention, a final LayerNorm, and the feature at the `[eos]`
position as the caption's summary. Causal attention lets `[eos]` read the
whole caption while the padding after it never leaks in, so no padding mask
is needed.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from openvision2.sizes import EncoderSize
from openvision2.models import layers
from openvision2.models.vit import encoder_stack

Dtype = Any


def eos_positions(text, eos_id: int):
    """Index of the first `[eos]` in each row (the last position if a row has none)."""
    is_eos = text == eos_id
    return jnp.where(is_eos.any(axis=1), jnp.argmax(is_eos, axis=1), text.shape[1] - 1)


def take_at(x, index):
    """x [B, L, D], index [B] -> [B, D]: each row's vector at its own position."""
    return jnp.take_along_axis(x, index[:, None, None], axis=1)[:, 0]


def put_at(x, index, vector):
    """x [B, L, D] with `vector` [D] written at each row's position `index` [B]."""
    return jnp.where((jnp.arange(x.shape[1])[None] == index[:, None])[..., None], vector, x)


class TextEncoder(nn.Module):
    size: EncoderSize  # width/depth/mlp_dim/heads; `patch` is unused
    vocab_size: int
    max_len: int
    eos_id: int
    scan: bool = True
    remat_policy: str = "none"
    approximate_gelu: bool = True
    attention_impl: str | None = None
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, text):
        """text int32 [B, L<=max_len] (`[bos] ... [eos] [pad]...`) -> [B, width] at `[eos]`."""
        s, kw = self.size, dict(dtype=self.dtype, param_dtype=self.param_dtype)
        if text.shape[1] > self.max_len:
            raise ValueError(f"text of {text.shape[1]} tokens is longer than the text tower's {self.max_len}")
        x = nn.Embed(self.vocab_size, s.width, name="embed", embedding_init=nn.with_logical_partitioning(
            nn.initializers.normal(stddev=0.02), ("vocab", "embed")), **kw)(text)
        pos = self.param("pos_embedding", nn.with_logical_partitioning(nn.initializers.normal(stddev=0.01),
                                                                      (None, "embed")),
                         (self.max_len, s.width), self.param_dtype)
        x = layers.constrain(x + pos[None, :text.shape[1]].astype(self.dtype), ("act_batch", "act_len", "act_embed"))
        x = encoder_stack(x, s, scan=self.scan, remat_policy=self.remat_policy, causal=True,
                          approximate_gelu=self.approximate_gelu, attention_impl=self.attention_impl, **kw)
        x = layers.layer_norm(name="ln_final", **kw)(x)
        return take_at(x, eos_positions(text, self.eos_id))


class ContrastiveHead(nn.Module):
    """Projections of both towers into one embedding space, and the learnable temperature.

    `log_scale` is the log of the logit scale (CLIP: log(1/0.07), SigLIP: log(10));
    `bias` is SigLIP's learnable logit bias (absent for softmax losses).
    """

    embed_dim: int
    init_scale: float
    init_bias: float | None = None
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def setup(self):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, use_bias=False)
        self.image_proj = layers.dense(self.embed_dim, ("embed", None), name="image_proj", **kw)
        self.text_proj = layers.dense(self.embed_dim, ("embed", None), name="text_proj", **kw)
        scalar = lambda value: nn.with_logical_partitioning(nn.initializers.constant(value), ())
        self.log_scale = self.param("log_scale", scalar(math.log(self.init_scale)), (), jnp.float32)
        if self.init_bias is not None:
            self.bias = self.param("bias", scalar(float(self.init_bias)), (), jnp.float32)

    def image(self, pooled):
        return self.image_proj(pooled)

    def text(self, pooled):
        return self.text_proj(pooled)

    def scale_and_bias(self):
        return self.log_scale, (self.bias if self.init_bias is not None else None)
