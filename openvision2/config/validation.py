"""Validation: a config that cannot run fails before anything is compiled, naming the fix."""

from __future__ import annotations

from openvision2 import parallel, recipes, sizes


def mesh_shape(cfg) -> dict[str, int]:
    """Mesh axis sizes from `cfg.mesh`; one axis may be -1 (all remaining devices).

    `dcn_data` is data parallelism across slices (multislice, over the data
    centre network); the others are within a slice (ICI).
    """
    return {axis: int(cfg.mesh.get(axis, 1)) for axis in parallel.MESH_AXES}


def validate(cfg, num_devices: int) -> dict[str, int]:
    """Fails fast, naming the fix, when `cfg` (one stage's config) cannot run on `num_devices`.

    Returns the resolved mesh shape.
    """
    shape = _resolve_mesh(cfg, num_devices)
    batch_shards = shape["dcn_data"] * shape["data"] * shape["fsdp"]
    batches = {"batch_size": cfg.batch_size}
    if cfg.eval_batch_size:
        batches["eval_batch_size"] = cfg.eval_batch_size
    for key, batch in batches.items():
        if batch % batch_shards:
            raise ValueError(
                f"{key}={batch} is not divisible by dcn_data x data x fsdp = {batch_shards} devices. Use a "
                f"multiple of {batch_shards} (e.g. --config.{key}={max(1, round(batch / batch_shards)) * batch_shards}) "
                "or change --config.mesh.")
    recipe = recipes.get(cfg.objective)
    tensor, fsdp = shape["tensor"], shape["fsdp"]
    for name, value in _tensor_dims(cfg, recipe.parts):
        if value % tensor:
            raise ValueError(f"{name}={value} is not divisible by mesh.tensor={tensor}: pick a "
                             f"tensor axis size that divides it (or change the model).")
    for name, value in _widths(cfg, recipe.parts):
        if value % fsdp:
            raise ValueError(f"{name}={value} is not divisible by mesh.fsdp={fsdp}: parameters are "
                             "sharded along width. Pick an fsdp size that divides it.")
    if not 0.0 < cfg.keep_ratio <= 1.0:
        raise ValueError(f"keep_ratio={cfg.keep_ratio} must be in (0, 1]; 1.0 turns masking off.")
    recipe.validate(cfg)
    return shape


def _resolve_mesh(cfg, num_devices: int) -> dict[str, int]:
    shape = mesh_shape(cfg)
    free = [a for a, n in shape.items() if n == -1]
    if len(free) > 1:
        raise ValueError(f"Only one mesh axis may be -1, got {free}: set the others explicitly.")
    fixed = 1
    for a, n in shape.items():
        if n != -1:
            if n < 1:
                raise ValueError(f"mesh.{a}={n} must be >= 1 (or -1 for 'the rest').")
            fixed *= n
    if free:
        if num_devices % fixed:
            raise ValueError(
                f"mesh {shape} cannot absorb {num_devices} devices: the fixed axes multiply to "
                f"{fixed}, which does not divide {num_devices}. Change --config.mesh.* so the fixed "
                "axes divide the device count.")
        shape[free[0]] = num_devices // fixed
    total = shape["dcn_data"] * shape["data"] * shape["fsdp"] * shape["tensor"]
    if total != num_devices:
        raise ValueError(
            f"mesh {' x '.join(f'{a}={n}' for a, n in shape.items())} = {total} devices, but {num_devices} are "
            f"available. Set e.g. --config.mesh.data=-1 to use all devices, or make the product equal "
            f"{num_devices}.")
    return shape


def _tensor_dims(cfg, parts: tuple[str, ...]) -> list[tuple[str, int]]:
    """What the tensor axis shards (heads, MLP, vocabulary) of the parts the recipe builds."""
    enc = sizes.encoder_size(cfg.model.encoder)
    out = [("encoder heads", enc.heads), ("encoder mlp_dim", enc.mlp_dim), ("vocab_size", cfg.model.vocab_size)]
    if "decoder" in parts:
        dec = sizes.decoder_size(cfg.model.decoder)
        out += [("decoder heads", dec.heads), ("decoder mlp_dim", dec.mlp_dim),
                ("decoder kv_heads", cfg.model.kv_heads or dec.heads)]
    if "text_encoder" in parts:
        txt = sizes.text_encoder_size(cfg.model.text_encoder)
        out += [("text encoder heads", txt.heads), ("text encoder mlp_dim", txt.mlp_dim)]
    return out


def _widths(cfg, parts: tuple[str, ...]) -> list[tuple[str, int]]:
    """What the fsdp axis shards (widths) of the parts the recipe builds."""
    out = [("encoder width", sizes.encoder_size(cfg.model.encoder).width)]
    if "decoder" in parts:
        out.append(("decoder width", sizes.decoder_size(cfg.model.decoder).width))
    if "text_encoder" in parts:
        out.append(("text encoder width", sizes.text_encoder_size(cfg.model.text_encoder).width))
    return out
