"""Loading a trained run for inference: config, params, tokenizer, preprocessing, and the
compiled functions that caption and encode with it.

Shared by the `caption`, `encode` and `export` commands and `tools/check_export.py`. Runs on
one device of whatever backend is present; no token masking (that is training only).
"""

from __future__ import annotations

import functools
import json
import sys

from absl import app, flags
import jax
import ml_collections
import numpy as np

from openvision2 import console, paths, recipes
from openvision2.config import stages
from openvision2.data import preprocess
from openvision2.data.tokenizer import get_tokenizer
from openvision2.models import generate
from openvision2.models.vit import normalize
from openvision2.recipes import parts
from openvision2.train import checkpoint


def define_run_flags() -> None:
    """`--workdir` and `--step`: which run (and checkpoint) a command reads."""
    flags.DEFINE_string("workdir", None, "Run directory written by openvision2-train (local or gs://).", required=True)
    flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")


def run_command(main, doc: str) -> None:
    """Runs an absl `main` as a command: `--help` prints `doc`, library chatter stays out."""
    sys.modules["__main__"].__doc__ = doc

    def quiet_main(argv):
        console.start()
        return main(argv)

    app.run(quiet_main)


def run_config(workdir: str) -> ml_collections.ConfigDict:
    """The config a run was trained with (its `config.json`, every stage)."""
    path = paths.join(workdir, "config.json")
    if not paths.exists(path):
        raise FileNotFoundError(f"{path} not found: --workdir must be a directory written by openvision2.train.")
    return ml_collections.ConfigDict(json.loads(paths.read_text(path)))


class TrainedRun:

    def __init__(self, workdir: str, step: int | None = None, cfg: ml_collections.ConfigDict | None = None):
        """`cfg`: the run's config as read by `run_config` (default), possibly overridden."""
        # A curriculum's model is what its last stage trained (resolution, tokenizer...).
        self.cfg = stages.final_config(run_config(workdir) if cfg is None else cfg)
        self.recipe = recipes.get(self.cfg.objective)
        self.params, self.step = checkpoint.restore_params(workdir, step)
        self.tokenizer = get_tokenizer(self.cfg.text.vocab)
        self.ids = recipes.SpecialIds.of(self.tokenizer)

    @property
    def captions(self) -> bool:
        """Whether the run's recipe trained a caption decoder."""
        return self.recipe.captions

    def load_images(self, image_paths: list[str]) -> np.ndarray:
        """uint8 [N,S,S,3]: the eval preprocessing (shorter side to S, centre crop)."""
        out = []
        for p in image_paths:
            out.append(preprocess.eval_transform(preprocess.decode_image(paths.read_bytes(p)), self.cfg.image_size))
        return np.stack(out)

    @functools.cache
    def greedy(self, max_new_tokens: int = 0):
        """The jitted greedy captioner, built once per length: it compiles once per batch shape
        and is reused for every chunk of images."""
        if not self.captions:
            raise ValueError(f"this run trained objective={self.cfg.objective!r}, which has no caption decoder")
        return self.recipe.greedy_fn(self.cfg, self.ids, max_new_tokens)

    @functools.cached_property
    def encoder(self):
        """(the ViT, its jitted forward on normalised pixels)."""
        vit = parts.vit(self.cfg)
        return vit, jax.jit(lambda p, x: vit.apply({"params": p}, x))


def caption_images(run: TrainedRun, images: np.ndarray, max_new_tokens: int = 0) -> list[str]:
    """Greedy captions (KV cache, every visual token) of uint8 images already at the run's size."""
    tok = run.tokenizer
    tokens = np.asarray(run.greedy(max_new_tokens)(run.params, images))
    return [tok.decode(generate.strip(row, tok.eos_id, tok.pad_id)) for row in tokens]


def encode_images(run: TrainedRun, images_uint8: np.ndarray) -> dict[str, np.ndarray]:
    """`pixel_values` (what the encoder is fed), `patch_tokens` (after its final LayerNorm), `pooled`."""
    vit, forward = run.encoder
    pixel_values = normalize(images_uint8, vit.pixel_norm, np.float32)
    out = forward(run.params["encoder"], pixel_values)
    return {"pixel_values": np.asarray(pixel_values), "patch_tokens": np.asarray(out["tokens"]),
            "pooled": np.asarray(out["pooled"])}
