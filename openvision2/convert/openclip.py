"""OpenVision (v1) open_clip-format vision towers -> our ViT (import only).

OpenVision's open_clip checkpoints (`visual.*`) are ViTs with a CLS token and
no `ln_pre`. Three differences from our layout, resolved in `canonical`:
- `conv1` has no bias: imported as a zero bias (exactly the same function);
- one position table covers CLS + patches, and the CLS row is added to the
  CLS token, so our `cls` is `class_embedding + positional_embedding[0]` and
  our patch table is `positional_embedding[1:]` (the same function again);
- `proj` maps to the contrastive embedding space, which our encoder has no
  place for: it is ignored (and reported).
open_clip LayerNorms use eps 1e-5 (ours 1e-6) and, unless the model was
built with QuickGELU, exact GELU; the report notes both.
"""

from __future__ import annotations

import re

import numpy as np

from openvision2.convert import table, vit
from openvision2.convert.table import CONV, FUSED_BIASES, FUSED_KERNELS, UNBATCH, Transform, linear, norm, rule

PREFIX = "visual."
_CLS, _POS, _BIAS = "cls_token_with_position", "patch_positions", "conv1.bias"

STEM = [
    rule("patch_embed/kernel", "conv1.weight", CONV),
    rule("patch_embed/bias", _BIAS),
    rule("cls", _CLS, Transform(lambda x: x[0, 0], lambda x: (x[None, None],))),
    rule(vit.POS, _POS, UNBATCH),
]
BLOCK = [
    *norm("block_{i}/ln1", "transformer.resblocks.{i}.ln_1"),
    rule(("block_{i}/q/kernel", "block_{i}/k/kernel", "block_{i}/v/kernel"),
         "transformer.resblocks.{i}.attn.in_proj_weight", FUSED_KERNELS[3]),
    rule(("block_{i}/q/bias", "block_{i}/k/bias", "block_{i}/v/bias"),
         "transformer.resblocks.{i}.attn.in_proj_bias", FUSED_BIASES[3]),
    *linear("block_{i}/o", "transformer.resblocks.{i}.attn.out_proj"),
    *norm("block_{i}/ln2", "transformer.resblocks.{i}.ln_2"),
    *linear("block_{i}/fc1", "transformer.resblocks.{i}.mlp.c_fc"),
    *linear("block_{i}/fc2", "transformer.resblocks.{i}.mlp.c_proj"),
]
FINAL = norm("ln_final", "ln_post")
IGNORE = (r"proj",)


def is_openclip(keys) -> bool:
    return any(k.startswith(PREFIX + "conv1.") or k.startswith(PREFIX + "transformer.resblocks.") for k in keys)


def rules(depth: int) -> list[table.Rule]:
    return STEM + table.expand(BLOCK, depth) + FINAL


def canonical(tensors, report: table.Report) -> tuple[dict, dict]:
    """The `visual.*` tensors in the table's terms, and the dimensions they imply."""
    t = {k[len(PREFIX):]: np.asarray(v) for k, v in tensors.items() if k.startswith(PREFIX)}
    if "ln_pre.weight" in t:
        raise table.CheckpointMismatch(f"{report.source} applies a LayerNorm before the transformer (ln_pre), "
                                       "which our ViT does not have; only OpenVision-style towers (no_ln_pre) import.")
    if "conv1.weight" not in t or "positional_embedding" not in t or "class_embedding" not in t:
        raise table.CheckpointMismatch(f"{report.source}: not an open_clip ViT vision tower (needs visual.conv1.weight, "
                                       "visual.class_embedding and visual.positional_embedding).")
    conv, pos = t["conv1.weight"], t.pop("positional_embedding")
    if _BIAS not in t:
        t[_BIAS] = np.zeros(conv.shape[0], conv.dtype)
        report.notes.append("open_clip's patch conv has no bias: imported with a zero bias (the same function)")
    t[_CLS] = t.pop("class_embedding") + pos[0]
    t[_POS] = pos[1:]
    report.notes.append("open_clip LayerNorm eps is 1e-5 (ours 1e-6) and its GELU is exact unless built with "
                        "QuickGELU: set --config.model.approximate_gelu=False for the closest function")
    layers = {int(m.group(1)) for k in t if (m := re.match(r"transformer\.resblocks\.(\d+)\.", k))}
    width, patch = conv.shape[0], conv.shape[-1]
    dims = dict(width=width, depth=len(layers), patch=patch,
                mlp_dim=t["transformer.resblocks.0.mlp.c_fc.weight"].shape[0] if layers else 0)
    return t, dims
