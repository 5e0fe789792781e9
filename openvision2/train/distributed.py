"""Joining a multi-process job: explicit coordinates (CPU/GPU), or the cluster's own (TPU pods, SLURM)."""

from __future__ import annotations

import os

import jax

from openvision2 import console


def on_cluster() -> bool:
    """True where jax.distributed.initialize() can find its peers by itself."""
    if os.environ.get("JAX_PLATFORMS", "").strip() == "cpu":
        return False
    if int(os.environ.get("SLURM_NTASKS", "1")) > 1 or os.environ.get("MEGASCALE_COORDINATOR_ADDRESS"):
        return True
    hosts = [h for h in os.environ.get("TPU_WORKER_HOSTNAMES", "").split(",") if h and " " not in h]
    if len(hosts) > 1:
        return True
    return console.tpu_present()


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> None:
    """`jax.distributed.initialize` with the given coordinates (gloo collectives on CPU), or
    with the cluster's own where there is one; a no-op for a single process elsewhere."""
    if coordinator_address:
        if jax.config.jax_platforms in (None, "", "cpu"):
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(coordinator_address, num_processes, process_id)
    elif on_cluster():
        jax.distributed.initialize()
