"""Evaluators: the metrics against independent references, and the eval path of trained runs."""

import json
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from openvision2 import config as config_lib, parallel, recipes
from openvision2.config import defaults
from openvision2.data.tokenizer import get_tokenizer
from openvision2.evals import linear_probe, registry, retrieval, sets, zeroshot
from openvision2.evals.suite import Suite

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# --- the closed-form probe ------------------------------------------------------------------------------

def _reference_scores(x_train, y_train, x_test, num_classes, lam):
    """The same closed form, written out directly in float64 with explicit solves (no eigh)."""
    mean, std = x_train.mean(0), x_train.std(0)
    design = lambda x: np.hstack([(x - mean) / (std + 1e-5), np.full((len(x), 1), 100.0)])
    a, b = design(x_train), design(x_test)
    y = 2.0 * np.eye(num_classes)[y_train] - 1.0
    n, d = a.shape
    if n >= d:
        w = np.linalg.solve(a.T @ a + lam * np.eye(d), a.T @ y)
    else:
        w = a.T @ np.linalg.solve(a @ a.T + lam * np.eye(n), y)
    return b @ w


@pytest.mark.parametrize("n,d", [(120, 16), (12, 40)])  # primal (N >= D) and dual (N < D) forms
def test_ridge_probe_equals_a_float64_reference(n, d):
    rng = np.random.default_rng(0)
    classes = 4
    centres = rng.normal(size=(classes, d)) * 3
    y = np.arange(n) % classes
    x = (centres[y] + rng.normal(size=(n, d))).astype(np.float32) * rng.uniform(0.1, 10, size=d).astype(np.float32)
    x_test = (centres[y] + rng.normal(size=(n, d))).astype(np.float32)
    for lam in (2.0**10, 1.0):
        ours = linear_probe.ridge_scores(linear_probe.ridge_fit(x, y, classes, lam), x_test)
        ref = _reference_scores(x.astype(np.float64), y, x_test.astype(np.float64), classes, lam)
        np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


def test_few_shot_draws_k_per_class_and_split_holds_out_every_class():
    labels = np.repeat(np.arange(5), 20)
    train, test = linear_probe.split(labels, 0.5, seed=0)
    assert not set(train) & set(test) and len(train) + len(test) == 100
    assert all((labels[test] == c).sum() == 10 for c in range(5))
    idx = linear_probe.few_shot_indices(labels[train], 3, seed=1)
    assert sorted(np.bincount(labels[train][idx])) == [3] * 5
    assert not np.array_equal(idx, linear_probe.few_shot_indices(labels[train], 3, seed=2))
    assert linear_probe.few_shot_indices(labels[train], 11, seed=0) is None  # a class has only 10


# --- metrics --------------------------------------------------------------------------------------------

def test_classification_metrics_top1_top5_and_mean_per_class_recall():
    labels = np.array([0, 0, 0, 1, 2, 3, 4, 5])
    logits = np.eye(6)[[0, 0, 1, 1, 2, 3, 4, 5]].astype(float)  # one class-0 image wrong
    logits[2, 0] = 0.5  # ... but its class is second
    m = zeroshot.classification_metrics(logits, labels, 6)
    assert m["top1"] == pytest.approx(7 / 8)
    assert m["top5"] == 1.0
    assert m["mean_per_class_recall"] == pytest.approx((2 / 3 + 5) / 6)


def test_recall_at_k_counts_any_of_an_images_captions():
    # 3 images, captions owned [0, 0, 1, 2, 2]; rows = images, columns = captions.
    owner = np.array([0, 0, 1, 2, 2])
    sim = np.array([[0.1, 0.9, 0.8, 0.0, 0.0],   # image 0: best caption is its own (col 1)
                    [0.7, 0.0, 0.5, 0.6, 0.0],   # image 1: own caption ranks 3rd
                    [0.0, 0.0, 0.9, 0.2, 0.3]])  # image 2: own captions rank 2nd and 3rd
    r = retrieval.recall_at_k(sim, owner, np.ones(3, bool), ks=(1, 2, 3))
    assert (r["i2t_r1"], r["i2t_r2"], r["i2t_r3"]) == pytest.approx((1 / 3, 2 / 3, 1.0))
    # text -> image: col0 -> image0? scores (0.1, 0.7, 0) rank 2; col1 rank 1; col2 (0.8, 0.5, 0.9) rank 3;
    # col3 (0, 0.6, 0.2) rank 2; col4 (0, 0, 0.3) rank 1.
    assert (r["t2i_r1"], r["t2i_r2"], r["t2i_r3"]) == pytest.approx((2 / 5, 4 / 5, 1.0))
    # An unreadable image leaves with its captions.
    r = retrieval.recall_at_k(sim, owner, np.array([True, False, True]), ks=(1,))
    assert r["num_images"] == 2 and r["num_texts"] == 4


