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

Messages: the task sends ``SECRET\\n`` then ``{"key", "rank", "task_attempt", "size", "message",
"patient"}\\n``; the server answers ``{"messages": [...]}`` (by rank) or ``{"fallback": true}``.
A retried stage meets under the same keys. PySpark does not tell a task its stage attempt, so
the attempts are told apart by task attempt ids: Spark numbers tasks application-wide, and
launches a barrier stage's tasks together, so each attempt's ids are a block of consecutive
numbers above every earlier attempt's.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import socket
import threading
import time
from typing import Any, BinaryIO

from sparkeras.driver_server import SecretServer

#: Seconds the server waits, after a key's first task arrived, for the others to arrive.
FALLBACK_SECONDS = 10.0
#: Seconds a task tries to connect to the driver before using ``allGather``.
CONNECT_SECONDS = 5.0
#: How often a waiting task's connection is checked (a task whose stage failed has gone).
WAIT_SLICE_SECONDS = 0.1
#: Longest line the server reads.
MAX_LINE_BYTES = 1 << 20


class RendezvousError(RuntimeError):
    """The rendezvous on the driver failed where falling back alone could strand the others."""


class RendezvousServer(SecretServer):
    """Gathers one message per rank for each key and sends every rank the whole list.

    Examples
    --------
    >>> with RendezvousServer("localhost") as server:  # doctest: +SKIP
    ...     meeting_point = (server.address, server.secret)  # shipped in the task closure
    """

    thread_name = "sparkeras-rendezvous"

    def __init__(self, host: str, fallback_seconds: float = FALLBACK_SECONDS) -> None:
        self.fallback_seconds = fallback_seconds
        self._lock = threading.Condition()
        self._meetings: dict[str, _Meeting] = {}
        #: The highest task attempt id seen: a task ``size`` or more below it is of an earlier
        #: attempt of the stage.
        self._latest_task_attempt = -1
        super().__init__(host)

    def _serve(self, connection: socket.socket, stream: BinaryIO) -> None:
        try:
            connection.settimeout(CONNECT_SECONDS)  # the request follows the secret at once
            request = json.loads(stream.readline(MAX_LINE_BYTES))
            connection.settimeout(None)
            member = _Member(
                rank=int(request["rank"]),
                task_attempt=int(request["task_attempt"]),
                message=str(request["message"]),
                connection=connection,
            )
            key, size, patient = str(request["key"]), int(request["size"]), request["patient"]
        except (OSError, ValueError, KeyError, TypeError):
            return
        _keep_alive(connection)
        answer = self._join(key, size, bool(patient), member)
        if answer is not None:
            with contextlib.suppress(OSError):
                connection.sendall(json.dumps(answer).encode() + b"\n")

    def _join(self, key: str, size: int, patient: bool, member: _Member) -> dict[str, Any] | None:
        """The answer for one task, or ``None`` when its connection closed while it waited.

        A meeting is forgotten when it completes and when its last member leaves. The server
        serves one fit, whose stage Spark may retry. A task is of an earlier attempt when its
        id is ``size`` or more below another task's: it gets no answer, and when it already
        waits in a meeting it is dropped from it. Of two tasks with the same rank, the one with
        the higher id is the later attempt's. What ids cannot tell apart is a late task of the
        failed attempt whose id is within ``size`` of every id of the retry seen so far: it
        takes its rank's place until the retry's own task of that rank arrives. If it completes
        the meeting first, the retry starts training with that task in its rank's place, until
        Spark's kill of the failed attempt's tasks ends it and the retry fails too (see
        docs/architecture.md).
        """
        with self._lock:
            if member.task_attempt <= self._latest_task_attempt - size:
                return None
            if member.task_attempt > self._latest_task_attempt:
                self._latest_task_attempt = member.task_attempt
                self._drop_earlier_attempts(member.task_attempt - size)
            meeting = self._meetings.get(key)
            if meeting is None:
                deadline = time.monotonic() + (math.inf if patient else self.fallback_seconds)
                meeting = self._meetings[key] = _Meeting(size, deadline)
            other = meeting.members.get(member.rank)
            if other is not None and other.task_attempt > member.task_attempt:
                return None
            meeting.members[member.rank] = member
            self._lock.notify_all()
            while True:
                # Membership first: a member dropped as an earlier attempt's must not get the
                # answer of a meeting that the retry's tasks completed meanwhile.
                if meeting.members.get(member.rank) is not member:
                    return None
                if meeting.complete:
                    return {"messages": [meeting.members[rank].message for rank in range(size)]}
                if len(meeting.members) == meeting.size and not meeting.fallback:
                    meeting.drop_closed()
                    if len(meeting.members) == meeting.size:
                        meeting.complete = True
                        self._meetings.pop(key, None)
                        self._lock.notify_all()
                        continue
                if meeting.fallback or time.monotonic() >= meeting.deadline:
                    meeting.fallback = True
                    self._lock.notify_all()
                    self._leave(key, meeting, member)
                    return {"fallback": True}
                self._lock.wait(WAIT_SLICE_SECONDS)
                if _closed(member.connection):
                    self._leave(key, meeting, member)
                    return None

    def _drop_earlier_attempts(self, highest_earlier_id: int) -> None:
        """Drop waiting members with ids up to ``highest_earlier_id`` from every meeting."""
        for key, meeting in list(self._meetings.items()):
            meeting.drop_stale(highest_earlier_id)
            if not meeting.members:
                del self._meetings[key]  # only a failed attempt had come: start afresh
        self._lock.notify_all()

    def _leave(self, key: str, meeting: _Meeting, member: _Member) -> None:
        if meeting.members.get(member.rank) is member:
            del meeting.members[member.rank]
        if not meeting.members and self._meetings.get(key) is meeting:
            del self._meetings[key]


