"""The trainer end to end on tiny shapes data: resume, divergence, CLIs."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from openvision2 import train
from openvision2.train import checkpoint
from tests.test_models import tiny_cfg


def tiny_train_cfg(data_dir, **overrides):
    cfg = tiny_cfg()
    cfg.model.vocab_size = 32
    cfg.model.scan_layers = False
    cfg.text.vocab = "shapes"
    cfg.text.max_len = 16
    cfg.batch_size = 8
    cfg.eval_batch_size = 16
    cfg.total_steps = 6
    cfg.log_every = 1
    cfg.checkpoint_every = 3
    cfg.keep_ratio = 0.5
    cfg.optim.warmup_steps = 2
    cfg.optim.lr = 4e-3
    cfg.async_checkpoints = False
    cfg.data.caption_field = "caption"
    cfg.data.augment = "none"
    cfg.data.color_jitter = 0.0
    cfg.data.grayscale_prob = 0.0
    cfg.data.prefetch = 0
    cfg.data.num_eval = 16
    cfg.data.shapes.update(num_train=64, num_eval=16, image_size=32, dir=str(data_dir))
    cfg.run_evals = False  # the evaluators have their own tests (tests/test_evals.py)
    for k, v in overrides.items():
        cfg[k] = v
    return cfg


def read_metrics(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def deterministic(rows):
    """Everything except wall-clock measurements."""
    return [{k: v for k, v in r.items() if not k.startswith("perf/")} for r in rows]


def test_stop_and_resume_reproduces_the_uninterrupted_run(tmp_path):
    data = tmp_path / "data"
    full = train.train(tiny_train_cfg(data), str(tmp_path / "full"))
    assert full["step"] == 6

    workdir = str(tmp_path / "resumed")
    first = train.train(tiny_train_cfg(data), workdir, stop_after_steps=4)
    assert first["step"] == 4
    # A run killed after its step-3 checkpoint also leaves a metrics line for step 4: the
    # rerun restarts at 3 and must not duplicate it.
    import shutil
    shutil.rmtree(os.path.join(workdir, "checkpoints", "4"))
    with open(os.path.join(workdir, "metrics.jsonl"), "a") as f:
        f.write('{"step": 5, "train/lo')  # a line torn by the kill
    second = train.train(tiny_train_cfg(data), workdir)
    assert second["step"] == 6

    a, b = deterministic(read_metrics(str(tmp_path / "full"))), deterministic(read_metrics(workdir))
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for ra, rb in zip(a, b):
        assert ra.keys() == rb.keys()
        for k in ra:
            np.testing.assert_allclose(rb[k], ra[k], rtol=1e-6, err_msg=f"{k} at step {ra['step']}")
    assert a[-1]["eval/num_examples"] == 16 and "eval/caption_exact_match" in a[-1]
    row = read_metrics(workdir)[0]
    for key in ("train/loss", "train/lr", "perf/step_s", "perf/images_per_s", "perf/mfu"):
        assert key in row
    assert json.load(open(os.path.join(workdir, "config.json")))["total_steps"] == 6


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path):
    cfg = tiny_train_cfg(tmp_path / "data", total_steps=40, checkpoint_every=2)
    cfg.optim.lr = 1e9  # diverges within a few steps
    cfg.optim.warmup_steps = 1
    cfg.optim.weight_decay = 0.0
    workdir = str(tmp_path / "run")
    with pytest.raises(train.DivergenceError, match="Lower --config.optim.lr"):
        train.train(cfg, workdir)
    params, step = checkpoint.restore_params(workdir)
    leaves = [np.asarray(x) for x in __import__("jax").tree.leaves(params)]
    assert all(np.isfinite(x).all() for x in leaves)
    losses = [r["train/loss"] for r in read_metrics(workdir) if "train/loss" in r]
    assert step < 40 and all(np.isfinite(losses[:step]))


def test_caption_and_encode_commands(tmp_path):
    from PIL import Image
    from openvision2.data import shapes

    workdir = str(tmp_path / "run")
    train.train(tiny_train_cfg(tmp_path / "data", total_steps=3), workdir)
    image, _ = shapes.render(np.random.default_rng(0), 40, 2)
    png = str(tmp_path / "img.png")
    Image.fromarray(np.repeat(image, 2, axis=1)).save(png)  # a non-square image
    photo = str(tmp_path / "chelsea.jpg")  # an ordinary 451x300 JPEG photo
    Image.fromarray(pytest.importorskip("skimage.data").chelsea()).save(photo, quality=90)
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, "-m", "openvision2.caption", f"--workdir={workdir}", png, photo],
                         capture_output=True, text=True, env=env, check=True).stdout.strip().splitlines()
    assert len(out) == 2 and out[0].startswith(png + "\t") and out[1].startswith(photo + "\t")
    npz = str(tmp_path / "feats.npz")
    subprocess.run([sys.executable, "-m", "openvision2.encode", f"--workdir={workdir}", f"--output={npz}", png, photo],
                   capture_output=True, text=True, env=env, check=True)
    arrays = np.load(npz)
    assert arrays["pixel_values"].shape == (2, 32, 32, 3) and arrays["pixel_values"].dtype == np.float32
    assert arrays["patch_tokens"].shape == (2, 16, 32) and arrays["pooled"].shape == (2, 32)
    # pixel_values is exactly the eval preprocessing, normalised
    from openvision2.data import preprocess
    from openvision2.models.vit import PIXEL_NORMS
    with open(photo, "rb") as f:
        expected = preprocess.eval_transform(preprocess.decode_image(f.read()), 32) / 255.0
    mean, std = PIXEL_NORMS[tiny_train_cfg(tmp_path).model.pixel_norm]
    np.testing.assert_allclose(arrays["pixel_values"][1], (expected - mean) / std, atol=1e-5)
    # patch tokens are LayerNorm outputs: zero mean per token
    np.testing.assert_allclose(arrays["patch_tokens"].mean(-1), 0, atol=1e-4)


def test_rerunning_a_finished_run_changes_nothing(tmp_path):
    workdir = str(tmp_path / "run")
    train.train(tiny_train_cfg(tmp_path / "data", total_steps=3), workdir)
    before = read_metrics(workdir)
    assert train.train(tiny_train_cfg(tmp_path / "data", total_steps=3), workdir)["step"] == 3
    assert read_metrics(workdir) == before


def test_tensorboard_events_hold_the_scalars_of_metrics_jsonl_across_a_resume(tmp_path):
    """TensorBoard's own reader sees the train and eval scalars metrics.jsonl has, one value per step."""
    from tensorboard.backend.event_processing import event_accumulator

    workdir = str(tmp_path / "run")
    train.train(tiny_train_cfg(tmp_path / "data", total_steps=5), workdir, stop_after_steps=4)  # checkpoint at 3
    train.train(tiny_train_cfg(tmp_path / "data", total_steps=5), workdir)
    events = event_accumulator.EventAccumulator(os.path.join(workdir, "tensorboard"))
    events.Reload()
    rows = read_metrics(workdir)
    for tag in ("train/loss", "train/lr", "train/token_accuracy", "perf/step_s", "eval/loss", "eval/caption_exact_match"):
        logged = {r["step"]: r[tag] for r in rows if tag in r}
        seen = {e.step: e.value for e in events.Scalars(tag)}
        assert seen.keys() == logged.keys(), tag  # step 4 of the first invocation was purged
        np.testing.assert_allclose([seen[s] for s in logged], list(logged.values()), rtol=1e-6, err_msg=tag)
    assert sorted({e.step for e in events.Scalars("train/loss")}) == [1, 2, 3, 4, 5]


