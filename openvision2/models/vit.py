"""The ViT image encoder.

Defaults follow OpenVision 2: no CLS token, fixed 2-D sin-cos position
embeddings (so the low-to-high resolution curriculum needs no resampling),
pre-LN blocks with biased q/k/v/o, tanh-GELU MLP and a final LayerNorm. The
layout maps one to one onto HF `SiglipVisionModel` and timm
`VisionTransformer(class_token=False)`.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from openvision2.sizes import EncoderSize
from openvision2.models import layers

Dtype = Any

# How uint8 pixels become the encoder's input: (mean, std) per RGB channel after scaling to [0, 1].
# Images travel as uint8 and are normalised on device.
PIXEL_NORMS = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),  # ImageNet statistics (OpenVision 2's code)
    "siglip": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),  # [-1, 1], as SigLIP and big_vision feed their towers
    "clip": ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),  # OpenAI CLIP, open_clip
}


def pixel_norm_stats(norm: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    if norm not in PIXEL_NORMS:
        raise ValueError(f"model.pixel_norm={norm!r}: choose one of {sorted(PIXEL_NORMS)}.")
    return PIXEL_NORMS[norm]


def normalize(images_uint8, norm: str = "imagenet", dtype=jnp.float32):
    """uint8 [..., 3] -> the encoder's input under the named normalisation."""
    mean, std = pixel_norm_stats(norm)
    x = images_uint8.astype(jnp.float32) / 255.0
    return ((x - jnp.asarray(mean)) / jnp.asarray(std)).astype(dtype)


class EncoderBlock(nn.Module):
    size: EncoderSize
    dtype: Dtype
    param_dtype: Dtype
    approximate_gelu: bool
    attention_impl: str | None
    causal: bool = False  # True in the CLIP-style text tower

    @nn.compact
    def __call__(self, x, _):
        s, kw = self.size, dict(dtype=self.dtype, param_dtype=self.param_dtype)
        y = layers.layer_norm(name="ln1", **kw)(x)
        y = layers.multihead_attention(y, y, width=s.width, heads=s.heads, use_bias=True, causal=self.causal,
                                       implementation=self.attention_impl, **kw)
        x = layers.constrain(x + y, ("act_batch", "act_len", "act_embed"))
        y = layers.layer_norm(name="ln2", **kw)(x)
        y = layers.dense(s.mlp_dim, ("embed", "mlp"), use_bias=True, name="fc1", **kw)(y)
        y = nn.gelu(layers.constrain(y, ("act_batch", "act_len", "act_mlp")), approximate=self.approximate_gelu)
        y = layers.dense(s.width, ("mlp", "embed"), use_bias=True, name="fc2", **kw)(y)
        x = layers.constrain(x + y, ("act_batch", "act_len", "act_embed"))
        return x, None


def encoder_stack(x, size: EncoderSize, *, scan: bool, remat_policy: str, causal: bool = False, **block_kw):
    """`size.depth` pre-LN blocks, scanned (params `blocks`, stacked on a `layers` axis) or
    unrolled (`block_0`, `block_1`, ...). Call from inside a compact module."""
    block = layers.remat(EncoderBlock, remat_policy)
    block_kw = dict(size=size, causal=causal, **block_kw)
    if scan:
        x, _ = nn.scan(block, variable_axes={"params": 0}, split_rngs={"params": True}, length=size.depth,
                       metadata_params={nn.PARTITION_NAME: "layers"})(name="blocks", **block_kw)(x, None)
    else:
        for i in range(size.depth):
            x, _ = block(name=f"block_{i}", **block_kw)(x, None)
    return x


