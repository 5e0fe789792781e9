"""The measurement tools run any config and report every field of their documented JSON lines."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_benchmark_prints_one_json_line_per_config_and_ratios():
    tiny = ["--config.model.encoder=mu/8,width=32,depth=1,heads=2", "--config.model.decoder=mu,width=32,depth=1",
            "--config.batch_size=8", "--config.image_size=32", "--config.text.max_len=8",
            "--config.model.vocab_size=64"]
    out = subprocess.run(
        [sys.executable, os.path.join(ROOT, "tools", "benchmark.py"), f"--config={ROOT}/configs/demo.py",
         f"--compare={ROOT}/configs/demo.py:keep=1.0", "--steps=1", *tiny],
        capture_output=True, text=True, check=True, cwd=ROOT, env={**os.environ, "JAX_PLATFORMS": "cpu"}).stdout
    rows = [json.loads(line) for line in out.strip().splitlines()]
    assert len(rows) == 3
    for row in rows[:2]:
        for key in ("name", "step_s", "images_per_s", "flops_per_step", "mfu", "peak_bytes", "matmul_peak_flops",
                    "device_kind"):
            assert key in row
        assert row["step_s"] > 0 and row["peak_bytes"] > 0 and 0 < row["mfu"]
    # Masking (keep 0.35) must cost fewer decoder FLOPs than no masking.
    assert rows[0]["flops_per_step"] < rows[1]["flops_per_step"]
    assert rows[2]["ratios_vs"] == rows[0]["name"]


def test_benchmark_data_mode_reports_pipeline_throughput_per_setting():
    out = subprocess.run(
        [sys.executable, os.path.join(ROOT, "tools", "benchmark.py"), f"--config={ROOT}/configs/demo.py", "--data",
         "--image_sizes=32,48", "--workers=0", "--batches=1", "--config.batch_size=8",
         "--config.data.augment=inception_crop"],
        capture_output=True, text=True, check=True, cwd=ROOT, env={**os.environ, "JAX_PLATFORMS": "cpu"}).stdout
    rows = [json.loads(line) for line in out.strip().splitlines()]
    assert [(r["image_size"], r["workers"]) for r in rows] == [(32, 0), (48, 0)]
    assert all(r["mode"] == "data" and r["images_per_s"] > 0 and r["augment"] == "inception_crop" for r in rows)


def test_benchmark_measures_other_recipes_stage_by_stage():
    tiny = ["--config.model.encoder=mu/8,width=32,depth=1,heads=2", "--config.model.decoder=mu,width=32,depth=1",
            "--config.model.text_encoder=mu,width=32,depth=1,heads=2", "--config.model.embed_dim=32",
            "--config.batch_size=8", "--config.image_size=32", "--config.text.max_len=8"]
    out = subprocess.run(
        [sys.executable, os.path.join(ROOT, "tools", "benchmark.py"), f"--config={ROOT}/configs/clip.py:tiny",
         f"--compare={ROOT}/configs/mmgem.py:tiny", "--steps=1", *tiny],  # the stages inherit the sizes
        capture_output=True, text=True, check=True, cwd=ROOT, env={**os.environ, "JAX_PLATFORMS": "cpu"}).stdout
    rows = [json.loads(line) for line in out.strip().splitlines()]
    assert [r.get("stage") for r in rows[:3]] == ["", "image", "regions"]
    assert all(r["step_s"] > 0 and r["flops_per_step"] > 0 for r in rows[:3])
    # The region stage decodes a shorter prefix (2x2 RoIAlign bins + soft prompts vs 3x3 pooled tokens).
    assert rows[2]["flops_per_step"] != rows[1]["flops_per_step"]
    assert rows[3]["ratios_vs"] == rows[0]["name"]
    assert {v["vs"] for k, v in rows[3].items() if k != "ratios_vs"} == {rows[0]["name"]}  # no stage of its own


def test_compare_values_split_into_specs_only_before_a_config_path():
    from openvision2.config.cli import split_specs
    # A spec's own argument keeps its commas; the older comma-separated list form still works.
    assert split_specs(["configs/clip.py:B/16,res=112,batch=8"]) == ["configs/clip.py:B/16,res=112,batch=8"]
    assert split_specs(["configs/a.py,configs/b.py:tiny"]) == ["configs/a.py", "configs/b.py:tiny"]
    assert split_specs(["a.py:B/16,keep=1.0,b.py:x,y=1", "c.py"]) == ["a.py:B/16,keep=1.0", "b.py:x,y=1", "c.py"]


def test_tools_parse_config_overrides_exactly_as_the_trainer_does():
    """benchmark, aot_compile and sweeps load configs through config_flags, like the trainer: the
    same types, the same refusals (an old hand-written parser turned `ture` into False)."""
    from absl import flags
    import pytest
    from openvision2.config import cli

    spec = f"{ROOT}/configs/demo.py"
    cfg = cli.load(spec, ["--steps=3", "--config.model.scan_layers=true", "--config.batch_size", "32", f"--config={spec}"])
    assert cfg.model.scan_layers is True and cfg.batch_size == 32 and cfg.total_steps == 1200
    with pytest.raises(flags.IllegalFlagValueError, match="ture"):
        cli.load(spec, ["--config.model.scan_layers=ture"])
    with pytest.raises(AttributeError, match='Did you mean "encoder"'):
        cli.load(spec, ["--config.model.encodr=B/16"])
    # A compared config of another recipe takes the overrides whose keys it has, and says which it left out.
    mmgem, left_out = cli.load_shared(f"{ROOT}/configs/mmgem.py:tiny",
                                      ["--config.model.text_encoder=mu", "--config.batch_size=16",
                                       "--config.mmgem.pool_grid", "2"])
    assert left_out == ["model.text_encoder"] and mmgem.batch_size == 16 and mmgem.mmgem.pool_grid == 2
