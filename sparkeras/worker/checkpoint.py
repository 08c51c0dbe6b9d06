"""Epoch checkpoints of one fit, so that a retried barrier stage resumes instead of starting over.

The run's directory (``TrainingPlan.checkpoint_dir``, one per ``fit`` call, any path TensorFlow's
file system can write) holds, after each completed epoch, ``epoch-<n>.keras`` (weights and
optimizer state, written by the chief only) and then ``state.json``
(``{"epochs_done", "stopped", "history", "model_file"}``), replaced atomically: a reader sees the
previous checkpoint or the new one. It also holds ``failure.txt`` when a worker failed with an
error that a retry would only repeat (see :func:`is_retryable`).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from typing import Any

import keras
import tensorflow as tf

from sparkeras.plan import FAILURE_FILE

STATE_FILE = "state.json"

#: TensorFlow errors of a lost peer or an interrupted collective: the next attempt may succeed.
_RETRYABLE_ERRORS = (
    tf.errors.UnavailableError,
    tf.errors.AbortedError,
    tf.errors.CancelledError,
    tf.errors.DeadlineExceededError,
)


def read_state(directory: str) -> dict[str, Any] | None:
    """The last completed epoch's state, or ``None`` when no epoch has been checkpointed."""
    path = _join(directory, STATE_FILE)
    if not tf.io.gfile.exists(path):
        return None
    with tf.io.gfile.GFile(path, "r") as file:
        return json.loads(file.read())


def first_epoch(state: dict[str, Any] | None, epochs: int) -> int:
    """The epoch a (retried) attempt starts at: the one after the last checkpoint, or ``epochs``
    (nothing left to run) when training had stopped early, by EarlyStopping or a NaN loss.

    Examples
    --------
    >>> first_epoch(None, 5), first_epoch({"epochs_done": 2}, 5)
    (0, 2)
    >>> first_epoch({"epochs_done": 2, "stopped": True}, 5)
    5
    """
    if state is None:
        return 0
    return epochs if state.get("stopped") else state["epochs_done"]


def read_model(directory: str, state: dict[str, Any]) -> bytes:
    """The ``.keras`` bytes of the checkpoint ``state`` refers to."""
    with tf.io.gfile.GFile(_join(directory, state["model_file"]), "rb") as file:
        return file.read()


def model_to_train(plan: Any, strategy: Any, custom_objects: dict) -> tuple[Any, dict | None]:
    """The model to train, built in ``strategy``'s scope, and the state it resumes from.

    A retried stage gets the last checkpoint (weights, optimizer state) and its state; a first
    attempt gets the plan's model, with the plan's learning rate when one is set.
    """
    from sparkeras.serialization import model_from_bytes

    state = read_state(plan.checkpoint_dir)
    model_bytes = read_model(plan.checkpoint_dir, state) if state else plan.model_bytes
    with strategy.scope():
        model = model_from_bytes(model_bytes, custom_objects, safe_mode=plan.safe_mode)
        if plan.learning_rate is not None and state is None:
            model.optimizer.learning_rate = plan.learning_rate
    return model, state


def is_retryable(error: BaseException) -> bool:
    """Whether a worker's error may pass on a retry (a lost peer), rather than repeat."""
    return isinstance(error, _RETRYABLE_ERRORS)


def record_failure(directory: str, text: str) -> None:
    """Remember an error that a retry would repeat, so that retries fail at once with it."""
    if not tf.io.gfile.exists(directory):
        return  # the fit is over (the driver removed the directory)
    with tf.io.gfile.GFile(_join(directory, FAILURE_FILE), "w") as file:
        file.write(text)


def recorded_failure(directory: str) -> str | None:
    """The error an earlier attempt of this fit recorded, if any."""
    path = _join(directory, FAILURE_FILE)
    if not tf.io.gfile.exists(path):
        return None
    with tf.io.gfile.GFile(path, "r") as file:
        return file.read()


class EpochCheckpoint(keras.callbacks.Callback):
    """Keeps the history of the whole fit across attempts; the chief saves every epoch.

    Put it after the user's callbacks, so that the logs it records are the ones they changed.
    """

    def __init__(self, directory: str, *, is_chief: bool, state: dict[str, Any] | None) -> None:
        super().__init__()
        self.directory = directory
        self.is_chief = is_chief
        self.history: dict[str, list[float]] = dict(state["history"]) if state else {}

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        for key, value in (logs or {}).items():
            self.history.setdefault(key, []).append(float(value))
        if self.is_chief:
            self._save(epoch + 1)

    def _save(self, epochs_done: int) -> None:
        if not tf.io.gfile.exists(self.directory):
            return  # the fit is over (the driver removed the directory)
        model_file = f"epoch-{epochs_done}.keras"
        with tempfile.TemporaryDirectory() as scratch:
            local = os.path.join(scratch, model_file)
            self.model.save(local)
            tf.io.gfile.copy(local, _join(self.directory, model_file), overwrite=True)
        state = {
            "epochs_done": epochs_done,
            # Set by the callbacks before this one (EarlyStopping, StopOnNaN): a stage re-run
            # after the end (a lost shuffle output) must not train the remaining epochs.
            "stopped": bool(self.model.stop_training),
            "history": self.history,
            "model_file": model_file,
        }
        partial = _join(self.directory, STATE_FILE + ".partial")
        with tf.io.gfile.GFile(partial, "w") as file:
            file.write(json.dumps(state))
        tf.io.gfile.rename(partial, _join(self.directory, STATE_FILE), overwrite=True)
        previous = _join(self.directory, f"epoch-{epochs_done - 1}.keras")
        if tf.io.gfile.exists(previous):
            tf.io.gfile.remove(previous)


class StopOnNaN(keras.callbacks.Callback):
    """Ends training after an epoch whose loss is NaN; the driver then raises.

    Epoch logs are global (the same on every worker), so all workers stop at the same epoch,
    unlike Keras' ``TerminateOnNaN``, which acts on per-step logs that are local to a worker.
    """

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        loss = (logs or {}).get("loss")
        if loss is not None and math.isnan(float(loss)):
            self.model.stop_training = True


def _join(directory: str, name: str) -> str:
    return directory.rstrip("/") + "/" + name
