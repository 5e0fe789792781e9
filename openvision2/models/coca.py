"""CoCa: a contrastive captioner with a text decoder split in two.

- The image side: the ViT, then two attentional poolers over its tokens: one
  query for the contrastive embedding, `caption_queries` queries as the
  context the captioning layers cross-attend to (projected to decoder width).
- The text side: LLaMA-style blocks (RMSNorm, SwiGLU, RoPE). The first
  `unimodal_layers` see only text, causally; a learned CLS vector takes the
  place of the caption's `[eos]` embedding, so its output has read exactly the
  caption and, normed and projected, is the text embedding. The remaining
  layers add cross-attention to the image context and predict the caption.
  (Putting CLS in the `[eos]` slot rather than after the padding needs no
  padding mask: causal attention already keeps the padding out, and the
  position only ever predicts padding, which carries no loss.)

Generation runs both halves with KV caches, one token at a time (`prefill`, `decode_step`:
the interface every captioning model offers `models.generate`).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from openvision2.sizes import DecoderSize
from openvision2.models import layers
from openvision2.models.decoder import block_stack, pad_cache, run_stack
from openvision2.models.text_encoder import ContrastiveHead, eos_positions, put_at, take_at
from openvision2.models.vit import ViT

Dtype = Any


class AttentionalPooler(nn.Module):
    """`num_queries` learned queries cross-attending to the tokens: [B, N, D] -> [B, Q, D]."""

    num_queries: int
    heads: int
    dtype: Dtype
    param_dtype: Dtype

    @nn.compact
    def __call__(self, tokens):
        b, _, width = tokens.shape
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        queries = self.param("queries", nn.with_logical_partitioning(nn.initializers.normal(stddev=0.02),
                                                                    (None, "embed")),
                             (self.num_queries, width), self.param_dtype)
        y = layers.layer_norm(name="ln_context", **kw)(tokens)
        queries = jnp.broadcast_to(queries.astype(self.dtype), (b, self.num_queries, width))
        out = layers.multihead_attention(queries, y, width=width, heads=self.heads, use_bias=True, **kw)
        return layers.layer_norm(name="ln_out", **kw)(out)


class CoCa(nn.Module):
    encoder: ViT
    size: DecoderSize
    vocab_size: int
    eos_id: int
    unimodal_layers: int
    caption_queries: int
    embed_dim: int
    init_scale: float
    kv_heads: int = 0
    rope_theta: float = 10_000.0
    mode: str = "train"
    scan: bool = True
    remat_policy: str = "none"
    attention_impl: str | None = None
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def setup(self):
        s, kw = self.size, dict(dtype=self.dtype, param_dtype=self.param_dtype)
        if not 0 < self.unimodal_layers < s.depth:
            raise ValueError(f"coca.unimodal_layers={self.unimodal_layers} must leave both halves of the "
                             f"{s.depth}-layer decoder at least one layer.")
        heads = self.encoder.size.heads
        self.contrastive_pooler = AttentionalPooler(1, heads, **kw)
        self.caption_pooler = AttentionalPooler(self.caption_queries, heads, **kw)
        self.context_proj = layers.dense(s.width, ("embed", "embed_out"), use_bias=False, name="context_proj", **kw)
        self.embed = nn.Embed(self.vocab_size, s.width, embedding_init=nn.with_logical_partitioning(
            nn.initializers.normal(stddev=0.02), ("vocab", "embed")), **kw)
        self.cls = self.param("cls", nn.with_logical_partitioning(nn.initializers.normal(stddev=0.02), ("embed",)),
                              (s.width,), self.param_dtype)
        stack_kw = dict(scan=self.scan, remat_policy=self.remat_policy, mode=self.mode, size=s,
                        kv_heads=self.kv_heads or s.heads, rope_theta=self.rope_theta,
                        attention_impl=self.attention_impl, **kw)
        self.unimodal = block_stack(self.unimodal_layers, prefix="unimodal", **stack_kw)
        self.multimodal = block_stack(s.depth - self.unimodal_layers, prefix="multimodal", cross=True, **stack_kw)
        self.ln_cls = layers.RMSNorm(**kw)
        self.ln_final = layers.RMSNorm(**kw)
        self.lm_head = layers.dense(self.vocab_size, ("embed", "vocab"), use_bias=False, name="lm_head",
                                    kernel_init=nn.initializers.normal(stddev=0.02), **kw)
        self.head = ContrastiveHead(self.embed_dim, init_scale=self.init_scale, **kw)

    def encode(self, images_uint8):
        return self.encoder.from_uint8(images_uint8)

    def image_context(self, tokens):
        return self.context_proj(self.caption_pooler(tokens))

    def embed_pooled_tokens(self, tokens):
        return self.head.image(self.contrastive_pooler(tokens)[:, 0])

    def _unimodal(self, text):
        """Unimodal pass over the whole caption with CLS in its `[eos]` slot: (hidden, CLS output)."""
        eos = eos_positions(text, self.eos_id)
        x = put_at(self.embed(text).astype(self.dtype), eos, self.cls.astype(self.dtype))
        positions = jnp.broadcast_to(jnp.arange(text.shape[1], dtype=jnp.int32), text.shape)
        h, _ = run_stack(self.unimodal, x, positions)
        return h, positions, self.ln_cls(take_at(h, eos))

    def embed_texts(self, text):
        return self.head.text(self._unimodal(text)[2])

    def embed_images(self, images_uint8):
        return self.embed_pooled_tokens(self.encode(images_uint8)["tokens"])

    def caption_context(self, images_uint8):
        """The pooled image queries the multimodal layers cross-attend to (encoded once)."""
        return self.image_context(self.encode(images_uint8)["tokens"])

    def caption_logits(self, context, text):
        """Teacher-forced logits predicting `text[:, 1:]` given `caption_context`."""
        h, positions, _ = self._unimodal(text)
        h, _ = run_stack(self.multimodal, h[:, :-1], positions[:, :-1], context=context)
        return self._logits(h)

    def _logits(self, h):
        return layers.constrain(self.lm_head(self.ln_final(h)), ("act_batch", "act_len", "act_vocab"))

    def __call__(self, images_uint8, text):
        """Teacher-forced: `text` is the whole `[bos] ... [eos] [pad]...` row; logits predict text[:, 1:]."""
        enc = self.encode(images_uint8)
        h, positions, cls_out = self._unimodal(text)
        h, _ = run_stack(self.multimodal, h[:, :-1], positions[:, :-1], context=self.image_context(enc["tokens"]))
        return {"logits": self._logits(h), "encoder": enc, "image_embedding": self.embed_pooled_tokens(enc["tokens"]),
                "text_embedding": self.head.text(cls_out), "scale_and_bias": self.head.scale_and_bias()}

    def initialise(self, batch):
        return self(batch["image"], batch["text"])

    def prefill(self, images_uint8, bos_ids, max_new_tokens: int, boxes=None):
        """Generation start: (logits after `[bos]`, caches + context, text position of `[bos]`)."""
        if boxes is not None:
            raise ValueError("CoCa captions whole images; it has no region prefix")
        total = 1 + max_new_tokens
        context = self.image_context(self.encode(images_uint8)["tokens"])
        x = self.embed(bos_ids[:, None]).astype(self.dtype)
        pos = jnp.zeros((bos_ids.shape[0], 1), jnp.int32)
        h, uni = run_stack(self.unimodal, x, pos)
        h, multi = run_stack(self.multimodal, h, pos, context=context)
        return self._logits(h)[:, -1], (pad_cache(uni, total), pad_cache(multi, total), context), 0

    def decode_step(self, token, position, state, cache_index):
        uni, multi, context = state
        x = self.embed(token[:, None]).astype(self.dtype)
        h, uni = run_stack(self.unimodal, x, position[:, None], uni, cache_index)
        h, multi = run_stack(self.multimodal, h, position[:, None], multi, cache_index, context=context)
        return self._logits(h)[:, 0], (uni, multi, context)

