"""End-to-end training on local[2]: two TensorFlow workers in one barrier stage."""

from __future__ import annotations

import importlib.util
import math
import sys
import time

import keras
import numpy as np
import pytest
from conftest import array_frame, binary_model, separable, spark_jobs, worker_processes
from pyspark.ml.functions import array_to_vector
from pyspark.ml.linalg import Vectors
from pyspark.sql import functions as F

from sparkeras import SparkKerasEstimator, TrainingError, validation
from sparkeras.plan import FeatureSpec, LabelSpec

pytestmark = pytest.mark.spark
WIDTH = 10


@pytest.fixture(scope="module")
def data(spark):
    features, labels = separable(2000, WIDTH)
    return features, labels, array_frame(spark, features, labels).cache()


@pytest.fixture(scope="module")
def fitted(data):
    _, _, frame = data
    model = binary_model(WIDTH)
    estimator = SparkKerasEstimator(
        model=model, numWorkers=2, epochs=4, batchSize=64, validationFraction=0.1, seed=3
    )
    return model, estimator.fit(frame)


def test_two_workers_learn_a_separable_problem(fitted, data):
    _, _, frame = data
    _, result = fitted
    assert len(result.history["loss"]) == 4
    assert result.history["loss"][-1] < result.history["loss"][0]
    assert result.history["accuracy"][-1] >= 0.9
    assert result.history["val_accuracy"][-1] >= 0.9
    predictions = result.transform(frame).select("prediction", "label").toPandas()
    accuracy = ((predictions["prediction"] > 0.5) == (predictions["label"] > 0.5)).mean()
    assert accuracy >= 0.93


def test_workers_end_with_identical_weights_and_history(fitted):
    _, result = fitted
    first, second = result.workerReports
    assert first["keras_patches"] == ["_maybe_symbolic_build", "reduce_per_replica"]
    assert first["weights_sha256"] == second["weights_sha256"]
    assert first["history"] == second["history"] == result.history
    assert first["steps_per_epoch"] == second["steps_per_epoch"]
    # Validation rows are held out evenly; every remaining row is trained on.
    assert first["validation_rows"] == second["validation_rows"] == 100
    assert first["train_rows"] + second["train_rows"] == 1800
    # TensorFlow's output stays out of the console, but each worker's log tail is kept.
    assert "Epoch 4/4" in first["log_tail"] and "Epoch 4/4" in second["log_tail"]


def test_returned_model_is_the_chiefs_and_user_model_is_untouched(fitted, data):
    _, _, frame = data
    user_model, result = fitted
    trained = result.getKerasModel()
    digest = result.workerReports[0]["weights_sha256"]
    import hashlib

    sha = hashlib.sha256()
    for weights in trained.get_weights():
        sha.update(weights.tobytes())
    assert sha.hexdigest() == digest
    # Compiled as the user compiled it, optimizer config included.
    assert trained.loss == "binary_crossentropy"
    assert trained.optimizer.get_config()["learning_rate"] == pytest.approx(0.01)
    # The user's model was not trained (its optimizer never stepped).
    assert int(user_model.optimizer.iterations.numpy()) == 0
    assert not np.allclose(user_model.get_weights()[0], trained.get_weights()[0])
    # transform predicts what the returned keras model predicts.
    rows = frame.limit(50).toPandas()
    expected = trained.predict(np.stack(rows["features"].to_numpy()).astype("float32"), verbose=0)
    got = result.transform(frame.limit(50)).toPandas()["probability"].map(lambda v: v[1])
    np.testing.assert_allclose(got.to_numpy(), expected.reshape(-1), rtol=1e-5, atol=1e-6)


