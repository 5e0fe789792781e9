"""The model parts recipes share, built from a config: the ViT every recipe has, the LLaMA
decoder and its projector, the CLIP-style text tower and the contrastive head; and the
config blocks that come with them."""

from __future__ import annotations

import jax.numpy as jnp

from openvision2 import sizes
from openvision2.data import pipeline
from openvision2.models import flops
from openvision2.models.decoder import Decoder, Projector
from openvision2.models.text_encoder import ContrastiveHead, TextEncoder
from openvision2.models.vit import ViT
from openvision2.recipes import losses

# Recipes with a caption decoder: the CE weight (OpenVision 2 weights its only loss 2) and z-loss.
CAPTION_DEFAULTS = {"caption_loss_weight": 2.0, "z_loss": 0.0}

# Recipes with a learnable-temperature image-text loss.
CONTRASTIVE_DEFAULTS = {"contrastive": {
    "loss": "",  # "" = the recipe's own (sigmoid for siglip, softmax otherwise) | softmax | sigmoid
    "weight": 1.0,  # total = weight * contrastive + caption_loss_weight * caption (CE)
    "init_temperature": 0.0,  # 0 = the loss's default: softmax 0.07 (CLIP), sigmoid 0.1 (SigLIP)
    "min_temperature": 0.01,  # the learnable temperature is clamped here (logit scale <= 100)
    "init_bias": -10.0,  # sigmoid loss: initial learnable logit bias
    "chunked": True,  # sigmoid loss: ring-chunked over devices, per-device memory O(b^2) not O(b*B)
}}

# The shared image-text embedding width (0 = the encoder's width).
EMBED_DEFAULTS = {"model": {"embed_dim": 0}}

# Recipes with a CLIP-style text tower reading `text_con`, a second view of the record.
TEXT_TOWER_DEFAULTS = {
    "model": {"text_encoder": "B", "embed_dim": 0},  # text tower size: encoder table names, no patch
    "text": {"encoder_max_len": 0},  # tokens the text tower reads (0 = text.max_len)
    # "field" = the first caption field; "random_sentence" = one sentence of it (CLIPS's partial
    # captions); "same" = whatever the decoder reads.
    "data": {"contrastive_caption_mode": "field"},
}


def merged(*blocks: dict) -> dict:
    """Default blocks combined, nested dicts key by key."""
    out: dict = {}
    for block in blocks:
        for key, value in block.items():
            out[key] = merged(out.get(key, {}), value) if isinstance(value, dict) else value
    return out


def dtypes(cfg) -> dict:
    m = cfg.model
    return dict(dtype=jnp.dtype(m.dtype), param_dtype=jnp.dtype(m.param_dtype))


def attention_impl(cfg) -> str | None:
    return cfg.model.attention_impl or None


def vit(cfg) -> ViT:
    m = cfg.model
    return ViT(sizes.encoder_size(m.encoder), pixel_norm=m.pixel_norm, posemb=m.posemb,
               cls_token=m.cls_token, pool=m.pool, scan=m.scan_layers, remat_policy=m.remat_policy,
               approximate_gelu=m.approximate_gelu, attention_impl=attention_impl(cfg), **dtypes(cfg))


def decoder(cfg, mode: str = "train") -> Decoder:
    m = cfg.model
    return Decoder(sizes.decoder_size(m.decoder), vocab_size=m.vocab_size, kv_heads=m.kv_heads,
                   tie_embeddings=m.tie_embeddings, rope_theta=m.rope_theta, mode=mode, scan=m.scan_layers,
                   remat_policy=m.remat_policy, attention_impl=attention_impl(cfg), **dtypes(cfg))


def projector(cfg) -> Projector:
    return Projector(cfg.model.projector, sizes.decoder_size(cfg.model.decoder).width, **dtypes(cfg))


def prefix_captioner(cfg, mode: str = "train") -> dict:
    """The parts of a prefix captioner: encoder, projector, decoder."""
    return dict(encoder=vit(cfg), decoder=decoder(cfg, mode), projector=projector(cfg))


def text_max_len(cfg) -> int:
    """Tokens the contrastive text tower reads."""
    return int(cfg.text.encoder_max_len or cfg.text.max_len)


def text_encoder(cfg, eos_id: int) -> TextEncoder:
    m = cfg.model
    return TextEncoder(sizes.text_encoder_size(m.text_encoder), vocab_size=m.vocab_size, max_len=text_max_len(cfg),
                       eos_id=eos_id, scan=m.scan_layers, remat_policy=m.remat_policy,
                       approximate_gelu=m.approximate_gelu, attention_impl=attention_impl(cfg), **dtypes(cfg))


def embed_dim(cfg) -> int:
    return int(cfg.model.embed_dim or sizes.encoder_size(cfg.model.encoder).width)


def contrastive_head(cfg, own_loss: str) -> ContrastiveHead:
    kind = losses.loss_kind(cfg, own_loss)
    return ContrastiveHead(embed_dim(cfg), init_scale=1.0 / losses.init_temperature(cfg, kind),
                           init_bias=float(cfg.contrastive.init_bias) if kind == "sigmoid" else None, **dtypes(cfg))


def text_tower_views(cfg) -> pipeline.Views:
    """`text_con`: the text tower's own pick from the record's caption fields."""
    return pipeline.Views(contrastive=cfg.data.contrastive_caption_mode,
                          contrastive_fields=pipeline.caption_fields(cfg.data.caption_field),
                          contrastive_len=text_max_len(cfg))


def encoder_flops(cfg) -> tuple[float, int]:
    """(per-example forward FLOPs of the ViT, the number of tokens it outputs)."""
    enc = sizes.encoder_size(cfg.model.encoder)
    grid = (cfg.image_size // enc.patch) ** 2
    return flops.vit(enc, grid, cfg.model.cls_token), grid + int(cfg.model.cls_token)


def step_flops(cfg, per_example: float, per_batch: float = 0.0) -> float:
    """Training FLOPs of one step: forward + backward = 3x forward, over the global batch."""
    return 3.0 * (cfg.batch_size * per_example + per_batch)


def similarity_flops(cfg) -> float:
    """The [B, B] image-text similarity matmul of a contrastive loss, per step."""
    return 2 * cfg.batch_size * cfg.batch_size * embed_dim(cfg)
