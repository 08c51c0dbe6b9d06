"""The tasks' rendezvous on the driver (``sparkeras.rendezvous``), without Spark."""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest

from sparkeras.rendezvous import RendezvousError, RendezvousServer, gather


def _gather_all(
    server: RendezvousServer, key: str, ranks: list[int], size: int, attempt: int = 100
) -> dict:
    """Each rank's answer; task attempt ids are ``attempt + rank``: one block of consecutive
    ids, as Spark gives a barrier stage attempt's tasks (in any order of ranks)."""
    answers: dict[int, list[str] | None] = {}

    def join(rank: int) -> None:
        member = (rank, attempt + rank)
        answers[rank] = gather(server.address, server.secret, key, member, size, f"from {rank}")

    threads = [threading.Thread(target=join, args=(rank,)) for rank in ranks]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return answers


def test_every_task_gets_every_message_by_rank():
    with RendezvousServer("localhost") as server:
        answers = _gather_all(server, "0-0", [2, 0, 1], size=3)
        assert answers == {rank: ["from 0", "from 1", "from 2"] for rank in range(3)}
        # A completed meeting is forgotten: a retried stage (higher task attempt ids) meets
        # afresh under the same key.
        assert _gather_all(server, "0-0", [1, 0], size=2, attempt=103)[0] == ["from 0", "from 1"]


def test_a_task_that_dies_while_waiting_leaves_the_meeting():
    with RendezvousServer("localhost") as server:
        with _join_raw(server, rank=0, task_attempt=100):  # a task that then dies
            time.sleep(0.3)
        time.sleep(0.3)  # the server notices the closed connection
        answers = _gather_all(server, "0", [1, 0], size=2)
        assert answers == {0: ["from 0", "from 1"], 1: ["from 0", "from 1"]}


def test_tasks_fall_back_together_when_one_never_arrives():
    with RendezvousServer("localhost", fallback_seconds=0.3) as server:
        assert _gather_all(server, "0-0", [0, 1], size=3) == {0: None, 1: None}
        # A task that arrives after the fallback is told to fall back too.
        assert _gather_all(server, "0-0", [2], size=3) == {2: None}


def test_a_patient_meeting_waits_past_the_fallback_deadline():
    with RendezvousServer("localhost", fallback_seconds=0.1) as server:
        early = threading.Thread(
            target=lambda: answers.append(
                gather(server.address, server.secret, "release", (0, 0), 2, "a", patient=True)
            )
        )
        answers: list = []
        early.start()
        time.sleep(0.5)  # five times the deadline of an ordinary meeting
        late = gather(server.address, server.secret, "release", (1, 0), 2, "b", patient=True)
        early.join(10)
        assert late == answers[0] == ["a", "b"]


def test_a_driver_that_cannot_be_reached_means_all_gather():
    with socket.socket() as probe:
        probe.bind(("localhost", 0))
        port = probe.getsockname()[1]  # nothing listens here once the probe closes
    assert gather(f"localhost:{port}", "secret", "0-0", (0, 0), 2, "message") is None
    # A patient meeting cannot fall back (the others wait on the driver): the task fails.
    with pytest.raises(RendezvousError, match="Cannot reach the driver"):
        gather(f"localhost:{port}", "secret", "release", (0, 0), 2, "message", patient=True)


def test_a_wrong_secret_gets_no_answer():
    with (
        RendezvousServer("localhost") as server,
        pytest.raises(RendezvousError, match="rendezvous on the driver"),
    ):
        gather(server.address, "not the secret", "0-0", (0, 0), 1, "message")


def test_a_retried_stage_does_not_meet_a_failed_attempts_task():
    # Rank 0 of a failed attempt (task attempt ids 10 and 11) whose connection looks alive.
    with (
        RendezvousServer("localhost") as server,
        _join_raw(server, rank=0, task_attempt=10) as stale,
    ):
        time.sleep(0.3)
        # The retried attempt's tasks (ids 12 and 13) meet each other, not the stale task.
        answers = _gather_all(server, "0", [1, 0], size=2, attempt=12)
        assert answers == {0: ["from 0", "from 1"], 1: ["from 0", "from 1"]}
        assert stale.recv(100) == b""  # the stale task is dropped, without an answer


