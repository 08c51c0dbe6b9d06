"""fit() wall time of sparkeras (2 workers, local[2]) divided by single-process Keras model.fit.

Workload (issue #2): 50,000 rows x 200 float features, MLP 200-128-64-1, global batch 128,
3 epochs. The DataFrame is cached and materialised before timing; both runs start from the same
compiled model. Run from the repo root:

    .venv/bin/python benchmarks/bench_fit_overhead.py          # full workload
    .venv/bin/python benchmarks/bench_fit_overhead.py --quick  # 5,000 rows, 1 epoch
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def build_model(width: int):
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((width,)),
            keras.layers.Dense(128, activation="relu"),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dense(1, activation="sigmoid"),
        ]
    )
    model.compile(optimizer="adam", loss="binary_crossentropy", metrics=["accuracy"])
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="5,000 rows and 1 epoch")
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    rows, epochs = (5_000, 1) if args.quick else (args.rows, args.epochs)
    width, batch = 200, 128

    import pandas as pd

    from sparkeras import SparkKerasEstimator, get_or_create_session

    rng = np.random.default_rng(0)
    features = rng.normal(size=(rows, width)).astype(np.float32)
    labels = (features @ rng.normal(size=width) > 0).astype(np.float32)

    spark = get_or_create_session("local[2]", config={"spark.ui.enabled": "false"})
    spark.sparkContext.setLogLevel("ERROR")
    frame = spark.createDataFrame(
        pd.DataFrame({"features": list(features.astype(np.float64)), "label": labels})
    ).cache()
    frame.count()

    model = build_model(width)
    estimator = SparkKerasEstimator(
        model=model, numWorkers=args.workers, epochs=epochs, batchSize=batch
    )
    started = time.perf_counter()
    fitted = estimator.fit(frame)
    sparkeras_seconds = time.perf_counter() - started

    baseline = build_model(width)
    started = time.perf_counter()
    baseline.fit(features, labels, batch_size=batch, epochs=epochs, verbose=0)
    keras_seconds = time.perf_counter() - started

    print(f"rows={rows} width={width} batch={batch} epochs={epochs} workers={args.workers}")
    print(
        f"sparkeras fit: {sparkeras_seconds:.2f} s  accuracy {fitted.history['accuracy'][-1]:.4f}"
    )
    print(f"keras fit:     {keras_seconds:.2f} s")
    print(f"ratio sparkeras/keras: {sparkeras_seconds / keras_seconds:.2f}")
    for report in fitted.workerReports:
        print(
            f"worker {report['rank']} task (s): {report['task_seconds']} process (s): {report['seconds']} epochs (s): {report['epoch_seconds']}"
        )
    spark.stop()


if __name__ == "__main__":
    main()