def test_vector_columns_skewed_partitions_and_sparse_vectors(spark):
    features, labels = separable(600, WIDTH, seed=1)
    rows = []
    for index, (vector, label) in enumerate(zip(features, labels, strict=True)):
        if index % 3 == 0:  # every third row as a SparseVector, with an explicit zero dropped
            nonzero = np.flatnonzero(vector)
            rows.append((Vectors.sparse(WIDTH, nonzero, vector[nonzero]), float(label)))
        else:
            rows.append((Vectors.dense(vector), float(label)))
    context = spark.sparkContext
    skewed = (
        context.parallelize(rows[:5], 1)
        .union(context.parallelize(rows[5:], 1))
        .toDF(["features", "label"])
    )
    assert skewed.rdd.glom().map(len).collect() == [5, 595]
    result = SparkKerasEstimator(
        model=binary_model(WIDTH, learning_rate=0.03), numWorkers=2, epochs=6, batchSize=32
    ).fit(skewed)
    first, second = result.workerReports
    assert first["steps_per_epoch"] == second["steps_per_epoch"]
    assert first["train_rows"] + second["train_rows"] == 600
    assert min(first["train_rows"], second["train_rows"]) > 200  # shards were rebalanced
    assert result.history["accuracy"][-1] >= 0.9
    predictions = result.transform(skewed).toPandas()
    accuracy = ((predictions["prediction"] > 0.5) == (predictions["label"] > 0.5)).mean()
    assert accuracy >= 0.9


def test_sparse_input_trains_like_the_same_rows_dense(spark):
    """SparseVectors reach a sparse-input model as tf.SparseTensor batches; same data, seed and
    initial weights as a dense run give the same training, up to float summation order."""
    from pyspark.ml.linalg import VectorUDT

    features, labels = separable(800, 40, seed=3)
    features[np.random.default_rng(3).random(features.shape) < 0.8] = 0.0  # 80 % zeros
    dense = array_frame(spark, features, labels).cache()

    def to_sparse(values):
        nonzero = np.flatnonzero(values)
        return Vectors.sparse(len(values), nonzero, np.asarray(values)[nonzero])

    to_sparse = F.udf(to_sparse, VectorUDT())
    sparse = dense.withColumn("features", to_sparse("features"))  # same partitions and order

    def fit(frame, is_sparse):
        keras.utils.set_random_seed(7)  # the same initial weights for both models
        model = keras.Sequential(
            [
                keras.Input((40,), sparse=is_sparse),
                keras.layers.Dense(8, activation="relu"),
                keras.layers.Dense(1, activation="sigmoid"),
            ]
        )
        # SGD: Adam's normalised steps would turn float round-off in near-zero gradients
        # (summation order differs between sparse and dense matmuls) into full-size updates.
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss="binary_crossentropy")
        return SparkKerasEstimator(model=model, numWorkers=2, epochs=3, batchSize=64).fit(frame)

    from_dense, from_sparse = fit(dense, False), fit(sparse, True)
    np.testing.assert_allclose(from_sparse.history["loss"], from_dense.history["loss"], rtol=1e-4)
    for got, expected in zip(
        from_sparse.getKerasModel().get_weights(),
        from_dense.getKerasModel().get_weights(),
        strict=True,
    ):
        np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-5)
    assert from_dense.history["loss"][-1] < from_dense.history["loss"][0]  # it did train
    predicted = from_sparse.transform(sparse).select("probability").toPandas()["probability"]
    expected = from_dense.transform(dense).select("probability").toPandas()["probability"]
    np.testing.assert_allclose(
        np.stack(predicted.map(lambda v: v.toArray())),
        np.stack(expected.map(lambda v: v.toArray())),
        atol=1e-5,
    )


def test_array_labels_and_one_input_partition(spark):
    rng = np.random.default_rng(2)
    features = rng.normal(size=(400, 4)).astype(np.float32)
    targets = np.stack([features @ [1.0, 2.0, 0.0, -1.0], features @ [0.0, 1.0, 1.0, 0.0]], axis=1)
    import pandas as pd

    frame = spark.createDataFrame(
        pd.DataFrame({"x": list(features.astype(float)), "y": list(targets)})
    ).coalesce(1)
    frame = frame.withColumn("x", array_to_vector("x"))
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss="mse")
    result = SparkKerasEstimator(
        model=model, featuresCol="x", labelCol="y", numWorkers=2, epochs=15, batchSize=40
    ).fit(frame)
    assert result.history["loss"][-1] < 0.05
    predicted = np.stack(result.transform(frame).toPandas()["prediction"].to_numpy())
    assert predicted.shape == (400, 2)


