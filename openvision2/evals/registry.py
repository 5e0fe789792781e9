"""The evaluator registry: `config.evals.<name>.type` names an evaluator type, and this finds it.

Built-in types are the modules of this package named after them (`zeroshot`, `retrieval`,
`linear_probe`, `captioning`, `perplexity`), imported on first use; any other type is imported
as a module path (`type="my_lab.evals.vqa"`), whose `Evaluator` subclass registers itself with
`@register` under that path. Each type declares its config keys at their defaults
(`Evaluator.defaults`), which a config's eval entry is completed with.
"""

from __future__ import annotations

import importlib

_TYPES: dict[str, type] = {}

# The keys every evaluator has.
COMMON = {
    "type": "",
    "every": 0,  # 0 = at the end of each stage; N > 0 = also every N steps; -1 = never while training
    "data": "",  # the eval set (see evals/sets.py)
    "num": 0,  # examples to use (built-in sets: to generate); 0 = all / the set's default
    "batch_size": 0,  # images per global batch; 0 = the run's eval_batch_size
    # How to read `data` when it is a file set (evals/formats.py); "" = the format's default.
    "images": "",  # COCO captions JSON: the image directory (default: beside the JSON)
    "split": "",  # Karpathy split / webdataset split directory (default: test)
    "caption_field": "",  # ArrayRecord: the captions field(s) (default: caption)
}


def register(cls):
    if not getattr(cls, "type", ""):
        raise TypeError(f"{cls.__name__} has no `type`: set the name `config.evals.<name>.type` selects it by.")
    _TYPES[cls.type] = cls
    return cls


def get(type_name: str):
    if type_name not in _TYPES:
        candidates = ([f"{__package__}.{type_name}"] if type_name.isidentifier() else []) + [type_name]
        for module in candidates:
            try:
                importlib.import_module(module)
                break
            except ModuleNotFoundError as e:
                if e.name != module:
                    raise
    if type_name not in _TYPES:
        raise ValueError(f"evaluator type {type_name!r} is unknown: choose one of {names()} or give the import path "
                         "of a module that registers one with @openvision2.evals.registry.register.")
    return _TYPES[type_name]


def names() -> list[str]:
    for module in ("zeroshot", "retrieval", "linear_probe", "captioning", "perplexity"):
        importlib.import_module(f"{__package__}.{module}")
    return sorted(_TYPES)


def defaults(type_name: str) -> dict:
    """Every key an eval entry of this type has, at its defaults."""
    return {**COMMON, **get(type_name).defaults, "type": type_name}
