"""The vision -> LLM connectors (`models.connectors`): shapes, token counts, exact parameter
counts from the architecture, pixel-unshuffle as an exact regrouping, Flamingo's gates starting
closed, image dependence, and logical axis names on every parameter. Tiny sizes, CPU float32."""

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from openvision2.models import connectors

B, D, LLM = 2, 8, 16  # batch, encoder width, LLM width
OPTIONS = {
    "mlp": {},
    "pixel_unshuffle": {},
    "perceiver": dict(num_latents=4, depth=2, width=8, heads=2, mlp_ratio=2),
    "qformer": dict(num_queries=3, depth=3, width=8, heads=2, mlp_ratio=2, cross_every=2),
}


def tokens(n, seed=0, width=D):
    return jax.random.normal(jax.random.key(seed), (B, n, width), jnp.float32)


def make(name, **extra):
    return connectors.build(name, llm_width=LLM, dtype=jnp.float32, param_dtype=jnp.float32,
                            **{**OPTIONS.get(name, {}), **extra})


def init(name, *args):
    model = make(name)
    return model, model.init(jax.random.key(1), *args)


def count(variables):
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nn.unbox(variables)))


def ln(n):
    return 2 * n  # scale + bias


def linear(i, o, bias=True):
    return i * o + (o if bias else 0)


def expected_params(name):
    d, m = D, LLM
    if name == "mlp":
        return d * m + m + m * m + m
    if name == "pixel_unshuffle":
        c = 4 * d
        return ln(c) + c * m + m + m * m + m
    if name == "perceiver":
        o = OPTIONS["perceiver"]
        w, h = o["width"], o["mlp_ratio"] * o["width"]
        layer = 3 * ln(w) + 4 * w * w + w * h + h * w  # ln_media/latents/mlp; q,k,v,o and MLP without biases
        return (linear(d, w) + o["num_latents"] * w + o["depth"] * layer + ln(w) + linear(w, m))
    if name == "qformer":
        o = OPTIONS["qformer"]
        w, h = o["width"], o["mlp_ratio"] * o["width"]
        self_attn = 4 * linear(w, w)
        cross = ln(w) + linear(w, w) + 2 * linear(d, w) + linear(w, w)  # keys/values read the D-wide image
        mlp = linear(w, h) + linear(h, w)
        crosses = len(range(0, o["depth"], o["cross_every"]))  # layers 0, 2 of 3
        assert crosses == 2
        return (ln(d) + o["num_queries"] * w + o["depth"] * (2 * ln(w) + self_attn + mlp) + crosses * cross
                + ln(w) + linear(w, m))
    raise AssertionError(name)


@pytest.mark.parametrize("name", ["mlp", "pixel_unshuffle", "perceiver", "qformer"])
def test_prefix_connectors_shapes_tokens_and_parameter_counts(name):
    n = 16  # a 4 x 4 grid
    model, variables = init(name, tokens(n))
    out = model.apply(variables, tokens(n))
    assert out.shape == (B, connectors.visual_tokens(name, n, **OPTIONS[name]), LLM)
    assert out.shape[1] == {"mlp": 16, "pixel_unshuffle": 4, "perceiver": 4, "qformer": 3}[name]
    assert bool(jnp.all(jnp.isfinite(out)))
    assert count(variables) == expected_params(name)


def test_hand_counts_at_these_sizes():
    # the formulas above, spelled out once, so a mistake in both code and formula shows up
    assert [expected_params(n) for n in ("mlp", "pixel_unshuffle", "perceiver", "qformer")] == [416, 864, 1384, 2608]


def test_gated_cross_attention_parameter_count():
    x, v = tokens(5, seed=3, width=LLM), tokens(7, seed=4)
    model, variables = init("xattn", x, v)
    hidden = 4 * LLM  # default mlp_ratio 4
    assert count(variables) == (2 + linear(D, LLM) + 2 * ln(LLM) + 4 * LLM * LLM + 2 * LLM * hidden)
    assert connectors.visual_tokens("xattn", 49) == 0


