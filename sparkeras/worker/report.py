"""What a training process reports to the driver: phase timings and a digest of its weights."""

from __future__ import annotations

import hashlib
import os
import resource
import time
from typing import Any

import keras

from sparkeras.devices import VISIBLE_DEVICES


class PhaseClock:
    """Seconds spent in each phase of the worker process, reported to the driver."""

    def __init__(self, started: float) -> None:
        self.phases: dict[str, float] = {}
        self._last = started

    def mark(self, phase: str) -> None:
        now = time.perf_counter()
        self.phases[phase] = round(now - self._last, 4)
        self._last = now


def training_report(
    assignment: Any,
    model: Any,
    history: dict[str, list[float]],
    *,
    epoch_seconds: list[float],
    epoch_starts: list[float],
    initial_epoch: int,
    steps: int,
    train_rows: int,
    validation_rows: int,
    clock: PhaseClock,
    **extra: Any,
) -> dict[str, Any]:
    """What the chief (or a mirrored worker) tells the driver about its training.

    ``epoch_starts`` are wall-clock times (``time.time()``), so that the driver can line the
    first training step up with its own clock (same host) or the task's start.
    """
    return {
        "rank": assignment.rank,
        "role": assignment.role,
        "executor": assignment.executor,
        "history": history,
        "epochs_run": len(epoch_seconds),
        "resumed_from_epoch": initial_epoch,
        "steps_per_epoch": steps,
        "train_rows": train_rows,
        "validation_rows": validation_rows,
        "weights_sha256": weights_digest(model),
        "seconds": clock.phases,
        "epoch_seconds": epoch_seconds,
        "training_started_at": epoch_starts[0] if epoch_starts else None,
        **process_resources(),
        **extra,
    }


def process_resources() -> dict[str, Any]:
    """This process's peak memory so far and the devices its TensorFlow sees."""
    import tensorflow as tf

    return {
        # ru_maxrss is in KiB on Linux: the resident peak, shard and TF runtime included.
        "peak_memory_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "cuda_visible_devices": os.environ.get(VISIBLE_DEVICES),
        "gpus": [device.name for device in tf.config.list_logical_devices("GPU")],
        "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
    }


def weights_digest(model: Any) -> str:
    """SHA-256 of the model's weights: equal digests mean bit-identical weights."""
    digest = hashlib.sha256()
    for weights in model.get_weights():
        digest.update(weights.tobytes())
    return digest.hexdigest()


class Heartbeat(keras.callbacks.Callback):
    """Touches ``path`` (at most once a second) whenever a training or evaluation step ends.

    The Spark task watches the file and fails when it goes stale (``stallTimeout``).
    """

    #: Safe on Keras' callback thread (which Keras 3 uses with thread-safe backends only).
    async_safe = True

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path
        self._last = 0.0

    def beat(self) -> None:
        now = time.monotonic()
        if now - self._last >= 1.0:
            self._last = now
            with open(self.path, "a"):
                os.utime(self.path)

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        self.beat()

    def on_test_batch_end(self, batch: int, logs: dict | None = None) -> None:
        self.beat()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.beat()
