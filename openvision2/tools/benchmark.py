r"""Measure the train step of any config: time, throughput, FLOPs, MFU, memory.

  openvision2-benchmark --config=configs/demo.py --steps=10
  openvision2-benchmark --config=configs/demo.py --config.batch_size=32 \
      --compare=configs/demo.py:keep=1.0

Prints one JSON line per config: name, step_s, images_per_s, flops_per_step,
mfu, peak_bytes, matmul_peak_flops, device_kind. The step runs on synthetic
batches of the right shapes (no input pipeline), so it measures the model
step alone. `mfu` is against the matmul rate measured in this same process.
With --compare, every config runs in this one process and ratios to the
first config are printed as a last line. Timing is for reports, never tests.
"""

from __future__ import annotations

import json
import resource
import time

from absl import app, flags
import flax.linen as nn
import jax
import numpy as np
from ml_collections import config_flags

from openvision2 import console, parallel, recipes
from openvision2.config import cli, stages, validation
from openvision2.data.tokenizer import get_tokenizer
from openvision2.train import perf
from openvision2.train.state import Training


config_flags.DEFINE_config_file("config", None, "Config file (`path.py[:arg]`); override keys with "
                                "--config.<key>=<value>.", lock_config=True)
flags.DEFINE_integer("steps", 5, "Timed steps (after one warm-up step).")
flags.DEFINE_multi_string("compare", [], "Another config spec to run in the same process, with the same --config.* "
                          "overrides where it has their keys (repeatable; a comma-separated list of `.py` specs works too).")
flags.DEFINE_string("stage", "", "Curriculum stage to measure (default: every stage of a staged config).")
flags.DEFINE_bool("data", False, "Measure the input pipeline instead of the step: decoded, augmented, tokenised "
                  "images/s on real JPEG photos, for each --image_sizes x --workers.")
flags.DEFINE_list("image_sizes", ["84", "224", "384"], "Data mode: training resolutions to measure.")
flags.DEFINE_list("workers", ["0", "1", "2"], "Data mode: worker process counts to measure.")
flags.DEFINE_integer("batches", 8, "Data mode: timed batches per setting (after one warm-up batch).")
FLAGS = flags.FLAGS


