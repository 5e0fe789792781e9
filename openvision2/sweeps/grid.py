r"""Sweep grids as data: a grid of config overrides, one named point per run.

A sweep file is a Python file with a big_vision-style `get_hyper(h[, arg])`
returning a list of `{config key: value}` dicts, built with the helpers of
`Hyper` (`h.product`, `h.zipit`, `h.chainit`, `h.sweep`, `h.fixed`). It
names the training config its points start from with `BASE = "configs/x.py[:arg]"`
(a path from the repository root), or is itself that config (it also defines
`get_config(arg)`, as big_vision configs do). Every point becomes the plain
trainer command

  python -m openvision2.train --config=<BASE> --workdir=<root>/<point> --config.<key>=<value> ...

so a sweep needs nothing from the trainer that a hand-written run does not,
any dotted key works (curriculum stage fields included), and the same
command runs locally, on a TPU pod or under SLURM (`tools/sweep.py`). Points are
validated by parsing those very flags (`config.cli`), so a point that the trainer
would refuse is refused here, before anything runs.

A point's name is built from the keys that vary across the grid, as
`alias=label` pairs (`enc=w64,keep=0.25`): stable across reruns of the same
sweep, so a rerun finds each point's workdir and resumes it.
"""


from __future__ import annotations

import dataclasses
import inspect
import itertools
import json
import os
import re
from typing import Any, Iterable

import ml_collections

from openvision2.config import cli, defaults, files

Grid = list[dict[str, Any]]
_CHECKOUT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Where point commands run: the repository root of a checkout (launch/ and configs/ are there),
# else (an installed package) the current directory.
REPO = _CHECKOUT if os.path.isdir(os.path.join(_CHECKOUT, "launch")) else os.getcwd()
MANIFEST = "sweep.json"
_VALUE_TYPES = (bool, int, float, str)


class Hyper:
    """The `h` passed to `get_hyper(h)`: builds lists of override dicts.

    Besides building the grid it remembers the short names given to keys
    (`name="enc"`) and to values (`{"w64": "mu/8,width=64"}`) so that point
    names stay short and readable.
    """

    def __init__(self):
        self.aliases: dict[str, str] = {}
        self.labels: dict[str, dict[str, str]] = {}  # key -> {flag value: label}

    def sweep(self, key: str, values: Iterable | dict[str, Any], name: str | None = None) -> Grid:
        """One point per value; `values` may map readable labels to values."""
        key = _check_key(key)
        if name:
            self.aliases[key] = name
        if isinstance(values, dict):
            for label, value in values.items():
                if not isinstance(label, str) or not label:
                    raise ValueError(f"h.sweep({key!r}, ...): labels must be non-empty strings, got {label!r}.")
                self.labels.setdefault(key, {})[flag_value(value)] = label
            values = list(values.values())
        values = list(values)
        if not values:
            raise ValueError(f"h.sweep({key!r}, ...) has no values.")
        return [{key: _check_value(key, v)} for v in values]

    def fixed(self, key: str, value) -> Grid:
        """The same value in every point (not part of point names)."""
        key = _check_key(key)
        return [{key: _check_value(key, value)}]

    def product(self, grids: list[Grid]) -> Grid:
        """Every combination, the last grid varying fastest."""
        return [_merge(combo, "h.product") for combo in itertools.product(*grids)]

    def zipit(self, grids: list[Grid]) -> Grid:
        """Point i of every grid together; the grids must have equal length."""
        lengths = [len(g) for g in grids]
        if len(set(lengths)) > 1:
            raise ValueError(f"h.zipit needs grids of equal length, got lengths {lengths}.")
        return [_merge(combo, "h.zipit") for combo in zip(*grids)]

    def chainit(self, grids: list[Grid]) -> Grid:
        """The points of every grid, one grid after the other."""
        return [dict(p) for g in grids for p in g]


def _check_key(key) -> str:
    if not isinstance(key, str) or not re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*", key.removeprefix("config.")):
        raise ValueError(f"Sweep key {key!r} is not a dotted config key like 'model.encoder' or 'keep_ratio'.")
    return key.removeprefix("config.")  # big_vision spells keys "config.x"


def _check_value(key: str, value):
    if not isinstance(value, _VALUE_TYPES):
        raise TypeError(f"Sweep value for {key!r} must be one of str, int, float, bool (a command-line "
                        f"--config.{key}=... value), got {type(value).__name__} {value!r}.")
    return value


def _merge(dicts, how: str) -> dict:
    out = {}
    for d in dicts:
        for key, value in d.items():
            if key in out:
                raise ValueError(f"{how}: key {key!r} is set by two of its grids; each key may come from one only.")
            out[key] = value
    return out


def flag_value(value) -> str:
    """The command-line spelling of a value; floats round-trip exactly."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if isinstance(value, float) else str(value)


def _default_label(value) -> str:
    return f"{value:g}" if isinstance(value, float) else flag_value(value)


def dirname(name: str) -> str:
    """Filesystem-safe directory for a point name (`enc=Ti/16` -> `enc=Ti-16`)."""
    return re.sub(r"[^A-Za-z0-9._,=+-]", "-", name)


@dataclasses.dataclass
class Point:
    name: str
    overrides: dict[str, Any]
    labels: dict[str, str]  # varied key -> its label in the name
    config: ml_collections.ConfigDict  # BASE with the overrides applied

    @property
    def dir(self) -> str:
        return dirname(self.name)

    def train_flags(self, base: str, workdir: str) -> list[str]:
        """The trainer's flags for this point."""
        return [f"--config={base}", f"--workdir={workdir}",
                *(f"--config.{k}={flag_value(v)}" for k, v in self.overrides.items())]


