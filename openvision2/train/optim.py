"""Optimizer and learning-rate schedule (OpenVision 2 defaults).

Adam(b1=0.9, b2=0.95) (or LAMB: `optim.name="lamb"`), weight decay on kernels only, learning rate given per
256 samples and scaled linearly to the global batch, linear warmup then
cosine decay to `end_lr_frac * peak` at the end of the run (of the stage, in
a curriculum: each stage gets a fresh optimizer).

Which parameters train, and how fast, are regex rules over parameter paths
such as `encoder/block_3/q/kernel` or `decoder/embed/embedding`:
- `optim.trainable`: if set, only matching parameters train;
- `optim.frozen`: matching parameters do not train (applied after trainable);
- `optim.lr_mults`: `"regex=mult,regex=mult"`, the first matching rule scales
  that parameter's learning rate (and so its decoupled weight decay).
Frozen parameters get no optimizer state at all, so freezing also saves the
memory of their Adam moments.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import optax


def peak_lr(cfg) -> float:
    return float(cfg.optim.lr) * cfg.batch_size / 256.0


def lr_schedule(cfg):
    peak = peak_lr(cfg)
    warmup = int(cfg.optim.warmup_steps)
    total = int(cfg.total_steps)
    end = peak * float(cfg.optim.end_lr_frac)
    if warmup >= total:
        raise ValueError(f"optim.warmup_steps={warmup} must be smaller than total_steps={total}.")
    return optax.warmup_cosine_decay_schedule(0.0, peak, warmup, total, end_value=end)


def decay_mask(params):
    """Weight decay applies to matmul/conv kernels only (not biases, norms or embeddings)."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: getattr(path[-1], "key", None) == "kernel", params)


def param_path(path) -> str:
    """`encoder/block_0/q/kernel` from a pytree path (box and index entries skipped)."""
    return "/".join(str(k.key) for k in path if isinstance(k, jax.tree_util.DictKey))


def parse_lr_mults(spec: str) -> list[tuple[re.Pattern, float]]:
    rules = []
    for item in (spec or "").split(","):
        if not item.strip():
            continue
        pattern, sep, mult = item.rpartition("=")
        try:
            rules.append((re.compile(pattern.strip()), float(mult)))
        except (re.error, ValueError) as e:
            raise ValueError(f"optim.lr_mults item {item!r} is not `regex=multiplier` ({e}); e.g. "
                             "--config.optim.lr_mults='^encoder/=0.1,projector=10'") from None
        if not sep:
            raise ValueError(f"optim.lr_mults item {item!r} has no `=multiplier`.")
    return rules


def param_labels(cfg, params):
    """Per-parameter label: "frozen" or "lr*<multiplier>"."""
    o = cfg.optim
    trainable = re.compile(o.trainable) if o.trainable else None
    frozen = re.compile(o.frozen) if o.frozen else None
    mults = parse_lr_mults(o.lr_mults)

    def label(path, _):
        name = param_path(path)
        if (trainable and not trainable.search(name)) or (frozen and frozen.search(name)):
            return "frozen"
        return f"lr*{next((m for p, m in mults if p.search(name)), 1.0):g}"

    # Boxed (logically partitioned) trees keep their boxes: optax calls this on
    # the boxed params at init and on plain arrays in the step.
    return jax.tree_util.tree_map_with_path(label, params)


def make_optimizer(cfg, params=None) -> optax.GradientTransformation:
    """The optimizer for `cfg`; `params` (or their shapes) are needed only to
    resolve trainable/frozen/lr_mults rules, and to check they match something."""
    o = cfg.optim
    mu_dtype = jnp.dtype(o.mu_dtype) if o.mu_dtype else None
    clip = [optax.clip_by_global_norm(o.grad_clip)] if o.grad_clip > 0 else []

    kind = o.name
    if kind not in ("adam", "lamb"):
        raise ValueError(f"optim.name={kind!r}: choose adam (decoupled weight decay, AdamW) or lamb.")
    # LAMB is the same update rescaled per parameter by ||param|| / ||update|| (layer-wise trust ratio).
    trust = [optax.scale_by_trust_ratio()] if kind == "lamb" else []

    def adam(mult: float = 1.0):
        schedule = lr_schedule(cfg)
        return optax.chain(
            optax.scale_by_adam(b1=o.b1, b2=o.b2, eps=o.eps, mu_dtype=mu_dtype),
            optax.add_decayed_weights(o.weight_decay, mask=decay_mask), *trust,
            optax.scale_by_learning_rate(schedule if mult == 1.0 else lambda count: mult * schedule(count)))

    if not (o.trainable or o.frozen or o.lr_mults):
        return optax.chain(*clip, adam())
    if params is None:
        raise ValueError("optim.trainable/frozen/lr_mults need the parameter tree to resolve.")
    used = set(jax.tree.leaves(param_labels(cfg, params)))
    if used == {"frozen"}:
        raise ValueError(f"optim.trainable={o.get('trainable')!r} / optim.frozen={o.get('frozen')!r} freeze every "
                         "parameter; nothing would train. Check the regexes against paths like 'encoder/block_0/q/kernel'.")
    transforms = {lab: adam(float(lab[3:])) for lab in used if lab != "frozen"}
    transforms["frozen"] = optax.set_to_zero()
    labels = lambda tree: param_labels(cfg, tree)
    frozen_mask = lambda tree: jax.tree.map(lambda lab: lab == "frozen", labels(tree))
    # Frozen gradients are zeroed before clipping, so they do not eat the clip budget.
    return optax.chain(optax.masked(optax.set_to_zero(), frozen_mask), *clip,
                       optax.multi_transform(transforms, labels))

