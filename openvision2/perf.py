"""FLOP counting and peak-rate lookup for MFU."""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp

# Dense bf16 peak FLOP/s per chip (vendor datasheets).
PEAK_FLOPS = {
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,
    "TPU v5e": 197e12,
    "TPU v5p": 459e12,
    "TPU v5": 459e12,
    "TPU v6 lite": 918e12,
    "TPU v6e": 918e12,
    "NVIDIA H100 80GB HBM3": 989e12,
    "NVIDIA A100-SXM4-80GB": 312e12,
    "NVIDIA A100-SXM4-40GB": 312e12,
}


def measure_matmul_flops(n: int = 1024, dtype=jnp.float32, repeats: int = 5) -> float:
    """Achieved matmul FLOP/s on the default device (the CPU's 'peak')."""
    a = jnp.ones((n, n), dtype)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        f(a).block_until_ready()
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def peak_flops_per_device(device=None) -> tuple[float, str]:
    """(peak FLOP/s, how it was obtained) for one device."""
    device = device or jax.devices()[0]
    kind = device.device_kind
    if kind in PEAK_FLOPS:
        return PEAK_FLOPS[kind], "datasheet"
    for name, value in PEAK_FLOPS.items():
        if kind.startswith(name):
            return value, "datasheet"
    return measure_matmul_flops(), "measured_matmul"


def captioner_train_flops(cfg) -> float:
    """Model FLOPs of one training step (forward + backward = 3x forward), counted analytically.

    Counts matmuls and attention score/value products; causal attention in the
    decoder is counted at half (only the lower triangle is useful work). Remat
    recomputation is not model work and is not counted, as is usual for MFU.
    """
    from openvision2 import masking
    from openvision2.config import decoder_size, encoder_size

    enc, dec = encoder_size(cfg.model.encoder), decoder_size(cfg.model.decoder)
    grid = (cfg.image_size // enc.patch) ** 2
    n = grid + int(cfg.model.cls_token)
    encoder = 2 * grid * enc.patch**2 * 3 * enc.width
    encoder += enc.depth * (2 * n * (4 * enc.width**2 + 2 * enc.width * enc.mlp_dim) + 4 * n * n * enc.width)
    k = n if cfg.keep_ratio >= 1.0 else masking.num_kept(n, cfg.keep_ratio)
    proj = 2 * k * enc.width * dec.width
    if cfg.model.projector == "mlp":
        proj += 2 * k * dec.width**2
    text = cfg.text.max_len - 1
    t = k + text
    head_dim = dec.width // dec.heads
    kv = (cfg.model.kv_heads or dec.heads) * head_dim
    per_token = 2 * (2 * dec.width * dec.heads * head_dim + 2 * dec.width * kv + 3 * dec.width * dec.mlp_dim)
    decoder = dec.depth * (t * per_token + 2 * t * t * dec.heads * head_dim)  # 4*T^2*d / 2 (causal)
    decoder += 2 * text * dec.width * cfg.model.vocab_size
    return 3.0 * cfg.batch_size * (encoder + proj + decoder)


def run_train_flops(cfg, steps: int | None = None) -> float:
    """Model FLOPs of a whole run (every curriculum stage), or of its first `steps` steps."""
    from openvision2 import stages

    total = 0.0
    for s in stages.resolve(cfg):
        n = s.steps if steps is None else max(0, min(s.end, steps) - s.start)
        total += n * captioner_train_flops(s.cfg)
    return total
