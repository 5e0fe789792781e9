"""CLIP (Radford et al. 2021): an image tower and a causal text tower trained with the softmax
InfoNCE only, with a learnable temperature (0.07, clamped at 0.01)."""

from __future__ import annotations

import jax.numpy as jnp

from openvision2 import sizes
from openvision2.models import captioner, flops
from openvision2.recipes import losses, parts
from openvision2.recipes.base import Objective, Recipe, SpecialIds
from openvision2.recipes.registry import register


@register
class Clip(Recipe):
    name = "clip"
    parts = ("text_encoder",)
    embeds = True
    own_loss = "softmax"  # what `contrastive.loss=""` means for this recipe

    def defaults(self) -> dict:
        return parts.merged(parts.CONTRASTIVE_DEFAULTS, parts.TEXT_TOWER_DEFAULTS)

    def views(self, cfg):
        return parts.text_tower_views(cfg)

    def embed_text_len(self, cfg) -> int:
        return parts.text_max_len(cfg)

    def build_model(self, cfg, ids: SpecialIds, mode: str = "train"):
        return captioner.TwoTower(encoder=parts.vit(cfg), text_encoder=parts.text_encoder(cfg, ids.eos),
                                  head=parts.contrastive_head(cfg, self.own_loss))

    def objective(self, cfg, ids: SpecialIds):
        return TwoTowerObjective(cfg, self.own_loss)

    def train_flops(self, cfg) -> float:
        per_example, _ = parts.encoder_flops(cfg)
        per_example += flops.text_tower(sizes.text_encoder_size(cfg.model.text_encoder), parts.text_max_len(cfg))
        return parts.step_flops(cfg, per_example, parts.similarity_flops(cfg))


class TwoTowerObjective(Objective):
    """Contrastive only, image tower vs text tower."""

    def __init__(self, cfg, own_loss: str):
        self.contrastive = losses.ContrastiveLoss(cfg, own_loss)
        self.weight = float(cfg.contrastive.weight)

    def loss(self, model, params, batch):
        out = model.apply({"params": params}, batch["image"], batch["text_con"])
        loss, scalars = self.contrastive(out["image_embedding"], out["text_embedding"], *out["scale_and_bias"])
        # Not token-weighted: the normaliser is 1 and the loss is already the batch mean.
        return self.weight * loss, {"count": jnp.float32(1.0), "scalars": scalars}

    def embed(self, model, params, batch):
        return embed_two_towers(model, params, batch)


def embed_two_towers(model, params, batch):
    """L2-normalised (image, text) embeddings of a model with `encode`, `embed_pooled` and `embed_texts`."""
    def fn(module, images, text):
        return module.embed_pooled(module.encode(images)["pooled"]), module.embed_texts(text)

    img, txt = model.apply({"params": params}, batch["image"], batch["text_con"], method=fn)
    return losses.normalise(img), losses.normalise(txt)
