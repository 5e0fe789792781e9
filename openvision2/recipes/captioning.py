"""OpenVision 2 (arXiv 2509.01644): a ViT and a small LLaMA decoder trained with a captioning
loss only; a random ~35% of the visual tokens reach the decoder (`keep_ratio`), drawn inside
the jitted step; no text tower, no contrastive loss.

Model: ViT -> projector (LLaVA's 2-layer GELU MLP, or one linear layer) -> decoder over
`[visual prefix ; caption]` (`models/captioner.py`). Loss: token-weighted mean CE over real
target tokens (`[eos]` included, padding excluded), times `caption_loss_weight` (2 in the
public recipe), plus an optional z-loss.
"""

from __future__ import annotations


from openvision2 import sizes
from openvision2.models import captioner, flops, masking
from openvision2.recipes import losses, parts
from openvision2.recipes.base import Recipe, SpecialIds
from openvision2.recipes.registry import register


@register
class Captioning(Recipe):
    name = "captioning"
    parts = ("decoder",)
    drops_visual_tokens = True
    captions = True
    export_formats = ("hf", "timm", "llava")  # LLaVA: the whole prefix captioner

    def defaults(self) -> dict:
        return dict(parts.CAPTION_DEFAULTS)

    def build_model(self, cfg, ids: SpecialIds, mode: str = "train"):
        return captioner.Captioner(**parts.prefix_captioner(cfg, mode))

    def objective(self, cfg, ids: SpecialIds):
        return CaptionObjective(cfg, ids)

    def train_flops(self, cfg) -> float:
        return parts.step_flops(cfg, prefix_captioner_flops(cfg))


def prefix_captioner_flops(cfg) -> float:
    """Per-example forward FLOPs of ViT -> projector -> decoder over the kept visual tokens + caption."""
    m = cfg.model
    enc, dec = sizes.encoder_size(m.encoder), sizes.decoder_size(m.decoder)
    per_example, n = parts.encoder_flops(cfg)
    k = n if cfg.keep_ratio >= 1.0 else masking.num_kept(n, cfg.keep_ratio)
    text = cfg.text.max_len - 1
    per_example += 2 * k * enc.width * dec.width + (2 * k * dec.width**2 if m.projector == "mlp" else 0)
    return per_example + flops.decoder(dec, m.kv_heads, k + text) + flops.lm_head(dec.width, m.vocab_size, text)


class CaptionObjective:
    """Image -> (masked) visual prefix -> decoder -> caption CE."""

    def __init__(self, cfg, ids: SpecialIds):
        self.keep_ratio = float(cfg.keep_ratio)
        self.loss_weight = float(cfg.caption_loss_weight)
        self.z_loss = float(cfg.z_loss)
        self.seed = int(cfg.seed)
        self.patch = sizes.encoder_size(cfg.model.encoder).patch
        self.cls_token = bool(cfg.model.cls_token)
        self.pad_id = ids.pad

    def prepare(self, batch, step):
        """Adds the training step's random choices for the whole global batch.

        Drawn before any micro-batching, so gradient accumulation splits the
        same masks the unaccumulated step would use.
        """
        size = batch["image"].shape[1]
        num_tokens = (size // self.patch) ** 2 + int(self.cls_token)
        keep_idx = masking.sample_keep_indices(masking.step_key(self.seed, step), batch["image"].shape[0],
                                               num_tokens, self.keep_ratio)
        return batch if keep_idx is None else {**batch, "keep_idx": keep_idx}

    def caption_sums(self, model, params, batch):
        """CE sums of the captioner over `batch["text"]`, masking what `prepare` chose (`keep_idx`);
        without it (eval, inference) the decoder sees every visual token."""
        inputs, targets, weights = losses.shift_tokens(batch["text"], self.pad_id)
        enc = model.apply({"params": params}, batch["image"], method=model.encode)
        logits = model.apply({"params": params}, enc["prenorm"], batch.get("keep_idx"), inputs,
                             enc["prenorm"].shape[1], method=teacher_forced)
        return losses.cross_entropy(logits, targets, weights, self.z_loss), enc

    def loss(self, model, params, batch):
        """Returns (weighted loss sum to differentiate, sums incl. the `count` normaliser).
        The caller divides by the (global, accumulated) count once."""
        sums, _ = self.caption_sums(model, params, batch)
        return self.loss_weight * (sums["loss_sum"] + sums["z_sum"]), sums

    def eval_sums(self, model, params, batch):
        sums, _ = self.caption_sums(model, params, {**batch, "text": losses.valid_text(batch, self.pad_id)})
        return sums


def teacher_forced(module, prenorm, keep_idx, inputs, num_tokens):
    """Caption logits from encoder tokens, through the (optionally masked) visual prefix."""
    prefix, pos = module.visual_prefix(prenorm, keep_idx)
    return module.decode_text(prefix, pos, inputs, num_tokens)


