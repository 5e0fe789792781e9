"""Loading a trained run for inference: config, params, tokenizer, preprocessing.

Shared by the `caption`, `encode` and `export` commands and `tools/check_export.py`. Runs on one device
of whatever backend is present; no token masking (that is training only).
"""

from __future__ import annotations

import json
import os

import jax
import ml_collections
import numpy as np

from openvision2 import checkpoint, generate, stages
from openvision2.data import preprocess
from openvision2.data.tokenizer import get_tokenizer
from openvision2.models import build_model
from openvision2.models.vit import normalize
from openvision2.objectives import OBJECTIVES


class TrainedRun:

    def __init__(self, workdir: str, step: int | None = None):
        path = os.path.join(workdir, "config.json")
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path} not found: --workdir must be a directory written by openvision2.train.")
        with open(path) as f:
            # A curriculum's model is what its last stage trained (resolution, tokenizer...).
            self.cfg = stages.final_config(ml_collections.ConfigDict(json.load(f)))
        self.params, self.step = checkpoint.restore_params(workdir, step)
        self.tokenizer = get_tokenizer(self.cfg.text.vocab)

    @property
    def captions(self) -> bool:
        """Whether the run's objective trained a caption decoder."""
        return OBJECTIVES[self.cfg.objective].captions

    def load_images(self, paths: list[str]) -> np.ndarray:
        """uint8 [N,S,S,3]: the eval preprocessing (shorter side to S, centre crop)."""
        out = []
        for p in paths:
            with open(p, "rb") as f:
                out.append(preprocess.eval_transform(preprocess.decode_image(f.read()), self.cfg.image_size))
        return np.stack(out)


def caption_images(run: TrainedRun, images: np.ndarray, max_new_tokens: int = 0) -> list[str]:
    """Greedy captions (KV cache, every visual token) of uint8 images already at the run's size."""
    if not run.captions:
        raise ValueError(f"this run trained objective={run.cfg.objective!r}, which has no caption decoder")
    tok = run.tokenizer
    greedy = generate.make_greedy_fn(run.cfg, max_new_tokens or run.cfg.text.max_len - 1, tok.bos_id, tok.eos_id,
                                     tok.pad_id)
    tokens = np.asarray(greedy(run.params, images))
    return [tok.decode(generate.strip(row, tok.eos_id, tok.pad_id)) for row in tokens]


def encode_images(run: TrainedRun, images_uint8: np.ndarray) -> dict[str, np.ndarray]:
    """`pixel_values` (what the encoder is fed), `patch_tokens` (after its final LayerNorm), `pooled`."""
    encoder = build_model(run.cfg).encoder
    pixel_values = normalize(images_uint8, encoder.pixel_norm, np.float32)
    out = jax.jit(lambda p, x: encoder.apply({"params": p}, x))(run.params["encoder"], pixel_values)
    return {"pixel_values": np.asarray(pixel_values), "patch_tokens": np.asarray(out["tokens"]),
            "pooled": np.asarray(out["pooled"])}
