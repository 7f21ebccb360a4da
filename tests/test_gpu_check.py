"""The prepared GPU check runs end to end on the CPU (tiny config) without Ray, Prefect, LanceDB or onnx installed,
and writes every key the GPU run writes: all figures, the ratio, the parity and the part distance (~1 min)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ABSENT_ON_THE_GPU_MACHINE = ("ray", "prefect", "lancedb", "onnx")
TOP_KEYS = {
    "device", "device_name", "preset", "backbone", "baseline_backbone", "baseline", "image_size", "batches", "dtypes",
    "compile_backend", "warmup", "iters", "kpr_params_m", "torch", "timm", "python", "timestamp_utc", "command",
    "note", "figures", "failures", "parity", "part_distance", "ratios", "ratio", "ratio_of",
}
FIGURES = [("backbone_eager", ("fp32", "bf16")), ("kpr_eager", ("fp32", "bf16")), ("kpr_optimised", ("bf16",)),
           ("kpr_compiled", ("bf16",))]


def test_dry_run_writes_every_figure_of_the_gpu_run(tmp_path: Path) -> None:
    blockers = tmp_path / "blockers"
    blockers.mkdir()
    for name in ABSENT_ON_THE_GPU_MACHINE:  # importing any of them fails, as on the GPU machine
        (blockers / f"{name}.py").write_text(f"raise ImportError('{name} is not installed on the GPU machine')\n")
    out = tmp_path / "out"
    env = os.environ | {"OUT": str(out), "PYTHON": sys.executable, "PYTHONPATH": f"{blockers}{os.pathsep}{ROOT}"}
    run = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh"), "--dry-run"], env=env, capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    result = json.loads((out / "kpr_throughput.json").read_text())
    assert set(result) == TOP_KEYS
    assert result["failures"] == {}, result["failures"]
    assert result["device"] == "cpu" and result["preset"] == "tiny_solider"
    expected = {f"{name}_{dtype}_b{batch}" for name, dtypes in FIGURES for dtype in dtypes
                for batch in result["batches"]}
    assert set(result["figures"]) == expected
    assert all(figure["crops_per_s"] > 0 for figure in result["figures"].values())
    assert set(result["ratios"]) == {f"b{batch}" for batch in result["batches"]} and result["ratio"] > 0
    for name in ("kpr_optimised_bf16", "kpr_compiled_bf16"):
        assert min(result["parity"][name]["min_cosine_global"], result["parity"][name]["min_cosine_parts"]) >= 0.999
    assert result["part_distance"]["pairs_per_s"] > 0
    profiles = (out / "kpr_profile.txt").read_text()
    for name in ("kpr_optimised_bf16", "kpr_compiled_bf16"):
        assert f"== {name}_b{max(result['batches'])}: two passes" in profiles


def test_a_failed_step_is_recorded_and_the_others_still_merge(tmp_path: Path) -> None:
    good = {"batches": [2], "figures": {"backbone_eager_bf16_b2": {"crops_per_s": 10.0}}, "failures": {},
            "parity": {}}
    (tmp_path / "backbone.json").write_text(json.dumps(good))
    (tmp_path / "compiled.failed.json").write_text(json.dumps({"failures": {"step compiled": "timed out"}}))
    merged = tmp_path / "merged.json"
    subprocess.run([sys.executable, "-m", "bench.kpr_throughput", "--device", "cpu", "--merge",
                    str(tmp_path / "backbone.json"), str(tmp_path / "compiled.failed.json"), str(tmp_path / "none.json"),
                    "--output", str(merged)], cwd=ROOT, check=True, capture_output=True, timeout=120)
    result = json.loads(merged.read_text())
    assert result["figures"] == good["figures"]
    assert result["failures"]["step compiled"] == "timed out"
    assert any("none.json" in key for key in result["failures"])
    assert result["ratio"] is None
