"""Training across two executor JVMs: local-cluster[2,1,1024] is a real standalone cluster."""

from __future__ import annotations

import time

import pytest
from conftest import array_frame, binary_model, separable, start_cluster, worker_processes

from sparkeras import SparkKerasEstimator

pytestmark = [pytest.mark.cluster, pytest.mark.spark]
WIDTH = 8


@pytest.fixture(scope="module")
def cluster():
    session = start_cluster("local-cluster[2,1,1024]", slots=2)
    yield session
    session.stop()


def test_two_workers_on_two_executors_learn_with_identical_weights(cluster):
    features, labels = separable(1500, WIDTH, seed=7)
    frame = array_frame(cluster, features, labels, partitions=3)
    result = SparkKerasEstimator(
        model=binary_model(WIDTH), numWorkers=2, epochs=4, batchSize=50, validationFraction=0.1
    ).fit(frame)
    first, second = result.workerReports
    assert first["executor"] != second["executor"]  # two JVMs, so two executor addresses
    assert first["weights_sha256"] == second["weights_sha256"]
    assert first["history"] == second["history"] == result.history
    assert result.history["val_accuracy"][-1] >= 0.9
    predictions = result.transform(frame).toPandas()
    accuracy = ((predictions["prediction"] > 0.5) == (predictions["label"] > 0.5)).mean()
    assert accuracy >= 0.9


def test_a_second_fit_on_the_cluster_and_slot_check(cluster):
    features, labels = separable(400, WIDTH, seed=8)
    frame = array_frame(cluster, features, labels)
    result = SparkKerasEstimator(
        model=binary_model(WIDTH), numWorkers=2, epochs=2, batchSize=20
    ).fit(frame)
    assert len(result.history["loss"]) == 2
    with pytest.raises(ValueError, match=r"numWorkers=3 .* only 2 task slot"):
        SparkKerasEstimator(model=binary_model(WIDTH), numWorkers=3).fit(frame)


def test_a_failing_worker_fails_the_fit_fast_across_executors(cluster):
    import keras

    from sparkeras import TrainingError

    class Explode(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            raise RuntimeError("boom on a separate executor")

    features, labels = separable(400, WIDTH, seed=9)
    started = time.monotonic()
    with pytest.raises(TrainingError, match="boom on a separate executor"):
        SparkKerasEstimator(model=binary_model(WIDTH), numWorkers=2, callbacks=[Explode()]).fit(
            array_frame(cluster, features, labels)
        )
    # The standalone cluster retries the stage; retries fail at once with the recorded error.
    assert time.monotonic() - started < 90
    deadline = time.monotonic() + 15
    while worker_processes() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert worker_processes() == []


def test_a_killed_worker_on_one_executor_is_retried_and_resumes(cluster, tmp_path):
    from conftest import kill_once_callback

    features, labels = separable(1500, WIDTH, seed=10)
    frame = array_frame(cluster, features, labels, partitions=2)
    killer = kill_once_callback(str(tmp_path / "killed"), epoch=1)
    result = SparkKerasEstimator(
        model=binary_model(WIDTH), numWorkers=2, epochs=3, batchSize=50, callbacks=[killer]
    ).fit(frame)  # the standalone cluster allows 4 task failures: the stage is retried
    assert (tmp_path / "killed").exists()
    assert result.workerReports[0]["resumed_from_epoch"] in (1, 2)
    assert len(result.history["loss"]) == 3
    assert result.history["accuracy"][-1] >= 0.9
    deadline = time.monotonic() + 20
    while worker_processes() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert worker_processes() == []
