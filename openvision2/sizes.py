"""Model sizes: one variant string, looked up in one table.

`"L/14"` is the ViT-L encoder with 14-pixel patches; `"L"` names a decoder size; an
encoder name without a patch (`"B"`) sizes the contrastive text tower. Explicit fields
override the table: `"mu/8,width=128,depth=4"`.
"""

from __future__ import annotations

import dataclasses
import re

# width, depth, mlp_dim, heads: the ViT sizes of the OpenVision 2 paper (arXiv 2509.01644),
# which follow big_vision's table (mu is our own 1-layer size for tests).
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

# width, depth, mlp_dim, heads. Widths and depths are OpenVision 2's; the SwiGLU hidden size is
# 8/3 x width (rounded up to a multiple of 8), which keeps the parameter count of a 4x GELU MLP,
# and heads are 64 wide.
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

_FIELDS = ("width", "depth", "mlp_dim", "heads")


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


def _parse_overrides(spec: str, kind: str) -> tuple[str, dict[str, int]]:
    """Splits `name[,key=value...]`: explicit fields override the table."""
    name, *extra = [s.strip() for s in spec.split(",") if s.strip()]
    overrides = {}
    for item in extra:
        key, _, value = item.partition("=")
        if key not in _FIELDS:
            raise ValueError(f"Unknown {kind} override {key!r} in {spec!r}; use width=, depth=, mlp_dim=, heads=.")
        overrides[key] = int(value)
    return name, overrides


def _named_size(variant: str, sizes: dict, kind: str, example: str) -> dict[str, int]:
    """Table fields of `name[,key=value...]` (no patch), with the explicit ones overriding."""
    name, overrides = _parse_overrides(variant, kind)
    if name not in sizes:
        raise ValueError(f"{kind.capitalize()} variant {variant!r} not in {sorted(sizes)}, e.g. {example!r}.")
    return {**dict(zip(_FIELDS, sizes[name])), **overrides}


def encoder_size(variant: str) -> EncoderSize:
    """`"B/16"` -> EncoderSize; `"mu/8,depth=2"` overrides table fields."""
    name_patch, overrides = _parse_overrides(variant, "encoder")
    match = re.fullmatch(r"([A-Za-z0-9]+)/(\d+)", name_patch)
    if not match or match.group(1) not in ENCODER_SIZES:
        raise ValueError(f"Encoder variant {variant!r} is not `<size>/<patch>` with size "
                         f"in {sorted(ENCODER_SIZES)}; e.g. 'B/16' or 'L/14'.")
    fields = {**dict(zip(_FIELDS, ENCODER_SIZES[match.group(1)])), **overrides}
    return EncoderSize(patch=int(match.group(2)), **fields)


def decoder_size(variant: str) -> DecoderSize:
    """`"L"` -> DecoderSize; `"mu,width=128,depth=2"` overrides table fields."""
    return DecoderSize(**_named_size(variant, DECODER_SIZES, "decoder", "L"))


def text_encoder_size(variant: str) -> EncoderSize:
    """The contrastive text tower: an encoder size name without patch, e.g. `"B"` or `"mu,width=64"`."""
    return EncoderSize(patch=0, **_named_size(variant, ENCODER_SIZES, "text encoder", "B"))


def encoder_variant(width: int, depth: int, mlp_dim: int, heads: int, patch: int) -> str:
    """The `model.encoder` string for given dimensions: a table name when one matches."""
    for name, dims in ENCODER_SIZES.items():
        if dims == (width, depth, mlp_dim, heads):
            return f"{name}/{patch}"
    return f"mu/{patch},width={width},depth={depth},mlp_dim={mlp_dim},heads={heads}"
