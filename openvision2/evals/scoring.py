"""Scoring images against texts with the run's model, the two ways the field does:

- `embedding`: L2-normalised image and text embeddings in the shared space (recipes that embed);
- `likelihood`: the decoder's summed log-likelihood of a text after the image (recipes that
  caption; CapPa, Tschannen et al. 2023): teacher-forced, padding masked, no length
  normalisation. Each image is encoded once (`caption_context`); its context is then paired
  with chunks of texts in batched jitted passes, every pass the same shape.

`methods(method, recipe)` resolves `auto` (embedding for recipes that embed, else likelihood)
and `both`.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

from openvision2.evals import base
from openvision2.recipes import losses

METHODS = ("auto", "likelihood", "embedding", "both")


def methods(method: str, recipe) -> list[str]:
    if method not in METHODS:
        raise ValueError(f"method={method!r}: choose one of {METHODS}.")
    auto = "embedding" if recipe.embeds else "likelihood"
    return {"auto": [auto], "both": ["likelihood", "embedding"]}.get(method, [method])


def missing(methods_: list[str], ctx) -> str:
    """'' when the run's model can score every way in `methods_`, else why not."""
    for m in methods_:
        if m == "likelihood" and not ctx.recipe.captions:
            return f"objective={ctx.cfg.objective!r} has no caption decoder to score texts with"
        if m == "embedding" and not ctx.recipe.embeds:
            return f"objective={ctx.cfg.objective!r} has no text embedding to compare images with"
    return ""


def normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


class ScoringEvaluator(base.Evaluator):
    """An evaluator that scores images against texts by its config's `method`."""

    def __init__(self, name, spec, ctx):
        super().__init__(name, spec, ctx)
        self.methods = methods(spec.method, ctx.recipe)
        self.scorer = Scorer(self, int(spec.pairs_per_pass))

    def applies(self) -> str:
        return missing(self.methods, self.ctx)

    def prefixed(self, method: str, metrics: dict) -> dict:
        """`metrics` under `<method>/` when the evaluator scores more than one way."""
        return {(f"{method}/" if len(self.methods) > 1 else "") + k: v for k, v in metrics.items()}


class Scorer:
    """The jitted scoring functions of one evaluator's model, compiled once and reused."""

    def __init__(self, evaluator, pairs_per_pass: int = 4096):
        self.ev, self.pairs_per_pass = evaluator, pairs_per_pass
        self._fns = {}
        self.pairs_per_s = float("nan")  # image-text pairs scored per second by the last likelihood pass

    def _jit(self, name, fn):
        if name not in self._fns:
            self._fns[name] = jax.jit(fn)
        return self._fns[name]

    def embed_images(self, params, images):
        """(float64 [N, D] normalised image embeddings, ok [N])."""
        model = self.ev.ctx.model
        fn = self._jit("images", lambda p, x: losses.normalise(model.apply({"params": p}, x, method="embed_images")))
        emb, ok = self.ev.map_images(lambda x: fn(params, x), images)
        return normalise(emb), ok

    def embed_texts(self, params, texts: list[str]) -> np.ndarray:
        """float64 [M, D] normalised text embeddings (tokenised as the recipe's text side reads)."""
        ctx = self.ev.ctx
        model = ctx.model
        fn = self._jit("texts", lambda p, t: losses.normalise(model.apply({"params": p}, t, method="embed_texts")))
        tokens = ctx.tokenizer.encode(texts, ctx.recipe.embed_text_len(ctx.cfg))
        return normalise(self.ev.map_rows(lambda t: fn(params, t), tokens))

    def log_likelihood(self, params, images, texts: list[str]):
        """(float64 [N, M]: log p(text_m | image_n) summed over its tokens, ok [N])."""
        ctx = self.ev.ctx
        model, pad = ctx.model, ctx.ids.pad
        context_fn = self._jit("context", lambda p, x: model.apply({"params": p}, x, method="caption_context"))
        score_fn = self._jit("score", lambda p, c, t: caption_log_likelihood(model, p, c, t, pad))
        tokens = ctx.tokenizer.encode(texts, int(ctx.cfg.text.max_len))
        m = len(tokens)
        chunk = max(1, min(m, self.pairs_per_pass // self.ev.global_batch))
        padded = np.concatenate([tokens, np.repeat(tokens[-1:], -m % chunk, axis=0)])
        chunks = [self.ev.replicated(padded[i:i + chunk]) for i in range(0, len(padded), chunk)]
        rows, oks = [], []
        t0, timed = time.perf_counter(), 0
        for x, ok, n in self.ev.image_batches(images):
            context = context_fn(params, x)
            rows.append(np.concatenate([base.host(score_fn(params, context, t)) for t in chunks], axis=1)[:n, :m])
            oks.append(ok[:n])
            if len(rows) == 1:  # the first batch compiles: throughput is timed over the others
                t0 = time.perf_counter()
            else:
                timed += n * m
        if timed:
            self.pairs_per_s = timed / (time.perf_counter() - t0)
        return np.concatenate(rows).astype(np.float64), np.concatenate(oks)


def caption_log_likelihood(model, params, context, tokens, pad_id: int):
    """[B, C] summed log-likelihood of each of the C token rows after each of the B images'
    `caption_context`: the B x C pairs run as one batch."""
    b, c = jax.tree.leaves(context)[0].shape[0], tokens.shape[0]
    pairs = jax.tree.map(lambda a: jnp.repeat(a, c, axis=0), context)
    text = jnp.tile(tokens, (b, 1))
    logits = model.apply({"params": params}, pairs, text, method="caption_logits").astype(jnp.float32)
    _, targets, weights = losses.shift_tokens(text, pad_id)
    logp = jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1), targets[..., None], axis=-1)[..., 0]
    return jnp.sum(logp * weights, axis=-1).reshape(b, c)
