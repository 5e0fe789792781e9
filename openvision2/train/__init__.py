"""Training: the trainer (`loop`), one stage's state and jitted step (`state`), the optimizer,
what crosses a stage boundary (`carry`), checkpoints, metrics and throughput accounting.

`python -m openvision2.train --config=configs/demo.py --workdir=/tmp/demo` runs `train`.
"""

from openvision2.train.loop import DivergenceError, train

__all__ = ["DivergenceError", "train"]
