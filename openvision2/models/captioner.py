"""ViT encoder + projector + LLaMA decoder: the OpenVision 2 captioner, and OpenVision v1
(the same captioner plus a CLIP-style text tower and a contrastive head)."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from openvision2.models.decoder import Decoder, PrefixCaptioning, Projector
from openvision2.models.text_encoder import ContrastiveHead, TextEncoder
from openvision2.models.vit import ViT

Dtype = Any


class Captioner(PrefixCaptioning, nn.Module):
    encoder: ViT
    decoder: Decoder
    projector: Projector

    def encode(self, images_uint8):
        return self.encoder.from_uint8(images_uint8)

    def visual_prefix(self, prenorm_tokens, keep_idx=None):
        """Projects (optionally masked) encoder tokens; returns (prefix, positions).

        `keep_idx` [B,K] holds sorted original patch indices of the kept tokens.
        """
        b, n, _ = prenorm_tokens.shape
        if keep_idx is None:
            positions = jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32), (b, n))
        else:
            prenorm_tokens = jnp.take_along_axis(prenorm_tokens, keep_idx[..., None], axis=1)
            positions = keep_idx.astype(jnp.int32)
        return self.projector(prenorm_tokens), positions

    def decode_text(self, prefix, prefix_pos, text_in, num_visual: int):
        """Teacher-forced logits for the text part of `[prefix ; text_in]`."""
        b, t = text_in.shape
        text_pos = num_visual + jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
        x = jnp.concatenate([prefix.astype(self.decoder.dtype), self.decoder.embed_tokens(text_in)], axis=1)
        logits, _ = self.decoder(x, jnp.concatenate([prefix_pos, text_pos], axis=1))
        return logits[:, prefix.shape[1]:]

    def caption_prefix(self, images_uint8, boxes=None):
        """What greedy captioning starts from: (prefix embeddings, their positions), unmasked."""
        if boxes is not None:
            raise ValueError("this captioner reads whole images; it has no region prefix")
        return self.visual_prefix(self.encode(images_uint8)["prenorm"])

    def caption_context(self, images_uint8):
        """What scoring captions of an image starts from (encoded once, every visual token)."""
        return self.caption_prefix(images_uint8)

    def caption_logits(self, context, text):
        """Teacher-forced logits predicting `text[:, 1:]` after `caption_context`."""
        prefix, pos = context
        return self.decode_text(prefix, pos, text[:, :-1], prefix.shape[1])

    def __call__(self, images_uint8, text_in, keep_idx=None):
        enc = self.encode(images_uint8)
        prefix, pos = self.visual_prefix(enc["prenorm"], keep_idx)
        logits = self.decode_text(prefix, pos, text_in, enc["prenorm"].shape[1])
        return {"logits": logits, "encoder": enc}

    def initialise(self, batch):
        """Touches every parameter (what `init` runs, on a batch of the recipe's fields)."""
        return self(batch["image"], batch["text"][:, :-1])


class _TowerEmbeddings:
    """Both towers into the shared space, for modules with `text_encoder` and `head`."""

    def embed_texts(self, text):
        return self.head.text(self.text_encoder(text))

    def embed_pooled(self, pooled):
        return self.head.image(pooled)

    def embed_images(self, images_uint8):
        return self.embed_pooled(self.encode(images_uint8)["pooled"])


class OpenVisionV1(_TowerEmbeddings, Captioner):
    """OpenVision v1 / CLIPS: the captioner plus a text tower and a contrastive head."""

    text_encoder: TextEncoder
    head: ContrastiveHead

    def initialise(self, batch):
        out = super().initialise(batch)
        return {**out, "image_embedding": self.embed_pooled(out["encoder"]["pooled"]),
                "text_embedding": self.embed_texts(batch["text_con"]), "scale_and_bias": self.head.scale_and_bias()}


class TwoTower(_TowerEmbeddings, nn.Module):
    """CLIP / SigLIP: image tower and text tower meeting in one embedding space."""

    encoder: ViT
    text_encoder: TextEncoder
    head: ContrastiveHead

    def encode(self, images_uint8):
        return self.encoder.from_uint8(images_uint8)

    def __call__(self, images_uint8, text):
        enc = self.encode(images_uint8)
        return {"encoder": enc, "image_embedding": self.embed_pooled(enc["pooled"]),
                "text_embedding": self.embed_texts(text), "scale_and_bias": self.head.scale_and_bias()}

    def initialise(self, batch):
        return self(batch["image"], batch["text_con"])
