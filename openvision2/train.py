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
import numpy as np
from ml_collections import config_flags

from openvision2 import checkpoint, config as config_lib, evaluate, parallel, perf, step as step_lib
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
        row.update({k: (float(v) if np.ndim(v) == 0 else np.asarray(v).tolist()) for k, v in metrics.items()})
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")


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
    """Runs (or resumes) training; returns the last train and eval metrics."""
    os.makedirs(workdir, exist_ok=True)
    write_config(workdir, cfg)
    mesh_shape = config_lib.validate(cfg, jax.device_count())
    mesh = parallel.make_mesh(mesh_shape)
    rules = parallel.logical_rules(cfg)
    logging.info("mesh %s over %d devices (%d processes)", mesh_shape, jax.device_count(), jax.process_count())

    tokenizer = get_tokenizer(cfg.text.vocab)
    if tokenizer.vocab_size > cfg.model.vocab_size:
        raise ValueError(f"Tokenizer {cfg.text.vocab!r} has {tokenizer.vocab_size} entries but model.vocab_size="
                         f"{cfg.model.vocab_size}; raise --config.model.vocab_size.")
    total_steps = int(cfg.total_steps)

    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        t = step_lib.Training(cfg, mesh, rules)
        mgr = checkpoint.manager(workdir, cfg)
        data_identity = {"seed": int(cfg.seed), "global_batch": int(cfg.batch_size)}
        start = mgr.latest_step()
        if start is not None:
            state, data_pos = checkpoint.restore(mgr, start, t.abstract_state)
            for key, value in data_identity.items():
                if data_pos.get(key) != value:
                    raise ValueError(f"Checkpoint at step {start} was written with data {key}={data_pos.get(key)} "
                                     f"but the config has {value}; resume with the original value or use a new workdir.")
            logging.info("Resumed from step %d (data position: step %d).", start, data_pos["step"])
        else:
            state = t.init(jax.random.key(cfg.seed))
            if cfg.get("init_from") or cfg.get("init_decoder_from"):
                state = convert_init.initialise_state(cfg, state)
            start = 0
        metrics_writer = MetricsWriter(workdir, start)

        sources = pipeline.describe_sources(cfg)
        logging.info("train data: %d records in %d shards (%s), caption %s %r; eval: %s",
                     sources["train"]["num_records"], len(sources["train"]["paths"]),
                     "synthetic shapes" if sources["synthetic_shapes"] else "ArrayRecord",
                     sources.get("caption_mode", "field"), sources["caption_field"],
                     f"{sources['eval']['num_used']} records" if sources["eval"] else "none")
        host_offset, host_batch = parallel.host_batch_slice(mesh, cfg.batch_size)
        batches = pipeline.train_batches(cfg, tokenizer, start_step=start, global_batch=cfg.batch_size,
                                         host_batch=host_batch, host_offset=host_offset)
        evaluator = evaluate.Evaluator(cfg, t.model, t.objective, tokenizer, mesh)

        # Single process: SIGTERM sets a flag and the loop saves and exits. Multi-host:
        # JAX's preemption service catches it and mgr.reached_preemption() agrees on a
        # step across hosts, so every host saves the same one.
        stop = {"signal": None}
        previous_handler = None
        if jax.process_count() == 1:
            previous_handler = signal.signal(signal.SIGTERM, lambda sig, _: stop.update(signal=sig))

        def save(step: int):
            checkpoint.save(mgr, step, state, {"step": step, **data_identity}, force=True)

        first = parallel.to_global(mesh, next(batches), cfg.batch_size)
        compiled = t.train_step.lower(state, first).compile()
        flops_per_step = perf.captioner_train_flops(cfg)
        peak, peak_source = perf.peak_flops_per_device()
        logging.info("train step: %.3g model FLOP/step; peak %.3g FLOP/s/device (%s)", flops_per_step, peak, peak_source)

        last = {"train": {}, "eval": {}}
        # Metrics of step s are fetched after step s+1 is dispatched, so the host never
        # waits for the device just to log: (step, device metrics, should_log).
        pending = None
        clock = {"t": time.perf_counter(), "steps": 0}
        t_start = time.perf_counter()

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
            metrics_writer.write(done_step, host)
            last["train"] = host
            logging.info("step %d/%d  loss %.4f  acc %.3f  lr %.2e  %.3f s/step  %.1f img/s  ETA %s",
                         done_step, total_steps, host["train/loss"], host["train/token_accuracy"], host["train/lr"],
                         dt, cfg.batch_size / dt, _fmt_time((total_steps - done_step) * dt))
            clock.update(t=time.perf_counter(), steps=0)

        batch = first
        step = start
        run_until = total_steps if not stop_after_steps else min(total_steps, start + stop_after_steps)
        try:
            while step < run_until:
                if batch is None:
                    batch = parallel.to_global(mesh, next(batches), cfg.batch_size)
                state, metrics = compiled(state, batch)
                batch = None
                step += 1
                clock["steps"] += 1
                flush()
                pending = (step, metrics, step % cfg.log_every == 0 or step == run_until)

                preempted = stop["signal"] is not None or mgr.reached_preemption(step)
                if cfg.eval_every and step % cfg.eval_every == 0 and step < total_steps:
                    flush()
                    last["eval"] = evaluator.run(state["params"])
                    metrics_writer.write(step, last["eval"])
                    clock.update(t=time.perf_counter(), steps=0)
                if step % cfg.checkpoint_every == 0 or preempted:
                    flush()  # never checkpoint a state whose loss was not finite
                    save(step)
                if preempted:
                    logging.warning("Preemption/SIGTERM at step %d: checkpoint saved, exiting.", step)
                    break
            flush()
            if step == total_steps and start < total_steps:  # a rerun of a finished run adds nothing
                last["eval"] = evaluator.run(state["params"])
                metrics_writer.write(step, last["eval"])
            if mgr.latest_step() != step:
                save(step)
            mgr.wait_until_finished()
        finally:
            if previous_handler is not None:
                signal.signal(signal.SIGTERM, previous_handler)
            mgr.wait_until_finished()
            mgr.close()
            with contextlib.suppress(Exception):
                batches.close()
        logging.info("Done at step %d in %s.", step, _fmt_time(time.perf_counter() - t_start))
        return {**last["train"], **last["eval"], "step": step}


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
