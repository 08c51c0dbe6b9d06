"""Every benchmark runs in quick mode, so none of them rots, and its summary holds real numbers.

Speed targets are not asserted here (timings on a shared CI machine prove nothing); the
assertions check that each benchmark measured what it says it measures.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from test_examples import run

from sparkeras import inference

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.spark


def quick_result(script: str, tmp_path: Path, *extra: str) -> dict:
    output = run(sys.executable, str(ROOT / "benchmarks" / script), "--quick", *extra, cwd=tmp_path)
    lines = [line for line in output.splitlines() if line.startswith("RESULT ")]
    assert len(lines) == 1, output[-3000:]
    return json.loads(lines[0].removeprefix("RESULT "))


def test_fit_overhead_compares_keras_sparkeras_and_mllib(tmp_path):
    result = quick_result("bench_fit_overhead.py", tmp_path)
    for run_name in ("keras", "mirrored", "parameter_server", "mllib"):
        assert result[f"{run_name}_seconds"] > 0
        assert result[f"{run_name}_accuracy"] > 0.7, result  # a separable problem: all learn


def test_scaling_times_one_and_two_workers(tmp_path):
    result = quick_result("bench_scaling.py", tmp_path, "--plot", str(tmp_path / "scaling.png"))
    for workers in (1, 2):
        assert 0 < result[f"training_b1024_w{workers}"] < result[f"fit_b1024_w{workers}"]
    speedup = result["training_b1024_w1"] / result["training_b1024_w2"]
    assert result["training_speedup_b1024"] == pytest.approx(speedup, rel=1e-3)
    assert (tmp_path / "scaling.png").read_bytes()[:4] == b"\x89PNG"


def test_growth_splits_fit_time_and_measures_the_data_path(tmp_path):
    result = quick_result("bench_growth.py", tmp_path)
    for rows in (2_000, 20_000):
        parts = sum(result[f"{phase}_{rows}"] for phase in ("start_up", "training", "finish"))
        assert parts == pytest.approx(result[f"fit_{rows}"], abs=0.01)
        assert 0 < result[f"data_path_{rows}"] < result[f"start_up_{rows}"]
        assert result[f"to_pandas_{rows}"] > 0
    assert result["fixed_start_up"] == result["start_up_2000"]
    assert result["cold_start_up"] > 0
    assert result["worker_processes"] == ["forked"]
    assert 0 < result["write_shard_20000"] < result["data_path_20000"]


def test_wide_dense_and_sparse_train_and_report_memory(tmp_path):
    result = quick_result("bench_wide.py", tmp_path)
    # Quick mode is too small to learn much; it checks every row was trained on.
    assert result["dense_shard_rows"] >= result["dense_rows"] / 2
    assert result["sparse_shard_rows"] >= result["sparse_rows"] / 2
    shard_mib = result["dense_shard_rows"] * result["dense_width"] * 4 / 2**20
    assert result["dense_shard_mib"] == pytest.approx(shard_mib, rel=1e-3)
    assert result["dense_peak_memory_mib"] > result["dense_baseline_mib"] > 100
    assert result["sparse_rows_per_second"] > 0
    assert 0 < result["sparse_machine_peak_gib"] < 24


def test_transform_compares_with_predict_batch_udf_and_numpy(tmp_path):
    result = quick_result("bench_transform.py", tmp_path)
    assert result["rows"] == 100_000
    assert result["vs_numpy"] == pytest.approx(
        result["numpy_seconds"] / result["sparkeras_seconds"], rel=1e-3
    )
    assert result["vs_predict_batch_udf"] > 0
    if inference.HAS_ARROW_UDF:
        # The floor runs no model, so it cannot be much slower than sparkeras' transform.
        assert 0 < result["floor_seconds"] < 2 * result["sparkeras_seconds"]
        assert result["floor_vs_numpy"] == pytest.approx(
            result["numpy_seconds"] / result["floor_seconds"], rel=1e-3
        )