class MAPHead(nn.Module):
    """Multihead attention pooling: one learned query attends over the tokens."""

    size: EncoderSize
    dtype: Dtype
    param_dtype: Dtype
    approximate_gelu: bool

    @nn.compact
    def __call__(self, x):
        s, kw = self.size, dict(dtype=self.dtype, param_dtype=self.param_dtype)
        probe = self.param("probe", nn.with_logical_partitioning(nn.initializers.xavier_uniform(),
                                                                 (None, None, "embed")),
                           (1, 1, s.width), self.param_dtype)
        probe = jnp.broadcast_to(probe.astype(self.dtype), (x.shape[0], 1, s.width))
        y = layers.multihead_attention(probe, x, width=s.width, heads=s.heads, use_bias=True, **kw)
        z = layers.layer_norm(name="ln", **kw)(y)
        z = layers.dense(s.mlp_dim, ("embed", "mlp"), use_bias=True, name="fc1", **kw)(z)
        z = layers.dense(s.width, ("mlp", "embed"), use_bias=True, name="fc2", **kw)(
            nn.gelu(z, approximate=self.approximate_gelu))
        return (y + z)[:, 0]


class ViT(nn.Module):
    """Returns a dict with `prenorm` (tokens before the final LayerNorm, what
    the decoder reads, as LLaVA does), `tokens` (after it) and `pooled`."""

    size: EncoderSize
    pixel_norm: str = "imagenet"  # how its inputs were normalised (see `normalize`); only `from_uint8` reads it
    posemb: str = "sincos"  # sincos | learned
    cls_token: bool = False
    pool: str = "gap"  # gap | map | none (with cls_token: the CLS token)
    scan: bool = True
    remat_policy: str = "none"
    approximate_gelu: bool = True
    attention_impl: str | None = None
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, images):
        s, kw = self.size, dict(dtype=self.dtype, param_dtype=self.param_dtype)
        x = nn.Conv(
            s.width, (s.patch, s.patch), strides=(s.patch, s.patch), padding="VALID", name="patch_embed",
            kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), (None, None, None, "embed")),
            bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("embed",)), **kw,
        )(images.astype(self.dtype))
        b, h, w, _ = x.shape
        x = x.reshape(b, h * w, s.width)
        if self.posemb == "sincos":
            x = x + layers.posemb_sincos_2d(h, w, s.width).astype(self.dtype)[None]
        elif self.posemb == "learned":
            pos = self.param("pos_embedding", nn.with_logical_partitioning(
                nn.initializers.normal(stddev=0.02), (None, None, "embed")), (1, h * w, s.width), self.param_dtype)
            x = x + pos.astype(self.dtype)
        else:
            raise ValueError(f"posemb must be 'sincos' or 'learned', got {self.posemb!r}.")
        if self.cls_token:
            cls = self.param("cls", nn.with_logical_partitioning(nn.initializers.zeros_init(), (None, None, "embed")),
                             (1, 1, s.width), self.param_dtype)
            x = jnp.concatenate([jnp.broadcast_to(cls.astype(self.dtype), (b, 1, s.width)), x], axis=1)
        x = layers.constrain(x, ("act_batch", "act_len", "act_embed"))

        x = encoder_stack(x, s, scan=self.scan, remat_policy=self.remat_policy, approximate_gelu=self.approximate_gelu,
                          attention_impl=self.attention_impl, **kw)
        prenorm = x
        tokens = layers.layer_norm(name="ln_final", **kw)(x)

        if self.cls_token:
            pooled = tokens[:, 0]
        elif self.pool == "gap":
            pooled = tokens.mean(axis=1)
        elif self.pool == "map":
            pooled = MAPHead(s, approximate_gelu=self.approximate_gelu, name="map_head", **kw)(tokens)
        elif self.pool == "none":
            pooled = tokens.mean(axis=1)  # `none` adds no head; the mean is reported for retrieval probes
        else:
            raise ValueError(f"pool must be gap | map | none, got {self.pool!r}.")
        return {"prenorm": prenorm, "tokens": tokens, "pooled": pooled}

    def from_uint8(self, images_uint8):
        """The encoder on uint8 images, normalised on device the way it was trained (`pixel_norm`)."""
        return self(normalize(images_uint8, self.pixel_norm, self.dtype))


def count_params(module: nn.Module, *inputs) -> int:
    shapes = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), *inputs))
    return sum(x.size for x in jax.tree.leaves(nn.unbox(shapes)))
