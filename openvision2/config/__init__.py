"""Configs: run-level defaults and the recipe's keys, curricula, validation, the command line.

- `defaults`: `base_config(recipe)`, `set_recipe`, `at_scale`, `stage`, `set_stages`, `add_eval`;
- `files`: loading `path.py[:arg]`, `parse_arg` for `get_config(arg)`;
- `stages`: resolving a curriculum into per-stage configs;
- `validation`: what a config must satisfy to run on a device count, with the fix named;
- `cli`: `--config.*` overrides for every tool, through `ml_collections.config_flags`.

A config file needs only `from openvision2 import config as config_lib`: the helpers below
(and the model size parsers of `openvision2.sizes`) are its whole vocabulary.
"""

from openvision2.config.defaults import (add_eval, at_scale, base_config, complete, run_config, set_recipe,
                                         set_stages, stage)
from openvision2.config.files import load_config_file, load_module, parse_arg, sibling_config
from openvision2.sizes import decoder_size, encoder_size, text_encoder_size

__all__ = ["add_eval", "at_scale", "base_config", "complete", "decoder_size", "encoder_size", "load_config_file", "load_module",
           "parse_arg", "run_config", "set_recipe", "set_stages", "sibling_config", "stage", "text_encoder_size"]
