"""Real multi-process training on this machine (gloo CPU collectives).

Two JAX processes with two CPU devices each, each loading only its half of
every global batch, must train exactly like one process with four devices
loading the whole batch.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.test_train import deterministic, read_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--config.model.encoder=mu/8,width=32,depth=2,heads=2", "--config.model.decoder=mu,width=32,depth=2,heads=4",
        "--config.batch_size=8", "--config.eval_batch_size=16", "--config.total_steps=10", "--config.log_every=1",
        "--config.checkpoint_every=5", "--config.optim.warmup_steps=1", "--config.data.prefetch=0",
        "--config.data.num_eval=16", "--config.data.shapes.num_train=64", "--config.data.shapes.num_eval=16",
        "--config.data.shapes.image_size=32", "--config.image_size=32", "--config.model.scan_layers=true",
        "--config.run_evals=False"]


def _env(tmp_path, devices_per_process: int):
    return {**os.environ, "JAX_PLATFORMS": "cpu", "OPENVISION2_CACHE": str(tmp_path / "cache"),
            "PYTHON": sys.executable, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices_per_process}"}


@pytest.mark.slow
def test_two_processes_train_exactly_like_one(tmp_path):
    single = str(tmp_path / "single")
    subprocess.run([sys.executable, "-m", "openvision2.train", "--config=configs/demo.py", f"--workdir={single}", *TINY],
                   cwd=ROOT, env=_env(tmp_path, 4), check=True, capture_output=True)
    multi = str(tmp_path / "multi")
    proc = subprocess.run(["bash", "launch/local_multiprocess.sh", "2", "--config=configs/demo.py",
                           f"--workdir={multi}", *TINY], cwd=ROOT, env=_env(tmp_path, 2), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "[p0] " in proc.stdout and "over 4 devices (2 processes)" in proc.stdout
    assert not any(line.startswith("[p1] I") for line in proc.stdout.splitlines())  # only process 0 logs progress
    a, b = deterministic(read_metrics(single)), deterministic(read_metrics(multi))
    assert [r["step"] for r in a] == [r["step"] for r in b] == [*range(1, 11), 10]
    for ra, rb in zip(a, b):
        for k in ra:
            np.testing.assert_allclose(rb[k], ra[k], rtol=1e-5, atol=1e-6, err_msg=k)
    # Both processes took part in the checkpoint; it restores in a single process.
    assert sorted(os.listdir(os.path.join(multi, "checkpoints"))) == ["10", "5"]
    json.load(open(os.path.join(multi, "config.json")))


@pytest.mark.slow
def test_checkpoint_from_one_process_resumes_in_two(tmp_path):
    """Stop a 1-process run midway, continue it as 2 processes: same stream, same numbers."""
    reference = str(tmp_path / "reference")
    subprocess.run([sys.executable, "-m", "openvision2.train", "--config=configs/demo.py", f"--workdir={reference}",
                    *TINY], cwd=ROOT, env=_env(tmp_path, 4), check=True, capture_output=True)
    workdir = str(tmp_path / "resized")
    subprocess.run([sys.executable, "-m", "openvision2.train", "--config=configs/demo.py", f"--workdir={workdir}",
                    "--stop_after_steps=5", *TINY], cwd=ROOT, env=_env(tmp_path, 4), check=True, capture_output=True)
    proc = subprocess.run(["bash", "launch/local_multiprocess.sh", "2", "--config=configs/demo.py",
                           f"--workdir={workdir}", *TINY], cwd=ROOT, env=_env(tmp_path, 1), capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "Resumed from step 5" in proc.stdout and "over 2 devices (2 processes)" in proc.stdout
    a, b = deterministic(read_metrics(reference)), deterministic(read_metrics(workdir))
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for ra, rb in zip(a, b):
        for k in ra:
            np.testing.assert_allclose(rb[k], ra[k], rtol=1e-5, atol=1e-6, err_msg=f"{k} at step {ra['step']}")
