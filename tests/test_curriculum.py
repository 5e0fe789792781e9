"""Curricula as data (stages.py), the trainer running them, and regex freezing / LR multipliers."""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import ml_collections

from openvision2 import config as config_lib, train
from openvision2.config import stages
from openvision2.train import carry, checkpoint, optim
from tests.test_train import deterministic, read_metrics, tiny_train_cfg


def two_stage_cfg(data_dir, **first):
    cfg = tiny_train_cfg(data_dir)
    cfg.model.posemb = "learned"
    config_lib.set_stages(
        cfg,
        low=config_lib.stage(4, image_size=16, batch_size=8, **first),
        high=config_lib.stage(3, image_size=32, batch_size=16, keep_ratio=1.0,
                              optim={"lr": 1e-3, "warmup_steps": 1}))
    return cfg


def test_stages_merge_over_the_top_level_config_in_order():
    cfg = two_stage_cfg("/unused")
    plan = stages.resolve(cfg)
    assert [(s.name, s.start, s.end) for s in plan] == [("low", 0, 4), ("high", 4, 7)]
    assert cfg.total_steps == 7
    low, high = plan[0].cfg, plan[1].cfg
    assert (low.image_size, low.batch_size, low.keep_ratio, low.optim.lr) == (16, 8, 0.5, 4e-3)
    assert (high.image_size, high.batch_size, high.keep_ratio, high.optim.lr) == (32, 16, 1.0, 1e-3)
    assert high.optim.warmup_steps == 1 and high.optim.b2 == cfg.optim.b2  # nested dicts merge key by key
    assert low.total_steps == 4 and high.total_steps == 3 and "stages" not in high
    assert plan[0].data_seed == cfg.seed and plan[1].data_seed != cfg.seed
    # total_steps follows a later override of a stage's length (as --config.stages.high.steps=10 does)
    cfg.stages.high.steps = 10
    assert cfg.total_steps == 14 and stages.resolve(cfg)[-1].end == 14
    # the written config.json round-trips (stage order survives sorted keys)
    again = stages.resolve(ml_collections.ConfigDict(json.loads(cfg.to_json_best_effort(sort_keys=True))))
    assert [s.name for s in again] == ["low", "high"]


def test_stage_configs_that_cannot_run_fail_with_the_fix():
    cfg = two_stage_cfg("/unused")
    cfg.total_steps = 5
    with pytest.raises(ValueError, match="stages.<name>.steps"):
        stages.resolve(cfg)
    cfg = two_stage_cfg("/unused")
    cfg.stages.high.imagesize = 64
    with pytest.raises(KeyError, match="stages.high.imagesize overrides nothing"):
        stages.resolve(cfg)
    cfg = two_stage_cfg("/unused")
    cfg.stage_order = "low"
    with pytest.raises(ValueError, match="must list every stage"):
        stages.resolve(cfg)
    with pytest.raises(ValueError, match="past the end of the curriculum"):
        stages.stage_of_checkpoint(stages.resolve(two_stage_cfg("/unused")), 8)


def test_checkpoint_steps_belong_to_the_stage_that_ran_them():
    plan = stages.resolve(two_stage_cfg("/unused"))
    assert [stages.stage_of_checkpoint(plan, s) for s in range(8)] == [0, 0, 0, 0, 0, 1, 1, 1]


def test_learned_posemb_is_resized_as_a_grid():
    # A posemb that is bilinear in (row, col) is reproduced exactly at the grid
    # points of a 2x upsampling away from the border (half-pixel centres).
    old, new = 4, 8
    r, c = np.meshgrid(np.arange(old), np.arange(old), indexing="ij")
    table = np.stack([r, c, 3.0 * r - 2.0 * c + 1.0], -1).reshape(1, old * old, 3).astype(np.float32)
    out = np.asarray(carry.resize_posemb(jnp.asarray(table), new * new)).reshape(new, new, 3)
    centres = (np.arange(new) + 0.5) / 2 - 0.5  # new pixel centres in old coordinates
    rr, cc = np.meshgrid(centres, centres, indexing="ij")
    inner = slice(1, new - 1)
    np.testing.assert_allclose(out[inner, inner, 0], rr[inner, inner], atol=1e-5)
    np.testing.assert_allclose(out[inner, inner, 2], (3 * rr - 2 * cc + 1)[inner, inner], atol=1e-5)
    same = carry.resize_posemb(jnp.asarray(table), old * old)
    np.testing.assert_allclose(same, table, atol=1e-6)

    params = {"encoder": {"pos_embedding": jnp.asarray(table), "w": jnp.ones((3, 3))}}
    target = {"encoder": {"pos_embedding": jax.ShapeDtypeStruct((1, 64, 3), jnp.float32),
                          "w": jax.ShapeDtypeStruct((3, 3), jnp.float32)}}
    assert carry.adapt_params(params, target)["encoder"]["pos_embedding"].shape == (1, 64, 3)
    target["encoder"]["w"] = jax.ShapeDtypeStruct((3, 4), jnp.float32)
    with pytest.raises(ValueError, match="encoder/w changes shape"):
        carry.adapt_params(params, target)


def _updates(cfg, params, grads):
    """The second update (the first has warmup's zero LR) and the initial optimizer state."""
    tx = optim.make_optimizer(cfg, params)
    _, state = tx.update(grads, tx.init(params), params)
    updates, _ = tx.update(grads, state, params)
    return updates, tx.init(params)


