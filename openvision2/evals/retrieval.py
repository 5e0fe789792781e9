"""Image-text retrieval with several captions per image: image->text and text->image
recall@1/5/10 (a hit is any of the image's captions in the top k; for a caption, its image).

Recipes that embed score by cosine similarity of the shared-space embeddings (CLIP's and
CLIP_benchmark's retrieval). Caption-only recipes (OpenVision 2) score every image-caption
pair by the decoder's summed log-likelihood of the caption after the image (`likelihood`, a
full ranking of all pairs rather than a re-ranking of a shortlist; `max_pairs` bounds it).
"""

from __future__ import annotations

import numpy as np

from openvision2.evals import base, scoring, sets
from openvision2.evals.registry import register

KS = (1, 5, 10)


@register
class Retrieval(scoring.ScoringEvaluator):
    type = "retrieval"
    task = sets.CAPTIONS
    defaults = {"method": "auto", "pairs_per_pass": 4096, "max_pairs": 2_000_000}

    def run(self, params) -> dict:
        data = self.load()
        texts = [c for caps in data.captions for c in caps]
        owner = np.repeat(np.arange(len(data)), [len(c) for c in data.captions])
        out = {}
        for method in self.methods:
            if method == "embedding":
                img, ok = self.scorer.embed_images(params, data.images)
                sim = img @ self.scorer.embed_texts(params, texts).T
            else:
                if len(data) * len(texts) > int(self.spec.max_pairs):
                    raise ValueError(f"evals.{self.name}: likelihood retrieval scores every pair, {len(data)} x "
                                     f"{len(texts)} here, more than max_pairs={self.spec.max_pairs}; lower num or "
                                     "raise max_pairs.")
                sim, ok = self.scorer.log_likelihood(params, data.images, texts)
            out.update(self.prefixed(method, recall_at_k(sim, owner, ok)))
        out.update(base.skipped_count(ok))
        return out


def recall_at_k(sim: np.ndarray, owner: np.ndarray, ok: np.ndarray, ks=KS) -> dict:
    """Recall@k both ways from [N images, M texts] scores; `owner[m]` is text m's image. Images
    that could not be read (and their captions) are left out. Ties count against the query
    (a competitor scoring equal to the positive ranks before it)."""
    keep_img = np.flatnonzero(ok)
    keep_txt = np.flatnonzero(ok[owner])
    sim = sim[np.ix_(keep_img, keep_txt)]
    remap = -np.ones(len(ok), int)
    remap[keep_img] = np.arange(len(keep_img))
    owner = remap[owner[keep_txt]]
    positive = owner[None, :] == np.arange(len(keep_img))[:, None]  # [N, M]
    # image -> text: rank of the best positive caption = competitors scoring at least as high.
    best_pos = np.where(positive, sim, -np.inf).max(axis=1)
    i2t = (np.where(positive, -np.inf, sim) >= best_pos[:, None]).sum(axis=1)
    # text -> image: rank of the caption's own image.
    own = sim[owner, np.arange(len(owner))]
    t2i = ((sim >= own[None, :]) & ~positive).sum(axis=0)
    out = {}
    for k in ks:
        out[f"i2t_r{k}"] = float(np.mean(i2t < k)) if len(i2t) else float("nan")
        out[f"t2i_r{k}"] = float(np.mean(t2i < k)) if len(t2i) else float("nan")
    out["num_images"], out["num_texts"] = float(len(keep_img)), float(len(keep_txt))
    return out