def test_prompt_templates_fill_the_class_and_its_article():
    assert sets.fill("{a} {c}.", "orange circle") == "an orange circle."
    assert sets.fill("a photo of {a} {c}.", "red square") == "a photo of a red square."
    assert sets.fill("itap of a {c}.", "apple") == "itap of a apple."  # CLIP's own templates stay verbatim


def test_builtin_sets_are_deterministic_and_well_formed():
    a = sets.load("shapes_classes", sets.CLASSIFICATION, image_size=32, seed=2)
    b = sets.load("shapes_classes", sets.CLASSIFICATION, image_size=32, seed=2)
    assert len(a) == 360 and len(a.classnames) == 18 and sorted(set(a.labels)) == list(range(18))
    x, ok, _ = a.images.load(range(4), 32)
    y, _, _ = b.images.load(range(4), 32)
    assert ok.all() and np.array_equal(x, y) and x.shape == (4, 32, 32, 3)
    caps = sets.load("shapes_captions", sets.CAPTIONS, image_size=32, seed=2)
    assert len({c[0] for c in caps.captions}) == len(caps)  # distinct left-to-right captions
    assert all(len(c) == 3 for c in caps.captions)
    digits = sets.load("digits", sets.CLASSIFICATION, image_size=32)
    assert len(digits) == 1797 and len(digits.classnames) == 10
    faces = sets.load("lfw", sets.CLASSIFICATION, image_size=32)
    assert len(faces) == 200 and np.bincount(faces.labels).tolist() == [100, 100]
    with pytest.raises(ValueError, match="classification set"):
        sets.load("digits", sets.CAPTIONS, image_size=32)


# --- config --------------------------------------------------------------------------------------------

def test_each_recipe_names_its_default_evals_completed_with_their_types_keys():
    cap = config_lib.base_config("captioning")
    assert sorted(cap.evals) == ["captioning", "digits", "faces", "zeroshot"]
    assert cap.evals.digits.shots == "1,5,10,25" and cap.evals.digits.seeds == 3
    assert sorted(config_lib.base_config("clip").evals) == ["digits", "faces", "retrieval", "zeroshot"]
    assert "retrieval" in config_lib.base_config("coca").evals and "captioning" in config_lib.base_config("coca").evals
    c = config_lib.base_config("captioning")
    config_lib.add_eval(c, "imagenet", "zeroshot", data="/data/val", method="likelihood")
    assert c.evals.imagenet.pairs_per_pass == registry.get("zeroshot").defaults["pairs_per_pass"]
    with pytest.raises(KeyError, match="no key"):
        config_lib.add_eval(c, "bad", "linear_probe", shotz="1")
    # A run's config.json from before evals existed gets the recipe's; one that removed them keeps none.
    old = config_lib.base_config("captioning")
    del old.evals
    assert sorted(defaults.complete(old).evals) == sorted(cap.evals)
    none = config_lib.base_config("captioning")
    none.evals = ml_collections.ConfigDict()
    assert not defaults.complete(none).evals
    # Published-size configs keep only the real-image probes.
    big = config_lib.load_config_file(os.path.join(ROOT, "configs/openvision2.py"))
    assert sorted(big.evals) == ["digits", "faces"]


