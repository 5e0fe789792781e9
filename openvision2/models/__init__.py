"""Models: one builder per objective, from shared parts (ViT, decoder, text tower, heads).

`build_model(cfg, mode)` returns the flax module a config trains; `mode` picks the
decoder's cache mode (train | prefill | decode) for models that caption.
"""

from __future__ import annotations

import jax.numpy as jnp

from openvision2 import config as config_lib


def dtypes(cfg):
    m = cfg.model
    return dict(dtype=jnp.dtype(m.dtype), param_dtype=jnp.dtype(m.param_dtype))


def attention_impl(cfg):
    return cfg.model.get("attention_impl") or None


def build_vit(cfg):
    from openvision2.models.vit import ViT
    m = cfg.model
    return ViT(config_lib.encoder_size(m.encoder), pixel_norm=m.get("pixel_norm", "imagenet"), posemb=m.posemb, cls_token=m.cls_token, pool=m.pool,
               scan=m.scan_layers, remat_policy=m.remat_policy, approximate_gelu=m.approximate_gelu,
               attention_impl=attention_impl(cfg), **dtypes(cfg))


def build_decoder(cfg, mode: str = "train"):
    from openvision2.models.decoder import Decoder
    m = cfg.model
    return Decoder(config_lib.decoder_size(m.decoder), vocab_size=m.vocab_size, kv_heads=m.kv_heads,
                   tie_embeddings=m.tie_embeddings, rope_theta=m.rope_theta, mode=mode, scan=m.scan_layers,
                   remat_policy=m.remat_policy, attention_impl=attention_impl(cfg), **dtypes(cfg))


def build_projector(cfg):
    from openvision2.models.decoder import Projector
    return Projector(cfg.model.projector, config_lib.decoder_size(cfg.model.decoder).width, **dtypes(cfg))


def text_max_len(cfg) -> int:
    """Tokens the contrastive text tower reads."""
    return int(cfg.text.get("encoder_max_len") or cfg.text.max_len)


def build_text_encoder(cfg):
    from openvision2.data.tokenizer import get_tokenizer
    from openvision2.models.text_encoder import TextEncoder
    m = cfg.model
    return TextEncoder(config_lib.text_encoder_size(m.text_encoder), vocab_size=m.vocab_size,
                       max_len=text_max_len(cfg), eos_id=get_tokenizer(cfg.text.vocab).eos_id, scan=m.scan_layers,
                       remat_policy=m.remat_policy, approximate_gelu=m.approximate_gelu,
                       attention_impl=attention_impl(cfg), **dtypes(cfg))


def contrastive_loss_kind(cfg) -> str:
    kind = cfg.contrastive.get("loss") or ("sigmoid" if cfg.objective == "siglip" else "softmax")
    if kind not in ("softmax", "sigmoid"):
        raise ValueError(f"contrastive.loss={kind!r}: choose softmax or sigmoid (or '' for the objective's own).")
    return kind


def init_temperature(cfg) -> float:
    return float(cfg.contrastive.get("init_temperature") or (0.1 if contrastive_loss_kind(cfg) == "sigmoid" else 0.07))


def embed_dim(cfg) -> int:
    return int(cfg.model.get("embed_dim") or config_lib.encoder_size(cfg.model.encoder).width)


def build_contrastive_head(cfg):
    from openvision2.models.text_encoder import ContrastiveHead
    sigmoid = contrastive_loss_kind(cfg) == "sigmoid"
    return ContrastiveHead(embed_dim(cfg), init_scale=1.0 / init_temperature(cfg),
                           init_bias=float(cfg.contrastive.init_bias) if sigmoid else None, **dtypes(cfg))


def build_model(cfg, mode: str = "train"):
    """The model `cfg.objective` trains."""
    from openvision2.models import captioner, coca, mmgem
    config_lib.parts(cfg)  # rejects an unknown objective, naming the known ones
    kind = cfg.objective
    if kind in ("captioning", "openvision"):
        parts = dict(encoder=build_vit(cfg), decoder=build_decoder(cfg, mode), projector=build_projector(cfg))
        if kind == "captioning":
            return captioner.Captioner(**parts)
        return captioner.OpenVisionV1(**parts, text_encoder=build_text_encoder(cfg), head=build_contrastive_head(cfg))
    if kind in ("clip", "siglip"):
        return captioner.TwoTower(encoder=build_vit(cfg), text_encoder=build_text_encoder(cfg),
                                  head=build_contrastive_head(cfg))
    if kind == "coca":
        return coca.build(cfg, mode)
    return mmgem.build(cfg, mode)
