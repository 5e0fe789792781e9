"""Zero-shot classification: top-1, top-5 and mean per-class recall, two ways.

- `embedding` (recipes that embed: CLIP, SigLIP, OpenVision v1, CoCa, MM-GEM): every class's
  prompts (each template with `{c}` filled) are embedded and L2-normalised, averaged over the
  templates and normalised again; an image's logits are its normalised embedding against
  those class embeddings (CLIP, Radford et al. 2021; LAION's CLIP_benchmark).
- `likelihood` (recipes that caption: OpenVision 2, and the contrastive captioners): each class
  is scored by the decoder's summed log-likelihood of its caption after the image (CapPa,
  Tschannen et al. 2023; big_vision's scoring classifier): teacher-forced, padding masked,
  no length normalisation. The image is encoded once (`caption_context`); its context is then
  paired with chunks of classes in batched jitted passes. With several templates the
  log-likelihoods are averaged over them.

`method="auto"` is `embedding` for recipes that embed and `likelihood` otherwise; `both`
reports each under its own prefix (`likelihood/top1`, `embedding/top1`).
"""

from __future__ import annotations

import numpy as np

from openvision2.evals import base, scoring, sets
from openvision2.evals.registry import register


@register
class ZeroShot(scoring.ScoringEvaluator):
    type = "zeroshot"
    defaults = {
        "method": "auto",
        "templates": "",  # "|"-separated templates overriding the set's own ("" = the set's)
        "pairs_per_pass": 4096,  # likelihood: image-class pairs per jitted pass (memory knob)
    }

    def templates(self, data: sets.ClassificationSet) -> list[str]:
        return [t for t in self.spec.templates.split("|") if t] if self.spec.templates else list(data.templates)

    def run(self, params) -> dict:
        data = self.load()
        out = {}
        for method in self.methods:
            logits, ok = (self._likelihood if method == "likelihood" else self._embedding)(params, data)
            metrics = classification_metrics(logits[ok], data.labels[ok], len(data.classnames))
            if method == "likelihood" and np.isfinite(self.scorer.pairs_per_s):  # after compilation
                metrics["pairs_per_s"] = self.scorer.pairs_per_s  # image-class pairs per second
            out.update(self.prefixed(method, metrics))
        out.update(base.skipped_count(ok))
        return out

    def _embedding(self, params, data):
        templates = self.templates(data)
        prompts = [sets.fill(t, c) for c in data.classnames for t in templates]
        text = self.scorer.embed_texts(params, prompts).reshape(len(data.classnames), len(templates), -1)
        classes = scoring.normalise(scoring.normalise(text).mean(axis=1))
        img, ok = self.scorer.embed_images(params, data.images)
        return img @ classes.T, ok

    def _likelihood(self, params, data):
        templates, c = self.templates(data), len(data.classnames)
        prompts = [sets.fill(t, name) for t in templates for name in data.classnames]
        ll, ok = self.scorer.log_likelihood(params, data.images, prompts)  # each image encoded once
        return ll.reshape(len(ll), len(templates), c).mean(axis=1), ok


def classification_metrics(logits: np.ndarray, labels: np.ndarray, num_classes: int) -> dict:
    """top-1, top-5 (with at least 5 classes) and mean per-class recall of [N, C] scores."""
    if len(labels) == 0:
        return {"top1": float("nan"), "num_images": 0.0}
    order = np.argsort(-logits, axis=1, kind="stable")
    rank = np.argmax(order == labels[:, None], axis=1)
    out = {"top1": float(np.mean(rank < 1))}
    if num_classes >= 5:
        out["top5"] = float(np.mean(rank < 5))
    present = np.unique(labels)
    out["mean_per_class_recall"] = float(np.mean([np.mean(rank[labels == k] < 1) for k in present]))
    out["num_images"] = float(len(labels))
    return out
