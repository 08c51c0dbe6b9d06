"""Wide tabular classification in a Spark ML Pipeline, tuned with CrossValidator.

VectorAssembler -> StandardScaler -> SparkKerasEstimator (2 workers), with a grid over the
learning rate and the number of epochs, scored by area under ROC; the best PipelineModel is
evaluated on a held-out split.

    .venv/bin/python examples/pipeline_cv.py            # 20,000 rows x 200 columns
    .venv/bin/python examples/pipeline_cv.py --quick    # 2,000 rows x 30 columns, a 2-point grid
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import numpy as np
import pandas as pd
from pyspark.ml import Pipeline
from pyspark.ml.evaluation import BinaryClassificationEvaluator
from pyspark.ml.feature import StandardScaler, VectorAssembler
from pyspark.ml.tuning import CrossValidator, ParamGridBuilder

from sparkeras import SparkKerasEstimator, get_or_create_session


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    rows, width = (2_000, 30) if args.quick else (20_000, 200)

    spark = get_or_create_session("local[2]", app_name="sparkeras-pipeline-cv")
    spark.sparkContext.setLogLevel("ERROR")
    rng = np.random.default_rng(0)
    values = rng.normal(size=(rows, width))
    signal = values[:, :10] @ rng.normal(size=10) + np.sin(values[:, 10])
    columns = [f"c{i}" for i in range(width)]
    frame = pd.DataFrame(values, columns=columns).assign(label=(signal > 0).astype(float))
    train, test = spark.createDataFrame(frame).randomSplit([0.8, 0.2], seed=0)

    model = keras.Sequential(
        [
            keras.Input((width,)),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dense(1, activation="sigmoid"),
        ]
    )
    model.compile(optimizer="adam", loss="binary_crossentropy", metrics=["accuracy"])
    estimator = SparkKerasEstimator(model=model, numWorkers=2, batchSize=128, featuresCol="scaled")
    pipeline = Pipeline(
        stages=[
            VectorAssembler(inputCols=columns, outputCol="raw"),
            StandardScaler(inputCol="raw", outputCol="scaled"),
            estimator,
        ]
    )
    grid = ParamGridBuilder().addGrid(estimator.learningRate, [1e-3, 1e-2])
    if not args.quick:
        grid = grid.addGrid(estimator.epochs, [3, 6])
    evaluator = BinaryClassificationEvaluator()  # areaUnderROC on rawPrediction
    search = CrossValidator(
        estimator=pipeline, estimatorParamMaps=grid.build(), evaluator=evaluator, numFolds=2
    )
    started = time.perf_counter()
    best = search.fit(train)
    print(f"cross-validation: {time.perf_counter() - started:.1f} s")
    for params, score in zip(search.getEstimatorParamMaps(), best.avgMetrics, strict=True):
        print(f"  { ({p.name: v for p, v in params.items()}) }: AUC {score:.4f}")
    print(f"held-out AUC of the best pipeline: {evaluator.evaluate(best.transform(test)):.4f}")
    spark.stop()


if __name__ == "__main__":
    main()
