"""Model size tables, config-string parsing and config validation.

Every model size in the framework comes from one variant string looked up in
one table: `"L/14"` is the ViT-L encoder with 14-pixel patches, `"L"` names a
decoder size. Validation lives here too so that a config that cannot run
fails before anything is compiled, with a message that names the fix.
"""

from __future__ import annotations

import dataclasses
import os
import re

import ml_collections

# width, depth, mlp_dim, heads (BRIEF.md section 2).
ENCODER_SIZES = {
    "mu": (32, 1, 128, 2),
    "Ti": (192, 12, 768, 3),
    "S": (384, 12, 1536, 6),
    "M": (512, 12, 2048, 8),
    "B": (768, 12, 3072, 12),
    "L": (1024, 24, 4096, 16),
    "So400m": (1152, 27, 4304, 16),
    "H": (1280, 32, 5120, 16),
    "g": (1408, 40, 6144, 16),
    "G": (1664, 48, 8192, 16),
    "e": (1792, 56, 15360, 16),
}

# width, depth, mlp_dim, heads. Widths and depths are OpenVision 2's; the
# SwiGLU hidden size is 8/3 x width (rounded up to a multiple of 8), which
# keeps the parameter count of a 4x GELU MLP, and heads are 64 wide.
DECODER_SIZES = {
    "mu": (32, 1, 88, 2),
    "Ti": (192, 12, 512, 3),
    "S": (384, 12, 1024, 6),
    "M": (512, 12, 1368, 8),
    "B": (512, 12, 1368, 8),
    "L": (768, 12, 2048, 12),
    "H": (1024, 24, 2736, 16),
    "G": (1664, 48, 4440, 26),
}


@dataclasses.dataclass(frozen=True)
class EncoderSize:
    width: int
    depth: int
    mlp_dim: int
    heads: int
    patch: int


@dataclasses.dataclass(frozen=True)
class DecoderSize:
    width: int
    depth: int
    mlp_dim: int
    heads: int


def _parse_overrides(spec: str, sizes: dict, kind: str):
    """Splits `name[,key=value...]`: explicit fields override the table."""
    name, *extra = [s.strip() for s in spec.split(",") if s.strip()]
    overrides = {}
    for item in extra:
        key, _, value = item.partition("=")
        if key not in ("width", "depth", "mlp_dim", "heads"):
            raise ValueError(f"Unknown {kind} override {key!r} in {spec!r}; "
                             "use width=, depth=, mlp_dim=, heads=.")
        overrides[key] = int(value)
    return name, overrides


def encoder_size(variant: str) -> EncoderSize:
    """`"B/16"` -> EncoderSize; `"mu/8,depth=2"` overrides table fields."""
    name_patch, overrides = _parse_overrides(variant, ENCODER_SIZES, "encoder")
    match = re.fullmatch(r"([A-Za-z0-9]+)/(\d+)", name_patch)
    if not match or match.group(1) not in ENCODER_SIZES:
        raise ValueError(f"Encoder variant {variant!r} is not `<size>/<patch>` with size "
                         f"in {sorted(ENCODER_SIZES)}; e.g. 'B/16' or 'L/14'.")
    width, depth, mlp_dim, heads = ENCODER_SIZES[match.group(1)]
    fields = dict(width=width, depth=depth, mlp_dim=mlp_dim, heads=heads)
    fields.update(overrides)
    return EncoderSize(patch=int(match.group(2)), **fields)


def _named_size(variant: str, sizes: dict, kind: str, example: str) -> dict:
    """Table fields of `name[,key=value...]` (no patch), with the explicit ones overriding."""
    name, overrides = _parse_overrides(variant, sizes, kind)
    if name not in sizes:
        raise ValueError(f"{kind.capitalize()} variant {variant!r} not in {sorted(sizes)}, e.g. {example!r}.")
    width, depth, mlp_dim, heads = sizes[name]
    return {**dict(width=width, depth=depth, mlp_dim=mlp_dim, heads=heads), **overrides}


