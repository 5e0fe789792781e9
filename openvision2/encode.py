r"""Encode images with a trained run's vision encoder.

  openvision2-encode --workdir=<run dir or gs://...> [--step=N] --output=feats.npz IMAGE...
  python -m openvision2.encode ...                   (the same command)

Writes `pixel_values` [N,H,W,3] float32 (exactly what the encoder was fed, after eval
preprocessing and normalisation), `patch_tokens` [N,T,D] (the encoder output after its final
LayerNorm), `pooled` [N,D] and `paths`.
"""

from __future__ import annotations

import io

from absl import app, flags
import numpy as np

from openvision2 import paths as paths_lib
from openvision2.inference import TrainedRun, define_run_flags, encode_images, run_command

FLAGS = flags.FLAGS


def main(argv):
    paths = argv[1:]
    if not paths:
        raise app.UsageError("Give one or more image paths.")
    run = TrainedRun(FLAGS.workdir, FLAGS.step)
    arrays = encode_images(run, run.load_images(paths))
    out = io.BytesIO()
    np.savez(out, paths=np.array(paths), **arrays)
    paths_lib.write_bytes(FLAGS.output, out.getvalue())
    print(f"wrote {FLAGS.output}: " + ", ".join(f"{k} {v.shape}" for k, v in arrays.items()))


def run():
    """The `openvision2-encode` command."""
    define_run_flags()
    flags.DEFINE_string("output", None, "Output .npz path (local or gs://).", required=True)
    run_command(main, __doc__)


if __name__ == "__main__":
    run()
