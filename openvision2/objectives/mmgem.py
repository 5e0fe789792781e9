"""MM-GEM: InfoNCE + captioning CE from one decoder, summed (the paper's L_Emb + L_Gen).

Stage 1 (`mmgem.region_task=""`): image embedding (MeanPool -> h1) against the
decoder's `[EMB]` text embedding (h2), and the caption after the `[CAP]` context (h3).

Region stage (`mmgem.region_task` = caption | retrieval | both, one box per
example from the record): region captions from RoIAlign features through h3 and
the soft prompts, and/or region retrieval through h4 against the region caption's
`[EMB]` embedding. Which parameters train is the stage's `optim.trainable` (the
paper trains only h3 + soft prompts, or only h4). Region captions repeat across a
batch (many regions are "a red circle."), so the region InfoNCE treats every pair
with the same caption as a positive.
"""

from __future__ import annotations

import jax.numpy as jnp

from openvision2.objectives.captioning import cross_entropy, pad_id, shift_tokens, valid_text
from openvision2.objectives.contrastive import ContrastiveLoss, _normalise, clip_loss, with_captions

REGION_TASKS = ("", "caption", "retrieval", "both")


class MMGEM:
    name = "mmgem"
    captions = True
    embeds = True

    def __init__(self, cfg):
        self.region_task = cfg.mmgem.region_task
        if self.region_task not in REGION_TASKS:
            raise ValueError(f"mmgem.region_task={self.region_task!r}: choose one of {REGION_TASKS} "
                             "('' is the image-level stage).")
        self.contrastive = ContrastiveLoss(cfg)
        self.contrastive_weight = float(cfg.contrastive.weight)
        self.caption_weight = float(cfg.get("caption_loss_weight", 1.0))
        self.z_loss = float(cfg.get("z_loss", 0.0))
        self.pad_id = pad_id(cfg)

    @property
    def regions(self) -> bool:
        return bool(self.region_task)

    def prepare(self, batch, step):
        del step
        return batch

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
        region = self.regions
        text = batch["region_text"] if region else batch["text"]
        logits, img, txt, log_scale = self._forward(model, params, batch, region)
        _, targets, weights = shift_tokens(text, self.pad_id)
        sums = cross_entropy(logits, targets, weights, self.z_loss)
        if region:
            same = jnp.all(text[:, None, :] == text[None, :, :], axis=-1)
            log_scale = jnp.minimum(log_scale, self.contrastive.max_log_scale)
            con = clip_loss(img, txt, log_scale, positives=same)
            scalars = {"contrastive_loss": con, "temperature": jnp.exp(-log_scale)}
        else:
            con, scalars = self.contrastive(img, txt, log_scale)
        use_con = self.region_task in ("", "retrieval", "both")
        use_cap = self.region_task in ("", "caption", "both")
        return with_captions(con, scalars, sums, self.contrastive_weight if use_con else 0.0,
                             self.caption_weight if use_cap else 0.0)

    def eval_sums(self, model, params, batch):
        text = valid_text(batch, self.pad_id)
        logits, *_ = self._forward(model, params, {**batch, "text": text}, region=False)
        _, targets, weights = shift_tokens(text, self.pad_id)
        return cross_entropy(logits, targets, weights, self.z_loss)

    def embed(self, model, params, batch, region: bool = False):
        def fn(module, images, boxes, text):
            tokens = module.vision_tokens(module.feature_grid(images), boxes)
            return module.embed_vision(tokens, region=region), module.embed_texts(text)

        img, txt = model.apply({"params": params}, batch["image"], batch["box"] if region else None,
                               batch["region_text"] if region else batch["text"], method=fn)
        return _normalise(img), _normalise(txt)
