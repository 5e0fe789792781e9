"""Building blocks shared by the encoder and the decoder.

Every parameter is created with logical axis names (`embed`, `mlp`, `heads`,
`kv`, `vocab`, `layers`) so one rule table in the config decides how it is
sharded. Attention is written from 2-D Dense projections plus
`jax.nn.dot_product_attention`: 3-D `DenseGeneral` kernels break logical
sharding under `jax.set_mesh` (flax#3892), and 2-D q/k/v/o kernels map one to
one onto the PyTorch layouts we export to.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.ad_checkpoint import checkpoint_name

Dtype = Any

REMAT_POLICIES = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    # Keeps the projected q/k/v and the attention output (tagged in `project_heads` and
    # `multihead_attention` / the decoder block) and recomputes the rest.
    "save_qkv_out": jax.checkpoint_policies.save_only_these_names("qkv", "attn_out"),
}


def remat(module_cls, policy: str):
    """Wraps a block class for rematerialisation; `policy="none"` keeps everything."""
    if policy == "none":
        return module_cls
    if policy not in REMAT_POLICIES:
        raise ValueError(f"Unknown remat policy {policy!r}; choose none or one of {sorted(REMAT_POLICIES)}.")
    return nn.remat(module_cls, policy=REMAT_POLICIES[policy], prevent_cse=False)


def constrain(x, axes):
    """Activation sharding hint by logical names (a no-op outside a mesh)."""
    return nn.with_logical_constraint(x, axes)


def dense(features: int, axes: tuple[str | None, str | None], *, use_bias: bool, dtype, param_dtype,
          name: str, kernel_init=nn.initializers.xavier_uniform()):
    return nn.Dense(
        features,
        use_bias=use_bias,
        dtype=dtype,
        param_dtype=param_dtype,
        kernel_init=nn.with_logical_partitioning(kernel_init, axes),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), (axes[1],)),
        name=name,
    )


def layer_norm(dtype, param_dtype, name: str, eps: float = 1e-6):
    return nn.LayerNorm(
        epsilon=eps,
        dtype=dtype,
        param_dtype=param_dtype,
        scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(), ("norm",)),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("norm",)),
        name=name,
    )


class RMSNorm(nn.Module):
    """LLaMA RMSNorm: statistics in float32, scale in param_dtype."""

    eps: float = 1e-5
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones_init(), ("norm",)),
                           (x.shape[-1],), self.param_dtype)
        x32 = x.astype(jnp.float32)
        x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return (x32 * scale.astype(jnp.float32)).astype(self.dtype)


def posemb_sincos_2d(h: int, w: int, width: int, temperature: float = 10_000.0) -> np.ndarray:
    """Fixed 2-D sin-cos position embeddings, [h*w, width], row-major over the grid.

    Recomputed for any grid, so changing resolution needs no resampling.
    """
    if width % 4:
        raise ValueError(f"sin-cos position embeddings need width % 4 == 0, got {width}.")
    y, x = np.mgrid[:h, :w]
    omega = 1.0 / temperature ** (np.arange(width // 4) / (width // 4 - 1 or 1))
    y = y.reshape(-1)[:, None] * omega[None]
    x = x.reshape(-1)[:, None] * omega[None]
    return np.concatenate([np.sin(x), np.cos(x), np.sin(y), np.cos(y)], axis=1).astype(np.float32)


def rope(x, positions, theta: float):
    """Rotary embedding (HF LLaMA's rotate-half layout). x [B,T,H,D], positions [B,T]."""
    half = x.shape[-1] // 2
    freq = 1.0 / theta ** (jnp.arange(half, dtype=jnp.float32) / half)
    angle = positions.astype(jnp.float32)[..., None] * freq  # [B,T,half]
    sin = jnp.sin(angle)[:, :, None, :]
    cos = jnp.cos(angle)[:, :, None, :]
    x1, x2 = x[..., :half].astype(jnp.float32), x[..., half:].astype(jnp.float32)
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x.dtype)


def attention(q, k, v, *, causal: bool, implementation: str | None, mask=None):
    """q [B,T,H,D], k/v [B,S,K,D] with H % K == 0 (grouped-query attention)."""
    if implementation == "xla":
        implementation = None  # let JAX pick XLA's lowering on every backend
    return jax.nn.dot_product_attention(q, k, v, is_causal=causal, mask=mask, implementation=implementation)


def project_heads(x, heads: int, head_dim: int, axes: tuple[str | None, str | None], *, use_bias: bool, name: str,
                  dtype, param_dtype):
    """A Dense projection split into heads: [B, T, D] -> [B, T, heads, head_dim].

    Called from inside a compact module, the Dense is that module's submodule `name`, so
    parameter paths stay `<module>/<name>/kernel` whichever layer uses it.
    """
    y = dense(heads * head_dim, axes, use_bias=use_bias, name=name, dtype=dtype, param_dtype=param_dtype)(x)
    return checkpoint_name(y.reshape(*y.shape[:-1], heads, head_dim), "qkv")


def merge_heads(y, width: int, *, use_bias: bool, name: str, dtype, param_dtype):
    """The output projection `name` of attention heads: [B, T, H, hd] -> [B, T, width]."""
    return dense(width, ("heads", "embed"), use_bias=use_bias, name=name, dtype=dtype,
                 param_dtype=param_dtype)(y.reshape(*y.shape[:-2], -1))


def multihead_attention(queries, context, *, width: int, heads: int, use_bias: bool, dtype, param_dtype,
                        causal: bool = False, implementation: str | None = None, names=("q", "k", "v", "o")):
    """Attention of `queries` [B, T, D] over `context` [B, S, D] with its own q/k/v/o projections
    (`names`), all `width` wide: self-attention when both are the same tokens, cross-attention
    (poolers, CoCa's multimodal layers) otherwise. No positions are added here."""
    kw = dict(use_bias=use_bias, dtype=dtype, param_dtype=param_dtype)
    head_dim = width // heads
    q = project_heads(queries, heads, head_dim, ("embed", "heads"), name=names[0], **kw)
    k = project_heads(context, heads, head_dim, ("embed", "heads"), name=names[1], **kw)
    v = project_heads(context, heads, head_dim, ("embed", "heads"), name=names[2], **kw)
    y = checkpoint_name(attention(q, k, v, causal=causal, implementation=implementation), "attn_out")
    return merge_heads(y, width, name=names[3], **kw)
