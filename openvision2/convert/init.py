"""Train-time initialisation from other checkpoints: `init_from` (encoder), `init_decoder_from` (decoder).

Encoder sources (detected from the files):
- an HF SigLIP vision directory (or one of our `--format=hf`/`llava` exports);
- a timm ViT: a directory from our `--format=timm`, or a timm `.safetensors`/`.pth`/`.npz` state dict;
- an OpenVision open_clip-format checkpoint (`visual.*` keys).
Decoder sources: an HF Llama-family safetensors directory (or our `llava` export), or a `.gguf` file.

Used only when a run starts fresh. Whatever is not in the sources (the
projector, a head the checkpoint lacks, padding vocabulary rows) keeps its
fresh initialisation, and the log says so tensor by tensor. Missing tensors,
shape mismatches and keys the model has no place for are errors that name
the config change that fixes them.
"""

from __future__ import annotations

import glob
import json
import os

from absl import logging
import jax
import numpy as np

from openvision2 import sizes
from openvision2.convert import gguf, llama, openclip, siglip, table, timm, vit
from openvision2.models import vit as vit_lib


# --- reading files -----------------------------------------------------------------------------------

def read_tensors(path: str) -> dict[str, np.ndarray]:
    """All tensors of a checkpoint file, or of every `*.safetensors` in a directory."""
    if os.path.isdir(path):
        files = sorted(glob.glob(os.path.join(path, "*.safetensors")))
        if not files:
            raise FileNotFoundError(f"{path} holds no *.safetensors file.")
        out = {}
        for f in files:
            out.update(read_tensors(f))
        return out
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} does not exist.")
    from safetensors import SafetensorError
    from safetensors.numpy import load_file
    try:
        if path.endswith(".safetensors"):
            return load_file(path)
        if path.endswith(".npz"):
            with np.load(path) as z:
                return {k.replace("/", "."): z[k] for k in z.files}
        if path.endswith((".pt", ".pth", ".bin")):
            return _read_torch(path)
    except (OSError, ValueError, KeyError, RuntimeError, EOFError, SafetensorError) as e:
        raise table.CheckpointMismatch(f"cannot read {path} ({type(e).__name__}: {e}): the file is truncated, "
                                       "corrupt or not the format its name says.") from e
    raise ValueError(f"{path}: unknown checkpoint format; give a directory, .safetensors, .npz, .pt/.pth/.bin "
                     "(or .gguf for the decoder).")


def _read_torch(path: str) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError as e:
        raise ImportError(f"reading {path} needs torch (pip install -e '.[hf]'), or convert it to .safetensors.") from e
    sd = torch.load(path, map_location="cpu", weights_only=True)
    sd = sd.get("state_dict", sd.get("model", sd)) if isinstance(sd, dict) else sd
    sd = {k.removeprefix("module."): v for k, v in sd.items()}
    return {k: v.float().numpy() for k, v in sd.items() if hasattr(v, "numpy")}


def read_config(path: str) -> dict | None:
    file = os.path.join(path, "config.json") if os.path.isdir(path) else None
    if file and os.path.isfile(file):
        with open(file) as f:
            return json.load(f)
    return None


# --- encoder -----------------------------------------------------------------------------------------

def _strip(tensors, prefix):
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def _check_state_dict_dims(dims: dict, cfg, source: str):
    size = sizes.encoder_size(cfg.model.encoder)
    have = dict(width=size.width, depth=size.depth, patch=size.patch, mlp_dim=size.mlp_dim)
    if any(dims[k] != have[k] for k in have):
        raise table.CheckpointMismatch(
            f"{source} is a different encoder: {dims} vs the model's {have}; set --config.model.encoder="
            f"'{sizes.encoder_variant(dims['width'], dims['depth'], dims['mlp_dim'], size.heads, dims['patch'])}' (a state "
            "dict does not record the head count: check heads= too).")


