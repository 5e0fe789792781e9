"""MM-GEM: one decoder that both embeds and captions (arXiv 2405.19333).

The ViT's patch grid goes through a PoolAggregator (adaptive average pooling to
`pool_grid` x `pool_grid` tokens). Three thin projections connect the spaces:
- h1: pooled vision features -> the shared embedding (image side: MeanPool, then h1);
- h2: the decoder's last hidden state at a learned `[EMB]` vector, which takes the
  caption's `[eos]` slot -> the text embedding;
- h3: vision tokens -> decoder inputs, the visual context that a learned `[CAP]`
  vector follows before the caption is generated.

Region stage (`regions=True`): RoIAlign region features from a box take the place
of the pooled tokens. Region captions add learned soft prompts between h3's context
and `[CAP]`; region retrieval passes the region's image-side embedding through a new
h4, initialised to the identity so it starts exactly at stage 1's embedding.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from openvision2.models import layers
from openvision2.models.decoder import Decoder, PrefixCaptioning
from openvision2.models.text_encoder import eos_positions, put_at, take_at
from openvision2.models.vit import ViT

Dtype = Any


def _bins(n: int, out: int) -> list[tuple[int, int]]:
    """Adaptive pooling bins (PyTorch's): bin i covers [floor(i n / out), ceil((i + 1) n / out))."""
    return [(i * n // out, -(-(i + 1) * n // out)) for i in range(out)]


def adaptive_avg_pool(grid, out: int):
    """[B, H, W, D] -> [B, out, out, D], each cell the mean of its adaptive bin."""
    rows = [grid[:, a:b].mean(axis=1) for a, b in _bins(grid.shape[1], out)]
    return jnp.stack([jnp.stack([r[:, a:b].mean(axis=1) for a, b in _bins(grid.shape[2], out)], axis=1)
                      for r in rows], axis=1)


def roi_align(grid, boxes, out: int, sampling: int = 2):
    """RoIAlign (torchvision's with aligned=True and a fixed sampling ratio).

    grid [B, H, W, D]: cell (i, j) covers [j, j + 1) x [i, i + 1) of the image in grid units;
    boxes [B, 4] = (x0, y0, x1, y1) in [0, 1] of the image. Returns [B, out, out, D]: each bin
    the mean of `sampling` x `sampling` bilinear samples spread evenly inside it.
    """
    b, h, w, d = grid.shape
    boxes = boxes.astype(jnp.float32)
    x0, y0 = boxes[:, 0] * w - 0.5, boxes[:, 1] * h - 0.5
    x1, y1 = boxes[:, 2] * w - 0.5, boxes[:, 3] * h - 0.5
    offsets = (np.arange(out)[:, None] + (np.arange(sampling)[None, :] + 0.5) / sampling).reshape(-1) / out
    xs = x0[:, None] + offsets[None] * (x1 - x0)[:, None]  # [B, out * sampling]
    ys = y0[:, None] + offsets[None] * (y1 - y0)[:, None]

    def axis_weights(coords, size):
        """[B, S, size] interpolation weights of each sample over one axis (torchvision's rules:
        a sample more than one cell outside is zero; else it is clamped into the grid)."""
        inside = (coords >= -1.0) & (coords <= size)
        c = jnp.maximum(coords, 0.0)
        low = jnp.minimum(jnp.floor(c), size - 1)
        c = jnp.where(low >= size - 1, low, c)
        frac = c - low
        high = jnp.minimum(low + 1, size - 1)
        cells = jnp.arange(size)
        wts = ((cells == low[..., None]) * (1 - frac)[..., None] + (cells == high[..., None]) * frac[..., None])
        return wts * inside[..., None]

    wy, wx = axis_weights(ys, h), axis_weights(xs, w)  # [B, out*s, H], [B, out*s, W]
    samples = jnp.einsum("byh,bxw,bhwd->byxd", wy, wx, grid.astype(jnp.float32))
    samples = samples.reshape(b, out, sampling, out, sampling, d)
    return samples.mean(axis=(2, 4)).astype(grid.dtype)


def _identity_init(key, shape, dtype=jnp.float32):
    del key
    return jnp.eye(*shape, dtype=dtype)


class MMGEM(PrefixCaptioning, nn.Module):
    encoder: ViT
    decoder: Decoder
    embed_dim: int
    eos_id: int
    pool_grid: int
    roi_grid: int
    init_scale: float
    regions: bool = False
    soft_prompts: int = 4
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def setup(self):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        width = self.decoder.size.width
        self.h1 = layers.dense(self.embed_dim, ("embed", None), use_bias=True, name="h1", **kw)
        self.h2 = layers.dense(self.embed_dim, ("embed", None), use_bias=True, name="h2", **kw)
        self.h3 = layers.dense(width, ("embed", "embed_out"), use_bias=True, name="h3", **kw)
        vector = lambda: nn.with_logical_partitioning(nn.initializers.normal(stddev=0.02), ("embed",))
        self.emb_token = self.param("emb_token", vector(), (width,), self.param_dtype)
        self.cap_token = self.param("cap_token", vector(), (width,), self.param_dtype)
        self.log_scale = self.param("log_scale", nn.with_logical_partitioning(
            nn.initializers.constant(float(np.log(self.init_scale))), ()), (), jnp.float32)
        if self.regions:
            self.h4 = layers.dense(self.embed_dim, (None, None), use_bias=True, name="h4",
                                   kernel_init=_identity_init, **kw)
            self.soft_prompt = self.param("soft_prompt", nn.with_logical_partitioning(
                nn.initializers.normal(stddev=0.02), (None, "embed")), (self.soft_prompts, width), self.param_dtype)

    def feature_grid(self, images_uint8):
        """The ViT's output tokens as a [B, h, w, D] patch grid (a CLS token, if any, is left out)."""
        tokens = self.encoder.from_uint8(images_uint8)["tokens"]
        side = images_uint8.shape[1] // self.encoder.size.patch
        return tokens[:, -side * side:].reshape(tokens.shape[0], side, side, tokens.shape[-1])

    def vision_tokens(self, grid, boxes=None):
        """PoolAggregator tokens of the whole image, or RoIAlign tokens of `boxes`: [B, n, D]."""
        pooled = adaptive_avg_pool(grid, self.pool_grid) if boxes is None else roi_align(grid, boxes, self.roi_grid)
        return pooled.reshape(pooled.shape[0], -1, pooled.shape[-1])

    def embed_vision(self, tokens, region: bool = False):
        emb = self.h1(tokens.mean(axis=1))
        return self.h4(emb) if region else emb

    def embed_images(self, images_uint8):
        return self.embed_vision(self.vision_tokens(self.feature_grid(images_uint8)))

    def caption_context(self, images_uint8):
        """The whole-image caption prefix (encoded once)."""
        return self.caption_prefix(images_uint8)

    def caption_logits(self, context, text):
        """Teacher-forced logits predicting `text[:, 1:]` after `caption_context`."""
        return self.decode_text(*context, text[:, :-1])

    def embed_texts(self, text):
        """h2 of the last hidden state at `[EMB]`, which replaces the caption's `[eos]`."""
        eos = eos_positions(text, self.eos_id)
        x = put_at(self.decoder.embed_tokens(text).astype(self.dtype), eos, self.emb_token.astype(self.dtype))
        positions = jnp.broadcast_to(jnp.arange(text.shape[1], dtype=jnp.int32), text.shape)
        h, _ = self.decoder.features(x, positions)
        return self.h2(take_at(h, eos))

    def context(self, tokens, region: bool = False):
        """The caption prefix `[h3(tokens) ; soft prompts (regions) ; [CAP]]` and its positions."""
        b = tokens.shape[0]
        parts = [self.h3(tokens).astype(self.dtype)]
        if region:
            parts.append(jnp.broadcast_to(self.soft_prompt.astype(self.dtype), (b, *self.soft_prompt.shape)))
        parts.append(jnp.broadcast_to(self.cap_token.astype(self.dtype), (b, 1, self.cap_token.shape[0])))
        prefix = jnp.concatenate(parts, axis=1)
        return prefix, jnp.broadcast_to(jnp.arange(prefix.shape[1], dtype=jnp.int32), prefix.shape[:2])

    def decode_text(self, prefix, prefix_pos, text_in):
        """Teacher-forced logits of `text_in` after the prefix."""
        b, t = text_in.shape
        text_pos = prefix.shape[1] + jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
        x = jnp.concatenate([prefix, self.decoder.embed_tokens(text_in).astype(self.dtype)], axis=1)
        logits, _ = self.decoder(x, jnp.concatenate([prefix_pos, text_pos], axis=1))
        return logits[:, prefix.shape[1]:]

    def caption_prefix(self, images_uint8, boxes=None):
        """Greedy captioning's start: the whole image, or (region stage) the regions in `boxes`."""
        return self.context(self.vision_tokens(self.feature_grid(images_uint8), boxes), region=boxes is not None)

    def __call__(self, images_uint8, text_in):
        grid = self.feature_grid(images_uint8)
        tokens = self.vision_tokens(grid)
        out = {"logits": self.decode_text(*self.context(tokens), text_in), "image_embedding": self.embed_vision(tokens),
               "text_embedding": self.embed_texts(text_in), "log_scale": self.log_scale}
        if self.regions:
            whole = jnp.broadcast_to(jnp.array([0.0, 0.0, 1.0, 1.0]), (grid.shape[0], 4))
            region = self.vision_tokens(grid, whole)
            out["region_logits"] = self.decode_text(*self.context(region, region=True), text_in)
            out["region_embedding"] = self.embed_vision(region, region=True)
        return out

    def initialise(self, batch):
        return self(batch["image"], batch["text"])

