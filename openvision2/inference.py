"""Loading a trained run for inference: config, params, tokenizer, preprocessing.

Shared by the `caption`, `encode` and `export` commands. Runs on one device
of whatever backend is present; no token masking (that is training only).
"""

from __future__ import annotations

import json
import os

import ml_collections
import numpy as np

from openvision2 import checkpoint, stages
from openvision2.data import preprocess
from openvision2.data.tokenizer import get_tokenizer


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

    def load_images(self, paths: list[str]) -> np.ndarray:
        """uint8 [N,S,S,3]: the eval preprocessing (shorter side to S, centre crop)."""
        out = []
        for p in paths:
            with open(p, "rb") as f:
                out.append(preprocess.eval_transform(preprocess.decode_image(f.read()), self.cfg.image_size))
        return np.stack(out)