def decoder_size(variant: str) -> DecoderSize:
    """`"L"` -> DecoderSize; `"mu,width=128,depth=2"` overrides table fields."""
    return DecoderSize(**_named_size(variant, DECODER_SIZES, "decoder", "L"))


def text_encoder_size(variant: str) -> EncoderSize:
    """The contrastive text tower: an encoder size name without patch, e.g. `"B"` or `"mu,width=64"`."""
    return EncoderSize(patch=0, **_named_size(variant, ENCODER_SIZES, "text encoder", "B"))


# What each objective's model is made of, beyond the ViT every recipe has.
OBJECTIVE_PARTS = {
    "captioning": ("decoder",),
    "openvision": ("decoder", "text_encoder"),
    "clip": ("text_encoder",),
    "siglip": ("text_encoder",),
    "coca": ("decoder",),
    "mmgem": ("decoder",),
}


def parts(cfg) -> tuple[str, ...]:
    objective = cfg.get("objective", "captioning")
    if objective not in OBJECTIVE_PARTS:
        raise ValueError(f"objective={objective!r} is not available; choose from {sorted(OBJECTIVE_PARTS)}.")
    return OBJECTIVE_PARTS[objective]


def batch_fields(cfg) -> dict[str, tuple[tuple[int, ...], str]]:
    """Per-example fields of a train batch, name -> (shape, dtype), for the recipe `cfg` trains.

    The input pipeline fills exactly these; the benchmark and AOT tools build stand-ins from them.
    """
    size, length = int(cfg.image_size), int(cfg.text.max_len)
    fields = {"image": ((size, size, 3), "uint8"), "text": ((length,), "int32")}
    if "text_encoder" in parts(cfg):
        fields["text_con"] = ((int(cfg.text.get("encoder_max_len") or length),), "int32")
    if cfg.get("objective") == "mmgem" and cfg.mmgem.region_task:
        fields["box"] = ((4,), "float32")
        fields["region_text"] = ((length,), "int32")
    return fields


def parse_arg(arg: str | None, **defaults):
    """big_vision-style `get_config` argument: `"B/16,res=224,runlocal"`.

    Positional items fill keys in the order of `defaults`; a bare key that is a
    bool default switches it on.
    """
    out = dict(defaults)
    if not arg:
        return ml_collections.ConfigDict(out)
    positional = iter(defaults)
    for item in arg.split(","):
        item = item.strip()
        if not item:
            continue
        if "=" in item:
            key, value = item.split("=", 1)
        elif isinstance(defaults.get(item), bool):
            key, value = item, "True"
        else:
            key, value = next(positional), item
        if key not in defaults:
            raise ValueError(f"Unknown config argument {key!r}; known: {sorted(defaults)}.")
        kind = type(defaults[key])
        out[key] = (value.lower() in ("1", "true", "yes")) if kind is bool else kind(value)
    return ml_collections.ConfigDict(out)


MESH_AXES = ("dcn_data", "data", "fsdp", "tensor")
CONTRASTIVE_OBJECTIVES = ("openvision", "clip", "siglip", "coca", "mmgem")
MASKING_OBJECTIVES = ("captioning", "openvision")  # decoders that read a (masked) visual prefix


def mesh_shape(cfg) -> dict[str, int]:
    """Mesh axis sizes from `cfg.mesh`; one axis may be -1 (all remaining devices).

    `dcn_data` is data parallelism across slices (multislice, over the data
    centre network); the others are within a slice (ICI).
    """
    return {axis: int(cfg.mesh.get(axis, 1)) for axis in MESH_AXES}