def test_pixel_unshuffle_is_an_exact_2x2_regrouping():
    h, c = 6, 3
    x = np.arange(B * h * h * c, dtype=np.float32).reshape(B, h * h, c)
    out = np.asarray(connectors.pixel_unshuffle(jnp.asarray(x), 2))
    ref = x.reshape(B, h // 2, 2, h // 2, 2, c).transpose(0, 1, 3, 2, 4, 5).reshape(B, (h // 2) ** 2, 4 * c)
    np.testing.assert_array_equal(out, ref)
    np.testing.assert_array_equal(np.sort(out.reshape(-1)), x.reshape(-1))  # a permutation of the values
    # coarse token (0, 1) of image 0 holds grid cells (0,2), (0,3), (1,2), (1,3), in that order
    grid = x[0].reshape(h, h, c)
    np.testing.assert_array_equal(out[0, 1], np.concatenate([grid[0, 2], grid[0, 3], grid[1, 2], grid[1, 3]]))
    assert connectors.pixel_unshuffle(jnp.asarray(x), 3).shape == (B, 4, 9 * c)


def test_pixel_unshuffle_errors():
    with pytest.raises(ValueError, match="not divisible by factor 2"):
        connectors.pixel_unshuffle(jnp.zeros((1, 25, 4)), 2)  # 5 x 5 grid
    with pytest.raises(ValueError, match="square"):
        connectors.pixel_unshuffle(jnp.zeros((1, 24, 4)), 2)
    with pytest.raises(ValueError, match="not divisible"):
        connectors.visual_tokens("pixel_unshuffle", 25)
    assert connectors.visual_tokens("pixel_unshuffle", 64) == 16


def test_gated_cross_attention_is_identity_at_init_then_reads_the_image():
    x, v1, v2 = tokens(5, seed=3, width=LLM), tokens(7, seed=4), tokens(7, seed=5)
    model, variables = init("xattn", x, v1)
    params = nn.unbox(variables)["params"]
    assert float(params["attn_gate"]) == 0.0 and float(params["ff_gate"]) == 0.0
    np.testing.assert_array_equal(np.asarray(model.apply(variables, x, v1)), np.asarray(x))
    opened = jax.tree.map(lambda p: p, variables)  # copy the structure
    opened["params"]["attn_gate"] = opened["params"]["attn_gate"].replace_boxed(jnp.float32(0.7))
    opened["params"]["ff_gate"] = opened["params"]["ff_gate"].replace_boxed(jnp.float32(-0.4))
    y1, y2 = model.apply(opened, x, v1), model.apply(opened, x, v2)
    assert y1.shape == x.shape
    assert float(jnp.max(jnp.abs(y1 - x))) > 1e-3
    assert float(jnp.max(jnp.abs(y1 - y2))) > 1e-3  # depends on the image tokens
    # only the FFN gate open: changes x, but not through the image
    ff_only = jax.tree.map(lambda p: p, variables)
    ff_only["params"]["ff_gate"] = ff_only["params"]["ff_gate"].replace_boxed(jnp.float32(0.5))
    z1, z2 = model.apply(ff_only, x, v1), model.apply(ff_only, x, v2)
    assert float(jnp.max(jnp.abs(z1 - x))) > 1e-3
    np.testing.assert_array_equal(np.asarray(z1), np.asarray(z2))


@pytest.mark.parametrize("name", ["perceiver", "qformer"])
def test_resamplers_read_the_image_and_their_count_ignores_n(name):
    model, variables = init(name, tokens(16))
    a, b = model.apply(variables, tokens(16, seed=0)), model.apply(variables, tokens(16, seed=7))
    assert float(jnp.max(jnp.abs(a - b))) > 1e-4
    big = model.apply(variables, tokens(36, seed=2))  # the same parameters on a 6 x 6 grid
    assert big.shape == a.shape
    assert connectors.visual_tokens(name, 36, **OPTIONS[name]) == connectors.visual_tokens(name, 16, **OPTIONS[name])


@pytest.mark.parametrize("name", connectors.NAMES)
def test_every_parameter_has_logical_axis_names(name):
    args = (tokens(5, width=LLM), tokens(16)) if name == "xattn" else (tokens(16),)
    _, variables = init(name, *args)
    leaves = jax.tree.leaves(variables, is_leaf=lambda x: isinstance(x, nn.Partitioned))
    assert leaves and all(isinstance(p, nn.Partitioned) for p in leaves)
    for p in leaves:
        assert len(p.names) == p.value.ndim
    is_spec = lambda x: isinstance(x, jax.sharding.PartitionSpec)  # noqa: E731
    specs = jax.tree.leaves(nn.get_partition_spec(variables), is_leaf=is_spec)
    assert len(specs) == len(leaves)
    named = {a for p in leaves for a in p.names if a is not None}
    assert named <= {"embed", "embed_out", "mlp", "heads", "kv", "norm"}


def test_build_rejects_unknown_names():
    choices = "'resampler'; choose one of mlp | pixel_unshuffle | perceiver | qformer | xattn"
    with pytest.raises(ValueError, match=re.escape(choices)):
        connectors.build("resampler", llm_width=LLM, dtype=jnp.float32, param_dtype=jnp.float32)
    with pytest.raises(ValueError, match="choose one of"):
        connectors.visual_tokens("linear", 16)
    assert connectors.visual_tokens("perceiver", 16) == 64 and connectors.visual_tokens("qformer", 16) == 32
