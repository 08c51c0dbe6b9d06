"""Faults, retries, cancellation: local[4,4] lets Spark retry a failed training stage."""

from __future__ import annotations

import os
import signal
import threading
import time

import keras
import pytest
from conftest import (
    array_frame,
    binary_model,
    kill_once_callback,
    leftover_temp_entries,
    restart_session,
    separable,
    worker_processes,
)

from sparkeras import SparkKerasEstimator, TrainingError

pytestmark = pytest.mark.spark
WIDTH = 10


@pytest.fixture(scope="module")
def spark_retrying():
    """Four task slots, and up to 4 failures per task."""
    session = restart_session("local[4,4]")
    yield session
    session.stop()


@pytest.fixture(scope="module")
def frame(spark_retrying):
    features, labels = separable(2000, WIDTH)
    return array_frame(spark_retrying, features, labels).cache()


def wait_until_no_worker_process(seconds: float = 20) -> list:
    deadline = time.monotonic() + seconds
    while worker_processes() and time.monotonic() < deadline:
        time.sleep(0.5)
    return worker_processes()


@pytest.mark.parametrize("strategy", ["mirrored", "parameter_server"])
def test_a_killed_process_is_retried_and_training_resumes_from_the_checkpoint(
    frame, strategy, tmp_path
):
    before = leftover_temp_entries()
    # Dies at the end of epoch 2 (index 1). Parameter server: the coordinator dies before that
    # epoch's checkpoint, so the retry resumes after epoch 1. Mirrored: whichever worker gets
    # there first dies; if it is not the chief, the chief may still checkpoint epoch 2.
    killer = kill_once_callback(str(tmp_path / "killed"), epoch=1)
    result = SparkKerasEstimator(
        model=binary_model(WIDTH),
        strategy=strategy,
        numWorkers=2,
        epochs=4,
        batchSize=64,
        callbacks=[killer],
    ).fit(frame)
    assert (tmp_path / "killed").exists()  # the fault really happened
    chief = result.workerReports[0]
    assert {report["checkpoints"] for report in result.workerReports} == {"shared"}
    assert chief["resumed_from_epoch"] in ((1, 2) if strategy == "mirrored" else (1,))
    assert chief["epochs_run"] == 4 - chief["resumed_from_epoch"]  # only the missing epochs
    assert all(len(values) == 4 for values in result.history.values())  # exactly `epochs`
    assert result.history["accuracy"][-1] >= 0.9
    assert wait_until_no_worker_process() == []
    assert leftover_temp_entries() <= before  # task and checkpoint directories are removed


def test_a_lost_parameter_server_fails_the_stage_which_resumes_from_the_checkpoint(frame, tmp_path):
    """A restarted parameter server would come back without its variables: not restarted."""
    killer = kill_once_callback(str(tmp_path / "killed"), epoch=1, task=3)  # the ps task
    result = SparkKerasEstimator(
        model=binary_model(WIDTH),
        strategy="parameter_server",
        numWorkers=2,
        epochs=3,
        batchSize=64,
        callbacks=[killer],
    ).fit(frame)
    assert (tmp_path / "killed").exists()
    reports = result.workerReports
    assert [report["role"] for report in reports] == ["chief", "worker", "worker", "ps"]
    assert reports[3]["server_restarts"] == 0
    # The stage was retried and resumed from a checkpoint, running only the missing epochs.
    assert reports[0]["resumed_from_epoch"] in (1, 2)
    assert reports[0]["epochs_run"] == 3 - reports[0]["resumed_from_epoch"]
    assert all(len(values) == 3 for values in result.history.values())
    assert wait_until_no_worker_process() == []