def test_autoencoders_train_on_their_features_column_with_any_spark_seed(spark):
    rng = np.random.default_rng(4)
    codes = rng.normal(size=(600, 3))
    rows = codes @ rng.normal(size=(3, 6))  # 6 columns on a 3-d subspace: a 3-unit code suffices
    import pandas as pd

    frame = spark.createDataFrame(pd.DataFrame({"x": list(rows)}))
    autoencoder = keras.Sequential(
        [keras.Input((6,)), keras.layers.Dense(3), keras.layers.Dense(6)]
    )
    autoencoder.compile(optimizer=keras.optimizers.Adam(0.02), loss="mse")
    result = SparkKerasEstimator(
        model=autoencoder,
        featuresCol="x",
        labelCol="x",  # its own features are the label
        numWorkers=2,
        epochs=10,
        batchSize=40,
        seed=-(2**40),  # Spark seeds are any long; Keras takes [0, 2**32)
    ).fit(frame)
    assert result.history["loss"][-1] < 0.05 * result.history["loss"][0]
    reconstructed = np.stack(result.transform(frame).toPandas()["prediction"].to_numpy())
    assert np.mean((reconstructed - rows) ** 2) < 0.05 * np.mean(rows**2)


@keras.saving.register_keras_serializable(package="sparkeras_tests")
class Scale(keras.layers.Layer):
    """A registered custom layer: shipped automatically."""

    def __init__(self, factor: float = 2.0, **kwargs):
        super().__init__(**kwargs)
        self.factor = factor

    def call(self, inputs):
        return inputs * self.factor

    def get_config(self):
        return {**super().get_config(), "factor": self.factor}


class Shift(keras.layers.Layer):
    """An unregistered custom layer: must come through customObjects."""

    def call(self, inputs):
        return inputs + 1.0


def weighted_bce(y_true, y_pred):
    return 2.0 * keras.losses.binary_crossentropy(y_true, y_pred)


def custom_model():
    model = keras.Sequential(
        [
            keras.Input((WIDTH,)),
            Scale(0.5),
            Shift(),
            keras.layers.Dense(8, activation="relu"),
            keras.layers.Dense(1, activation="sigmoid"),
        ]
    )
    model.compile(optimizer=keras.optimizers.Adam(0.02), loss=weighted_bce, metrics=["accuracy"])
    return model


def test_custom_layers_and_losses_travel_with_custom_objects(data):
    _, _, frame = data
    estimator = SparkKerasEstimator(
        model=custom_model(),
        numWorkers=2,
        epochs=3,
        batchSize=64,
        customObjects={"Shift": Shift, "weighted_bce": weighted_bce},
    )
    result = estimator.fit(frame)
    assert result.history["accuracy"][-1] >= 0.85
    trained = result.getKerasModel()
    assert [type(layer).__name__ for layer in trained.layers[:2]] == ["Scale", "Shift"]


def test_unknown_custom_layer_is_named_before_any_spark_job(spark, data):
    _, _, frame = data
    jobs = spark_jobs(spark)
    estimator = SparkKerasEstimator(model=custom_model(), numWorkers=2)
    with pytest.raises(
        ValueError, match=r"custom object\(s\) \[.Shift.\].*customObjects=\{\"Shift\": Shift\}"
    ):
        estimator.fit(frame)
    assert spark_jobs(spark) == jobs


class RecordEpochs(keras.callbacks.Callback):
    """A user callback that writes into the epoch logs."""

    def on_epoch_end(self, epoch, logs=None):
        logs["marker"] = float(epoch * 10)


def test_callbacks_and_early_stopping_end_all_workers_together(data):
    _, _, frame = data
    callbacks = [
        keras.callbacks.LearningRateScheduler(lambda epoch: 0.01 * 0.5**epoch),
        # No epoch can improve by 10: training stops after the second epoch.
        keras.callbacks.EarlyStopping(monitor="loss", min_delta=10.0, patience=1),
        RecordEpochs(),
    ]
    result = SparkKerasEstimator(
        model=binary_model(WIDTH), numWorkers=2, epochs=10, batchSize=64, callbacks=callbacks
    ).fit(frame)
    assert [report["epochs_run"] for report in result.workerReports] == [2, 2]
    assert result.history["learning_rate"] == pytest.approx([0.01, 0.005])
    assert result.history["marker"] == [0.0, 10.0]


class StopOnWorkerOne(keras.callbacks.Callback):
    """Asks to stop from a batch hook on worker 1 only, as TerminateOnNaN would on local logs."""

    def on_train_batch_end(self, batch, logs=None):
        import json
        import os

        if json.loads(os.environ["TF_CONFIG"])["task"]["index"] == 1:
            self.model.stop_training = True


