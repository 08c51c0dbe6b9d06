"""sparkeras demo: train a compiled Keras model on a local Spark session with two workers.

The story: build a tabular binary-classification DataFrame with VectorAssembler; train an MLP
with SparkKerasEstimator (MultiWorkerMirroredStrategy, two TensorFlow processes) with live
progress; evaluate with Spark's BinaryClassificationEvaluator; save the model, load it back and
predict with it; write the training history plot.

    .venv/bin/python examples/demo.py             # 20,000 rows, 5 epochs
    .venv/bin/python examples/demo.py --quick     # 4,000 rows, 2 epochs
    .venv/bin/python examples/demo.py --rows 200000
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import numpy as np
import pandas as pd
from pyspark.ml.evaluation import BinaryClassificationEvaluator
from pyspark.ml.feature import VectorAssembler

from sparkeras import SparkKerasEstimator, SparkKerasModel, get_or_create_session


def make_frame(spark, rows: int, width: int):
    """Columns x0..x{width-1} and a label that depends non-linearly on them."""
    rng = np.random.default_rng(42)
    values = rng.normal(size=(rows, width))
    label = (values[:, 0] * values[:, 1] + np.sin(values[:, 2]) + values[:, 3:].mean(axis=1)) > 0
    frame = pd.DataFrame(values, columns=[f"x{i}" for i in range(width)])
    frame["label"] = label.astype(float)
    assembler = VectorAssembler(inputCols=[f"x{i}" for i in range(width)], outputCol="features")
    return assembler.transform(spark.createDataFrame(frame)).select("features", "label")


def main() -> None:
    parser = argparse.ArgumentParser(description="Train a Keras model on Spark with sparkeras.")
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="4,000 rows and 2 epochs")
    parser.add_argument("--out", default="demo-output", help="where the model and plot go")
    args = parser.parse_args()
    if args.quick:
        args.rows, args.epochs = 4_000, 2
    width = 20

    spark = get_or_create_session("local[2]", app_name="sparkeras-demo")
    spark.sparkContext.setLogLevel("ERROR")
    train, test = make_frame(spark, args.rows, width).randomSplit([0.8, 0.2], seed=1)
    train, test = train.cache(), test.cache()

    model = keras.Sequential(
        [
            keras.Input((width,)),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dense(32, activation="relu"),
            keras.layers.Dense(1, activation="sigmoid"),
        ]
    )
    model.compile(
        optimizer=keras.optimizers.Adam(0.003), loss="binary_crossentropy", metrics=["accuracy"]
    )

    estimator = SparkKerasEstimator(
        model=model,
        featuresCol="features",
        labelCol="label",
        numWorkers=2,
        strategy="mirrored",
        epochs=args.epochs,
        batchSize=128,
        validationFraction=0.1,
        verbose=1,
    )
    print(f"Training on {train.count()} rows with 2 workers ...")
    started = time.perf_counter()
    fitted = estimator.fit(train)
    print(f"fit() took {time.perf_counter() - started:.1f} s")

    scored = fitted.transform(test)
    auc = BinaryClassificationEvaluator().evaluate(scored)  # reads rawPrediction
    print(f"Test AUC (Spark BinaryClassificationEvaluator): {auc:.4f}")

    model_path = os.path.abspath(os.path.join(args.out, "model"))
    fitted.write().overwrite().save(model_path)
    loaded = SparkKerasModel.load(model_path)
    print(f"Saved the model to {model_path} and loaded it back; its predictions on 5 test rows:")
    for row in (
        loaded.transform(test).select("label", "probability", "prediction").limit(5).collect()
    ):
        print(
            f"  label {row.label:.0f}  P(1) {row.probability[1]:.4f}  prediction {row.prediction:.0f}"
        )

    plot_path = os.path.abspath(os.path.join(args.out, "history.png"))
    fitted.plotHistory(plot_path)
    print(f"Training history plot: {plot_path}")
    spark.stop()


if __name__ == "__main__":
    main()
