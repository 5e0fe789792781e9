"""OpenVision v1 / CLIPS: the OpenVision 2 captioner plus a CLIP-style causal text tower and a
softmax InfoNCE with a learnable temperature, weighted 1 : 2 against captioning.

The text tower reads `batch["text_con"]` (by default the caption field; CLIPS uses one random
sentence of it) against the encoder's pooled output. The captioner keeps its own token
masking (off in the v1 recipe) and its loss stays token-weighted (`losses.with_captions`).
"""

from __future__ import annotations

from openvision2 import sizes
from openvision2.models import captioner, flops
from openvision2.recipes import losses, parts
from openvision2.recipes.base import SpecialIds
from openvision2.recipes.captioning import CaptionObjective, Captioning, prefix_captioner_flops
from openvision2.recipes.clip import embed_two_towers
from openvision2.recipes.registry import register


@register
class OpenVision(Captioning):
    name = "openvision"
    parts = ("decoder", "text_encoder")
    embeds = True

    def defaults(self) -> dict:
        return parts.merged(parts.CAPTION_DEFAULTS, parts.CONTRASTIVE_DEFAULTS, parts.TEXT_TOWER_DEFAULTS)

    def views(self, cfg):
        return parts.text_tower_views(cfg)

    def embed_text_len(self, cfg) -> int:
        return parts.text_max_len(cfg)

    def build_model(self, cfg, ids: SpecialIds, mode: str = "train"):
        return captioner.OpenVisionV1(**parts.prefix_captioner(cfg, mode), text_encoder=parts.text_encoder(cfg, ids.eos),
                                      head=parts.contrastive_head(cfg, "softmax"))

    def objective(self, cfg, ids: SpecialIds):
        return OpenVisionObjective(cfg, ids)

    def train_flops(self, cfg) -> float:
        per_example = prefix_captioner_flops(cfg)
        per_example += flops.text_tower(sizes.text_encoder_size(cfg.model.text_encoder), parts.text_max_len(cfg))
        return parts.step_flops(cfg, per_example, parts.similarity_flops(cfg))


class OpenVisionObjective(CaptionObjective):

    def __init__(self, cfg, ids: SpecialIds):
        super().__init__(cfg, ids)
        self.contrastive = losses.ContrastiveLoss(cfg)
        self.contrastive_weight = float(cfg.contrastive.weight)

    def loss(self, model, params, batch):
        sums, enc = self.caption_sums(model, params, batch)

        def towers(module, pooled, text):
            return module.embed_pooled(pooled), module.embed_texts(text), module.head.scale_and_bias()

        img, txt, (log_scale, bias) = model.apply({"params": params}, enc["pooled"], batch["text_con"],
                                                  method=towers)
        con, scalars = self.contrastive(img, txt, log_scale, bias)
        return losses.with_captions(con, scalars, sums, self.contrastive_weight, self.loss_weight)

    def embed(self, model, params, batch):
        return embed_two_towers(model, params, batch)