def test_file_writing_callbacks_and_one_workers_stop_request(data, tmp_path):
    """Keras 3 callbacks have no chief logic: only the chief writes the user's files, and a stop
    asked on one worker ends every worker after that epoch instead of stalling the others."""
    _, _, frame = data
    log, saved = tmp_path / "log.csv", tmp_path / "best.keras"
    callbacks = [
        keras.callbacks.CSVLogger(str(log)),
        keras.callbacks.ModelCheckpoint(str(saved)),
        StopOnWorkerOne(),
    ]
    started = time.monotonic()
    result = SparkKerasEstimator(
        model=binary_model(WIDTH),
        numWorkers=2,
        epochs=4,
        batchSize=64,
        stallTimeout=60,
        callbacks=callbacks,
    ).fit(frame)
    assert time.monotonic() - started < 50  # not a stall
    assert [report["epochs_run"] for report in result.workerReports] == [1, 1]
    assert len(result.history["loss"]) == 1
    assert log.read_text().splitlines()[0].startswith("epoch,")
    assert len(log.read_text().splitlines()) == 2  # the chief's header and one epoch, once
    restored = keras.models.load_model(saved)
    np.testing.assert_array_equal(
        restored.get_weights()[0], result.getKerasModel().get_weights()[0]
    )
    assert sorted(path.name for path in tmp_path.iterdir()) == ["best.keras", "log.csv"]
    with pytest.raises(ValueError, match=r"BackupAndRestore cannot be used.*checkpointDir"):
        SparkKerasEstimator(
            model=binary_model(WIDTH), callbacks=[keras.callbacks.BackupAndRestore(str(tmp_path))]
        ).fit(frame)


class CountBatchCalls(keras.callbacks.Callback):
    """Writes how often Keras called back per training batch into the epoch logs."""

    def on_epoch_begin(self, epoch, logs=None):
        self.calls = 0

    def on_train_batch_end(self, batch, logs=None):
        self.calls += 1

    def on_epoch_end(self, epoch, logs=None):
        logs["batch_calls"] = float(self.calls)


def test_steps_per_execution_trains_the_same_steps_in_fewer_calls(data):
    _, _, frame = data

    estimator = SparkKerasEstimator(
        model=binary_model(WIDTH),
        numWorkers=2,
        epochs=2,
        batchSize=64,
        validationFraction=0.1,
        callbacks=[CountBatchCalls()],
    )
    one = estimator.setStepsPerExecution(1).fit(frame)
    four = estimator.setStepsPerExecution(4).fit(frame)
    one_history, four_history = dict(one.history), dict(four.history)
    # 900 training rows per worker in batches of 32: 29 steps, so the last call runs only one.
    steps = four.workerReports[0]["steps_per_epoch"]
    assert steps == 29
    assert one_history.pop("batch_calls") == [29.0, 29.0]
    assert four_history.pop("batch_calls") == [8.0, 8.0]
    # Same steps on the same batches: the same training, validation included, bit for bit.
    assert four_history == one_history
    assert four.workerReports[0]["weights_sha256"] == one.workerReports[0]["weights_sha256"]
    assert four.workerReports[1]["weights_sha256"] == one.workerReports[0]["weights_sha256"]
    assert int(four.getKerasModel().optimizer.iterations) == 2 * steps


def test_embedding_models_also_train_the_same_in_fewer_calls(spark):
    # Embedding gradients are sparse (IndexedSlices) and all-gathered across workers.
    rng = np.random.default_rng(5)
    codes = rng.integers(0, 50, size=(1200, 3)).astype(np.float64)
    labels = (codes[:, 0] % 3 == 0).astype(np.float64)
    frame = array_frame(spark, codes, labels)
    model = keras.Sequential(
        [
            keras.Input((3,)),
            keras.layers.Embedding(50, 4),
            keras.layers.Flatten(),
            keras.layers.Dense(1, activation="sigmoid"),
        ]
    )
    model.compile(optimizer="adam", loss="binary_crossentropy", metrics=["accuracy"])
    estimator = SparkKerasEstimator(model=model, numWorkers=2, epochs=2, batchSize=64)
    one = estimator.setStepsPerExecution(1).fit(frame)
    three = estimator.setStepsPerExecution(3).fit(frame)
    # About 600 rows per worker (a seeded split) in batches of 32: the last call runs 2 steps.
    assert three.workerReports[0]["steps_per_epoch"] == 20
    assert three.history == one.history
    assert three.workerReports[1]["weights_sha256"] == one.workerReports[0]["weights_sha256"]


