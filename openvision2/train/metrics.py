"""What a run writes about itself: `metrics.jsonl`, and the per-step bookkeeping behind it."""

from __future__ import annotations

import contextlib
import json
import os
import time

import jax
import numpy as np


class MetricsWriter:
    """metrics.jsonl, one JSON object per event, written by process 0 only."""

    def __init__(self, workdir: str, resume_step: int | None):
        self.path = os.path.join(workdir, "metrics.jsonl")
        self.active = jax.process_index() == 0
        if self.active and resume_step is not None and os.path.exists(self.path):
            # Drop events past the restored checkpoint (those steps run again) and a line
            # torn by a kill mid-write.
            kept = []
            with open(self.path) as f:
                for line in f:
                    try:
                        if json.loads(line)["step"] <= resume_step:
                            kept.append(line if line.endswith("\n") else line + "\n")
                    except (json.JSONDecodeError, KeyError, TypeError):
                        continue
            with open(self.path, "w") as f:
                f.writelines(kept)

    def write(self, step: int, metrics: dict):
        if not self.active:
            return
        row = {"step": int(step)}
        row.update({k: v if isinstance(v, (str, int)) else float(v) if np.ndim(v) == 0 else np.asarray(v).tolist()
                    for k, v in metrics.items()})
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")

    def event(self, step: int, fields: dict):
        """A non-metric event (e.g. a stage start), written once: a resume that
        re-enters the same point does not log it again."""
        if not self.has(step, fields):
            self.write(step, fields)

    def has(self, step: int, fields: dict) -> bool:
        if not (self.active and os.path.exists(self.path)):
            return False
        want = {"step": int(step), **json.loads(json.dumps(fields))}
        with open(self.path) as f:
            for line in f:
                with contextlib.suppress(json.JSONDecodeError):
                    if json.loads(line) == want:
                        return True
        return False


class PendingStep:
    """The device metrics of the last step, finished one step late: step s is fetched after
    step s+1 is dispatched, so the host never waits for the device just to log.

    `finish(step, metrics, log)` is called once per step, in order.
    """

    def __init__(self, finish):
        self._finish = finish
        self._held = None

    def push(self, step: int, metrics, log: bool) -> None:
        """Finishes the held step, then holds this one."""
        self.flush()
        self._held = (step, metrics, log)

    def flush(self) -> None:
        if self._held is not None:
            held, self._held = self._held, None
            self._finish(*held)


class StepClock:
    """Wall time per step since the last `restart` (a log line, an eval)."""

    def __init__(self):
        self.restart()

    def restart(self) -> None:
        self._start, self._steps = time.perf_counter(), 0

    def tick(self) -> None:
        self._steps += 1

    def step_s(self) -> float:
        return (time.perf_counter() - self._start) / max(self._steps, 1)


def due(step: int, every: int) -> bool:
    """Whether a periodic action (`log_every`, `eval_every`, `checkpoint_every`) falls on `step`."""
    return every > 0 and step % every == 0


def fmt_time(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600:d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
