"""The pod-proof tool compiles the real step for a TPU topology (needs the libtpu wheel)."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from tests.test_multiprocess import ROOT

pytestmark = pytest.mark.skipif(importlib.util.find_spec("libtpu") is None,
                                reason="libtpu not installed (pip install -e .[tpu]); AOT TPU compiles need it")


def aot(*args, config="configs/openvision2.py:runlocal,stage=pretrain"):
    out = subprocess.run(
        [sys.executable, os.path.join(ROOT, "tools", "aot_compile.py"), f"--config={config}",
         "--topology=v4:2x2x1", "--config.mesh.data=1", "--config.mesh.fsdp=-1", *args],
        cwd=ROOT, capture_output=True, text=True, check=True, env={**os.environ, "JAX_PLATFORMS": "cpu"}).stdout
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def test_compiles_the_sharded_step_for_four_v4_chips_and_reports_memory():
    (row,) = aot("--per_chip_batch=4")
    assert row["chips"] == 4 and row["global_batch"] == 16 and row["mesh"]["fsdp"] == 4
    assert row["fits"] and row["hbm_bytes"] == 32 * 2**30
    assert row["total_bytes"] == row["argument_bytes"] + row["output_bytes"] + row["temp_bytes"] - row["alias_bytes"]
    assert row["compiler_flops_per_chip"] > 0 and row["model_flops_per_step"] > 0


def test_a_curriculum_compiles_every_stage_at_its_own_resolution():
    rows = aot("--per_chip_batch=4", config="configs/openvision2.py:runlocal")
    assert [(r["stage"], r["image_size"]) for r in rows] == [("pretrain", 16), ("finetune", 32)]
    assert rows[0]["model_flops_per_step"] < rows[1]["model_flops_per_step"] and all(r["fits"] for r in rows)
    (only,) = aot("--per_chip_batch=4", "--stage=finetune", config="configs/openvision2.py:runlocal")
    assert only["stage"] == "finetune" and only["image_size"] == 32


def test_max_batch_search_brackets_the_memory_limit():
    # Started where memory grows with the batch (a tiny model's smallest batches are not
    # monotonic in XLA's accounting), so the search takes a few compiles.
    rows = aot("--per_chip_batch=512", "--find_max_batch", "--batch_multiple=128", "--hbm_gib=0.06")
    result = rows[-1]
    fitting = [r["per_chip_batch"] for r in rows[:-1] if r["fits"]]
    failing = [r["per_chip_batch"] for r in rows[:-1] if not r["fits"]]
    assert fitting and failing
    assert result["max_per_chip_batch"] == max(fitting)
    assert result["first_not_fitting"] == min(failing) and min(failing) - max(fitting) <= 128


def test_multislice_compiles_with_a_dcn_data_axis_over_slices():
    (row,) = aot("--per_chip_batch=4", "--num_slices=2")
    assert row["chips"] == 8 and row["mesh"]["dcn_data"] == 2 and row["mesh"]["fsdp"] == 4
    assert row["fits"] and row["global_batch"] == 32


def test_hybrid_mesh_keeps_each_dcn_group_inside_one_slice():
    code = ("import sys; sys.argv=['x']; from openvision2.tools import aot_compile as a;"
            "from openvision2 import parallel;"
            "d = a.topology_devices('v4:2x2x1', 2);"
            "m = parallel.make_mesh({'dcn_data': 2, 'data': 1, 'fsdp': 4, 'tensor': 1}, d);"
            "print([sorted({x.slice_index for x in m.devices[i].flat}) for i in range(2)])")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True,
                         env={**os.environ, "JAX_PLATFORMS": "cpu"}).stdout
    assert out.strip().splitlines()[-1] == "[[0], [1]]"


def test_compare_reports_openvision_v1_against_v2_per_chip():
    rows = aot("--per_chip_batch=4", "--compare=configs/openvision_v1.py:runlocal,stage=finetune",
               config="configs/openvision2.py:runlocal,stage=finetune")
    v2, v1, ratio = rows
    assert v2["config"].startswith("configs/openvision2.py") and v1["config"].startswith("configs/openvision_v1.py")
    assert ratio["ratios_vs"] == v2["config"] and ratio["stage"] == "finetune"
    # v1 carries a text tower on top of the same captioner: more bytes per chip, in the stated ratio.
    assert v1["argument_bytes"] > v2["argument_bytes"]
    assert ratio["total_bytes"] == v1["total_bytes"] / v2["total_bytes"]
