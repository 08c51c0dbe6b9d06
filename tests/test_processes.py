"""The executor's fork server and the task processes it forks (``sparkeras.processes``)."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest
from conftest import array_frame, binary_model, separable

from sparkeras import SparkKerasEstimator, launch
from sparkeras.processes import ForkServer, ForkServerError, FreshProcess, process_environment
from sparkeras.worker import fork_server
from sparkeras.worker.task import ERROR_FILE

pytestmark = pytest.mark.skipif(not ForkServer.supported(), reason="fork servers need Linux")


def _name(pid: int) -> str:
    with open(f"/proc/{pid}/comm") as file:
        return file.read().strip()


def _stat(pid: int) -> list[str]:
    """Fields of ``/proc/PID/stat`` after the command name: state, parent, ..."""
    with open(f"/proc/{pid}/stat") as file:
        return file.read().rsplit(")", 1)[1].split()


def _parent(pid: int) -> int:
    return int(_stat(pid)[1])


def _gone(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if _stat(pid)[0] == "Z":
                return True  # a zombie has ended; only its parent's wait is missing
        except OSError:
            return True
        time.sleep(0.1)
    return False


def _servers(socket_path: str) -> list[int]:
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as file:
                command = file.read().split(b"\0")
        except OSError:
            continue
        if socket_path.encode() in command and _name(int(pid)) == "sparkeras-fork":
            pids.append(int(pid))
    return pids


def test_a_fork_server_forks_task_processes_and_ends_with_its_anchor(tmp_path):
    anchor = subprocess.Popen(["sleep", "300"])
    try:
        server = ForkServer(root=str(tmp_path), anchor=anchor.pid)
        server.start()
        server.start()  # a second start while the first imports starts nothing more
        task_dir = tmp_path / "task"
        task_dir.mkdir()
        log_path = str(task_dir / "worker.log")

        child = server.fork(str(task_dir), log_path, {"SPARKERAS_TEST": "1"})
        (server_pid,) = _servers(server.socket_path)
        assert _name(child.pid) == "sparkeras-task"
        assert _parent(child.pid) == server_pid
        assert child.wait(0.2) is None  # waits for go
        child.go()  # the task directory has no plan: the task fails and says why
        assert child.wait(60) == 1
        assert "plan.json" in (task_dir / ERROR_FILE).read_text()

        abandoned = server.fork(str(task_dir), log_path, {})
        abandoned.kill()  # a task that ends before its rendezvous
        assert _gone(abandoned.pid, 10)

        assert server.is_running()
        anchor.kill()
        assert _gone(server_pid, 10)
        assert not server.is_running()
    finally:
        anchor.kill()


def test_a_fork_server_that_never_answers_is_an_error(tmp_path):
    server = ForkServer(root=str(tmp_path), anchor=os.getpid())
    with open(fork_server.lock_path(server.socket_path), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # "a server is starting", but none ever answers
        with pytest.raises(ForkServerError, match="no fork server answered within 1 s"):
            server.fork(str(tmp_path), str(tmp_path / "worker.log"), {}, timeout=1)


def test_a_task_trains_in_a_fresh_process_when_no_fork_server_answers(tmp_path):
    class Unreachable:
        def start(self) -> None:
            pass

        def fork(self, *args: object) -> None:
            raise ForkServerError("no fork server answered within 1 s")

    worker = launch._WorkerProcess(str(tmp_path), {}, Unreachable())
    with pytest.raises(launch.TrainingError, match=r"plan\.json"):  # no plan: fails, but runs
        worker.run(rank=0, stall_timeout=60)
    assert worker.how == "fresh (no fork server answered within 1 s)"


def test_a_shared_socket_directory_is_refused_and_the_task_says_why(tmp_path):
    directory = tmp_path / f"sparkeras-{os.getuid()}"
    directory.mkdir(mode=0o777)
    os.chmod(directory, 0o777)
    with pytest.raises(ForkServerError, match="not a directory private to this user"):
        ForkServer(root=str(tmp_path))
    worker = launch._WorkerProcess(str(tmp_path), {}, None, "its directory is shared")
    worker.close()
    assert worker.how == "fresh (its directory is shared)"


def test_a_socket_path_too_long_for_the_temporary_directory_uses_tmp(tmp_path, monkeypatch):
    deep = tmp_path / ("container-directory-" * 5)
    deep.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(deep))
    assert ForkServer().socket_path.startswith(f"/tmp/sparkeras-{os.getuid()}/fork-")
    with pytest.raises(ForkServerError, match="socket path too long"):
        ForkServer(root=str(deep))


def test_forked_and_fresh_processes_train_the_same_model(spark):
    features, labels = separable(1000, 8)
    frame = array_frame(spark, features, labels).cache()

    def fit(fork_server: bool):
        import keras

        keras.utils.set_random_seed(3)
        return SparkKerasEstimator(
            model=binary_model(8),
            numWorkers=2,
            epochs=2,
            batchSize=64,
            forkServer=fork_server,
        ).fit(frame)

    forked, again, fresh = fit(True), fit(True), fit(False)
    assert [r["worker_process"] for r in again.workerReports] == ["forked", "forked"]
    assert [r["worker_process"] for r in fresh.workerReports] == ["fresh", "fresh"]
    assert [r["rendezvous"] for r in again.workerReports] == ["driver", "driver"]
    assert forked.history == again.history == fresh.history
    for forked_weights, fresh_weights in zip(
        forked.getKerasModel().get_weights(), fresh.getKerasModel().get_weights(), strict=True
    ):
        np.testing.assert_array_equal(forked_weights, fresh_weights)


def test_tensorflow_processes_retry_refused_connections_quickly(monkeypatch):
    monkeypatch.setenv("TF_GRPC_DEFAULT_OPTIONS", "grpc.keepalive_time_ms=60000")
    env = process_environment({})
    assert env["TF_GRPC_DEFAULT_OPTIONS"] == (
        "grpc.keepalive_time_ms=60000,grpc.initial_reconnect_backoff_ms=50"
    )


def test_starting_a_fresh_process_that_already_died_leaves_its_exit_code_to_report(tmp_path):
    """Not a BrokenPipeError that hides the process's own error and log."""
    process = FreshProcess(str(tmp_path), str(tmp_path / "log"), os.environ)
    process.kill()
    process.go()
    assert process.wait(5) == -9


