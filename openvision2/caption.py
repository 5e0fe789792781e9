r"""Caption images with a trained run (greedy, KV cache, no token masking).

  python -m openvision2.caption --workdir=/tmp/ov2-demo photo.png other.jpg

Prints `<path>\t<caption>` per image.
"""

from __future__ import annotations

from absl import app, flags
import numpy as np

from openvision2.inference import TrainedRun, caption_images

flags.DEFINE_string("workdir", None, "Run directory written by openvision2.train.", required=True)
flags.DEFINE_integer("step", None, "Checkpoint step (default: latest).")
flags.DEFINE_integer("batch_size", 16, "Images per forward pass.")
flags.DEFINE_integer("max_new_tokens", 0, "Caption length limit in tokens (0 = the run's text.max_len - 1).")
FLAGS = flags.FLAGS


def main(argv):
    paths = argv[1:]
    if not paths:
        raise app.UsageError("Give one or more image paths.")
    run = TrainedRun(FLAGS.workdir, FLAGS.step)
    if not run.captions:
        raise app.UsageError(f"this run trained objective={run.cfg.objective!r}, which has no caption decoder; "
                             "use openvision2.encode for its image features.")
    size = min(FLAGS.batch_size, len(paths))
    for i in range(0, len(paths), size):
        chunk = paths[i:i + size]
        images = run.load_images(chunk)
        # The last chunk is padded to the others' size, so every chunk runs the one compiled captioner.
        padded = np.concatenate([images, np.zeros((size - len(chunk), *images.shape[1:]), images.dtype)])
        for path, text in zip(chunk, caption_images(run, padded, FLAGS.max_new_tokens)):
            print(f"{path}\t{text}", flush=True)


if __name__ == "__main__":
    app.run(main)
