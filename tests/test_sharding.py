"""The same train step gives the same numbers on any mesh (8 fake CPU devices)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from openvision2 import parallel, recipes
from openvision2.config import validation
from openvision2.train.state import Training
from tests.test_models import ids_of, tiny_cfg


def _cfg(**mesh):
    cfg = tiny_cfg(decoder="mu,width=32,depth=2,heads=4,mlp_dim=64", vocab_size=48)
    cfg.model.encoder = "mu/8,width=32,depth=2,heads=2,mlp_dim=64"
    cfg.batch_size = 16
    cfg.keep_ratio = 0.5
    cfg.total_steps = 10
    cfg.optim.warmup_steps = 2
    cfg.optim.lr = 1e-2
    for axis in ("dcn_data", "data", "fsdp", "tensor"):
        cfg.mesh[axis] = mesh.get(axis, 1)
    return cfg


def _batch():
    rng = np.random.default_rng(0)
    text = rng.integers(3, 48, size=(16, 8)).astype(np.int32)
    text[:, 0] = 1
    lengths = rng.integers(2, 8, size=16)
    for i, n in enumerate(lengths):
        text[i, n] = 2
        text[i, n + 1:] = 0
    return {"image": rng.integers(0, 256, size=(16, 32, 32, 3)).astype(np.uint8), "text": text,
            "bad_records": np.zeros(16, np.int32)}


def _run(cfg, devices, steps=2):
    shape = validation.validate(cfg, len(devices))
    mesh = parallel.make_mesh(shape, devices)
    rules = parallel.logical_rules(cfg)
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        t = Training(cfg, recipes.get(cfg.objective), ids_of(cfg), mesh, rules)
        state = t.init(jax.random.key(0))
        losses = []
        for _ in range(steps):
            batch = parallel.to_global(mesh, _batch(), cfg.batch_size)
            state, metrics = t.train_step(state, batch)
            losses.append(float(metrics["train/loss"]))
        sharding_of = jax.tree.map(lambda x: x.sharding.spec, state["params"])
        return losses, jax.device_get(state["params"]), sharding_of


@pytest.fixture(scope="module")
def single_device():
    return _run(_cfg(), jax.devices()[:1])


@pytest.mark.parametrize("mesh", [dict(data=8), dict(fsdp=8), dict(data=2, fsdp=2, tensor=2),
                                  dict(dcn_data=2, fsdp=2, tensor=2)],
                         ids=["data8", "fsdp8", "data2-fsdp2-tensor2", "dcn2-fsdp2-tensor2"])
def test_same_loss_and_params_on_every_mesh(single_device, mesh):
    assert len(jax.devices()) == 8
    ref_losses, ref_params, _ = single_device
    losses, params, specs = _run(_cfg(**mesh), jax.devices())
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5, atol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5), params, ref_params)
    if mesh.get("fsdp", 1) > 1:  # parameters really are sharded, not replicated
        assert "fsdp" in str(specs["encoder"]["blocks"]["fc1"]["kernel"])
    if mesh.get("tensor", 1) > 1:
        assert "tensor" in str(specs["decoder"]["blocks"]["gate"]["kernel"])


@pytest.mark.parametrize("preset,sharded", [("dp", None), ("fsdp", "fsdp")])
def test_rule_presets_pin_parameter_sharding_and_keep_the_maths(single_device, preset, sharded):
    ref_losses, ref_params, _ = single_device
    cfg = _cfg(fsdp=4, tensor=2)
    cfg.sharding_rules = preset
    losses, params, specs = _run(cfg, jax.devices())
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5, atol=1e-5)
    spec = str(specs["decoder"]["blocks"]["gate"]["kernel"])
    assert "tensor" not in spec
    assert (sharded in spec) if sharded else ("fsdp" not in spec)


def test_gradient_accumulation_changes_nothing(single_device):
    """Four token-weighted micro-batches give the single-step loss and update (masking on)."""
    ref_losses, ref_params, _ = single_device
    cfg = _cfg()
    cfg.grad_accum_steps = 4
    losses, params, _ = _run(cfg, jax.devices()[:1])
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5, atol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5), params, ref_params)


@pytest.mark.parametrize("mesh,batch,fix", [
    (dict(data=3), 16, "available"),
    (dict(data=8), 12, "batch_size=12 is not divisible by dcn_data x data x fsdp = 8"),
    (dict(data=2, tensor=4), 16, "encoder heads=2 is not divisible by mesh.tensor=4"),
    (dict(fsdp=-1, data=-1), 16, "Only one mesh axis may be -1"),
])
def test_config_that_does_not_fit_fails_fast_naming_the_fix(mesh, batch, fix):
    cfg = _cfg(**mesh)
    cfg.batch_size = batch
    with pytest.raises(ValueError, match=fix):
        validation.validate(cfg, 8)


def test_free_axis_absorbs_remaining_devices():
    cfg = _cfg(data=-1, tensor=2)
    cfg.model.encoder = "mu/8,width=32,depth=2,heads=2,mlp_dim=64"
    assert validation.validate(cfg, 8) == {"dcn_data": 1, "data": 4, "fsdp": 1, "tensor": 2}


def test_host_batch_slice_covers_the_global_batch():
    mesh = parallel.make_mesh({"dcn_data": 1, "data": 2, "fsdp": 4, "tensor": 1})
    assert parallel.host_batch_slice(mesh, 64) == (0, 64)  # one process owns every row
