"""FLOP counting and peak-rate lookup for MFU."""

from __future__ import annotations

import dataclasses
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


def _vit_forward(enc, grid: int, cls: bool) -> float:
    """Per-example forward FLOPs of the ViT on a `grid`-patch image."""
    n = grid + int(cls)
    flops = 2 * grid * enc.patch**2 * 3 * enc.width
    return flops + enc.depth * (2 * n * (4 * enc.width**2 + 2 * enc.width * enc.mlp_dim) + 4 * n * n * enc.width)


def _decoder_forward(dec, kv_heads: int, tokens: int, context: int = 0) -> float:
    """Per-example forward FLOPs of `tokens` through LLaMA blocks (causal attention counted at
    half), each block also cross-attending to `context` tokens when given (CoCa)."""
    head_dim = dec.width // dec.heads
    kv = (kv_heads or dec.heads) * head_dim
    per_token = 2 * (2 * dec.width * dec.heads * head_dim + 2 * dec.width * kv + 3 * dec.width * dec.mlp_dim)
    layer = tokens * per_token + 2 * tokens * tokens * dec.heads * head_dim  # 4*T^2*d / 2 (causal)
    if context:
        layer += 2 * tokens * 2 * dec.width**2 + 2 * context * 2 * dec.width**2 + 4 * tokens * context * dec.width
    return dec.depth * layer


def _text_tower_forward(txt, tokens: int) -> float:
    """The causal CLIP-style text tower (GELU MLP)."""
    return txt.depth * (2 * tokens * (4 * txt.width**2 + 2 * txt.width * txt.mlp_dim) + 2 * tokens * tokens * txt.width)


def train_flops(cfg) -> float:
    """Model FLOPs of one training step (forward + backward = 3x forward), counted analytically,
    for the recipe `cfg.objective` trains.

    Counts matmuls and attention score/value products; causal attention is counted at half
    (only the lower triangle is useful work); the contrastive logits are a [B, B] matmul per
    step. Remat recomputation is not model work and is not counted, as is usual for MFU.
    """
    from openvision2 import masking, models
    from openvision2 import config as config_lib
    from openvision2.config import decoder_size, encoder_size, text_encoder_size

    m, kind, b = cfg.model, cfg.objective, cfg.batch_size
    enc = encoder_size(m.encoder)
    grid = (cfg.image_size // enc.patch) ** 2
    n = grid + int(m.cls_token)
    text = cfg.text.max_len - 1
    per_example = _vit_forward(enc, grid, m.cls_token)
    per_batch = 0.0
    if kind in config_lib.CONTRASTIVE_OBJECTIVES:
        per_batch += 2 * b * b * models.embed_dim(cfg)  # the [B, B] similarity matmul
    if "text_encoder" in config_lib.parts(cfg):
        per_example += _text_tower_forward(text_encoder_size(m.text_encoder), models.text_max_len(cfg))
    if kind in config_lib.MASKING_OBJECTIVES:
        dec = decoder_size(m.decoder)
        k = n if cfg.keep_ratio >= 1.0 else masking.num_kept(n, cfg.keep_ratio)
        per_example += 2 * k * enc.width * dec.width + (2 * k * dec.width**2 if m.projector == "mlp" else 0)
        per_example += _decoder_forward(dec, m.kv_heads, k + text) + 2 * text * dec.width * m.vocab_size
    elif kind == "coca":
        dec = decoder_size(m.decoder)
        q = int(cfg.coca.caption_queries)
        uni = int(cfg.coca.unimodal_layers or dec.depth // 2)
        pool = lambda queries: 2 * (queries + 3 * n) * enc.width**2 + 4 * queries * n * enc.width
        per_example += pool(1) + pool(q) + 2 * q * enc.width * dec.width
        scale = lambda depth: dataclasses.replace(dec, depth=depth)
        per_example += _decoder_forward(scale(uni), m.kv_heads, text + 1)
        per_example += _decoder_forward(scale(dec.depth - uni), m.kv_heads, text, context=q)
        per_example += 2 * text * dec.width * m.vocab_size
    elif kind == "mmgem":
        dec = decoder_size(m.decoder)
        g = cfg.mmgem
        region = bool(g.region_task)
        tokens = g.roi_grid**2 if region else g.pool_grid**2
        prefix = tokens + 1 + (g.soft_prompts if region else 0)
        per_example += 2 * tokens * enc.width * dec.width + 2 * enc.width * models.embed_dim(cfg)
        per_example += _decoder_forward(dec, m.kv_heads, prefix + text) + 2 * text * dec.width * m.vocab_size
        per_example += _decoder_forward(dec, m.kv_heads, text + 1)  # the [EMB] pass
    return 3.0 * (b * per_example + per_batch)


def run_train_flops(cfg, steps: int | None = None) -> float:
    """Model FLOPs of a whole run (every curriculum stage), or of its first `steps` steps."""
    from openvision2 import stages

    total = 0.0
    for s in stages.resolve(cfg):
        n = s.steps if steps is None else max(0, min(s.end, steps) - s.start)
        total += n * train_flops(s.cfg)
    return total
