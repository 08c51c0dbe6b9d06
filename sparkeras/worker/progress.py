"""The chief's side of the live progress channel (see ``sparkeras.progress``).

Best effort: if the driver cannot be reached, or the connection breaks, reporting stops and
training goes on.
"""

from __future__ import annotations

import contextlib
import json
import math
import socket
import time
from typing import Any

import keras

#: Step events are sent at most this often.
STEP_INTERVAL_SECONDS = 0.5
CONNECT_TIMEOUT_SECONDS = 3.0


class ProgressReporter(keras.callbacks.Callback):
    """Sends epoch and step events to the driver; a no-op without an address."""

    #: Safe on Keras' callback thread (which Keras 3 uses with thread-safe backends only; with
    #: TensorFlow the hooks run in the training loop, at most two step events a second).
    async_safe = True

    def __init__(self, address: str, secret: str, *, epochs: int, steps: int) -> None:
        super().__init__()
        self.epochs = epochs
        self.steps = steps
        self._address, self._secret = address, secret
        self._socket: socket.socket | None = None
        self._enabled = bool(address)
        self._epoch = 0
        self._last_step_sent = 0.0

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._epoch = epoch + 1
        self.send("epoch_begin", step=0)

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        # With several steps per call Keras reports the call's last planned step, which can pass
        # the epoch's end on its last call.
        self.step(min(batch + 1, self.steps), logs)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.send("epoch_end", step=self.steps, logs=logs)

    def on_train_end(self, logs: dict | None = None) -> None:
        self.close()

    def step(self, step: int, logs: dict | None = None) -> None:
        """Report progress within the epoch, at most every ``STEP_INTERVAL_SECONDS``."""
        now = time.monotonic()
        if now - self._last_step_sent >= STEP_INTERVAL_SECONDS:
            self._last_step_sent = now
            self.send("step", step=step, logs=logs)

    def send(self, kind: str, *, step: int, logs: dict | None = None) -> None:
        if not self._enabled:
            return
        event = {
            "kind": kind,
            "epoch": self._epoch,
            "epochs": self.epochs,
            "step": step,
            "steps": self.steps,
            "logs": {name: float(value) for name, value in (logs or {}).items() if _finite(value)},
        }
        try:
            if self._socket is None:
                host, port = self._address.rsplit(":", 1)
                self._socket = socket.create_connection(
                    (host, int(port)), timeout=CONNECT_TIMEOUT_SECONDS
                )
                self._socket.sendall(self._secret.encode() + b"\n")
            self._socket.sendall(json.dumps(event).encode() + b"\n")
        except OSError:
            self._enabled = False  # the driver is out of reach: train without live progress
            self.close()

    def close(self) -> None:
        if self._socket is not None:
            with contextlib.suppress(OSError):
                self._socket.close()
            self._socket = None


def chief_callbacks(plan: Any) -> list[keras.callbacks.Callback]:
    """Callbacks only the chief runs: TensorBoard logs when ``logDir`` is set."""
    if not plan.log_dir:
        return []
    # Epoch scalars only: graph and profile tracing would run extra functions on the chief.
    return [
        keras.callbacks.TensorBoard(
            plan.log_dir, write_graph=False, profile_batch=0, update_freq="epoch"
        )
    ]


def _finite(value: Any) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False
