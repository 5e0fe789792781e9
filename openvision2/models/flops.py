"""Forward FLOPs of the model parts, per example, counted analytically.

Matmuls and attention score/value products are counted (2 FLOPs per multiply-add); causal
attention is counted at half, since only the lower triangle is useful work. A recipe adds up
the parts it runs (and x3 for forward + backward) in its `train_flops`.
"""

from __future__ import annotations

from openvision2.sizes import DecoderSize, EncoderSize


def vit(enc: EncoderSize, grid: int, cls: bool) -> float:
    """The ViT on a `grid`-patch image (plus a CLS token if `cls`)."""
    n = grid + int(cls)
    flops = 2 * grid * enc.patch**2 * 3 * enc.width
    return flops + enc.depth * (2 * n * (4 * enc.width**2 + 2 * enc.width * enc.mlp_dim) + 4 * n * n * enc.width)


def decoder(dec: DecoderSize, kv_heads: int, tokens: int, context: int = 0) -> float:
    """`tokens` through LLaMA blocks (causal attention at half), each block also cross-attending
    to `context` tokens when given (CoCa's multimodal layers)."""
    head_dim = dec.width // dec.heads
    kv = (kv_heads or dec.heads) * head_dim
    per_token = 2 * (2 * dec.width * dec.heads * head_dim + 2 * dec.width * kv + 3 * dec.width * dec.mlp_dim)
    layer = tokens * per_token + 2 * tokens * tokens * dec.heads * head_dim  # 4*T^2*d / 2 (causal)
    if context:
        layer += 2 * tokens * 2 * dec.width**2 + 2 * context * 2 * dec.width**2 + 4 * tokens * context * dec.width
    return dec.depth * layer


def text_tower(txt: EncoderSize, tokens: int) -> float:
    """The causal CLIP-style text tower (GELU MLP)."""
    return txt.depth * (2 * tokens * (4 * txt.width**2 + 2 * txt.width * txt.mlp_dim) + 2 * tokens * tokens * txt.width)


def lm_head(width: int, vocab_size: int, tokens: int) -> float:
    """The vocabulary projection of `tokens` predicted tokens."""
    return 2 * tokens * width * vocab_size


def attention_pool(width: int, queries: int, tokens: int) -> float:
    """An attentional pooler: `queries` learned queries over `tokens` (q/k/v/o projections, scores, values)."""
    return 2 * (queries + 3 * tokens) * width**2 + 4 * queries * tokens * width
