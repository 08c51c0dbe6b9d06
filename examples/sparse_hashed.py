"""A sparse, high-dimensional model: hashed categorical features, never densified.

FeatureHasher turns categorical columns into SparseVectors of 2^18 dimensions; the model's input
is declared sparse, so every batch reaches TensorFlow as a tf.SparseTensor.

    .venv/bin/python examples/sparse_hashed.py           # 100,000 rows, 2^18 dimensions
    .venv/bin/python examples/sparse_hashed.py --quick   # 5,000 rows, 2^14 dimensions
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import numpy as np
import pandas as pd
from pyspark.ml.evaluation import BinaryClassificationEvaluator
from pyspark.ml.feature import FeatureHasher

from sparkeras import SparkKerasEstimator, get_or_create_session


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    rows, dimensions = (5_000, 2**14) if args.quick else (100_000, 2**18)

    spark = get_or_create_session("local[2]", app_name="sparkeras-sparse")
    spark.sparkContext.setLogLevel("ERROR")
    rng = np.random.default_rng(2)
    users, items = rng.integers(0, 2_000, rows), rng.integers(0, 500, rows)
    liked = (users % 7 == 0) | (items % 5 == 0)  # a rule over categories only
    frame = spark.createDataFrame(
        pd.DataFrame(
            {"user": users.astype(str), "item": items.astype(str), "label": liked.astype(float)}
        )
    )
    hashed = FeatureHasher(inputCols=["user", "item"], outputCol="features", numFeatures=dimensions)
    train, test = hashed.transform(frame).randomSplit([0.8, 0.2], seed=0)

    model = keras.Sequential(
        [keras.Input((dimensions,), sparse=True), keras.layers.Dense(1, activation="sigmoid")]
    )
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss="binary_crossentropy")
    fitted = SparkKerasEstimator(model=model, numWorkers=2, epochs=3, batchSize=256, verbose=2).fit(
        train
    )
    auc = BinaryClassificationEvaluator().evaluate(fitted.transform(test))
    print(f"{dimensions} hashed dimensions, held-out AUC {auc:.4f}")
    spark.stop()


if __name__ == "__main__":
    main()