def test_repeated_fits_in_one_session_are_reproducible(data):
    _, _, frame = data
    model = keras.Sequential(
        [
            keras.Input((WIDTH,)),
            keras.layers.Dense(16, activation="relu"),
            keras.layers.Dropout(0.3),  # its masks too: seeded before the model is rebuilt
            keras.layers.Dense(1, activation="sigmoid"),
        ]
    )
    model.compile(optimizer="adam", loss="binary_crossentropy", metrics=["accuracy"])
    estimator = SparkKerasEstimator(model=model, numWorkers=2, epochs=2, batchSize=64)
    # With the module's earlier fits, the session has run many barrier stages by now.
    first, second = estimator.fit(frame), estimator.fit(frame)
    assert first.history["loss"][-1] < first.history["loss"][0]
    assert sum(report["train_rows"] for report in first.workerReports) == 2000
    # Same seed, same shards, same starting weights: the same training.
    assert second.history == first.history
    assert second.workerReports[0]["weights_sha256"] == first.workerReports[0]["weights_sha256"]


def test_a_failing_worker_fails_fast_with_its_traceback(data):
    _, _, frame = data

    class Explode(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            raise RuntimeError("boom from the user callback")

    started = time.monotonic()
    estimator = SparkKerasEstimator(
        model=binary_model(WIDTH), numWorkers=2, epochs=2, callbacks=[Explode()]
    )
    with pytest.raises(TrainingError, match="boom from the user callback") as failure:
        estimator.fit(frame)
    assert "Traceback" in str(failure.value)
    assert "on_epoch_begin" in str(failure.value)
    assert time.monotonic() - started < 90
    # The other worker's TensorFlow process died with its task: none is left behind.
    deadline = time.monotonic() + 15
    while worker_processes() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert worker_processes() == []


def test_skip_invalid_rows_drops_and_trains(spark):
    features, labels = separable(300, WIDTH, seed=4)
    bad = [
        (None, 1.0),
        ([float("nan")] + [0.0] * (WIDTH - 1), 1.0),
        ([float("inf")] + [0.0] * (WIDTH - 1), 0.0),
        ([0.0] * WIDTH, float("nan")),
        ([None] + [0.0] * (WIDTH - 1), 1.0),  # a null inside the array
        ([1e39] + [0.0] * (WIDTH - 1), 0.0),  # finite, but infinite as float32
        ([0.0] * WIDTH, -1e39),
    ]
    frame = array_frame(spark, features, labels).union(
        spark.createDataFrame(bad, "features array<double>, label double")
    )
    with pytest.raises(
        ValueError,
        match=r"7 of 307 rows have a null, NaN or infinite value \(or a number beyond float32's "
        r"range, about 3.4e38\).*handleInvalid='skip'",
    ):
        SparkKerasEstimator(model=binary_model(WIDTH), numWorkers=2).fit(frame)
    result = SparkKerasEstimator(
        model=binary_model(WIDTH), numWorkers=2, handleInvalid="skip", batchSize=30
    ).fit(frame)
    assert sum(report["train_rows"] for report in result.workerReports) == 300
    assert all(math.isfinite(loss) for loss in result.history["loss"])


def test_the_invalid_row_check_copes_with_integer_extremes_and_null_elements(spark):
    # abs() of an int's minimum value fails under ANSI mode (Spark 4's default).
    frame = spark.createDataFrame(
        [([-2147483648, 2147483647], 1.0), ([0, None], 1.0)], "features array<int>, label double"
    )
    invalid = validation.invalid_rows(
        FeatureSpec("features", "array", 2), LabelSpec("label", "scalar", 1, "float32")
    )
    assert [row[0] for row in frame.select(invalid).collect()] == [False, True]


def test_bad_rows_found_by_the_workers_are_reported(spark):
    frame = spark.createDataFrame(
        [(Vectors.dense([1.0] * WIDTH), 1.0), (Vectors.dense([1.0] * 3), 0.0)],
        ["features", "label"],
    )
    with pytest.raises(TrainingError, match=r"width 3, but the model expects 10") as failure:
        SparkKerasEstimator(model=binary_model(WIDTH), numWorkers=2, batchSize=2).fit(frame)
    # The error was recorded: the stage's retry failed at once, without reading the data again.
    assert "An earlier attempt failed with this error" in str(failure.value)


def test_too_many_workers_for_the_slots_fails_fast(spark, data):
    _, _, frame = data
    jobs = spark_jobs(spark)
    started = time.monotonic()
    with pytest.raises(ValueError, match=r"numWorkers=3 .* only 2 task slot"):
        SparkKerasEstimator(model=binary_model(WIDTH), numWorkers=3).fit(frame)
    assert time.monotonic() - started < 30
    assert spark_jobs(spark) == jobs  # refused before any job


class PerBatch(keras.callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
        pass


def test_driver_warnings_point_at_the_line_that_calls_fit(data):
    _, _, frame = data
    uneven = SparkKerasEstimator(model=binary_model(WIDTH), numWorkers=3, batchSize=32)
    asynchronous = SparkKerasEstimator(
        model=binary_model(WIDTH), strategy="parameter_server", callbacks=[PerBatch()]
    )
    for estimator, warning in [(uneven, "not divisible"), (asynchronous, r"\['PerBatch'\]")]:
        refused = pytest.raises(ValueError, match="task slot")  # 2 slots: after the warning
        with pytest.warns(UserWarning, match=warning) as caught, refused:
            estimator.fit(frame)
        assert [record.filename for record in caught] == [__file__]


def test_an_empty_log_dir_is_unset_and_needs_no_tensorboard(data, monkeypatch):
    _, _, frame = data
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *args: None if name == "tensorboard" else find_spec(name, *args),
    )
    fitted = SparkKerasEstimator(model=binary_model(WIDTH), logDir="").fit(frame)
    assert len(fitted.history["loss"]) == 1


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda f: f.drop("label"),
            r"label column 'label' is not in the DataFrame.*\['features'\]",
        ),
        (
            lambda f: f.withColumn("features", F.lit("x")),
            r"features column 'features' has type string",
        ),
        (
            lambda f: f.withColumn("label", F.lit("x")),
            r"label column 'label' has type string.*StringIndexer",
        ),
        (lambda f: f.limit(0), r"DataFrame is empty"),
        (
            lambda f: f.withColumn("features", F.slice("features", 1, 3)),
            r"width 3, but the model's input expects 10",
        ),
    ],
)
def test_bad_frames_are_rejected_on_the_driver(data, change, message):
    _, _, frame = data
    with pytest.raises((ValueError, TypeError), match=message):
        SparkKerasEstimator(model=binary_model(WIDTH), numWorkers=2).fit(change(frame))


