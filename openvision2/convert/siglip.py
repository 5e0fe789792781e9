"""Our ViT <-> HF `SiglipVisionModel` (and the vision tower of HF LLaVA).

The two are the same network when our encoder has no CLS token: patch conv
with bias, a learned position table, pre-LN blocks with biased q/k/v/o,
`gelu_pytorch_tanh` (== `jax.nn.gelu` default) or exact `gelu`, LayerNorm eps
1e-6, a final LayerNorm, and SigLIP's MAP head for `pool="map"`.
"""

from __future__ import annotations

from openvision2 import sizes
from openvision2.convert import table, vit
from openvision2.convert.table import CONV, FUSED_BIASES, FUSED_KERNELS, UNBATCH, linear, norm, rule
from openvision2.models.vit import pixel_norm_stats

PREFIX = "vision_model."  # transformers 4.57 random-initialises unprefixed keys without a word

STEM = [
    rule("patch_embed/kernel", "embeddings.patch_embedding.weight", CONV),
    rule("patch_embed/bias", "embeddings.patch_embedding.bias"),
    rule(vit.POS, "embeddings.position_embedding.weight", UNBATCH),
]
BLOCK = [
    *norm("block_{i}/ln1", "encoder.layers.{i}.layer_norm1"),
    *[r for ours, theirs in (("q", "q_proj"), ("k", "k_proj"), ("v", "v_proj"), ("o", "out_proj"))
      for r in linear(f"block_{{i}}/{ours}", f"encoder.layers.{{i}}.self_attn.{theirs}")],
    *norm("block_{i}/ln2", "encoder.layers.{i}.layer_norm2"),
    *linear("block_{i}/fc1", "encoder.layers.{i}.mlp.fc1"),
    *linear("block_{i}/fc2", "encoder.layers.{i}.mlp.fc2"),
]
FINAL = norm("ln_final", "post_layernorm")
# SigLIP's head is torch.nn.MultiheadAttention: q/k/v fused into in_proj.
HEAD = [
    rule("map_head/probe", "head.probe"),
    rule(("map_head/q/kernel", "map_head/k/kernel", "map_head/v/kernel"), "head.attention.in_proj_weight",
         FUSED_KERNELS[3]),
    rule(("map_head/q/bias", "map_head/k/bias", "map_head/v/bias"), "head.attention.in_proj_bias", FUSED_BIASES[3]),
    *linear("map_head/o", "head.attention.out_proj"),
    *norm("map_head/ln", "head.layernorm"),
    *linear("map_head/fc1", "head.mlp.fc1"),
    *linear("map_head/fc2", "head.mlp.fc2"),
]


def check_exportable(cfg):
    if cfg.model.cls_token:
        raise ValueError("SigLIP has no CLS token, so an encoder trained with model.cls_token=True cannot be a "
                         "SiglipVisionModel; export it with --format=timm (timm VisionTransformer(class_token=True)).")


def rules(cfg, *, head_optional: bool = False) -> list[table.Rule]:
    """The table for our encoder params (relative to `encoder/`), SigLIP keys relative to `vision_model.`."""
    depth = sizes.encoder_size(cfg.model.encoder).depth
    out = STEM + table.expand(BLOCK, depth) + FINAL
    if cfg.model.pool == "map" and not cfg.model.cls_token:
        out += [table.Rule(r.ours, r.theirs, r.transform, optional=head_optional) for r in HEAD]
    return out


def hf_config(cfg) -> dict:
    """`SiglipVisionConfig` fields (transformers 4.57 and 5.x)."""
    size = sizes.encoder_size(cfg.model.encoder)
    return {
        "model_type": "siglip_vision_model",
        "architectures": ["SiglipVisionModel"],
        "hidden_size": size.width,
        "intermediate_size": size.mlp_dim,
        "num_hidden_layers": size.depth,
        "num_attention_heads": size.heads,
        "num_channels": 3,
        "image_size": cfg.image_size,
        "patch_size": size.patch,
        "hidden_act": "gelu_pytorch_tanh" if cfg.model.approximate_gelu else "gelu",
        "layer_norm_eps": 1e-6,
        "attention_dropout": 0.0,
        "vision_use_head": cfg.model.pool == "map",
        "torch_dtype": "float32",
    }


def preprocessor_config(cfg) -> dict:
    """A CLIP-style processor (shorter side to S, centre crop, the model's pixel normalisation):
    our eval transform. SigLIP's own processor squashes to S x S without cropping, so it is not used."""
    s = cfg.image_size
    mean, std = pixel_norm_stats(cfg.model.pixel_norm)
    return {
        "image_processor_type": "CLIPImageProcessor",
        "do_resize": True,
        "size": {"shortest_edge": s},
        "resample": 3,  # PIL bicubic, as data/preprocess.py
        "do_center_crop": True,
        "crop_size": {"height": s, "width": s},
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": list(mean),
        "image_std": list(std),
        "do_convert_rgb": True,
    }


def check_hf_config(hf: dict, cfg, source: str) -> list[str]:
    """Compares a SiglipVisionConfig dict with our config; notes, or a mismatch error naming the fix."""
    notes = vit.check_dims(
        cfg, source, width=hf["hidden_size"], depth=hf["num_hidden_layers"], mlp_dim=hf["intermediate_size"],
        heads=hf["num_attention_heads"], patch=hf["patch_size"], image_size=hf.get("image_size"), cls_token=False,
        approximate_gelu=hf.get("hidden_act", "gelu_pytorch_tanh") in ("gelu_pytorch_tanh", "gelu_new"),
        pool="map" if hf.get("vision_use_head", True) else None)
    if abs(hf.get("layer_norm_eps", 1e-6) - 1e-6) > 1e-12:
        notes.append(f"the checkpoint's LayerNorm eps is {hf['layer_norm_eps']}, ours is 1e-6")
    return notes
