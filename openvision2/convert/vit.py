"""What every ViT format shares: the position table, config checks and the fix to suggest."""

from __future__ import annotations

import numpy as np

from openvision2 import sizes
from openvision2.convert import table
from openvision2.models import layers

POS = "pos_embedding"  # our learned position table, [1, N, D]


def grid(cfg) -> int:
    size = sizes.encoder_size(cfg.model.encoder)
    if cfg.image_size % size.patch:
        raise ValueError(f"image_size={cfg.image_size} is not a multiple of the patch size {size.patch}.")
    return cfg.image_size // size.patch


def flat_encoder(encoder_params, cfg) -> dict[str, np.ndarray]:
    """Our encoder params, unrolled, with the position table made explicit.

    Fixed sin-cos embeddings are not parameters, but every target stores a
    learned table, so the table for the training resolution is exported as one.
    """
    flat = table.flatten(encoder_params)
    if cfg.model.posemb == "sincos":
        g = grid(cfg)
        flat[POS] = layers.posemb_sincos_2d(g, g, sizes.encoder_size(cfg.model.encoder).width)[None]
    return flat


def absorb_posemb(loaded: dict[str, np.ndarray], cfg, report: table.Report):
    """Drops an imported position table when the model's is fixed sin-cos, saying whether that changes anything."""
    if cfg.model.posemb != "sincos" or POS not in loaded:
        return
    pos = loaded.pop(POS)
    g = grid(cfg)
    fixed = layers.posemb_sincos_2d(g, g, pos.shape[-1])[None]
    report.loaded.remove(POS)
    if not np.allclose(pos, fixed, atol=1e-6):
        report.notes.append("the checkpoint's learned position embeddings were dropped: this model uses fixed "
                            "sin-cos ones (set --config.model.posemb=learned to load them)")


def check_dims(cfg, source: str, *, width, depth, mlp_dim, heads, patch, image_size=None, cls_token=None,
               approximate_gelu=None, pool=None) -> list[str]:
    """Config overrides that make our model match a checkpoint's; raises if the architecture differs.

    Returns notes for differences that load but change the function (activation, resolution).
    """
    size = sizes.encoder_size(cfg.model.encoder)
    fixes, notes = [], []
    if (size.width, size.depth, size.mlp_dim, size.heads, size.patch) != (width, depth, mlp_dim, heads, patch):
        fixes.append(f"--config.model.encoder='{sizes.encoder_variant(width, depth, mlp_dim, heads, patch)}'")
    if cls_token is not None and bool(cls_token) != bool(cfg.model.cls_token):
        fixes.append(f"--config.model.cls_token={bool(cls_token)}")
    if pool == "map" and cfg.model.pool != "map" and not cfg.model.cls_token:
        notes.append("the checkpoint has a MAP pooling head that this model does not use (model.pool="
                     f"{cfg.model.pool!r}); set --config.model.pool=map to load it")
    if fixes:
        raise table.CheckpointMismatch(f"{source} is a different encoder architecture; set {' '.join(fixes)}.")
    if approximate_gelu is not None and bool(approximate_gelu) != bool(cfg.model.approximate_gelu):
        notes.append(f"the checkpoint was trained with {'tanh' if approximate_gelu else 'exact (erf)'} GELU; set "
                     f"--config.model.approximate_gelu={bool(approximate_gelu)} to compute the same function")
    if image_size is not None and image_size != cfg.image_size:
        notes.append(f"the checkpoint was trained at {image_size} px, this run uses {cfg.image_size} px")
    return notes
