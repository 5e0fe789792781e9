"""CoCa: contrastive (softmax, learnable temperature) + captioning, weighted 1 : 2.

The model (`models/coca.py`) runs the caption once: the unimodal half yields
the text embedding at CLS, the multimodal half the caption logits. No visual
token masking: the decoder reads pooled image queries, not patch tokens.
"""

from __future__ import annotations

from openvision2.objectives.captioning import cross_entropy, pad_id, shift_tokens, valid_text
from openvision2.objectives.contrastive import ContrastiveLoss, _normalise, with_captions


class CoCa:
    name = "coca"
    captions = True
    embeds = True

    def __init__(self, cfg):
        self.contrastive = ContrastiveLoss(cfg)
        self.contrastive_weight = float(cfg.contrastive.weight)
        self.caption_weight = float(cfg.get("caption_loss_weight", 1.0))
        self.z_loss = float(cfg.get("z_loss", 0.0))
        self.pad_id = pad_id(cfg)

    def prepare(self, batch, step):
        del step
        return batch

    def _caption(self, logits, text):
        _, targets, weights = shift_tokens(text, self.pad_id)
        return cross_entropy(logits, targets, weights, self.z_loss)

    def loss(self, model, params, batch):
        out = model.apply({"params": params}, batch["image"], batch["text"])
        sums = self._caption(out["logits"], batch["text"])
        con, scalars = self.contrastive(out["image_embedding"], out["text_embedding"], *out["scale_and_bias"])
        return with_captions(con, scalars, sums, self.contrastive_weight, self.caption_weight)

    def eval_sums(self, model, params, batch):
        text = valid_text(batch, self.pad_id)
        return self._caption(model.apply({"params": params}, batch["image"], text)["logits"], text)

    def embed(self, model, params, batch):
        def fn(module, images, text):
            return module.embed_pooled_tokens(module.encode(images)["tokens"]), module.embed_texts(text)

        img, txt = model.apply({"params": params}, batch["image"], batch["text"], method=fn)
        return _normalise(img), _normalise(txt)
