"""What every command does before its work: keep library chatter out of the user's terminal.

- Our own INFO lines stay; libraries (orbax's object dumps, jax's backend probing) speak at
  WARNING and up.
- On a machine with no accelerator, JAX is kept to the CPU: with libtpu installed (the `[tpu]` or
  test extra) it would otherwise probe for a TPU at the first device query and print libtpu's
  "unexpected worker hostname" and "No jellyfish device found" errors. A machine with TPU or GPU
  device files, or an explicit JAX_PLATFORMS, is left alone.
"""

from __future__ import annotations

import logging as std_logging
import os

from absl import logging

PACKAGE = os.path.dirname(os.path.abspath(__file__))


def tpu_present() -> bool:
    """Cloud TPU VMs expose their chips as /dev/accel* (v2-v4) or /dev/vfio/<n> (v5e and later)."""
    return os.path.exists("/dev/accel0") or (os.path.isdir("/dev/vfio") and any(
        name.isdigit() for name in os.listdir("/dev/vfio")))


def gpu_present() -> bool:
    return os.path.exists("/dev/nvidia0") or os.path.exists("/dev/kfd")


def quiet_library_logs() -> None:
    """Keep INFO lines from our own code; libraries speak at WARNING and up."""
    logging.get_absl_handler().addFilter(
        lambda record: record.levelno >= std_logging.WARNING or record.pathname.startswith(PACKAGE))


def cpu_unless_accelerated() -> None:
    """Use the CPU backend on a machine without TPU or GPU devices, unless JAX_PLATFORMS says otherwise."""
    if os.environ.get("JAX_PLATFORMS") is None and not tpu_present() and not gpu_present():
        import jax
        jax.config.update("jax_platforms", "cpu")


def start(keep_platform: bool = False) -> None:
    """The first call of every command's `main`. `keep_platform` for tools that need libtpu
    without a TPU (ahead-of-time compiles for a TPU topology)."""
    quiet_library_logs()
    if not keep_platform:
        cpu_unless_accelerated()