def validate(cfg, num_devices: int) -> dict[str, int]:
    """Fails fast, naming the fix, when a config cannot run on `num_devices`.

    Returns the resolved mesh shape.
    """
    shape = mesh_shape(cfg)
    free = [a for a, n in shape.items() if n == -1]
    if len(free) > 1:
        raise ValueError(f"Only one mesh axis may be -1, got {free}: set the others explicitly.")
    fixed = 1
    for a, n in shape.items():
        if n != -1:
            if n < 1:
                raise ValueError(f"mesh.{a}={n} must be >= 1 (or -1 for 'the rest').")
            fixed *= n
    if free:
        if num_devices % fixed:
            raise ValueError(
                f"mesh {shape} cannot absorb {num_devices} devices: the fixed axes multiply to "
                f"{fixed}, which does not divide {num_devices}. Change --config.mesh.* so the fixed "
                "axes divide the device count.")
        shape[free[0]] = num_devices // fixed
    total = shape["dcn_data"] * shape["data"] * shape["fsdp"] * shape["tensor"]
    if total != num_devices:
        raise ValueError(
            f"mesh {' x '.join(f'{a}={n}' for a, n in shape.items())} = {total} devices, but {num_devices} are "
            f"available. Set e.g. --config.mesh.data=-1 to use all devices, or make the product equal "
            f"{num_devices}.")
    batch_shards = shape["dcn_data"] * shape["data"] * shape["fsdp"]
    batches = {"batch_size": cfg.batch_size}
    if cfg.get("eval_batch_size"):
        batches["eval_batch_size"] = cfg.eval_batch_size
    for key, batch in batches.items():
        if batch % batch_shards:
            raise ValueError(
                f"{key}={batch} is not divisible by dcn_data x data x fsdp = {batch_shards} devices. Use a "
                f"multiple of {batch_shards} (e.g. --config.{key}={max(1, round(batch / batch_shards)) * batch_shards}) "
                "or change --config.mesh.")
    tensor = shape["tensor"]
    enc = encoder_size(cfg.model.encoder)
    checks = [("encoder heads", enc.heads), ("encoder mlp_dim", enc.mlp_dim), ("vocab_size", cfg.model.vocab_size)]
    widths = [("encoder width", enc.width)]
    if "decoder" in parts(cfg):
        dec = decoder_size(cfg.model.decoder)
        checks += [("decoder heads", dec.heads), ("decoder mlp_dim", dec.mlp_dim),
                   ("decoder kv_heads", cfg.model.get("kv_heads") or dec.heads)]
        widths.append(("decoder width", dec.width))
    if "text_encoder" in parts(cfg):
        txt = text_encoder_size(cfg.model.text_encoder)
        checks += [("text encoder heads", txt.heads), ("text encoder mlp_dim", txt.mlp_dim)]
        widths.append(("text encoder width", txt.width))
    for name, value in checks:
        if value % tensor:
            raise ValueError(f"{name}={value} is not divisible by mesh.tensor={tensor}: pick a "
                             f"tensor axis size that divides it (or change the model).")
    fsdp = shape["fsdp"]
    for name, value in widths:
        if value % fsdp:
            raise ValueError(f"{name}={value} is not divisible by mesh.fsdp={fsdp}: parameters are "
                             "sharded along width. Pick an fsdp size that divides it.")
    if not 0.0 < cfg.keep_ratio <= 1.0:
        raise ValueError(f"keep_ratio={cfg.keep_ratio} must be in (0, 1]; 1.0 turns masking off.")
    if cfg.keep_ratio < 1.0 and cfg.objective not in MASKING_OBJECTIVES:
        raise ValueError(f"objective={cfg.objective!r} does not drop visual tokens (only {MASKING_OBJECTIVES} do), "
                         f"so keep_ratio={cfg.keep_ratio} would be ignored; set --config.keep_ratio=1.0.")
    if cfg.objective in CONTRASTIVE_OBJECTIVES and int(cfg.get("grad_accum_steps", 1)) > 1:
        raise ValueError(f"objective={cfg.objective!r} has a contrastive loss, whose negatives are the whole batch: "
                         f"grad_accum_steps={cfg.grad_accum_steps} would shrink them to one micro-batch. Use "
                         "--config.grad_accum_steps=1 (shard the batch over more devices, or remat, to fit memory).")
    return shape


