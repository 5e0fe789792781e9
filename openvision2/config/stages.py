"""Training curricula as data: a config lists named stages, the trainer runs them in order.

A staged config carries `stages` (a dict of named stages) and `stage_order`
("pretrain,finetune"). A stage is a set of overrides of the top-level config
plus its length in `steps`:

    c.stages.finetune = ml_collections.ConfigDict({
        "steps": 300, "image_size": 64, "batch_size": 64, "keep_ratio": 0.5,
        "optim": {"lr": 1e-3, "warmup_steps": 30, "trainable": ""},
        "data": {"caption_field": "caption"}})

Any key of the top-level config may be overridden except the run's fixed ones
(`RUN_KEYS`), nested dicts merge key by key, and every stage's overrides are checked
against the top-level keys so a typo fails at start-up. A config without stages is one
implicit stage.

Steps are global: stage k runs steps [start_k, start_k + steps_k). The data
stream is stage-local (its step counter restarts, under a stage-specific seed),
the optimizer state is created fresh at every stage boundary (new warmup and
schedule, as CLIPA's fine-tune does) and only the parameters carry over
(`train/carry.py` fits them to the next stage's shapes).
"""

from __future__ import annotations

import dataclasses

import ml_collections

from openvision2.config import defaults

STAGE_ONLY_KEYS = ("steps",)
# Keys a run holds fixed: the mesh and sharding rules (one mesh per run), the seed (which
# defines every stage's data stream and masks) and the tokenizer (its ids index the
# embeddings). A stage that overrides one fails at start-up.
RUN_KEYS = ("mesh", "sharding_rules", "seed", "text.vocab")


@dataclasses.dataclass(frozen=True)
class Stage:
    index: int
    name: str
    start: int  # first global step of the stage
    steps: int
    cfg: ml_collections.ConfigDict  # the whole config as this stage sees it; total_steps == steps

    @property
    def end(self) -> int:
        return self.start + self.steps

    @property
    def data_seed(self) -> int:
        """Stage 0 reads the run's own stream; later stages a different, still fixed one."""
        return int(self.cfg.seed) if self.index == 0 else int(self.cfg.seed) * 1_000_003 + self.index


def is_staged(cfg) -> bool:
    return bool(cfg.get("stages")) and len(cfg.stages) > 0


def resolve(cfg) -> list[Stage]:
    """The stages of `cfg`, in order, each with its fully merged config."""
    if not is_staged(cfg):
        single = defaults.complete(_copy(cfg))
        return [Stage(0, "train", 0, int(cfg.total_steps), single)]
    order = [s.strip() for s in str(cfg.get("stage_order", "")).split(",") if s.strip()]
    names = list(cfg.stages.keys())
    if sorted(order) != sorted(names):
        raise ValueError(f"stage_order={cfg.get('stage_order')!r} must list every stage in cfg.stages {names} once, "
                         f"in the order to run them, e.g. --config.stage_order={','.join(names)}.")
    out, start = [], 0
    for index, name in enumerate(order):
        spec = cfg.stages[name]
        steps = int(spec.get("steps", 0))
        if steps <= 0:
            raise ValueError(f"stage {name!r} needs steps > 0 (got {steps}); set --config.stages.{name}.steps.")
        merged = defaults.complete(_copy(cfg))
        with merged.unlocked():
            _merge(merged, spec, f"stages.{name}")
            merged.total_steps = steps
        defaults.complete(merged)  # a stage may switch the recipe
        with merged.unlocked():
            del merged["stages"]  # a stage's config is one stage
        if int(merged.optim.warmup_steps) >= steps:
            raise ValueError(f"stage {name!r} has {steps} steps but optim.warmup_steps={merged.optim.warmup_steps}; "
                             f"set --config.stages.{name}.optim.warmup_steps below {steps} (or lengthen the stage).")
        out.append(Stage(index, name, start, steps, merged))
        start += steps
    if int(cfg.total_steps) != start:
        raise ValueError(f"total_steps={cfg.total_steps} but the stages {order} add up to {start} steps. For a staged "
                         "config total_steps is the sum of the stages' steps: change --config.stages.<name>.steps "
                         "instead of total_steps.")
    return out


def final_config(cfg) -> ml_collections.ConfigDict:
    """What the finished model is: the last stage's config (resolution, tokenizer...)."""
    return resolve(cfg)[-1].cfg


def select(cfg, name: str = "") -> list[tuple[str, ml_collections.ConfigDict]]:
    """(label, config) for the named stage, or every stage if `name` is empty;
    what the benchmark and AOT tools measure. An unstaged config is one, unlabelled."""
    plan = resolve(cfg)
    if not is_staged(cfg):
        if name:
            raise ValueError(f"--stage={name!r} given but the config has no stages.")
        return [("", plan[0].cfg)]
    chosen = [s for s in plan if not name or s.name == name]
    if not chosen:
        raise ValueError(f"--stage={name!r} is not one of the config's stages {[s.name for s in plan]}.")
    return [(s.name, s.cfg) for s in chosen]


def stage_of_checkpoint(stages: list[Stage], step: int) -> int:
    """Index of the stage whose state a checkpoint at `step` holds: the stage that
    ran step `step` (a boundary checkpoint belongs to the stage it ended)."""
    for s in stages:
        if s.start < step <= s.end:
            return s.index
    if step == 0:
        return 0
    raise ValueError(f"checkpoint step {step} is past the end of the curriculum ({stages[-1].end} steps); "
                     "the config's stages were shortened after this run started: restore the original stage lengths "
                     "or use a new workdir.")


def _copy(cfg) -> ml_collections.ConfigDict:
    # Through a plain dict: FieldReferences (e.g. total_steps = sum of stage steps) become values.
    return ml_collections.ConfigDict(cfg.to_dict())


def _merge(target: ml_collections.ConfigDict, overrides, where: str) -> None:
    for key, value in overrides.items():
        if key in STAGE_ONLY_KEYS and where.count(".") == 1:
            continue
        path = ".".join(where.split(".")[2:] + [key])
        fixed = [k for k in RUN_KEYS if path == k or path.startswith(k + ".")]
        if fixed:
            raise ValueError(f"{where}.{key} overrides {fixed[0]}, which is fixed for the whole run (one mesh, "
                             "sharding rules, seed and tokenizer for every stage): set --config."
                             f"{fixed[0]} at the top level and remove it from the stage.")
        if key not in target:
            raise KeyError(f"{where}.{key} overrides nothing: the config has no key {key!r} at that level. Stage "
                           "overrides use the top-level config's key names (e.g. image_size, optim.lr).")
        if isinstance(value, (dict, ml_collections.ConfigDict)):
            if not isinstance(target[key], ml_collections.ConfigDict):
                raise TypeError(f"{where}.{key} is a dict but the config's {key!r} is a {type(target[key]).__name__}.")
            _merge(target[key], value, f"{where}.{key}")
        else:
            target[key] = value
