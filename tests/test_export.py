"""Export to HF SigLIP / timm / HF LLaVA and import back: the other library computes our function."""

import functools
import importlib
import json
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from PIL import Image

from openvision2 import export, train
from openvision2.convert import init as convert_init, llava, table
from openvision2.data import preprocess, shapes
from openvision2.data.tokenizer import get_tokenizer
from openvision2.models.vit import PIXEL_NORMS, normalize
from tests.test_models import build_model, tiny_cfg
from tests.test_train import tiny_train_cfg


def need(module: str, attr: str | None = None):
    """Imports or skips; broken installs (a CUDA torchvision beside CPU torch) raise RuntimeError, not ImportError."""
    try:
        mod = importlib.import_module(module)
        return getattr(mod, attr) if attr else mod
    except Exception as e:
        pytest.skip(f"{module}{'.' + attr if attr else ''} unusable ({type(e).__name__}: {str(e)[:120]}); "
                    "install the test extra: pip install -e '.[test]'")


def model_cfg(**model):
    cfg = tiny_cfg(**model)
    cfg.model.vocab_size = 32
    cfg.text.vocab = "shapes"
    return cfg


def random_params(cfg, seed=0):
    """Initialised params plus noise, so zero-initialised biases and unit LayerNorm scales are
    distinguishable and a mapping error in any tensor changes the function."""
    return _random_params(cfg.to_json(sort_keys=True), seed)


@functools.lru_cache(maxsize=None)
def _random_params(cfg_json, seed):
    cfg = ml_collections.ConfigDict(json.loads(cfg_json))
    model = build_model(cfg)
    params = nn.unbox(model.init(jax.random.key(seed), jnp.zeros((1, cfg.image_size, cfg.image_size, 3), jnp.uint8),
                                 jnp.zeros((1, 3), jnp.int32)))["params"]
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
    return jax.tree.unflatten(treedef, [np.asarray(x + 0.05 * jax.random.normal(k, x.shape)) for x, k in zip(leaves, keys)])


def our_encoder(params, cfg, images_uint8):
    out = build_model(cfg).encoder.apply({"params": params["encoder"]}, normalize(images_uint8, cfg.model.pixel_norm))
    return {k: np.asarray(v) for k, v in out.items()}


def images(n, size, seed=7):
    rng = np.random.default_rng(seed)
    return np.stack([shapes.render(rng, size, int(rng.integers(1, 4)))[0] for _ in range(n)])


def nchw(images_uint8, norm="imagenet"):
    torch = need("torch")
    return torch.from_numpy(np.array(normalize(images_uint8, norm))).permute(0, 3, 1, 2).contiguous()


@pytest.mark.parametrize("pool", ["gap", "map"])
def test_hf_export_is_our_encoder(tmp_path, pool):
    auto_model = need("transformers", "AutoModel")
    torch = need("torch")
    cfg = model_cfg(pool=pool)
    params = random_params(cfg)
    export.write(params, cfg, str(tmp_path), "hf", step=5)
    from safetensors import safe_open
    with safe_open(str(tmp_path / "model.safetensors"), "np") as f:
        assert all(k.startswith("vision_model.") for k in f.keys())  # transformers 4.57 needs the prefix
        assert any(k.startswith("vision_model.head.") for k in f.keys()) == (pool == "map")
    model = auto_model.from_pretrained(str(tmp_path)).eval()
    assert type(model).__name__ == "SiglipVisionModel"
    x = images(3, cfg.image_size)
    ours = our_encoder(params, cfg, x)
    with torch.no_grad():
        out = model(pixel_values=nchw(x, cfg.model.pixel_norm), output_hidden_states=True)
    np.testing.assert_allclose(out.last_hidden_state.numpy(), ours["tokens"], atol=1e-4)
    np.testing.assert_allclose(out.hidden_states[-1].numpy(), ours["prenorm"], atol=1e-4)  # what LLaVA reads
    if pool == "map":
        np.testing.assert_allclose(out.pooler_output.numpy(), ours["pooled"], atol=1e-4)


