r"""Encode images with a trained run's vision encoder.

  python -m openvision2.encode --workdir=/tmp/ov2-demo --output=feats.npz a.png b.jpg

Writes `pixel_values` [N,H,W,3] float32 (exactly what the encoder was fed,
after eval preprocessing and normalisation), `patch_tokens` [N,T,D] (the
encoder output after its final LayerNorm), `pooled` [N,D] and `paths`.
"""

from __future__ import annotations

from absl import app, flags
import jax
import numpy as np

from openvision2.inference import TrainedRun
from openvision2.models import build_model
from openvision2.models.vit import normalize

flags.DEFINE_string("workdir", None, "Run directory written by openvision2.train.", required=True)
flags.DEFINE_integer("step", None, "Checkpoint step (default: latest).")
flags.DEFINE_string("output", None, "Output .npz path.", required=True)
FLAGS = flags.FLAGS


def encode_images(run: TrainedRun, images_uint8: np.ndarray) -> dict[str, np.ndarray]:
    encoder = build_model(run.cfg).encoder
    pixel_values = normalize(images_uint8, run.cfg.model.get("pixel_norm", "imagenet"), np.float32)
    out = jax.jit(lambda p, x: encoder.apply({"params": p}, x))(run.params["encoder"], pixel_values)
    return {"pixel_values": np.asarray(pixel_values), "patch_tokens": np.asarray(out["tokens"]),
            "pooled": np.asarray(out["pooled"])}


def main(argv):
    paths = argv[1:]
    if not paths:
        raise app.UsageError("Give one or more image paths.")
    run = TrainedRun(FLAGS.workdir, FLAGS.step)
    arrays = encode_images(run, run.load_images(paths))
    np.savez(FLAGS.output, paths=np.array(paths), **arrays)
    print(f"wrote {FLAGS.output}: " + ", ".join(f"{k} {v.shape}" for k, v in arrays.items()))


if __name__ == "__main__":
    app.run(main)
