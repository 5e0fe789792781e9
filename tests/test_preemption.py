"""Fault tolerance with real processes: SIGKILL at any moment, SIGTERM, resize on resume."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.test_multiprocess import ROOT
from tests.test_train import deterministic, read_metrics

TINY = ["--config=configs/demo.py", "--config.model.encoder=mu/8,width=32,depth=2,heads=2",
        "--config.model.decoder=mu,width=32,depth=2,heads=4", "--config.batch_size=8", "--config.eval_batch_size=16",
        "--config.log_every=1", "--config.optim.warmup_steps=2", "--config.data.prefetch=0",
        "--config.data.num_eval=16", "--config.data.shapes.num_train=64", "--config.data.shapes.num_eval=16",
        "--config.data.shapes.image_size=32", "--config.image_size=32", "--config.run_evals=False"]


def _env(tmp_path, devices: int):
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(JAX_PLATFORMS="cpu", OPENVISION2_CACHE=str(tmp_path / "cache"),
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    return env


def _train(tmp_path, workdir, devices, *extra):
    return subprocess.Popen([sys.executable, "-m", "openvision2.train", f"--workdir={workdir}", *TINY, *extra],
                            cwd=ROOT, env=_env(tmp_path, devices), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def _wait_for_step(workdir, step, proc, timeout=300):
    path = os.path.join(workdir, "metrics.jsonl")
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        if os.path.exists(path) and any(r.get("step", 0) >= step for r in read_metrics(workdir)):
            return
        time.sleep(0.02)
    raise TimeoutError(f"step {step} not reached")


@pytest.mark.slow
def test_sigkill_then_resume_on_another_device_count_matches_uninterrupted(tmp_path):
    steps = ["--config.total_steps=14", "--config.checkpoint_every=4"]
    reference = str(tmp_path / "reference")
    assert _train(tmp_path, reference, 1, *steps).wait() == 0

    workdir = str(tmp_path / "killed")
    proc = _train(tmp_path, workdir, 1, *steps)
    _wait_for_step(workdir, 6, proc)
    deadline = time.time() + 60  # async save of step 4 committed (its tmp dir renamed)
    while not os.path.isdir(os.path.join(workdir, "checkpoints", "4")) and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    checkpoints = sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit())
    assert checkpoints and max(checkpoints) >= 4

    # Resume with 2 devices instead of 1: same global batches, same maths.
    resumed = _train(tmp_path, workdir, 2, *steps)
    out, _ = resumed.communicate()
    assert resumed.returncode == 0, out[-3000:]
    assert "over 2 devices" in out and "Resumed from step" in out

    a, b = deterministic(read_metrics(reference)), deterministic(read_metrics(workdir))
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for ra, rb in zip(a, b):
        for k in ra:
            np.testing.assert_allclose(rb[k], ra[k], rtol=1e-5, atol=1e-6, err_msg=f"{k} at step {ra['step']}")


@pytest.mark.slow
def test_sigterm_saves_a_final_checkpoint_and_exits_cleanly(tmp_path):
    workdir = str(tmp_path / "run")
    proc = _train(tmp_path, workdir, 1, "--config.total_steps=100000", "--config.checkpoint_every=100000")
    _wait_for_step(workdir, 3, proc)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out[-3000:]
    assert "Preemption/SIGTERM at step" in out
    saved = max(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit())
    assert saved >= 3
    assert max(r["step"] for r in read_metrics(workdir)) == saved
