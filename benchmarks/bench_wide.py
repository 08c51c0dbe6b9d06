"""Feature-heavy training: very wide dense rows and very wide sparse vectors, with their memory.

Workloads (issue #7, targets 4 and 5), 2 mirrored workers on ``local[2]``, 1 epoch:

* **dense**: 50,000 rows x 10,000 float features (``array<float>``), MLP 10000-64-1, batch 256.
  Each TensorFlow process's peak memory is compared with its shard's float32 size and with the
  TensorFlow baseline, the peak of the same fit on 1,000 rows (target: peak <= 3 x shard +
  baseline).
* **sparse**: 1,000,000 SparseVectors of dimension 100,000 with 50 non-zeros each, fed to the model
  as ``tf.SparseTensor`` batches (``keras.Input(sparse=True)``, then Dense 64 and 1), batch 2,048.
  Reports training rows/s, each process's peak memory and the machine's peak memory in use (it
  must fit in this machine's 24 GiB).

The data is generated inside Spark and not cached (the fit includes generating it). Run from the
repo root:

    .venv/bin/python benchmarks/bench_wide.py                  # both workloads
    .venv/bin/python benchmarks/bench_wide.py --kind sparse
    .venv/bin/python benchmarks/bench_wide.py --quick          # 2,000 x 2,000 and 20,000 sparse
"""

from __future__ import annotations

import argparse

from common import (
    MachineMemory,
    binary_mlp,
    dense_frame,
    machine,
    print_result,
    session,
    sparse_frame,
    timed_fit,
)


def fit(frame, width: int, sparse: bool, batch: int) -> dict:
    from sparkeras import SparkKerasEstimator

    estimator = SparkKerasEstimator(
        model=binary_mlp(width, (64,), sparse=sparse), numWorkers=2, epochs=1, batchSize=batch
    )
    with MachineMemory() as memory:
        fitted, timing = timed_fit(estimator, frame)
    timing.update(
        accuracy=fitted.history["accuracy"][-1],
        machine_peak_gib=memory.peak_gib,
        shard_rows=max(report["train_rows"] for report in fitted.workerReports),
    )
    return timing


def wide_dense(spark, rows: int, width: int) -> dict:
    baseline = fit(dense_frame(spark, 1_000, width, partitions=2), width, False, batch=256)
    timing = fit(dense_frame(spark, rows, width, partitions=8), width, False, batch=256)
    shard_mib = timing["shard_rows"] * width * 4 / 2**20
    baseline_mib = baseline["peak_memory_mib"]
    ratio = (timing["peak_memory_mib"] - baseline_mib) / shard_mib
    print(
        f"dense {rows:,} x {width:,}: fit {timing['fit']:.1f} s, training "
        f"{timing['training']:.1f} s ({rows / timing['training']:,.0f} rows/s), accuracy "
        f"{timing['accuracy']:.4f}\n"
        f"  peak memory per TensorFlow process {timing['peak_memory_mib']:,.0f} MiB = TensorFlow "
        f"baseline {baseline_mib:,.0f} MiB + {ratio:.2f} x the {shard_mib:,.0f} MiB float32 shard "
        f"(target <= 3); machine peak in use {timing['machine_peak_gib']:.1f} GiB"
    )
    return {
        "dense_rows": rows,
        "dense_width": width,
        "dense_shard_mib": shard_mib,
        "dense_baseline_mib": baseline_mib,
        "dense_memory_ratio": ratio,
        **{f"dense_{key}": value for key, value in timing.items()},
    }


def wide_sparse(spark, rows: int, dimension: int, nonzeros: int) -> dict:
    frame = sparse_frame(spark, rows, dimension, nonzeros, partitions=8)
    timing = fit(frame, dimension, True, batch=2048)
    print(
        f"sparse {rows:,} rows, dimension {dimension:,}, {nonzeros} non-zeros: fit "
        f"{timing['fit']:.1f} s, training {timing['training']:.1f} s "
        f"({rows / timing['training']:,.0f} rows/s), accuracy {timing['accuracy']:.4f}\n"
        f"  peak memory per TensorFlow process {timing['peak_memory_mib']:,.0f} MiB; machine "
        f"peak in use {timing['machine_peak_gib']:.1f} GiB"
    )
    return {
        "sparse_rows": rows,
        "sparse_dimension": dimension,
        "sparse_rows_per_second": rows / timing["training"],
        **{f"sparse_{key}": value for key, value in timing.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small versions of both workloads")
    parser.add_argument("--kind", choices=("dense", "sparse", "both"), default="both")
    args = parser.parse_args()
    spark = session(slots=2, driver_memory="6g")
    print(machine())
    results: dict = {}
    if args.kind in ("dense", "both"):
        rows, width = (2_000, 2_000) if args.quick else (50_000, 10_000)
        results.update(wide_dense(spark, rows, width))
    if args.kind in ("sparse", "both"):
        rows = 20_000 if args.quick else 1_000_000
        results.update(wide_sparse(spark, rows, 100_000, 50))
    print_result("wide", results)
    spark.stop()


if __name__ == "__main__":
    main()
