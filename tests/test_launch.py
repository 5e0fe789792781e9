"""Launch recipes print complete, correct commands in --dry-run mode."""

import os
import shlex
import subprocess

from tests.test_multiprocess import ROOT

TRAIN = ["--config=configs/openvision2.py:L/14,stage=pretrain", "--workdir=gs://b/run"]


def dry_run(script, *args):
    out = subprocess.run(["bash", os.path.join(ROOT, "launch", script), *args, "--dry-run", "--", *TRAIN],
                         capture_output=True, text=True, check=True,
                         env={**os.environ, "REPO_URL": "https://example.com/ov2.git"}).stdout
    return [shlex.split(line) for line in out.strip().splitlines()]


def test_tpu_pod_runs_the_trainer_on_every_worker():
    (cmd,) = dry_run("tpu_pod.sh", "--tpu=ov2", "--zone=us-central2-b", "--project=p")
    assert cmd[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "ov2"]
    assert "--worker=all" in cmd and "--zone=us-central2-b" in cmd and "--project=p" in cmd
    remote = shlex.split(next(a for a in cmd if a.startswith("--command=")).split("=", 1)[1])
    assert remote[remote.index("-m") + 1] == "openvision2.train"
    assert remote[-2:] == TRAIN


def test_tpu_pod_setup_installs_the_tpu_extra_first():
    setup, train = [c for c in dry_run("tpu_pod.sh", "--tpu=ov2", "--zone=z", "--setup")]
    remote = next(a for a in setup if a.startswith("--command="))
    assert "[tpu,gcs]" in remote and "git clone https://example.com/ov2.git" in remote
    assert "openvision2.train" in next(a for a in train if a.startswith("--command="))


def test_multislice_sets_dcn_data_to_the_number_of_slices():
    (cmd,) = dry_run("multislice_xpk.sh", "--cluster=c", "--tpu-type=v5p-256", "--num-slices=4", "--workload=w")
    assert cmd[:3] == ["xpk", "workload", "create"] and "--num-slices=4" in cmd and "--tpu-type=v5p-256" in cmd
    remote = shlex.split(next(a for a in cmd if a.startswith("--command=")).split("=", 1)[1])
    assert remote[:3] == ["python", "-m", "openvision2.train"]
    assert remote[3:5] == TRAIN and remote[-1] == "--config.mesh.dcn_data=4"


def test_scripts_reject_missing_arguments():
    for script in ("tpu_pod.sh", "multislice_xpk.sh"):
        proc = subprocess.run(["bash", os.path.join(ROOT, "launch", script), "--dry-run"], capture_output=True,
                              text=True)
        assert proc.returncode == 2 and "usage" in proc.stderr


def test_cluster_auto_detection(monkeypatch):
    from openvision2.train import distributed

    for key in ("SLURM_NTASKS", "MEGASCALE_COORDINATOR_ADDRESS", "TPU_WORKER_HOSTNAMES", "JAX_PLATFORMS"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setattr(distributed.os.path, "exists", lambda p: False)
    monkeypatch.setattr(distributed.os.path, "isdir", lambda p: False)
    assert not distributed.on_cluster()
    monkeypatch.setenv("SLURM_NTASKS", "1")  # a single-task SLURM job needs no coordinator
    assert not distributed.on_cluster()
    monkeypatch.setenv("SLURM_NTASKS", "16")
    assert distributed.on_cluster()
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")  # local CPU runs never auto-initialise
    assert not distributed.on_cluster()
    monkeypatch.delenv("JAX_PLATFORMS")
    monkeypatch.delenv("SLURM_NTASKS")
    monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "WARNING: could not determine TPU worker hostnames")
    assert not distributed.on_cluster()  # libtpu's placeholder on a machine without a TPU
    monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "10.0.0.2,10.0.0.3")
    assert distributed.on_cluster()


def test_slurm_script_passes_the_flags_through_and_adds_cudnn_attention_last(tmp_path):
    """The trainer rejects a --config.<key> override before --config=<file>, so the script's default goes last,
    and only when the flags do not choose an attention implementation themselves."""
    (tmp_path / "srun").write_text("#!/bin/sh\nprintf '%s\\n' \"$@\"\n")
    (tmp_path / "srun").chmod(0o755)
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}", "OV2_VENV": "/venv"}
    run = lambda *flags: subprocess.run(["bash", os.path.join(ROOT, "launch", "slurm_gpu.sbatch"), *flags], env=env,
                                        capture_output=True, text=True, check=True).stdout.splitlines()
    assert run(*TRAIN) == ["--kill-on-bad-exit=1", "/venv/bin/python", "-m", "openvision2.train", *TRAIN,
                           "--config.model.attention_impl=cudnn"]
    assert run(*TRAIN, "--config.model.attention_impl=xla")[4:] == [*TRAIN, "--config.model.attention_impl=xla"]
