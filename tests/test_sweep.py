"""Sweeps: grid expansion and names, the commands every backend runs, finished-point detection,
interruption and resume, and the results report."""

import csv
import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time

import pytest

from openvision2.sweeps import grid, results
from tests.test_multiprocess import ROOT
from tests.test_train import deterministic, read_metrics

from openvision2.tools import sweep as sweep_tool  # noqa: E402

DEMO = "configs/sweeps/demo_scaling.py"
ENC = {"w32": "mu/8,width=32,depth=2,heads=2", "w64": "mu/8,width=64,depth=2,heads=2"}


def expand(build, base="configs/demo.py"):
    h = grid.Hyper()
    return grid.expand(build(h), h, base)


def test_product_zip_and_chain_expand_in_order_with_readable_stable_names():
    grid = lambda h: h.product([h.fixed("total_steps", 50), h.sweep("model.encoder", ENC, name="enc"),
                                h.sweep("keep_ratio", [0.25, 1.0], name="keep")])
    sweep = expand(grid)
    assert [p.name for p in sweep.points] == ["enc=w32,keep=0.25", "enc=w32,keep=1", "enc=w64,keep=0.25",
                                              "enc=w64,keep=1"]
    assert [p.name for p in expand(grid).points] == [p.name for p in sweep.points]  # stable
    assert sweep.varied == ["model.encoder", "keep_ratio"]  # fixed keys are not in names
    point = sweep.points[2]
    assert point.config.model.encoder == ENC["w64"] and point.config.keep_ratio == 0.25
    assert point.config.total_steps == 50 and point.config.image_size == 48  # the rest is BASE's
    assert point.train_flags("configs/demo.py", "/r/x") == [
        "--config=configs/demo.py", "--workdir=/r/x", "--config.total_steps=50",
        f"--config.model.encoder={ENC['w64']}", "--config.keep_ratio=0.25"]

    zipped = expand(lambda h: h.zipit([h.sweep("batch_size", [32, 64], name="b"),
                                       h.sweep("optim.lr", [2e-3, 4e-3], name="lr")]))
    assert [p.name for p in zipped.points] == ["b=32,lr=0.002", "b=64,lr=0.004"]
    assert zipped.points[1].overrides == {"batch_size": 64, "optim.lr": 4e-3}

    chained = expand(lambda h: h.chainit([h.sweep("keep_ratio", [0.5, 1.0], name="keep"),
                                          h.sweep("model.encoder", {"Ti/16": "Ti/16"}, name="enc")]))
    assert [p.name for p in chained.points] == ["keep=0.5", "keep=1", "enc=Ti/16"]
    assert chained.points[2].dir == "enc=Ti-16"  # readable name kept, directory filesystem-safe
    # Curriculum stage fields and any other dotted key pass straight through as --config.<key>=<value>.
    assert expand(lambda h: h.sweep("data.shapes.image_size", [32, 48])).points[0].train_flags("b", "w")[2] == \
        "--config.data.shapes.image_size=32"


@pytest.mark.parametrize("build, error, match", [
    (lambda h: h.sweep("keep_ratio", [0.5, 1.0, 0.5]), ValueError, "both named 'keep_ratio=0.5'.*distinct labels"),
    (lambda h: h.sweep("model.encodr", ["B/16"]), ValueError, "cannot set model.encodr.*get_config defines"),
    (lambda h: h.sweep("total_steps", ["many"]), ValueError, "cannot set total_steps='many'"),
    (lambda h: h.sweep("keep_ratio", [[0.5]]), TypeError, "must be one of str, int, float, bool"),
    (lambda h: h.zipit([h.sweep("seed", [1, 2]), h.sweep("keep_ratio", [0.5])]), ValueError, "equal length"),
    (lambda h: h.product([h.sweep("seed", [1]), h.fixed("seed", 2)]), ValueError, "'seed' is set by two"),
    (lambda h: {"seed": 1}, ValueError, "must return a non-empty list of dicts"),
    (lambda h: h.product([h.sweep("seed", [1, 2], name="x"), h.sweep("keep_ratio", [0.5, 1.0], name="x")]),
     ValueError, "share the short name"),
])
def test_bad_grids_are_rejected_naming_the_fix(build, error, match):
    with pytest.raises(error, match=match):
        expand(build)