def synthetic_batch(cfg, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Random data of exactly the recipe's batch layout: full-length captions (the most work),
    random images, boxes covering a random part of each image."""
    tok = get_tokenizer(cfg.text.vocab)
    batch = {}
    for key, (shape, dtype) in recipes.get(cfg.objective).batch_spec(cfg, cfg.batch_size).items():
        if key == "image":
            batch[key] = rng.integers(0, 256, size=shape).astype(np.uint8)
        elif key == "box":
            lo = rng.uniform(0.0, 0.5, size=(shape[0], 2))
            batch[key] = np.concatenate([lo, lo + rng.uniform(0.2, 0.5, size=lo.shape)], axis=1).astype(np.float32)
        elif key == "bad_records":
            batch[key] = np.zeros(shape, np.int32)
        else:
            text = rng.integers(3, min(cfg.model.vocab_size, tok.vocab_size), size=shape).astype(np.int32)
            text[:, 0], text[:, -1] = tok.bos_id, tok.eos_id
            batch[key] = text
    return batch


def benchmark(cfg, name: str, steps: int, matmul_peak: float) -> dict:
    mesh = parallel.make_mesh(validation.validate(cfg, jax.device_count()))
    rules = parallel.logical_rules(cfg)
    ids = recipes.SpecialIds.of(get_tokenizer(cfg.text.vocab))
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        t = Training(cfg, recipes.get(cfg.objective), ids, mesh, rules)
        state = t.init(jax.random.key(0))
        batch = parallel.to_global(mesh, synthetic_batch(cfg, np.random.default_rng(0)), cfg.batch_size)
        compiled = t.train_step.lower(state, batch).compile()
        mem = compiled.memory_analysis()
        state, metrics = compiled(state, batch)
        jax.block_until_ready(metrics)
        start = time.perf_counter()
        for _ in range(steps):
            state, metrics = compiled(state, batch)
        jax.block_until_ready(metrics)
        step_s = (time.perf_counter() - start) / steps
    flops = perf.train_flops(cfg)
    peak_bytes = None if mem is None else perf.compiled_bytes(mem)
    return {
        "name": name,
        "step_s": step_s,
        "images_per_s": cfg.batch_size / step_s,
        "flops_per_step": flops,
        "mfu": flops / step_s / (matmul_peak * jax.device_count()),
        "peak_bytes": peak_bytes,
        "host_peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "matmul_peak_flops": matmul_peak,
        "device_kind": jax.devices()[0].device_kind,
    }


def photo_records(directory: str, num: int = 256, seed: int = 0) -> str:
    """ArrayRecord shards of real JPEG photos (scikit-image's samples), re-encoded at random crops and
    sizes (longer side 256-800 px, quality 75-95) so decode cost resembles web images."""
    import io

    from PIL import Image
    from skimage import data as samples

    from openvision2.data import records

    photos = [getattr(samples, n)() for n in ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field",
                                                "immunohistochemistry", "coins")]
    rng = np.random.default_rng(seed)

    def encoded():
        for i in range(num):
            img = photos[i % len(photos)]
            h, w = img.shape[:2]
            ch, cw = int(h * rng.uniform(0.5, 1)), int(w * rng.uniform(0.5, 1))
            top, left = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
            crop = Image.fromarray(img[top:top + ch, left:left + cw])
            side = int(rng.integers(256, 801))
            scale = side / max(crop.size)
            crop = crop.resize((max(1, round(crop.width * scale)), max(1, round(crop.height * scale))))
            buf = io.BytesIO()
            crop.convert("RGB").save(buf, format="JPEG", quality=int(rng.integers(75, 96)))
            yield records.encode_record(f"photo-{i:05d}", buf.getvalue(),
                                        {"re_caption": "a photo. " * int(rng.integers(5, 40))})

    records.write_shards(encoded(), directory, "photos", 4)
    return directory


def data_benchmark(cfg, sizes: list[int], workers: list[int], batches: int) -> list[dict]:
    import tempfile

    from openvision2.data import pipeline

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        cfg.data.path = photo_records(tmp)
        cfg.data.sources = ""
        cfg.data.caption_field = "re_caption"
        tokenizer = get_tokenizer(cfg.text.vocab)
        for size in sizes:
            for w in workers:
                cfg.image_size, cfg.data.workers = size, w
                stream = recipes.get(cfg.objective).stream(cfg)
                it = pipeline.train_batches(cfg.data, stream, tokenizer, start_step=0, global_batch=cfg.batch_size,
                                            host_batch=cfg.batch_size, host_offset=0)
                next(it)  # warm-up: worker start, first decodes
                start = time.perf_counter()
                for _ in range(batches):
                    next(it)
                elapsed = time.perf_counter() - start
                it.close()
                rate = batches * cfg.batch_size / elapsed
                results.append({"mode": "data", "image_size": size, "workers": w, "batch": cfg.batch_size,
                                "augment": cfg.data.augment, "images_per_s": rate,
                                "images_per_s_per_process": rate / max(w, 1)})
                print(json.dumps(results[-1]), flush=True)
    return results


def main(argv):
    del argv
    console.start()
    if FLAGS.data:
        data_benchmark(FLAGS.config, [int(s) for s in FLAGS.image_sizes], [int(w) for w in FLAGS.workers],
                       FLAGS.batches)
        return
    runs = cli.compared_runs(FLAGS["config"], FLAGS.compare)
    matmul_peak = perf.measure_matmul_flops()
    results = []
    for name, cfg in runs:
        for label, stage_cfg in stages.select(cfg, FLAGS.stage):
            results.append(benchmark(stage_cfg, f"{name}[{label}]" if label else name, FLAGS.steps, matmul_peak))
            results[-1]["stage"] = label
            print(json.dumps(results[-1]), flush=True)
    if len(runs) > 1:
        # Every other config against the first config's same stage (else its first), measured in this process.
        first = results[:len(stages.select(runs[0][1], FLAGS.stage))]
        base = {r["stage"]: r for r in first}
        ratios = {}
        for r in results[len(first):]:
            b = base.get(r["stage"], first[0])
            ratios[r["name"]] = {"vs": b["name"], "step_s": r["step_s"] / b["step_s"],
                                 "peak_bytes": r["peak_bytes"] / b["peak_bytes"] if b["peak_bytes"] else None,
                                 "flops_per_step": r["flops_per_step"] / b["flops_per_step"]}
        print(json.dumps({"ratios_vs": results[0]["name"], **ratios}))


def run():
    """The `openvision2-benchmark` command."""
    cli.run(main, __doc__)


if __name__ == "__main__":
    run()
