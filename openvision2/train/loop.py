"""The trainer: every curriculum stage of a config, in order, in one run that resumes exactly.

Read top to bottom. The plan: stages, one mesh, the tokenizer. The resume point: the latest
checkpoint and the stage it belongs to. Then, for each remaining stage: enter it (restore or
initialise the state, or carry the parameters over from the previous stage with a fresh
optimizer), run its steps (log, eval and checkpoint when due), end it (eval at its own
resolution, log its end, checkpoint). Re-running the same command on the same workdir
resumes from the latest checkpoint; the data stream is addressed by step, so it resumes
exactly too.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import signal
import tempfile
import time

from absl import logging
import flax.linen as nn
import jax

from openvision2 import parallel, paths, recipes
from openvision2.config import defaults, stages, validation
from openvision2.convert import init as convert_init
from openvision2.data import pipeline
from openvision2.data.tokenizer import get_tokenizer
from openvision2.evals.heldout import Evaluator
from openvision2.evals.suite import Suite
from openvision2.train import carry, checkpoint, optim, perf
from openvision2.train.metrics import MetricsWriter, PendingStep, StepClock, due, fmt_time
from openvision2.train.state import Training


class DivergenceError(RuntimeError):
    pass


def train(cfg, workdir: str, stop_after_steps: int = 0) -> dict:
    """Runs (or resumes) training, every curriculum stage in order; returns the last train and
    eval metrics. `stop_after_steps` > 0 checkpoints and returns after that many steps."""
    # --- The plan: stages, one mesh, the tokenizer ---------------------------------------------------
    paths.makedirs(workdir)
    defaults.complete(cfg)
    write_config(workdir, cfg)
    plan = stages.resolve(cfg)
    staged = stages.is_staged(cfg)
    mesh_shape = validate_plan(plan, jax.device_count())
    mesh, rules = parallel.make_mesh(mesh_shape), parallel.logical_rules(cfg)
    logging.info("mesh %s over %d devices (%d processes)", mesh_shape, jax.device_count(), jax.process_count())
    if staged:
        logging.info("curriculum: %s", "  ->  ".join(
            f"{s.name} [{s.start}, {s.end}) {s.cfg.image_size}px batch {s.cfg.batch_size}" for s in plan))
    tokenizer = get_tokenizer(cfg.text.vocab)
    if tokenizer.vocab_size > cfg.model.vocab_size:
        raise ValueError(f"Tokenizer {cfg.text.vocab!r} has {tokenizer.vocab_size} entries but model.vocab_size="
                         f"{cfg.model.vocab_size}; raise --config.model.vocab_size.")
    ids = recipes.SpecialIds.of(tokenizer)
    total_steps = plan[-1].end

    with jax.set_mesh(mesh), nn.logical_axis_rules(rules), _StopSignal() as stop:
        # --- The resume point ------------------------------------------------------------------------
        mgr = checkpoint.manager(workdir, cfg)
        run, state = None, None
        try:
            latest = mgr.latest_step()
            step = start = latest or 0
            until = total_steps if not stop_after_steps else min(total_steps, start + stop_after_steps)
            writer = MetricsWriter(workdir, latest, wandb=cfg.wandb.to_dict(), config=json.loads(
                cfg.to_json_best_effort()))
            run = Run(mesh, mgr, writer, stop, tokenizer, ids, total_steps, staged, Profile(workdir, int(cfg.profile_steps)))
            _log_sources(cfg)
            t_start = time.perf_counter()
            first = 0 if latest is None else stages.stage_of_checkpoint(plan, latest)
            for stage in plan[first:]:
                # --- Enter the stage -------------------------------------------------------------------
                training = Training(stage.cfg, recipes.get(stage.cfg.objective), ids, mesh, rules,
                                    step_offset=stage.start)
                if state is None:
                    state = _first_state(training, mgr, latest, stage, plan[0].cfg)
                else:
                    state = _carry_over(training, state, stage, cfg.seed)
                stage_run = StageRun(run, stage, training)
                # --- Run it ----------------------------------------------------------------------------
                if staged and step == stage.start and step < until:
                    run.writer.event(step, _stage_event(stage, "start"))
                step, state, stopped = stage_run.run_steps(state, step, min(until, stage.end))
                # --- End it ----------------------------------------------------------------------------
                # Only an invocation that ran the stage's last step ends it. The step loop never
                # checkpoints a stage's last step itself, so a checkpoint at a boundary always means
                # the stage was closed.
                if step == stage.end and step > start:
                    if staged or step == total_steps:
                        stage_run.evaluate(state, step, stage_end=True)
                    if staged:
                        run.writer.event(step, _stage_event(stage, "end"))
                    stage_run.save(step, state)
                if stopped or step < stage.end or step >= until:
                    break
            if mgr.latest_step() != step:
                stage_run.save(step, state)
            mgr.wait_until_finished()
        finally:
            mgr.wait_until_finished()
            mgr.close()
            if run is not None:
                run.profile.finish(state)
                run.writer.close()
    logging.info("Done at step %d in %s.", step, fmt_time(time.perf_counter() - t_start))
    return {**run.last_train, **run.last_eval, "step": step}


def validate_plan(plan: list[stages.Stage], num_devices: int) -> dict[str, int]:
    """Every stage's config checked against the devices; the run's one mesh (stages cannot change it)."""
    shapes = [validation.validate(stage.cfg, num_devices) for stage in plan]
    return shapes[0]


def write_config(workdir: str, cfg):
    if jax.process_index() == 0:
        paths.write_text(paths.join(workdir, "config.json"), cfg.to_json_best_effort(indent=2, sort_keys=True))


def _first_state(training: Training, mgr, latest: int | None, stage: stages.Stage, first_cfg):
    """The state this invocation starts from: the latest checkpoint, or a fresh one (with any
    imported weights, which apply to the first stage's model)."""
    if latest is None:
        state = training.init(jax.random.key(first_cfg.seed))
        if first_cfg.init_from or first_cfg.init_decoder_from:
            state = convert_init.initialise_state(first_cfg, state)
        return state
    state, data_pos = checkpoint.restore(mgr, latest, training.abstract_state)
    for key, value in _data_identity(stage).items():
        if data_pos.get(key, value) != value:
            raise ValueError(f"Checkpoint at step {latest} was written with data {key}={data_pos.get(key)} "
                             f"but the config has {value}; resume with the original value or use a new workdir.")
    logging.info("Resumed from step %d (stage %r, data position: step %d).", latest, stage.name, data_pos["step"])
    return state


def _carry_over(training: Training, state, stage: stages.Stage, seed: int):
    """A stage boundary: the parameters carry over, the optimizer starts afresh."""
    added = carry.added_params(state["params"], training.abstract_state["params"])
    if added:
        logging.info("stage %r adds %d freshly initialised parameters: %s", stage.name, len(added), ", ".join(added))
    return training.carry(state["params"], state["step"], jax.random.fold_in(jax.random.key(seed), stage.index))


def _data_identity(stage: stages.Stage) -> dict:
    """What defines the data stream a checkpoint's step addresses."""
    return {"seed": stage.data_seed, "global_batch": int(stage.cfg.batch_size), "stage": stage.name}


def _stage_event(stage: stages.Stage, kind: str) -> dict:
    c = stage.cfg
    return {"stage": stage.name, "stage/event": kind, "stage/index": stage.index, "stage/start": stage.start,
            "stage/end": stage.end, "stage/image_size": c.image_size, "stage/batch_size": c.batch_size,
            "stage/keep_ratio": c.keep_ratio, "stage/peak_lr": optim.peak_lr(c),
            "stage/trainable": c.optim.trainable, "stage/frozen": c.optim.frozen}


def _log_sources(cfg):
    sources = pipeline.describe_sources(cfg.data)
    logging.info("train data: %d records in %d shards (%s), caption %s %r; eval: %s",
                 sources["train"]["num_records"], len(sources["train"]["paths"]),
                 "synthetic shapes" if sources["synthetic_shapes"] else "ArrayRecord",
                 sources["caption_mode"], sources["caption_field"],
                 f"{sources['eval']['num_used']} records" if sources["eval"] else "none")
    if sources["eval"] is None:
        logging.warning("No eval set: this run trains on its own data but evaluates nothing. Set "
                        "--config.data.eval_path=<held-out ArrayRecord shards or tfds:<name>> to measure it.")


class _StopSignal:
    """Whether to checkpoint and stop now. Single process: SIGTERM sets a flag. Multi-host:
    JAX's preemption service catches it and `mgr.reached_preemption` agrees on a step across
    hosts, so every host saves the same one."""

    def __enter__(self):
        self.signal, self._previous = None, None
        if jax.process_count() == 1:
            self._previous = signal.signal(signal.SIGTERM, lambda sig, _: setattr(self, "signal", sig))
        return self

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)

    def requested(self, mgr, step: int) -> bool:
        return self.signal is not None or mgr.reached_preemption(step)


