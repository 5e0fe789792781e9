"""Declarative name tables between our parameter tree and other libraries' state dicts.

A table is a list of `Rule`s, each naming our parameter path(s), their key and
a `Transform` (a pair of pure numpy functions, one per direction). Export and
import run the same table in opposite directions, so a round trip is the
identity by construction and a format is described in one place.

Our side is always the *unrolled* flat view (`encoder/block_3/q/kernel`):
`flatten` unstacks scanned layers (`blocks/...` with a leading depth axis) and
`unflatten` stacks them back onto whatever layout the target tree has, so one
table serves `scan_layers=True` and `False`. Per-layer rules carry an `{i}`
placeholder and are expanded with `expand`.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping, Sequence

import numpy as np

SCANNED = "blocks"  # the nn.scan module name of the encoder and decoder stacks


@dataclasses.dataclass(frozen=True)
class Transform:
    """`export(*ours) -> theirs`; `load(theirs) -> tuple of ours` (one per path of the rule)."""

    export: Callable[..., np.ndarray]
    load: Callable[[np.ndarray], tuple[np.ndarray, ...]]


def _split(n: int, axis: int = 0):
    return lambda x: tuple(np.split(x, n, axis=axis))


SAME = Transform(lambda x: x, lambda x: (x,))
# Dense kernel [in, out] <-> torch Linear weight [out, in].
DENSE = Transform(lambda x: x.T, lambda x: (x.T,))
# Conv kernel HWIO <-> torch Conv2d OIHW.
CONV = Transform(lambda x: x.transpose(3, 2, 0, 1), lambda x: (x.transpose(2, 3, 1, 0),))
# [1, N, D] (broadcast over batch) <-> [N, D] (an nn.Embedding table).
UNBATCH = Transform(lambda x: x[0], lambda x: (x[None],))
# Separate q/k/v (or k/v) Dense layers <-> one fused torch Linear (fused rows in that order).
FUSED_KERNELS = {n: Transform(lambda *xs: np.concatenate([x.T for x in xs], 0),
                              (lambda n: lambda x: tuple(p.T for p in np.split(x, n, 0)))(n)) for n in (2, 3)}
FUSED_BIASES = {n: Transform(lambda *xs: np.concatenate(xs, 0), _split(n)) for n in (2, 3)}


@dataclasses.dataclass(frozen=True)
class Rule:
    ours: tuple[str, ...]
    theirs: str
    transform: Transform = SAME
    # Absent on their side without being an error (e.g. a pooling head some checkpoints lack);
    # on import the parameter keeps its fresh initialisation and the report says so.
    optional: bool = False
    # Axis along which their tensor may be shorter than ours (a vocabulary padded to a
    # multiple for sharding): loaded rows are copied, the rest keep their initialisation.
    pad_axis: int | None = None


def rule(ours: str | Sequence[str], theirs: str, transform: Transform = SAME, **kw) -> Rule:
    return Rule((ours,) if isinstance(ours, str) else tuple(ours), theirs, transform, **kw)


def linear(ours: str, theirs: str, bias: bool = True) -> list[Rule]:
    """A Dense layer <-> a torch Linear: `ours/kernel` <-> `theirs.weight` (+ bias)."""
    return [rule(f"{ours}/kernel", f"{theirs}.weight", DENSE)] + ([rule(f"{ours}/bias", f"{theirs}.bias")] if bias else [])


def norm(ours: str, theirs: str) -> list[Rule]:
    """A LayerNorm: `ours/{scale,bias}` <-> `theirs.{weight,bias}`."""
    return [rule(f"{ours}/scale", f"{theirs}.weight"), rule(f"{ours}/bias", f"{theirs}.bias")]


def expand(rules: Sequence[Rule], depth: int) -> list[Rule]:
    """Instantiates `{i}` in per-layer rules for layers 0..depth-1."""
    out = []
    for i in range(depth):
        out += [dataclasses.replace(r, ours=tuple(p.format(i=i) for p in r.ours), theirs=r.theirs.format(i=i))
                for r in rules]
    return out


def prefixed(rules: Sequence[Rule], ours: str = "", theirs: Mapping[str, str] | str = "") -> list[Rule]:
    """Moves a component's table under prefixes: our subtree (`"encoder/"`) and their
    module path (`"vision_model."`, or `{"model.": "model.language_model."}` to rename a head)."""
    def rename(key):
        if isinstance(theirs, str):
            return theirs + key
        for old, new in theirs.items():
            if key.startswith(old):
                return new + key[len(old):]
        return key
    return [dataclasses.replace(r, ours=tuple(ours + p for p in r.ours), theirs=rename(r.theirs)) for r in rules]


# --- our side: nested params <-> flat unrolled dict -------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Spec:
    """Shape and dtype of a parameter, for checking an import without materialising the model."""

    shape: tuple[int, ...]
    dtype: np.dtype


def flatten(params: Mapping, shapes_only: bool = False) -> dict:
    """Nested params -> `{"a/b/c": array}` with scanned stacks unstacked into `block_{i}`
    (`Spec`s instead of arrays with `shapes_only`, e.g. for a sharded train state)."""
    out = {}

    def walk(node, path, stacked):
        for key, value in node.items():
            if isinstance(value, Mapping):
                walk(value, path + [key], stacked or key == SCANNED)
                continue
            value = Spec(tuple(value.shape), np.dtype(value.dtype)) if shapes_only else np.asarray(value)
            if stacked:
                at = path.index(SCANNED)
                for i in range(value.shape[0]):
                    layer = Spec(value.shape[1:], value.dtype) if shapes_only else value[i]
                    out["/".join(path[:at] + [f"block_{i}"] + path[at + 1:] + [key])] = layer
            else:
                out["/".join(path + [key])] = value
    walk(params, [], False)
    return out


def leaf_keys(params: Mapping) -> dict[tuple[str, ...], list[str]]:
    """Nested path of every leaf -> the flat key(s) it holds (one per layer when scanned)."""
    out = {}

    def walk(node, path, stacked):
        for key, value in node.items():
            if isinstance(value, Mapping):
                walk(value, path + [key], stacked or key == SCANNED)
            elif stacked:
                at = path.index(SCANNED)
                out[tuple(path + [key])] = ["/".join(path[:at] + [f"block_{i}"] + path[at + 1:] + [key])
                                            for i in range(value.shape[0])]
            else:
                out[tuple(path + [key])] = ["/".join(path + [key])]
    walk(params, [], False)
    return out


def unflatten(flat: Mapping[str, np.ndarray], like: Mapping) -> dict:
    """The inverse of `flatten`, laid out like the nested tree `like` (scanned or not)."""
    out = {}
    for path, keys in leaf_keys(like).items():
        node = out
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = np.stack([flat[k] for k in keys]) if path_is_stacked(path) else flat[keys[0]]
    return out


def path_is_stacked(path: Sequence[str]) -> bool:
    return SCANNED in path


# --- running a table ---------------------------------------------------------------------------------

def export(flat: Mapping[str, np.ndarray], rules: Sequence[Rule]) -> dict[str, np.ndarray]:
    """Our flat params -> their state dict. Every non-optional rule must find its inputs."""
    out, missing = {}, []
    for r in rules:
        if not all(p in flat for p in r.ours):
            if not r.optional:
                missing += [p for p in r.ours if p not in flat]
            continue
        out[r.theirs] = np.ascontiguousarray(r.transform.export(*(flat[p] for p in r.ours)))
    if missing:
        raise KeyError(f"parameters missing for export: {_short(missing)}")
    return out


@dataclasses.dataclass
class Report:
    """What an import did; `str()` is the log message a user reads."""

    source: str
    loaded: list[str] = dataclasses.field(default_factory=list)
    fresh: list[str] = dataclasses.field(default_factory=list)
    ignored: list[str] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)

    def __str__(self):
        lines = [f"{self.source}: loaded {len(self.loaded)} tensors"]
        if self.fresh:
            lines.append(f"  freshly initialised ({len(self.fresh)}): {_short(self.fresh)}")
        if self.ignored:
            lines.append(f"  ignored checkpoint keys ({len(self.ignored)}): {_short(self.ignored)}")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


class CheckpointMismatch(ValueError):
    """A checkpoint does not fit the model: missing tensors, wrong shapes or unknown keys."""


def load(theirs: Mapping[str, np.ndarray], rules: Sequence[Rule], target: Mapping[str, np.ndarray],
         report: Report, ignore: Sequence[str] = (), hint: str = "") -> dict[str, np.ndarray]:
    """Their state dict -> our flat params, checked against `target` (our flat params or
    anything with `.shape`/`.dtype`); parameters an optional rule does not find are left out.

    Raises `CheckpointMismatch` naming every missing tensor, shape mismatch and unknown
    key at once; `ignore` holds regexes for their keys we knowingly drop (classifier heads).
    """
    out, missing, mismatched, used = {}, [], [], set()
    for r in rules:
        if r.theirs not in theirs:
            if r.optional:
                report.fresh += [p for p in r.ours if p in target]
            else:
                missing.append(r.theirs)
            continue
        used.add(r.theirs)
        arrays = r.transform.load(np.asarray(theirs[r.theirs]))
        for path, value in zip(r.ours, arrays):
            if path not in target:
                mismatched.append(f"{r.theirs}: the model has no parameter {path}")
                continue
            want = target[path]
            if value.shape != want.shape and r.pad_axis is not None and _pads(value.shape, want.shape, r.pad_axis):
                n = value.shape[r.pad_axis]
                padded = np.zeros(want.shape, want.dtype)
                np.moveaxis(padded, r.pad_axis, 0)[:n] = np.moveaxis(value, r.pad_axis, 0)
                report.notes.append(f"{path}: {n} rows loaded, {want.shape[r.pad_axis] - n} padding rows set to "
                                    "zero (model.vocab_size is larger than the checkpoint's)")
                value = padded
            if value.shape != want.shape:
                mismatched.append(f"{r.theirs} {tuple(np.shape(theirs[r.theirs]))} -> {path}: got "
                                  f"{value.shape}, the model has {want.shape}")
                continue
            out[path] = np.asarray(value, dtype=want.dtype)
            report.loaded.append(path)
    unknown = [k for k in theirs if k not in used and not any(re.fullmatch(p, k) for p in ignore)]
    report.ignored += sorted(k for k in theirs if k not in used and k not in unknown)
    problems = []
    if missing:
        problems.append(f"missing tensors ({len(missing)}): {_short(missing)}")
    if mismatched:
        problems.append(f"shape mismatches ({len(mismatched)}):\n    " + "\n    ".join(mismatched[:12]))
    if unknown:
        problems.append(f"unexpected tensors the model has no place for ({len(unknown)}): {_short(unknown)}")
    if problems:
        raise CheckpointMismatch(f"{report.source} does not fit the model:\n  " + "\n  ".join(problems)
                                 + (f"\n  {hint}" if hint else ""))
    return out


def _pads(got, want, axis) -> bool:
    return (len(got) == len(want) and got[axis] < want[axis]
            and all(g == w for i, (g, w) in enumerate(zip(got, want)) if i != axis))


def _short(keys: Sequence[str], n: int = 8) -> str:
    keys = list(keys)
    return ", ".join(keys[:n]) + (f", ... ({len(keys) - n} more)" if len(keys) > n else "")
