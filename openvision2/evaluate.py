r"""Evaluate a trained run, or an encoder trained elsewhere, with the run's evaluators.

  python -m openvision2.evaluate --workdir=<run dir or gs://...> [--step=N] [--evals=name,...] \
      [--config.evals.<name>.<key>=<value> ...]
  python -m openvision2.evaluate --init_from=<HF SigLIP dir | timm dir | open_clip file> \
      [--config=<config.py[:arg]> | --workdir=<run whose evals to use>]
  openvision2-evaluate ...                                 (the same command)

Prints one JSON line per evaluator: `{"eval": name, "type": ..., "step": ..., "seconds": ...,
<metric>: value, ...}`, or `{"eval": name, "skipped": why}` for one that cannot measure this
model. `--evals` picks some of the config's evaluators (`config.evals`; by default every one,
including those with `every=-1`).

`--init_from` imports an encoder with the importer training uses (`init_from`): evaluators that
read the encoder alone (the linear probes) run on it; the others need the rest of a model and
are skipped. Its architecture comes from `--config`, or from the run of `--workdir` whose
evaluators are used, or, for an HF SigLIP directory, from its own config.json.
"""

from __future__ import annotations

import json
import os
import sys
import time

from absl import app, flags
import flax.linen as nn
import jax
import ml_collections
from ml_collections import config_flags

from openvision2 import console, parallel, recipes
from openvision2.config import defaults, files, stages
from openvision2.convert import init as convert_init
from openvision2.convert import table
from openvision2.data.tokenizer import get_tokenizer
from openvision2.evals.suite import Suite
from openvision2.inference import TrainedRun, run_config
from openvision2.models import vit as vit_lib

FLAGS = flags.FLAGS


def encoder_config(path: str) -> ml_collections.ConfigDict:
    """A config whose encoder is the HF SigLIP vision tower at `path` (its config.json and,
    when present, preprocessor_config.json): the architecture, resolution, head and input
    normalisation the checkpoint records."""
    hf = convert_init.read_config(path) if os.path.isdir(path) else None
    if hf and hf.get("model_type") == "llava":
        hf = hf["vision_config"]
    if not hf or "hidden_size" not in hf:
        raise app.UsageError(f"{path} records no SigLIP architecture (config.json with hidden_size): give the encoder's "
                             "config with --config=<config.py[:arg]> (or --workdir of a run with the same encoder).")
    cfg = defaults.base_config()
    m = cfg.model
    m.encoder = (f"mu/{hf['patch_size']},width={hf['hidden_size']},depth={hf['num_hidden_layers']},"
                 f"mlp_dim={hf['intermediate_size']},heads={hf['num_attention_heads']}")
    m.posemb, m.cls_token = "learned", False
    m.pool = "map" if hf.get("vision_use_head", True) else "gap"
    m.approximate_gelu = hf.get("hidden_act", "gelu_pytorch_tanh") in ("gelu_pytorch_tanh", "gelu_new")
    cfg.image_size = int(hf.get("image_size", cfg.image_size))
    processor = os.path.join(path, "preprocessor_config.json")
    if os.path.isfile(processor):
        with open(processor) as f:
            p = json.load(f)
        stats = (tuple(p.get("image_mean", ())), tuple(p.get("image_std", ())))
        for name, preset in vit_lib.PIXEL_NORMS.items():
            if all(len(a) == len(b) and all(abs(x - y) < 1e-4 for x, y in zip(a, b)) for a, b in zip(stats, preset)):
                m.pixel_norm = name
    return cfg


def imported_params(cfg, path: str) -> dict:
    """{"encoder": params} of the encoder at `path`, loaded into `cfg`'s ViT."""
    recipe = recipes.get(cfg.objective)
    encoder = nn.unbox(recipe.abstract_params(cfg, recipes.SpecialIds(0, 1, 2)))["encoder"]
    loaded, report = convert_init.load_encoder(path, cfg, table.flatten(encoder, shapes_only=True))
    zeros = jax.tree.map(lambda s: jax.numpy.zeros(s.shape, s.dtype), encoder)
    return convert_init.merge({"encoder": zeros}, {"encoder": loaded}), report


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not FLAGS.workdir and not FLAGS.init_from:
        raise app.UsageError("give --workdir=<run> (a trained run) or --init_from=<encoder> (with --config).")
    cfg = defaults.complete(stages.final_config(FLAGS.config))
    if FLAGS.init_from:
        params, report = imported_params(cfg, FLAGS.init_from)
        print(f"imported {report}", file=sys.stderr)
        step, encoder_only = None, True
    else:
        run = TrainedRun(FLAGS.workdir, FLAGS.step, cfg=cfg)
        params, step, encoder_only = run.params, run.step, False
    recipe = recipes.get(cfg.objective)
    tokenizer = get_tokenizer(cfg.text.vocab)
    mesh = parallel.make_mesh({"dcn_data": 1, "data": 1, "fsdp": 1, "tensor": 1}, jax.local_devices()[:1])
    names = [n for n in FLAGS.evals.split(",") if n] if FLAGS.evals else None
    try:
        suite = Suite(cfg, recipe, recipes.SpecialIds.of(tokenizer), tokenizer, mesh, names)
    except ValueError as e:  # an unknown evaluator name or type, a bad option: the message says which
        sys.exit(f"error: {e}")
    for name, reason in suite.skipped.items():
        print(json.dumps({"eval": name, "skipped": reason}), flush=True)
    for ev in suite.evaluators:
        if encoder_only and not ev.encoder_only:
            print(json.dumps({"eval": ev.name, "skipped": "needs the whole model; --init_from imports only an "
                                                          "encoder"}), flush=True)
            continue
        t0 = time.perf_counter()
        metrics = ev.run(params)
        print(json.dumps({"eval": ev.name, "type": ev.type, "step": step, "seconds": round(time.perf_counter() - t0, 3),
                          **metrics}), flush=True)


def _flag_value(argv, name: str) -> str | None:
    for i, arg in enumerate(argv):
        if arg.startswith(f"--{name}="):
            return arg.split("=", 1)[1]
        if arg == f"--{name}" and i + 1 < len(argv):
            return argv[i + 1]
    return None


def run():
    """The `openvision2-evaluate` command."""
    flags.DEFINE_string("workdir", None, "Run directory written by openvision2-train (local or gs://).")
    flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
    flags.DEFINE_string("evals", "", "Comma-separated evaluator names of config.evals (default: all).")
    flags.DEFINE_string("init_from", "", "Evaluate this encoder instead of a run's: HF SigLIP dir, timm dir or "
                                         "open_clip file.")
    sys.argv = files.resolve_config_flags(sys.argv)
    workdir, init_from = _flag_value(sys.argv, "workdir"), _flag_value(sys.argv, "init_from")
    # Without --config, the run's own config (or the imported encoder's), so that
    # `--config.evals.<name>.<key>=...` overrides it.
    if _flag_value(sys.argv, "config") is not None or not (workdir or init_from):
        config_flags.DEFINE_config_file("config", None, "Config file (with --init_from: the encoder's architecture).")
    else:
        try:
            cfg = run_config(workdir) if workdir else encoder_config(init_from)
        except (FileNotFoundError, app.UsageError) as e:
            sys.exit(f"error: {e}")
        config_flags.DEFINE_config_dict("config", defaults.complete(cfg))
    sys.modules["__main__"].__doc__ = __doc__

    def quiet_main(argv):
        console.start()
        return main(argv)

    app.run(quiet_main)


if __name__ == "__main__":
    run()
