"""Linear probes on frozen encoder features: few-shot and full-data, in closed form.

The few-shot probe is big_vision's (`evaluators/fewshot_lsr.py`): features whitened per
dimension with the train mean and standard deviation (+1e-5), a constant feature of 100
appended (a bias that the ridge penalty barely touches), one-hot targets rescaled to {-1, +1},
and one ridge-regression solve with lambda = 2^10: `W = (X^T X + lambda I)^-1 X^T Y` when
there are at least as many examples as features, `X^T (X X^T + lambda I)^-1 Y` otherwise,
through one symmetric eigendecomposition; a test image's class is the argmax of its scores.
`shots` examples per class are drawn from the train part under each of `seeds` seeds; mean
and standard deviation over the seeds are reported (`{k}shot`, `{k}shot_std`). `full` is the
same solve on the whole train part.

Features are the encoder's pooled output (`pooled`: its head, or the mean of its output
tokens for an encoder without one), or `tokens_mean` (mean of the output tokens). Sets with a
split of their own use it; otherwise a fixed half of each class is the test part.
"""

from __future__ import annotations

import jax
import numpy as np

from openvision2.evals import base
from openvision2.evals.registry import register
from openvision2.recipes import parts

FEATURES = ("pooled", "tokens_mean")


@register
class LinearProbe(base.Evaluator):
    type = "linear_probe"
    encoder_only = True
    defaults = {
        "shots": "1,5,10,25",  # examples per class of the few-shot probes
        "seeds": 3,
        "l2_reg": 2.0**10,
        "full": True,  # also the probe on the whole train part
        "features": "pooled",
        "test_fraction": 0.5,  # sets without a split: the share of each class held out for testing
    }

    def __init__(self, name, spec, ctx):
        super().__init__(name, spec, ctx)
        if spec.features not in FEATURES:
            raise ValueError(f"evals.{name}.features={spec.features!r}: choose one of {FEATURES}.")
        self.shots = [int(s) for s in str(spec.shots).split(",") if s.strip()]
        vit, key = parts.vit(ctx.cfg), "pooled" if spec.features == "pooled" else "tokens"
        reduce = (lambda t: t) if key == "pooled" else (lambda t: t.mean(axis=1))
        self._features = jax.jit(lambda p, x: reduce(vit.apply({"params": p}, x, method="from_uint8")[key]))

    def run(self, params) -> dict:
        data = self.load()
        feats, ok = self.map_images(lambda x: self._features(params["encoder"], x), data.images)
        feats, labels = feats.astype(np.float64)[ok], data.labels[ok]
        train, test = split(labels, float(self.spec.test_fraction), seed=0)
        num_classes = len(data.classnames)
        out = {}
        lam = float(self.spec.l2_reg)
        for k in self.shots:
            accs = []
            for seed in range(int(self.spec.seeds)):
                idx = few_shot_indices(labels[train], k, seed)
                if idx is None:
                    break
                accs.append(ridge_accuracy(feats[train][idx], labels[train][idx], feats[test], labels[test],
                                           num_classes, lam))
            if accs:
                out[f"{k}shot"], out[f"{k}shot_std"] = float(np.mean(accs)), float(np.std(accs))
        if self.spec.full:
            out["full"] = ridge_accuracy(feats[train], labels[train], feats[test], labels[test], num_classes, lam)
        out.update(base.skipped_count(ok))
        out["num_train"], out["num_test"] = float(len(train)), float(len(test))
        return out


def split(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) indices: a fixed `test_fraction` of every class held out."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_test = int(round(len(idx) * test_fraction))
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def few_shot_indices(labels: np.ndarray, shots: int, seed: int) -> np.ndarray | None:
    """`shots` random examples of every class (None when a class has fewer)."""
    rng = np.random.default_rng([seed, shots])
    out = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        if len(idx) < shots:
            return None
        out.append(rng.choice(idx, shots, replace=False))
    return np.concatenate(out)


def ridge_fit(x: np.ndarray, y: np.ndarray, num_classes: int, l2_reg: float):
    """(mean, std, W) of the closed-form probe on train features `x` [N, D] and labels `y` [N]."""
    x = np.asarray(x, np.float64)
    mean, std = x.mean(axis=0), x.std(axis=0)
    xb = _design(x, mean, std)
    targets = 2.0 * np.eye(num_classes)[y] - 1.0
    n, d = xb.shape
    if n >= d:
        evals, evecs = np.linalg.eigh(xb.T @ xb)
        w = evecs @ ((evecs.T @ (xb.T @ targets)) / (evals + l2_reg)[:, None])
    else:
        evals, evecs = np.linalg.eigh(xb @ xb.T)
        w = xb.T @ (evecs @ ((evecs.T @ targets) / (evals + l2_reg)[:, None]))
    return mean, std, w


def _design(x, mean, std) -> np.ndarray:
    z = (x - mean) / (std + 1e-5)
    return np.concatenate([z, np.full((len(z), 1), 100.0)], axis=1)


def ridge_scores(fit, x: np.ndarray) -> np.ndarray:
    mean, std, w = fit
    return _design(np.asarray(x, np.float64), mean, std) @ w


def ridge_accuracy(x_train, y_train, x_test, y_test, num_classes: int, l2_reg: float) -> float:
    if len(y_test) == 0:
        return float("nan")
    scores = ridge_scores(ridge_fit(x_train, y_train, num_classes, l2_reg), x_test)
    return float(np.mean(np.argmax(scores, axis=1) == y_test))
