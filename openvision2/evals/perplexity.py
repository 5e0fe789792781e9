"""Caption loss on an eval set: the decoder's teacher-forced cross-entropy per caption token
(and its exponential, the perplexity) and token accuracy, over every caption of every image,
with every visual token (no masking: masking is training only). It runs the recipe's own
`eval_sums`, the sums the held-out eval of the trainer also reports.
"""

from __future__ import annotations

import math

import jax
import numpy as np

from openvision2 import parallel
from openvision2.evals import base, sets
from openvision2.evals.registry import register


@register
class Perplexity(base.Evaluator):
    type = "perplexity"
    task = sets.CAPTIONS
    defaults = {}

    def __init__(self, name, spec, ctx):
        super().__init__(name, spec, ctx)
        model, objective = ctx.model, ctx.objective
        self._sums = jax.jit(lambda p, b: objective.eval_sums(model, p, b))

    def applies(self) -> str:
        if not self.ctx.recipe.captions:
            return f"objective={self.ctx.cfg.objective!r} has no caption decoder"
        return ""

    def run(self, params) -> dict:
        data = self.load()
        owner = np.repeat(np.arange(len(data)), [len(c) for c in data.captions])
        tokens = self.ctx.tokenizer.encode([c for caps in data.captions for c in caps], int(self.ctx.cfg.text.max_len))
        images = data.images.subset(owner)
        totals = {"loss_sum": 0.0, "correct": 0.0, "count": 0.0}
        skipped = 0.0
        for start, (x, ok, n) in zip(range(0, len(images), self.global_batch), self.image_batches(images)):
            rows = np.arange(start, start + self.global_batch).clip(max=len(tokens) - 1)
            text = tokens[rows][self.offset:self.offset + self.host_batch]
            valid = ok[self.offset:self.offset + self.host_batch]
            batch = {"image": x, **parallel.to_global(self.ctx.mesh, {"text": text, "valid": valid}, self.global_batch)}
            sums = jax.device_get(self._sums(params, batch))
            for k in totals:
                totals[k] += float(sums[k])
            skipped += float((~ok[:n]).sum())
        loss = totals["loss_sum"] / max(totals["count"], 1.0)
        return {"loss": loss, "perplexity": math.exp(min(loss, 80.0)),
                "token_accuracy": totals["correct"] / max(totals["count"], 1.0), "tokens": totals["count"],
                "skipped": skipped}
