r"""The trainer: `python -m openvision2.train --config=configs/demo.py --workdir=/tmp/demo`.

Read top to bottom: mesh -> model/objective/optimizer -> sharded state (fresh
or restored) -> jitted step -> loop (log, eval, checkpoint) -> final eval.
Re-running the same command on the same workdir resumes from the latest
checkpoint; the data stream is addressed by step, so it resumes exactly too.
"""

from __future__ import annotations

import contextlib
import json
import logging as std_logging
import math
import os
import signal
import time

from absl import app, flags, logging
import flax.linen as nn
import jax
import ml_collections
import numpy as np
from ml_collections import config_flags

from openvision2 import checkpoint, config as config_lib, evaluate, optim, parallel, perf, stages as stages_lib
from openvision2 import step as step_lib
from openvision2.convert import init as convert_init
from openvision2.data import pipeline
from openvision2.data.tokenizer import get_tokenizer

config_flags.DEFINE_config_file("config", None, "Config file (`path.py[:arg]`).", lock_config=True)
flags.DEFINE_string("workdir", None, "Run directory: config.json, metrics.jsonl, checkpoints/.")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-host on CPU/GPU).")
flags.DEFINE_integer("num_processes", None, "Number of processes (multi-host).")
flags.DEFINE_integer("process_id", None, "This process's index (multi-host).")
flags.DEFINE_integer("stop_after_steps", 0, "Checkpoint and exit after this many steps of this invocation "
                     "(preemption drills; 0 = run to total_steps).")


class DivergenceError(RuntimeError):
    pass


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


def quiet_library_logs():
    """Keep INFO lines from our own code; libraries (orbax, jax) speak at WARNING and up."""
    own = os.path.dirname(os.path.abspath(__file__))
    logging.get_absl_handler().addFilter(
        lambda record: record.levelno >= std_logging.WARNING or record.pathname.startswith(own))


def _on_cluster() -> bool:
    """True where jax.distributed.initialize() can find its peers by itself."""
    if os.environ.get("JAX_PLATFORMS", "").strip() == "cpu":
        return False
    if int(os.environ.get("SLURM_NTASKS", "1")) > 1 or os.environ.get("MEGASCALE_COORDINATOR_ADDRESS"):
        return True
    hosts = [h for h in os.environ.get("TPU_WORKER_HOSTNAMES", "").split(",") if h and " " not in h]
    if len(hosts) > 1:
        return True
    # Cloud TPU VMs expose their chips as /dev/accel* (v2-v4) or /dev/vfio/<n> (v5e and later).
    return os.path.exists("/dev/accel0") or (os.path.isdir("/dev/vfio") and any(
        name.isdigit() for name in os.listdir("/dev/vfio")))


def maybe_initialize_distributed():
    if FLAGS.coordinator_address:
        if jax.config.jax_platforms in (None, "", "cpu"):
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
    elif _on_cluster():
        jax.distributed.initialize()


def write_config(workdir: str, cfg):
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(cfg.to_json_best_effort(indent=2, sort_keys=True))


