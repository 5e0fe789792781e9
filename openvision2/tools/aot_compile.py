r"""Compile the real sharded train step for a TPU topology on this CPU.

  openvision2-aot-compile --config=configs/openvision2.py:L/14,stage=pretrain \
      --topology=v4:8x8x4 --per_chip_batch=128 [--find_max_batch] [--config.mesh.fsdp=-1]

Needs the `libtpu` wheel (`pip install -e .[tpu]`), not a TPU: jax describes
the topology, XLA:TPU compiles the step exactly as a pod would, and the
compiled executable reports its per-chip memory. Sharding mistakes and
out-of-memory configs show up here, before anyone rents a pod.

Prints one JSON line per compile: per-chip argument / output / temporary /
total bytes against the chip's HBM, the compiler's FLOP count, and the
model-FLOP count. With --find_max_batch it searches for the largest per-chip
batch that fits (a multiple of --batch_multiple).
"""

from __future__ import annotations

import json
import os
import time

# Compile-only use needs no exclusive hold on a TPU: let several of these run at once.
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

from absl import app, flags
import flax.linen as nn
import jax
from jax.experimental import topologies
from ml_collections import config_flags

from openvision2 import console, parallel, recipes
from openvision2.config import cli, stages, validation
from openvision2.data.tokenizer import get_tokenizer
from openvision2.train import perf
from openvision2.train.state import Training


config_flags.DEFINE_config_file("config", None, "Config file (`path.py[:arg]`); override keys with "
                                "--config.<key>=<value>.", lock_config=False)
flags.DEFINE_string("topology", "v4:8x8x4", "TPU topology name of one slice, e.g. v4:4x4x4, v5p:8x8x8, v6e:16x16.")
flags.DEFINE_integer("num_slices", 1, "Multislice: number of such slices over DCN; sets mesh.dcn_data to it.")
flags.DEFINE_integer("per_chip_batch", 0, "Per-chip batch; the global batch is this x chips (0 = config's).")
flags.DEFINE_bool("find_max_batch", False, "Search for the largest per-chip batch that fits in HBM.")
flags.DEFINE_integer("batch_multiple", 8, "Granularity of the max-batch search.")
flags.DEFINE_string("stage", "", "Curriculum stage to compile (default: every stage in turn).")
flags.DEFINE_float("hbm_gib", 0.0, "HBM per chip in GiB (0 = from the table by TPU generation).")
flags.DEFINE_multi_string("compare", [], "Another config spec to compile the same way (repeatable, or a comma-separated "
                          "list of `.py` specs; the same --config.* overrides where it has their keys); ratio lines give per-chip memory and "
                          "largest batch against the first config.")
FLAGS = flags.FLAGS

HBM_GIB = {"v4": 32.0, "v5e": 16.0, "v5litepod": 16.0, "v5p": 95.0, "v6e": 32.0}


def topology_devices(name: str, num_slices: int = 1):
    """Compile-only devices of a TPU topology such as `v4:8x8x4` (one device per chip)."""
    generation, _, dims = name.partition(":")
    shape = tuple(int(d) for d in dims.split("x"))
    three_d = len(shape) == 3
    return topologies.get_topology_desc(
        platform="tpu", topology_name=name,
        # v4/v5p chips have two TensorCores run as one ("megacore"); v5e/v6e have one.
        chip_config_name="megacore" if generation in ("v4", "v5p") else "default",
        chips_per_host_bounds=(2, 2, 1),
        num_slices=num_slices,
        # Full 4-chip-multiple dimensions of a 3-D torus are wrapped (twisted tori aside).
        wrap=tuple(three_d and d >= 4 and d % 4 == 0 for d in (shape + (1,) * (3 - len(shape)))),
    ).devices


