"""Visual-token masking: which encoder tokens reach the decoder.

OpenVision 2 keeps a random ~35% of the patch tokens per example before the
decoder (the encoder itself sees every patch). Selection happens inside the
jitted step with a static count, so shapes, and therefore batch sharding,
never change. Kept indices are sorted so tokens stay in raster order, and
they double as RoPE positions in the decoder.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def num_kept(num_tokens: int, keep_ratio: float) -> int:
    """round(keep_ratio * N), at least one token."""
    if not 0.0 < keep_ratio <= 1.0:
        raise ValueError(f"keep_ratio must be in (0, 1], got {keep_ratio}.")
    return max(1, int(round(keep_ratio * num_tokens)))


def step_key(seed: int, step) -> jax.Array:
    """The masking key of a training step: a pure function of (seed, step), so
    a resumed run draws the same masks."""
    return jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), 0x6D61736B), step)


def sample_keep_indices(key: jax.Array, batch: int, num_tokens: int, keep_ratio: float):
    """[batch, K] sorted, unique token indices, drawn independently per example.

    Returns None when keep_ratio == 1 (masking off: every token is used).
    """
    if keep_ratio >= 1.0:
        return None
    k = num_kept(num_tokens, keep_ratio)
    noise = jax.random.uniform(key, (batch, num_tokens))
    _, idx = jax.lax.top_k(noise, k)
    return jnp.sort(idx, axis=-1).astype(jnp.int32)
