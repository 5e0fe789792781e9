r"""Encode images with a trained run's vision encoder.

  python -m openvision2.encode --workdir=/tmp/ov2-demo --output=feats.npz a.png b.jpg

Writes `pixel_values` [N,H,W,3] float32 (exactly what the encoder was fed,
after eval preprocessing and normalisation), `patch_tokens` [N,T,D] (the
encoder output after its final LayerNorm), `pooled` [N,D] and `paths`.
"""

from __future__ import annotations

from absl import app, flags
import numpy as np

from openvision2.inference import TrainedRun, encode_images

flags.DEFINE_string("workdir", None, "Run directory written by openvision2.train.", required=True)
flags.DEFINE_integer("step", None, "Checkpoint step (default: latest).")
flags.DEFINE_string("output", None, "Output .npz path.", required=True)
FLAGS = flags.FLAGS


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
