"""The train state and the pure train / eval step functions.

The state is a plain dict `{"step", "params", "opt_state"}`. Steps are pure
functions of (state, batch); the trainer jits them with explicit shardings.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from openvision2 import checkpoint, config as config_lib, parallel, stages
from openvision2.models import build_model
from openvision2.objectives import get_objective
from openvision2.optim import lr_schedule, make_optimizer


def batch_spec(cfg, batch_size: int) -> dict[str, tuple[tuple[int, ...], jnp.dtype]]:
    """name -> (shape, dtype) of every array in a train batch of `batch_size` rows."""
    fields = {k: ((batch_size, *shape), jnp.dtype(dtype)) for k, (shape, dtype) in config_lib.batch_fields(cfg).items()}
    return {**fields, "bad_records": ((batch_size,), jnp.dtype(jnp.int32))}


def init_params(model, cfg, rng):
    """Initial parameters (boxed with logical axis metadata): the model's `initialise` on a
    one-row batch of zeros touches every parameter it has."""
    batch = {k: jnp.zeros(shape, dtype) for k, (shape, dtype) in batch_spec(cfg, 1).items()}
    return model.init(rng, batch, method="initialise")["params"]


def init_state(model, tx, cfg, rng):
    """Initial train state (boxed with logical axis metadata)."""
    params = init_params(model, cfg, rng)
    return {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params)}


def split_microbatches(batch, num: int):
    """[B, ...] -> [num, B/num, ...] with micro-batch i = rows i::num.

    Strided rows keep every device's share of the batch in every micro-batch,
    so each one stays sharded like the whole batch.
    """
    def split(x):
        if x.shape[0] % num:
            raise ValueError(f"batch of {x.shape[0]} rows does not split into grad_accum_steps={num} micro-batches.")
        return jnp.swapaxes(x.reshape(x.shape[0] // num, num, *x.shape[1:]), 0, 1)

    return jax.tree.map(split, batch)


def make_train_step(model, objective, tx, schedule, grad_accum_steps: int = 1, step_offset: int = 0):
    """`step_offset` is the global step where this optimizer's schedule starts (a curriculum stage)."""
    grad_fn = jax.value_and_grad(lambda p, b: objective.loss(model, p, b), has_aux=True)

    def train_step(state, batch):
        step = state["step"]
        params = state["params"]
        batch = objective.prepare(batch, step)
        if grad_accum_steps == 1:
            (numerator, sums), grads = grad_fn(params, batch)
        else:
            # Token-weighted accumulation: add loss sums, counts and gradient
            # sums over micro-batches; divide once below.
            micro = split_microbatches(batch, grad_accum_steps)
            shapes = jax.eval_shape(grad_fn, params, jax.tree.map(lambda x: x[0], micro))
            zeros = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), shapes)
            body = lambda acc, mb: (jax.tree.map(jnp.add, acc, grad_fn(params, mb)), None)
            ((numerator, sums), grads), _ = jax.lax.scan(body, zeros, micro)
        # Dividing once by the global token count keeps the mean exact however
        # the batch is split across devices and micro-batches.
        count = jnp.maximum(sums["count"], 1.0)
        grads = jax.tree.map(lambda g: (g / count).astype(g.dtype), grads)
        updates, opt_state = tx.update(grads, state["opt_state"], params)
        params = optax.apply_updates(params, updates)
        metrics = {
            "train/loss": numerator / count,
            "train/grad_norm": optax.global_norm(grads),
            "train/param_norm": optax.global_norm(params),
            "train/lr": schedule(step - step_offset),
            "data/bad_records": jnp.sum(batch["bad_records"]) if "bad_records" in batch else 0,
        }
        if "correct" in sums:  # a caption loss: token-level metrics
            metrics.update({"train/token_accuracy": sums["correct"] / count, "train/tokens": sums["count"]})
        metrics.update({f"train/{k}": v for k, v in sums.get("scalars", {}).items()})
        return {"step": step + 1, "params": params, "opt_state": opt_state}, metrics

    return train_step


def make_eval_step(model, objective):
    """Teacher-forced caption sums (no token masking) over the valid rows."""
    return lambda params, batch: objective.eval_sums(model, params, batch)


class Training:
    """Model, objective, optimizer, sharded state and jitted step for one mesh
    (and one curriculum stage, which starts at global step `step_offset`).

    Build inside `jax.set_mesh(mesh)` and `nn.logical_axis_rules(rules)`.
    """

    def __init__(self, cfg, mesh, rules, step_offset: int = 0):
        self.model = build_model(cfg)
        self.objective = get_objective(cfg)
        boxed_params = jax.eval_shape(lambda: init_params(self.model, cfg, jax.random.key(0)))
        self.tx = make_optimizer(cfg, boxed_params)
        self.schedule = lr_schedule(cfg)
        init_fn = lambda rng: init_state(self.model, self.tx, cfg, rng)
        boxed = jax.eval_shape(lambda: init_fn(jax.random.key(0)))
        self.state_shardings = parallel.state_shardings(boxed, mesh, rules)
        self.abstract_state = checkpoint.abstract_like(boxed, self.state_shardings)
        # Created directly sharded: nothing is materialised on one host first.
        self.init = jax.jit(lambda rng: nn.unbox(init_fn(rng)), out_shardings=self.state_shardings)

        def continue_from(params, step, rng):
            """A fresh optimizer around carried-over params (a stage boundary); parameters the
            new stage adds (e.g. a new head) start from their initialisers."""
            fresh = nn.unbox(init_params(self.model, cfg, rng))
            params = stages.adapt_params(params, fresh)
            return {"step": step, "params": params, "opt_state": self.tx.init(params)}

        self.continue_from = jax.jit(continue_from, out_shardings=self.state_shardings)
        self.train_step = jax.jit(
            make_train_step(self.model, self.objective, self.tx, self.schedule, int(cfg.grad_accum_steps),
                            step_offset),
            in_shardings=(self.state_shardings, parallel.batch_sharding(mesh)),
            out_shardings=(self.state_shardings, parallel.replicated(mesh)),
            donate_argnums=(0,))
