"""Run-level defaults, the recipe's own keys, and curriculum stages.

`base_config(recipe)` holds every run-level key (at OpenVision 2's defaults: the paper,
arXiv 2509.01644, and its public training scripts) plus the keys the recipe owns, which only
the recipe declares (`Recipe.defaults`). Config files in `configs/` start from it and
override what they change.
"""

from __future__ import annotations

import ml_collections

from openvision2 import recipes
from openvision2.evals import registry as eval_registry


def run_config() -> ml_collections.ConfigDict:
    """The keys every run has, whatever its recipe."""
    c = ml_collections.ConfigDict()
    c.objective = recipes.DEFAULT
    c.seed = 0
    c.total_steps = 1000
    c.batch_size = 256
    c.eval_batch_size = 0  # 0 = batch_size
    c.grad_accum_steps = 1  # micro-batches per step (token-weighted, same maths)
    c.image_size = 224
    c.keep_ratio = 0.35  # visual tokens that reach the decoder (recipes that drop tokens; 1.0 = all)
    c.log_every = 50
    c.eval_every = 0  # the held-out eval (data.eval_path): 0 = only at the end
    # `evals`: named evaluators (openvision2/evals/), each {type, every, data, ...}: the recipe's
    # defaults (`Recipe.default_evals`), completed with their type's keys; see `add_eval`.
    c.run_evals = True  # False: training runs only the held-out eval (openvision2.evaluate runs `evals`)
    c.checkpoint_every = 1000
    c.keep_checkpoints = 2
    c.keep_every = 0
    c.async_checkpoints = True
    c.profile_steps = 0  # trace this many steps after the first compile into <workdir>/profile (jax.profiler)
    # Weights & Biases beside metrics.jsonl and TensorBoard (pip install -e ".[wandb]"): "" project = off;
    # mode "" = wandb's own (online), "offline" = local files for `wandb sync`.
    c.wandb = ml_collections.ConfigDict({"project": "", "entity": "", "mode": ""})
    # Weights to start a fresh run from (ignored on resume); see openvision2/convert/init.py.
    c.init_from = ""  # encoder: HF SigLIP dir, timm dir/state dict, open_clip checkpoint
    c.init_decoder_from = ""  # decoder: HF Llama dir or .gguf (set text.vocab to its tokenizer)

    # Curriculum (see config/stages.py): named stages of overrides run in `stage_order`;
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
    # Regexes over parameter paths like "encoder/block_0/q/kernel" (see train/optim.py).
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


def base_config(recipe: str = recipes.DEFAULT) -> ml_collections.ConfigDict:
    """Every key a config of `recipe` may set, at its defaults."""
    return set_recipe(run_config(), recipe)


def set_recipe(c: ml_collections.ConfigDict, name: str) -> ml_collections.ConfigDict:
    """Makes `c` train recipe `name`: sets `objective`, drops the keys only the previous recipe
    read and adds the new recipe's keys at their defaults. Keys both recipes read keep their
    value (e.g. `caption_loss_weight` from OpenVision 2 to OpenVision v1)."""
    new = recipes.get(name).defaults()
    with c.unlocked():
        if c.get("objective"):
            _drop_missing(c, recipes.get(c.objective).defaults(), new)
        c.objective = name
        _add_missing(c, new)
        c.evals = recipe_evals(name)
    return c


def eval_entry(type_name: str, **options) -> ml_collections.ConfigDict:
    """One `config.evals` entry: every key of its type at its default, then `options`."""
    entry = ml_collections.ConfigDict(eval_registry.defaults(type_name))
    for key, value in options.items():
        if key not in entry:
            raise KeyError(f"evaluator type {type_name!r} has no key {key!r}; it has {sorted(entry)}.")
        entry[key] = value
    return entry


def add_eval(c: ml_collections.ConfigDict, name: str, type_name: str, **options) -> None:
    """Adds (or replaces) evaluator `name`: `add_eval(c, "imagenet", "zeroshot", data="/data/val")`."""
    with c.unlocked():
        c.evals[name] = eval_entry(type_name, **options)


def recipe_evals(name: str) -> ml_collections.ConfigDict:
    """The evaluators a run of recipe `name` has unless its config says otherwise."""
    return ml_collections.ConfigDict({k: eval_entry(v.pop("type"), **v)
                                      for k, v in recipes.get(name).default_evals().items()})


def complete(cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Adds (in place) every key `cfg` lacks at its default: the recipe's keys (a config that set
    `objective` without `set_recipe`, `--config.objective=...` on a command line) and run-level
    keys newer than the config (a run's config.json from before they existed). Everything reads
    a completed config, so each default is written here and in the recipe, nowhere else."""
    with cfg.unlocked():
        _add_missing(cfg, run_config().to_dict())
        _add_missing(cfg, recipes.get(cfg.objective).defaults())
        if "evals" not in cfg:  # a config that removed evaluators keeps them removed
            cfg.evals = recipe_evals(cfg.objective)
        for entry in cfg.evals.values():
            _add_missing(entry, eval_registry.defaults(entry.type))
    return cfg


def _add_missing(node, defaults: dict) -> None:
    for key, value in defaults.items():
        if isinstance(value, dict):
            if key not in node:
                node[key] = ml_collections.ConfigDict()
            _add_missing(node[key], value)
        elif key not in node:
            node[key] = value


def _drop_missing(node, old: dict, new: dict) -> None:
    """Removes from `node` the keys `old` declares and `new` does not, and a block left empty."""
    for key, value in old.items():
        if key not in node:
            continue
        if isinstance(value, dict):
            _drop_missing(node[key], value, new.get(key) if isinstance(new.get(key), dict) else {})
            if not node[key] and key not in new:
                del node[key]
        elif key not in new:
            del node[key]


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
    # The generated shapes sets measure nothing about a web-scale encoder: add real ones
    # (`add_eval`); the real-image linear probes stay.
    for name in [k for k, v in c.evals.items() if v.data.startswith("shapes_")]:
        del c.evals[name]
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
