"""The train state and the pure, jitted train step of one stage.

The state is a plain dict `{"step", "params", "opt_state"}`. The step is a pure function of
(state, batch); `Training` jits it with explicit shardings for one mesh.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from openvision2 import parallel
from openvision2.train import carry, checkpoint
from openvision2.train.optim import lr_schedule, make_optimizer


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


class Training:
    """The recipe's model and objective, the optimizer, the sharded state and the jitted step
    for one mesh and one curriculum stage (which starts at global step `step_offset`).

    Build inside `jax.set_mesh(mesh)` and `nn.logical_axis_rules(rules)`.
    """

    def __init__(self, cfg, recipe, ids, mesh, rules, step_offset: int = 0):
        self.cfg, self.recipe = cfg, recipe
        self.model = recipe.build_model(cfg, ids)
        self.objective = recipe.objective(cfg, ids)
        self.tx = make_optimizer(cfg, recipe.abstract_params(cfg, ids))
        self.schedule = lr_schedule(cfg)
        init_fn = lambda rng: self._fresh(recipe.init_params(self.model, cfg, rng))
        boxed = jax.eval_shape(lambda: init_fn(jax.random.key(0)))
        self.state_shardings = parallel.state_shardings(boxed, mesh, rules)
        self.abstract_state = checkpoint.abstract_like(boxed, self.state_shardings)
        # Created directly sharded: nothing is materialised on one host first.
        self.init = jax.jit(lambda rng: nn.unbox(init_fn(rng)), out_shardings=self.state_shardings)
        self.carry = jax.jit(self._carry, out_shardings=self.state_shardings)
        self.train_step = jax.jit(
            make_train_step(self.model, self.objective, self.tx, self.schedule, int(cfg.grad_accum_steps), step_offset),
            in_shardings=(self.state_shardings, parallel.batch_sharding(mesh)),
            out_shardings=(self.state_shardings, parallel.replicated(mesh)),
            donate_argnums=(0,))

    def _fresh(self, params, step=None):
        return {"step": jnp.zeros((), jnp.int32) if step is None else step, "params": params,
                "opt_state": self.tx.init(params)}

    def _carry(self, params, step, rng):
        """The state at a stage boundary: the previous stage's params fitted to this stage's model
        (parameters it adds, e.g. a new head, start from their initialisers) and a fresh optimizer."""
        fresh = nn.unbox(self.recipe.init_params(self.model, self.cfg, rng))
        return self._fresh(carry.adapt_params(params, fresh), step)