@dataclasses.dataclass
class Sweep:
    spec: str
    base: str  # training config spec, relative to the repository root
    points: list[Point]
    varied: list[str]  # keys that vary across points, in first-seen order
    aliases: dict[str, str]

    def manifest(self) -> dict:
        """What `--report` needs without the sweep file: names, overrides, resolved configs."""
        return {"spec": self.spec, "base": self.base, "varied": self.varied, "aliases": self.aliases,
                "points": [{"name": p.name, "dir": p.dir, "overrides": p.overrides, "labels": p.labels,
                            "config": config_json(p.config)} for p in self.points]}


def _repo_relative(path: str) -> str:
    """Commands run from the repository root: paths inside it stay short, others become absolute."""
    rel = os.path.relpath(os.path.abspath(path), REPO)
    return os.path.abspath(path) if rel.startswith("..") else rel


def load(spec: str) -> Sweep:
    """Expands `path/to/sweep.py[:arg]` into named, validated points."""
    path, _, arg = spec.partition(":")
    module = files.load_module(path)
    if not callable(getattr(module, "get_hyper", None)):
        raise ValueError(f"{path} defines no get_hyper(h): a sweep file returns its grid from get_hyper(h[, arg]), "
                         "e.g. `return h.product([h.sweep('keep_ratio', [0.25, 0.5])])`.")
    base = getattr(module, "BASE", None)
    if base is None:
        if not callable(getattr(module, "get_config", None)):
            raise ValueError(f"{path} has neither BASE = 'configs/<file>.py' nor get_config(arg): name the training "
                             "config the points start from.")
        base = _repo_relative(path) + (f":{arg}" if arg else "")
    h = Hyper()
    if len(inspect.signature(module.get_hyper).parameters) >= 2:
        grid = module.get_hyper(h, arg or None)
    elif arg and getattr(module, "BASE", None) is not None:
        raise ValueError(f"{path}: an argument ({arg!r}) was given but get_hyper(h) takes none; "
                         "define get_hyper(h, arg=None).")
    else:
        grid = module.get_hyper(h)
    return expand(grid, h, base, spec)


def expand(grid, h: Hyper, base: str, spec: str = "") -> Sweep:
    """Validates a grid against the BASE config and names its points."""
    if not isinstance(grid, (list, tuple)) or not grid or not all(isinstance(p, dict) for p in grid):
        raise ValueError(f"get_hyper must return a non-empty list of dicts {{config key: value}} (build it with "
                         f"h.product/h.sweep/h.fixed), got {type(grid).__name__}: {str(grid)[:200]}")
    grid = [{_check_key(k): _check_value(k, v) for k, v in p.items()} for p in grid]
    keys = list(dict.fromkeys(k for p in grid for k in p))
    varied = [k for k in keys if len({flag_value(p[k]) if k in p else None for p in grid}) > 1]
    if len(grid) == 1:
        varied = keys
    aliases = {k: h.aliases.get(k, k) for k in varied}
    repeated = {a for a in aliases.values() if list(aliases.values()).count(a) > 1}
    if repeated:
        raise ValueError(f"Sweep keys share the short name(s) {sorted(repeated)}; give each a distinct name=.")
    base_path, _, base_arg = base.partition(":")
    local = os.path.join(REPO, base_path)
    base_spec = (local if os.path.isfile(local) else files.find(base_path)) + (f":{base_arg}" if base_arg else "")
    files.load_config_file(base_spec)  # a base that does not load fails here, not at its first point
    points, seen = [], {}
    for overrides in grid:
        labels = {k: h.labels.get(k, {}).get(flag_value(overrides[k]), _default_label(overrides[k]))
                  for k in varied if k in overrides}
        name = ",".join(f"{aliases[k]}={label}" for k, label in labels.items()) or "base"
        cfg = _point_config(base_spec, overrides, f"Sweep point {name!r}", base)
        if dirname(name) in seen:
            raise ValueError(f"Sweep points {seen[dirname(name)]} and {overrides} are both named {name!r}: give "
                             "distinct labels with h.sweep(key, {label: value}, name=...).")
        seen[dirname(name)] = overrides
        points.append(Point(name, overrides, labels, cfg))
    return Sweep(spec, base, points, varied, aliases)


def _point_config(base_spec: str, overrides: dict, what: str, base: str) -> ml_collections.ConfigDict:
    """BASE with a point's overrides, parsed as the trainer parses them (and completed with the
    recipe's keys, as the trainer writes config.json); a failure names the key at fault."""
    try:
        return defaults.complete(cli.load(base_spec, cli.override_flags({k: flag_value(v) for k, v in overrides.items()})))
    except Exception:  # config_flags raises flags.Error, KeyError or ValueError subclasses
        for key, value in overrides.items():
            try:
                cli.load(base_spec, cli.override_flags({key: flag_value(value)}))
            except Exception as e:
                raise ValueError(f"{what}: cannot set {key}={value!r} on {base}: {e} Use a key that "
                                 f"{base.partition(':')[0]}'s get_config defines, with a value of its type.") from None
        raise


def config_json(cfg) -> dict:
    """The config exactly as the trainer writes it to config.json."""
    return json.loads(cfg.to_json_best_effort(sort_keys=True))


