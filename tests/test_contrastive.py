"""Contrastive losses against float64 references computed here, both directions, with temperature."""

import jax
import jax.numpy as jnp
import numpy as np

from openvision2 import parallel
from openvision2.recipes.losses import clip_loss, siglip_loss, siglip_loss_chunked


def _embeddings(b=16, d=8, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(b, d)), rng.normal(size=(b, d))


def _unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_clip_loss_equals_float64_reference_both_directions():
    img, txt = _embeddings()
    log_scale = np.log(1 / 0.07)
    logits = np.exp(log_scale) * _unit(img) @ _unit(txt).T
    lse_rows = np.log(np.exp(logits).sum(1))
    lse_cols = np.log(np.exp(logits).sum(0))
    diag = np.diag(logits)
    expected = 0.5 * (np.mean(lse_rows - diag) + np.mean(lse_cols - diag))
    got = clip_loss(jnp.asarray(img, jnp.float32), jnp.asarray(txt, jnp.float32), jnp.float32(log_scale))
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    # Symmetric: swapping the image and text roles gives the same loss.
    np.testing.assert_allclose(clip_loss(jnp.asarray(txt, jnp.float32), jnp.asarray(img, jnp.float32),
                                         jnp.float32(log_scale)), expected, rtol=1e-5)


def test_clip_loss_temperature_matters_and_matched_pairs_win():
    img, _ = _embeddings()
    x = jnp.asarray(img, jnp.float32)
    perfect_hot, perfect_cold = clip_loss(x, x, jnp.log(100.0)), clip_loss(x, x, jnp.log(1.0))
    assert perfect_hot < perfect_cold
    shuffled = clip_loss(x, x[::-1], jnp.log(100.0))
    assert shuffled > perfect_hot


def test_siglip_loss_equals_float64_reference():
    img, txt = _embeddings(seed=1)
    log_scale, bias = np.log(10.0), -10.0
    logits = np.exp(log_scale) * _unit(img) @ _unit(txt).T + bias
    signs = 2 * np.eye(16) - 1
    expected = np.sum(np.log1p(np.exp(-signs * logits))) / 16
    got = siglip_loss(jnp.asarray(img, jnp.float32), jnp.asarray(txt, jnp.float32), jnp.float32(log_scale),
                      jnp.float32(bias))
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_chunked_siglip_across_8_devices_equals_the_global_loss():
    img, txt = _embeddings(seed=2)
    mesh = parallel.make_mesh({"dcn_data": 1, "data": 2, "fsdp": 4, "tensor": 1})
    sharding = parallel.batch_sharding(mesh)
    x = jax.device_put(jnp.asarray(img, jnp.float32), sharding)
    y = jax.device_put(jnp.asarray(txt, jnp.float32), sharding)
    args = (jnp.float32(np.log(10.0)), jnp.float32(-10.0))
    chunked = jax.jit(lambda a, b, s, c: siglip_loss_chunked(a, b, s, c, mesh))(x, y, *args)
    np.testing.assert_allclose(chunked, siglip_loss(jnp.asarray(img, jnp.float32), jnp.asarray(txt, jnp.float32),
                                                    *args), rtol=1e-5)
    # And its gradient flows to both towers and the temperature exactly as the global loss's.
    g_chunk = jax.grad(lambda a, b, s: siglip_loss_chunked(a, b, s, args[1], mesh), argnums=(0, 1, 2))(x, y, args[0])
    g_ref = jax.grad(lambda a, b, s: siglip_loss(a, b, s, args[1]), argnums=(0, 1, 2))(
        jnp.asarray(img, jnp.float32), jnp.asarray(txt, jnp.float32), args[0])
    for a, b in zip(g_chunk, g_ref):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
