"""What a run writes about itself: `metrics.jsonl` and TensorBoard events, and the per-step
bookkeeping behind them."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import time
import uuid

import jax
import numpy as np

from openvision2 import paths


class MetricsWriter:
    """What a run logs, written by process 0 only: `metrics.jsonl` (one JSON object per event, the
    source of truth) and TensorBoard event files in `<workdir>/tensorboard/` (the same numbers).

    On a resume, events past the restored step are dropped (those steps run again) along with a
    line torn by a kill mid-write; TensorBoard is told to hide them too (`purge_step`).

    On a local disk each event is appended as it is written. Object stores (`gs://`) have no
    append, so there the log lives here and in a local spool, and `sync()` uploads whole objects:
    every `sync_s` seconds while events come, and whenever the trainer asks (before each
    checkpoint, after evals and stage events, at exit). Every event at or before a checkpoint is
    therefore in the bucket before that checkpoint is, and a resume from it loses nothing.
    """

    def __init__(self, workdir: str, resume_step: int | None, sync_s: float = 30.0, wandb=None, config: dict | None = None):
        """`wandb` (the config's `wandb` block): with a `project`, the same scalars also go to Weights &
        Biases, into one W&B run per workdir (a resume continues it); `config` is logged with it."""
        self.path = paths.join(workdir, "metrics.jsonl")
        self.tensorboard_dir = paths.join(workdir, "tensorboard")
        self.remote = paths.is_remote(workdir)
        self.active = jax.process_index() == 0
        self.sync_s = sync_s
        self._lines: list[str] = []  # on an object store: the whole log
        self._dirty = False
        self._synced = time.monotonic()
        self._uploaded: dict[str, int] = {}  # spooled event file -> bytes uploaded
        self._board = None
        self._spool = None
        self._wandb = None
        if not self.active:
            return
        keep_until = resume_step or 0  # a run without a checkpoint starts again from step 0
        kept = [line for line in self._read_lines() if _step(line) is not None and _step(line) <= keep_until]
        if self.remote:
            self._lines, self._dirty = kept, True
            self.sync(force=True)
        elif paths.exists(self.path):
            paths.write_text(self.path, "".join(kept))
        self._spool = tempfile.mkdtemp(prefix="openvision2-tensorboard-") if self.remote else None
        from tensorboardX import SummaryWriter
        # A suffix of its own: two invocations in one second would otherwise share a file name.
        self._board = SummaryWriter(self._spool or self.tensorboard_dir, purge_step=keep_until + 1, flush_secs=30,
                                    filename_suffix=f".{uuid.uuid4().hex[:8]}")
        if wandb is not None and wandb.get("project"):
            self._wandb = _wandb_run(workdir, wandb, config)

    def _read_lines(self) -> list[str]:
        if not paths.exists(self.path):
            return []
        return [line if line.endswith("\n") else line + "\n" for line in paths.read_text(self.path).splitlines()]

    def write(self, step: int, metrics: dict):
        if not self.active:
            return
        row = {"step": int(step)}
        row.update({k: v if isinstance(v, (str, int)) else float(v) if np.ndim(v) == 0 else np.asarray(v).tolist()
                    for k, v in metrics.items()})
        line = json.dumps(row) + "\n"
        if self.remote:
            self._lines.append(line)
            self._dirty = True
        else:
            with open(self.path, "a") as f:
                f.write(line)
        scalars = {k: v for k, v in row.items() if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)}
        for key, value in scalars.items():
            self._board.add_scalar(key, value, int(step))
        if self._wandb is not None and scalars:
            self._wandb.log(scalars, step=int(step))
        self.sync()

    def event(self, step: int, fields: dict):
        """A non-metric event (e.g. a stage start), written once: a resume that
        re-enters the same point does not log it again."""
        if not self.has(step, fields):
            self.write(step, fields)
            self.sync(force=True)

    def has(self, step: int, fields: dict) -> bool:
        if not self.active:
            return False
        want = {"step": int(step), **json.loads(json.dumps(fields))}
        for line in (self._lines if self.remote else self._read_lines()):
            with contextlib.suppress(json.JSONDecodeError):
                if json.loads(line) == want:
                    return True
        return False

    def sync(self, force: bool = False) -> None:
        """Makes what was written durable where the run lives: flushes the event files and, on an
        object store, uploads the log and the event files that grew (at most every `sync_s` s
        unless `force`)."""
        if not self.active or (not force and time.monotonic() - self._synced < self.sync_s):
            return
        self._synced = time.monotonic()
        if self._board is not None:
            self._board.flush()
        if not self.remote:
            return
        if self._dirty:
            paths.write_text(self.path, "".join(self._lines))
            self._dirty = False
        if self._spool:
            for name in os.listdir(self._spool):
                local = os.path.join(self._spool, name)
                size = os.path.getsize(local)
                if self._uploaded.get(name) != size:
                    paths.copy(local, paths.join(self.tensorboard_dir, name))
                    self._uploaded[name] = size

    def close(self) -> None:
        if self._board is not None:
            self._board.close()
            self._board = None
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None
        self.sync(force=True)
        if self._spool:
            shutil.rmtree(self._spool, ignore_errors=True)
            self._spool = None


def _wandb_run(workdir: str, settings, config: dict | None):
    """The W&B run of this workdir: its id is derived from the workdir, so every invocation (a
    resume, another host's restart) logs into the same run."""
    try:
        import wandb
    except ImportError as e:
        raise ImportError("--config.wandb.project is set but wandb is not installed: pip install -e '.[wandb]' "
                          "(or --config.wandb.project='' to log without it).") from e
    local = paths.resolve(workdir) if not paths.is_remote(workdir) else tempfile.mkdtemp(prefix="openvision2-wandb-")
    return wandb.init(project=settings["project"], entity=settings.get("entity") or None,
                      name=paths.basename(paths.resolve(workdir)), id=hashlib.sha1(workdir.encode()).hexdigest()[:16],
                      resume="allow", config=config, dir=local, mode=settings.get("mode") or None)


def _step(line: str) -> int | None:
    try:
        return int(json.loads(line)["step"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError):
        return None


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