def train(cfg, workdir: str, stop_after_steps: int = 0) -> dict:
    """Runs (or resumes) training, every curriculum stage in order; returns the
    last train and eval metrics."""
    os.makedirs(workdir, exist_ok=True)
    write_config(workdir, cfg)
    plan = stages_lib.resolve(cfg)
    staged = stages_lib.is_staged(cfg)
    for stage in plan:
        mesh_shape = config_lib.validate(stage.cfg, jax.device_count())
    mesh = parallel.make_mesh(mesh_shape)
    rules = parallel.logical_rules(cfg)
    logging.info("mesh %s over %d devices (%d processes)", mesh_shape, jax.device_count(), jax.process_count())
    if staged:
        logging.info("curriculum: %s", "  ->  ".join(
            f"{s.name} [{s.start}, {s.end}) {s.cfg.image_size}px batch {s.cfg.batch_size}" for s in plan))

    tokenizer = get_tokenizer(cfg.text.vocab)
    if tokenizer.vocab_size > cfg.model.vocab_size:
        raise ValueError(f"Tokenizer {cfg.text.vocab!r} has {tokenizer.vocab_size} entries but model.vocab_size="
                         f"{cfg.model.vocab_size}; raise --config.model.vocab_size.")
    total_steps = plan[-1].end

    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        mgr = checkpoint.manager(workdir, cfg)
        latest = mgr.latest_step()
        k = 0 if latest is None else stages_lib.stage_of_checkpoint(plan, latest)
        t = step_lib.Training(plan[k].cfg, mesh, rules, step_offset=plan[k].start)
        if latest is not None:
            state, data_pos = checkpoint.restore(mgr, latest, t.abstract_state)
            for key, value in _data_identity(plan[k]).items():
                if data_pos.get(key, value) != value:
                    raise ValueError(f"Checkpoint at step {latest} was written with data {key}={data_pos.get(key)} "
                                     f"but the config has {value}; resume with the original value or use a new workdir.")
            logging.info("Resumed from step %d (stage %r, data position: step %d).", latest, plan[k].name,
                         data_pos["step"])
            step = latest
        else:
            state = t.init(jax.random.key(cfg.seed))
            if cfg.get("init_from") or cfg.get("init_decoder_from"):
                state = convert_init.initialise_state(plan[0].cfg, state)
            step = 0
        start = step
        metrics_writer = MetricsWriter(workdir, latest)
        _log_sources(cfg)

        # Single process: SIGTERM sets a flag and the loop saves and exits. Multi-host:
        # JAX's preemption service catches it and mgr.reached_preemption() agrees on a
        # step across hosts, so every host saves the same one.
        stop = {"signal": None}
        previous_handler = None
        if jax.process_count() == 1:
            previous_handler = signal.signal(signal.SIGTERM, lambda sig, _: stop.update(signal=sig))
        run_until = total_steps if not stop_after_steps else min(total_steps, start + stop_after_steps)
        last = {"train": {}, "eval": {}}
        t_start = time.perf_counter()
        try:
            while True:
                stage = plan[k]
                if step == stage.end and k + 1 < len(plan):
                    # Stage boundary: carry the params over, start a fresh optimizer.
                    k += 1
                    t = step_lib.Training(plan[k].cfg, mesh, rules, step_offset=plan[k].start)
                    added = stages_lib.added_params(state["params"], t.abstract_state["params"])
                    if added:
                        logging.info("stage %r adds %d freshly initialised parameters: %s", plan[k].name,
                                     len(added), ", ".join(added))
                    state = t.continue_from(state["params"], state["step"],
                                            jax.random.fold_in(jax.random.key(cfg.seed), k))
                    continue
                if staged and step == stage.start and step < run_until:
                    metrics_writer.event(step, _stage_event(stage, "start"))
                loop = _StageLoop(stage, t, tokenizer, mesh, mgr, metrics_writer, stop, total_steps,
                                  label=stage.name if staged else None)
                step, state, preempted = loop.run(state, step, min(run_until, stage.end), last)
                if step == stage.end and step > start:
                    # This invocation ran the stage's last step: eval at its resolution, log its
                    # end, checkpoint. The loop never checkpoints a stage's last step itself, so
                    # a checkpoint at a boundary always means the stage was closed.
                    if staged or step == total_steps:
                        last["eval"] = loop.evaluate(state, step)
                    if staged:
                        metrics_writer.event(step, _stage_event(stage, "end"))
                    loop.save(step, state)
                if preempted or step < stage.end:
                    break
                if k + 1 == len(plan):
                    break
            if mgr.latest_step() != step:
                _save(mgr, plan[k], step, state)
            mgr.wait_until_finished()
        finally:
            if previous_handler is not None:
                signal.signal(signal.SIGTERM, previous_handler)
            mgr.wait_until_finished()
            mgr.close()
        logging.info("Done at step %d in %s.", step, _fmt_time(time.perf_counter() - t_start))
        return {**last["train"], **last["eval"], "step": step}


def _save(mgr, stage, step: int, state):
    """Checkpoints the state with its data position: the step plus what defines the stage's stream."""
    checkpoint.save(mgr, step, state, {"step": step, **_data_identity(stage)}, force=True)


def _data_identity(stage) -> dict:
    """What defines the data stream a checkpoint's step addresses."""
    return {"seed": stage.data_seed, "global_batch": int(stage.cfg.batch_size), "stage": stage.name}


def _stage_event(stage, kind: str) -> dict:
    c = stage.cfg
    return {"stage": stage.name, "stage/event": kind, "stage/index": stage.index, "stage/start": stage.start,
            "stage/end": stage.end, "stage/image_size": c.image_size, "stage/batch_size": c.batch_size,
            "stage/keep_ratio": c.keep_ratio, "stage/peak_lr": optim.peak_lr(c),
            "stage/trainable": c.optim.get("trainable", ""), "stage/frozen": c.optim.get("frozen", "")}


def _log_sources(cfg):
    sources = pipeline.describe_sources(cfg)
    logging.info("train data: %d records in %d shards (%s), caption %s %r; eval: %s",
                 sources["train"]["num_records"], len(sources["train"]["paths"]),
                 "synthetic shapes" if sources["synthetic_shapes"] else "ArrayRecord",
                 sources.get("caption_mode", "field"), sources["caption_field"],
                 f"{sources['eval']['num_used']} records" if sources["eval"] else "none")


