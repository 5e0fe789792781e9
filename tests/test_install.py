"""The package as a user installs it: a built wheel (not this checkout) runs its console scripts
from a directory that has nothing of the repository."""

import glob
import os
import subprocess
import sys

import pytest

from tests.test_multiprocess import ROOT
from tests.test_preemption import TINY


@pytest.mark.slow
def test_the_installed_wheel_runs_the_demo_caption_and_export_from_any_directory(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path / "dist"), ROOT], check=True, capture_output=True)
    (wheel,) = glob.glob(str(tmp_path / "dist" / "openvision2-*.whl"))
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), wheel], check=True,
                   capture_output=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # No JAX_PLATFORMS: the commands themselves keep JAX off the TPU probe that libtpu (installed
    # with the test extra) would make on this machine, which has no TPU.
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_PLATFORMS")}
    env.update(PYTHONPATH=str(site), OPENVISION2_CACHE=str(tmp_path / "cache"))
    command = lambda name, *args: subprocess.run([str(site / "bin" / name), *args], cwd=elsewhere, env=env,
                                                 capture_output=True, text=True)
    where = subprocess.run([sys.executable, "-c", "import openvision2; print(openvision2.__file__)"], cwd=elsewhere,
                           env=env, capture_output=True, text=True, check=True).stdout
    assert where.startswith(str(site))  # the wheel's copy, not this checkout

    train = command("openvision2-train", "--workdir=run", *TINY, "--config.total_steps=4", "--config.checkpoint_every=2")
    assert train.returncode == 0, train.stderr[-3000:]
    assert "Done at step 4" in train.stderr and (elsewhere / "run" / "config.json").exists()
    assert "jellyfish" not in train.stderr and "unexpected worker hostname" not in train.stderr, train.stderr
    printed = command("openvision2-train", "--config=configs/clip.py:tiny", "--print_config")
    assert printed.returncode == 0 and '"objective": "clip"' in printed.stdout

    from PIL import Image
    from openvision2.data import shapes
    import numpy as np
    Image.fromarray(shapes.render(np.random.default_rng(0), 32, 2)[0]).save(elsewhere / "img.png")
    caption = command("openvision2-caption", "--workdir=run", "img.png")
    assert caption.returncode == 0 and caption.stdout.startswith("img.png\t"), caption.stderr[-3000:]
    # Quiet: no orbax object dumps, no TPU probing on a machine without one.
    assert "checkpoint_manager.py" not in caption.stderr and "jellyfish" not in caption.stderr, caption.stderr
    export = command("openvision2-export", "--workdir=run", "--output=hf")
    assert export.returncode == 0 and (elsewhere / "hf" / "model.safetensors").exists(), export.stderr[-3000:]
    helped = command("openvision2-train", "--help")
    assert "--config.<key>=<value>" in helped.stdout and "--print_config" in helped.stdout