def test_frozen_params_get_no_update_and_no_optimizer_state():
    cfg = config_lib.base_config()
    params = {"encoder": {"block_0": {"q": {"kernel": jnp.ones((4, 4))}}},
              "decoder": {"embed": {"embedding": jnp.ones((8, 4))}}}
    grads = jax.tree.map(lambda x: jnp.full_like(x, 0.5), params)
    cfg.optim.frozen = "^encoder/"
    updates, state = _updates(cfg, params, grads)
    assert not np.any(updates["encoder"]["block_0"]["q"]["kernel"])
    assert np.all(updates["decoder"]["embed"]["embedding"] != 0)
    moments = [x for x in jax.tree.leaves(state) if getattr(x, "shape", ()) == (4, 4)]
    assert moments == []  # no Adam moments were allocated for the frozen kernel
    cfg.optim.frozen, cfg.optim.trainable = "", "^decoder/embed/"
    trainable_updates, _ = _updates(cfg, params, grads)
    for a, b in zip(jax.tree.leaves(updates), jax.tree.leaves(trainable_updates)):
        np.testing.assert_array_equal(a, b)
    cfg.optim.trainable = "^nothing"
    with pytest.raises(ValueError, match="freeze every parameter"):
        optim.make_optimizer(cfg, params)


def test_lr_multipliers_scale_each_matching_parameter():
    cfg = config_lib.base_config()
    params = {"encoder": {"w": {"kernel": jnp.ones((3, 3))}}, "projector": {"kernel": jnp.ones((3, 3))},
              "decoder": {"kernel": jnp.ones((3, 3))}}
    grads = jax.tree.map(lambda x: jnp.arange(x.size, dtype=jnp.float32).reshape(x.shape) - 4, params)
    base, _ = _updates(cfg, params, grads)
    cfg.optim.lr_mults = "^encoder/=0.1,proj=3"
    scaled, _ = _updates(cfg, params, grads)
    assert np.any(base["encoder"]["w"]["kernel"])
    np.testing.assert_allclose(scaled["encoder"]["w"]["kernel"], 0.1 * base["encoder"]["w"]["kernel"], rtol=1e-6)
    np.testing.assert_allclose(scaled["projector"]["kernel"], 3 * base["projector"]["kernel"], rtol=1e-6)
    np.testing.assert_allclose(scaled["decoder"]["kernel"], base["decoder"]["kernel"], rtol=1e-6)
    cfg.optim.lr_mults = "encoder"
    with pytest.raises(ValueError, match="regex=multiplier|no `=multiplier`"):
        optim.make_optimizer(cfg, params)


def test_two_stage_run_logs_stages_and_resumes_exactly_at_and_across_the_boundary(tmp_path):
    data = tmp_path / "data"
    full_dir = str(tmp_path / "full")
    full = train.train(two_stage_cfg(data), full_dir)
    assert full["step"] == 7
    rows = read_metrics(full_dir)
    events = [(r["step"], r["stage"], r["stage/event"], r["stage/image_size"]) for r in rows if "stage/event" in r]
    assert events == [(0, "low", "start", 16), (4, "low", "end", 16), (4, "high", "start", 32), (7, "high", "end", 32)]
    evals = [(r["step"], r["stage"]) for r in rows if "eval/loss" in r]
    assert evals == [(4, "low"), (7, "high")]
    # each stage starts its own warmup: LR of the first step of each stage is 0
    lrs = {r["step"]: r["train/lr"] for r in rows if "train/lr" in r}
    assert lrs[1] == 0 and lrs[5] == 0 and lrs[2] > 0 and lrs[6] > 0

    # The learned position embedding was resized, then kept training at the new grid.
    params, step = checkpoint.restore_params(full_dir)
    assert step == 7 and params["encoder"]["pos_embedding"].shape == (1, 16, 32)

    # Killed at the boundary (its checkpoint holds the first stage's state), then inside stage 2.
    resumed = str(tmp_path / "resumed")
    assert train.train(two_stage_cfg(data), resumed, stop_after_steps=4)["step"] == 4
    assert train.train(two_stage_cfg(data), resumed, stop_after_steps=2)["step"] == 6
    assert train.train(two_stage_cfg(data), resumed)["step"] == 7
    a, b = deterministic(rows), deterministic(read_metrics(resumed))
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for ra, rb in zip(a, b):
        assert ra.keys() == rb.keys()
        for k in ra:
            if isinstance(ra[k], str):
                assert ra[k] == rb[k]
            else:
                np.testing.assert_allclose(rb[k], ra[k], rtol=1e-6, err_msg=f"{k} at step {ra['step']}")
    final_b, _ = checkpoint.restore_params(resumed)
    for x, y in zip(jax.tree.leaves(params), jax.tree.leaves(final_b)):
        np.testing.assert_allclose(np.asarray(y), np.asarray(x), rtol=1e-6)


def test_a_stage_can_freeze_the_encoder(tmp_path):
    cfg = two_stage_cfg(tmp_path / "data")
    cfg.stages.high.optim.frozen = "^encoder/"
    workdir = str(tmp_path / "run")
    train.train(cfg, workdir, stop_after_steps=4)
    before, _ = checkpoint.restore_params(workdir)
    train.train(cfg, workdir)
    after, _ = checkpoint.restore_params(workdir)
    # Frozen within stage 2; its position embedding only changed by the resize at the boundary.
    enc_b, enc_a = before["encoder"], after["encoder"]
    np.testing.assert_array_equal(enc_a["block_0"]["q"]["kernel"], enc_b["block_0"]["q"]["kernel"])
    np.testing.assert_allclose(enc_a["pos_embedding"], carry.resize_posemb(enc_b["pos_embedding"], 16), atol=1e-6)
    assert np.any(after["decoder"]["block_0"]["q"]["kernel"] != before["decoder"]["block_0"]["q"]["kernel"])
    end = [r for r in read_metrics(workdir) if r.get("stage/event") == "start" and r["stage"] == "high"]
    assert end[0]["stage/frozen"] == "^encoder/"
