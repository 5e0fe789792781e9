"""What crosses a curriculum stage boundary: the parameters, fitted to the next stage's model.

The optimizer state does not cross (each stage starts a fresh one); the parameters do, and
only learned position embeddings may change shape (a new resolution is a new patch grid).
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp


def adapt_params(params, target):
    """Fits the carried-over `params` to the next stage's model, whose freshly initialised
    parameters are `target`.

    Parameters the next stage adds (a new head, soft prompts) keep their fresh values. Only
    learned position embeddings may change shape (a new resolution means a new patch grid);
    they are resized bilinearly as a 2-D grid (a CLS position, if any, lives in a separate
    parameter). Any other shape change, or a parameter the next stage has no place for, is a
    config error and raises.
    """
    def fit(name, x, t):
        if x.shape == t.shape:
            return x
        if name.endswith("pos_embedding") and x.ndim == 3 and t.ndim == 3:
            return resize_posemb(x, t.shape[1]).astype(x.dtype)
        raise ValueError(f"parameter {name} changes shape {x.shape} -> {t.shape} between stages; only the "
                         "resolution (learned position embeddings) may change within a curriculum.")

    def merge(p, t, path):
        if not isinstance(t, Mapping):
            return fit(path, p, t)
        gone = sorted(set(p) - set(t))
        if gone:
            raise ValueError(f"parameters {[f'{path}/{k}'.lstrip('/') for k in gone]} of the previous stage have no "
                             "place in the next stage's model; a stage may add parameters, not remove them.")
        return {k: merge(p[k], t[k], f"{path}/{k}".lstrip("/")) if k in p else t[k] for k in t}

    return merge(params, target, "")


def added_params(params, target) -> list[str]:
    """Paths of `target` (the next stage's parameter tree) that `params` does not have."""
    out = []

    def walk(p, t, path):
        for k, v in t.items():
            name = f"{path}/{k}".lstrip("/")
            if k not in p:
                out.append(name)
            elif isinstance(v, Mapping):
                walk(p[k], v, name)

    walk(params, target, "")
    return out


def resize_posemb(posemb, new_len: int):
    """[1, h*w, D] -> [1, new_len, D], both square grids, bilinear (antialiased when shrinking)."""
    _, old_len, width = posemb.shape
    old, new = _side(old_len), _side(new_len)
    grid = posemb.reshape(old, old, width).astype(jnp.float32)
    return jax.image.resize(grid, (new, new, width), method="bilinear").reshape(1, new * new, width)


def _side(n: int) -> int:
    side = int(round(n ** 0.5))
    if side * side != n:
        raise ValueError(f"position embedding of {n} tokens is not a square grid")
    return side