def base_config() -> ml_collections.ConfigDict:
    """Every key a config may set, at OpenVision 2 defaults (BRIEF.md section 2).

    Recipe files in `configs/` start from this and override what they change.
    """
    c = ml_collections.ConfigDict()
    c.objective = "captioning"
    c.seed = 0
    c.total_steps = 1000
    c.batch_size = 256
    c.eval_batch_size = 0  # 0 = batch_size
    c.grad_accum_steps = 1  # micro-batches per step (token-weighted, same maths)
    c.image_size = 224
    c.keep_ratio = 0.35
    c.caption_loss_weight = 2.0
    c.z_loss = 0.0
    c.log_every = 50
    c.eval_every = 0  # 0 = only at the end
    c.checkpoint_every = 1000
    c.keep_checkpoints = 2
    c.keep_every = 0
    c.async_checkpoints = True
    # Weights to start a fresh run from (ignored on resume); see openvision2/convert/init.py.
    c.init_from = ""  # encoder: HF SigLIP dir, timm dir/state dict, open_clip checkpoint
    c.init_decoder_from = ""  # decoder: HF Llama dir or .gguf (set text.vocab to its tokenizer)

    # Curriculum (see stages.py): named stages of overrides run in `stage_order`;
    # empty = one stage defined by the top-level keys.
    c.stages = ml_collections.ConfigDict()
    c.stage_order = ""

    c.mesh = ml_collections.ConfigDict({"dcn_data": 1, "data": -1, "fsdp": 1, "tensor": 1})
    c.sharding_rules = "fsdp_tensor"  # preset name (dp | fsdp | fsdp_tensor) or (logical, mesh axes) pairs

    c.model = ml_collections.ConfigDict()
    c.model.encoder = "L/14"
    c.model.decoder = "L"
    c.model.vocab_size = 32_000
    c.model.kv_heads = 0
    c.model.tie_embeddings = False
    c.model.rope_theta = 10_000.0
    c.model.projector = "mlp"
    c.model.posemb = "sincos"
    c.model.pixel_norm = "imagenet"  # input normalisation: imagenet (OpenVision 2's) | siglip ([-1, 1]) | clip
    c.model.cls_token = False
    c.model.pool = "gap"
    c.model.approximate_gelu = True
    c.model.scan_layers = True
    c.model.remat_policy = "none"
    c.model.attention_impl = ""  # "" = backend default; "xla" | "cudnn"
    c.model.dtype = "float32"
    c.model.param_dtype = "float32"

    c.text = ml_collections.ConfigDict({"vocab": "bert_base_uncased", "max_len": 128})
    c.text.encoder_max_len = 0  # tokens the contrastive text tower reads (0 = max_len)

    # The contrastive recipes (objectives openvision, clip, siglip, coca, mmgem).
    c.model.text_encoder = "B"  # text tower size (encoder table names, no patch): openvision, clip, siglip
    c.model.embed_dim = 0  # shared image-text embedding width (0 = the encoder's width)
    c.contrastive = ml_collections.ConfigDict()
    c.contrastive.loss = ""  # "" = the objective's own (sigmoid for siglip, softmax otherwise) | softmax | sigmoid
    c.contrastive.weight = 1.0  # total = weight * contrastive + caption_loss_weight * caption (CE)
    c.contrastive.init_temperature = 0.0  # 0 = the loss's default: softmax 0.07 (CLIP), sigmoid 0.1 (SigLIP)
    c.contrastive.min_temperature = 0.01  # the learnable temperature is clamped here (logit scale <= 100)
    c.contrastive.init_bias = -10.0  # sigmoid loss: initial learnable logit bias
    c.contrastive.chunked = True  # sigmoid loss: ring-chunked over devices, per-device memory O(b^2) not O(b*B)

    # CoCa (objective coca): a text decoder split in two; see models/coca.py.
    c.coca = ml_collections.ConfigDict()
    c.coca.unimodal_layers = 0  # text-only layers under the CLS embedding (0 = half the decoder depth)
    c.coca.caption_queries = 256  # attentional-pooler queries the multimodal layers cross-attend to

    # MM-GEM (objective mmgem): one decoder embeds and captions; see models/mmgem.py.
    c.mmgem = ml_collections.ConfigDict()
    c.mmgem.pool_grid = 4  # PoolAggregator: the patch grid is average-pooled to pool_grid x pool_grid tokens
    c.mmgem.roi_grid = 2  # RoIAlign bins per side for region features
    c.mmgem.soft_prompts = 4  # learned prompt vectors before [CAP] for region captions
    c.mmgem.region_task = ""  # "" = image level (stage 1); region stage: "caption" | "retrieval" | "both"
    c.mmgem.min_visible = 0.5  # a region whose crop keeps less of its box than this is not used

    c.optim = ml_collections.ConfigDict()
    c.optim.name = "adam"  # adam (AdamW-style decoupled decay) | lamb (MM-GEM)
    c.optim.lr = 8e-6  # per 256 samples: 1.024e-3 at batch 32,768
    c.optim.warmup_steps = 100
    c.optim.end_lr_frac = 0.0
    c.optim.b1 = 0.9
    c.optim.b2 = 0.95
    c.optim.eps = 1e-8
    c.optim.weight_decay = 0.2
    c.optim.grad_clip = 0.0
    c.optim.mu_dtype = ""  # "" = param dtype; "bfloat16" as in the public recipe
    # Regexes over parameter paths like "encoder/block_0/q/kernel" (see optim.py).
    c.optim.trainable = ""  # "" = everything trains; else only matching parameters
    c.optim.frozen = ""  # matching parameters are frozen
    c.optim.lr_mults = ""  # "regex=mult,...": first match scales that parameter's LR

    c.data = ml_collections.ConfigDict()
    c.data.path = ""  # "" = the synthetic shapes data
    # Several train sources mixed per element by weight, "<dir or glob>:<weight>,..." (weights are
    # normalised), e.g. "/data/a:0.7,/data/b:0.3"; replaces path. "" = the single source path.
    c.data.sources = ""
    c.data.eval_path = ""  # ArrayRecord dir/glob, or "tfds:<name>[/<config>][:<version>]" (data/tfds_source.py)
    c.data.tfds_split = "validation"
    c.data.tfds_data_dir = ""
    c.data.tfds_image_key = "image"
    c.data.tfds_caption_key = ""  # "" = the first caption_field; "/" walks nested features, e.g. captions/text
    # One field, or a comma-separated list for caption_mode "random_field"; eval uses the first.
    c.data.caption_field = "re_caption"
    # "field": the first caption_field; "random_field": per element, uniformly one of the listed
    # fields present and non-empty; "random_sentence": one sentence of the first field.
    c.data.caption_mode = "field"
    # The contrastive tower's text, from the same record (its own rng): "field" = the first caption
    # field; "random_sentence" = one sentence of it (CLIPS's partial captions); "same" = the caption.
    c.data.contrastive_caption_mode = "field"
    c.data.num_eval = 0
    c.data.augment = "inception_crop"
    c.data.area_min = 0.4
    c.data.area_max = 1.0
    c.data.color_jitter = 0.4
    c.data.color_jitter_prob = 0.8
    c.data.grayscale_prob = 0.2
    c.data.workers = 0
    c.data.prefetch = 2
    c.data.shapes = ml_collections.ConfigDict(
        {"num_train": 30_000, "num_eval": 512, "seed": 1, "eval_seed": 2, "image_size": 64, "dir": ""})
    return c


