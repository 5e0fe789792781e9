"""Captioning: greedy captions of an eval set scored against its reference captions with the
COCO caption evaluation's CIDEr-D, BLEU-1..4 and ROUGE-L (`evals/coco_caption.py`: the same
definitions and PTB tokenisation as the COCO toolkit, in Python).

Greedy decoding with a KV cache over every visual token (no masking), as at inference; the
caption length is `max_new_tokens` (0 = the run's `text.max_len - 1`). `results` (a path,
local or gs://) writes the captions as a COCO results file `[{"image_id", "caption"}]`, which
`openvision2-caption-metrics` scores again.
"""

from __future__ import annotations

import json

import jax
import numpy as np

from openvision2 import paths
from openvision2.evals import base, sets
from openvision2.evals.registry import register
from openvision2.models import generate


@register
class Captioning(base.Evaluator):
    type = "captioning"
    task = sets.CAPTIONS
    defaults = {"max_new_tokens": 0, "results": ""}

    def __init__(self, name, spec, ctx):
        super().__init__(name, spec, ctx)
        self._greedy = None

    def applies(self) -> str:
        if not self.ctx.recipe.captions:
            return f"objective={self.ctx.cfg.objective!r} has no caption decoder"
        return ""

    def captions(self, params, images: sets.Images) -> tuple[list[str], np.ndarray]:
        """(greedy caption of every image, ok [N])."""
        if self._greedy is None:
            self._greedy = self.ctx.recipe.greedy_fn(self.ctx.cfg, self.ctx.ids, int(self.spec.max_new_tokens))
        tokens, ok = self.map_images(lambda x: self._greedy(params, x), images)
        tok = self.ctx.tokenizer
        return [tok.decode(generate.strip(row, tok.eos_id, tok.pad_id)) for row in np.asarray(tokens)], ok

    def run(self, params) -> dict:
        from openvision2.evals import coco_caption  # the scorers, imported when a caption eval runs

        data = self.load()
        captions, ok = self.captions(params, data.images)
        keep = np.flatnonzero(ok)
        refs = {i: data.captions[i] for i in keep}
        out = coco_caption.score(refs, {i: captions[i] for i in keep}) if len(keep) else {}
        if self.spec.results and jax.process_index() == 0:
            paths.write_text(self.spec.results, json.dumps(
                [{"image_id": data.image_ids[i], "caption": captions[i]} for i in keep]))
        out.update(base.skipped_count(ok))
        out["num_images"] = float(len(keep))
        return out
