"""How fit() grows with the data: fixed start-up cost, cost per row, and the data path.

Workload (issue #7, targets 2 and 3): 10,000, 100,000 and 1,000,000 rows x 100 float features
(``array<float>``, generated in Spark, cached), MLP 100-128-64-1, global batch 1,024, 1 epoch,
2 mirrored workers on ``local[2]``. For each size it reports:

* ``fit()`` wall time, split into start-up (call to the first training step), training and finish;
* the fixed start-up cost: call to first training step of the smallest run, where the rows
  cost next to nothing (target < 15 s); the sizes run after one more fit of the smallest size,
  which starts the executor's fork server (TensorFlow imported once), and whose start-up is
  reported as the cold start-up of a session's first fit;
* the cost per row once that fixed cost is paid, ``(fit(n) - fixed) / n``, whose value at 1M must
  stay within 1.3x of its value at 100k (linear growth);
* the data path: from a barrier task's start to its first training step (shard written,
  rendezvous, TensorFlow started, input pipeline built), slowest task, divided by
  ``df.toPandas()`` of the same columns with Arrow on the driver (target <= 1.0); and, within it,
  the shard materialisation alone (task start to shard written).

Run from the repo root:

    .venv/bin/python benchmarks/bench_growth.py                       # 10k, 100k, 1M rows
    .venv/bin/python benchmarks/bench_growth.py --plot docs/img/growth.png
    .venv/bin/python benchmarks/bench_growth.py --quick               # 2k and 20k rows
    .venv/bin/python benchmarks/bench_growth.py --fresh               # no fork server
"""

from __future__ import annotations

import argparse
import time

from common import (
    binary_mlp,
    cached,
    dense_frame,
    machine,
    plot_to,
    print_result,
    session,
    timed_fit,
)

WIDTH = 100


def plot(runs: dict[int, dict[str, float]], path: str) -> None:
    """Stacked bars of each size's fit() time: start-up, training, finish."""
    sizes = sorted(runs)
    labels = [f"{size:,}" for size in sizes]
    bottom = [0.0] * len(sizes)
    with plot_to(path) as axes:
        for phase in ("start_up", "training", "finish"):
            heights = [runs[size][phase] for size in sizes]
            axes.bar(labels, heights, bottom=bottom, label=phase.replace("_", "-"))
            bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
        axes.set_xlabel("rows (x 100 features), 2 workers, 1 epoch")
        axes.set_ylabel("fit() seconds")
        axes.legend()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2,000 and 20,000 rows")
    parser.add_argument("--plot", help="write a bar chart of the fit() phases to this PNG")
    parser.add_argument(
        "--fresh",
        action="store_true",
        help="a fresh TensorFlow process per task (forkServer=False)",
    )
    args = parser.parse_args()
    sizes = (2_000, 20_000) if args.quick else (10_000, 100_000, 1_000_000)

    from sparkeras import SparkKerasEstimator

    spark = session(slots=2, driver_memory="6g")
    spark.conf.set("spark.sql.execution.arrow.pyspark.enabled", "true")
    print(f"{machine()}; rows={sizes} width={WIDTH} batch=1024 epochs=1 workers=2")

    def estimator():
        return SparkKerasEstimator(
            model=binary_mlp(WIDTH, (128, 64)),
            numWorkers=2,
            epochs=1,
            batchSize=1024,
            forkServer=not args.fresh,
        )

    frame = cached(dense_frame(spark, sizes[0], WIDTH, partitions=4))
    fitted, cold = timed_fit(estimator(), frame)
    frame.unpersist()
    processes = sorted({report["worker_process"] for report in fitted.workerReports})
    print(
        f"first fit of the session ({sizes[0]:,} rows, {processes} processes): start-up "
        f"{cold['start_up']:.1f} s, fit {cold['fit']:.1f} s"
    )

    runs: dict[int, dict[str, float]] = {}
    for rows in sizes:
        frame = cached(dense_frame(spark, rows, WIDTH, partitions=max(4, rows // 125_000)))
        started = time.perf_counter()
        frame.toPandas()
        to_pandas = time.perf_counter() - started
        fitted, timing = timed_fit(estimator(), frame)
        timing.update(to_pandas=to_pandas, accuracy=fitted.history["accuracy"][-1])
        runs[rows] = timing
        frame.unpersist()
        print(
            f"{rows:>9,} rows: fit {timing['fit']:6.1f} s = start-up {timing['start_up']:5.1f} "
            f"+ training {timing['training']:5.1f} + finish {timing['finish']:4.1f}; "
            f"data path {timing['data_path']:5.2f} s (shard written after "
            f"{timing['write_shard']:4.2f} s) vs toPandas {to_pandas:5.2f} s "
            f"(ratio {timing['data_path'] / to_pandas:.2f}); peak memory "
            f"{timing['peak_memory_mib']:,.0f} MiB; accuracy {timing['accuracy']:.4f}"
        )

    fixed = runs[sizes[0]]["start_up"]
    print(f"fixed start-up (call to first step, {sizes[0]:,} rows): {fixed:.1f} s (target < 15)")
    per_row = {rows: (runs[rows]["fit"] - fixed) / rows for rows in sizes[1:]}
    for rows, seconds in per_row.items():
        print(f"cost per row beyond the fixed start-up, at {rows:,} rows: {seconds * 1e6:.2f} us")
    growth = per_row[sizes[-1]] / per_row[sizes[1]] if len(sizes) > 2 else None
    if growth is not None:
        print(f"per-row cost at {sizes[-1]:,} / at {sizes[1]:,}: {growth:.2f} (target <= 1.3)")
    if args.plot:
        plot(runs, args.plot)
        print(f"plot written to {args.plot}")
    print_result(
        "growth",
        {
            "per_row_growth": growth,
            "fixed_start_up": fixed,
            "cold_start_up": cold["start_up"],
            "worker_processes": processes,
            "data_path_ratio": max(run["data_path"] / run["to_pandas"] for run in runs.values()),
            **{f"{key}_{rows}": value for rows, run in runs.items() for key, value in run.items()},
        },
    )
    spark.stop()


if __name__ == "__main__":
    main()
