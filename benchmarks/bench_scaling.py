"""Worker scaling: the same compute-bound fit with 1 and with 2 workers on ``local[2]``.

Workload (issue #7, target 1): 200,000 rows x 256 float features, MLP 256-1024-1024-1, 2 epochs,
mirrored strategy, every TensorFlow process limited to one intra-op thread (``intraOpThreads=1``):
2 workers use 2 cores, 1 worker uses 1. For each global batch size (the same for 1 and 2
workers) the speedup is reported on the training phase (rows per second while training, as
scaling efficiency is usually quoted) and on the whole ``fit()`` wall time, whose fixed start-up
cost does not shrink with workers. A step's compute grows with the batch while its gradient
all-reduce does not, so the sweep shows from which batch two workers pay off. Run from the repo
root:

    .venv/bin/python benchmarks/bench_scaling.py                          # batches 1024-8192
    .venv/bin/python benchmarks/bench_scaling.py --plot docs/img/scaling.png
    .venv/bin/python benchmarks/bench_scaling.py --quick    # 20,000 rows, smaller MLP, 1 epoch
"""

from __future__ import annotations

import argparse

from common import (
    binary_mlp,
    cached,
    dense_frame,
    machine,
    plot_to,
    print_result,
    session,
    timed_fit,
    warm_up,
)


def plot(speedups: dict[int, dict[str, float]], path: str) -> None:
    """Speedup of 2 workers over 1 against the global batch size."""
    batches = sorted(speedups)
    with plot_to(path) as axes:
        for key, label in (("training", "training phase"), ("fit", "whole fit()")):
            axes.plot(batches, [speedups[b][key] for b in batches], marker="o", label=label)
        axes.axhline(2.0, color="grey", linestyle=":", label="linear")
        axes.axhline(1.7, color="grey", linestyle="--", label="target 1.7")
        axes.set_xscale("log", base=2)
        axes.set_xticks(batches, [str(b) for b in batches])
        axes.set_xlabel("global batch size")
        axes.set_ylabel("speedup, 2 workers vs 1")
        axes.legend()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20,000 rows, hidden 256, 1 epoch")
    parser.add_argument("--batches", default="1024,2048,4096,8192", help="global batch sizes")
    parser.add_argument("--plot", help="write the speedup curve to this PNG")
    args = parser.parse_args()
    rows, hidden, epochs = (20_000, 256, 1) if args.quick else (200_000, 1024, 2)
    batches = [1024] if args.quick else [int(batch) for batch in args.batches.split(",")]
    width = 256

    from sparkeras import SparkKerasEstimator

    spark = session(slots=2)
    frame = cached(dense_frame(spark, rows, width, partitions=4))
    print(f"{machine()}; rows={rows} width={width} hidden={hidden} epochs={epochs}")
    print(f"first fit of the session (untimed, 5 steps): {warm_up(frame, width, 2):.1f} s")

    results: dict = {"rows": rows}
    speedups: dict[int, dict[str, float]] = {}
    for batch in batches:
        timings = {}
        for workers in (1, 2):
            estimator = SparkKerasEstimator(
                model=binary_mlp(width, (hidden, hidden)),
                numWorkers=workers,
                epochs=epochs,
                batchSize=batch,
                intraOpThreads=1,
            )
            fitted, timing = timed_fit(estimator, frame)
            timing["accuracy"] = fitted.history["accuracy"][-1]
            timings[workers] = timing
            print(
                f"batch {batch:5d}, {workers} worker(s): fit {timing['fit']:6.1f} s, start-up "
                f"{timing['start_up']:5.1f} s, training {timing['training']:6.1f} s "
                f"({rows * epochs / timing['training']:,.0f} rows/s), "
                f"accuracy {timing['accuracy']:.4f}"
            )
            results.update({f"{key}_b{batch}_w{workers}": v for key, v in timing.items()})
        speedups[batch] = {key: timings[1][key] / timings[2][key] for key in ("training", "fit")}
        print(
            f"batch {batch:5d}: speedup 2 vs 1 worker: training {speedups[batch]['training']:.2f} "
            f"(scaling efficiency {speedups[batch]['training'] / 2:.0%}), "
            f"whole fit() {speedups[batch]['fit']:.2f}"
        )
        results[f"training_speedup_b{batch}"] = speedups[batch]["training"]
        results[f"fit_speedup_b{batch}"] = speedups[batch]["fit"]
    if args.plot:
        plot(speedups, args.plot)
        print(f"plot written to {args.plot}")
    print_result("scaling", results)
    spark.stop()


if __name__ == "__main__":
    main()
