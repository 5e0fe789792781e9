"""MM-GEM (arXiv 2405.19333): one decoder that both embeds and captions; InfoNCE + captioning CE,
summed (the paper's L_Emb + L_Gen).

Stage 1 (`mmgem.region_task=""`): image embedding (MeanPool -> h1) against the decoder's `[EMB]`
text embedding (h2), and the caption after the `[CAP]` context (h3); see `models/mmgem.py`.

Region stage (`mmgem.region_task` = caption | retrieval | both, one box per example from the
record): region captions from RoIAlign features through h3 and the soft prompts, and/or
region retrieval through h4 against the region caption's `[EMB]` embedding. Which parameters
train is the stage's `optim.trainable` (the paper trains only h3 + soft prompts, or only h4).
Region captions repeat across a batch (many regions are "a red circle."), so the region
InfoNCE treats every pair with the same caption as a positive.
"""

from __future__ import annotations

import jax.numpy as jnp

from openvision2 import sizes
from openvision2.data import pipeline
from openvision2.models import flops
from openvision2.models.mmgem import MMGEM as MMGEMModel
from openvision2.recipes import losses, parts
from openvision2.recipes.base import Objective, Recipe, SpecialIds
from openvision2.recipes.registry import register

REGION_TASKS = ("", "caption", "retrieval", "both")


@register
class MMGEM(Recipe):
    name = "mmgem"
    parts = ("decoder",)
    captions = True
    embeds = True

    def defaults(self) -> dict:
        return parts.merged(parts.CAPTION_DEFAULTS, parts.CONTRASTIVE_DEFAULTS, parts.EMBED_DEFAULTS, {
            "caption_loss_weight": 1.0,  # the paper's loss is the plain sum
            "mmgem": {
                "pool_grid": 4,  # PoolAggregator: the patch grid is average-pooled to pool_grid x pool_grid tokens
                "roi_grid": 2,  # RoIAlign bins per side for region features
                "soft_prompts": 4,  # learned prompt vectors before [CAP] for region captions
                "region_task": "",  # "" = image level (stage 1); region stage: "caption" | "retrieval" | "both"
                "min_visible": 0.5,  # a region whose crop keeps less of its box than this is not used
            }})

    def has_regions(self, cfg) -> bool:
        return bool(cfg.mmgem.region_task)

    def validate(self, cfg) -> None:
        super().validate(cfg)
        check_region_task(cfg.mmgem.region_task)

    def views(self, cfg):
        if not self.has_regions(cfg):
            return pipeline.Views()
        return pipeline.Views(regions=True, min_visible=float(cfg.mmgem.min_visible))

    def build_model(self, cfg, ids: SpecialIds, mode: str = "train"):
        g = cfg.mmgem
        return MMGEMModel(parts.vit(cfg), parts.decoder(cfg, mode), embed_dim=parts.embed_dim(cfg), eos_id=ids.eos,
                          pool_grid=int(g.pool_grid), roi_grid=int(g.roi_grid),
                          init_scale=1.0 / losses.init_temperature(cfg, losses.loss_kind(cfg, "softmax")),
                          regions=self.has_regions(cfg), soft_prompts=int(g.soft_prompts), **parts.dtypes(cfg))

    def objective(self, cfg, ids: SpecialIds):
        return MMGEMObjective(cfg, ids.pad)

    def train_flops(self, cfg) -> float:
        m, g = cfg.model, cfg.mmgem
        enc, dec = sizes.encoder_size(m.encoder), sizes.decoder_size(m.decoder)
        per_example, _ = parts.encoder_flops(cfg)
        region = self.has_regions(cfg)
        text = cfg.text.max_len - 1
        tokens = g.roi_grid**2 if region else g.pool_grid**2
        prefix = tokens + 1 + (g.soft_prompts if region else 0)
        per_example += 2 * tokens * enc.width * dec.width + 2 * enc.width * parts.embed_dim(cfg)
        per_example += flops.decoder(dec, m.kv_heads, prefix + text) + flops.lm_head(dec.width, m.vocab_size, text)
        per_example += flops.decoder(dec, m.kv_heads, text + 1)  # the [EMB] pass
        return parts.step_flops(cfg, per_example, parts.similarity_flops(cfg))


def check_region_task(task: str) -> None:
    if task not in REGION_TASKS:
        raise ValueError(f"mmgem.region_task={task!r}: choose one of {REGION_TASKS} ('' is the image-level stage).")


class MMGEMObjective(losses.ContrastiveCaptioning, Objective):

    def __init__(self, cfg, pad_id: int):
        check_region_task(cfg.mmgem.region_task)
        super().__init__(cfg, pad_id)
        self.region_task = cfg.mmgem.region_task

    def _forward(self, model, params, batch, region: bool):
        """(caption logits, vision embedding, text embedding) at the image or the region level."""
        text = batch["region_text"] if region else batch["text"]

        def fn(module, images, boxes, text):
            grid = module.feature_grid(images)
            tokens = module.vision_tokens(grid, boxes)
            logits = module.decode_text(*module.context(tokens, region=region), text[:, :-1])
            return logits, module.embed_vision(tokens, region=region), module.embed_texts(text), module.log_scale

        return model.apply({"params": params}, batch["image"], batch["box"] if region else None, text, method=fn)

    def loss(self, model, params, batch):
        region = bool(self.region_task)
        text = batch["region_text"] if region else batch["text"]
        logits, img, txt, log_scale = self._forward(model, params, batch, region)
        sums = losses.caption_sums(logits, text, self.pad_id, self.z_loss)
        if region:
            same = jnp.all(text[:, None, :] == text[None, :, :], axis=-1)
            log_scale = jnp.minimum(log_scale, self.contrastive.max_log_scale)
            con = losses.clip_loss(img, txt, log_scale, positives=same)
            scalars = {"contrastive_loss": con, "temperature": jnp.exp(-log_scale)}
        else:
            con, scalars = self.contrastive(img, txt, log_scale)
        use_con = self.region_task in ("", "retrieval", "both")
        use_cap = self.region_task in ("", "caption", "both")
        return losses.with_captions(con, scalars, sums, self.contrastive_weight if use_con else 0.0,
                                    self.caption_weight if use_cap else 0.0)

    def eval_sums(self, model, params, batch):
        text = losses.valid_text(batch, self.pad_id)
        logits, *_ = self._forward(model, params, {**batch, "text": text}, region=False)
        return losses.caption_sums(logits, text, self.pad_id, self.z_loss)

    def embed(self, model, params, batch, region: bool = False):
        def fn(module, images, boxes, text):
            tokens = module.vision_tokens(module.feature_grid(images), boxes)
            return module.embed_vision(tokens, region=region), module.embed_texts(text)

        img, txt = model.apply({"params": params}, batch["image"], batch["box"] if region else None,
                               batch["region_text"] if region else batch["text"], method=fn)
        return losses.normalise(img), losses.normalise(txt)