@dataclasses.dataclass
class _Member:
    rank: int
    task_attempt: int
    message: str
    connection: socket.socket


class _Meeting:
    def __init__(self, size: int, deadline: float) -> None:
        self.size = size
        self.deadline = deadline
        self.members: dict[int, _Member] = {}
        self.fallback = False
        self.complete = False

    def drop_stale(self, highest_earlier_id: int) -> None:
        """Forget members whose task attempt id is ``highest_earlier_id`` or lower."""
        for rank in [r for r, m in self.members.items() if m.task_attempt <= highest_earlier_id]:
            del self.members[rank]

    def drop_closed(self) -> None:
        """Forget members whose task has gone."""
        for rank in [r for r, m in self.members.items() if _closed(m.connection)]:
            del self.members[rank]


def _closed(connection: socket.socket) -> bool:
    """Whether the peer closed ``connection`` (it sends nothing else while it waits)."""
    try:
        return connection.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def _keep_alive(connection: socket.socket) -> None:
    """Probe an idle connection, so that a vanished peer is noticed within about 2 minutes."""
    connection.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for option, value in (("TCP_KEEPIDLE", 60), ("TCP_KEEPINTVL", 10), ("TCP_KEEPCNT", 6)):
        if hasattr(socket, option):
            connection.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)


def gather(
    address: str,
    secret: str,
    key: str,
    member: tuple[int, int],
    size: int,
    message: str,
    *,
    patient: bool = False,
) -> list[str] | None:
    """Every rank's message for ``key`` (by rank), or ``None`` when the tasks use ``allGather``.

    ``member`` is this task's ``(rank, task attempt id)``. ``patient`` meetings never fall
    back: they wait as long as the last task needs (the end of a parameter-server cluster's
    training), for tasks that all met on the driver before.

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
            _keep_alive(connection)
            rank, task_attempt = member
            request = {
                "key": key,
                "rank": rank,
                "task_attempt": task_attempt,
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
