"""Config files: loading `path.py[:arg]` and parsing the `arg` of `get_config(arg)`."""

from __future__ import annotations

import importlib.util
import os

import ml_collections


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
    """big_vision-style `get_config` argument: `"B/16,res=224,runlocal"`.

    Positional items fill keys in the order of `defaults`; a bare key that is a
    bool default switches it on.
    """
    out = dict(defaults)
    if not arg:
        return ml_collections.ConfigDict(out)
    positional = iter(defaults)
    for item in arg.split(","):
        item = item.strip()
        if not item:
            continue
        if "=" in item:
            key, value = item.split("=", 1)
        elif isinstance(defaults.get(item), bool):
            key, value = item, "True"
        else:
            key, value = next(positional), item
        if key not in defaults:
            raise ValueError(f"Unknown config argument {key!r}; known: {sorted(defaults)}.")
        kind = type(defaults[key])
        out[key] = (value.lower() in ("1", "true", "yes")) if kind is bool else kind(value)
    return ml_collections.ConfigDict(out)


def load_module(path: str):
    """Executes a config (or sweep) file and returns it as a module."""
    module_spec = importlib.util.spec_from_file_location(f"_ov2_config_{abs(hash(path))}", path)
    if module_spec is None or not os.path.isfile(path):
        raise FileNotFoundError(f"Config file {path!r} not found.")
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def sibling_config(config_file: str, name: str, arg: str | None = None) -> ml_collections.ConfigDict:
    """`get_config(arg)` of another config file in the same directory as `config_file` (a
    config's `__file__`): recipes build on a shared base the way big_vision's configs do."""
    return load_module(os.path.join(os.path.dirname(os.path.abspath(config_file)), name)).get_config(arg)


def load_config_file(spec: str) -> ml_collections.ConfigDict:
    """`path/to/config.py[:arg]` -> the ConfigDict its `get_config(arg)` returns (no overrides)."""
    path, _, arg = spec.partition(":")
    return load_module(path).get_config(arg or None)
