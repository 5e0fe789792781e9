"""The recipe registry: `objective` names a recipe, and this finds it.

Built-in recipes are the modules of this package, imported on first use; a name that is
not one of them is imported as a module path (`objective="my_lab.recipes.dino"`), so a recipe
can live outside this repository. Either way the module registers its recipe with
`@register`, under the recipe's `name` (for an outside module, its import path, so that
every process that reads the run's config.json finds it again).
"""

from __future__ import annotations

import importlib
import pkgutil

_RECIPES: dict = {}

DEFAULT = "captioning"  # what a config trains unless it says otherwise: OpenVision 2


def register(cls):
    """Class decorator: makes one instance of a `Recipe` subclass findable by its `name`."""
    if not getattr(cls, "name", ""):
        raise TypeError(f"{cls.__name__} has no `name`: set the value `objective` will select it by.")
    if cls.name in _RECIPES and type(_RECIPES[cls.name]) is not cls:
        raise ValueError(f"two recipes are named {cls.name!r}: {type(_RECIPES[cls.name]).__qualname__} and "
                         f"{cls.__qualname__}")
    _RECIPES[cls.name] = cls()
    return cls


def get(name: str):
    """The recipe `objective=name` selects, importing its module if needed."""
    if name not in _RECIPES:
        _import(name)
    if name not in _RECIPES:
        raise ValueError(f"objective={name!r}: module {name!r} was imported but registered no recipe of that name; "
                         "decorate its Recipe subclass with @openvision2.recipes.register and set `name` to the "
                         "module's import path.")
    return _RECIPES[name]


def _import(name: str) -> None:
    candidates = ([f"{__package__}.{name}"] if name.isidentifier() else []) + [name]
    for module in candidates:
        try:
            importlib.import_module(module)
            return
        except ModuleNotFoundError as e:
            if e.name != module:  # the module exists but something it imports does not
                raise
    raise ValueError(f"objective={name!r} is not a recipe: choose one of {names()} or give the import path of a "
                     "module that registers one.")


def names() -> list[str]:
    """Every recipe of this package, and any registered from elsewhere."""
    for info in pkgutil.iter_modules(importlib.import_module(__package__).__path__):
        importlib.import_module(f"{__package__}.{info.name}")
    return sorted(_RECIPES)
