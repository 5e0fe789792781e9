"""Contrastive image-text losses (CLIP softmax, SigLIP sigmoid).

The building blocks of the contrastive recipes (OpenVision v1 / CLIPS, CLIP,
SigLIP, CoCa, MM-GEM). Embeddings are L2-normalised here; `log_scale` is the
learnable log-temperature (logits = exp(log_scale) * cos) and `bias` the
SigLIP logit bias.

`siglip_loss_chunked` computes the sigmoid loss over a batch sharded along
the mesh's batch axes without ever materialising the global [B, B] logits:
each device scores its images against one chunk of texts at a time and
passes the text chunk round a ring (`ppermute`), so per-device memory is
[b, b] (b = local batch) however many devices there are.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from openvision2.models import contrastive_loss_kind


def _normalise(x):
    x = x.astype(jnp.float32)
    return x * jax.lax.rsqrt(jnp.sum(x * x, axis=-1, keepdims=True) + 1e-12)


def clip_loss(img, txt, log_scale, positives=None):
    """Symmetric softmax InfoNCE: mean of image->text and text->image cross-entropy.

    `positives` [B, B] bool marks the pairs that match (default: the diagonal); each row's
    (and column's) target is then uniform over its positives, which is the plain loss when
    the only positive is the diagonal.
    """
    img, txt = _normalise(img), _normalise(txt)
    logits = jnp.exp(log_scale) * img @ txt.T
    if positives is None:
        labels = jnp.arange(img.shape[0])
        i2t = -jnp.take_along_axis(jax.nn.log_softmax(logits, axis=1), labels[:, None], axis=1).mean()
        t2i = -jnp.take_along_axis(jax.nn.log_softmax(logits, axis=0), labels[None, :], axis=0).mean()
        return 0.5 * (i2t + t2i)
    target = positives.astype(jnp.float32)
    i2t = -jnp.sum(target / target.sum(1, keepdims=True) * jax.nn.log_softmax(logits, axis=1), axis=1).mean()
    t2i = -jnp.sum(target / target.sum(0, keepdims=True) * jax.nn.log_softmax(logits, axis=0), axis=0).mean()
    return 0.5 * (i2t + t2i)


def siglip_loss(img, txt, log_scale, bias):
    """Sigmoid loss: every pair is a binary problem (match on the diagonal), summed over
    pairs and divided by the batch size, as in SigLIP."""
    img, txt = _normalise(img), _normalise(txt)
    logits = jnp.exp(log_scale) * img @ txt.T + bias
    signs = 2.0 * jnp.eye(img.shape[0]) - 1.0
    return -jnp.sum(jax.nn.log_sigmoid(signs * logits)) / img.shape[0]


def siglip_loss_chunked(img, txt, log_scale, bias, mesh, batch_axes=("dcn_data", "data", "fsdp")):
    """`siglip_loss` of the global batch, computed chunk-wise across the devices of `batch_axes`."""
    axes = tuple(a for a in batch_axes if a in mesh.axis_names)
    n = 1
    for a in axes:
        n *= mesh.shape[a]

    def local(img, txt, log_scale, bias):
        img, txt = _normalise(img), _normalise(txt)
        scale = jnp.exp(log_scale)
        perm = [(i, (i + 1) % n) for i in range(n)]

        def body(k, carry):
            total, chunk = carry
            logits = scale * img @ chunk.T + bias
            # Only the chunk a device started with (k == 0) holds its own positives.
            signs = jnp.where(k == 0, 2.0 * jnp.eye(img.shape[0]) - 1.0, -1.0)
            total = total - jnp.sum(jax.nn.log_sigmoid(signs * logits))
            return total, jax.lax.ppermute(chunk, axes, perm)

        total, _ = jax.lax.fori_loop(0, n, body, (jnp.zeros((), jnp.float32), txt))
        return jax.lax.psum(total, axes)

    spec = P(axes)
    total = jax.shard_map(local, mesh=mesh, in_specs=(spec, spec, P(), P()), out_specs=P(),
                          check_vma=False)(img, txt, log_scale, bias)
    return total / img.shape[0]


def batch_devices(mesh, batch_axes=("dcn_data", "data", "fsdp")) -> int:
    n = 1
    for a in batch_axes:
        if a in mesh.axis_names:
            n *= mesh.shape[a]
    return n


class ContrastiveLoss:
    """The configured image-text loss with its learnable temperature (and SigLIP bias).

    The log-scale is clamped at log(1 / contrastive.min_temperature) (CLIP's 100), so the
    temperature cannot collapse. The sigmoid loss runs ring-chunked over the batch devices
    of the current mesh (`contrastive.chunked`), the softmax loss on the global [B, B]
    logits that XLA assembles from the sharded embeddings.
    """

    def __init__(self, cfg):
        self.kind = contrastive_loss_kind(cfg)
        self.max_log_scale = math.log(1.0 / float(cfg.contrastive.min_temperature))
        self.chunked = bool(cfg.contrastive.get("chunked", True))

    def __call__(self, img, txt, log_scale, bias=None):
        log_scale = jnp.minimum(log_scale, self.max_log_scale)
        if self.kind == "softmax":
            loss = clip_loss(img, txt, log_scale)
        else:
            mesh = jax.sharding.get_abstract_mesh()
            if self.chunked and not mesh.empty and batch_devices(mesh) > 1:
                loss = siglip_loss_chunked(img, txt, log_scale, bias, mesh)
            else:
                loss = siglip_loss(img, txt, log_scale, bias)
        scalars = {"contrastive_loss": loss, "temperature": jnp.exp(-log_scale)}
        if bias is not None:
            scalars["logit_bias"] = bias
        return loss, scalars


def with_captions(con, scalars: dict, sums: dict, contrastive_weight: float, caption_weight: float):
    """(numerator, sums) of a contrastive + captioning objective. The trainer divides the numerator
    by the caption token count, so the contrastive term (a batch mean) enters multiplied by that
    count, which does not depend on the parameters. A zero weight leaves its term out."""
    count = jax.lax.stop_gradient(sums["count"])
    caption = sums["loss_sum"] + sums["z_sum"]
    numerator = 0.0
    if contrastive_weight:
        numerator += contrastive_weight * con * count
    if caption_weight:
        numerator += caption_weight * caption
    scalars = {**scalars, "caption_loss": caption / jnp.maximum(count, 1.0)}
    return numerator, {**sums, "scalars": scalars}


class TwoTowerContrastive:
    """CLIP (softmax) and SigLIP (sigmoid): contrastive only, image tower vs text tower."""

    captions = False
    embeds = True

    def __init__(self, cfg):
        self.contrastive = ContrastiveLoss(cfg)
        self.weight = float(cfg.contrastive.weight)

    def prepare(self, batch, step):
        del step
        return batch

    def loss(self, model, params, batch):
        out = model.apply({"params": params}, batch["image"], batch["text_con"])
        loss, scalars = self.contrastive(out["image_embedding"], out["text_embedding"], *out["scale_and_bias"])
        # Not token-weighted: the normaliser is 1 and the loss is already the batch mean.
        return self.weight * loss, {"count": jnp.float32(1.0), "scalars": scalars}

    def embed(self, model, params, batch):
        return embed_two_towers(model, params, batch)


def embed_two_towers(model, params, batch):
    """L2-normalised (image, text) embeddings of a model with `encode`, `embed_pooled` and `embed_texts`."""
    def fn(module, images, text):
        return module.embed_pooled(module.encode(images)["pooled"]), module.embed_texts(text)

    img, txt = model.apply({"params": params}, batch["image"], batch["text_con"], method=fn)
    return _normalise(img), _normalise(txt)


class Clip(TwoTowerContrastive):
    name = "clip"


class Siglip(TwoTowerContrastive):
    name = "siglip"
