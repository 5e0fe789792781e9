"""Sweep results: a point's state read from its workdir alone, and one row per point.

Whether a point is finished is read from its workdir (`point_status`), and
`collect_results` turns the workdirs into one row per point (`results.csv`), plotted
as final eval loss against training compute (`plot_scaling`).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import itertools
import json
import math
import statistics

import jax
import ml_collections

from openvision2 import paths, recipes
from openvision2.config import stages
from openvision2.data.tokenizer import get_tokenizer
from openvision2.sweeps.grid import MANIFEST
from openvision2.train import checkpoint, perf

RUNS_LOG = "sweep_runs.jsonl"  # one line per local run of a point: wall time and exit code


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
    path = paths.join(workdir, "metrics.jsonl")
    for line in (paths.read_text(path).splitlines() if paths.exists(path) else []):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and "step" in row:
            rows.append(row)
    return rows


def checkpoint_steps(workdir: str) -> list[int]:
    """Committed orbax checkpoints (an unfinished local save is a `<step>.orbax-checkpoint-tmp-*` dir;
    on an object store, a step without its commit marker)."""
    return checkpoint.committed_steps(workdir)


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
    if not paths.listdir(workdir):
        return Status("missing", 0)
    total = int(config["total_steps"])
    steps = checkpoint_steps(workdir)
    step = steps[-1] if steps else 0
    try:
        saved = _flatten(json.loads(paths.read_text(paths.join(workdir, "config.json"))))
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
    recipe = recipes.get(cfg.objective)
    shapes = recipe.abstract_params(cfg, recipes.SpecialIds.of(get_tokenizer(cfg.text.vocab)))
    counts = {f"params/{name}": sum(math.prod(x.shape) for x in jax.tree.leaves(tree))
              for name, tree in shapes.items()}
    return {**counts, "params/total": sum(counts.values())}


def result_row(root: str, entry: dict, varied: list[str]) -> dict:
    """One results.csv row: config values, status, final and median metrics, size and compute."""
    workdir = paths.join(root, entry["dir"])
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
    if evals:  # every eval metric at its latest value (evaluators may run at different cadences)
        row["eval_step"] = evals[-1]["step"]
        for r in evals:
            row.update({k: v for k, v in r.items() if k.startswith("eval/")})
    for key in ("perf/images_per_s", "perf/mfu"):  # medians: robust to the slow first interval after a resume
        values = [r[key] for r in train if key in r]
        row[key] = statistics.median(values) if values else ""
    row.update(param_counts(final))
    # Every stage's steps at that stage's cost (resolution, batch, keep ratio).
    row.update({"flops_per_step": flops_per_step, "flops_seen": perf.run_train_flops(cfg, steps=step)})
    runs = []
    try:
        runs = [json.loads(line) for line in paths.read_text(paths.join(workdir, RUNS_LOG)).splitlines() if line.strip()]
    except (FileNotFoundError, json.JSONDecodeError):
        pass
    row["wall_s"] = sum(r["wall_s"] for r in runs) if runs else ""
    row["workdir"] = workdir
    return row


def load_manifest(root: str) -> dict:
    path = paths.join(root, MANIFEST)
    try:
        return json.loads(paths.read_text(path))
    except FileNotFoundError:
        raise FileNotFoundError(f"No {path}: run the sweep into this --root first, or pass --config=<sweep file> "
                                "to --report.") from None


def collect_results(root: str, manifest: dict) -> list[dict]:
    return [result_row(root, entry, manifest["varied"]) for entry in manifest["points"]]


def write_csv(rows: list[dict], path: str):
    columns = list(dict.fromkeys(k for r in rows for k in r))
    out = io.StringIO(newline="")
    writer = csv.DictWriter(out, columns, restval="")
    writer.writeheader()
    writer.writerows(rows)
    paths.write_text(path, out.getvalue())


def plot_scaling(rows: list[dict], manifest: dict, path: str, title: str = "", metric: str = "eval/loss") -> int:
    """A final eval metric (default the held-out loss) vs FLOPs seen, log x; losses and
    perplexities on a log y axis, accuracies and scores on a linear one. Returns the number of
    points drawn.

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
        if row["status"] != "finished" or row.get(metric, "") == "":
            continue
        lab = labels[row["name"]]
        line = ",".join(f"{aliases[k]}={lab[k]}" for k in outer if k in lab) or (aliases.get(inner) or "all")
        lines.setdefault(line, []).append((row["flops_seen"], float(row[metric]), lab.get(inner, "")))
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
    lossy = metric.endswith(("loss", "perplexity"))
    if lossy:
        ax.set_yscale("log")
        for axis_formatter in (ax.yaxis.set_major_formatter, ax.yaxis.set_minor_formatter):
            axis_formatter(FormatStrFormatter("%.3g"))  # losses span well under a decade: label the minor ticks
    what = "final eval loss" if metric == "eval/loss" else f"final {metric}"
    ax.set_xlabel("training compute (FLOPs seen = model FLOPs/step x steps)")
    ax.set_ylabel(what)
    ax.set_title(title or f"{what} vs training compute", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(title=",".join(aliases[k] for k in outer) or None, fontsize=8)
    fig.tight_layout()
    image = io.BytesIO()
    fig.savefig(image, format="png", dpi=100)
    paths.write_bytes(path, image.getvalue())
    plt.close(fig)
    return sum(len(p) for p in lines.values())