@dataclasses.dataclass
class Run:
    """What every stage of one invocation shares, and the last metrics it logged."""
    mesh: jax.sharding.Mesh
    mgr: object  # orbax CheckpointManager
    writer: MetricsWriter
    stop: _StopSignal
    tokenizer: object
    ids: recipes.SpecialIds
    total_steps: int
    staged: bool
    profile: Profile
    last_train: dict = dataclasses.field(default_factory=dict)
    last_eval: dict = dataclasses.field(default_factory=dict)


class Profile:
    """`profile_steps` steps traced with `jax.profiler`, once per invocation, after the first compile:
    `<workdir>/profile/plugins/profile/<time>/<host>.xplane.pb` (+ `.trace.json.gz`), which
    TensorBoard's profile plugin and xprof open. Each process of a multi-host job traces its own
    steps, under `profile/process_<i>` when there are several. On cloud storage the trace is
    written locally, then copied to the workdir."""

    def __init__(self, workdir: str, steps: int):
        self.steps, self.left, self.tracing = steps, steps, False
        self.target = paths.join(workdir, "profile", *([f"process_{jax.process_index()}"]
                                                        if jax.process_count() > 1 else []))
        self.local = self.target
        if steps and paths.is_remote(workdir):
            self.local = tempfile.mkdtemp(prefix="openvision2-profile-")

    def before_step(self) -> None:
        if self.left > 0 and not self.tracing:
            jax.profiler.start_trace(self.local)
            self.tracing = True

    def after_step(self, state) -> None:
        if self.tracing:
            self.left -= 1
            if self.left == 0:
                self.finish(state)

    def finish(self, state=None) -> None:
        """Ends the trace (also when the run ends before `profile_steps` steps)."""
        if not self.tracing:
            return
        jax.block_until_ready(state)
        jax.profiler.stop_trace()
        self.tracing = False
        if self.local != self.target:
            paths.copy_tree(self.local, self.target)
        logging.info("profile of %d steps written to %s", self.steps - self.left, self.target)


