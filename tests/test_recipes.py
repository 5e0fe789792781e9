"""Recipes as modules: one registry, one file per recipe, and nothing else that knows their names."""

import json
import os
import re
import subprocess
import sys
import textwrap

import flax.linen as nn
import jax
import numpy as np
import pytest

from openvision2 import config as config_lib, recipes, train
from openvision2.config import files, stages
from openvision2.data.tokenizer import get_tokenizer
from openvision2.train import checkpoint
from tests.test_multiprocess import ROOT
from tests.test_train import deterministic, read_metrics, tiny_train_cfg

BUILT_IN = ["captioning", "clip", "coca", "mmgem", "openvision", "siglip"]


def test_the_registry_finds_every_recipe_and_names_them_when_one_is_unknown():
    assert set(BUILT_IN) <= set(recipes.names())  # (plus any a test registered from outside)
    assert all(recipes.get(name).name == name for name in BUILT_IN)
    with pytest.raises(ValueError, match=r"objective='captionning' is not a recipe: choose one of \['captioning'"):
        recipes.get("captionning")
    with pytest.raises(ValueError, match="two recipes are named 'clip'"):
        @recipes.register
        class Impostor(recipes.Recipe):  # noqa: F841
            name = "clip"


def test_outside_recipes_no_code_names_a_recipe():
    """Recipe names in quotes appear only in openvision2/recipes/, apart from the checkpoint
    formats of convert/ and the pixel-statistics table, which are not recipes."""
    not_recipes = {os.path.join("convert", "init.py"): {"siglip"}, os.path.join("models", "vit.py"): {"siglip", "clip"},
                   # the `captioning` evaluator type (CIDEr of greedy captions), not the recipe
                   os.path.join("evals", "captioning.py"): {"captioning"},
                   os.path.join("evals", "registry.py"): {"captioning"}}
    pattern = re.compile(r"[\"'](" + "|".join(BUILT_IN) + r")[\"']")
    package = os.path.join(ROOT, "openvision2")
    found = {}
    for folder, _, names in os.walk(package):
        for name in names:
            path = os.path.join(folder, name)
            rel = os.path.relpath(path, package)
            if not name.endswith(".py") or rel.startswith("recipes" + os.sep):
                continue
            with open(path) as f:
                named = set(pattern.findall(f.read())) - not_recipes.get(rel, set())
            if named:
                found[rel] = sorted(named)
    assert found == {}


def test_a_recipe_owns_its_config_keys():
    c = config_lib.base_config()
    assert c.objective == recipes.DEFAULT and c.caption_loss_weight == 2.0 and "contrastive" not in c
    config_lib.set_recipe(c, "clip")
    assert "caption_loss_weight" not in c and c.contrastive.min_temperature == 0.01
    assert c.model.text_encoder == "B" and c.data.contrastive_caption_mode == "field"
    c.contrastive.weight = 0.5
    config_lib.set_recipe(c, "openvision")  # keys both recipes read keep their values
    assert c.contrastive.weight == 0.5 and c.caption_loss_weight == 2.0 and "coca" not in c
    config_lib.set_recipe(c, "captioning")
    assert "contrastive" not in c and "text_encoder" not in c.model and "contrastive_caption_mode" not in c.data
    assert config_lib.base_config("mmgem").caption_loss_weight == 1.0  # MM-GEM's loss is the plain sum

    # A config that only sets `objective` (or --config.objective=...) is completed with the
    # recipe's keys, at their defaults, before anything reads them.
    bare = config_lib.base_config()
    bare.objective = "coca"
    (stage,) = stages.resolve(bare)
    assert stage.cfg.coca.caption_queries == 256 and stage.cfg.contrastive.weight == 1.0


@pytest.mark.parametrize("key,value,fixed", [("mesh", {"fsdp": 2}, "mesh"), ("seed", 3, "seed"),
                                             ("sharding_rules", "dp", "sharding_rules"),
                                             ("text", {"vocab": "shapes"}, "text.vocab")])
def test_a_stage_cannot_change_what_is_fixed_for_the_run(key, value, fixed):
    cfg = tiny_train_cfg("/unused")
    config_lib.set_stages(cfg, a=config_lib.stage(4), b=config_lib.stage(4, **{key: value}))
    with pytest.raises(ValueError, match=rf"stages\.b\.{re.escape(fixed)} overrides {re.escape(fixed)}, which is "
                                         "fixed for the whole run.*--config\\." + re.escape(fixed)):
        stages.resolve(cfg)
    cfg.stages.b = config_lib.stage(4, text={"max_len": 12})  # the rest of the block may change
    assert stages.resolve(cfg)[1].cfg.text.max_len == 12


