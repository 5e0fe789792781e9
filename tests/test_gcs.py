"""Runs where pod users run: workdirs, data and exports on `gs://`, against a real object store
(fake-gcs-server on 127.0.0.1, started by conftest.py), with no mock in between."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from openvision2 import paths
from openvision2.data import pipeline, records, tokenizer
from openvision2.train import checkpoint
from openvision2.train.metrics import MetricsWriter
from tests.test_data_pipeline import make_cfg, stream
from tests.test_multiprocess import ROOT
from tests.test_preemption import TINY
from tests.test_train import deterministic


def test_path_helpers_read_write_list_and_glob_objects(gcs_bucket, tmp_path):
    root = f"{gcs_bucket}/run"
    assert not paths.exists(f"{root}/config.json") and paths.listdir(root) == []
    paths.write_text(f"{root}/config.json", '{"a": 1}')
    paths.write_text(f"{root}/checkpoints/3/state", "x")
    assert paths.read_text(f"{root}/config.json") == '{"a": 1}' and paths.isfile(f"{root}/config.json")
    assert paths.listdir(root) == ["checkpoints", "config.json"] and paths.isdir(f"{root}/checkpoints")
    assert paths.glob(f"{root}/*.json") == [f"{root}/config.json"]
    (tmp_path / "tree" / "sub").mkdir(parents=True)
    (tmp_path / "tree" / "a.txt").write_text("a")
    (tmp_path / "tree" / "sub" / "b.txt").write_text("b")
    assert paths.copy_tree(str(tmp_path / "tree"), f"{root}/tree") == [f"{root}/tree/a.txt", f"{root}/tree/sub/b.txt"]
    paths.copy(f"{root}/tree/sub/b.txt", str(tmp_path / "back.txt"))
    assert (tmp_path / "back.txt").read_text() == "b"
    assert paths.resolve(f"{root}/") == root and paths.resolve("rel") == os.path.abspath("rel")


@pytest.fixture
def numbered_shards(tmp_path):
    recs = [records.encode_record(f"k{i:03d}", _png(i), {"caption": f"number {i} ."}) for i in range(40)]
    return records.write_shards(recs, str(tmp_path / "shards"), "data", 4)


def _png(i):
    import io
    from PIL import Image
    buf = io.BytesIO()
    Image.new("RGB", (40, 32), (i, 2 * i % 255, 100)).save(buf, format="PNG")
    return buf.getvalue()


def test_shards_on_gs_are_listed_and_read_in_place(gcs_bucket, numbered_shards):
    for shard in numbered_shards:
        paths.copy(shard, f"{gcs_bucket}/recap/{os.path.basename(shard)}")
    listed = records.resolve_paths(f"{gcs_bucket}/recap")
    assert listed == [f"{gcs_bucket}/recap/{os.path.basename(s)}" for s in numbered_shards]
    assert records.resolve_paths(f"{gcs_bucket}/recap/data-0000[12]-of-*") == listed[1:3]
    with pytest.raises(FileNotFoundError, match="no ArrayRecord shards"):
        records.resolve_paths(f"{gcs_bucket}/elsewhere")
    # The train stream read from the bucket is the local one, batch for batch.
    bert = tokenizer.get_tokenizer("bert_base_uncased")
    local, remote = make_cfg(os.path.dirname(numbered_shards[0])), make_cfg(f"{gcs_bucket}/recap")
    take = lambda cfg: next(pipeline.train_batches(cfg.data, stream(cfg), bert, start_step=3, global_batch=8,
                                                   host_batch=8, host_offset=0))
    a, b = take(local), take(remote)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])


def test_metrics_on_object_storage_keep_every_line_up_to_a_checkpoint(gcs_bucket):
    """An object store has no append: the writer uploads whole objects at sync points, and a
    checkpoint is always one, so a run killed after it resumes with every line it wrote before."""
    workdir = f"{gcs_bucket}/run"
    writer = MetricsWriter(workdir, None, sync_s=3600)
    for step in range(1, 6):
        writer.write(step, {"train/loss": 1.0 / step})
    writer.event(5, {"stage": "low", "stage/event": "end"})  # events sync at once
    assert len(paths.read_text(f"{workdir}/metrics.jsonl").splitlines()) == 6
    for step in range(6, 9):
        writer.write(step, {"train/loss": 1.0 / step})
    writer.sync(force=True)  # what the trainer does before checkpointing step 8
    writer.write(9, {"train/loss": 0.1})  # then killed: no close, no sync
    del writer

    resumed = MetricsWriter(workdir, 8, sync_s=3600)
    rows = [json.loads(line) for line in paths.read_text(f"{workdir}/metrics.jsonl").splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 5, 6, 7, 8]
    assert resumed.has(5, {"stage": "low", "stage/event": "end"})
    resumed.write(9, {"train/loss": 0.2})
    resumed.close()
    rows = [json.loads(line) for line in paths.read_text(f"{workdir}/metrics.jsonl").splitlines()]
    assert [r["step"] for r in rows][-2:] == [8, 9] and rows[-1]["train/loss"] == 0.2
    events = paths.listdir(f"{workdir}/tensorboard")
    assert len(events) == 2 and all(e.startswith("events.out.tfevents.") for e in events)  # one per writer


def _env(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(JAX_PLATFORMS="cpu", OPENVISION2_CACHE=str(tmp_path / "cache"),
               XLA_FLAGS="--xla_force_host_platform_device_count=1")
    return env


def _metrics(workdir):
    path = paths.join(workdir, "metrics.jsonl")
    if not paths.exists(path):
        return []
    return [json.loads(line) for line in paths.read_text(path).splitlines() if line.strip()]


def _upload_shapes(tmp_path, bucket: str, split: str, num: int, seed: int) -> str:
    from openvision2.data import shapes
    for shard in shapes.ensure_dataset(str(tmp_path / "shapes"), split, num, seed, 48):
        paths.copy(shard, f"{bucket}/{split}/{os.path.basename(shard)}")
    return f"{bucket}/{split}"


@pytest.mark.slow
def test_a_run_on_gs_killed_and_resumed_matches_an_uninterrupted_one(gcs_bucket, tmp_path):
    """The demo (0.4 s a step here) reads its shards from the bucket and keeps its workdir there."""
    flags = ["--config=configs/demo.py", "--config.total_steps=24", "--config.checkpoint_every=8",
             "--config.log_every=1", "--config.eval_every=0", "--config.optim.warmup_steps=4",
             f"--config.data.path={_upload_shapes(tmp_path, gcs_bucket, 'train', 512, 1)}",
             f"--config.data.eval_path={_upload_shapes(tmp_path, gcs_bucket, 'eval', 64, 2)}",
             "--config.data.num_eval=64", "--config.eval_batch_size=64", "--config.data.prefetch=0",
             "--config.run_evals=False"]
    train = lambda workdir: subprocess.Popen(
        [sys.executable, "-m", "openvision2.train", f"--workdir={workdir}", *flags], cwd=ROOT, env=_env(tmp_path),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    reference = f"{gcs_bucket}/reference"
    ref = train(reference)
    out, _ = ref.communicate()
    assert ref.returncode == 0, out[-3000:]

    workdir = f"{gcs_bucket}/killed"
    proc = train(workdir)
    deadline = time.time() + 300
    while 8 not in checkpoint.committed_steps(workdir):  # the step-8 checkpoint whole in the bucket
        assert proc.poll() is None and time.time() < deadline, proc.stdout.read()[-3000:]
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert 24 not in checkpoint.committed_steps(workdir)
    resumed = train(workdir)
    out, _ = resumed.communicate()
    assert resumed.returncode == 0 and "Resumed from step" in out, out[-3000:]
    assert not any("Resumed from step 24" in line for line in out.splitlines())
    a, b = deterministic(_metrics(reference)), deterministic(_metrics(workdir))
    assert [r["step"] for r in a] == [r["step"] for r in b] == [*range(1, 25), 24]
    for ra, rb in zip(a, b):
        for k in ra:
            np.testing.assert_allclose(rb[k], ra[k], rtol=1e-6, err_msg=f"{k} at step {ra['step']}")
    assert any(name.startswith("events.out.tfevents.") for name in paths.listdir(f"{workdir}/tensorboard"))

    # The inference commands read the run where it is.
    image = str(tmp_path / "img.png")
    with open(image, "wb") as f:
        f.write(_png(7))
    env = _env(tmp_path)
    caption = subprocess.run([sys.executable, "-m", "openvision2.caption", f"--workdir={workdir}", image], env=env,
                             capture_output=True, text=True, check=True).stdout
    assert caption.startswith(f"{image}\t")
    subprocess.run([sys.executable, "-m", "openvision2.export", f"--workdir={workdir}",
                    f"--output={gcs_bucket}/export"], env=env, capture_output=True, text=True, check=True)
    assert {"config.json", "model.safetensors", "preprocessor_config.json"} <= set(paths.listdir(f"{gcs_bucket}/export"))


@pytest.mark.slow
def test_two_processes_write_one_checkpoint_to_the_bucket_and_restore_it(gcs_bucket, tmp_path):
    flags = ["--config=configs/demo.py", *TINY[1:], "--config.total_steps=6", "--config.checkpoint_every=3",
             "--config.model.scan_layers=true"]
    env = {**_env(tmp_path), "PYTHON": sys.executable, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    workdir = f"{gcs_bucket}/multi"
    first = subprocess.run(["bash", "launch/local_multiprocess.sh", "2", f"--workdir={workdir}", "--stop_after_steps=3",
                            *flags], cwd=ROOT, env=env, capture_output=True, text=True)
    assert first.returncode == 0, first.stdout[-3000:]
    assert checkpoint.committed_steps(workdir) == [3]
    second = subprocess.run(["bash", "launch/local_multiprocess.sh", "2", f"--workdir={workdir}", *flags], cwd=ROOT,
                            env=env, capture_output=True, text=True)
    assert second.returncode == 0 and "Resumed from step 3" in second.stdout, second.stdout[-3000:]
    assert [r["step"] for r in _metrics(workdir) if "train/loss" in r] == [1, 2, 3, 4, 5, 6]


def test_make_records_writes_shards_and_summary_to_the_bucket(gcs_bucket, tmp_path):
    from openvision2.tools import make_records
    lines = []
    for i in range(6):
        with open(tmp_path / f"{i}.png", "wb") as f:
            f.write(_png(i))
        lines.append(json.dumps({"image": f"{i}.png", "caption": f"number {i}.", "key": f"k{i}"}))
    (tmp_path / "pairs.jsonl").write_text("\n".join(lines) + "\n")
    out = f"{gcs_bucket}/records"
    summary = make_records.convert(str(tmp_path / "pairs.jsonl"), out, shards=2, progress=False)
    assert summary["written"] == 6 and json.loads(paths.read_text(f"{out}/summary.json"))["written"] == 6
    shards = records.resolve_paths(out)
    assert [paths.basename(s) for s in shards] == ["records-00000-of-00002.array_record",
                                                   "records-00001-of-00002.array_record"]
    import grain
    keys = sorted(records.decode_record(r)["key"] for r in grain.sources.ArrayRecordDataSource(shards))
    assert keys == [f"k{i}" for i in range(6)]
    with pytest.raises(FileExistsError, match="already holds 2"):
        make_records.convert(str(tmp_path / "pairs.jsonl"), out, shards=2, progress=False)
