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
    """Each rank's answer; task attempt ids are ``attempt + rank``, as Spark numbers a stage's."""
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
        # A completed meeting is forgotten: a retried stage meets afresh under the same key.
        assert _gather_all(server, "0-0", [1, 0], size=2)[0] == ["from 0", "from 1"]


def test_a_task_that_dies_while_waiting_leaves_the_meeting():
    with RendezvousServer("localhost") as server:
        host, port = server.address.rsplit(":", 1)
        with socket.create_connection((host, int(port))) as dying:  # rank 0 of a failed stage
            request = {"key": "0", "rank": 0, "task_attempt": 100, "size": 2}
            request.update(message="stale", patient=False)
            dying.sendall(f"{server.secret}\n{json.dumps(request)}\n".encode())
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
                gather(server.address, server.secret, "release", (0, 10), 2, "a", patient=True)
            )
        )
        answers: list = []
        early.start()
        time.sleep(0.5)  # five times the deadline of an ordinary meeting
        late = gather(server.address, server.secret, "release", (1, 11), 2, "b", patient=True)
        early.join(10)
        assert late == answers[0] == ["a", "b"]


def test_a_driver_that_cannot_be_reached_means_all_gather():
    with socket.socket() as probe:
        probe.bind(("localhost", 0))
        port = probe.getsockname()[1]  # nothing listens here once the probe closes
    assert gather(f"localhost:{port}", "secret", "0-0", (0, 10), 2, "message") is None
    # A patient meeting cannot fall back (the others wait on the driver): the task fails.
    with pytest.raises(RendezvousError, match="Cannot reach the driver"):
        gather(f"localhost:{port}", "secret", "release", (0, 10), 2, "message", patient=True)


def test_a_wrong_secret_gets_no_answer():
    with (
        RendezvousServer("localhost") as server,
        pytest.raises(RendezvousError, match="rendezvous on the driver"),
    ):
        gather(server.address, "not the secret", "0-0", (0, 10), 1, "message")


def test_a_retried_stage_does_not_meet_a_failed_attempts_task():
    with RendezvousServer("localhost") as server:
        host, port = server.address.rsplit(":", 1)
        # Rank 0 of a failed attempt (task attempt id 10) whose connection looks alive.
        with socket.create_connection((host, int(port))) as stale:
            request = {"key": "0", "rank": 0, "task_attempt": 10, "size": 2}
            request.update(message="stale", patient=False)
            stale.sendall(f"{server.secret}\n{json.dumps(request)}\n".encode())
            time.sleep(0.3)
            # The retried attempt's tasks (ids 12 and 13) meet each other, not the stale task.
            answers = _gather_all(server, "0", [1, 0], size=2, attempt=12)
            assert answers == {0: ["from 0", "from 1"], 1: ["from 0", "from 1"]}
            assert stale.recv(100) == b""  # the stale task is dropped, without an answer