def test_a_failed_attempts_task_that_arrives_late_is_turned_away():
    """The failed attempt had ids 10 and 11, the retry has 12 (rank 1) and 13 (rank 0)."""
    with RendezvousServer("localhost") as server:
        answers: dict[int, list[str] | None] = {}

        def join(rank: int, task_attempt: int) -> threading.Thread:
            def run() -> None:
                member = (rank, task_attempt)
                answers[rank] = gather(server.address, server.secret, "0", member, 2, f"{rank}")

            thread = threading.Thread(target=run)
            thread.start()
            time.sleep(0.3)
            return thread

        # Retry rank 0 (id 13) first: the late rank 1 of the failed attempt (id 11) is 2 below
        # it, so certainly of an earlier attempt, and turned away.
        first = join(0, 13)
        with _join_raw(server, rank=1, task_attempt=11) as stale:
            assert stale.recv(100) == b""
        second = join(1, 12)
        first.join(10), second.join(10)
        assert answers == {0: ["0", "1"], 1: ["0", "1"]}


def _join_raw(
    server: RendezvousServer, rank: int, task_attempt: int, size: int = 2
) -> socket.socket:
    """A task's connection that has joined a meeting under key "0" of ``size`` and waits."""
    host, port = server.address.rsplit(":", 1)
    connection = socket.create_connection((host, int(port)))
    request = {"key": "0", "rank": rank, "task_attempt": task_attempt, "size": size}
    request.update(message="stale", patient=False)
    connection.sendall(f"{server.secret}\n{json.dumps(request)}\n".encode())
    connection.settimeout(10)
    return connection


def test_a_failed_attempts_task_that_arrives_after_the_retry_met_is_turned_away():
    """Not left to start a meeting of its own and wait for the fallback deadline."""
    with RendezvousServer("localhost", fallback_seconds=60) as server:
        assert _gather_all(server, "0", [0, 1], size=2, attempt=12)[0] == ["from 0", "from 1"]
        with _join_raw(server, rank=1, task_attempt=11) as stale:
            assert stale.recv(100) == b""  # at once (the socket times out after 10 s)
        # The next meeting of the retry is not disturbed.
        assert _gather_all(server, "1", [1, 0], size=2, attempt=12)[1] == ["from 0", "from 1"]


class _SlowFirstWaiter(threading.Condition):
    """The first thread that waits gets back its lock only after the others have moved on,
    as a thread the OS leaves unscheduled for a while would."""

    def __init__(self) -> None:
        super().__init__()
        self.slow: int | None = None

    def wait(self, timeout: float | None = None) -> bool:
        if self.slow is None:
            self.slow = threading.get_ident()
        if self.slow != threading.get_ident():
            return super().wait(timeout)
        self.release()
        time.sleep(1.0)
        self.acquire()
        return True


def test_a_dropped_task_never_gets_the_answer_of_the_meeting_it_was_dropped_from():
    """Three tasks; the failed attempt had ids 9-11, the retry has 12-14. The failed attempt's
    rank 0 waits; the retry's rank 2 (id 14) drops it, and the retry's rank 0 completes the
    meeting before the dropped task's thread runs again."""
    with RendezvousServer("localhost") as server:
        server._lock = _SlowFirstWaiter()
        with _join_raw(server, rank=0, task_attempt=11, size=3) as stale:
            time.sleep(0.3)
            ids = {0: 13, 1: 12, 2: 14}
            answers: dict[int, list[str] | None] = {}

            def join(rank: int) -> None:
                member = (rank, ids[rank])
                answers[rank] = gather(server.address, server.secret, "0", member, 3, f"{rank}")

            threads = [threading.Thread(target=join, args=(rank,)) for rank in (1, 2, 0)]
            for thread in threads:
                thread.start()
                time.sleep(0.05)
            for thread in threads:
                thread.join(10)
            assert answers == {rank: ["0", "1", "2"] for rank in range(3)}
            assert stale.recv(100) == b""  # no answer for the dropped task
