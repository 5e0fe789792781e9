"""Visual-token masking: count, order, independence, eval identity, gradients."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from openvision2.models import masking
from openvision2.recipes.captioning import CaptionObjective, teacher_forced
from openvision2.recipes.losses import cross_entropy, shift_tokens
from tests.test_models import build_model, ids_of, init, tiny_cfg


@pytest.mark.parametrize("n,ratio,k", [(36, 0.35, 13), (256, 0.35, 90), (16, 0.25, 4), (10, 0.05, 1)])
def test_keeps_round_ratio_times_n_sorted_unique(n, ratio, k):
    idx = np.asarray(masking.sample_keep_indices(jax.random.key(0), 64, n, ratio))
    assert idx.shape == (64, k)
    assert (np.diff(idx, axis=1) > 0).all()  # sorted and unique
    assert idx.min() >= 0 and idx.max() < n


def test_differs_per_example_and_per_step():
    a = np.asarray(masking.sample_keep_indices(masking.step_key(0, 1), 32, 64, 0.35))
    b = np.asarray(masking.sample_keep_indices(masking.step_key(0, 2), 32, 64, 0.35))
    assert len({tuple(r) for r in a}) == 32
    assert not (a == b).all(axis=1).any()
    again = np.asarray(masking.sample_keep_indices(masking.step_key(0, 1), 32, 64, 0.35))
    np.testing.assert_array_equal(a, again)  # a pure function of (seed, step)


def test_uniform_over_positions():
    idx = np.asarray(masking.sample_keep_indices(jax.random.key(1), 4000, 20, 0.25))
    freq = np.bincount(idx.ravel(), minlength=20) / idx.size
    np.testing.assert_allclose(freq, 1 / 20, atol=0.01)


def test_keep_ratio_one_is_no_masking():
    assert masking.sample_keep_indices(jax.random.key(0), 4, 16, 1.0) is None


def _setup(keep_ratio):
    cfg = tiny_cfg()
    cfg.keep_ratio = keep_ratio
    model = build_model(cfg)
    params = init(model, cfg)
    batch = {"image": jax.random.randint(jax.random.key(1), (4, 32, 32, 3), 0, 255).astype(jnp.uint8),
             "text": jnp.concatenate([jnp.ones((4, 1), jnp.int32),
                                      jax.random.randint(jax.random.key(2), (4, 6), 4, 48),
                                      jnp.full((4, 1), 2, jnp.int32)], axis=1)}
    return cfg, model, params, batch


def test_eval_never_masks():
    cfg, model, params, batch = _setup(0.25)
    obj = CaptionObjective(cfg, ids_of(cfg))
    loss = jax.jit(lambda b: obj.loss(model, params, b)[0])
    # The eval step never calls `prepare`, so no mask exists: equal to keep_ratio = 1.
    cfg.keep_ratio = 1.0
    no_mask = CaptionObjective(cfg, ids_of(cfg)).prepare(batch, 1)
    assert "keep_idx" not in no_mask
    np.testing.assert_allclose(loss(batch), loss(no_mask), rtol=1e-6)
    train_a, train_b = obj.prepare(batch, 1), obj.prepare(batch, 2)
    assert train_a["keep_idx"].shape == (4, 4)
    assert not np.isclose(loss(train_a), loss(batch))
    assert not np.isclose(loss(train_a), loss(train_b))


def test_gradient_flows_only_through_kept_tokens():
    cfg, model, params, batch = _setup(0.25)
    obj = CaptionObjective(cfg, ids_of(cfg))
    step = 7
    keep = np.asarray(masking.sample_keep_indices(masking.step_key(cfg.seed, step), 4, 16, 0.25))
    enc = model.apply({"params": params}, batch["image"], method=model.encode)["prenorm"]

    def loss_of_tokens(tokens):
        inputs, targets, w = shift_tokens(batch["text"])
        logits = model.apply({"params": params}, tokens, jnp.asarray(keep), inputs, 16, method=teacher_forced)
        return cross_entropy(logits, targets, w)["loss_sum"]

    g = np.abs(np.asarray(jax.grad(loss_of_tokens)(enc))).sum(-1)  # [B, N]
    kept = np.zeros((4, 16), bool)
    np.put_along_axis(kept, keep, True, axis=1)
    assert (g[~kept] == 0).all()
    assert (g[kept] > 0).all()
    # And the objective uses exactly those indices for this step.
    prepared = obj.prepare(batch, step)
    np.testing.assert_array_equal(prepared["keep_idx"], keep)
    loss_obj, _ = obj.loss(model, params, prepared)
    np.testing.assert_allclose(loss_obj, obj.loss_weight * loss_of_tokens(enc), rtol=1e-6)
