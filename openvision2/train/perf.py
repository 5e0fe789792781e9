"""Throughput accounting: peak FLOP rates for MFU, a whole run's model FLOPs, compiled memory."""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp

from openvision2 import recipes
from openvision2.config import stages

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


def measure_matmul_flops(n: int = 1024, dtype=jnp.float32, seconds: float = 1.0) -> float:
    """Achieved matmul FLOP/s on the default device (the CPU's 'peak'): the best of repeated
    n x n matmuls over about `seconds`, after a warm-up of the same length (a cold thread pool
    runs the first calls at half speed)."""
    a = jnp.ones((n, n), dtype)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    best, start = float("inf"), time.perf_counter()
    while time.perf_counter() - start < 2 * seconds:
        t0 = time.perf_counter()
        f(a).block_until_ready()
        if t0 - start >= seconds:
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


def train_flops(cfg) -> float:
    """Model FLOPs of one training step of `cfg` (one stage's config), as its recipe counts them."""
    return recipes.get(cfg.objective).train_flops(cfg)


def run_train_flops(cfg, steps: int | None = None) -> float:
    """Model FLOPs of a whole run (every curriculum stage), or of its first `steps` steps."""
    total = 0.0
    for s in stages.resolve(cfg):
        n = s.steps if steps is None else max(0, min(s.end, steps) - s.start)
        total += n * train_flops(s.cfg)
    return total


def compiled_bytes(memory_analysis) -> int:
    """Per-device bytes a compiled executable holds at its peak: arguments + outputs +
    temporaries, less what donation aliases (XLA's `memory_analysis()`)."""
    m = memory_analysis
    return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes)
