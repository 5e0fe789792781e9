"""Device mesh, logical-axis rules and multi-host batch assembly.

Four mesh axes: `dcn_data` (data parallel across slices, over the data
centre network), `data` (pure data parallel), `fsdp` (data parallel whose
replicas also shard the parameters and optimizer state) and `tensor` (shards
heads, MLP and vocabulary). Models only speak logical names; this one table
maps them onto the mesh. An axis of size 1 makes its rules no-ops, so the
same table serves data-parallel, FSDP and FSDP+tensor meshes.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P
from optax.transforms import MaskedNode

MESH_AXES = ("dcn_data", "data", "fsdp", "tensor")
BATCH_AXES = ("dcn_data", "data", "fsdp")  # the axes a global batch is split along

DEFAULT_RULES = (
    # activations
    ("act_batch", BATCH_AXES),
    ("act_len", None),
    ("act_embed", None),
    ("act_mlp", "tensor"),
    ("act_heads", "tensor"),
    ("act_vocab", "tensor"),
    # parameters
    ("embed", "fsdp"),
    ("embed_out", "tensor"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv", "tensor"),
    ("vocab", "tensor"),
    ("layers", None),
    ("norm", None),
)


_PARAM_AXES = ("embed", "embed_out", "mlp", "heads", "kv", "vocab")

# Named presets. Axes of size 1 make rules no-ops, so "fsdp_tensor" (the default)
# already behaves as the others on meshes without those axes; the presets pin
# the behaviour whatever the mesh (e.g. "dp" keeps parameters replicated even
# where an fsdp axis exists, using it as plain data parallelism).
RULE_PRESETS = {
    "fsdp_tensor": DEFAULT_RULES,
    "fsdp": tuple((n, None if v == "tensor" else v) for n, v in DEFAULT_RULES),
    "dp": tuple((n, None if (n in _PARAM_AXES or v == "tensor") else v) for n, v in DEFAULT_RULES),
}


def logical_rules(cfg) -> tuple:
    """The rule table: `cfg.sharding_rules` as a preset name or explicit (name, mesh axes) pairs."""
    rules = cfg.sharding_rules or DEFAULT_RULES
    if isinstance(rules, str):
        if rules not in RULE_PRESETS:
            raise ValueError(f"sharding_rules={rules!r}: use one of {sorted(RULE_PRESETS)} or explicit pairs.")
        rules = RULE_PRESETS[rules]
    return tuple((name, tuple(v) if isinstance(v, list) else v) for name, v in rules)


def make_mesh(shape: dict[str, int], devices=None) -> jax.sharding.Mesh:
    """A mesh with Auto axes (Flax logical constraints need Auto, not Explicit).

    With `dcn_data > 1` it is a hybrid mesh: `dcn_data` spans slices (or, where
    devices carry no slice index, processes) and the other axes stay inside one.
    """
    devices = list(devices if devices is not None else jax.devices())
    sizes = tuple(shape[a] for a in MESH_AXES)
    axis_types = (AxisType.Auto,) * len(MESH_AXES)
    dcn = shape["dcn_data"]
    if dcn == 1:
        try:
            return jax.make_mesh(sizes, MESH_AXES, axis_types=axis_types, devices=devices)
        except NotImplementedError as e:  # the TPU torus cannot be cut into these axis sizes
            bounds = getattr(devices[0], "coords", None) and "x".join(
                str(max(d.coords[i] for d in devices) + 1) for i in range(len(devices[0].coords)))
            raise ValueError(
                f"mesh {dict(zip(MESH_AXES, sizes))} does not fit the device torus{f' ({bounds})' if bounds else ''}: "
                "on TPU each mesh axis must be a product of whole torus dimensions (e.g. on 8x8x4, data=4 "
                "with fsdp=64, not data=2 with fsdp=128). Change --config.mesh.*.") from e
    ici = (1, *sizes[1:])
    if hasattr(devices[0], "slice_index"):
        grid = mesh_utils.create_hybrid_device_mesh(ici, (dcn, 1, 1, 1), devices)
    elif jax.process_count() > 1:
        grid = mesh_utils.create_hybrid_device_mesh(ici, (dcn, 1, 1, 1), devices, process_is_granule=True)
    else:  # one process without slices (fake CPU devices): consecutive device groups act as slices
        grid = np.asarray(devices).reshape(sizes)
    return jax.sharding.Mesh(grid, MESH_AXES, axis_types=axis_types)


def batch_devices(mesh) -> int:
    """How many ways `mesh` splits a batch: the product of its batch axes present."""
    n = 1
    for a in BATCH_AXES:
        if a in mesh.axis_names:
            n *= mesh.shape[a]
    return n


def batch_sharding(mesh) -> NamedSharding:
    return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def state_shardings(abstract_boxed_state, mesh, rules):
    """NamedShardings for a (still boxed) abstract train state."""
    # optax's MaskedNode (the empty optimizer state of a frozen parameter) arrives
    # boxed with its parameter's axes, and is a childless NamedTuple that flax
    # would take for a partition spec: unbox it and keep it as it is.
    is_box = lambda x: isinstance(x, nn.meta.AxisMetadata)
    unmask = lambda x: MaskedNode() if is_box(x) and isinstance(getattr(x, "value", None), MaskedNode) else x
    specs = nn.get_partition_spec(jax.tree.map(unmask, abstract_boxed_state, is_leaf=is_box))
    is_spec = lambda x: isinstance(x, (P, MaskedNode))
    return jax.tree.map(lambda s: s if isinstance(s, MaskedNode) else nn.logical_to_mesh_sharding(s, mesh, rules),
                        specs, is_leaf=is_spec)


def host_batch_slice(mesh, global_batch: int) -> tuple[int, int]:
    """(offset, size) of the rows of each global batch that this process feeds.

    Derived from the batch sharding itself, so it holds for any device order.
    """
    index_map = batch_sharding(mesh).addressable_devices_indices_map((global_batch,))
    spans = sorted({(s[0].start or 0, s[0].stop if s[0].stop is not None else global_batch)
                    for s in index_map.values()})
    lo, hi = spans[0][0], spans[-1][1]
    if sum(b - a for a, b in spans) != hi - lo:
        raise ValueError(f"This process's batch rows {spans} are not contiguous; use a mesh whose "
                         "data/fsdp axes keep each host's devices together (the default device order).")
    return lo, hi - lo


def to_global(mesh, host_batch: dict[str, np.ndarray], global_batch: int) -> dict[str, jax.Array]:
    """Per-host numpy batch -> global arrays sharded along the batch axes."""
    sharding = batch_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, v, (global_batch, *v.shape[1:]))
            for k, v in host_batch.items()}