def test_bad_models_are_rejected_on_the_driver(data):
    _, _, frame = data
    uncompiled = keras.Sequential([keras.Input((WIDTH,)), keras.layers.Dense(1)])
    with pytest.raises(ValueError, match="not compiled"):
        SparkKerasEstimator(model=uncompiled).fit(frame)
    with pytest.raises(TypeError, match=r"compiled keras\.Model"):
        SparkKerasEstimator(model="not a model")
    with pytest.raises(ValueError, match="No model to train"):
        SparkKerasEstimator().fit(frame)
    with pytest.raises(ValueError, match=r"numWorkers must be >= 1, got 0"):
        SparkKerasEstimator(model=binary_model(WIDTH), numWorkers=0)
    with pytest.raises(ValueError, match=r"strategy='allreduce' is not valid.*'mirrored'"):
        SparkKerasEstimator(model=binary_model(WIDTH), strategy="allreduce")
    with pytest.warns(
        UserWarning,
        match=r"batchSize=65 is not divisible by numWorkers=2.*32 rows.*global batch of 64",
    ):
        SparkKerasEstimator(model=binary_model(WIDTH), numWorkers=2, batchSize=65)._plan(
            frame, "unused"
        )
    with pytest.raises(ValueError, match=r"batchSize=1 is smaller than the 2"):
        SparkKerasEstimator(model=binary_model(WIDTH), numWorkers=2, batchSize=1).fit(frame)


