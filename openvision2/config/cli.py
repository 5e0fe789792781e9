"""Command lines: `--config=<file.py[:arg]>` plus `--config.<key>=<value>` overrides, parsed by
`ml_collections.config_flags` everywhere (the trainer, the benchmark and AOT tools, sweeps), so
every tool accepts exactly what the trainer accepts and refuses the same mistakes (an unknown
key, `scan_layers=ture`)."""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence

from absl import app, flags
import ml_collections
from ml_collections import config_flags

from openvision2.config import files

_CONFIG_FLAG = re.compile(r"^-{1,2}config(=|$)")
_OVERRIDE = re.compile(r"^-{1,2}(?:no)?config\.([^=]+)")


def run(main, doc: str) -> None:
    """Runs an absl `main` that takes `--config`: its specs are found among the installed configs
    when they are not where the command runs, and `--help` prints `doc`."""
    sys.argv = files.resolve_config_flags(sys.argv)
    sys.modules["__main__"].__doc__ = doc
    flags.mark_flags_as_required(["config"])
    app.run(main)


def load(spec: str, argv: Sequence[str] = ()) -> ml_collections.ConfigDict:
    """The config `spec` (`path.py[:arg]`) with the `--config.*` overrides found in `argv`
    applied. Other flags in `argv`, and its own `--config=...`, are ignored."""
    args = ["openvision2", *_without_config_spec(argv)]
    values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", spec, "Config file.", flag_values=values, lock_config=True,
                                    sys_argv=args)
    values(args, known_only=True)
    return values.config


def load_shared(spec: str, argv: Sequence[str]) -> tuple[ml_collections.ConfigDict, list[str]]:
    """`load` for a config compared beside the command line's own (`--compare`): the overrides
    go to every compared config that has their key; those it lacks (a key of another recipe,
    such as the text tower's size beside a captioner) are left out, and returned."""
    present = files.load_config_file(spec)
    kept, left_out = [], []
    for tokens, key in _override_tokens(_without_config_spec(argv)):
        (kept.extend(tokens) if _has_key(present, key) else left_out.append(key))
    return load(spec, kept), left_out


def compared_runs(config_flag, compare: list[str]) -> list[tuple[str, ml_collections.ConfigDict]]:
    """(spec, config) of the command line's own `--config` and of each `--compare` spec, every one
    with the command line's overrides (those a compared config lacks are left out, with a note)."""
    runs = [(config_flags.get_config_filename(config_flag), config_flag.value)]
    for spec in split_specs(compare):
        compared, left_out = load_shared(spec, sys.argv[1:])
        if left_out:
            print(f"note: {spec} has no {', '.join(left_out)}: those overrides are left out for it", file=sys.stderr)
        runs.append((spec, compared))
    return runs


def _override_tokens(argv: Sequence[str]) -> list[tuple[list[str], str]]:
    """([the tokens of one `--config.<key>` override], key) for each override in `argv`: either
    `--config.key=value`, or `--config.key value` (a value that is not itself a flag)."""
    out, i = [], 0
    while i < len(argv):
        match = _OVERRIDE.match(argv[i])
        if not match:
            i += 1
            continue
        key = match.group(1)
        if "=" in argv[i] or i + 1 >= len(argv) or argv[i + 1].startswith("-"):
            out.append(([argv[i]], key))
            i += 1
        else:
            out.append((argv[i:i + 2], key))
            i += 2
    return out


def _has_key(cfg, dotted: str) -> bool:
    node = cfg
    for part in dotted.split("."):
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            return False
        node = node[part]
    return True


def override_flags(overrides: dict) -> list[str]:
    """`{"model.encoder": "B/16"}` -> `["--config.model.encoder=B/16"]` (values already spelled
    as on a command line)."""
    return [f"--config.{key}={value}" for key, value in overrides.items()]


def _without_config_spec(argv: Sequence[str]) -> list[str]:
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif _CONFIG_FLAG.match(arg):
            skip = "=" not in arg  # `--config <spec>`: the spec is the next argument
        else:
            out.append(arg)
    return out


def split_specs(values: list[str]) -> list[str]:
    """Config specs from repeatable `--compare` values. A value may also hold several specs
    separated by commas (the flag's older list form): a comma starts a new spec only where a
    `.py` path follows it, since a spec's own argument has commas too (`x.py:B/16,res=112`)."""
    out = []
    for value in values:
        out += re.split(r",(?=[^,=:]*\.py(?::|,|$))", value)
    return out
