"""A run's evaluators (`config.evals`), built for one stage, run when due.

Each entry names its `type` (the registry finds it), its eval set (`data`) and its cadence
(`every`: 0 = at the end of each stage, N = also every N steps, -1 = never while training).
An evaluator that cannot measure the run's model (zero-shot by likelihood without a caption
decoder, say) is skipped with the reason logged. Results are `eval/<name>/<metric>`.
"""

from __future__ import annotations

import time

from absl import logging

from openvision2.evals import base, registry


class Suite:

    def __init__(self, cfg, recipe, ids, tokenizer, mesh, names: list[str] | None = None):
        ctx = base.Context(cfg, recipe, ids, tokenizer, mesh)
        available = sorted(cfg.evals)
        unknown = [n for n in names or () if n not in cfg.evals]
        if unknown:
            raise ValueError(f"no evaluator named {', '.join(unknown)} in this run's config; it has "
                             f"{', '.join(available) or 'none'} (add one with config.add_eval in a config file).")
        self.evaluators, self.skipped = [], {}
        for name in names or available:
            spec = cfg.evals[name]
            if not spec.get("type"):
                raise ValueError(f"evals.{name} has no type: choose one of {registry.names()}.")
            evaluator = registry.get(spec.type)(name, spec, ctx)
            reason = evaluator.applies()
            if reason:
                self.skipped[name] = reason
                logging.info("eval %s (%s) skipped: %s", name, spec.type, reason)
            else:
                self.evaluators.append(evaluator)

    def due(self, step: int, stage_end: bool = False) -> list:
        """The evaluators to run at `step` (all active ones at a stage's end)."""
        return [e for e in self.evaluators
                if e.every >= 0 and (stage_end or (e.every > 0 and step % e.every == 0))]

    def run(self, params, evaluators=None) -> dict:
        """{eval/<name>/<metric>: float} of `evaluators` (default: all)."""
        out = {}
        for ev in self.evaluators if evaluators is None else evaluators:
            t0 = time.perf_counter()
            metrics = ev.run(params)
            seconds = time.perf_counter() - t0
            out.update({f"eval/{ev.name}/{k}": float(v) for k, v in metrics.items()})
            out[f"eval/{ev.name}/seconds"] = seconds
            shown = "  ".join(f"{k} {v:.4g}" for k, v in metrics.items() if not k.startswith(("num_", "skipped")))
            logging.info("eval %s (%s, %.1fs): %s", ev.name, ev.type, seconds, shown)
        return out
