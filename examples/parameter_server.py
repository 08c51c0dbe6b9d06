"""Asynchronous parameter-server training: a coordinator, 2 workers and 1 parameter server.

The four roles are tasks of one barrier stage, so the local session has four task slots.

    .venv/bin/python examples/parameter_server.py           # 50,000 rows
    .venv/bin/python examples/parameter_server.py --quick   # 4,000 rows
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import numpy as np
import pandas as pd

from sparkeras import SparkKerasEstimator, get_or_create_session


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    rows, width = (4_000, 20) if args.quick else (50_000, 50)

    spark = get_or_create_session("local[4]", app_name="sparkeras-parameter-server")
    spark.sparkContext.setLogLevel("ERROR")
    rng = np.random.default_rng(1)
    features = rng.normal(size=(rows, width))
    labels = (features @ rng.normal(size=width) > 0).astype(float)
    frame = spark.createDataFrame(pd.DataFrame({"features": list(features), "label": labels}))

    model = keras.Sequential(
        [
            keras.Input((width,)),
            keras.layers.Dense(32, activation="relu"),
            keras.layers.Dense(1, activation="sigmoid"),
        ]
    )
    model.compile(optimizer="adam", loss="binary_crossentropy", metrics=["accuracy"])
    fitted = SparkKerasEstimator(
        model=model,
        strategy="parameter_server",
        numWorkers=2,
        numPs=1,
        epochs=3,
        batchSize=64,
        validationFraction=0.1,
        verbose=2,
    ).fit(frame)
    for report in fitted.workerReports:
        print(f"task {report['rank']}: {report['role']} on executor {report['executor']}")
    print(f"final validation accuracy: {fitted.history['val_accuracy'][-1]:.4f}")
    spark.stop()


if __name__ == "__main__":
    main()