def test_sweep_files_name_a_base_config_or_are_one(tmp_path):
    own = tmp_path / "own.py"  # big_vision style: the sweep file is itself the training config
    own.write_text("from openvision2 import config as config_lib\n"
                   "def get_config(arg=None):\n"
                   "    c = config_lib.base_config()\n"
                   "    c.total_steps = config_lib.parse_arg(arg, steps=7).steps\n"
                   "    return c\n"
                   "def get_hyper(h):\n"
                   "    return h.sweep('seed', [0, 1])\n")
    sweep = grid.load(f"{own}:steps=9")
    assert sweep.base == f"{own}:steps=9" and [p.config.total_steps for p in sweep.points] == [9, 9]
    assert [p.name for p in sweep.points] == ["seed=0", "seed=1"]

    demo = grid.load(f"{DEMO}:steps=30")
    assert demo.base == "configs/demo.py"
    assert [p.name for p in demo.points] == [f"enc={e},keep={k}" for e in ("w64", "w128") for k in ("0.25", "0.5", "1")]
    assert {p.config.total_steps for p in demo.points} == {30}
    assert grid.load(DEMO).points[0].config.total_steps == 300

    (tmp_path / "none.py").write_text("BASE = 'configs/demo.py'\n")
    with pytest.raises(ValueError, match="defines no get_hyper"):
        grid.load(str(tmp_path / "none.py"))
    with pytest.raises(FileNotFoundError, match="not found"):
        grid.load(str(tmp_path / "missing.py"))


