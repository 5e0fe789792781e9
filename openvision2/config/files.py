"""Config files: finding and loading `path.py[:arg]`, and parsing the `arg` of `get_config(arg)`.

A config path is read as given; one that does not exist and starts with `configs/` is looked up
among the configs installed with the package (the repository's `configs/`, shipped in the wheel
as `openvision2.configs`), so `--config=configs/demo.py` works from any directory.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import re

import ml_collections

_CONFIGS = "configs/"


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


@functools.cache
def packaged_configs() -> str | None:
    """The configs installed with the package: `openvision2/configs/` in a wheel, the repository's
    `configs/` beside the package in a checkout (editable install)."""
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for candidate in (os.path.join(package, "configs"), os.path.join(os.path.dirname(package), "configs")):
        if os.path.isfile(os.path.join(candidate, "demo.py")):
            return candidate
    return None


def find(path: str) -> str:
    """`path` if it exists, else the installed `configs/...` file of that name (else `path`)."""
    if os.path.isfile(path) or not path.startswith(_CONFIGS) or packaged_configs() is None:
        return path
    installed = os.path.join(packaged_configs(), path[len(_CONFIGS):])
    return installed if os.path.isfile(installed) else path


def find_spec(spec: str) -> str:
    """`path.py[:arg]` with its path found (`find`)."""
    path, sep, arg = spec.partition(":")
    return find(path) + sep + arg


def resolve_config_flags(argv: list[str], names: tuple[str, ...] = ("config", "compare")) -> list[str]:
    """A command line whose `--config=` (and `--compare=`) specs are found (`find_spec`), so a
    flag parser that opens them by path finds the installed configs too."""
    out, pending = [], None
    for arg in argv:
        if pending:
            out.append(find_spec(arg))
            pending = None
            continue
        match = re.fullmatch(rf"(--?(?:{'|'.join(names)}))(=(.*))?", arg, flags=re.S)
        if match and match.group(2):
            out.append(f"{match.group(1)}={find_spec(match.group(3))}")
        else:
            pending = match is not None
            out.append(arg)
    return out


def load_module(path: str):
    """Executes a config (or sweep) file and returns it as a module."""
    path = find(path)
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
