"""Orbax checkpoints: the train state plus the data position and the config.

The data pipeline is addressed by step (the global batch at step s is a pure
function of s), so the data position saved with the state is the step
itself, together with what defines the stream (seed, global batch) so a
mismatched resume is caught rather than silently reading other data.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import orbax.checkpoint as ocp

from openvision2 import paths


def manager(workdir: str, cfg) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(
        max_to_keep=int(cfg.keep_checkpoints),
        keep_period=int(cfg.keep_every) or None,
        create=True,
        enable_async_checkpointing=bool(cfg.async_checkpoints),
    )
    return ocp.CheckpointManager(checkpoint_dir(workdir), options=options, item_names=("state", "data"))


def checkpoint_dir(workdir: str) -> str:
    """`<workdir>/checkpoints`: absolute if local, the URL itself on cloud storage (where orbax writes
    each host's shards of one checkpoint)."""
    return paths.resolve(paths.join(workdir, "checkpoints"))


def committed_steps(workdir: str) -> list[int]:
    """Steps whose checkpoint finished writing, by orbax's own rule: on a local disk the step
    directory appears by one atomic rename; on an object store (no rename) a
    `commit_success.txt` inside it marks it whole."""
    return sorted(ocp.path.step.checkpoint_steps(checkpoint_dir(workdir)))


def save(mgr: ocp.CheckpointManager, step: int, state, data_position: dict, force: bool = False) -> bool:
    return mgr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                 data=ocp.args.JsonSave(data_position)), force=force)


def restore(mgr: ocp.CheckpointManager, step: int, abstract_state):
    """Restores onto the shardings carried by `abstract_state` (any mesh)."""
    out = mgr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state),
                                                   data=ocp.args.JsonRestore()))
    return out["state"], out["data"]


def abstract_like(boxed_tree, shardings):
    """ShapeDtypeStructs carrying the target shardings, from a boxed abstract state."""
    tree = jax.tree.map(lambda x: x.value if isinstance(x, nn.meta.AxisMetadata) else x, boxed_tree,
                        is_leaf=lambda x: isinstance(x, nn.meta.AxisMetadata))
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def restore_params(workdir: str, step: int | None = None):
    """Params of a run, on this host's first device, whatever mesh wrote them.

    Reads only the `params` subtree (no optimizer state), for the caption,
    encode and export commands.
    """
    path = checkpoint_dir(workdir)
    handlers = {"state": ocp.PyTreeCheckpointHandler(), "data": ocp.JsonCheckpointHandler()}
    with ocp.CheckpointManager(path, item_names=("state", "data"), item_handlers=handlers) as mgr:
        step = mgr.latest_step() if step is None else step
        if step is None or step not in mgr.all_steps():
            raise FileNotFoundError(f"No checkpoint {'' if step is None else step} under {path}: train first, or "
                                    f"pass the right --workdir/--step (available: {mgr.all_steps()}).")
        meta = mgr.item_metadata(step)["state"]["params"]
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        target = {"params": jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), meta)}
        restore_args = jax.tree.map(lambda t: ocp.ArrayRestoreArgs(sharding=device), target)
        restored = mgr.restore(step, args=ocp.args.Composite(
            state=ocp.args.PyTreeRestore(item=target, restore_args=restore_args, partial_restore=True)))
        return restored["state"]["params"], step