def test_suite_skips_an_evaluator_the_model_cannot_run_and_names_unknown_ones():
    cfg = defaults.complete(config_lib.base_config("clip"))
    config_lib.add_eval(cfg, "zs_ll", "zeroshot", data="shapes_classes", method="likelihood")
    tok = get_tokenizer("shapes")
    mesh = parallel.make_mesh({"dcn_data": 1, "data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
    suite = Suite(cfg, recipes.get("clip"), recipes.SpecialIds.of(tok), tok, mesh)
    assert "caption decoder" in suite.skipped["zs_ll"]
    with pytest.raises(ValueError, match="no evaluator named nope"):
        Suite(cfg, recipes.get("clip"), recipes.SpecialIds.of(tok), tok, mesh, ["nope"])


# --- the eval path never masks --------------------------------------------------------------------------

def _tiny_captioner(tmp_path, keep_ratio=0.5):
    from tests.test_train import tiny_train_cfg

    cfg = defaults.complete(tiny_train_cfg(tmp_path / "data", keep_ratio=keep_ratio))
    config_lib.add_eval(cfg, "ppl", "perplexity", data="shapes_captions", num=12, batch_size=8)
    return cfg


def _reference_caption_loss(cfg, params, images, tokens):
    """Token-weighted CE of the captioner over every visual token, in float64 on the host."""
    recipe, tok = recipes.get(cfg.objective), get_tokenizer(cfg.text.vocab)
    model = recipe.build_model(cfg, recipes.SpecialIds.of(tok))
    logits = np.asarray(model.apply({"params": params}, jnp.asarray(images), jnp.asarray(tokens[:, :-1]))["logits"],
                        np.float64)
    logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) - \
        logits.max(-1, keepdims=True)
    targets = tokens[:, 1:]
    nll = -np.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
    weights = targets != tok.pad_id
    return float((nll * weights).sum() / weights.sum()), model


def test_the_evaluators_the_trainer_and_evaluate_call_see_every_visual_token(tmp_path):
    """keep_ratio=0.5 trains on half the visual tokens; the eval path (the perplexity evaluator,
    and the trainer's held-out eval) must report the loss over all of them."""
    from openvision2.data import pipeline
    from openvision2.evals.heldout import Evaluator as Heldout
    from openvision2.train.state import Training

    cfg = _tiny_captioner(tmp_path)
    recipe, tok = recipes.get(cfg.objective), get_tokenizer(cfg.text.vocab)
    ids = recipes.SpecialIds.of(tok)
    mesh = parallel.make_mesh({"dcn_data": 1, "data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
    params = recipe.init_params(recipe.build_model(cfg, ids), cfg, jax.random.key(3))
    params = jax.tree.map(lambda x: x.value if hasattr(x, "value") else x, params, is_leaf=lambda x: hasattr(x, "value"))

    suite = Suite(cfg, recipe, ids, tok, mesh, ["ppl"])
    got = suite.run(params)["eval/ppl/loss"]
    data = sets.load("shapes_captions", sets.CAPTIONS, image_size=cfg.data.shapes.image_size, num=12,
                     seed=cfg.data.shapes.eval_seed)
    owner = np.repeat(np.arange(len(data)), [len(c) for c in data.captions])
    images, ok, _ = data.images.subset(owner).load(range(len(owner)), cfg.image_size)
    assert ok.all()
    tokens = tok.encode([c for cs in data.captions for c in cs], cfg.text.max_len)
    want, model = _reference_caption_loss(cfg, params, images, tokens)
    assert got == pytest.approx(want, rel=1e-5)
    # The same loss with the training mask is clearly different, so a masked eval would fail above.
    objective = recipe.objective(cfg, ids)
    masked = objective.prepare({"image": jnp.asarray(images), "text": jnp.asarray(tokens)}, step=1)
    sums, _ = objective.caption_sums(model, params, masked)
    assert abs(float(sums["loss_sum"] / sums["count"]) - want) > 1e-3

    # The trainer's held-out eval on its eval set, against the same reference.
    training = Training(cfg, recipe, ids, mesh, parallel.logical_rules(cfg))
    held = Heldout(cfg, recipe, training.model, training.objective, tok, ids, mesh)
    with jax.set_mesh(mesh):
        got = held.run(params)["eval/loss"]
    stream = recipe.stream(cfg)
    batches = list(pipeline.eval_batches(cfg.data, stream, tok, global_batch=held.global_batch,
                                         host_batch=held.global_batch, host_offset=0))
    valid = np.concatenate([b["valid"] for b in batches])
    imgs = np.concatenate([b["image"] for b in batches])[valid]
    want, _ = _reference_caption_loss(cfg, params, imgs, np.concatenate([b["text"] for b in batches])[valid])
    assert got == pytest.approx(want, rel=1e-5)


def test_the_trainer_runs_evaluators_at_their_cadence_and_each_stage_end(tmp_path):
    from openvision2 import train
    from tests.test_train import read_metrics, tiny_train_cfg

    cfg = tiny_train_cfg(tmp_path / "data", run_evals=True, total_steps=5)
    cfg.evals = ml_collections.ConfigDict()
    config_lib.add_eval(cfg, "zs", "zeroshot", data="shapes_classes", num=36, every=2)
    config_lib.add_eval(cfg, "faces", "linear_probe", data="lfw", shots="1,5")
    config_lib.add_eval(cfg, "off", "linear_probe", data="lfw", every=-1)
    out = train.train(cfg, str(tmp_path / "run"))
    rows = [r for r in read_metrics(str(tmp_path / "run")) if any(k.startswith("eval/") for k in r)]
    zs = [r["step"] for r in rows if "eval/zs/top1" in r]
    faces = [r["step"] for r in rows if "eval/faces/5shot" in r]
    assert zs == [2, 4, 5] and faces == [5]
    assert not any(k.startswith("eval/off/") for r in rows for k in r)
    assert 0.0 <= out["eval/zs/top1"] <= 1.0 and out["eval/faces/5shot_std"] >= 0.0
    assert {"eval/zs/top5", "eval/zs/mean_per_class_recall", "eval/zs/pairs_per_s", "eval/faces/1shot",
            "eval/faces/full", "eval/zs/seconds"} <= set(out)


# --- trained runs (one short demo run and one tiny CLIP, shared by the tests below) ----------------------

# The demo recipe without token masking learns the shape kinds sooner (top-1 0.96 after 600 steps,
# 0.80 with keep_ratio=0.5; the full 1,200-step demo reaches 1.0 either way).
FIXTURE_STEPS = {"demo": 600, "clip": 600}  # tiny CLIP: 0.90 top-1 at 400 steps, 1.0 at 800


def _train_fixture(root, spec, steps, **overrides):
    from openvision2 import train
    from openvision2.config import files

    cfg = files.load_config_file(os.path.join(ROOT, spec))
    cfg.total_steps = steps
    cfg.eval_every, cfg.checkpoint_every, cfg.run_evals, cfg.log_every = 0, steps, False, 100
    cfg.data.num_eval = cfg.data.shapes.num_eval = 64
    for k, v in overrides.items():
        cfg[k] = v
    workdir = str(root / spec.replace("/", "_").replace(":", "_"))
    train.train(cfg, workdir)
    return workdir


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    return _train_fixture(tmp_path_factory.mktemp("runs"), "configs/demo.py", FIXTURE_STEPS["demo"], keep_ratio=1.0)


@pytest.fixture(scope="module")
def clip_run(tmp_path_factory):
    return _train_fixture(tmp_path_factory.mktemp("runs"), "configs/clip.py:tiny", FIXTURE_STEPS["clip"])


def _suite_of(workdir, names, fresh=False):
    from openvision2.inference import TrainedRun

    run = TrainedRun(workdir)
    cfg = defaults.complete(run.cfg)
    mesh = parallel.make_mesh({"dcn_data": 1, "data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
    params = run.params
    if fresh:  # the same model, untrained
        params = nn_unbox(run.recipe.init_params(run.recipe.build_model(cfg, run.ids), cfg, jax.random.key(1)))
    return Suite(cfg, run.recipe, run.ids, run.tokenizer, mesh, names), params


def nn_unbox(tree):
    import flax.linen as nn

    return nn.unbox(tree)


@pytest.mark.slow
def test_zero_shot_by_likelihood_classifies_held_out_shapes_and_an_untrained_model_does_not(demo_run):
    suite, params = _suite_of(demo_run, ["zeroshot"])
    trained = suite.run(params)
    assert trained["eval/zeroshot/top1"] >= 0.9, trained
    suite, fresh = _suite_of(demo_run, ["zeroshot"], fresh=True)
    untrained = suite.run(fresh)
    assert untrained["eval/zeroshot/top1"] <= 0.2, untrained  # chance is 1/18
    assert trained["eval/zeroshot/num_images"] == 360


@pytest.mark.slow
def test_contrastive_zero_shot_on_the_tiny_clip(clip_run):
    suite, params = _suite_of(clip_run, ["zeroshot", "retrieval"])
    out = suite.run(params)
    assert out["eval/zeroshot/top1"] >= 0.9, out
    assert out["eval/retrieval/i2t_r10"] > out["eval/retrieval/i2t_r1"] > 0.2
    suite, fresh = _suite_of(clip_run, ["zeroshot"], fresh=True)
    assert suite.run(fresh)["eval/zeroshot/top1"] <= 0.2


@pytest.mark.slow
def test_few_shot_probe_accuracy_rises_with_shots_for_a_trained_encoder(demo_run):
    suite, params = _suite_of(demo_run, ["digits"])
    out = suite.run(params)
    accs = [out[f"eval/digits/{k}shot"] for k in (1, 5, 10, 25)]
    assert accs == sorted(accs) and accs[-1] - accs[0] > 0.15, accs
    assert out["eval/digits/full"] >= accs[-1] - 0.02


def _evaluate(*args):
    proc = subprocess.run([sys.executable, "-m", "openvision2.evaluate", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {row["eval"]: row for row in map(json.loads, proc.stdout.splitlines())}


@pytest.mark.slow
def test_evaluate_runs_every_default_evaluator_on_a_run_and_on_its_exported_encoder(demo_run, tmp_path):
    rows = _evaluate(f"--workdir={demo_run}", "--config.evals.digits.shots=1,10")
    assert sorted(rows) == ["captioning", "digits", "faces", "zeroshot"]
    assert rows["zeroshot"]["top1"] >= 0.9 and rows["captioning"]["CIDEr"] > 1.0
    assert "5shot" not in rows["digits"] and rows["digits"]["step"] == FIXTURE_STEPS["demo"]
    hf = str(tmp_path / "hf")
    subprocess.run([sys.executable, "-m", "openvision2.export", f"--workdir={demo_run}", f"--output={hf}",
                    "--format=hf"], check=True, capture_output=True, cwd=ROOT, timeout=600)
    imported = _evaluate(f"--init_from={hf}", "--config.evals.digits.shots=1,10")
    assert "skipped" in imported["zeroshot"] and "skipped" in imported["captioning"]
    # The same encoder through the HF directory: the same features, so the same probe accuracy.
    for key in ("1shot", "10shot", "full"):
        assert imported["digits"][key] == pytest.approx(rows["digits"][key], abs=0.005), key
    assert imported["faces"]["full"] == pytest.approx(rows["faces"]["full"], abs=0.011)


@pytest.mark.parametrize("objective", ["captioning", "openvision", "clip", "siglip", "coca", "mmgem"])
def test_every_recipe_runs_its_default_evaluators(objective):
    """Every evaluator a recipe names runs on its (untrained) model, both ways where it can, and a
    caption-only model also retrieves by likelihood."""
    from tests.test_objectives import objective_cfg

    cfg = defaults.complete(objective_cfg(objective))
    cfg.text.vocab, cfg.model.vocab_size, cfg.text.max_len = "shapes", 32, 12
    cfg.eval_batch_size = 8
    for name, entry in cfg.evals.items():
        entry.num = 100 if entry.data == "digits" else 12
        if entry.type == "linear_probe":
            entry.shots, entry.seeds = "1,2", 2
        if entry.type == "zeroshot" and recipes.get(objective).captions and recipes.get(objective).embeds:
            assert entry.method == "both"
    if not recipes.get(objective).embeds:
        config_lib.add_eval(cfg, "retrieval_ll", "retrieval", data="shapes_captions", num=6, method="likelihood")
    tok = get_tokenizer(cfg.text.vocab)
    ids = recipes.SpecialIds.of(tok)
    recipe = recipes.get(objective)
    mesh = parallel.make_mesh({"dcn_data": 1, "data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
    import flax.linen as nn

    params = nn.unbox(recipe.init_params(recipe.build_model(cfg, ids), cfg, jax.random.key(0)))
    suite = Suite(cfg, recipe, ids, tok, mesh)
    assert not suite.skipped
    out = suite.run(params)
    names = {k.split("/")[1] for k in out}
    assert names == set(cfg.evals), names
    for key, value in out.items():
        assert math.isfinite(value), key
        if key.endswith(("top1", "_r1", "shot", "full")):
            assert 0.0 <= value <= 1.0, key
    if recipe.captions and recipe.embeds:
        assert "eval/zeroshot/likelihood/top1" in out and "eval/zeroshot/embedding/top1" in out
