"""Asynchronous training with ParameterServerStrategy on local[4]: coordinator, 2 workers, 1 PS."""

from __future__ import annotations

import time

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import (
    array_frame,
    binary_model,
    kill_once_callback,
    restart_session,
    separable,
    spark_jobs,
    worker_processes,
)
from pyspark.ml.functions import array_to_vector
from pyspark.sql import functions as F

from sparkeras import SparkKerasEstimator, SparkKerasModel, TrainingError

pytestmark = pytest.mark.spark
WIDTH = 10


@pytest.fixture(scope="module")
def spark4():
    """local[4]: one slot each for the coordinator, two workers and one parameter server."""
    session = restart_session("local[4]")
    yield session
    session.stop()


@pytest.fixture(scope="module")
def data(spark4):
    features, labels = separable(2000, WIDTH)
    return features, labels, array_frame(spark4, features, labels).cache()


def parameter_server_estimator(**params) -> SparkKerasEstimator:
    defaults = dict(model=binary_model(WIDTH), strategy="parameter_server", numWorkers=2)
    return SparkKerasEstimator(**{**defaults, "epochs": 3, "batchSize": 32, **params})


@pytest.fixture(scope="module")
def fitted(data):
    _, _, frame = data
    return parameter_server_estimator(numPs=1, validationFraction=0.1).fit(frame)


