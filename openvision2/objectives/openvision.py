"""OpenVision v1 / CLIPS: contrastive + captioning, weighted 1 : 2 by default.

The captioner of OpenVision 2 (with its own token masking, off by default in
the v1 recipe) plus a CLIP-style text tower on the contrastive text
(`batch["text_con"]`) against the encoder's pooled output. The caption part
stays token-weighted: the trainer divides the numerator by the caption token
count, so the contrastive term (a batch mean) enters it multiplied by that
count, which does not depend on the parameters.
"""

from __future__ import annotations

import jax

from openvision2.objectives.captioning import Captioning
from openvision2.objectives.contrastive import ContrastiveLoss, embed_two_towers


class OpenVision(Captioning):
    name = "openvision"
    captions = True
    embeds = True

    def __init__(self, cfg):
        super().__init__(cfg)
        self.contrastive = ContrastiveLoss(cfg)
        self.contrastive_weight = float(cfg.contrastive.weight)

    def loss(self, model, params, batch):
        sums, enc = self.caption_sums(model, params, batch)

        def towers(module, pooled, text):
            return module.embed_pooled(pooled), module.embed_texts(text), module.head.scale_and_bias()

        img, txt, (log_scale, bias) = model.apply({"params": params}, enc["pooled"], batch["text_con"],
                                                  method=towers)
        con, scalars = self.contrastive(img, txt, log_scale, bias)
        count = jax.lax.stop_gradient(sums["count"])
        caption = sums["loss_sum"] + sums["z_sum"]
        scalars["caption_loss"] = caption / count
        numerator = self.contrastive_weight * con * count + self.loss_weight * caption
        return numerator, {**sums, "scalars": scalars}

    def embed(self, model, params, batch):
        return embed_two_towers(model, params, batch)
