"""fit() wall time and accuracy of sparkeras next to single-process Keras and Spark MLlib's MLP.

Workload (issues #2, #4 and #7): 50,000 rows x 200 float features, MLP 200-128-64-1, batch 128,
3 epochs; mirrored mode with 2 workers, parameter-server mode with 2 workers and 1 parameter
server; and ``pyspark.ml.classification.MultilayerPerceptronClassifier`` with the same layer sizes
(its own defaults otherwise: sigmoid hidden layers, L-BFGS, 100 iterations). The DataFrame is
cached and materialised before timing; every Keras run starts from the same compiled model, and
accuracy is the returned model's on all rows. A short untimed fit first starts the executor's
fork server (TensorFlow imported once, see ``sparkeras.processes``), so the timed fits are the
steady state of a session; that first fit's time is reported too. Run from the repo root:

    .venv/bin/python benchmarks/bench_fit_overhead.py          # full workload, all of them
    .venv/bin/python benchmarks/bench_fit_overhead.py --quick  # 5,000 rows, 1 epoch
    .venv/bin/python benchmarks/bench_fit_overhead.py --strategies mirrored
    .venv/bin/python benchmarks/bench_fit_overhead.py --fresh  # a fresh process per task
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from common import binary_mlp, cached, print_result, session, warm_up


def fit_mllib(frame, layers: list[int], batch: int) -> tuple[float, float]:
    """Train Spark MLlib's MultilayerPerceptronClassifier; its wall time and accuracy on all rows."""
    from pyspark.ml.classification import MultilayerPerceptronClassifier
    from pyspark.ml.evaluation import MulticlassClassificationEvaluator
    from pyspark.ml.functions import array_to_vector

    vectors = cached(frame.select(array_to_vector("features").alias("features"), "label"))
    started = time.perf_counter()
    model = MultilayerPerceptronClassifier(layers=layers, blockSize=batch, seed=0).fit(vectors)
    seconds = time.perf_counter() - started
    evaluator = MulticlassClassificationEvaluator(metricName="accuracy")
    accuracy = evaluator.evaluate(model.transform(vectors))
    vectors.unpersist()
    return seconds, accuracy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="5,000 rows and 1 epoch")
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--strategies", default="mirrored,parameter_server,mllib")
    parser.add_argument(
        "--fresh",
        action="store_true",
        help="a fresh TensorFlow process per task (forkServer=False)",
    )
    args = parser.parse_args()
    rows, epochs = (5_000, 1) if args.quick else (args.rows, args.epochs)
    width, batch = 200, 128
    strategies = args.strategies.split(",")

    import pandas as pd

    from sparkeras import SparkKerasEstimator

    rng = np.random.default_rng(0)
    features = rng.normal(size=(rows, width)).astype(np.float32)
    labels = (features @ rng.normal(size=width) > 0).astype(np.float32)

    # Parameter-server mode needs a slot for the coordinator and one for the parameter server.
    slots = args.workers + 2 if "parameter_server" in strategies else args.workers
    spark = session(slots)
    frame = cached(
        spark.createDataFrame(
            pd.DataFrame({"features": list(features.astype(np.float64)), "label": labels})
        )
    )

    def accuracy(model) -> float:
        predictions = model.predict(features, batch_size=4096, verbose=0)[:, 0]
        return float(np.mean((predictions > 0.5) == labels))

    first_fit_seconds = warm_up(frame, width, args.workers, fork_server=not args.fresh)

    baseline = binary_mlp(width, (128, 64))
    started = time.perf_counter()
    baseline.fit(features, labels, batch_size=batch, epochs=epochs, verbose=0)
    keras_seconds = time.perf_counter() - started

    print(f"rows={rows} width={width} batch={batch} epochs={epochs} workers={args.workers}")
    print(f"first fit of the session (untimed, 5 steps): {first_fit_seconds:.2f} s")
    print(f"keras fit:                {keras_seconds:6.2f} s  accuracy {accuracy(baseline):.4f}")
    results = {
        "first_fit_seconds": first_fit_seconds,
        "keras_seconds": keras_seconds,
        "keras_accuracy": accuracy(baseline),
    }
    if "mllib" in strategies:
        strategies.remove("mllib")
        seconds, mllib_accuracy = fit_mllib(frame, [width, 128, 64, 2], batch)
        print(
            f"MLlib MLP (L-BFGS):       {seconds:6.2f} s  accuracy {mllib_accuracy:.4f}  "
            f"ratio to keras {seconds / keras_seconds:.2f}"
        )
        results.update(mllib_seconds=seconds, mllib_accuracy=mllib_accuracy)
    for strategy in strategies:
        extra = {"numPs": 1} if strategy == "parameter_server" else {}
        estimator = SparkKerasEstimator(
            model=binary_mlp(width, (128, 64)),
            strategy=strategy,
            numWorkers=args.workers,
            epochs=epochs,
            batchSize=batch,
            forkServer=not args.fresh,
            **extra,
        )
        started = time.perf_counter()
        fitted = estimator.fit(frame)
        seconds = time.perf_counter() - started
        print(
            f"sparkeras {strategy:16s}{seconds:6.2f} s  accuracy "
            f"{accuracy(fitted.getKerasModel()):.4f}  ratio to keras {seconds / keras_seconds:.2f}"
        )
        for report in fitted.workerReports:
            print(
                f"    task {report['rank']} ({report['role']}): task (s) {report['task_seconds']}"
                f" process (s) {report.get('seconds')} epochs (s) {report.get('epoch_seconds')}"
            )
        results[f"{strategy}_seconds"] = seconds
        results[f"{strategy}_accuracy"] = accuracy(fitted.getKerasModel())
    print_result("fit_overhead", results)
    spark.stop()


if __name__ == "__main__":
    main()
