r"""Caption images with a trained run (greedy, KV cache, every visual token: no masking).

  openvision2-caption --workdir=<run dir or gs://...> [--step=N] IMAGE...
  python -m openvision2.caption ...                  (the same command)

Prints `<path>\t<caption>` per image, in the order given.
"""

from __future__ import annotations

from absl import app, flags
import numpy as np

from openvision2.inference import TrainedRun, caption_images, define_run_flags, run_command

FLAGS = flags.FLAGS


def main(argv):
    paths = argv[1:]
    if not paths:
        raise app.UsageError("Give one or more image paths.")
    run = TrainedRun(FLAGS.workdir, FLAGS.step)
    if not run.captions:
        raise app.UsageError(f"this run trained objective={run.cfg.objective!r}, which has no caption decoder; "
                             "use openvision2-encode for its image features.")
    size = min(FLAGS.batch_size, len(paths))
    for i in range(0, len(paths), size):
        chunk = paths[i:i + size]
        images = run.load_images(chunk)
        # The last chunk is padded to the others' size, so every chunk runs the one compiled captioner.
        padded = np.concatenate([images, np.zeros((size - len(chunk), *images.shape[1:]), images.dtype)])
        for path, text in zip(chunk, caption_images(run, padded, FLAGS.max_new_tokens)):
            print(f"{path}\t{text}", flush=True)


def run():
    """The `openvision2-caption` command."""
    define_run_flags()
    flags.DEFINE_integer("batch_size", 16, "Images per forward pass.")
    flags.DEFINE_integer("max_new_tokens", 0, "Caption length limit in tokens (0 = the run's text.max_len - 1).")
    run_command(main, __doc__)


if __name__ == "__main__":
    run()
