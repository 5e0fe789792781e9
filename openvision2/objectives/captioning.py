"""Captioning cross-entropy, the only loss of OpenVision 2.

Token-weighted mean over real target tokens (`[eos]` included, padding
excluded). The sum and the count are returned too, so gradient accumulation
and multi-device means stay exact: divide once, after summing.

Every objective implements the same small interface, which the one trainer calls:
- `captions` / `embeds`: what it trains, so eval knows what to measure (caption
  loss, token accuracy and greedy exact match; image-text retrieval);
- `prepare(batch, step)`: the step's random choices (token masks) for the global batch;
- `loss(model, params, batch) -> (numerator, sums)`: the trainer differentiates
  `numerator` and divides it (and the gradient) by `sums["count"]` once; `sums` may
  carry `correct` (token accuracy), `tokens` and `scalars` (logged as `train/<name>`);
- `eval_sums(model, params, batch)` (captioning objectives): teacher-forced sums over
  the batch's valid rows, no masking;
- `embed(model, params, batch) -> (image, text)` (embedding objectives): embeddings
  for retrieval eval.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from openvision2 import masking
from openvision2.config import encoder_size


def shift_tokens(text, pad_id: int = 0):
    """[bos w1 .. wn eos pad..] -> inputs [bos w1 .. wn eos pad..][:-1], targets [w1 .. eos pad..]."""
    inputs, targets = text[:, :-1], text[:, 1:]
    return inputs, targets, (targets != pad_id)


def cross_entropy(logits, targets, weights, z_loss: float = 0.0):
    """Per-token CE (+ optional z-loss) summed over weighted tokens.

    Returns dict(loss_sum, z_sum, correct, count) in float32.
    """
    logits = logits.astype(jnp.float32)
    log_z = jax.nn.logsumexp(logits, axis=-1)
    target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    w = weights.astype(jnp.float32)
    nll = log_z - target_logit
    correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
    return {
        "loss_sum": jnp.sum(nll * w),
        "z_sum": jnp.sum(z_loss * jnp.square(log_z) * w),
        "correct": jnp.sum(correct * w),
        "count": jnp.sum(w),
    }


def pad_id(cfg) -> int:
    from openvision2.data.tokenizer import get_tokenizer  # Local: objectives need only the special ids.
    return get_tokenizer(cfg.text.vocab).pad_id


def valid_text(batch, pad: int):
    """Eval batches pad the last batch with copies marked invalid: their text becomes all padding."""
    return jnp.where(batch["valid"][:, None], batch["text"], pad)


class Captioning:
    """OpenVision 2: image -> (masked) visual prefix -> decoder -> caption CE."""

    name = "captioning"
    captions = True
    embeds = False

    def __init__(self, cfg):
        self.keep_ratio = float(cfg.keep_ratio)
        self.loss_weight = float(cfg.get("caption_loss_weight", 1.0))
        self.z_loss = float(cfg.get("z_loss", 0.0))
        self.seed = int(cfg.seed)
        self.patch = encoder_size(cfg.model.encoder).patch
        self.cls_token = bool(cfg.model.cls_token)
        self.pad_id = pad_id(cfg)

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
        inputs, targets, weights = shift_tokens(batch["text"], self.pad_id)
        enc = model.apply({"params": params}, batch["image"], method=model.encode)
        logits = model.apply({"params": params}, enc["prenorm"], batch.get("keep_idx"), inputs,
                             enc["prenorm"].shape[1], method=_teacher_forced)
        return cross_entropy(logits, targets, weights, self.z_loss), enc

    def loss(self, model, params, batch):
        """Returns (weighted loss sum to differentiate, sums incl. the `count` normaliser).
        The caller divides by the (global, accumulated) count once."""
        sums, _ = self.caption_sums(model, params, batch)
        return self.loss_weight * (sums["loss_sum"] + sums["z_sum"]), sums

    def eval_sums(self, model, params, batch):
        sums, _ = self.caption_sums(model, params, {**batch, "text": valid_text(batch, self.pad_id)})
        return sums


def _teacher_forced(module, prenorm, keep_idx, inputs, num_tokens):
    prefix, pos = module.visual_prefix(prenorm, keep_idx)
    return module.decode_text(prefix, pos, inputs, num_tokens)
