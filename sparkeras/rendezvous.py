"""The barrier tasks' rendezvous through a small server on the driver, in milliseconds.

Spark's ``BarrierTaskContext.allGather`` checks for its answer once a second (a
``Thread.sleep(1000)`` loop in ``BarrierTaskContext.runBarrier``, Spark 3.0 - 4.3), so every
rendezvous through it costs a full second. The driver already runs during the stage, so the tasks
meet there instead: each connects, sends the fit's secret and its message, and gets every task's
message back as soon as the last one arrives.

All tasks must meet the same way. A task that cannot reach the driver (a firewall, Spark Connect)
uses ``allGather``; the server then tells the tasks that did reach it to do the same, once
:data:`FALLBACK_SECONDS` have passed since the first of them arrived without all the others.
Only a task that could not even connect decides on its own, and the server never counts it.

Messages: the task sends ``SECRET\\n`` then ``{"key", "rank", "size", "message", "patient"}\\n``;
the server answers ``{"messages": [...]}`` (by rank) or ``{"fallback": true}``.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import math
import secrets
import select
import socket
import threading
import time
from typing import Any

#: Seconds the server waits, after a key's first task arrived, for the others to arrive.
FALLBACK_SECONDS = 10.0
#: Seconds a task tries to connect to the driver before using ``allGather``.
CONNECT_SECONDS = 5.0
#: How often a waiting task's connection is checked (a task whose stage failed has gone).
WAIT_SLICE_SECONDS = 0.1
#: Longest line the server reads.
MAX_LINE_BYTES = 1 << 20


class RendezvousError(RuntimeError):
    """The connection to the driver broke after the task had joined the rendezvous."""


class RendezvousServer:
    """Gathers one message per rank for each key and sends every rank the whole list.

    Examples
    --------
    >>> with RendezvousServer("localhost") as server:  # doctest: +SKIP
    ...     plan = dataclasses.replace(plan, rendezvous_address=server.address,
    ...                                rendezvous_secret=server.secret)
    """

    def __init__(self, host: str, fallback_seconds: float = FALLBACK_SECONDS) -> None:
        self.secret = secrets.token_hex(16)
        self.fallback_seconds = fallback_seconds
        self._listener = socket.create_server(("", 0))
        self.address = f"{host}:{self._listener.getsockname()[1]}"
        self._lock = threading.Condition()
        self._meetings: dict[str, _Meeting] = {}
        threading.Thread(target=self._accept, name="sparkeras-rendezvous", daemon=True).start()

    def __enter__(self) -> RendezvousServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop accepting connections."""
        with contextlib.suppress(OSError):
            self._listener.close()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(connection,), daemon=True).start()

    def _serve(self, connection: socket.socket) -> None:
        with connection, connection.makefile("rb") as stream:
            secret = stream.readline(MAX_LINE_BYTES).strip().decode(errors="replace")
            if not hmac.compare_digest(secret, self.secret):
                return
            try:
                request = json.loads(stream.readline(MAX_LINE_BYTES))
                key, rank, size = str(request["key"]), int(request["rank"]), int(request["size"])
                message, patient = str(request["message"]), bool(request.get("patient"))
            except (ValueError, KeyError, TypeError):
                return
            answer = self._join(key, rank, size, message, connection, patient)
            if answer is None:
                return
            with contextlib.suppress(OSError):
                connection.sendall(json.dumps(answer).encode() + b"\n")

    def _join(
        self,
        key: str,
        rank: int,
        size: int,
        message: str,
        connection: socket.socket,
        patient: bool,
    ) -> dict[str, Any] | None:
        """The answer for one task, or ``None`` when its connection closed while it waited.

        A meeting is used once: when it completes it is forgotten, so the tasks of a retried
        stage meet afresh. A task that dies while it waits (its stage failed) leaves it.
        """
        with self._lock:
            meeting = self._meetings.get(key)
            if meeting is None:
                deadline = time.monotonic() + (math.inf if patient else self.fallback_seconds)
                meeting = self._meetings[key] = _Meeting(size, deadline)
            if not meeting.fallback:
                meeting.messages[rank] = (message, connection)
                if len(meeting.messages) == meeting.size:
                    del self._meetings[key]
                    self._lock.notify_all()
            while not meeting.fallback and len(meeting.messages) < meeting.size:
                if time.monotonic() >= meeting.deadline:
                    meeting.fallback = True
                    self._lock.notify_all()
                    break
                self._lock.wait(WAIT_SLICE_SECONDS)
                if meeting.messages.get(rank, (None, None))[1] is connection and _closed(
                    connection
                ):
                    del meeting.messages[rank]
                    return None
            if meeting.fallback:
                return {"fallback": True}
            return {"messages": [meeting.messages[index][0] for index in range(meeting.size)]}


class _Meeting:
    def __init__(self, size: int, deadline: float) -> None:
        self.size = size
        self.deadline = deadline
        #: rank -> (message, the connection of the task that sent it)
        self.messages: dict[int, tuple[str, socket.socket]] = {}
        self.fallback = False


def _closed(connection: socket.socket) -> bool:
    """Whether the peer closed ``connection`` (it sends nothing else while it waits)."""
    if not select.select([connection], [], [], 0)[0]:
        return False
    try:
        return connection.recv(1, socket.MSG_PEEK) == b""
    except OSError:
        return True


def gather(
    address: str,
    secret: str,
    key: str,
    rank: int,
    size: int,
    message: str,
    *,
    patient: bool = False,
) -> list[str] | None:
    """Every rank's message for ``key`` (by rank), or ``None`` when the tasks use ``allGather``.

    ``patient`` meetings never fall back: they wait as long as the last task needs (the end of a
    parameter-server cluster's training), for tasks that all met on the driver before.

    Raises
    ------
    RendezvousError
        When the connection breaks after this task joined: the server may have counted it, so
        falling back alone could leave the others waiting; the task fails instead (and Spark
        retries the stage). Also when a patient meeting's driver cannot be reached.
    """
    host, port = address.rsplit(":", 1)
    try:
        connection = socket.create_connection((host, int(port)), timeout=CONNECT_SECONDS)
    except OSError as error:
        if patient:
            raise RendezvousError(f"Cannot reach the driver ({address}): {error}") from None
        return None  # never counted by the server
    with connection:
        try:
            connection.settimeout(None)
            request = {
                "key": key,
                "rank": rank,
                "size": size,
                "message": message,
                "patient": patient,
            }
            connection.sendall(f"{secret}\n{json.dumps(request)}\n".encode())
            with connection.makefile("rb") as stream:
                answer = json.loads(stream.readline(MAX_LINE_BYTES))
        except (OSError, ValueError) as error:
            raise RendezvousError(
                f"The rendezvous on the driver ({address}) broke: {error}"
            ) from None
    return None if answer.get("fallback") else list(answer["messages"])
