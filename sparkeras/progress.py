"""Live training progress on the driver, fed by the chief while the Spark job runs.

The chief's TensorFlow process connects to a small TCP server on the driver and sends JSON lines,
one event each (never pickles). The first line must be the fit's secret, which only travels
inside the Spark task closure; a connection that sends anything else is closed unread. Progress
is best effort: when the chief cannot reach the driver (e.g. over Spark Connect), training goes
on and the history still comes back with the results.

Events: ``{"kind": "epoch_begin" | "step" | "epoch_end", "epoch", "epochs", "step", "steps",
"logs"}``; ``epoch`` counts from 1.
"""

from __future__ import annotations

import contextlib
import json
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO, TextIO

from sparkeras.driver_server import SecretServer

Event = dict[str, Any]

#: Longest line the server reads; a longer one closes the connection.
MAX_EVENT_BYTES = 1 << 20


class ProgressServer(SecretServer):
    """Accepts the chief's connections and hands each event to ``on_event``.

    Examples
    --------
    >>> with ProgressServer("localhost", events.append) as server:  # doctest: +SKIP
    ...     plan = dataclasses.replace(plan, progress_address=server.address,
    ...                                progress_secret=server.secret)
    """

    thread_name = "sparkeras-progress"

    def __init__(self, host: str, on_event: Callable[[Event], None]) -> None:
        self._on_event = on_event
        super().__init__(host)

    def _serve(self, connection: socket.socket, stream: BinaryIO) -> None:
        for line in iter(lambda: stream.readline(MAX_EVENT_BYTES), b""):
            if self._closed.is_set() or not line.endswith(b"\n"):
                return
            try:
                event = json.loads(line)
            except ValueError:
                return
            if isinstance(event, dict):
                self._on_event(event)


class ProgressDisplay:
    """Shows events: ``verbose=1`` one live line (a bar, steps, elapsed time, ETA and the chief's
    current metrics), ``verbose=2`` one line per finished epoch, ``verbose=0`` nothing.

    In Jupyter the live line is one updating output; elsewhere it is redrawn with a carriage
    return when the output is a terminal, and printed once per epoch when it is not.
    """

    def __init__(self, verbose: int, stream: TextIO | None = None) -> None:
        self.verbose = verbose
        self.stream = stream or sys.stdout
        self._started = time.monotonic()
        self._epoch_started = self._started
        self._lock = threading.Lock()
        self._handle = _notebook_handle() if verbose == 1 else None
        self._live = self._handle is not None or (verbose == 1 and self.stream.isatty())
        #: Epochs shown from live events; none when the chief could not reach the driver.
        self.epochs_shown = 0

    def __call__(self, event: Event) -> None:
        if self.verbose <= 0:
            return
        with self._lock:
            kind = event.get("kind")
            if kind == "epoch_begin":
                self._epoch_started = time.monotonic()
            elif kind == "step" and self._live:
                self._show(self._line(event), final=False)
            elif kind == "epoch_end":
                self._show(self._line(event), final=True)
                self.epochs_shown += 1

    def _line(self, event: Event) -> str:
        epoch, epochs = event.get("epoch", 0), event.get("epochs", 0)
        step, steps = event.get("step", 0), event.get("steps", 0) or 0
        elapsed = time.monotonic() - self._epoch_started
        parts = [f"Epoch {epoch}/{epochs}"]
        if steps:
            done = min(step, steps)
            filled = int(20 * done / steps)
            parts.append(f"[{'=' * filled}{'.' * (20 - filled)}] {done}/{steps}")
            if 0 < done < steps:
                parts.append(f"ETA {elapsed / done * (steps - done):.0f}s")
        parts.append(f"{elapsed:.1f}s")
        logs = event.get("logs") or {}
        parts += [f"{name}: {value:.4f}" for name, value in logs.items() if _is_number(value)]
        return " - ".join(parts)

    def _show(self, line: str, final: bool) -> None:
        if self._handle is not None:
            from IPython.display import Pretty

            self._handle.update(Pretty(line))
            if final:
                self._handle = _notebook_handle()
        elif self._live:
            self.stream.write("\r\033[K" + line + ("\n" if final else ""))
            self.stream.flush()
        else:
            self.stream.write(line + "\n")
            self.stream.flush()


def driver_host(spark: Any) -> str | None:
    """The address executors use to reach this driver, or ``None`` (Spark Connect)."""
    try:
        return spark.sparkContext.getConf().get("spark.driver.host")
    except Exception:
        return None


@contextlib.contextmanager
def progress_channel(spark: Any, on_event: Callable[[Event], None]) -> Iterator[tuple[str, str]]:
    """``(address, secret)`` of a progress server for one fit, or ``("", "")`` without one."""
    host = driver_host(spark)
    if host is None:
        yield "", ""
        return
    with ProgressServer(host, on_event) as server:
        yield server.address, server.secret


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _notebook_handle() -> Any:
    """An updatable output in a Jupyter kernel, else ``None``."""
    try:
        from IPython import get_ipython
        from IPython.display import display
    except ImportError:
        return None
    shell = get_ipython()
    if shell is None or type(shell).__name__ != "ZMQInteractiveShell":
        return None
    return display(display_id=True)
