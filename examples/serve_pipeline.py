"""Train a PipelineModel, save it, load it back and serve predictions with it.

.venv/bin/python examples/serve_pipeline.py            # saves under ./served-pipeline
.venv/bin/python examples/serve_pipeline.py --quick --path /tmp/served-pipeline
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import numpy as np
import pandas as pd
from pyspark.ml import Pipeline, PipelineModel
from pyspark.ml.feature import VectorAssembler

from sparkeras import SparkKerasEstimator, get_or_create_session


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--path", default="served-pipeline")
    args = parser.parse_args()
    rows = 2_000 if args.quick else 20_000

    spark = get_or_create_session("local[2]", app_name="sparkeras-serve")
    spark.sparkContext.setLogLevel("ERROR")
    rng = np.random.default_rng(3)
    size, rooms = rng.uniform(30, 200, rows), rng.integers(1, 7, rows)
    price = 2.5 * size + 12 * rooms + rng.normal(0, 5, rows)
    frame = spark.createDataFrame(
        pd.DataFrame({"size": size, "rooms": rooms.astype(float), "price": price / 100})
    )

    model = keras.Sequential(
        [keras.Input((2,)), keras.layers.Normalization(), keras.layers.Dense(1)]
    )
    model.layers[0].adapt(np.stack([size, rooms], axis=1))
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss="mse")
    pipeline = Pipeline(
        stages=[
            VectorAssembler(inputCols=["size", "rooms"], outputCol="features"),
            SparkKerasEstimator(
                model=model, labelCol="price", numWorkers=2, epochs=5, batchSize=64
            ),
        ]
    )
    pipeline.fit(frame).write().overwrite().save(args.path)
    print(f"saved the fitted pipeline to {os.path.abspath(args.path)}")

    served = PipelineModel.load(args.path)  # e.g. in a scoring job or a streaming query
    requests = spark.createDataFrame([(50.0, 2.0), (120.0, 4.0)], ["size", "rooms"])
    for row in served.transform(requests).select("size", "rooms", "prediction").collect():
        print(
            f"size {row.size:5.0f} m2, {row.rooms:.0f} rooms -> price {100 * row.prediction:8.1f}"
        )
    spark.stop()


if __name__ == "__main__":
    main()
