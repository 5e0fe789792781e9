r"""A tiny scaling sweep on the shapes data: 2 encoder widths x 3 keep ratios.

  python tools/sweep.py --config=configs/sweeps/demo_scaling.py --root=/tmp/ov2-sweep
  python tools/sweep.py --report --root=/tmp/ov2-sweep     # results.csv + scaling.png

Six points of the embedded demo (configs/demo.py) shortened to 300 steps
(`:steps=N` changes that): 8 min 44 s on a quiet 2-core CPU (21 min
measured on a shared one). The encoders are the demo's (128 wide) and one
half as wide, both 4 layers on 8 px patches; the decoder is the demo's.
keep_ratio changes only the decoder's share of the compute (the encoder sees
every patch), so along each line compute moves a little, across lines a lot.
"""

from openvision2 import config as config_lib

BASE = "configs/demo.py"

ENCODERS = {
    "w64": "mu/8,width=64,depth=4,mlp_dim=256,heads=2",
    "w128": "mu/8,width=128,depth=4,mlp_dim=512,heads=4",
}


def get_hyper(h, arg=None):
    a = config_lib.parse_arg(arg, steps=300)
    return h.product([
        h.fixed("total_steps", a.steps),
        h.fixed("optim.warmup_steps", max(1, a.steps // 5)),  # the demo's 60 at 300 steps
        h.fixed("eval_every", 0),  # one eval, at the end
        h.fixed("checkpoint_every", max(1, a.steps // 3)),  # an interrupted point loses at most a third
        h.sweep("model.encoder", ENCODERS, name="enc"),
        h.sweep("keep_ratio", [0.25, 0.5, 1.0], name="keep"),
    ])