def test_learns_with_two_workers_and_one_parameter_server(fitted, data):
    features, labels, frame = data
    roles = [report["role"] for report in fitted.workerReports]
    assert roles == ["chief", "worker", "worker", "ps"]
    # They met, and the servers were released at the end, on the driver.
    assert {report["rendezvous"] for report in fitted.workerReports} == {"driver"}
    chief = fitted.workerReports[0]
    assert chief["train_rows"] + chief["validation_rows"] == 2000
    assert 100 <= chief["validation_rows"] <= 300  # about 10 % held out on the coordinator
    assert chief["steps_per_epoch"] == -(-chief["train_rows"] // 32)
    assert set(fitted.history) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert all(len(values) == 3 for values in fitted.history.values())
    assert fitted.history["loss"][-1] < fitted.history["loss"][0]
    assert fitted.history["val_accuracy"][-1] >= 0.9
    predictions = fitted.getKerasModel().predict(features, verbose=0)[:, 0]
    assert np.mean((predictions > 0.5) == labels) >= 0.9
    # The same Transformer as in mirrored mode.
    accuracy = fitted.transform(frame).selectExpr("avg(cast(prediction = label as double))")
    assert accuracy.first()[0] >= 0.9
    # Every server was released when the coordinator finished: no TensorFlow process is left.
    assert worker_processes() == []


def test_fitted_model_saves_and_loads(fitted, data, tmp_path):
    _, _, frame = data
    fitted.save(str(tmp_path / "model"))
    loaded = SparkKerasModel.load(str(tmp_path / "model"))
    assert loaded.history == fitted.history
    before = [row.probability for row in fitted.transform(frame).limit(20).collect()]
    after = [row.probability for row in loaded.transform(frame).limit(20).collect()]
    assert before == after


class RecordEpochs(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        logs["marker"] = float(epoch * 10)


def test_callbacks_run_on_the_coordinator_and_early_stopping_stops(data, tmp_path):
    _, _, frame = data
    checkpoint = tmp_path / "best.keras"
    callbacks = [
        keras.callbacks.LearningRateScheduler(lambda epoch: 0.01 * 0.5**epoch),
        # No epoch can improve by 10: training stops after the second epoch.
        keras.callbacks.EarlyStopping(monitor="loss", min_delta=10.0, patience=1),
        keras.callbacks.ModelCheckpoint(str(checkpoint)),
        RecordEpochs(),
    ]
    result = parameter_server_estimator(epochs=10, callbacks=callbacks).fit(frame)
    assert result.workerReports[0]["epochs_run"] == 2
    assert len(result.history["loss"]) == 2
    assert result.history["learning_rate"] == pytest.approx([0.01, 0.005])
    assert result.history["marker"] == [0.0, 10.0]
    # local mode: the coordinator ran on this machine and wrote the checkpoint here.
    assert (
        keras.models.load_model(checkpoint).count_params() == result.getKerasModel().count_params()
    )


def test_sparse_vectors_weights_and_a_steps_override(spark4):
    features, labels = separable(600, WIDTH, seed=2)
    features[features < 0.3] = 0.0  # mostly zeros
    frame = array_frame(spark4, features, labels).select(
        array_to_vector("features").alias("features"), "label", F.lit(1.0).alias("weight")
    )
    model = keras.Sequential(
        [keras.Input((WIDTH,), sparse=True), keras.layers.Dense(1, activation="sigmoid")]
    )
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss="binary_crossentropy")
    result = parameter_server_estimator(
        model=model,
        stepsPerEpoch=25,
        stepsPerExecution=10,  # scheduled as 10 + 10 + 5 steps; sparse inputs are fine here
        epochs=3,
        weightCol="weight",
        validationFraction=0.2,
    ).fit(frame)
    assert result.workerReports[0]["steps_per_epoch"] == 25
    # Never more steps than scheduled (overlapping steps can lose Keras 3's updates, see plan).
    assert 0 < int(result.getKerasModel().optimizer.iterations) <= 3 * 25
    assert len(result.history["loss"]) == 3
    assert result.history["loss"][-1] < 0.6  # from ~0.69 (chance); about 0.4 in practice
    assert result.history["val_loss"][-1] < 0.6


def test_a_lost_worker_is_restarted_and_training_completes(data, tmp_path):
    _, _, frame = data
    # Worker task 1's TensorFlow server dies after the first epoch, as a lost machine would.
    killer = kill_once_callback(str(tmp_path / "killed"), epoch=0, task=1)
    result = parameter_server_estimator(epochs=3, callbacks=[killer]).fit(frame)
    assert (tmp_path / "killed").exists()
    assert [report.get("server_restarts") for report in result.workerReports[1:]] == [1, 0, 0]
    assert len(result.history["loss"]) == 3
    assert result.history["accuracy"][-1] >= 0.85


@keras.saving.register_keras_serializable("sparkeras_tests")
class RejectLargeInputs(keras.layers.Layer):
    """Fails on the worker that runs it when an input exceeds 100."""

    def call(self, inputs):
        tf.debugging.assert_less(tf.reduce_max(inputs), 100.0, message="input above 100")
        return inputs


def test_a_failure_on_a_worker_fails_the_fit_and_leaves_no_process(spark4):
    features, labels = separable(400, WIDTH, seed=3)
    features[17, 0] = 1000.0
    frame = array_frame(spark4, features, labels)
    model = keras.Sequential(
        [keras.Input((WIDTH,)), RejectLargeInputs(), keras.layers.Dense(1, activation="sigmoid")]
    )
    model.compile(optimizer="adam", loss="binary_crossentropy")
    started = time.monotonic()
    with pytest.raises(TrainingError, match="input above 100") as failure:
        parameter_server_estimator(model=model, epochs=2, batchSize=400).fit(frame)
    assert "Traceback" in str(failure.value)
    assert time.monotonic() - started < 120
    deadline = time.monotonic() + 15
    while worker_processes() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert worker_processes() == []


def test_bad_cluster_shapes_are_rejected_on_the_driver(spark4, data):
    _, _, frame = data
    jobs = spark_jobs(spark4)
    with pytest.raises(ValueError, match=r"numPs=2 is only used with strategy='parameter_server'"):
        SparkKerasEstimator(model=binary_model(WIDTH), numPs=2).fit(frame)
    with pytest.raises(ValueError, match=r"needs 5 concurrent Spark tasks .* only 4 task slot"):
        parameter_server_estimator(numWorkers=3, numPs=1).fit(frame)
    assert spark_jobs(spark4) == jobs
    with pytest.raises(ValueError, match=r"numPs must be >= 1"):
        parameter_server_estimator(numPs=0)
    with pytest.raises(ValueError, match=r"choose one of \['mirrored', 'parameter_server'\]"):
        SparkKerasEstimator(strategy="horovod")


def test_shards_hold_training_rows_on_workers_and_validation_rows_on_the_coordinator(data):
    from sparkeras.partitioning import shard_rows
    from sparkeras.plan import task_roles

    _, _, frame = data
    roles = task_roles("parameter_server", num_workers=2, num_ps=1)
    sizes = (
        shard_rows(frame, roles, 2000, seed=1, holdout_fraction=0.2).rdd.glom().map(len).collect()
    )
    assert sum(sizes) == 2000 and sizes[3] == 0
    assert 330 <= sizes[0] <= 470 and min(sizes[1:3]) >= 700
    # Tiny frames are dealt round-robin: exact sizes, no empty worker.
    tiny = frame.limit(11)
    sizes = shard_rows(tiny, roles, 11, seed=1, holdout_fraction=0.2).rdd.glom().map(len).collect()
    assert sizes == [2, 5, 4, 0]


@pytest.mark.cluster
def test_parameter_server_training_across_two_executor_jvms():
    from conftest import start_cluster

    session = start_cluster("local-cluster[2,2,1024]", slots=4)
    try:
        features, labels = separable(1500, WIDTH, seed=7)
        frame = array_frame(session, features, labels, partitions=3)
        result = parameter_server_estimator(validationFraction=0.1).fit(frame)
        # Four tasks on two executors with two slots each: the roles span both JVMs.
        assert len({report["executor"] for report in result.workerReports}) == 2
        assert result.history["val_accuracy"][-1] >= 0.9
        accuracy = result.transform(frame).selectExpr("avg(cast(prediction = label as double))")
        assert accuracy.first()[0] >= 0.9
        assert worker_processes() == []
    finally:
        session.stop()
