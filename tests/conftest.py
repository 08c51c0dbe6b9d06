"""Shared fixtures: Spark sessions and small, learnable data sets."""

from __future__ import annotations

import os
import re

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

TEST_SPARK_CONFIG = {
    "spark.ui.enabled": "false",
    "spark.sql.shuffle.partitions": "4",
    "spark.driver.memory": "2g",
}


def start_session(master: str):
    from sparkeras import get_or_create_session

    session = get_or_create_session(master, app_name="sparkeras-tests", config=TEST_SPARK_CONFIG)
    session.sparkContext.setLogLevel("ERROR")
    return session


def restart_session(master: str):
    """A session on ``master``, after stopping the active one (one SparkContext per process)."""
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        active.stop()
    return start_session(master)


def start_cluster(master: str, slots: int):
    """A standalone cluster session (``local-cluster[...]``), once its executors offer ``slots``."""
    import time

    from sparkeras.launch import available_task_slots

    session = restart_session(master)
    # Executors register asynchronously; wait until they all offer their slots.
    deadline = time.monotonic() + 60
    while (available_task_slots(session) or 0) < slots and time.monotonic() < deadline:
        time.sleep(0.5)
    return session


@pytest.fixture(scope="module")
def spark():
    """A local[2] session: two task slots, so two workers can share a barrier stage."""
    session = start_session("local[2]")
    yield session
    session.stop()


def separable(rows: int, width: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Linearly separable binary data: the label is the sign of a fixed projection."""
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(rows, width)).astype(np.float32)
    weights = rng.normal(size=width)
    return features, (features @ weights > 0).astype(np.float64)


def array_frame(spark, features: np.ndarray, labels: np.ndarray, partitions: int = 2):
    """A DataFrame with an array<double> features column and a double label."""
    import pandas as pd

    pdf = pd.DataFrame({"features": list(features.astype(np.float64)), "label": labels})
    return spark.createDataFrame(pdf).repartition(partitions)


def binary_model(width: int, hidden: int = 16, learning_rate: float = 0.01, seed: int = 0):
    """A small binary classifier whose initial weights are fixed by ``seed``, so that
    accuracy thresholds in tests do not depend on a lucky draw."""
    import keras

    model = keras.Sequential(
        [
            keras.Input((width,)),
            keras.layers.Dense(
                hidden,
                activation="relu",
                kernel_initializer=keras.initializers.GlorotUniform(seed=seed),
            ),
            keras.layers.Dense(
                1,
                activation="sigmoid",
                kernel_initializer=keras.initializers.GlorotUniform(seed=seed + 1),
            ),
        ]
    )
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss="binary_crossentropy",
        metrics=["accuracy"],
    )
    return model


def build_classifier(n_features_in, n_classes, hidden=16):
    """A model function for KerasClassifier: one hidden layer, softmax over the classes."""
    import keras

    model = keras.Sequential(
        [
            keras.Input((n_features_in,)),
            keras.layers.Dense(hidden, activation="relu"),
            keras.layers.Dense(n_classes, activation="softmax"),
        ]
    )
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy")
    return model


def worker_processes(rank: int | None = None) -> list[int]:
    """PIDs of sparkeras training processes still running here, fresh or forked.

    A training process writes its output to its task's ``worker.log``; the executor's fork
    server, which writes elsewhere, is not one. ``rank`` selects one task's process.
    """
    log = re.compile(rf"/sparkeras-task{rank if rank is not None else '[0-9]+'}-[^/]+/worker\.log")
    pids = []
    for entry in os.listdir("/proc"):
        try:
            if entry.isdigit() and log.search(os.readlink(f"/proc/{entry}/fd/1")):
                pids.append(int(entry))
        except OSError:
            continue
    return pids


def spark_jobs(spark) -> int:
    """How many Spark jobs this session has run (without a job group)."""
    return len(spark.sparkContext.statusTracker().getJobIdsForGroup())


def kill_once_callback(marker: str, epoch: int, task: int | None = None):
    """A Keras callback that SIGKILLs a TensorFlow process at the end of ``epoch``, once per
    marker, as a lost executor, a lost machine or an OOM kill would.

    ``task=None``: the process running the callback (the first to create ``marker``); every later
    call (the other worker, a retried attempt) does nothing. ``task=N``: barrier task ``N``'s
    process, found by the log it writes (``sparkeras-taskN-*/worker.log``), from the process
    running the callback (the parameter-server coordinator).
    """
    import keras

    class KillOnce(keras.callbacks.Callback):
        def on_epoch_end(self, current, logs=None):
            if current != epoch:
                return
            try:
                os.close(os.open(marker, os.O_CREAT | os.O_EXCL))
            except FileExistsError:
                return
            if task is None:
                os.kill(os.getpid(), 9)
            for pid in filter(str.isdigit, os.listdir("/proc")):
                try:
                    log = os.readlink(f"/proc/{pid}/fd/1")
                except OSError:
                    continue
                if f"/sparkeras-task{task}-" in log and log.endswith("/worker.log"):
                    os.kill(int(pid), 9)

    return KillOnce()


def leftover_temp_entries() -> set[str]:
    """Task and checkpoint directories of sparkeras in the temporary directory."""
    import glob
    import tempfile

    root = tempfile.gettempdir()
    patterns = ("sparkeras-task*", "sparkeras-checkpoints-*")
    return {path for pattern in patterns for path in glob.glob(os.path.join(root, pattern))}
