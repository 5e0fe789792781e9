"""Our ViT <-> timm `VisionTransformer`, with or without a CLS token.

`no_embed_class=True` is timm's spelling of our layout (positions are added
to the patches, the CLS token is prepended afterwards, without a position).
timm fuses q/k/v into one Linear and k/v of its MAP head into another.
`fc_norm=False` keeps the final LayerNorm inside `forward_features` for
average pooling too (timm's default would move it after the pooling), so
`forward_features` is exactly our `patch_tokens`.
"""

from __future__ import annotations

import numpy as np

from openvision2 import sizes
from openvision2.convert import table, vit
from openvision2.convert.table import CONV, FUSED_BIASES, FUSED_KERNELS, linear, norm, rule
from openvision2.models.vit import pixel_norm_stats

STEM = [
    rule("patch_embed/kernel", "patch_embed.proj.weight", CONV),
    rule("patch_embed/bias", "patch_embed.proj.bias"),
    rule(vit.POS, "pos_embed"),
]
CLS = [rule("cls", "cls_token")]
BLOCK = [
    *norm("block_{i}/ln1", "blocks.{i}.norm1"),
    rule(("block_{i}/q/kernel", "block_{i}/k/kernel", "block_{i}/v/kernel"), "blocks.{i}.attn.qkv.weight",
         FUSED_KERNELS[3]),
    rule(("block_{i}/q/bias", "block_{i}/k/bias", "block_{i}/v/bias"), "blocks.{i}.attn.qkv.bias", FUSED_BIASES[3]),
    *linear("block_{i}/o", "blocks.{i}.attn.proj"),
    *norm("block_{i}/ln2", "blocks.{i}.norm2"),
    *linear("block_{i}/fc1", "blocks.{i}.mlp.fc1"),
    *linear("block_{i}/fc2", "blocks.{i}.mlp.fc2"),
]
FINAL = norm("ln_final", "norm")
HEAD = [
    rule("map_head/probe", "attn_pool.latent"),
    *linear("map_head/q", "attn_pool.q"),
    rule(("map_head/k/kernel", "map_head/v/kernel"), "attn_pool.kv.weight", FUSED_KERNELS[2]),
    rule(("map_head/k/bias", "map_head/v/bias"), "attn_pool.kv.bias", FUSED_BIASES[2]),
    *linear("map_head/o", "attn_pool.proj"),
    *norm("map_head/ln", "attn_pool.norm"),
    *linear("map_head/fc1", "attn_pool.mlp.fc1"),
    *linear("map_head/fc2", "attn_pool.mlp.fc2"),
]
IGNORE = (r"head\.(weight|bias)", r"fc_norm\..*")  # a classifier and its norm: not part of our encoder


def rules(cfg, *, head_optional: bool = False) -> list[table.Rule]:
    depth = sizes.encoder_size(cfg.model.encoder).depth
    out = STEM + (CLS if cfg.model.cls_token else []) + table.expand(BLOCK, depth) + FINAL
    if _global_pool(cfg) == "map":
        out += [table.Rule(r.ours, r.theirs, r.transform, optional=head_optional) for r in HEAD]
    return out


def _global_pool(cfg) -> str:
    if cfg.model.cls_token:
        return "token"
    return {"gap": "avg", "map": "map", "none": ""}[cfg.model.pool]


def _mlp_ratio(width: int, mlp_dim: int) -> float:
    """The float timm turns back into `int(width * ratio) == mlp_dim` (e.g. So400m's 4304/1152)."""
    ratio = mlp_dim / width
    while int(width * ratio) < mlp_dim:
        ratio = float(np.nextafter(ratio, np.inf))
    return ratio


def model_args(cfg) -> dict:
    size = sizes.encoder_size(cfg.model.encoder)
    return {
        "img_size": cfg.image_size,
        "patch_size": size.patch,
        "embed_dim": size.width,
        "depth": size.depth,
        "num_heads": size.heads,
        "mlp_ratio": _mlp_ratio(size.width, size.mlp_dim),
        "qkv_bias": True,
        "class_token": bool(cfg.model.cls_token),
        "no_embed_class": True,
        "global_pool": _global_pool(cfg),
        "fc_norm": False,
        "act_layer": "gelu_tanh" if cfg.model.approximate_gelu else "gelu",
        "num_classes": 0,
    }


def timm_config(cfg) -> dict:
    """`config.json` for `timm.create_model("local-dir:<dir>", pretrained=True)`."""
    s = cfg.image_size
    mean, std = pixel_norm_stats(cfg.model.pixel_norm)
    return {
        "architecture": "vit_base_patch16_224",  # a registered name; model_args override every dimension
        "model_args": model_args(cfg),
        "num_features": sizes.encoder_size(cfg.model.encoder).width,
        "pretrained_cfg": {
            "input_size": [3, s, s],
            "interpolation": "bicubic",
            "crop_pct": 1.0,
            "crop_mode": "center",
            "mean": list(mean),
            "std": list(std),
            "num_classes": 0,
        },
    }


def check_timm_config(tc: dict, cfg, source: str) -> list[str]:
    args = tc.get("model_args", {})
    missing = [k for k in ("embed_dim", "depth", "num_heads", "patch_size") if k not in args]
    if missing:
        raise table.CheckpointMismatch(f"{source}: config.json model_args lack {missing}; only directories written "
                                       "by `openvision2.export --format=timm` (or with explicit model_args) load.")
    width = args["embed_dim"]
    if not args.get("no_embed_class", False) and args.get("class_token", True):
        raise table.CheckpointMismatch(f"{source}: a timm ViT whose CLS token has a position (no_embed_class=False) "
                                       "is a different function from ours; it cannot be imported exactly.")
    pool = args.get("global_pool", "token")
    return vit.check_dims(cfg, source, width=width, depth=args["depth"], heads=args["num_heads"],
                          mlp_dim=int(width * args.get("mlp_ratio", 4.0)), patch=args["patch_size"],
                          image_size=args.get("img_size"), cls_token=args.get("class_token", True),
                          approximate_gelu=args.get("act_layer") == "gelu_tanh", pool=pool)
