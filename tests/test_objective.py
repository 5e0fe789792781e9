"""Captioning cross-entropy: token weighting, padding, z-loss, sums."""

import jax
import jax.numpy as jnp
import numpy as np

from openvision2.recipes.losses import cross_entropy, shift_tokens


def test_shift_weights_real_tokens_including_eos():
    text = jnp.array([[1, 7, 8, 2, 0, 0]])
    inputs, targets, w = shift_tokens(text)
    np.testing.assert_array_equal(inputs, [[1, 7, 8, 2, 0]])
    np.testing.assert_array_equal(targets, [[7, 8, 2, 0, 0]])
    np.testing.assert_array_equal(w, [[1, 1, 1, 0, 0]])


def test_loss_ignores_padding_positions():
    key1, key2 = jax.random.split(jax.random.key(0))
    logits = jax.random.normal(key1, (2, 5, 11))
    targets = jnp.array([[3, 4, 2, 0, 0], [5, 2, 0, 0, 0]])
    w = targets != 0
    base = cross_entropy(logits, targets, w)
    noisy = logits.at[:, 3:].set(jax.random.normal(key2, (2, 2, 11)) * 100)  # only padded slots change
    other = cross_entropy(noisy, targets, w)
    for k in ("loss_sum", "count", "correct"):
        np.testing.assert_allclose(base[k], other[k], rtol=1e-6)
    assert float(base["count"]) == 5.0


def test_known_answer_float64_reference():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 4, 6))
    targets = rng.integers(0, 6, size=(3, 4))
    w = rng.random((3, 4)) > 0.3
    lse = np.log(np.exp(logits).sum(-1))
    nll = lse - np.take_along_axis(logits, targets[..., None], -1)[..., 0]
    out = cross_entropy(jnp.asarray(logits, jnp.float32), jnp.asarray(targets), jnp.asarray(w), z_loss=1e-2)
    np.testing.assert_allclose(out["loss_sum"], (nll * w).sum(), rtol=1e-5)
    np.testing.assert_allclose(out["z_sum"], (1e-2 * lse**2 * w).sum(), rtol=1e-5)
    np.testing.assert_allclose(out["count"], w.sum())
    assert out["correct"] == ((logits.argmax(-1) == targets) * w).sum()


def test_sums_split_over_microbatches_equal_the_whole():
    """The token-weighted mean is exact when sums and counts are added before dividing."""
    rng = np.random.default_rng(1)
    logits = jnp.asarray(rng.normal(size=(4, 5, 7)), jnp.float32)
    targets = jnp.asarray(rng.integers(1, 7, size=(4, 5)))
    w = jnp.asarray([[1, 1, 1, 1, 1], [1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 0]], bool)
    whole = cross_entropy(logits, targets, w)
    a, b = cross_entropy(logits[:2], targets[:2], w[:2]), cross_entropy(logits[2:], targets[2:], w[2:])
    np.testing.assert_allclose((a["loss_sum"] + b["loss_sum"]) / (a["count"] + b["count"]),
                               whole["loss_sum"] / whole["count"], rtol=1e-6)
