"""CoCa (Yu et al. 2022): contrastive (softmax, learnable temperature) + captioning, weighted 1 : 2,
from a text decoder split in two (`models/coca.py`).

The model runs the caption once: the unimodal half yields the text embedding at CLS, the
multimodal half (cross-attending to pooled image queries) the caption logits. No visual
token masking: the decoder reads pooled image queries, not patch tokens.
"""

from __future__ import annotations

import dataclasses

from openvision2 import sizes
from openvision2.models import flops
from openvision2.models.coca import CoCa as CoCaModel
from openvision2.recipes import losses, parts
from openvision2.recipes.base import Objective, Recipe, SpecialIds
from openvision2.recipes.registry import register


@register
class CoCa(Recipe):
    name = "coca"
    parts = ("decoder",)
    captions = True
    embeds = True

    def defaults(self) -> dict:
        return parts.merged(parts.CAPTION_DEFAULTS, parts.CONTRASTIVE_DEFAULTS, parts.EMBED_DEFAULTS, {"coca": {
            "unimodal_layers": 0,  # text-only layers under the CLS embedding (0 = half the decoder depth)
            "caption_queries": 256,  # attentional-pooler queries the multimodal layers cross-attend to
        }})

    def build_model(self, cfg, ids: SpecialIds, mode: str = "train"):
        m, size = cfg.model, sizes.decoder_size(cfg.model.decoder)
        return CoCaModel(parts.vit(cfg), size, vocab_size=m.vocab_size, eos_id=ids.eos,
                         unimodal_layers=unimodal_layers(cfg), caption_queries=int(cfg.coca.caption_queries),
                         embed_dim=parts.embed_dim(cfg),
                         init_scale=1.0 / losses.init_temperature(cfg, losses.loss_kind(cfg, "softmax")),
                         kv_heads=m.kv_heads, rope_theta=m.rope_theta, mode=mode, scan=m.scan_layers,
                         remat_policy=m.remat_policy, attention_impl=parts.attention_impl(cfg), **parts.dtypes(cfg))

    def objective(self, cfg, ids: SpecialIds):
        return CoCaObjective(cfg, ids.pad)

    def train_flops(self, cfg) -> float:
        m = cfg.model
        enc, dec = sizes.encoder_size(m.encoder), sizes.decoder_size(m.decoder)
        per_example, n = parts.encoder_flops(cfg)
        text, q, uni = cfg.text.max_len - 1, int(cfg.coca.caption_queries), unimodal_layers(cfg)
        per_example += (flops.attention_pool(enc.width, 1, n) + flops.attention_pool(enc.width, q, n)
                        + 2 * q * enc.width * dec.width)
        per_example += flops.decoder(dataclasses.replace(dec, depth=uni), m.kv_heads, text + 1)
        per_example += flops.decoder(dataclasses.replace(dec, depth=dec.depth - uni), m.kv_heads, text, context=q)
        per_example += flops.lm_head(dec.width, m.vocab_size, text)
        return parts.step_flops(cfg, per_example, parts.similarity_flops(cfg))


def unimodal_layers(cfg) -> int:
    return int(cfg.coca.unimodal_layers or sizes.decoder_size(cfg.model.decoder).depth // 2)


class CoCaObjective(losses.ContrastiveCaptioning, Objective):

    def loss(self, model, params, batch):
        out = model.apply({"params": params}, batch["image"], batch["text"])
        sums = losses.caption_sums(out["logits"], batch["text"], self.pad_id, self.z_loss)
        con, scalars = self.contrastive(out["image_embedding"], out["text_embedding"], *out["scale_and_bias"])
        return losses.with_captions(con, scalars, sums, self.contrastive_weight, self.caption_weight)

    def eval_sums(self, model, params, batch):
        text = losses.valid_text(batch, self.pad_id)
        return losses.caption_sums(model.apply({"params": params}, batch["image"], text)["logits"], text, self.pad_id,
                                   self.z_loss)

    def embed(self, model, params, batch):
        def fn(module, images, text):
            return module.embed_pooled_tokens(module.encode(images)["tokens"]), module.embed_texts(text)

        img, txt = model.apply({"params": params}, batch["image"], batch["text"], method=fn)
        return losses.normalise(img), losses.normalise(txt)