def test_a_forked_process_killed_without_an_exit_code_is_described_as_killed(tmp_path):
    """A forked child is the fork server's: when it is SIGKILLed (say, out of memory) it cannot
    announce its exit code, and the task only sees its connection close."""
    from sparkeras.processes import NO_EXIT_CODE

    (tmp_path / "worker.log").write_text("epoch 1\n")
    text = launch._describe_failure(str(tmp_path), 1, NO_EXIT_CODE, str(tmp_path / "worker.log"))
    assert "Training worker 1 failed.\nThe TensorFlow process ended without an exit code" in text
    assert "out-of-memory killer" in text and "epoch 1" in text


def test_a_fresh_process_dies_with_the_python_worker_that_started_it(tmp_path):
    """Killed at once, not only when it finds its stdin closed after importing TensorFlow."""
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import os, sys, time\n"
            "from sparkeras.processes import FreshProcess\n"
            f"child = FreshProcess({str(tmp_path)!r}, {str(tmp_path / 'log')!r}, os.environ)\n"
            "print(child.pid, flush=True)\n"
            "time.sleep(60)\n",
        ],
        stdout=subprocess.PIPE,
    )
    child_pid = int(parent.stdout.readline())
    time.sleep(0.5)
    assert not _gone(child_pid, 0.1)
    parent.kill()
    parent.wait()
    # Importing TensorFlow takes about 3 s here, after which end of input would end it too.
    assert _gone(child_pid, 1.0)


def test_a_fresh_process_whose_parent_died_before_it_started_kills_itself():
    """The parent-death signal only covers a parent that dies after it is asked for."""
    orphan = subprocess.run(
        [
            sys.executable,
            "-c",
            "from sparkeras.worker.task import die_with_parent\n"
            "die_with_parent(1)\n"  # not this process's parent
            "print('still alive')",
        ],
        capture_output=True,
        text=True,
    )
    assert orphan.returncode == -9 and "still alive" not in orphan.stdout