class StageRun:
    """One stage's steps: its data stream, the compiled step, logging, evals and checkpoints."""

    def __init__(self, run: Run, stage: stages.Stage, training: Training):
        self.run, self.stage, self.training, self.cfg = run, stage, training, stage.cfg
        self.label = stage.name if run.staged else None
        self.stream = training.recipe.stream(self.cfg, seed=stage.data_seed)
        self.evaluator = Evaluator(self.cfg, training.recipe, training.model, training.objective, run.tokenizer,
                                   run.ids, run.mesh)
        self.suite = (Suite(self.cfg, training.recipe, run.ids, run.tokenizer, run.mesh) if self.cfg.run_evals
                      else None)
        self.clock = StepClock()

    def save(self, step: int, state):
        """Checkpoints the state with its data position: the step plus what defines the stage's stream.
        The log goes first, so every event up to a checkpoint is stored before the checkpoint is."""
        self.run.writer.sync(force=True)
        checkpoint.save(self.run.mgr, step, state, {"step": step, **_data_identity(self.stage)}, force=True)

    def evaluate(self, state, step: int, stage_end: bool = False, heldout: bool = True) -> dict:
        """The held-out eval (when `heldout`) and the evaluators due at `step`, logged as one row."""
        out = self.evaluator.run(state["params"]) if heldout else {}
        if self.suite is not None:
            out.update(self.suite.run(state["params"], self.suite.due(step, stage_end)))
        if not out:
            return out
        self.run.writer.write(step, self._tag(out))
        self.run.writer.sync(force=True)
        self.run.last_eval = out
        return out

    def _tag(self, metrics: dict) -> dict:
        return {**metrics, "stage": self.label} if self.label else metrics

    def run_steps(self, state, step: int, until: int):
        """Steps from `step` to `until` (stopping early on SIGTERM/preemption); returns
        (step, state, stopped)."""
        if step >= until:
            return step, state, False
        host_offset, host_batch = parallel.host_batch_slice(self.run.mesh, self.cfg.batch_size)
        batches = pipeline.train_batches(self.cfg.data, self.stream, self.run.tokenizer, start_step=step - self.stage.start,
                                         global_batch=self.cfg.batch_size, host_batch=host_batch,
                                         host_offset=host_offset)
        try:
            return self._loop(state, step, until, batches)
        finally:
            with contextlib.suppress(Exception):
                batches.close()

    def _loop(self, state, step: int, until: int, batches):
        cfg, mesh, mgr = self.cfg, self.run.mesh, self.run.mgr
        next_batch = lambda: parallel.to_global(mesh, next(batches), cfg.batch_size)
        batch = next_batch()
        compiled = self.training.train_step.lower(state, batch).compile()
        self.flops_per_step = perf.train_flops(cfg)
        self.peak, peak_source = perf.peak_flops_per_device()
        logging.info("train step: %.3g model FLOP/step; peak %.3g FLOP/s/device (%s)", self.flops_per_step, self.peak,
                     peak_source)
        pending = PendingStep(self._finish)
        self.clock.restart()
        stopped = False
        while step < until:
            batch = batch if batch is not None else next_batch()
            self.run.profile.before_step()
            state, metrics = compiled(state, batch)
            self.run.profile.after_step(state)
            batch, step = None, step + 1
            self.clock.tick()
            pending.push(step, metrics, log=due(step, cfg.log_every) or step == until)
            stopped = self.run.stop.requested(mgr, step)
            inside = step < self.stage.end  # the stage's last step is evaluated and saved by its end
            heldout = due(step, cfg.eval_every)
            if inside and (heldout or (self.suite is not None and self.suite.due(step))):
                pending.flush()
                self.evaluate(state, step, heldout=heldout)
                self.clock.restart()
            if inside and (due(step, cfg.checkpoint_every) or stopped):
                pending.flush()  # never checkpoint a state whose loss was not finite
                self.save(step, state)
            if stopped:
                logging.warning("Preemption/SIGTERM at step %d: checkpoint saved, exiting.", step)
                break
        pending.flush()
        return step, state, stopped

    def _finish(self, step: int, metrics: dict, log: bool):
        """A step's metrics, one step late: the NaN check, then its log line if one is due."""
        _check_finite(step, metrics, self.run.mgr)
        if not log:
            return
        host = jax.device_get(metrics)
        dt = self.clock.step_s()
        host.update({"perf/step_s": dt, "perf/images_per_s": self.cfg.batch_size / dt,
                     "perf/mfu": self.flops_per_step / dt / (self.peak * jax.device_count())})
        self.run.writer.write(step, self._tag(host))
        self.run.last_train = host
        parts = [f"loss {host['train/loss']:.4f}"]
        for key, label in (("train/token_accuracy", "acc"), ("train/contrastive_loss", "con"),
                           ("train/caption_loss", "cap"), ("train/temperature", "temp")):
            if key in host:
                parts.append(f"{label} {host[key]:.3f}")
        logging.info("%sstep %d/%d  %s  lr %.2e  %.3f s/step  %.1f img/s  ETA %s",
                     f"[{self.label}] " if self.label else "", step, self.run.total_steps, "  ".join(parts),
                     host["train/lr"], dt, self.cfg.batch_size / dt, fmt_time((self.run.total_steps - step) * dt))
        self.clock.restart()


def _check_finite(step: int, metrics: dict, mgr):
    loss = float(jax.device_get(metrics["train/loss"]))
    if not math.isfinite(loss):
        mgr.wait_until_finished()
        raise DivergenceError(
            f"Training loss is {loss} at step {step}. Stopped without saving the diverged state; the last good "
            f"checkpoint is step {mgr.latest_step()}. Lower --config.optim.lr, set --config.optim.grad_clip=1.0 or "
            "lengthen warmup, then rerun the same command to resume from that checkpoint.")
