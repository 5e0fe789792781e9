"""Recipes: everything that makes one training recipe different, one module each.

`objective` in a config names the recipe (`captioning` is OpenVision 2; `openvision`, `clip`,
`siglip`, `coca` and `mmgem` are the recipes it is compared with). Every other module asks the
recipe (`recipes.get(cfg.objective)`) what it needs: its config keys, batch fields, model,
loss, FLOPs, capabilities and export formats (see `base.Recipe`). Adding a recipe is one new
module here (or anywhere importable) with a registered `Recipe` subclass, plus a config.
"""

from openvision2.recipes.base import Objective, Recipe, SpecialIds
from openvision2.recipes.registry import DEFAULT, get, names, register

__all__ = ["DEFAULT", "Objective", "Recipe", "SpecialIds", "get", "names", "register"]