def load_encoder(path: str, cfg, target) -> tuple[dict, table.Report]:
    """Our flat encoder params from `path`; `target` is the flat (shape) view of the model's encoder."""
    tensors, hf = read_tensors(path), read_config(path)
    report = table.Report(f"encoder from {path}")
    if cfg.model.posemb == "sincos":  # checked against the fixed table, then dropped (see vit.absorb_posemb)
        g, width = vit.grid(cfg), sizes.encoder_size(cfg.model.encoder).width
        target = {**target, vit.POS: table.Spec((1, g * g, width), np.dtype(np.float32))}
    config, ignore = hf, ()
    if hf and hf.get("model_type") == "llava":
        tensors, config, kind = _strip(tensors, "model.vision_tower.vision_model."), hf["vision_config"], "siglip"
    elif any(k.startswith(siglip.PREFIX) for k in tensors):
        tensors, kind = _strip(tensors, siglip.PREFIX), "siglip"
    elif "patch_embed.proj.weight" in tensors:
        kind = "timm"
    elif openclip.is_openclip(tensors):
        kind = "openclip"
    else:
        raise table.CheckpointMismatch(f"{path}: no known ViT layout (SigLIP `vision_model.*`, timm `patch_embed.*` "
                                       f"or open_clip `visual.*`); first keys: {sorted(tensors)[:5]}")
    if kind == "siglip":
        if config and "hidden_size" in config:
            report.notes += siglip.check_hf_config(config, cfg, path)
        rules, ignore = siglip.rules(cfg, head_optional=True), (r"head\..*",)
    elif kind == "timm":
        if config and "model_args" in config:
            report.notes += timm.check_timm_config(config, cfg, path)
        rules, ignore = timm.rules(cfg, head_optional=True), timm.IGNORE + (r"attn_pool\..*",)
    else:
        tensors, dims = openclip.canonical(tensors, report)
        if not cfg.model.cls_token:
            raise table.CheckpointMismatch(f"{path} is an open_clip tower with a CLS token; set "
                                           "--config.model.cls_token=True.")
        _check_state_dict_dims(dims, cfg, path)
        rules, ignore = openclip.rules(dims["depth"]), openclip.IGNORE
    check_pixel_norm(path, kind, config, cfg, report)
    loaded = table.load(tensors, rules, target, report, ignore=ignore,
                        hint=f"Is --config.model.encoder / image_size / cls_token / pool the checkpoint's?")
    vit.absorb_posemb(loaded, cfg, report)
    return loaded, report


def check_pixel_norm(path: str, kind: str, config: dict | None, cfg, report: table.Report) -> None:
    """The imported tower was trained on inputs normalised some way; ours must be the same, or
    its features start off wrong. Read from the checkpoint's processor (HF) or pretrained_cfg
    (timm); open_clip state dicts do not record it, which the report says."""
    source = None
    processor = os.path.join(path, "preprocessor_config.json") if os.path.isdir(path) else None
    if kind == "siglip" and processor and os.path.isfile(processor):
        with open(processor) as f:
            p = json.load(f)
        source = (p.get("image_mean"), p.get("image_std")) if p.get("do_normalize", True) else ((0, 0, 0), (1, 1, 1))
    elif kind == "timm" and config and "pretrained_cfg" in config:
        source = (config["pretrained_cfg"].get("mean"), config["pretrained_cfg"].get("std"))
    name = cfg.model.pixel_norm
    ours = vit_lib.pixel_norm_stats(name)
    if source is None or None in source:
        report.notes.append(f"the checkpoint does not record its input normalisation; using model.pixel_norm="
                            f"{name!r} (mean {list(ours[0])}, std {list(ours[1])})")
        return
    same = lambda a, b: all(np.allclose(np.asarray(x, float), np.asarray(y, float), atol=1e-4) for x, y in zip(a, b))
    if same(source, ours):
        return
    match = [n for n, stats in vit_lib.PIXEL_NORMS.items() if same(source, stats)]
    fix = (f"set --config.model.pixel_norm={match[0]}" if match else
           f"none of the presets {sorted(vit_lib.PIXEL_NORMS)} matches it, so it cannot be imported exactly")
    raise table.CheckpointMismatch(
        f"{path} was trained on inputs normalised with mean {list(source[0])} / std {list(source[1])}, but "
        f"model.pixel_norm={name!r} is mean {list(ours[0])} / std {list(ours[1])}: its features would start "
        f"off wrong; {fix}.")


