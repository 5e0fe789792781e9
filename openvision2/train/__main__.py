r"""`python -m openvision2.train --config=configs/<name>.py[:<arg>] --workdir=<dir> [--config.<key>=<value> ...]`

Multi-host: `--coordinator_address=host:port --num_processes=N --process_id=i` (omit them on
TPU pods and under SLURM, where `jax.distributed.initialize()` finds its peers itself).
"""

from __future__ import annotations

import logging as std_logging
import os

from absl import app, flags, logging
import jax
from ml_collections import config_flags

from openvision2.train import distributed
from openvision2.train.loop import DivergenceError, train

config_flags.DEFINE_config_file("config", None, "Config file (`path.py[:arg]`).", lock_config=True)
flags.DEFINE_string("workdir", None, "Run directory: config.json, metrics.jsonl, checkpoints/.")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-host on CPU/GPU).")
flags.DEFINE_integer("num_processes", None, "Number of processes (multi-host).")
flags.DEFINE_integer("process_id", None, "This process's index (multi-host).")
flags.DEFINE_integer("stop_after_steps", 0, "Checkpoint and exit after this many steps of this invocation "
                     "(preemption drills; 0 = run to total_steps).")
FLAGS = flags.FLAGS

PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def quiet_library_logs():
    """Keep INFO lines from our own code; libraries (orbax, jax) speak at WARNING and up."""
    logging.get_absl_handler().addFilter(
        lambda record: record.levelno >= std_logging.WARNING or record.pathname.startswith(PACKAGE))


def main(argv):
    del argv
    if not FLAGS.workdir:
        raise app.UsageError("--workdir is required.")
    quiet_library_logs()
    distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
    if jax.process_index() > 0:
        logging.set_verbosity(logging.WARNING)  # one progress log per job: process 0's
    try:
        train(FLAGS.config, FLAGS.workdir, FLAGS.stop_after_steps)
    except DivergenceError as e:
        logging.error("%s", e)
        raise SystemExit(3) from None


if __name__ == "__main__":
    flags.mark_flags_as_required(["config"])
    app.run(main)
