"""The loss pieces recipes are made of: captioning cross-entropy, and the contrastive
image-text losses (CLIP softmax, SigLIP sigmoid) with their learnable temperature.

Captioning CE is a token-weighted mean over real target tokens (`[eos]` included, padding
excluded); the sum and the count are returned, so gradient accumulation and multi-device
means stay exact: divide once, after summing.

Embeddings are L2-normalised here; `log_scale` is the learnable log-temperature (logits =
exp(log_scale) * cos) and `bias` the SigLIP logit bias. `siglip_loss_chunked` computes the
sigmoid loss over a batch sharded along the mesh's batch axes without ever materialising
the global [B, B] logits: each device scores its images against one chunk of texts at a
time and passes the text chunk round a ring (`ppermute`), so per-device memory is [b, b]
(b = local batch) however many devices there are.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from openvision2 import parallel

LOSS_KINDS = ("softmax", "sigmoid")


def shift_tokens(text, pad_id: int = 0):
    """[bos w1 .. wn eos pad..] -> inputs [bos w1 .. wn eos pad..][:-1], targets [w1 .. eos pad..]."""
    inputs, targets = text[:, :-1], text[:, 1:]
    return inputs, targets, (targets != pad_id)


def cross_entropy(logits, targets, weights, z_loss: float = 0.0):
    """Per-token CE (+ optional z-loss) summed over weighted tokens.

    Returns dict(loss_sum, z_sum, correct, count) in float32.
    """
    logits = logits.astype(jnp.float32)
    log_z = jax.nn.logsumexp(logits, axis=-1)
    target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    w = weights.astype(jnp.float32)
    nll = log_z - target_logit
    correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
    return {
        "loss_sum": jnp.sum(nll * w),
        "z_sum": jnp.sum(z_loss * jnp.square(log_z) * w),
        "correct": jnp.sum(correct * w),
        "count": jnp.sum(w),
    }


def caption_sums(logits, text, pad_id: int, z_loss: float = 0.0):
    """CE sums of `logits` [B, T-1, V] predicting `text[:, 1:]`."""
    _, targets, weights = shift_tokens(text, pad_id)
    return cross_entropy(logits, targets, weights, z_loss)


def valid_text(batch, pad_id: int):
    """Eval batches pad the last batch with copies marked invalid: their text becomes all padding."""
    return jnp.where(batch["valid"][:, None], batch["text"], pad_id)


def normalise(x):
    x = x.astype(jnp.float32)
    return x * jax.lax.rsqrt(jnp.sum(x * x, axis=-1, keepdims=True) + 1e-12)


def clip_loss(img, txt, log_scale, positives=None):
    """Symmetric softmax InfoNCE: mean of image->text and text->image cross-entropy.

    `positives` [B, B] bool marks the pairs that match (default: the diagonal); each row's
    (and column's) target is then uniform over its positives, which is the plain loss when
    the only positive is the diagonal.
    """
    img, txt = normalise(img), normalise(txt)
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
    img, txt = normalise(img), normalise(txt)
    logits = jnp.exp(log_scale) * img @ txt.T + bias
    signs = 2.0 * jnp.eye(img.shape[0]) - 1.0
    return -jnp.sum(jax.nn.log_sigmoid(signs * logits)) / img.shape[0]


def siglip_loss_chunked(img, txt, log_scale, bias, mesh):
    """`siglip_loss` of the global batch, computed chunk-wise across the batch devices of `mesh`."""
    axes = tuple(a for a in parallel.BATCH_AXES if a in mesh.axis_names)
    n = parallel.batch_devices(mesh)

    def local(img, txt, log_scale, bias):
        img, txt = normalise(img), normalise(txt)
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


def loss_kind(cfg, own: str) -> str:
    """`contrastive.loss`, or the recipe's `own` kind when it is empty."""
    kind = cfg.contrastive.loss or own
    if kind not in LOSS_KINDS:
        raise ValueError(f"contrastive.loss={kind!r}: choose one of {LOSS_KINDS} (or '' for the recipe's own).")
    return kind


def init_temperature(cfg, kind: str) -> float:
    return float(cfg.contrastive.init_temperature or (0.1 if kind == "sigmoid" else 0.07))


class ContrastiveLoss:
    """The configured image-text loss with its learnable temperature (and SigLIP bias).

    The log-scale is clamped at log(1 / contrastive.min_temperature) (CLIP's 100), so the
    temperature cannot collapse. The sigmoid loss runs ring-chunked over the batch devices
    of the current mesh (`contrastive.chunked`), the softmax loss on the global [B, B]
    logits that XLA assembles from the sharded embeddings.
    """

    def __init__(self, cfg, own: str = "softmax"):
        self.kind = loss_kind(cfg, own)
        self.max_log_scale = math.log(1.0 / float(cfg.contrastive.min_temperature))
        self.chunked = bool(cfg.contrastive.chunked)

    def __call__(self, img, txt, log_scale, bias=None):
        log_scale = jnp.minimum(log_scale, self.max_log_scale)
        if self.kind == "softmax":
            loss = clip_loss(img, txt, log_scale)
        else:
            mesh = jax.sharding.get_abstract_mesh()
            if self.chunked and not mesh.empty and parallel.batch_devices(mesh) > 1:
                loss = siglip_loss_chunked(img, txt, log_scale, bias, mesh)
            else:
                loss = siglip_loss(img, txt, log_scale, bias)
        scalars = {"contrastive_loss": loss, "temperature": jnp.exp(-log_scale)}
        if bias is not None:
            scalars["logit_bias"] = bias
        return loss, scalars


class ContrastiveCaptioning:
    """The two terms of a contrastive captioner (CoCa, MM-GEM) and their weights from the config."""

    def __init__(self, cfg, pad_id: int):
        self.contrastive = ContrastiveLoss(cfg)
        self.contrastive_weight = float(cfg.contrastive.weight)
        self.caption_weight = float(cfg.caption_loss_weight)
        self.z_loss = float(cfg.z_loss)
        self.pad_id = pad_id


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