# --- decoder -----------------------------------------------------------------------------------------

def load_decoder(path: str, cfg, target) -> tuple[dict, table.Report]:
    report_source = f"decoder from {path}"
    if path.endswith(".gguf"):
        tensors, hf, _ = gguf.load_llama_gguf(path)
    else:
        tensors, hf = read_tensors(path), read_config(path)
        if hf is None:
            raise FileNotFoundError(f"{path}: a decoder directory needs its config.json (HF LlamaConfig).")
        if hf.get("model_type") == "llava":
            hf = hf["text_config"]
            tensors = {("model." + k[len("model.language_model."):] if k.startswith("model.language_model.") else k): v
                       for k, v in tensors.items() if not k.startswith(("model.vision_tower.",
                                                                       "model.multi_modal_projector."))}
    notes = llama.check_hf_config(hf, cfg, path)
    loaded, report = llama.load(tensors, cfg, target, report_source)
    report.notes += notes
    return loaded, report


def check_vocab(cfg):
    """The tokenizer travels with an LLM decoder: its ids index the imported embedding rows."""
    path = cfg.init_decoder_from
    if path and not cfg.text.vocab.startswith(("hf:", "gguf:")):
        kind = "gguf" if path.endswith(".gguf") else "hf"
        raise ValueError(f"init_decoder_from={path!r} brings its own vocabulary, but text.vocab={cfg.text.vocab!r}; "
                         f"set --config.text.vocab={kind}:{path}")


# --- the train state ---------------------------------------------------------------------------------

def initialise(cfg, params) -> tuple[dict[str, dict], list[table.Report]]:
    """Loaded flat params per component (`{"encoder": {...}, "decoder": {...}}`) for a model whose
    (possibly sharded, possibly abstract) params are `params`."""
    check_vocab(cfg)
    loaded, reports = {}, []
    for key, component, loader in (("init_from", "encoder", load_encoder),
                                   ("init_decoder_from", "decoder", load_decoder)):
        if cfg.get(key):
            if component not in params:
                raise ValueError(f"{key}={cfg.get(key)!r}: objective={cfg.objective!r} has no `{component}` parameters "
                                 f"to load it into (its model has {sorted(params)}).")
            target = table.flatten(params[component], shapes_only=True)
            loaded[component], report = loader(cfg.get(key), cfg, target)
            reports.append(report)
    untouched = [c for c in params if c not in loaded]
    if loaded and untouched:
        reports[-1].notes.append(f"freshly initialised components: {', '.join(untouched)}")
    return loaded, reports


def merge(params, loaded: dict[str, dict]):
    """`params` with the loaded leaves replaced, each placed with the leaf's own sharding."""
    def place(leaf, value):
        value = np.asarray(value, dtype=leaf.dtype)
        sharding = getattr(leaf, "sharding", None)
        if sharding is None:
            return value
        return jax.make_array_from_callback(value.shape, sharding, lambda idx: value[idx])

    out = dict(params)
    for component, flat in loaded.items():
        tree = out[component]
        for path, keys in table.leaf_keys(tree).items():
            if not any(k in flat for k in keys):
                continue
            value = np.stack([flat[k] for k in keys]) if table.path_is_stacked(path) else flat[keys[0]]
            tree = _replace(tree, path, place(_get(tree, path), value))
        out[component] = tree
    return out


def _get(tree, path):
    for k in path:
        tree = tree[k]
    return tree


def _replace(tree, path, value):
    if not path:
        return value
    return {**tree, path[0]: _replace(tree[path[0]], path[1:], value)}


def initialise_state(cfg, state):
    """The trainer's hook: a fresh train state with imported weights, logged report by report."""
    loaded, reports = initialise(cfg, state["params"])
    for report in reports:
        logging.info("%s", report)
    return {**state, "params": merge(state["params"], loaded)}
