"""Held-out evaluation: what the recipe trains, measured on the run's eval set.

- Recipes that caption: teacher-forced loss and token accuracy, and greedy captions (no
  token masking: the decoder sees every visual token, as at inference). Exact match compares
  the whole greedy caption (up to and including `[eos]`) with the reference tokens, computed
  on device so it works across hosts.
- Recipes that embed: image->text and text->image retrieval among the eval pairs with
  distinct captions (the first pair of each caption is kept), top-1 and top-5.
- Region stages (MM-GEM): region caption exact match, and region->caption retrieval
  against the distinct region captions.
"""

from __future__ import annotations

import time

from absl import logging
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import numpy as np

from openvision2 import parallel
from openvision2.data import pipeline
from openvision2.models import generate


class Evaluator:
    """Built once per stage (its resolution and views); `run(params)` evaluates a state."""

    def __init__(self, cfg, recipe, model, objective, tokenizer, ids, mesh):
        self.cfg, self.tokenizer, self.mesh = cfg, tokenizer, mesh
        self.captions, self.embeds, self.regions = recipe.captions, recipe.embeds, recipe.has_regions(cfg)
        self.stream = recipe.stream(cfg)
        self.global_batch = int(cfg.eval_batch_size or cfg.batch_size)
        self.offset, self.host_batch = parallel.host_batch_slice(mesh, self.global_batch)
        if self.captions:
            self.eval_sums = jax.jit(lambda p, b: objective.eval_sums(model, p, b))
            self.greedy = recipe.greedy_fn(cfg, ids)
        if self.embeds:
            self.embed = jax.jit(lambda p, b: objective.embed(model, p, b))
        if self.regions:
            self.region_embed = jax.jit(lambda p, b: objective.embed(model, p, b, region=True))
        self.match = jax.jit(_exact_match)

    def batches(self):
        return pipeline.eval_batches(self.cfg.data, self.stream, self.tokenizer, global_batch=self.global_batch,
                                     host_batch=self.host_batch, host_offset=self.offset)

    def run(self, params) -> dict:
        t0 = time.perf_counter()
        totals = {"loss_sum": 0.0, "correct": 0.0, "count": 0.0, "exact": 0.0, "region_exact": 0.0, "examples": 0.0}
        gathered = {"image": [], "text": [], "tokens": [], "valid": [], "region_image": [], "region_text": [],
                    "region_tokens": []}
        example = None
        for host in self.batches():
            batch = parallel.to_global(self.mesh, host, self.global_batch)
            valid = _host(batch["valid"])
            totals["examples"] += float(valid.sum())
            gathered["valid"].append(valid)
            if self.captions:
                sums = jax.device_get(self.eval_sums(params, batch))
                for k in ("loss_sum", "correct", "count"):
                    totals[k] += float(sums[k])
                tokens = self.greedy(params, batch["image"])
                totals["exact"] += float(jax.device_get(self.match(tokens, batch["text"], batch["valid"])))
                if example is None and jax.process_index() == 0:
                    local = jax.device_get(tokens.addressable_shards[0].data)[0]
                    example = (self.tokenizer.decode(generate.strip(local, self.tokenizer.eos_id)),
                               self.tokenizer.decode(host["text"][0].tolist()))
            if self.embeds:
                img, txt = self.embed(params, batch)
                gathered["image"].append(_host(img))
                gathered["text"].append(_host(txt))
                gathered["tokens"].append(_host(batch["text_con"] if "text_con" in batch else batch["text"]))
            if self.regions:
                tokens = self.greedy(params, batch["image"], batch["box"])
                totals["region_exact"] += float(jax.device_get(self.match(tokens, batch["region_text"],
                                                                          batch["valid"])))
                img, txt = self.region_embed(params, batch)
                gathered["region_image"].append(_host(img))
                gathered["region_text"].append(_host(txt))
                gathered["region_tokens"].append(_host(batch["region_text"]))
        if totals["examples"] == 0:
            return {}
        out = {"eval/num_examples": totals["examples"]}
        if self.captions:
            out.update({"eval/loss": totals["loss_sum"] / max(totals["count"], 1.0),
                        "eval/token_accuracy": totals["correct"] / max(totals["count"], 1.0),
                        "eval/caption_exact_match": totals["exact"] / totals["examples"]})
        cat = lambda k: np.concatenate(gathered[k])
        valid = cat("valid")
        if self.embeds:
            out.update({f"eval/{k}": v for k, v in pair_retrieval(cat("image")[valid], cat("text")[valid],
                                                                   cat("tokens")[valid]).items()})
        if self.regions:
            out["eval/region_caption_exact_match"] = totals["region_exact"] / totals["examples"]
            out.update({f"eval/region_{k}": v for k, v in class_retrieval(
                cat("region_image")[valid], cat("region_text")[valid], cat("region_tokens")[valid]).items()})
        logging.info("eval on %d images (%.1fs): %s", totals["examples"], time.perf_counter() - t0,
                     "  ".join(f"{k[5:]} {v:.4f}" for k, v in out.items() if k != "eval/num_examples"))
        if example:
            logging.info("eval example: %r (reference %r)", *example)
        return out


def _host(x) -> np.ndarray:
    """A global array, whole, on every host."""
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def _first_of_each(tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(row index of the first occurrence of each distinct token row, each row's distinct-row id)."""
    _, first, inverse = np.unique(tokens, axis=0, return_index=True, return_inverse=True)
    return first, inverse.reshape(-1)


def _ranks(sim: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Rank of each row's target column (0 = retrieved first)."""
    return (sim > sim[np.arange(len(target)), target][:, None]).sum(axis=1)


def pair_retrieval(img: np.ndarray, txt: np.ndarray, tokens: np.ndarray) -> dict:
    """Image->text and text->image recall@1/@5 among the pairs with distinct captions."""
    first, _ = _first_of_each(tokens)
    first = np.sort(first)
    sim = img[first].astype(np.float64) @ txt[first].astype(np.float64).T
    target = np.arange(len(first))
    i2t, t2i = _ranks(sim, target), _ranks(sim.T, target)
    return {"i2t_top1": float(np.mean(i2t < 1)), "i2t_top5": float(np.mean(i2t < 5)),
            "t2i_top1": float(np.mean(t2i < 1)), "t2i_top5": float(np.mean(t2i < 5)),
            "retrieval_pairs": float(len(first))}


def class_retrieval(img: np.ndarray, txt: np.ndarray, tokens: np.ndarray) -> dict:
    """Each image (region) against every distinct caption: recall@1/@5 of its own."""
    first, inverse = _first_of_each(tokens)
    sim = img.astype(np.float64) @ txt[first].astype(np.float64).T
    ranks = _ranks(sim, inverse)
    return {"i2t_top1": float(np.mean(ranks < 1)), "i2t_top5": float(np.mean(ranks < 5)),
            "retrieval_captions": float(len(first))}


def _exact_match(tokens, text, valid):
    """Rows whose greedy tokens equal the reference `text[:, 1:]` (both eos-terminated, pad after)."""
    ref = text[:, 1:]
    return jnp.sum(jnp.all(tokens == ref, axis=1) & valid)
