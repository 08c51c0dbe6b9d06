"""Run by ``test_spark_connect.py`` in a process of its own: a Spark Connect session sets a
process-wide flag that switches every ``pyspark.ml`` class to its remote mode.

``python tests/connect_session.py DIR`` reads ``DIR/inputs.npy`` and ``DIR/labels.npy`` and:

* loads ``DIR/classic`` (saved by a classic session) and writes its transform's probabilities
  to ``DIR/on_classic.npy``;
* refuses three workers for two task slots, fits a two-worker model, saves it (and its
  estimator, which it reloads) twice with ``overwrite()`` to ``DIR/connect`` and as the only
  stage of a PipelineModel to ``DIR/pipeline``, and writes its probabilities to
  ``DIR/connect.npy`` and those of the reloaded pipeline to ``DIR/pipeline.npy``.
"""

from __future__ import annotations

import os
import sys


def probabilities(frame) -> list:
    return [list(row.probability) for row in frame.orderBy("id").select("probability").collect()]


def main(directory: str) -> None:
    import keras
    import numpy as np
    from pyspark.ml import PipelineModel
    from pyspark.sql import SparkSession

    from sparkeras import SparkKerasEstimator, SparkKerasModel

    spark = SparkSession.builder.remote("local[2]").getOrCreate()
    assert not hasattr(spark, "_jsparkSession"), "not a Spark Connect session"
    inputs = np.load(os.path.join(directory, "inputs.npy"))
    labels = np.load(os.path.join(directory, "labels.npy"))
    rows = [(i, x.tolist(), float(y)) for i, (x, y) in enumerate(zip(inputs, labels, strict=True))]
    frame = spark.createDataFrame(rows, "id long, features array<double>, label double")

    classic = SparkKerasModel.load(os.path.join(directory, "classic"))
    np.save(os.path.join(directory, "on_classic.npy"), probabilities(classic.transform(frame)))

    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((inputs.shape[1],)), keras.layers.Dense(1, activation="sigmoid")]
    )
    model.compile(optimizer="adam", loss="binary_crossentropy")
    try:  # the slots come from the configuration: no JVM in this process to ask
        SparkKerasEstimator(model=model, numWorkers=3).fit(frame)
    except ValueError as error:
        assert "only 2 task slot(s)" in str(error), error
    else:
        raise AssertionError("numWorkers=3 on local[2] was not refused")
    estimator = SparkKerasEstimator(model=model, numWorkers=2, epochs=1, batchSize=32)
    fitted = estimator.fit(frame)
    assert len(fitted.history["loss"]) == 1
    for _ in range(2):  # the second save must replace the first
        fitted.write().overwrite().save(os.path.join(directory, "connect"))
        PipelineModel(stages=[fitted]).write().overwrite().save(os.path.join(directory, "pipeline"))
        estimator.write().overwrite().save(os.path.join(directory, "estimator"))
    reloaded = SparkKerasEstimator.load(os.path.join(directory, "estimator"))
    assert (reloaded.getNumWorkers(), reloaded.getBatchSize()) == (2, 32)
    assert reloaded.getModel().count_params() == model.count_params()
    np.save(os.path.join(directory, "connect.npy"), probabilities(fitted.transform(frame)))
    pipeline = PipelineModel.load(os.path.join(directory, "pipeline"))
    np.save(os.path.join(directory, "pipeline.npy"), probabilities(pipeline.transform(frame)))
    spark.stop()


if __name__ == "__main__":
    main(sys.argv[1])