def at_scale(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """What every published-size recipe shares: bf16 compute over fp32 params, remat, layers
    scanned, FSDP over all devices, the ReCap caption field, 8 data workers, eval at the end."""
    c.model.dtype, c.model.param_dtype = "bfloat16", "float32"
    c.model.remat_policy = "dots_no_batch"
    c.model.scan_layers = True
    c.data.caption_field = "re_caption"
    c.data.workers = 8
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 1, -1, 1
    c.log_every, c.checkpoint_every, c.eval_every = 100, 2_000, 0
    return c


def stage(steps: int, **overrides) -> ml_collections.ConfigDict:
    """One curriculum stage: `stage(1000, image_size=32, optim={"lr": 1e-3})`."""
    return ml_collections.ConfigDict({"steps": steps, **overrides})


def set_stages(c: ml_collections.ConfigDict, **named: ml_collections.ConfigDict) -> None:
    """Installs stages in the order given; `total_steps` becomes their sum and
    follows later overrides of any stage's `steps`."""
    c.stages = ml_collections.ConfigDict(named)
    c.stage_order = ",".join(named)
    refs = [c.stages[name].get_ref("steps") for name in named]
    total = refs[0]
    for r in refs[1:]:
        total = total + r
    c.total_steps = total


def load_module(path: str):
    """Executes a config (or sweep) file and returns it as a module."""
    import importlib.util

    module_spec = importlib.util.spec_from_file_location(f"_ov2_config_{abs(hash(path))}", path)
    if module_spec is None or not os.path.isfile(path):
        raise FileNotFoundError(f"Config file {path!r} not found.")
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def sibling_config(config_file: str, name: str, arg: str | None = None) -> ml_collections.ConfigDict:
    """`get_config(arg)` of another config file in the same directory as `config_file` (a
    config's `__file__`): recipes build on a shared base the way big_vision's configs do."""
    return load_module(os.path.join(os.path.dirname(os.path.abspath(config_file)), name)).get_config(arg)


def load_config_file(spec: str) -> ml_collections.ConfigDict:
    """`path/to/config.py[:arg]` -> the ConfigDict its `get_config(arg)` returns."""
    path, _, arg = spec.partition(":")
    return load_module(path).get_config(arg or None)


def argv_overrides(argv: list[str]) -> dict[str, str]:
    """The `--config.<key>=<value>` flags of a command line, as {"<key>": "<value>"}."""
    return {a.split("=", 1)[0][len("--config."):]: a.split("=", 1)[1]
            for a in argv if a.startswith("--config.") and "=" in a}


def split_specs(values: list[str]) -> list[str]:
    """Config specs from repeatable `--compare` values. A value may also hold several specs
    separated by commas (the flag's older list form): a comma starts a new spec only where a
    `.py` path follows it, since a spec's own argument has commas too (`x.py:B/16,res=112`)."""
    out = []
    for value in values:
        out += re.split(r",(?=[^,=:]*\.py(?::|,|$))", value)
    return out


def load_with_overrides(spec: str, argv: list[str]) -> ml_collections.ConfigDict:
    """A config file spec with the command line's `--config.*` overrides applied: what a tool's
    `--compare=<spec>` runs, so compared configs differ only in what their specs say."""
    return apply_overrides(load_config_file(spec), argv_overrides(argv))


def apply_overrides(cfg: ml_collections.ConfigDict, overrides: dict[str, str]) -> ml_collections.ConfigDict:
    """Applies `{"model.encoder": "B/16", ...}` string overrides with the types of the existing keys."""
    for dotted, raw in overrides.items():
        *parents, leaf = dotted.split(".")
        node = cfg
        for p in parents:
            node = node[p]
        if leaf not in node:
            raise KeyError(f"Config has no key {dotted!r}.")
        old = node[leaf]
        if isinstance(old, bool):
            value = raw.lower() in ("1", "true", "yes")
        elif isinstance(old, (int, float, str)):
            value = type(old)(raw)
        else:
            raise ValueError(f"Cannot override {dotted!r} of type {type(old).__name__} from a string.")
        node[leaf] = value
    return cfg
