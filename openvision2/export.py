r"""Export a trained run for libraries that never import our code.

  openvision2-export --workdir=<run dir or gs://...> --output=<dir or gs://...> [--step=N] [--format=hf|timm|llava]
  python -m openvision2.export ...                   (the same command)

- `hf`: the encoder as `transformers.SiglipVisionModel` (`AutoModel.from_pretrained(dir)`), with a
  `preprocessor_config.json` for `AutoImageProcessor` that reproduces our eval preprocessing;
- `timm`: the encoder for `timm.create_model("local-dir:<dir>", pretrained=True)`;
- `llava`: the whole captioner as `LlavaForConditionalGeneration` + `AutoProcessor` files.

Tensors are written with numpy + safetensors (no torch). Every directory carries
`openvision2_export.json` and the same record in the safetensors metadata: step,
config, code revision and a description of the training data.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import tempfile

from absl import flags
import jax
import numpy as np
from safetensors.numpy import save_file

from openvision2 import paths, recipes
from openvision2.convert import llava, siglip, table, timm, vit

FORMATS = ("hf", "timm", "llava")
WEIGHTS = "model.safetensors"
RECORD = "openvision2_export.json"


def git_revision() -> str:
    """`<commit>[-dirty]` of the code doing the export, or "unknown" outside a git checkout."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        run = lambda *a: subprocess.run(["git", "-C", here, *a], capture_output=True, text=True, check=True).stdout
        return run("rev-parse", "HEAD").strip() + ("-dirty" if run("status", "--porcelain", "--untracked-files=no")
                                                   .strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def data_description(cfg) -> dict:
    d = cfg.data
    if not d.path and not d.sources:
        return {"kind": "synthetic shapes (openvision2.data.shapes)", "num_train": d.shapes.num_train,
                "seed": d.shapes.seed, "image_size": d.shapes.image_size}
    return {"kind": "ArrayRecord", "path": d.path, "sources": d.sources, "caption_field": d.caption_field,
            "caption_mode": d.caption_mode}


def record(cfg, step: int, fmt: str) -> dict:
    return {"format": fmt, "step": int(step), "git_revision": git_revision(), "data": data_description(cfg),
            "config": json.loads(cfg.to_json_best_effort(sort_keys=True))}


def save_safetensors(tensors: dict[str, np.ndarray], path: str, metadata: dict[str, str]):
    """`safetensors.numpy.save_file` with its header's metadata in sorted order.

    safetensors serialises metadata from a hash map, so the same call can write different
    bytes; sorting the (same-length) header makes identical exports byte-identical.
    """
    save_file(tensors, path, metadata={"format": "pt", **metadata})
    with open(path, "r+b") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        raw = f.read(n)
        header = json.loads(raw)
        header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
        canonical = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
        canonical += b" " * (n - len(canonical))
        if len(canonical) != n:
            raise RuntimeError("safetensors header changed length when canonicalised")
        f.seek(8)
        f.write(canonical)


def build(params, cfg, fmt: str, tokenizer=None) -> tuple[dict[str, np.ndarray], dict]:
    """(tensors, {filename: json object or text}) for one format, from numpy params."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose one of {FORMATS}")
    recipe = recipes.get(cfg.objective)
    if fmt not in recipe.export_formats:
        whole = [n for n in recipes.names() if "llava" in recipes.get(n).export_formats]
        raise ValueError(f"--format={fmt} is not an export of objective={cfg.objective!r}, which exports as "
                         f"{' or '.join(recipe.export_formats)} (--format=llava is the whole prefix captioner, of "
                         f"objective {' or '.join(whole)}).")
    if fmt == "hf":
        siglip.check_exportable(cfg)
        tensors = table.export(vit.flat_encoder(params["encoder"], cfg), table.prefixed(siglip.rules(cfg), "",
                                                                                         siglip.PREFIX))
        return tensors, {"config.json": siglip.hf_config(cfg), "preprocessor_config.json": siglip.preprocessor_config(cfg)}
    if fmt == "timm":
        return table.export(vit.flat_encoder(params["encoder"], cfg), timm.rules(cfg)), {"config.json": timm.timm_config(cfg)}
    if tokenizer is None:
        raise ValueError("--format=llava needs the run's tokenizer")
    return llava.files(params, cfg, tokenizer)


def write(params, cfg, output: str, fmt: str, step: int, tokenizer=None) -> dict:
    """Writes one export directory (local, or on cloud storage by way of a local copy); returns its record."""
    params = jax.tree.map(lambda x: np.asarray(jax.device_get(x), np.float32), params)
    tensors, files = build(params, cfg, fmt, tokenizer)
    rec = record(cfg, step, fmt)
    with tempfile.TemporaryDirectory(prefix="openvision2-export-") as staging:
        local = staging if paths.is_remote(output) else output
        os.makedirs(local, exist_ok=True)
        save_safetensors(tensors, os.path.join(local, WEIGHTS), {"openvision2": json.dumps(rec, sort_keys=True)})
        for name, content in {**files, RECORD: rec}.items():
            with open(os.path.join(local, name), "w", encoding="utf-8") as f:
                f.write(content if isinstance(content, str) else json.dumps(content, indent=2, sort_keys=True) + "\n")
        if local != output:
            paths.copy_tree(local, output)
    return rec


def main(argv):
    del argv
    from openvision2.inference import TrainedRun  # Local: keeps `import openvision2.export` light.
    f = flags.FLAGS
    run = TrainedRun(f.workdir, f.step)
    write(run.params, run.cfg, f.output, f.format, run.step, run.tokenizer)
    print(f"wrote {f.format} export of step {run.step} to {f.output}")


def run():
    """The `openvision2-export` command."""
    from openvision2.inference import define_run_flags, run_command
    define_run_flags()
    flags.DEFINE_string("output", None, "Output directory (local or gs://).", required=True)
    flags.DEFINE_enum("format", "hf", FORMATS, "hf: SiglipVisionModel; timm: VisionTransformer; llava: the captioner.")
    run_command(main, __doc__)


if __name__ == "__main__":
    run()