class RaiseInEpochOne(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        if epoch == 1:
            raise RuntimeError("boom in epoch one")


def test_an_error_is_not_retried_over_and_over(frame):
    started = time.monotonic()
    with pytest.raises(TrainingError, match="boom in epoch one") as failure:
        SparkKerasEstimator(
            model=binary_model(WIDTH), numWorkers=2, epochs=3, callbacks=[RaiseInEpochOne()]
        ).fit(frame)
    message = str(failure.value)
    assert "Traceback" in message and "on_epoch_begin" in message
    # Spark retried the stage, and the retry failed at once with the recorded error.
    assert "An earlier attempt failed with this error" in message
    assert time.monotonic() - started < 90
    assert wait_until_no_worker_process() == []


def nan_loss(y_true, y_pred):
    return keras.ops.mean(keras.ops.log(y_pred - 2.0))  # log of a negative number


def test_a_nan_loss_stops_training_and_fails_the_fit(frame):
    model = binary_model(WIDTH)
    model.compile(optimizer="adam", loss=nan_loss)
    with pytest.raises(TrainingError, match=r"loss became NaN in epoch 1, so training stopped"):
        SparkKerasEstimator(
            model=model, numWorkers=2, epochs=5, customObjects={"nan_loss": nan_loss}
        ).fit(frame)


def test_cancelling_the_job_leaves_no_process(spark_retrying, frame):
    outcome = {}

    def fit() -> None:
        try:
            SparkKerasEstimator(
                model=binary_model(WIDTH), numWorkers=2, epochs=200, batchSize=32
            ).fit(frame)
        except Exception as error:
            outcome["error"] = error

    thread = threading.Thread(target=fit)
    thread.start()
    deadline = time.monotonic() + 60
    while len(worker_processes()) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(3)  # into training
    spark_retrying.sparkContext.cancelAllJobs()
    thread.join(60)
    assert not thread.is_alive()
    assert "cancel" in str(outcome["error"]).lower()
    assert wait_until_no_worker_process() == []


def test_ctrl_c_on_the_driver_leaves_no_process(frame):
    main_thread = threading.main_thread().ident

    def interrupt_when_training() -> None:
        deadline = time.monotonic() + 60
        while len(worker_processes()) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(3)
        signal.pthread_kill(main_thread, signal.SIGINT)  # Ctrl-C, delivered to the driver

    threading.Thread(target=interrupt_when_training, daemon=True).start()
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        SparkKerasEstimator(model=binary_model(WIDTH), numWorkers=2, epochs=200, batchSize=32).fit(
            frame
        )
    assert time.monotonic() - started < 40  # interrupted, not 200 epochs later
    assert wait_until_no_worker_process() == []


class StallOnce(keras.callbacks.Callback):
    """Hangs one worker for a minute after epoch 2, the first time only (a stuck process)."""

    def __init__(self, marker: str) -> None:
        super().__init__()
        self.marker = marker

    def on_epoch_end(self, epoch, logs=None):
        if epoch != 1:
            return
        try:
            os.close(os.open(self.marker, os.O_CREAT | os.O_EXCL))
        except FileExistsError:
            return
        time.sleep(60)


def test_a_stuck_worker_is_detected_and_the_stage_retried(frame, tmp_path):
    started = time.monotonic()
    result = SparkKerasEstimator(
        model=binary_model(WIDTH),
        numWorkers=2,
        epochs=3,
        batchSize=64,
        stallTimeout=8,
        callbacks=[StallOnce(str(tmp_path / "stalled"))],
    ).fit(frame)
    assert (tmp_path / "stalled").exists()
    assert time.monotonic() - started < 55  # well before the stuck worker would wake up
    # Resumed after epoch 1, or 2 when the chief was not the stuck worker and checkpointed.
    assert result.workerReports[0]["resumed_from_epoch"] in (1, 2)
    assert len(result.history["loss"]) == 3
    assert wait_until_no_worker_process() == []


def test_task_directories_of_dead_workers_and_failed_attempts_are_removed(tmp_path):
    """A killed task's directory (its shard) goes once its Python worker is gone, or as soon as a
    later attempt of the same task starts, even while the killed task's worker still lives."""
    import dataclasses
    import json
    import subprocess

    from sparkeras.launch import OWNER_FILE, TASK_DIR_PREFIX, TaskOwner, _remove_orphaned_task_dirs

    dead = subprocess.Popen(["true"])
    dead.wait()
    alive = os.getpid()
    me = TaskOwner(alive, run="this", rank=0, task=12)
    owners = {
        "dead-worker": TaskOwner(dead.pid, run="other", rank=0, task=3),
        "earlier-attempt": TaskOwner(alive, run="this", rank=0, task=10),
        "sibling": TaskOwner(alive, run="this", rank=1, task=11),
        "other-fit": TaskOwner(alive, run="other", rank=0, task=4),
        # A shared stagingDir: another host's (or container's) pids mean nothing here.
        "other-host": TaskOwner(dead.pid, run="other", rank=0, task=5, namespace="elsewhere"),
    }
    for name, owner in owners.items():
        directory = tmp_path / f"{TASK_DIR_PREFIX}{name}"
        directory.mkdir()
        (directory / OWNER_FILE).write_text(json.dumps(dataclasses.asdict(owner)))
    (tmp_path / f"{TASK_DIR_PREFIX}being-created").mkdir()  # no owner file yet

    _remove_orphaned_task_dirs(str(tmp_path), me)
    remaining = sorted(p.name.removeprefix(TASK_DIR_PREFIX) for p in tmp_path.iterdir())
    assert remaining == ["being-created", "other-fit", "other-host", "sibling"]


def test_a_trained_model_too_large_for_max_result_size_is_a_clear_error(tmp_path):
    """In a session of its own (the limit is fixed at start-up): the model passes the driver's
    check (600 KB), but trained, with Adam's two slots per weight, it needs 1.8 MB of results."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(
        """
        import keras, numpy as np, pandas as pd
        from sparkeras import SparkKerasEstimator, TrainingError, get_or_create_session
        spark = get_or_create_session(
            "local[2]", config={"spark.ui.enabled": "false", "spark.driver.maxResultSize": "1m"}
        )
        model = keras.Sequential(
            [keras.Input((100,)), keras.layers.Dense(1500), keras.layers.Dense(1)]
        )
        model.compile(optimizer="adam", loss="mse")
        frame = spark.createDataFrame(
            pd.DataFrame(
                {"features": list(np.random.default_rng(0).normal(size=(40, 100))), "label": 1.0}
            )
        )
        try:
            SparkKerasEstimator(model=model, numWorkers=2, batchSize=20).fit(frame)
        except TrainingError as error:
            print("ERROR:", error)
        """
    )
    completed = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    expected = "ERROR: The trained model could not return to the driver: Total size of serialized"
    assert expected in completed.stdout, completed.stdout[-2000:] + completed.stderr[-3000:]
    assert "Set spark.driver.maxResultSize higher" in completed.stdout


def test_a_checkpoint_remembers_that_training_stopped_early(tmp_path):
    """A stage re-run after EarlyStopping ended the fit (a lost shuffle output) must not train
    the remaining epochs."""
    from sparkeras.worker import checkpoint

    saver = checkpoint.EpochCheckpoint(str(tmp_path), is_chief=True, state=None)
    saver.set_model(binary_model(WIDTH))
    saver.on_epoch_end(0, {"loss": 0.6})
    assert checkpoint.first_epoch(checkpoint.read_state(str(tmp_path)), epochs=5) == 1
    saver.model.stop_training = True  # as EarlyStopping does, before this callback
    saver.on_epoch_end(1, {"loss": 0.5})
    state = checkpoint.read_state(str(tmp_path))
    assert (state["epochs_done"], state["stopped"]) == (2, True)
    assert checkpoint.first_epoch(state, epochs=5) == 5  # nothing left to run
    assert state["history"] == {"loss": [0.6, 0.5]}


def test_empty_directory_params_count_as_unset_and_checkpoint_to_a_temporary_one():
    """Not the file system's root, where "" + "/fit-..." would put checkpoints."""
    import tempfile

    from sparkeras.estimator import _checkpoint_directory

    estimator = SparkKerasEstimator(checkpointDir="", stagingDir="", logDir="")
    assert (
        estimator.getCheckpointDir() is estimator.getStagingDir() is estimator.getLogDir() is None
    )
    with _checkpoint_directory(estimator.getCheckpointDir()) as directory:
        assert directory.startswith(os.path.join(tempfile.gettempdir(), "sparkeras-checkpoints-"))
        assert os.path.isdir(directory)
    assert not os.path.exists(os.path.dirname(directory))  # removed with the fit
