r"""Sweeps as data: a grid of config overrides, one workdir per point, and its results.

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
command runs locally, on a TPU pod or under SLURM (`tools/sweep.py`).

A point's name is built from the keys that vary across the grid, as
`alias=label` pairs (`enc=w64,keep=0.25`): stable across reruns of the same
sweep, so a rerun finds each point's workdir and resumes it. Whether a point
is finished is read from its workdir alone (`point_status`), and
`collect_results` turns the workdirs into one row per point.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import inspect
import itertools
import json
import math
import os
import re
import statistics
from typing import Any, Iterable

import ml_collections

from openvision2 import config as config_lib

Grid = list[dict[str, Any]]
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # where point commands run
MANIFEST = "sweep.json"
RUNS_LOG = "sweep_runs.jsonl"  # one line per local run of a point: wall time and exit code
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
    module = config_lib.load_module(path)
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
    base_cfg = config_lib.load_config_file(os.path.join(REPO, base_path) + (f":{base_arg}" if base_arg else ""))
    points, seen = [], {}
    for overrides in grid:
        labels = {k: h.labels.get(k, {}).get(flag_value(overrides[k]), _default_label(overrides[k]))
                  for k in varied if k in overrides}
        name = ",".join(f"{aliases[k]}={label}" for k, label in labels.items()) or "base"
        cfg = copy.deepcopy(base_cfg)
        for key, value in overrides.items():
            try:
                config_lib.apply_overrides(cfg, {key: flag_value(value)})
            except (KeyError, AttributeError, ValueError) as e:
                raise ValueError(f"Sweep point {name!r}: cannot set {key}={value!r} on {base}: {e} Use a key that "
                                 f"{base_path}'s get_config defines, with a value of its type.") from None
        if dirname(name) in seen:
            raise ValueError(f"Sweep points {seen[dirname(name)]} and {overrides} are both named {name!r}: give "
                             "distinct labels with h.sweep(key, {label: value}, name=...).")
        seen[dirname(name)] = overrides
        points.append(Point(name, overrides, labels, cfg))
    return Sweep(spec, base, points, varied, aliases)


def config_json(cfg) -> dict:
    """The config exactly as the trainer writes it to config.json."""
    return json.loads(cfg.to_json_best_effort(sort_keys=True))


def _flatten(tree: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def read_metrics(workdir: str) -> list[dict]:
    """metrics.jsonl events; a line torn by a kill is skipped."""
    rows = []
    try:
        with open(os.path.join(workdir, "metrics.jsonl")) as f:
            for line in f:
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(row, dict) and "step" in row:
                    rows.append(row)
    except FileNotFoundError:
        pass
    return rows


def checkpoint_steps(workdir: str) -> list[int]:
    """Committed orbax checkpoints (an unfinished save is a `<step>.orbax-checkpoint-tmp-*` dir)."""
    try:
        return sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit())
    except FileNotFoundError:
        return []


@dataclasses.dataclass(frozen=True)
class Status:
    state: str  # missing | incomplete | finished | mismatch
    step: int  # latest committed checkpoint (0 if none)
    detail: str = ""


def point_status(workdir: str, config: dict) -> Status:
    """Reads a point's workdir: finished = checkpoint at total_steps and the final eval written.

    `config` is the point's resolved config (as in config.json). A workdir
    whose checkpoints were written with another config is a `mismatch`:
    resuming it would mix two runs, so the sweep refuses rather than guesses.
    (Without a checkpoint the trainer starts afresh and nothing is mixed.)
    """
    if not os.path.isdir(workdir) or not os.listdir(workdir):
        return Status("missing", 0)
    total = int(config["total_steps"])
    steps = checkpoint_steps(workdir)
    step = steps[-1] if steps else 0
    try:
        with open(os.path.join(workdir, "config.json")) as f:
            saved = _flatten(json.load(f))
    except (FileNotFoundError, json.JSONDecodeError):
        saved = None
    if saved is not None and step:
        differ = sorted(k for k, v in _flatten(config).items() if saved.get(k, v) != v)
        if differ:
            return Status("mismatch", step, "config.json differs in " + ", ".join(
                f"{k}: {saved[k]!r} != {_flatten(config)[k]!r}" for k in differ[:4]) +
                ": another sweep wrote this workdir; use a new --root (or delete the workdir)")
    evals = [r["step"] for r in read_metrics(workdir) if any(k.startswith("eval/") for k in r)]
    if step == total and total in evals:
        return Status("finished", step)
    if step > total:
        return Status("mismatch", step, f"checkpoint at step {step} is past total_steps={total}")
    return Status("incomplete", step, f"checkpoint at step {step}/{total}" if step else "no checkpoint yet")


def param_counts(cfg) -> dict[str, int]:
    """Parameter count per top-level module and in total, from shapes only (no compute)."""
    import jax

    from openvision2.models import build_model
    from openvision2.step import init_params

    shapes = jax.eval_shape(lambda: init_params(build_model(cfg), cfg, jax.random.key(0)))
    counts = {f"params/{name}": sum(math.prod(x.shape) for x in jax.tree.leaves(tree))
              for name, tree in shapes.items()}
    return {**counts, "params/total": sum(counts.values())}


def result_row(root: str, entry: dict, varied: list[str]) -> dict:
    """One results.csv row: config values, status, final and median metrics, size and compute."""
    from openvision2 import perf, stages

    workdir = os.path.join(root, entry["dir"])
    cfg = ml_collections.ConfigDict(entry["config"])
    final = stages.final_config(cfg)  # a curriculum's model is its last stage's
    status = point_status(workdir, entry["config"])
    events = read_metrics(workdir)
    train = [r for r in events if "train/loss" in r]
    evals = [r for r in events if any(k.startswith("eval/") for k in r)]
    step = max((r["step"] for r in train), default=0)
    flops_per_step = perf.train_flops(final)
    row = {"name": entry["name"], "status": status.state, **{k: entry["overrides"].get(k, "") for k in varied},
           "step": step, "total_steps": int(cfg.total_steps),
           "train/loss": train[-1]["train/loss"] if train else ""}
    if evals:
        row.update({"eval_step": evals[-1]["step"], **{k: v for k, v in evals[-1].items() if k.startswith("eval/")}})
    for key in ("perf/images_per_s", "perf/mfu"):  # medians: robust to the slow first interval after a resume
        values = [r[key] for r in train if key in r]
        row[key] = statistics.median(values) if values else ""
    row.update(param_counts(final))
    # Every stage's steps at that stage's cost (resolution, batch, keep ratio).
    row.update({"flops_per_step": flops_per_step, "flops_seen": perf.run_train_flops(cfg, steps=step)})
    runs = []
    try:
        with open(os.path.join(workdir, RUNS_LOG)) as f:
            runs = [json.loads(line) for line in f if line.strip()]
    except (FileNotFoundError, json.JSONDecodeError):
        pass
    row["wall_s"] = sum(r["wall_s"] for r in runs) if runs else ""
    row["workdir"] = workdir
    return row


def load_manifest(root: str) -> dict:
    path = os.path.join(root, MANIFEST)
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"No {path}: run the sweep into this --root first, or pass --config=<sweep file> "
                                "to --report.") from None


def collect_results(root: str, manifest: dict) -> list[dict]:
    return [result_row(root, entry, manifest["varied"]) for entry in manifest["points"]]


def write_csv(rows: list[dict], path: str):
    columns = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, columns, restval="")
        writer.writeheader()
        writer.writerows(rows)


def plot_scaling(rows: list[dict], manifest: dict, path: str, title: str = "") -> int:
    """Final eval loss vs FLOPs seen, log-log; returns the number of points drawn.

    The last varied key runs along each line; every combination of the other
    varied keys is its own line (e.g. one line per encoder across keep ratios).
    """
    try:
        import matplotlib
    except ImportError:
        raise ImportError("Plotting needs matplotlib: pip install -e '.[sweep]'.") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FormatStrFormatter

    aliases, varied = manifest["aliases"], manifest["varied"]
    inner, outer = (varied[-1], varied[:-1]) if varied else (None, [])
    labels = {e["name"]: e["labels"] for e in manifest["points"]}
    lines: dict[str, list] = {}
    for row in rows:
        if row["status"] != "finished" or row.get("eval/loss", "") == "":
            continue
        lab = labels[row["name"]]
        line = ",".join(f"{aliases[k]}={lab[k]}" for k in outer if k in lab) or (aliases.get(inner) or "all")
        lines.setdefault(line, []).append((row["flops_seen"], row["eval/loss"], lab.get(inner, "")))
    if not lines:
        return 0
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for (line, pts), marker in zip(lines.items(), itertools.cycle("osD^vPX")):
        pts.sort()
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=marker, label=line)
        for x, y, lab in pts:
            if inner:
                ax.annotate(f"{aliases[inner]}={lab}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.margins(0.1)  # room for the point labels
    ax.set_xscale("log")
    ax.set_yscale("log")
    for axis_formatter in (ax.yaxis.set_major_formatter, ax.yaxis.set_minor_formatter):
        axis_formatter(FormatStrFormatter("%.3g"))  # losses span well under a decade: label the minor ticks
    ax.set_xlabel("training compute (FLOPs seen = model FLOPs/step x steps)")
    ax.set_ylabel("final eval loss")
    ax.set_title(title or "final eval loss vs training compute", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(title=",".join(aliases[k] for k in outer) or None, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return sum(len(p) for p in lines.values())