class _StageLoop:
    """The step loop of one stage: data, compiled step, logging, eval, checkpoints."""

    def __init__(self, stage, t, tokenizer, mesh, mgr, writer, stop, total_steps, label):
        self.stage, self.t, self.tokenizer, self.mesh, self.mgr = stage, t, tokenizer, mesh, mgr
        self.writer, self.stop, self.total_steps, self.label = writer, stop, total_steps, label
        self.cfg = stage.cfg
        self.evaluator = evaluate.Evaluator(self.cfg, t.model, t.objective, tokenizer, mesh)

    def save(self, step: int, state):
        _save(self.mgr, self.stage, step, state)

    def evaluate(self, state, step: int) -> dict:
        out = self.evaluator.run(state["params"])
        self.writer.write(step, self._tag(out))
        return out

    def _tag(self, metrics: dict) -> dict:
        return {**metrics, "stage": self.label} if self.label else metrics

    def run(self, state, step: int, until: int, last: dict):
        """Steps from `step` to `until` (stopping early on SIGTERM/preemption);
        returns (step, state, preempted)."""
        if step >= until:
            return step, state, False
        cfg, mesh, stage = self.cfg, self.mesh, self.stage
        data_cfg = ml_collections.ConfigDict(cfg.to_dict())
        data_cfg.seed = stage.data_seed
        host_offset, host_batch = parallel.host_batch_slice(mesh, cfg.batch_size)
        batches = pipeline.train_batches(data_cfg, self.tokenizer, start_step=step - stage.start,
                                         global_batch=cfg.batch_size, host_batch=host_batch, host_offset=host_offset)
        try:
            return self._loop(state, step, until, last, batches)
        finally:
            with contextlib.suppress(Exception):
                batches.close()

    def _loop(self, state, step, until, last, batches):
        cfg, mesh, mgr = self.cfg, self.mesh, self.mgr
        batch = parallel.to_global(mesh, next(batches), cfg.batch_size)
        compiled = self.t.train_step.lower(state, batch).compile()
        flops_per_step = perf.train_flops(cfg)
        peak, peak_source = perf.peak_flops_per_device()
        logging.info("train step: %.3g model FLOP/step; peak %.3g FLOP/s/device (%s)", flops_per_step, peak,
                     peak_source)
        # Metrics of step s are fetched after step s+1 is dispatched, so the host never
        # waits for the device just to log: (step, device metrics, should_log).
        pending = None
        clock = {"t": time.perf_counter(), "steps": 0}

        def flush():
            """Finishes the pending step: NaN check, then its log line if it is a log step."""
            nonlocal pending
            if pending is None:
                return
            done_step, metrics, should_log = pending
            pending = None
            _check_finite(done_step, metrics, mgr)
            if not should_log:
                return
            host = jax.device_get(metrics)
            dt = (time.perf_counter() - clock["t"]) / max(clock["steps"], 1)
            host.update({"perf/step_s": dt, "perf/images_per_s": cfg.batch_size / dt,
                         "perf/mfu": flops_per_step / dt / (peak * jax.device_count())})
            self.writer.write(done_step, self._tag(host))
            last["train"] = host
            parts = [f"loss {host['train/loss']:.4f}"]
            for key, label in (("train/token_accuracy", "acc"), ("train/contrastive_loss", "con"),
                               ("train/caption_loss", "cap"), ("train/temperature", "temp")):
                if key in host:
                    parts.append(f"{label} {host[key]:.3f}")
            logging.info("%sstep %d/%d  %s  lr %.2e  %.3f s/step  %.1f img/s  ETA %s",
                         f"[{self.label}] " if self.label else "", done_step, self.total_steps, "  ".join(parts),
                         host["train/lr"], dt, cfg.batch_size / dt, _fmt_time((self.total_steps - done_step) * dt))
            clock.update(t=time.perf_counter(), steps=0)

        preempted = False
        while step < until:
            if batch is None:
                batch = parallel.to_global(mesh, next(batches), cfg.batch_size)
            state, metrics = compiled(state, batch)
            batch = None
            step += 1
            clock["steps"] += 1
            flush()
            pending = (step, metrics, step % cfg.log_every == 0 or step == until)

            preempted = self.stop["signal"] is not None or mgr.reached_preemption(step)
            if cfg.eval_every and step % cfg.eval_every == 0 and step < self.stage.end:
                flush()
                last["eval"] = self.evaluate(state, step)
                clock.update(t=time.perf_counter(), steps=0)
            if (step % cfg.checkpoint_every == 0 or preempted) and step < self.stage.end:
                flush()  # never checkpoint a state whose loss was not finite
                self.save(step, state)
            if preempted:
                logging.warning("Preemption/SIGTERM at step %d: checkpoint saved, exiting.", step)
                break
        flush()
        return step, state, preempted


def _check_finite(step: int, metrics: dict, mgr):
    loss = float(jax.device_get(metrics["train/loss"]))
    if not math.isfinite(loss):
        mgr.wait_until_finished()
        raise DivergenceError(
            f"Training loss is {loss} at step {step}. Stopped without saving the diverged state; the last good "
            f"checkpoint is step {mgr.latest_step()}. Lower --config.optim.lr, set --config.optim.grad_clip=1.0 or "
            "lengthen warmup, then rerun the same command to resume from that checkpoint.")


def _fmt_time(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600:d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def main(argv):
    del argv
    if not FLAGS.workdir:
        raise app.UsageError("--workdir is required.")
    quiet_library_logs()
    maybe_initialize_distributed()
    if jax.process_index() > 0:
        logging.set_verbosity(logging.WARNING)  # one progress log per job: process 0's
    try:
        train(FLAGS.config, FLAGS.workdir, FLAGS.stop_after_steps)
    except DivergenceError as e:
        logging.error("%s", e)
        raise SystemExit(3) from None


FLAGS = flags.FLAGS

if __name__ == "__main__":
    flags.mark_flags_as_required(["config"])
    app.run(main)