@pytest.mark.parametrize("norm", ["siglip", "imagenet"])
def test_image_processor_reproduces_eval_preprocessing(tmp_path, norm):
    transformers = need("transformers")
    need("transformers", "CLIPImageProcessor")
    from openvision2.convert import siglip
    cfg = model_cfg(pixel_norm=norm)
    cfg.image_size = 48
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(siglip.preprocessor_config(cfg)))
    photos = [need("skimage.data").chelsea(), need("skimage.data").astronaut()[:300], images(1, 64)[0]]
    ours = np.stack([np.asarray(normalize(preprocess.eval_transform(p, 48), norm)) for p in photos])
    pil = {"backend": "pil"} if int(transformers.__version__.split(".")[0]) >= 5 else {"use_fast": False}
    for kwargs in ({}, pil):  # the version's default backend (torchvision in 5.x), then PIL
        proc = transformers.AutoImageProcessor.from_pretrained(str(tmp_path), **kwargs)
        theirs = proc(images=[Image.fromarray(p) for p in photos], return_tensors="np")["pixel_values"]
        diff = np.abs(theirs.transpose(0, 2, 3, 1) - ours)
        # Resampling may round differently by one uint8 level; nothing else may differ.
        level = 1 / 255 / np.asarray(PIXEL_NORMS[norm][1])
        assert (diff <= level + 1e-5).all() and diff.mean() < 1e-3
        if norm == "siglip":
            assert diff.max() <= 1e-2  # [-1, 1] inputs: one level is 0.0078
    assert diff.max() < 1e-5  # PIL does the same resize: exact


def test_hf_export_refuses_a_cls_token_and_names_timm():
    cfg = model_cfg(cls_token=True)
    with pytest.raises(ValueError, match="--format=timm"):
        export.build({}, cfg, "hf")  # refused before any parameter is read


@pytest.mark.parametrize("model", [dict(), dict(cls_token=True, posemb="learned"), dict(pool="map", scan_layers=True)])
def test_timm_export_is_our_encoder(tmp_path, model):
    timm = need("timm")
    torch = need("torch")
    cfg = model_cfg(**model)
    params = random_params(cfg)
    export.write(params, cfg, str(tmp_path), "timm", step=0)
    net = timm.create_model(f"local-dir:{tmp_path}", pretrained=True).eval()
    x = images(2, cfg.image_size)
    ours = our_encoder(params, cfg, x)
    with torch.no_grad():
        feats = net.forward_features(nchw(x, cfg.model.pixel_norm))
        pooled = net.forward_head(feats, pre_logits=True)
    np.testing.assert_allclose(feats.numpy(), ours["tokens"], atol=1e-4)
    np.testing.assert_allclose(pooled.numpy(), ours["pooled"], atol=1e-4)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """A tiny captioner trained on shapes long enough to say several words."""
    need("transformers", "LlavaForConditionalGeneration")  # skip before training if it could not be used
    root = tmp_path_factory.mktemp("trained")
    cfg = tiny_train_cfg(root / "data", total_steps=60, checkpoint_every=60)
    cfg.data.shapes.num_train = 512
    cfg.batch_size = 16
    cfg.eval_batch_size = 16
    cfg.optim.warmup_steps = 5
    train.train(cfg, str(root / "run"))
    return str(root / "run")


