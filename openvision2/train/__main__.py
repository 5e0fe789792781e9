r"""Train (or resume) a run: every curriculum stage of a config, checkpointed, resumable.

  openvision2-train --config=configs/<name>.py[:<arg>] --workdir=<dir or gs://bucket/run> [--config.<key>=<value> ...]
  python -m openvision2.train ...                    (the same command)

`--config` is a config file (`configs/demo.py`, or `configs/openvision2.py:L/14`; outside a
checkout the configs installed with the package are used). Any key of the config is
overridden with `--config.<key>=<value>`, e.g. `--config.batch_size=128 --config.mesh.fsdp=4
--config.stages.finetune.image_size=336`; `--print_config` prints the resolved config (every
key, at the value the run would use) and exits. Rerunning the same command on the same
workdir resumes from its latest checkpoint.

Multi-host: `--coordinator_address=host:port --num_processes=N --process_id=i` (omit them on
TPU pods and under SLURM, where `jax.distributed.initialize()` finds its peers itself).
"""

from __future__ import annotations

from absl import app, flags, logging
import jax
from ml_collections import config_flags

from openvision2 import console
from openvision2.config import cli, defaults
from openvision2.train import distributed
from openvision2.train.loop import DivergenceError, train

config_flags.DEFINE_config_file("config", None, "Config file (`path.py[:arg]`); override keys with "
                                "--config.<key>=<value>.", lock_config=True)
flags.DEFINE_string("workdir", None, "Run directory (local or gs://): config.json, metrics.jsonl, tensorboard/, "
                    "checkpoints/.")
flags.DEFINE_bool("print_config", False, "Print the resolved config as JSON and exit without training.")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-host on CPU/GPU).")
flags.DEFINE_integer("num_processes", None, "Number of processes (multi-host).")
flags.DEFINE_integer("process_id", None, "This process's index (multi-host).")
flags.DEFINE_integer("stop_after_steps", 0, "Checkpoint and exit after this many steps of this invocation "
                     "(preemption drills; 0 = run to total_steps).")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    if FLAGS.print_config:
        print(defaults.complete(FLAGS.config).to_json_best_effort(indent=2, sort_keys=True))
        return
    if not FLAGS.workdir:
        raise app.UsageError("--workdir is required.")
    console.start()
    distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
    if jax.process_index() > 0:
        logging.set_verbosity(logging.WARNING)  # one progress log per job: process 0's
    try:
        train(FLAGS.config, FLAGS.workdir, FLAGS.stop_after_steps)
    except DivergenceError as e:
        logging.error("%s", e)
        raise SystemExit(3) from None


def run():
    """The `openvision2-train` command."""
    cli.run(main, __doc__)


if __name__ == "__main__":
    run()
