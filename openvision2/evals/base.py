"""What every evaluator is handed and shares: the run's model (`Context`), the global-batch
plumbing that feeds an eval set through jitted functions on the training mesh, and the
`Evaluator` base class.

An evaluator is built once per stage (its resolution) from its config entry
(`config.evals.<name>`) and `run(params)` returns plain floats, which the trainer logs as
`eval/<name>/<metric>`. Every host holds the same eval set; each feeds its own rows of every
global batch (as in training) and every host receives the whole result.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from typing import ClassVar

from absl import logging
import jax
from jax.experimental import multihost_utils
import numpy as np

from openvision2 import parallel
from openvision2.evals import sets


@dataclasses.dataclass
class Context:
    """The run an evaluator measures: its (stage's) config, recipe, tokenizer and mesh."""

    cfg: object
    recipe: object
    ids: object
    tokenizer: object
    mesh: jax.sharding.Mesh

    @functools.cached_property
    def model(self):
        return self.recipe.build_model(self.cfg, self.ids)

    @functools.cached_property
    def objective(self):
        return self.recipe.objective(self.cfg, self.ids)

    @property
    def image_size(self) -> int:
        return int(self.cfg.image_size)


def host(x) -> np.ndarray:
    """A global array, whole, on every host."""
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


FILE_OPTIONS = ("images", "split", "caption_field")


class Evaluator:
    """Subclasses set `type` and `defaults` (their own config keys) and implement `run`."""

    type: ClassVar[str] = ""
    defaults: ClassVar[dict] = {}
    task: ClassVar[str] = sets.CLASSIFICATION  # what kind of eval set `data` must name
    encoder_only: ClassVar[bool] = False  # reads only params["encoder"] (so it can measure an imported encoder)

    def __init__(self, name: str, spec, ctx: Context):
        self.name, self.spec, self.ctx = name, spec, ctx
        self.every = int(spec.every)
        devices = parallel.batch_devices(ctx.mesh)
        batch = int(spec.batch_size or ctx.cfg.eval_batch_size or ctx.cfg.batch_size)
        self.global_batch = max(devices, math.ceil(batch / devices) * devices)
        self.offset, self.host_batch = parallel.host_batch_slice(ctx.mesh, self.global_batch)
        self._data = None

    def applies(self) -> str:
        """'' when this evaluator can measure the run's model, else why it cannot (it is skipped)."""
        return ""

    def load(self):
        """The eval set `data` names (loaded once, on first use)."""
        if self._data is None:
            t0 = time.perf_counter()
            s = self.spec
            if not s.data:
                raise ValueError(f"evals.{self.name}.data is empty: name an eval set (see openvision2/evals/sets.py).")
            options = {k: s[k] for k in FILE_OPTIONS if s.get(k)}
            self._data = sets.load(s.data, self.task, image_size=int(self.ctx.cfg.data.shapes.image_size),
                                   num=int(s.num), seed=int(self.ctx.cfg.data.shapes.eval_seed), **options)
            logging.info("eval %s: %s, %d images (%.1fs)", self.name, s.data, len(self._data), time.perf_counter() - t0)
        return self._data

    def run(self, params) -> dict:
        """{metric: float} of `params` on this evaluator's set: what every evaluator type defines."""
        raise NotImplementedError(f"evaluator type {self.type!r} ({type(self).__qualname__}) does not define run()")

    # --- feeding a set through jitted functions ------------------------------------------------------

    def image_batches(self, images: sets.Images):
        """Yields (global uint8 image batch, ok bool [global_batch] for every row, number of rows
        that are real): each host decodes only its own rows; padding rows are not ok."""
        size = self.ctx.image_size
        for start in range(0, len(images), self.global_batch):
            n = min(self.global_batch, len(images) - start)
            lo, hi = start + self.offset, start + min(self.offset + self.host_batch, n)
            mine = list(range(lo, max(lo, hi)))
            x = np.zeros((self.host_batch, size, size, 3), np.uint8)
            ok = np.zeros(self.host_batch, bool)
            if mine:
                x[:len(mine)], ok[:len(mine)], errors = images.load(mine, size)
                for e in errors[:3]:
                    logging.warning("eval %s: skipped unreadable image (%s)", self.name, e)
            batch = parallel.to_global(self.ctx.mesh, {"image": x, "ok": ok}, self.global_batch)
            yield batch["image"], host(batch["ok"]), n

    def map_images(self, fn, images: sets.Images):
        """`fn(image_batch) -> pytree of [global_batch, ...]` over every image: (outputs [N, ...] on
        the host, ok [N]: False for images that could not be read)."""
        outs, oks = [], []
        for x, ok, n in self.image_batches(images):
            outs.append(jax.tree.map(lambda a, n=n: host(a)[:n], fn(x)))
            oks.append(ok[:n])
        if not outs:
            return None, np.zeros(0, bool)
        return jax.tree.map(lambda *a: np.concatenate(a), *outs), np.concatenate(oks)

    def map_rows(self, fn, rows: np.ndarray):
        """`fn(row_batch) -> [global_batch, ...]` over the rows of a host array (every host holds
        the same one, e.g. tokenised prompts): [len(rows), ...] on the host."""
        out = []
        for start in range(0, len(rows), self.global_batch):
            chunk = rows[start:start + self.global_batch]
            n = len(chunk)
            pad = np.concatenate([chunk, np.repeat(chunk[-1:], self.global_batch - n, axis=0)])
            local = pad[self.offset:self.offset + self.host_batch]
            out.append(host(fn(parallel.to_global(self.ctx.mesh, {"x": local}, self.global_batch)["x"]))[:n])
        return np.concatenate(out)

    def replicated(self, x: np.ndarray) -> jax.Array:
        """A host array (the same on every host) as a global array every device holds whole."""
        return jax.make_array_from_process_local_data(parallel.replicated(self.ctx.mesh), x, x.shape)


def skipped_count(ok: np.ndarray) -> dict:
    return {"skipped": float((~ok).sum())}