def test_long_labels_train_as_int64(data):
    _, _, frame = data
    longs = frame.withColumn("label", F.col("label").cast("long"))
    result = SparkKerasEstimator(
        model=binary_model(WIDTH), numWorkers=2, epochs=4, batchSize=64, seed=3
    ).fit(longs)
    assert result.history["accuracy"][-1] >= 0.9


def test_a_validation_split_of_too_few_rows_is_refused_on_the_driver(data):
    _, _, frame = data
    with pytest.raises(
        ValueError, match=r"validationFraction=0.2 cannot split 3 usable row\(s\) for numWorkers=2"
    ):
        SparkKerasEstimator(model=binary_model(WIDTH), numWorkers=2, validationFraction=0.2).fit(
            frame.limit(3)
        )


def test_a_script_started_by_spark_submit_keeps_its_master_and_python(monkeypatch):
    from pyspark.sql import SparkSession

    from sparkeras import get_or_create_session

    calls = []

    class Builder:
        def __getattr__(self, name):
            def record(*args):
                calls.append((name, args))
                return self

            return record

        def getOrCreate(self):
            return "a session"

    monkeypatch.setattr(SparkSession, "getActiveSession", staticmethod(lambda: None))
    monkeypatch.setattr(SparkSession, "builder", Builder())
    monkeypatch.setenv("PYSPARK_GATEWAY_PORT", "12345")  # what spark-submit's runner sets
    assert get_or_create_session() == "a session"
    assert [name for name, _ in calls if name == "master"] == []
    assert ("config", ("spark.pyspark.python", sys.executable)) not in calls
    monkeypatch.delenv("PYSPARK_GATEWAY_PORT")
    get_or_create_session()
    assert ("master", ("local[*]",)) in calls


def test_default_session_runs_executors_on_this_python(spark):
    import sys

    from sparkeras import get_or_create_session

    assert get_or_create_session() is spark  # an active session is reused
    assert spark.conf.get("spark.pyspark.python") == sys.executable


def test_python_hash_matches_spark_and_shards_are_balanced_and_reproducible(spark, data):
    from pyspark.sql import functions as F

    from sparkeras.partitioning import shard_rows, spark_hash_int

    values = [0, 1, 2, 7, -5, 123456, 2**31 - 1, -(2**31)]
    frame = spark.createDataFrame([(v,) for v in values], "v int")
    assert [r[0] for r in frame.select(F.hash("v")).collect()] == [
        spark_hash_int(v) for v in values
    ]
    _, _, training_frame = data
    first = (
        shard_rows(training_frame, ["worker", "worker"], 2000, seed=1).rdd.glom().map(len).collect()
    )
    again = (
        shard_rows(training_frame, ["worker", "worker"], 2000, seed=1).rdd.glom().map(len).collect()
    )
    assert first == again
    assert sum(first) == 2000 and min(first) > 900


def test_sample_weights_from_a_weight_column(spark):
    features, labels = separable(600, WIDTH, seed=12)
    frame = array_frame(spark, features, labels).withColumn(
        "weight", F.when(F.col("label") > 0, 0.0).otherwise(1.0)
    )
    # Every positive row weighs nothing: the model only learns the negatives.
    result = SparkKerasEstimator(
        model=binary_model(WIDTH), numWorkers=2, epochs=3, batchSize=30, weightCol="weight"
    ).fit(frame)
    predicted = result.transform(frame).selectExpr("avg(prediction)").first()[0]
    assert predicted < 0.1
    negative = frame.withColumn("weight", F.lit(-1.0))
    with pytest.raises(
        ValueError,
        match=r"600 of 600 rows have a null, NaN or infinite value .*or a negative weight in .weight.",
    ):
        SparkKerasEstimator(model=binary_model(WIDTH), numWorkers=2, weightCol="weight").fit(
            negative
        )
    with pytest.raises(ValueError, match=r"Cannot create the fit's checkpoint directory"):
        SparkKerasEstimator(
            model=binary_model(WIDTH), numWorkers=2, checkpointDir="/proc/no-such/dir"
        ).fit(frame)
    with pytest.raises(ValueError, match="weight column 'nope' is not in the DataFrame"):
        SparkKerasEstimator(model=binary_model(WIDTH), numWorkers=2, weightCol="nope").fit(frame)
