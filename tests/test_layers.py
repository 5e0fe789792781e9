"""The package's layers are a contract (`.importlinter`) that `lint-imports` checks: it holds today,
and it fails on each of the upward imports the package once had."""

import os
import shutil
import subprocess
import sys

import pytest

from tests.test_multiprocess import ROOT

# The console script beside this interpreter (the test extra's), else one on PATH.
LINT = next((p for p in (os.path.join(os.path.dirname(sys.executable), "lint-imports"), shutil.which("lint-imports"))
             if p and os.path.isfile(p)), None)
pytestmark = pytest.mark.skipif(LINT is None, reason="import-linter not installed (pip install -e '.[test]')")


def lint(root: str) -> subprocess.CompletedProcess:
    return subprocess.run([LINT, "--no-cache"], cwd=root, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": root})


def test_the_layer_contracts_hold():
    out = lint(ROOT)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 broken" in out.stdout


UPWARD = [  # (module, the import added to it, a line the broken contract prints)
    ("models/coca.py", "from openvision2.data.tokenizer import get_tokenizer",
     "openvision2.models is not allowed to import openvision2.data"),
    ("recipes/captioning.py", "from openvision2.data.tokenizer import get_tokenizer",
     "openvision2.recipes.captioning -> openvision2.data.tokenizer"),
    ("models/mmgem.py", "def _build():\n    from openvision2.recipes import parts\n    return parts",
     "openvision2.models is not allowed to import openvision2.recipes"),
    ("convert/llama.py", "from openvision2.train import state",
     "openvision2.convert is not allowed to import openvision2.train"),
    ("data/pipeline.py", "from openvision2.config import validation",
     "openvision2.data is not allowed to import openvision2.config"),
]


@pytest.mark.parametrize("module,line,message", UPWARD, ids=[u[0] for u in UPWARD])
def test_an_upward_import_breaks_the_contract(tmp_path, module, line, message):
    shutil.copytree(os.path.join(ROOT, "openvision2"), tmp_path / "openvision2",
                    ignore=shutil.ignore_patterns("__pycache__", "assets"))
    shutil.copy(os.path.join(ROOT, ".importlinter"), tmp_path / ".importlinter")
    with open(tmp_path / "openvision2" / module, "a") as f:
        f.write(f"\n\n{line}\n")
    out = lint(str(tmp_path))
    assert out.returncode != 0 and message in out.stdout, out.stdout