def compile_step(cfg, devices) -> dict:
    """Lowers and compiles the train step for `devices`; returns its memory and cost."""
    shape = validation.validate(cfg, len(devices))
    mesh = parallel.make_mesh(shape, devices)
    rules = parallel.logical_rules(cfg)
    recipe = recipes.get(cfg.objective)
    ids = recipes.SpecialIds.of(get_tokenizer(cfg.text.vocab))
    t0 = time.perf_counter()
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        t = Training(cfg, recipe, ids, mesh, rules)
        batch_sh = parallel.batch_sharding(mesh)
        b, s = cfg.batch_size, cfg.image_size
        batch = {k: jax.ShapeDtypeStruct(shape, dtype, sharding=batch_sh)
                 for k, (shape, dtype) in recipe.batch_spec(cfg, b).items()}
        lowered = t.train_step.lower(t.abstract_state, batch)
        try:
            compiled = lowered.compile()
        except jax.errors.JaxRuntimeError as e:
            # XLA:TPU refuses programs that cannot fit in HBM at compile time.
            if "RESOURCE_EXHAUSTED" not in str(e) and "out of memory" not in str(e).lower():
                raise
            return {"mesh": shape, "chips": len(devices), "global_batch": b, "per_chip_batch": b / len(devices),
                    "image_size": s, "total_bytes": None, "compile_error": str(e).splitlines()[0][:300],
                    "compile_s": round(time.perf_counter() - t0, 1)}
    mem = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = (cost[0] if isinstance(cost, (list, tuple)) else cost) or {}
    total = perf.compiled_bytes(mem)
    return {
        "mesh": shape,
        "chips": len(devices),
        "global_batch": b,
        "per_chip_batch": b / len(devices),
        "image_size": s,
        "argument_bytes": int(mem.argument_size_in_bytes),
        "output_bytes": int(mem.output_size_in_bytes),
        "temp_bytes": int(mem.temp_size_in_bytes),
        "alias_bytes": int(mem.alias_size_in_bytes),
        "total_bytes": int(total),
        # XLA's own count: a scanned layer stack's loop body is counted once, not per
        # layer, so with scan_layers it undercounts; model_flops_per_step is analytic.
        "compiler_flops_per_chip": float(cost.get("flops", 0.0)),
        "compiler_seconds_estimate": _positive(cost.get("optimal_seconds")),
        "model_flops_per_step": perf.train_flops(cfg),
        "compile_s": round(time.perf_counter() - t0, 1),
    }


def _positive(value):
    """XLA reports a negative time estimate when it has none."""
    return float(value) if value is not None and float(value) > 0 else None


def report(result: dict, hbm_bytes: float, tag: dict) -> dict:
    total = result["total_bytes"]
    result = {**tag, **result, "hbm_bytes": int(hbm_bytes), "fits": total is not None and total <= hbm_bytes,
              "total_gib": None if total is None else round(total / 2**30, 3)}
    print(json.dumps(result), flush=True)
    return result


def main(argv):
    del argv
    console.start(keep_platform=True)  # compiles for TPU through libtpu, with or without a TPU here
    devices = topology_devices(FLAGS.topology, FLAGS.num_slices)
    generation = FLAGS.topology.split(":")[0]
    hbm = (FLAGS.hbm_gib or HBM_GIB.get(generation, 0.0)) * 2**30
    if not hbm:
        raise app.UsageError(f"Unknown HBM size for {generation!r}: pass --hbm_gib.")
    runs = cli.compared_runs(FLAGS["config"], FLAGS.compare)
    results = []
    for name, run_cfg in runs:
        if FLAGS.num_slices > 1:
            run_cfg.mesh.dcn_data = FLAGS.num_slices
        for label, stage_cfg in stages.select(run_cfg, FLAGS.stage):
            tag = {"config": name, **({"stage": label} if label else {})}
            results.append((tag, *compile_stage(stage_cfg, devices, hbm, tag)))
    if FLAGS.compare:
        # Each compared config against the first config's same stage (else its first).
        ratio = lambda a, b: a / b if a and b else None
        first = [(r, m) for tag, r, m in results if tag["config"] == runs[0][0]]
        base = {tag.get("stage", ""): (r, m) for tag, r, m in results if tag["config"] == runs[0][0]}
        for tag, r, m in results:
            if tag["config"] == runs[0][0]:
                continue
            b, b_max = base.get(tag.get("stage", ""), first[0])
            print(json.dumps({"ratios_vs": runs[0][0], **tag, "total_bytes": ratio(r["total_bytes"], b["total_bytes"]),
                              "max_per_chip_batch": ratio(m, b_max)}), flush=True)


def compile_stage(cfg, devices, hbm: float, tag: dict) -> tuple[dict, int | None]:
    """Compiles one stage's step (and searches its largest batch if asked); prints JSON lines.
    Returns the first compile's report and the largest per-chip batch found (None if not searched)."""
    if FLAGS.per_chip_batch:
        cfg.batch_size = FLAGS.per_chip_batch * len(devices)
    first = report(compile_step(cfg, devices), hbm, tag)
    fits = first["fits"]
    if not FLAGS.find_max_batch:
        return first, None
    # Grow geometrically until it no longer fits, then bisect.
    step = FLAGS.batch_multiple
    lo = cfg.batch_size // len(devices) if fits else 0
    hi = None if fits else cfg.batch_size // len(devices)
    while hi is None or hi - lo > step:
        per_chip = lo * 2 if hi is None else (lo + hi) // 2 // step * step
        per_chip = max(per_chip, step)
        if per_chip in (lo, hi):
            break
        cfg.batch_size = per_chip * len(devices)
        if report(compile_step(cfg, devices), hbm, tag)["fits"]:
            lo = per_chip
        else:
            hi = per_chip
    print(json.dumps({**tag, "max_per_chip_batch": lo, "first_not_fitting": hi, "topology": FLAGS.topology,
                      "image_size": cfg.image_size}), flush=True)
    return first, lo


def run():
    """The `openvision2-aot-compile` command."""
    cli.run(main, __doc__)


if __name__ == "__main__":
    run()
