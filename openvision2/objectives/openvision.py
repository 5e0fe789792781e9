"""OpenVision v1 / CLIPS: contrastive + captioning, weighted 1 : 2 by default.

The captioner of OpenVision 2 (with its own token masking, off by default in
the v1 recipe) plus a CLIP-style text tower on the contrastive text
(`batch["text_con"]`) against the encoder's pooled output. The caption part
stays token-weighted (`contrastive.with_captions`).
"""

from __future__ import annotations

from openvision2.objectives.captioning import Captioning
from openvision2.objectives.contrastive import ContrastiveLoss, embed_two_towers, with_captions


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
        return with_captions(con, scalars, sums, self.contrastive_weight, self.loss_weight)

    def embed(self, model, params, batch):
        return embed_two_towers(model, params, batch)
