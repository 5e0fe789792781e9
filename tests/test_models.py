"""Encoder, decoder and captioner: shapes, sizes, positions and the KV cache."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from openvision2 import config as config_lib, recipes, sizes
from openvision2.data.tokenizer import get_tokenizer
from openvision2.models import layers, vit
from openvision2.models.decoder import Decoder


def tiny_cfg(**model):
    cfg = config_lib.base_config()
    cfg.image_size = 32
    cfg.text.max_len = 8
    cfg.model.encoder = "mu/8,width=32,depth=2,heads=2"
    cfg.model.decoder = "mu,width=32,depth=2,heads=4"
    cfg.model.vocab_size = 48
    for k, v in model.items():
        cfg.model[k] = v
    return cfg


def ids_of(cfg) -> recipes.SpecialIds:
    return recipes.SpecialIds.of(get_tokenizer(cfg.text.vocab))


def build_model(cfg, mode="train"):
    """The model `cfg`'s recipe trains, with its tokenizer's special ids."""
    return recipes.get(cfg.objective).build_model(cfg, ids_of(cfg), mode)


def init(model, cfg, seed=0):
    images = jnp.zeros((1, cfg.image_size, cfg.image_size, 3), jnp.uint8)
    return nn.unbox(model.init(jax.random.key(seed), images, jnp.zeros((1, cfg.text.max_len - 1), jnp.int32)))["params"]


@pytest.mark.parametrize("variant,expected", [
    ("Ti/16", 5_486_400), ("B/16", 85_646_592), ("L/14", 302_914_560), ("So400m/14", 412_147_440),
    ("g/14", 1_010_839_168)])
def test_encoder_parameter_counts_match_table(variant, expected):
    size = sizes.encoder_size(variant)
    # Closed form for the pre-LN ViT without CLS / learned posemb / head.
    w, d, m, p = size.width, size.depth, size.mlp_dim, size.patch
    closed = p * p * 3 * w + w + d * (4 * w * w + 4 * w + 2 * w * m + m + w + 4 * w) + 2 * w
    assert closed == expected
    assert vit.count_params(vit.ViT(size), jnp.zeros((1, 224, 224, 3))) == expected


def test_openvision2_L_decoder_matches_published_size():
    cfg = config_lib.base_config()  # L/14 + L decoder
    model = build_model(cfg)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 224, 224, 3), jnp.uint8),
                                               jnp.zeros((1, 127), jnp.int32)))
    counts = {k: sum(x.size for x in jax.tree.leaves(v)) for k, v in nn.unbox(shapes)["params"].items()}
    assert abs(counts["encoder"] / 303e6 - 1) < 0.01
    assert abs((counts["decoder"] + counts["projector"]) / 135e6 - 1) < 0.01


def test_variant_strings_parse_and_reject():
    assert sizes.encoder_size("L/14") == sizes.EncoderSize(1024, 24, 4096, 16, 14)
    assert sizes.encoder_size("mu/8,width=64").width == 64
    assert sizes.decoder_size("L").width == 768
    for bad in ("L", "Q/14", "L/14,foo=1"):
        with pytest.raises(ValueError):
            sizes.encoder_size(bad)
    assert sizes.encoder_variant(1024, 24, 4096, 16, 14) == "L/14"
    assert sizes.encoder_size(sizes.encoder_variant(48, 3, 96, 4, 8)) == sizes.EncoderSize(48, 3, 96, 4, 8)


@pytest.mark.parametrize("cls_token,pool", [(False, "gap"), (False, "map"), (True, "none"), (False, "none")])
def test_encoder_output_shapes(cls_token, pool):
    size = sizes.encoder_size("mu/8,width=32,heads=2")
    model = vit.ViT(size, cls_token=cls_token, pool=pool)
    x = jnp.ones((2, 32, 32, 3))
    out, params = model.init_with_output(jax.random.key(0), x)
    n = 16 + int(cls_token)
    assert out["tokens"].shape == (2, n, 32) and out["prenorm"].shape == (2, n, 32)
    assert out["pooled"].shape == (2, 32)
    assert ("map_head" in params["params"]) == (pool == "map")


def test_every_parameter_has_logical_axes():
    cfg = tiny_cfg(pool="map", posemb="learned")
    model = build_model(cfg)
    boxed = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3), jnp.uint8),
                                              jnp.zeros((1, 7), jnp.int32)))["params"]
    leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
    assert leaves and all(isinstance(x, nn.LogicallyPartitioned) for x in leaves)
    assert all(len(x.names) == len(x.value.shape) for x in leaves)


def test_sincos_posemb_recomputed_for_any_grid():
    a, b = layers.posemb_sincos_2d(4, 4, 32), layers.posemb_sincos_2d(7, 7, 32)
    assert a.shape == (16, 32) and b.shape == (49, 32)
    np.testing.assert_allclose(a[0], b[0])  # the origin embeds identically at every resolution
    dist = np.linalg.norm(b[:, None] - b[None], axis=-1) + np.eye(49) * 1e9
    assert dist.min() > 0.1  # every grid position gets a distinct embedding


def test_scan_and_unrolled_layers_compute_the_same_function():
    cfg = tiny_cfg()
    images = jax.random.randint(jax.random.key(1), (2, 32, 32, 3), 0, 255).astype(jnp.uint8)
    text = jax.random.randint(jax.random.key(2), (2, 7), 0, 48)
    scanned = build_model(cfg)
    params = init(scanned, cfg)
    cfg_u = tiny_cfg(scan_layers=False)
    unrolled = build_model(cfg_u)
    # Unstack the scanned layer axis into per-layer params.
    up = jax.tree.map(lambda x: x, params)
    for part in ("encoder", "decoder"):
        blocks = up[part].pop("blocks")
        prefix = "block"
        for i in range(2):
            up[part][f"{prefix}_{i}"] = jax.tree.map(lambda x: x[i], blocks)
    a = scanned.apply({"params": params}, images, text)["logits"]
    b = unrolled.apply({"params": up}, images, text)["logits"]
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_masked_tokens_keep_their_rope_positions():
    """Dropping tokens must not shift the positions the kept ones are seen at:
    with keep_idx = all tokens, masking is the identity; with a subset, the
    result equals running the decoder on exactly that subset at those positions."""
    cfg = tiny_cfg()
    model = build_model(cfg)
    params = init(model, cfg)
    images = jax.random.randint(jax.random.key(3), (2, 32, 32, 3), 0, 255).astype(jnp.uint8)
    text = jax.random.randint(jax.random.key(4), (2, 7), 3, 48)
    full = model.apply({"params": params}, images, text)["logits"]
    all_idx = jnp.broadcast_to(jnp.arange(16), (2, 16))
    np.testing.assert_allclose(model.apply({"params": params}, images, text, all_idx)["logits"], full, atol=1e-5)

    keep = jnp.array([[0, 3, 9, 15], [1, 2, 4, 8]])
    masked = model.apply({"params": params}, images, text, keep)["logits"]
    enc = model.apply({"params": params}, images, method=model.encode)["prenorm"]
    kept_tokens = jnp.take_along_axis(enc, keep[..., None], axis=1)

    def manual(m):
        prefix = m.projector(kept_tokens)
        x = jnp.concatenate([prefix, m.decoder.embed_tokens(text)], axis=1)
        pos = jnp.concatenate([keep, 16 + jnp.broadcast_to(jnp.arange(7), (2, 7))], axis=1)
        return m.decoder(x, pos)[0][:, 4:]

    np.testing.assert_allclose(masked, model.apply({"params": params}, method=manual), atol=1e-5)
    # and positions matter: shifting the text start changes the output
    assert not np.allclose(masked, full, atol=1e-3)


def test_greedy_with_kv_cache_equals_teacher_forced_argmax():
    cfg = tiny_cfg(kv_heads=2)
    model = build_model(cfg)
    params = init(model, cfg, seed=5)
    images = jax.random.randint(jax.random.key(6), (3, 32, 32, 3), 0, 255).astype(jnp.uint8)
    tokens = recipes.get(cfg.objective).greedy_fn(cfg, ids_of(cfg), 7)(params, images)
    assert tokens.shape == (3, 7)
    # Re-derive each token by a full uncached forward pass over the generated prefix.
    seq = jnp.concatenate([jnp.ones((3, 1), jnp.int32), tokens], axis=1)
    logits = model.apply({"params": params}, images, seq[:, :-1])["logits"]
    expected = jnp.argmax(logits, axis=-1)
    done = jnp.cumsum(seq[:, :-1] == 2, axis=1) > 0  # positions after an eos are padded, not generated
    np.testing.assert_array_equal(np.where(done, 0, expected), tokens)


def test_grouped_query_attention_and_tied_embeddings_shapes():
    dec = Decoder(sizes.decoder_size("mu,width=32,heads=4"), vocab_size=40, kv_heads=1, tie_embeddings=True)
    x = jnp.ones((2, 5, 32))
    (logits, _), params = dec.init_with_output(jax.random.key(0), x, jnp.broadcast_to(jnp.arange(5), (2, 5)))
    p = nn.unbox(params)["params"]
    assert logits.shape == (2, 5, 40)
    assert p["blocks"]["k"]["kernel"].shape == (1, 32, 8)  # one 8-wide kv head
    assert "lm_head" not in p


def test_several_tokens_decoded_at_once_against_a_cache_attend_causally():
    """Decode mode with t > 1 new tokens (a prefix cached once, then a whole continuation) gives the
    logits of one uncached forward pass over prefix + continuation."""
    from openvision2.models.decoder import pad_cache

    size = sizes.decoder_size("mu,width=32,depth=2,heads=4")
    kw = dict(vocab_size=40, kv_heads=2)
    full = Decoder(size, mode="train", **kw)
    x = jax.random.normal(jax.random.key(0), (2, 9, 32))
    pos = jnp.broadcast_to(jnp.arange(9), (2, 9))
    params = full.init(jax.random.key(1), x, pos)["params"]
    want, _ = full.apply({"params": params}, x, pos)
    _, cache = Decoder(size, mode="prefill", **kw).apply({"params": params}, x[:, :5], pos[:, :5])
    got, _ = Decoder(size, mode="decode", **kw).apply({"params": params}, x[:, 5:], pos[:, 5:], pad_cache(cache, 9), 5)
    np.testing.assert_allclose(got, want[:, 5:], rtol=1e-5, atol=1e-5)