def dry_run(root, *backend_args) -> list[list[str]]:
    out = subprocess.run([sys.executable, "tools/sweep.py", f"--config={DEMO}:steps=30", f"--root={root}",
                          *backend_args, "--dry-run"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return [shlex.split(line) for line in out.splitlines() if not line.startswith("#")]


def after_module(argv: list[str]) -> list[str]:
    """The arguments a `python -m openvision2.train ...` command gives the trainer."""
    return argv[argv.index("openvision2.train") + 1:]


def tpu_train_argvs(root) -> list[list[str]]:
    """Runs each printed launch/tpu_pod.sh command with the script's own --dry-run; returns the remote trainer argv."""
    argvs = []
    for cmd in dry_run(root, "--backend=tpu", "--tpu=ov2", "--zone=us-central2-b", "--project=p"):
        assert cmd[0] == "launch/tpu_pod.sh" and cmd[1:4] == ["--tpu=ov2", "--zone=us-central2-b", "--project=p"]
        split = cmd.index("--")
        out = subprocess.run(["bash", *cmd[:split], "--dry-run", *cmd[split:]], cwd=ROOT, capture_output=True,
                             text=True, check=True).stdout
        (gcloud,) = [shlex.split(line) for line in out.strip().splitlines()]
        assert gcloud[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "ov2"] and "--worker=all" in gcloud
        assert "--zone=us-central2-b" in gcloud and "--project=p" in gcloud
        remote = next(a for a in gcloud if a.startswith("--command=")).split("=", 1)[1]
        argvs.append(after_module(shlex.split(remote)))
    return argvs


SBATCH_OPTIONS = ("--parsable", "--job-name=", "--output=", "--nodes=", "--partition=")


def slurm_train_argvs(root, tmp_path) -> list[list[str]]:
    """Runs each printed sbatch script under bash with a stand-in srun; returns the trainer argv it would start."""
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir(exist_ok=True)
    (fake_bin / "srun").write_text("#!/bin/sh\nprintf '%s\\n' \"$@\"\n")
    (fake_bin / "srun").chmod(0o755)
    env = {**os.environ, "PATH": f"{fake_bin}:{os.environ['PATH']}", "OV2_VENV": "/venv"}
    argvs = []
    for cmd in dry_run(root, "--backend=slurm", "--sbatch-args=--nodes=2 --partition=a100"):
        script = cmd.index("launch/slurm_gpu.sbatch")
        assert cmd[0] == "sbatch" and all(a.startswith(SBATCH_OPTIONS) for a in cmd[1:script])
        assert "--nodes=2" in cmd[1:script] and f"--output={root}/" in " ".join(cmd[1:script])
        srun = subprocess.run(["bash", *cmd[script:]], cwd=ROOT, env=env, capture_output=True, text=True,
                              check=True).stdout.splitlines()
        assert srun[:4] == ["--kill-on-bad-exit=1", "/venv/bin/python", "-m", "openvision2.train"]
        argvs.append(after_module(srun))
    return argvs


# The trainer's own flag parser, reset between argvs (config_flags reads overrides from sys.argv and
# registers each --config.<key> as a flag of its own).
PARSE = """
import json, sys
import openvision2.train.__main__ as train
parsed = []
for argv in json.load(sys.stdin):
    for name in [n for n in train.FLAGS if n.startswith("config.")]:
        delattr(train.FLAGS, name)
    train.FLAGS.unparse_flags()
    sys.argv = ["train", *argv]
    train.FLAGS(sys.argv)
    parsed.append({"workdir": train.FLAGS.workdir,
                   "config": json.loads(train.FLAGS.config.to_json_best_effort(sort_keys=True))})
print(json.dumps(parsed))
"""


def test_every_backend_hands_the_trainer_exactly_each_points_config(tmp_path):
    """local, tpu (through launch/tpu_pod.sh --dry-run) and slurm (through the sbatch script) deliver flags that
    the trainer's own flag parser turns into each point's config and workdir."""
    points = grid.load(f"{DEMO}:steps=30").points
    local = dry_run(tmp_path / "local")
    assert all(cmd[:3] == [sys.executable, "-m", "openvision2.train"] for cmd in local)
    argvs = {"local": [after_module(c) for c in local], "tpu": tpu_train_argvs("gs://bucket/sweep"),
             "slurm": slurm_train_argvs(tmp_path / "slurm", tmp_path)}
    assert argvs["slurm"][0][-1] == "--config.model.attention_impl=cudnn"  # the sbatch script's own flag
    everything = [a for backend in argvs.values() for a in backend]
    proc = subprocess.run([sys.executable, "-c", PARSE], input=json.dumps(everything), cwd=ROOT, capture_output=True,
                          text=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    parsed = iter(json.loads(proc.stdout))
    for backend, root in (("local", str(tmp_path / "local")), ("tpu", "gs://bucket/sweep"),
                          ("slurm", str(tmp_path / "slurm"))):
        assert len(argvs[backend]) == len(points) == 6
        for point in points:
            got = next(parsed)
            expected = grid.config_json(point.config)
            if backend == "slurm":
                expected["model"]["attention_impl"] = "cudnn"
            assert got["workdir"] == f"{root}/{point.dir}"
            assert got["config"] == expected, (backend, point.name)


def test_finished_points_are_read_from_the_workdir(tmp_path):
    config = grid.config_json(grid.load(f"{DEMO}:steps=6").points[0].config)
    status = lambda: results.point_status(str(tmp_path / "w"), config)
    assert status().state == "missing"
    os.makedirs(tmp_path / "w" / "checkpoints")
    (tmp_path / "w" / "config.json").write_text(json.dumps({**config, "keep_ratio": 0.9}))
    assert status() == results.Status("incomplete", 0, "no checkpoint yet")  # another config, nothing to mix
    (tmp_path / "w" / "config.json").write_text(json.dumps(config))
    os.makedirs(tmp_path / "w" / "checkpoints" / "3")
    os.makedirs(tmp_path / "w" / "checkpoints" / "6.orbax-checkpoint-tmp-12")  # a save still in flight
    (tmp_path / "w" / "metrics.jsonl").write_text('{"step": 3, "train/loss": 1.0}\n{"step": 6, "eval/lo')
    assert status() == results.Status("incomplete", 3, "checkpoint at step 3/6")
    os.makedirs(tmp_path / "w" / "checkpoints" / "6")
    assert status().state == "incomplete"  # killed after the last save, before the final eval
    with open(tmp_path / "w" / "metrics.jsonl", "a") as f:
        f.write('\n{"step": 6, "eval/loss": 0.5}\n')
    assert status() == results.Status("finished", 6)
    (tmp_path / "w" / "config.json").write_text(json.dumps({**config, "keep_ratio": 0.9}))
    mismatch = status()
    assert mismatch.state == "mismatch" and "keep_ratio: 0.9 != 0.25" in mismatch.detail
    assert "new --root" in mismatch.detail


CHILD = """
import os, signal, sys, time
def on_term(*_):
    open(sys.argv[1], "a").write(f"sigterm own_group={os.getpgid(0) == os.getpid()}\\n")
    sys.exit(0)
signal.signal(signal.SIGTERM, on_term)
open(sys.argv[1], "a").write("started\\n")
while True:
    time.sleep(0.05)
"""


def _job(tmp_path, name, code):
    point = grid.Point(name, {}, {}, None)
    return sweep_tool.Job(point, str(tmp_path / name), [sys.executable, "-c", code, str(tmp_path / f"{name}.txt")],
                          {"total_steps": 1})


def test_interrupting_the_sweep_sends_sigterm_to_running_points_and_starts_no_more(tmp_path):
    jobs = [_job(tmp_path, "a", CHILD), _job(tmp_path, "b", CHILD)]

    def interrupt_once_a_runs():
        while "started" not in (open(tmp_path / "a.txt").read() if (tmp_path / "a.txt").exists() else ""):
            time.sleep(0.02)
        os.kill(os.getpid(), signal.SIGINT)  # what Ctrl-C in the terminal delivers to the sweep

    threading.Thread(target=interrupt_once_a_runs, daemon=True).start()
    codes, stopped = sweep_tool.run_local(jobs, parallel=1)
    assert stopped == signal.SIGINT and codes == {"a": 0}
    # The point got SIGTERM (the trainer checkpoints on it), ran in its own process group (so the terminal's
    # SIGINT never reached it directly), and point b never started.
    assert (tmp_path / "a.txt").read_text().splitlines() == ["started", "sigterm own_group=True"]
    assert not (tmp_path / "b.txt").exists()
    assert json.loads((tmp_path / "a" / results.RUNS_LOG).read_text())["returncode"] == 0


def test_a_failing_point_does_not_stop_the_others(tmp_path):
    jobs = [_job(tmp_path, "bad", "import sys; print('boom'); sys.exit(3)"),
            _job(tmp_path, "good", "import sys; open(sys.argv[1], 'w').write('ran')")]
    codes, stopped = sweep_tool.run_local(jobs, parallel=1)
    assert codes == {"bad": 3, "good": 0} and stopped is None
    assert (tmp_path / "good.txt").read_text() == "ran"
    assert "boom" in (tmp_path / "bad" / "train.log").read_text()


def test_slurm_submits_once_and_skips_points_still_queued(tmp_path, monkeypatch, capsys):
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "sbatch").write_text(f"#!/bin/sh\necho \"$@\" >> {tmp_path}/sbatch.calls\necho 4242\\;cluster\n")
    (fake_bin / "squeue").write_text(f"#!/bin/sh\ncat {tmp_path}/queue\n")
    for tool in ("sbatch", "squeue"):
        (fake_bin / tool).chmod(0o755)
    (tmp_path / "queue").write_text("")
    monkeypatch.setenv("PATH", f"{fake_bin}:{os.environ['PATH']}")
    args = [f"--config={DEMO}:steps=30", f"--root={tmp_path / 'root'}", "--backend=slurm"]
    assert sweep_tool.main(args) == 0
    calls = (tmp_path / "sbatch.calls").read_text().splitlines()
    assert len(calls) == 6 and all("launch/slurm_gpu.sbatch --config=configs/demo.py" in c for c in calls)
    assert (tmp_path / "root" / "enc=w64,keep=0.25" / "slurm_job_id").read_text() == "4242\n"
    assert "submitted as SLURM job 4242" in capsys.readouterr().out

    (tmp_path / "queue").write_text("RUNNING\n")
    assert sweep_tool.main(args) == 0
    assert len((tmp_path / "sbatch.calls").read_text().splitlines()) == 6  # nothing resubmitted
    assert capsys.readouterr().out.count("is still queued or running") == 6


def test_unwritable_root_and_bad_sweep_files_fail_with_a_message(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    with pytest.raises(SystemExit, match="is not writable"):
        sweep_tool.main([f"--config={DEMO}", f"--root={tmp_path / 'file' / 'root'}"])
    with pytest.raises(SystemExit):  # argparse: "--backend=local ... not a URL"
        sweep_tool.main([f"--config={DEMO}", "--root=gs://bucket/sweep"])
    assert "not a URL" in capsys.readouterr().err
    (tmp_path / "bad.py").write_text("BASE = 'configs/demo.py'\ndef get_hyper(h):\n    return h.sweep('nope', [1])\n")
    assert sweep_tool.main([f"--config={tmp_path / 'bad.py'}", f"--root={tmp_path / 'r'}"]) == 2
    assert "cannot set nope=1" in capsys.readouterr().err


TINY = {"model.encoder": "mu/8,width=32,depth=2,heads=2", "model.decoder": "mu,width=32,depth=2,heads=4",
        "batch_size": 8, "eval_batch_size": 16, "total_steps": 6, "checkpoint_every": 3, "log_every": 1,
        "optim.warmup_steps": 2, "data.prefetch": 0, "data.num_eval": 16, "data.shapes.num_train": 64,
        "data.shapes.num_eval": 16, "data.shapes.image_size": 32, "image_size": 32, "run_evals": False}


@pytest.mark.slow
def test_sweep_runs_resumes_an_interrupted_point_skips_finished_ones_and_reports(tmp_path):
    spec = tmp_path / "tiny_sweep.py"
    spec.write_text(f"BASE = {os.path.join(ROOT, 'configs', 'demo.py')!r}\nTINY = {TINY!r}\n"
                    "def get_hyper(h):\n"
                    "    return h.product([*(h.fixed(k, v) for k, v in TINY.items()),\n"
                    "                      h.sweep('keep_ratio', [0.5, 1.0], name='keep')])\n")
    root = tmp_path / "root"
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(JAX_PLATFORMS="cpu", OPENVISION2_CACHE=str(tmp_path / "cache"))
    sweep = lambda *extra: subprocess.run([sys.executable, "tools/sweep.py", f"--config={spec}", f"--root={root}",
                                           *extra], cwd=ROOT, env=env, capture_output=True, text=True)
    commands = [shlex.split(line) for line in sweep("--dry-run").stdout.splitlines() if not line.startswith("#")]
    assert len(commands) == 2 and "--config.keep_ratio=0.5" in commands[0]

    # Interrupt point keep=0.5 after 4 of 6 steps, exactly as its printed command runs it.
    subprocess.run([*commands[0], "--stop_after_steps=4"], cwd=ROOT, env=env, check=True, capture_output=True)
    half = root / "keep=0.5"
    assert results.point_status(str(half), json.load(open(half / "config.json"))) == \
        results.Status("incomplete", 4, "checkpoint at step 4/6")

    run = sweep()
    assert run.returncode == 0, run.stdout + run.stderr
    assert "# keep=0.5: incomplete (checkpoint at step 4/6)" in run.stdout
    assert "Resumed from step 4" in (half / "train.log").read_text()
    assert "Resumed" not in (root / "keep=1" / "train.log").read_text()

    rerun = sweep()
    assert rerun.returncode == 0 and rerun.stdout.count(": finished (step 6)") == 2
    assert (half / "train.log").read_text().count("===") == 1  # nothing ran again

    reference = tmp_path / "reference"  # the same point, never interrupted
    subprocess.run([*[a for a in commands[0] if not a.startswith("--workdir=")], f"--workdir={reference}"],
                   cwd=ROOT, env=env, check=True, capture_output=True)
    assert deterministic(read_metrics(half)) == deterministic(read_metrics(reference))  # bit-identical

    report = sweep("--report")
    assert report.returncode == 0, report.stderr
    rows = list(csv.DictReader(open(root / "results.csv")))
    assert [r["name"] for r in rows] == ["keep=0.5", "keep=1"] and {r["status"] for r in rows} == {"finished"}
    final_eval = read_metrics(reference)[-1]
    assert float(rows[0]["eval/loss"]) == final_eval["eval/loss"] and rows[0]["step"] == "6"
    assert rows[0]["keep_ratio"] == "0.5" and float(rows[0]["perf/images_per_s"]) > 0
    modules = ("encoder", "projector", "decoder")
    assert int(rows[0]["params/total"]) == sum(int(rows[0][f"params/{m}"]) for m in modules) > 0
    # Masking keeps fewer visual tokens: less decoder compute per step, the same parameters.
    assert rows[0]["params/total"] == rows[1]["params/total"]
    assert float(rows[0]["flops_seen"]) < float(rows[1]["flops_seen"]) == 6 * float(rows[1]["flops_per_step"])
    assert (root / "scaling.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    import matplotlib.image
    assert matplotlib.image.imread(root / "scaling.png").ndim == 3
