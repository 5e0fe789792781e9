"""Training objectives: one small module per recipe, selected by `cfg.objective`.

The interface every objective implements is described in `captioning.py`.
"""

from openvision2.objectives.captioning import Captioning
from openvision2.objectives.coca import CoCa
from openvision2.objectives.contrastive import Clip, Siglip
from openvision2.objectives.mmgem import MMGEM
from openvision2.objectives.openvision import OpenVision

OBJECTIVES = {o.name: o for o in (Captioning, OpenVision, Clip, Siglip, CoCa, MMGEM)}


def get_objective(cfg):
    if cfg.objective not in OBJECTIVES:
        raise ValueError(f"objective={cfg.objective!r} is not available; choose from {sorted(OBJECTIVES)}.")
    return OBJECTIVES[cfg.objective](cfg)
