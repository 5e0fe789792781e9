"""The recipes beside OpenVision 2: each recipe's loss against a float64 reference computed
here from the model's own outputs, and the structural properties each one relies on."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from openvision2 import config as config_lib, recipes
from openvision2.config import validation
from openvision2.evals import heldout
from openvision2.models.mmgem import adaptive_avg_pool, roi_align
from openvision2.recipes.losses import ContrastiveLoss, clip_loss
from tests.test_models import build_model, ids_of, tiny_cfg

EOS, PAD = 2, 0  # the BERT tokenizer's ids in the tiny configs


# Tiny sizes for whichever of these keys a recipe has.
TINY = {"model.text_encoder": "mu,width=32,depth=2,heads=2", "model.embed_dim": 16, "coca.caption_queries": 4,
        "mmgem.pool_grid": 2, "mmgem.roi_grid": 2, "mmgem.soft_prompts": 3}


def _set(cfg, key, value, only_if_present=False):
    *parents, leaf = key.split(".")
    node = cfg
    for p in parents:
        if only_if_present and p not in node:
            return
        node = node[p]
    if not only_if_present or leaf in node:
        node[leaf] = value


def objective_cfg(objective, **extra):
    cfg = config_lib.set_recipe(tiny_cfg(), objective)
    cfg.keep_ratio = 1.0
    for k, v in TINY.items():
        _set(cfg, k, v, only_if_present=True)
    for k, v in extra.items():
        _set(cfg, k, v)
    return cfg


def make_batch(cfg, b=6, seed=0):
    """Random images, and captions of different lengths ending in [eos] then padding."""
    rng = np.random.default_rng(seed)
    batch = {"image": rng.integers(0, 256, (b, cfg.image_size, cfg.image_size, 3)).astype(np.uint8)}
    for key, (shape, _) in recipes.get(cfg.objective).batch_spec(cfg, b).items():
        if key in ("image", "bad_records"):
            continue
        shape = shape[1:]
        if key == "box":
            lo = rng.uniform(0, 0.5, (b, 2))
            batch[key] = np.concatenate([lo, lo + rng.uniform(0.2, 0.5, (b, 2))], 1).astype(np.float32)
            continue
        text = np.full((b, shape[0]), PAD, np.int32)
        for i in range(b):
            n = 1 + (i % (shape[0] - 2))
            text[i, 0] = 1
            text[i, 1:1 + n] = rng.integers(3, cfg.model.vocab_size, n)
            text[i, 1 + n] = EOS
        batch[key] = text
    return {k: jnp.asarray(v) for k, v in batch.items()}


def params_of(cfg, seed=0):
    model = build_model(cfg)
    recipe = recipes.get(cfg.objective)
    return model, jax.jit(lambda k: nn.unbox(recipe.init_params(model, cfg, k)))(jax.random.key(seed))


def ref_infonce(img, txt, log_scale, positives=None):
    img = np.asarray(img, np.float64)
    txt = np.asarray(txt, np.float64)
    img /= np.linalg.norm(img, axis=1, keepdims=True)
    txt /= np.linalg.norm(txt, axis=1, keepdims=True)
    logits = np.exp(float(log_scale)) * img @ txt.T
    pos = np.eye(len(img)) if positives is None else np.asarray(positives, np.float64)
    log_rows = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    log_cols = logits - np.log(np.exp(logits).sum(0, keepdims=True))
    i2t = -(pos / pos.sum(1, keepdims=True) * log_rows).sum(1).mean()
    t2i = -(pos / pos.sum(0, keepdims=True) * log_cols).sum(0).mean()
    return 0.5 * (i2t + t2i)


def ref_sigmoid(img, txt, log_scale, bias):
    img = np.asarray(img, np.float64) / np.linalg.norm(img, axis=1, keepdims=True)
    txt = np.asarray(txt, np.float64) / np.linalg.norm(txt, axis=1, keepdims=True)
    logits = np.exp(float(log_scale)) * img @ txt.T + float(bias)
    signs = 2 * np.eye(len(img)) - 1
    return np.sum(np.log1p(np.exp(-signs * logits))) / len(img)


def ref_caption(logits, text):
    """Token-weighted mean CE of `logits` [B, T, V] predicting text[:, 1:], in float64."""
    logits = np.asarray(logits, np.float64)
    targets = np.asarray(text)[:, 1:]
    w = targets != PAD
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    nll = -np.take_along_axis(logp, targets[..., None], -1)[..., 0]
    return (nll * w).sum() / w.sum()


def objective_of(cfg):
    return recipes.get(cfg.objective).objective(cfg, ids_of(cfg))


def loss_value(cfg, model, params, batch):
    obj = objective_of(cfg)
    numerator, sums = jax.jit(lambda p, b: obj.loss(model, p, obj.prepare(b, 0)))(params, batch)
    return float(numerator / jnp.maximum(sums["count"], 1.0)), sums


def run(model, params, *args, method=None):
    """`model.apply` compiled (eager flax runs op by op, which is slow on a CPU)."""
    return jax.jit(lambda p, *a: model.apply({"params": p}, *a, method=method))(params, *args)


@pytest.mark.parametrize("objective", ["clip", "siglip"])
def test_two_tower_loss_equals_float64_reference(objective):
    cfg = objective_cfg(objective)
    model, params = params_of(cfg)
    batch = make_batch(cfg)
    got, sums = loss_value(cfg, model, params, batch)
    out = run(model, params, batch["image"], batch["text_con"])
    log_scale, bias = out["scale_and_bias"]
    if objective == "clip":
        assert bias is None
        np.testing.assert_allclose(float(log_scale), np.log(1 / 0.07), rtol=1e-6)
        expected = ref_infonce(out["image_embedding"], out["text_embedding"], log_scale)
    else:
        np.testing.assert_allclose([float(log_scale), float(bias)], [np.log(10.0), -10.0], rtol=1e-6)
        expected = ref_sigmoid(out["image_embedding"], out["text_embedding"], log_scale, bias)
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    assert "correct" not in sums and set(sums["scalars"]) >= {"contrastive_loss", "temperature"}


def test_openvision_v1_is_contrastive_plus_twice_the_caption_loss():
    cfg = objective_cfg("openvision")
    assert cfg.caption_loss_weight == 2.0 and cfg.contrastive.weight == 1.0
    model, params = params_of(cfg)
    batch = make_batch(cfg)
    got, sums = loss_value(cfg, model, params, batch)
    enc = run(model, params, batch["image"], method=model.encode)
    logits = run(model, params, batch["image"], batch["text"][:, :-1])["logits"]
    img = run(model, params, enc["pooled"], method=model.embed_pooled)
    txt = run(model, params, batch["text_con"], method=model.embed_texts)
    con = ref_infonce(img, txt, params["head"]["log_scale"])
    cap = ref_caption(logits, batch["text"])
    np.testing.assert_allclose(got, con + 2.0 * cap, rtol=1e-5)
    np.testing.assert_allclose(float(sums["scalars"]["caption_loss"]), cap, rtol=1e-5)


def test_coca_loss_and_its_split_decoder():
    cfg = objective_cfg("coca", **{"model.decoder": "mu,width=32,depth=2,heads=4"})
    model, params = params_of(cfg)
    batch = make_batch(cfg)
    got, _ = loss_value(cfg, model, params, batch)
    out = run(model, params, batch["image"], batch["text"])
    expected = ref_infonce(out["image_embedding"], out["text_embedding"], params["head"]["log_scale"])
    expected += 2.0 * ref_caption(out["logits"], batch["text"])
    np.testing.assert_allclose(got, expected, rtol=1e-5)

    # The text embedding (CLS in the [eos] slot of the unimodal half) reads the caption only:
    # not the image, not the padding after [eos].
    other = run(model, params, batch["image"][::-1], batch["text"])
    np.testing.assert_allclose(other["text_embedding"], out["text_embedding"], atol=1e-6)
    noisy = jnp.where(batch["text"] == PAD, 7, batch["text"])
    emb = run(model, params, noisy, method=model.embed_texts)
    np.testing.assert_allclose(emb, out["text_embedding"], atol=1e-5)
    # The caption logits do see the image (multimodal half), and are causal.
    assert np.abs(np.asarray(other["logits"] - out["logits"])).max() > 1e-4
    changed = batch["text"].at[:, 3].set(5)
    late = run(model, params, batch["image"], changed)["logits"]
    np.testing.assert_allclose(late[:, :3], out["logits"][:, :3], atol=1e-5)


def test_mmgem_one_decoder_embeds_and_captions():
    cfg = objective_cfg("mmgem")
    model, params = params_of(cfg)
    batch = make_batch(cfg)
    got, _ = loss_value(cfg, model, params, batch)
    out = run(model, params, batch["image"], batch["text"][:, :-1])
    txt = run(model, params, batch["text"], method=model.embed_texts)
    expected = ref_infonce(out["image_embedding"], txt, params["log_scale"])
    expected += cfg.caption_loss_weight * ref_caption(out["logits"], batch["text"])
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    # One decoder: the [EMB] text embedding and the captions share every decoder weight.
    assert "decoder" in params and not {"text_encoder", "head"} & set(params)
    noisy = jnp.where(batch["text"] == PAD, 9, batch["text"])
    np.testing.assert_allclose(run(model, params, noisy, method=model.embed_texts), txt, atol=1e-5)


def test_mmgem_region_stage_losses_and_identity_h4():
    cfg = objective_cfg("mmgem", **{"mmgem.region_task": "both"})
    model, params = params_of(cfg)
    np.testing.assert_array_equal(params["h4"]["kernel"], np.eye(16))
    batch = make_batch(cfg)
    # Two regions with one caption: both count as positives of each other.
    batch["region_text"] = batch["region_text"].at[1].set(batch["region_text"][0])
    got, _ = loss_value(cfg, model, params, batch)

    def parts(module, images, boxes, text):
        tokens = module.vision_tokens(module.feature_grid(images), boxes)
        logits = module.decode_text(*module.context(tokens, region=True), text[:, :-1])
        return logits, module.embed_vision(tokens, region=True), module.embed_vision(tokens), module.embed_texts(text)

    logits, region_emb, plain_emb, txt = run(model, params, batch["image"], batch["box"],
                                                     batch["region_text"], method=parts)
    np.testing.assert_allclose(region_emb, plain_emb, atol=1e-6)  # h4 starts as the identity
    rt = np.asarray(batch["region_text"])
    same = (rt[:, None, :] == rt[None, :, :]).all(-1)
    assert same.sum() == len(rt) + 2
    expected = ref_infonce(region_emb, txt, params["log_scale"], same) + cfg.caption_loss_weight * ref_caption(logits, rt)
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    # Only what the region stage trains gets a gradient from the region losses' own paths.
    obj = objective_of(cfg)
    grads = jax.jit(jax.grad(lambda p: obj.loss(model, p, batch)[0]))(params)
    assert float(jnp.abs(grads["h4"]["kernel"]).sum()) > 0 and float(jnp.abs(grads["soft_prompt"]).sum()) > 0


def test_multi_positive_infonce_reduces_to_the_plain_loss_with_the_diagonal():
    rng = np.random.default_rng(3)
    img, txt = rng.normal(size=(5, 4)), rng.normal(size=(5, 4))
    f = lambda x: jnp.asarray(x, jnp.float32)
    plain = clip_loss(f(img), f(txt), jnp.float32(2.0))
    np.testing.assert_allclose(clip_loss(f(img), f(txt), jnp.float32(2.0), positives=jnp.eye(5, dtype=bool)), plain,
                               rtol=1e-6)
    pos = np.eye(5, dtype=bool)
    pos[0, 3] = pos[3, 0] = True
    np.testing.assert_allclose(clip_loss(f(img), f(txt), jnp.float32(2.0), positives=jnp.asarray(pos)),
                               ref_infonce(img, txt, 2.0, pos), rtol=1e-5)


def test_temperature_is_clamped_at_its_floor():
    cfg = objective_cfg("clip")
    loss = objective_of(cfg).contrastive
    assert isinstance(loss, ContrastiveLoss) and loss.kind == "softmax"
    rng = np.random.default_rng(4)
    img, txt = jnp.asarray(rng.normal(size=(4, 8)), jnp.float32), jnp.asarray(rng.normal(size=(4, 8)), jnp.float32)
    value, scalars = loss(img, txt, jnp.float32(np.log(1e4)))
    np.testing.assert_allclose(float(scalars["temperature"]), 0.01, rtol=1e-5)
    np.testing.assert_allclose(value, ref_infonce(img, txt, np.log(100.0)), rtol=1e-5)
    # Above the floor the gradient reaches the temperature; at the clamp it stops.
    g = jax.grad(lambda s: loss(img, txt, s)[0])
    assert abs(float(g(jnp.float32(1.0)))) > 0 and float(g(jnp.float32(np.log(1e4)))) == 0.0


def test_sigmoid_loss_in_the_sharded_step_is_ring_chunked_and_exact():
    cfg = objective_cfg("siglip")
    from openvision2 import parallel
    mesh = parallel.make_mesh({"dcn_data": 1, "data": 2, "fsdp": 4, "tensor": 1})
    rng = np.random.default_rng(5)
    img, txt = rng.normal(size=(16, 8)), rng.normal(size=(16, 8))
    x, y = (jax.device_put(jnp.asarray(a, jnp.float32), parallel.batch_sharding(mesh)) for a in (img, txt))
    loss = objective_of(cfg).contrastive  # SigLIP's own loss: sigmoid, chunked
    assert loss.kind == "sigmoid"
    with jax.set_mesh(mesh):
        lowered = jax.jit(lambda a, b: loss(a, b, jnp.float32(np.log(10.0)), jnp.float32(-10.0))[0]).lower(x, y)
        value = lowered.compile()(x, y)
    assert "collective-permute" in lowered.as_text(dialect="hlo")  # texts travel round the ring
    np.testing.assert_allclose(value, ref_sigmoid(img, txt, np.log(10.0), -10.0), rtol=1e-5)


def test_roi_align_matches_torchvision_and_pooling_matches_torch():
    torch = pytest.importorskip("torch")
    ops = pytest.importorskip("torchvision.ops")
    rng = np.random.default_rng(6)
    grid = rng.normal(size=(3, 6, 5, 4)).astype(np.float32)
    boxes = np.array([[0.1, 0.2, 0.7, 0.9], [0, 0, 1, 1], [-0.1, 0.5, 0.4, 1.1]], np.float32)  # one off the edge
    rois = torch.tensor([[i, b[0] * 5, b[1] * 6, b[2] * 5, b[3] * 6] for i, b in enumerate(boxes)])
    expected = ops.roi_align(torch.from_numpy(grid).permute(0, 3, 1, 2), rois, output_size=3, spatial_scale=1.0,
                             sampling_ratio=2, aligned=True).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(roi_align(jnp.asarray(grid), jnp.asarray(boxes), 3, 2), expected, atol=1e-5)
    pooled = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(grid).permute(0, 3, 1, 2), 3)
    np.testing.assert_allclose(adaptive_avg_pool(jnp.asarray(grid), 3), pooled.permute(0, 2, 3, 1).numpy(), atol=1e-6)


def test_retrieval_metrics_on_hand_built_embeddings():
    # Five distinct captions, one repeated (rows 0 and 5 share caption A: only the first pair counts).
    tokens = np.array([[1, 10], [1, 11], [1, 12], [1, 13], [1, 14], [1, 10]])
    txt = np.eye(5)[[0, 1, 2, 3, 4, 0]]
    img = txt.copy()
    img[2] = 1.2 * txt[3] + 0.1 * txt[2]  # image 2 looks most like caption 3, then its own
    out = heldout.pair_retrieval(img, txt, tokens)
    assert out["retrieval_pairs"] == 5
    assert out["i2t_top1"] == pytest.approx(4 / 5) and out["i2t_top5"] == 1.0
    # Text 3 now finds image 2 first; text 2 still finds image 2.
    assert out["t2i_top1"] == pytest.approx(4 / 5)
    regions = heldout.class_retrieval(img, txt, tokens)  # every row against the 5 distinct captions
    assert regions["retrieval_captions"] == 5 and regions["i2t_top1"] == pytest.approx(5 / 6)


def test_contrastive_recipes_refuse_gradient_accumulation_and_masking_they_do_not_do():
    cfg = objective_cfg("clip")
    cfg.grad_accum_steps = 2
    cfg.batch_size = 8
    with pytest.raises(ValueError, match="grad_accum_steps"):
        validation.validate(cfg, 1)
    for objective in ("clip", "siglip", "coca", "mmgem"):
        with pytest.raises(ValueError, match="keep_ratio=1.0"):
            validation.validate(objective_cfg(objective, keep_ratio=0.35), 1)
    validation.validate(objective_cfg("openvision", keep_ratio=0.35), 1)  # v1's captioner can mask


@pytest.mark.slow
def test_mmgem_region_stage_adds_h4_and_soft_prompts_trains_only_them_and_resumes(tmp_path):
    from openvision2 import train
    from openvision2.train import checkpoint
    from tests.test_train import deterministic, read_metrics, tiny_train_cfg

    def cfg_fn():
        cfg = config_lib.set_recipe(tiny_train_cfg(tmp_path / "data"), "mmgem")
        cfg.keep_ratio = 1.0
        cfg.model.embed_dim = 16
        cfg.mmgem.update(pool_grid=2, roi_grid=2, soft_prompts=2)
        config_lib.set_stages(
            cfg, image=config_lib.stage(3),
            regions=config_lib.stage(3, mmgem={"region_task": "both"},
                                     optim={"warmup_steps": 1, "trainable": "^(h3|h4|soft_prompt)"}))
        return cfg

    full = str(tmp_path / "full")
    train.train(cfg_fn(), full)
    before, _ = checkpoint.restore_params(full, 3)
    after, _ = checkpoint.restore_params(full, 6)
    assert "h4" not in before and "soft_prompt" not in before
    assert not np.allclose(after["h4"]["kernel"], np.eye(16))  # started at the identity, then trained
    for frozen in ("encoder", "decoder", "h1", "h2", "emb_token", "cap_token", "log_scale"):
        for x, y in zip(jax.tree.leaves(before[frozen]), jax.tree.leaves(after[frozen])):
            np.testing.assert_array_equal(x, y)
    assert not np.allclose(before["h3"]["kernel"], after["h3"]["kernel"])
    rows = read_metrics(full)
    last = [r for r in rows if "eval/region_caption_exact_match" in r]
    assert [r["step"] for r in last] == [6] and "eval/region_i2t_top1" in last[0] and "eval/i2t_top5" in last[0]
    assert [r["step"] for r in rows if "eval/i2t_top1" in r] == [3, 6]

    resumed = str(tmp_path / "resumed")
    train.train(cfg_fn(), resumed, stop_after_steps=3)
    train.train(cfg_fn(), resumed, stop_after_steps=1)
    train.train(cfg_fn(), resumed)
    a, b = deterministic(rows), deterministic(read_metrics(resumed))
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for ra, rb in zip(a, b):
        for k in ra:
            if not isinstance(ra[k], str):
                np.testing.assert_allclose(rb[k], ra[k], rtol=1e-5, err_msg=f"{k} at step {ra['step']}")