CONFIG_SPECS = ["configs/demo.py", "configs/demo.py:curriculum",
                "configs/openvision2.py:L/14", "configs/openvision2.py:So400m/14", "configs/openvision2.py:B/16",
                "configs/openvision_v1.py:tiny", "configs/openvision_v1.py:L/14",
                "configs/clip.py:tiny", "configs/clip.py:L/14", "configs/clip.py:B/16",
                "configs/siglip.py:tiny", "configs/siglip.py:So400m/14", "configs/siglip.py:B/16",
                "configs/coca.py:tiny", "configs/coca.py:B/16", "configs/coca.py:L/14",
                "configs/mmgem.py:tiny", "configs/mmgem.py:L/14"]


def test_parameter_paths_and_shapes_are_those_recorded_before_the_restructure():
    """Users' checkpoints and exports address parameters by path: every recipe's tiny and
    published configs keep exactly the tree recorded by the code before recipes were modules."""
    with open(os.path.join(ROOT, "tests", "data", "param_shapes_5a0db19.json")) as f:
        recorded = json.load(f)["configs"]
    got = {}
    for spec in CONFIG_SPECS:
        cfg = files.load_config_file(os.path.join(ROOT, spec))
        for label, c in stages.select(cfg):
            recipe = recipes.get(c.objective)
            shapes = nn.unbox(recipe.abstract_params(c, recipes.SpecialIds.of(get_tokenizer(c.text.vocab))))
            got[spec + (f"[{label}]" if label else "")] = {
                "/".join(str(k.key) for k in path): [list(x.shape), str(x.dtype)]
                for path, x in jax.tree_util.tree_leaves_with_path(shapes)}
    assert got.keys() == recorded.keys()
    for name in recorded:
        assert got[name] == recorded[name], name


TOY = '''
"""A recipe from outside the package: the first caption word from the pooled image."""
import flax.linen as nn
import jax.numpy as jnp

from openvision2 import recipes, sizes
from openvision2.models import layers
from openvision2.models.vit import ViT
from openvision2.recipes import losses, parts


class FirstWordModel(nn.Module):
    encoder: ViT
    vocab_size: int

    @nn.compact
    def __call__(self, images):
        pooled = self.encoder.from_uint8(images)["pooled"]
        return layers.dense(self.vocab_size, ("embed", "vocab"), use_bias=True, name="head",
                            dtype=jnp.float32, param_dtype=jnp.float32)(pooled)

    def initialise(self, batch):
        return self(batch["image"])


class FirstWordObjective(recipes.Objective):
    def __init__(self, cfg, ids):
        self.weight, self.pad = float(cfg.first_word.weight), ids.pad

    def loss(self, model, params, batch):
        logits = model.apply({"params": params}, batch["image"])[:, None]
        first = batch["text"][:, 1:2]
        sums = losses.cross_entropy(logits, first, first != self.pad)
        return self.weight * sums["loss_sum"], sums


@recipes.register
class FirstWord(recipes.Recipe):
    name = __name__

    def defaults(self):
        return {"first_word": {"weight": 1.0}}

    def build_model(self, cfg, ids, mode="train"):
        return FirstWordModel(parts.vit(cfg), cfg.model.vocab_size)

    def objective(self, cfg, ids):
        return FirstWordObjective(cfg, ids)

    def train_flops(self, cfg):
        per_example, _ = parts.encoder_flops(cfg)
        width = sizes.encoder_size(cfg.model.encoder).width
        return parts.step_flops(cfg, per_example + 2 * width * cfg.model.vocab_size)
'''


def test_a_recipe_added_in_its_own_module_trains_through_the_normal_trainer(tmp_path, monkeypatch):
    (tmp_path / "lab").mkdir()
    (tmp_path / "lab" / "first_word_recipe.py").write_text(textwrap.dedent(TOY))
    monkeypatch.syspath_prepend(str(tmp_path / "lab"))
    name = "first_word_recipe"
    cfg = config_lib.set_recipe(tiny_train_cfg(tmp_path / "data", total_steps=8, checkpoint_every=4), name)
    cfg.keep_ratio = 1.0
    cfg.optim.lr = 0.1
    assert cfg.first_word.weight == 1.0 and "caption_loss_weight" not in cfg  # its own keys only
    workdir = str(tmp_path / "run")
    assert train.train(cfg, workdir)["step"] == 8
    rows = [r for r in read_metrics(workdir) if "train/loss" in r]
    assert len(rows) == 8 and rows[-1]["train/loss"] < rows[0]["train/loss"] and "train/token_accuracy" in rows[0]
    assert json.load(open(os.path.join(workdir, "config.json")))["objective"] == name
    params, step = checkpoint.restore_params(workdir)
    assert step == 8 and params["head"]["kernel"].shape == (32, 32)
    # Another process finds the recipe from the run's config.json alone.
    npz = str(tmp_path / "feats.npz")
    image = str(tmp_path / "img.png")
    from PIL import Image
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(image)
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(tmp_path / "lab")}
    subprocess.run([sys.executable, "-m", "openvision2.encode", f"--workdir={workdir}", f"--output={npz}", image],
                   check=True, capture_output=True, text=True, env=env, cwd=str(tmp_path))
    assert np.load(npz)["pooled"].shape == (1, 32)