def test_profile_steps_writes_a_trace_that_parses(tmp_path):
    from jax.profiler import ProfileData

    workdir = str(tmp_path / "run")
    cfg = tiny_train_cfg(tmp_path / "data", total_steps=6)
    cfg.profile_steps = 3
    train.train(cfg, workdir)
    traces = sorted((tmp_path / "run" / "profile").rglob("*.xplane.pb"))
    assert len(traces) == 1 and traces[0].parent.parent.name == "profile"  # <workdir>/profile/plugins/profile/<time>/
    assert (traces[0].parent / traces[0].name.replace(".xplane.pb", ".trace.json.gz")).exists()
    profile = ProfileData.from_file(str(traces[0]))
    calls = [e.name for plane in profile.planes for line in plane.lines for e in line.events]
    assert calls.count("CommonPjRtLoadedExecutable::Execute (jit_train_step)") == 3  # exactly the traced steps


def _wandb_history(run_file: str) -> dict[int, dict]:
    """step -> logged scalars, read from a W&B run file (a LevelDB-style log of W&B's protobuf
    `Record`s after a 7-byte `:W&B` header; 32 KiB blocks, records split FULL/FIRST/MIDDLE/LAST)."""
    import struct
    from wandb.proto.wandb_internal_pb2 import Record

    data = open(run_file, "rb").read()
    assert data[:4] == b":W&B"
    pos, pending, history = 7, b"", {}
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # a block's tail too short for a record header is padding
            pos += 32768 - pos % 32768
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = Record()
            record.ParseFromString(pending)
            if record.WhichOneof("record_type") == "history":
                items = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item}
                history.setdefault(record.history.step.num, {}).update(items)
    return history


def test_wandb_logs_the_metrics_into_one_run_per_workdir(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_SILENT", "true")
    workdir = str(tmp_path / "run")
    cfg = lambda: tiny_train_cfg(tmp_path / "data", total_steps=5)
    first = cfg()
    first.wandb.update(project="openvision2-test", mode="offline")
    train.train(first, workdir, stop_after_steps=3)
    second = cfg()
    second.wandb.update(project="openvision2-test", mode="offline")
    train.train(second, workdir)
    run_files = sorted((tmp_path / "run" / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(run_files) == 2 and len({f.name for f in run_files}) == 1  # two invocations, one W&B run id
    history = {}
    for f in run_files:
        history.update(_wandb_history(str(f)))
    logged = {r["step"]: r for r in read_metrics(workdir) if "train/loss" in r}
    assert sorted(history) == sorted(logged) == [1, 2, 3, 4, 5]
    for step, row in logged.items():
        np.testing.assert_allclose(history[step]["train/loss"], row["train/loss"], rtol=1e-6)
    assert "eval/caption_exact_match" in history[5]