def test_llava_generate_matches_the_caption_command(trained_run, tmp_path):
    need("transformers", "LlavaForConditionalGeneration")
    torch = need("torch")
    from transformers import AutoProcessor, LlavaForConditionalGeneration
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    out = tmp_path / "llava"
    subprocess.run([sys.executable, "-m", "openvision2.export", f"--workdir={trained_run}", f"--output={out}",
                    "--format=llava"], check=True, capture_output=True, env=env)
    paths = []
    for i, img in enumerate(images(4, 32, seed=1234)):  # held out: the train set uses other seeds
        paths.append(str(tmp_path / f"{i}.png"))
        Image.fromarray(img).save(paths[-1])
    paths.append(str(tmp_path / "photo.png"))
    Image.fromarray(need("skimage.data").coffee()).save(paths[-1])
    lines = subprocess.run([sys.executable, "-m", "openvision2.caption", f"--workdir={trained_run}", *paths],
                           check=True, capture_output=True, text=True, env=env).stdout.strip().splitlines()
    ours = [line.split("\t", 1)[1] for line in lines]
    processor = AutoProcessor.from_pretrained(str(out))  # the version's default image backend
    model = LlavaForConditionalGeneration.from_pretrained(str(out)).eval()
    theirs = []
    for path in paths:
        inputs = processor(text="<image>", images=Image.open(path), return_tensors="pt")
        assert inputs["input_ids"].shape[1] == 16 + 1  # 4x4 image tokens, then [bos]
        with torch.no_grad():
            tokens = model.generate(**inputs)
        theirs += processor.batch_decode(tokens[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    assert theirs == ours
    assert max(len(c.split()) for c in ours) >= 3


def flat_files(directory):
    return {name: (directory / name).read_bytes() for name in sorted(os.listdir(directory))}


@pytest.mark.parametrize("fmt,model", [("hf", dict(pool="map")), ("timm", dict(cls_token=True, posemb="learned")),
                                       ("llava", dict(scan_layers=True))])
def test_export_import_export_is_byte_identical(tmp_path, fmt, model):
    cfg = model_cfg(**model)
    params = random_params(cfg)
    tok = get_tokenizer(cfg.text.vocab)
    export.write(params, cfg, str(tmp_path / "a"), fmt, step=3, tokenizer=tok)
    cfg.init_from = str(tmp_path / "a")
    if fmt == "llava":
        cfg.init_decoder_from = str(tmp_path / "a")
        cfg.text.vocab = f"hf:{tmp_path / 'a'}"
    loaded, reports = convert_init.initialise(cfg, params)
    # Zero what is imported, keep the rest (LLaVA's projector is neither an encoder nor a decoder import).
    again = convert_init.merge({k: jax.tree.map(np.zeros_like, v) if k in loaded else v for k, v in params.items()},
                               loaded)
    jax.tree.map(np.testing.assert_array_equal, again, params)
    cfg.init_from = cfg.init_decoder_from = ""
    cfg.text.vocab = "shapes"
    export.write(again, cfg, str(tmp_path / "b"), fmt, step=3, tokenizer=tok)
    assert flat_files(tmp_path / "a") == flat_files(tmp_path / "b")
    assert all(not r.fresh for r in reports)


def test_export_records_step_config_revision_and_data(tmp_path):
    from safetensors import safe_open
    cfg = model_cfg()
    export.write(random_params(cfg), cfg, str(tmp_path), "timm", step=42)
    rec = json.loads((tmp_path / "openvision2_export.json").read_text())
    with safe_open(str(tmp_path / "model.safetensors"), "np") as f:
        meta = f.metadata()
    assert meta["format"] == "pt" and json.loads(meta["openvision2"]) == rec
    assert rec["step"] == 42 and rec["config"]["model"]["encoder"] == cfg.model.encoder
    assert rec["git_revision"] and "synthetic shapes" in rec["data"]["kind"]


def test_bad_checkpoints_fail_naming_the_problem(tmp_path):
    cfg = model_cfg()
    params = random_params(cfg)
    good = tmp_path / "good"
    export.write(params, cfg, str(good), "timm", step=0)
    target = table.flatten(params["encoder"], shapes_only=True)
    load = lambda path, c=cfg: convert_init.load_encoder(str(path), c, target)

    data = (good / "model.safetensors").read_bytes()
    (tmp_path / "truncated.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(table.CheckpointMismatch, match="truncated"):
        load(tmp_path / "truncated.safetensors")

    from safetensors.numpy import load_file, save_file
    tensors = load_file(str(good / "model.safetensors"))
    del tensors["blocks.1.attn.qkv.weight"]
    save_file(tensors, str(tmp_path / "missing.safetensors"))
    with pytest.raises(table.CheckpointMismatch, match=r"(?s)missing tensors .*blocks\.1\.attn\.qkv\.weight"):
        load(tmp_path / "missing.safetensors")

    tensors = load_file(str(good / "model.safetensors"))
    tensors["blocks.0.mlp.fc1.weight"] = tensors["blocks.0.mlp.fc1.weight"][:5]
    save_file(tensors, str(tmp_path / "shape.safetensors"))
    with pytest.raises(table.CheckpointMismatch, match=r"(?s)shape mismatches .*blocks\.0\.mlp\.fc1\.weight"):
        load(tmp_path / "shape.safetensors")

    wider = model_cfg()
    wider.model.encoder = "mu/8,width=64,depth=2,heads=2"
    with pytest.raises(table.CheckpointMismatch, match=r"--config\.model\.encoder='mu/8,width=32,depth=2,mlp_dim=128"):
        load(good, wider)


def test_open_clip_tower_imports_with_zero_conv_bias(tmp_path):
    torch = need("torch")
    VisionTransformer = need("open_clip.transformer", "VisionTransformer")
    from safetensors.torch import save_file
    torch.manual_seed(0)
    tower = VisionTransformer(image_size=32, patch_size=8, width=32, layers=2, heads=2, mlp_ratio=4.0,
                              no_ln_pre=True, output_dim=16, pool_type="tok").eval()
    with torch.no_grad():
        for p in tower.parameters():
            p.add_(0.05 * torch.randn_like(p))
    save_file({f"visual.{k}": v.contiguous() for k, v in tower.state_dict().items()}, str(tmp_path / "oc.safetensors"))
    cfg = model_cfg(cls_token=True, posemb="learned", approximate_gelu=False)
    params = random_params(cfg)
    cfg.init_from = str(tmp_path / "oc.safetensors")
    loaded, (report,) = convert_init.initialise(cfg, params)
    assert any("zero bias" in n for n in report.notes) and "proj" in report.ignored
    np.testing.assert_array_equal(loaded["encoder"]["patch_embed/bias"], 0)
    params = convert_init.merge(params, loaded)
    x = images(2, 32)
    captured = {}
    tower.ln_post.register_forward_hook(lambda m, i, o: captured.update(tokens=o))
    with torch.no_grad():
        tower(nchw(x))
    # open_clip's LayerNorm eps is 1e-5, ours 1e-6: equal up to that.
    np.testing.assert_allclose(our_encoder(params, cfg, x)["tokens"], captured["tokens"].numpy(), atol=2e-3)


@pytest.mark.parametrize("fmt", ["hf", "timm"])
def test_importing_a_tower_trained_on_other_pixel_statistics_names_the_setting(tmp_path, fmt):
    source_cfg = model_cfg(pixel_norm="siglip")
    export.write(random_params(source_cfg), source_cfg, str(tmp_path / fmt), fmt, step=0)
    cfg = model_cfg()  # imagenet statistics
    cfg.init_from = str(tmp_path / fmt)
    with pytest.raises(table.CheckpointMismatch, match="--config.model.pixel_norm=siglip"):
        convert_init.initialise(cfg, random_params(cfg))
    cfg.model.pixel_norm = "siglip"
    loaded, _ = convert_init.initialise(cfg, random_params(cfg))
    assert loaded["encoder"]


def test_training_starts_from_imported_weights(tmp_path):
    cfg = tiny_train_cfg(tmp_path / "data", total_steps=3)
    source = random_params(cfg)
    export.write(source, cfg, str(tmp_path / "hf"), "hf", step=0)
    cfg.init_from = str(tmp_path / "hf")
    cfg.optim.lr = 0.0  # the one step changes nothing, so the checkpoint holds what was imported
    train.train(cfg, str(tmp_path / "run"))
    params, _ = train.checkpoint.restore_params(str(tmp_path / "run"))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-7), params["encoder"], source["encoder"])
    assert not np.allclose(params["decoder"]["embed"]["embedding"], source["decoder"]["embed"]["embedding"])


def test_decoder_import_needs_the_llms_vocabulary(tmp_path):
    cfg = model_cfg()
    cfg.init_decoder_from = str(tmp_path)
    with pytest.raises(ValueError, match=f"--config.text.vocab=hf:{tmp_path}"):
        convert_init.initialise(cfg, {})  # refused before any file is read


def test_llava_tokenizer_puts_bos_after_the_image_tokens():
    cfg = model_cfg()
    tok = get_tokenizer("shapes")
    tk, image_id = llava.hf_tokenizer(tok, cfg)
    assert image_id == tok.vocab_size < cfg.model.vocab_size
    ids = tk.encode("<image>" * 3).ids
    assert ids == [image_id] * 3 + [tok.bos_id]
    caption = tok.encode(["a red circle and a blue square."], 16)[0]
    assert tk.decode(caption.tolist(), skip_special_tokens=True) == tok.decode(caption)


def test_a_different_decoder_architecture_names_the_settings_that_fit_it():
    from openvision2.convert import llama
    hf = {"hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2, "num_hidden_layers": 3,
          "intermediate_size": 96, "vocab_size": 100, "tie_word_embeddings": True, "rope_theta": 100000.0}
    cfg = tiny_cfg()
    with pytest.raises(table.CheckpointMismatch) as err:
        llama.check_hf_config(hf, cfg, "smol.gguf")
    message = str(err.value)
    for fix in ("--config.model.decoder='mu,width=64,depth=3,mlp_dim=96,heads=4'", "--config.model.kv_heads=2",
                "--config.model.tie_embeddings=True", "--config.model.rope_theta=100000.0",
                "--config.model.vocab_size=100"):
        assert fix in message
    # Once the config says what the message asked for, the check passes.
    for key, value in llama.config_overrides(hf).items():
        parent, leaf = key.split(".")
        cfg[parent][leaf] = value
    cfg.model.vocab_size = 100
    llama.check_hf_config(hf, cfg, "smol.gguf")


def test_check_export_tool_reports_parity_of_each_export(trained_run, tmp_path):
    need("timm")
    paths = []
    for i, img in enumerate(images(2, 32, seed=99)):
        paths.append(str(tmp_path / f"{i}.png"))
        Image.fromarray(img).save(paths[-1])
    out = subprocess.run([sys.executable, os.path.join(os.path.dirname(os.path.dirname(__file__)), "tools",
                                                       "check_export.py"), f"--workdir={trained_run}",
                          f"--images={','.join(paths)}", "--formats=hf,timm"],
                         check=True, capture_output=True, text=True, env={**os.environ, "JAX_PLATFORMS": "cpu"}).stdout
    rows = {r["check"]: r for r in map(json.loads, out.strip().splitlines())}
    assert rows["hf last_hidden_state vs patch_tokens"]["max_abs"] < 1e-4
    assert rows["timm forward_features vs patch_tokens"]["max_abs"] < 1e-4
    # 32 px images at 32 px: nothing to resample, so every backend is exact.
    assert rows["AutoImageProcessor (default) vs our eval preprocessing"]["max_abs"] < 1e-5