def test_captioning_many_images_compiles_the_decoder_once(tmp_path):
    workdir = str(tmp_path / "run")
    train.train(tiny_train_cfg(tmp_path / "data", total_steps=3), workdir)
    from PIL import Image
    from openvision2.data import shapes
    rng = np.random.default_rng(0)
    paths = []
    for i in range(64):
        paths.append(str(tmp_path / f"{i}.png"))
        Image.fromarray(shapes.render(rng, 32, 1 + i % 3)[0]).save(paths[-1])
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_LOG_COMPILES": "1"}
    out = subprocess.run([sys.executable, "-m", "openvision2.caption", f"--workdir={workdir}", "--batch_size=16",
                          *paths], check=True, capture_output=True, text=True, env=env)
    lines = out.stdout.strip().splitlines()
    assert [line.split("\t")[0] for line in lines] == paths
    assert out.stderr.count("Compiling jit(greedy)") == 1
    # A last chunk smaller than the others is padded to their size: still one compile, same captions.
    again = subprocess.run([sys.executable, "-m", "openvision2.caption", f"--workdir={workdir}", "--batch_size=16",
                            *paths[:40]], check=True, capture_output=True, text=True, env=env)
    assert again.stderr.count("Compiling jit(greedy)") == 1 and again.stdout.strip().splitlines() == lines[:40]


PRE_RESTRUCTURE = "5a0db19"


@pytest.mark.slow
def test_a_checkpoint_written_before_the_restructure_resumes_exactly(tmp_path):
    """A run started by the code before recipes were modules (this repository's history at
    5a0db19) is resumed by today's trainer: the state, optimizer and data position restore, and
    the resumed steps equal the old code's uninterrupted run."""
    if subprocess.run(["git", "-C", ROOT, "cat-file", "-e", f"{PRE_RESTRUCTURE}^{{commit}}"],
                      capture_output=True).returncode:
        pytest.skip(f"needs this repository's git history (commit {PRE_RESTRUCTURE})")
    old = tmp_path / "old"
    old.mkdir()
    archive = subprocess.run(["git", "-C", ROOT, "archive", PRE_RESTRUCTURE, "openvision2", "configs"],
                             check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(old)], input=archive, check=True)
    flags = ["--config=configs/demo.py", "--config.total_steps=6", "--config.checkpoint_every=3",
             "--config.log_every=1", "--config.eval_every=0", "--config.batch_size=8", "--config.eval_batch_size=8",
             "--config.image_size=32", "--config.model.encoder=mu/8,width=32,depth=2,heads=2",
             "--config.model.decoder=mu,width=32,depth=1,heads=2", "--config.optim.warmup_steps=2",
             "--config.data.shapes.num_train=64", "--config.data.shapes.num_eval=8", "--config.data.num_eval=8",
             "--config.data.shapes.image_size=32", f"--config.data.shapes.dir={tmp_path / 'shapes'}",
             "--config.data.prefetch=0", "--config.async_checkpoints=False"]
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(old)}
    run_old = lambda workdir, *extra: subprocess.run(
        [sys.executable, "-m", "openvision2.train", f"--workdir={workdir}", *flags, *extra], cwd=str(old), env=env,
        check=True, capture_output=True, text=True)
    full, resumed = str(tmp_path / "full"), str(tmp_path / "resumed")
    run_old(full)
    run_old(resumed, "--stop_after_steps=3")
    assert sorted(os.listdir(os.path.join(resumed, "checkpoints"))) == ["3"]

    from openvision2.config import cli
    cfg = cli.load(os.path.join(ROOT, "configs", "demo.py"), flags)
    cfg.run_evals = False  # the old code had no evaluators: compare what both logged
    assert train.train(cfg, resumed)["step"] == 6
    a, b = deterministic(read_metrics(full)), deterministic(read_metrics(resumed))
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for ra, rb in zip(a, b):
        for k in ra:
            np.testing.assert_allclose(rb[k], ra[k], rtol=1e-6, err_msg=f"{k} at step {ra['step']}")
    old_params, _ = checkpoint.restore_params(full)
    new_params, _ = checkpoint.restore_params(resumed)
    for x, y in zip(jax.tree.leaves(old_params), jax.tree.leaves(new_params)):
        np.testing.assert_allclose(np.asarray(y), np.asarray(x), rtol=1e-6)
