"""An executor's fork server: TensorFlow imported once, a forked process per training task.

Importing TensorFlow and Keras takes about 3 s of CPU in a fresh interpreter, which every task of
every fit would otherwise pay (two tasks on two cores: both cores busy during the shard writing).
The server imports them once, runs no TensorFlow op (so each child can still configure
collectives, threads and devices before its first op), and forks a child per request in a few
milliseconds. ``sparkeras.processes`` is the Spark task's side.

Protocol, one Unix-socket connection per task: the task sends one JSON line (``task_dir``,
``log_path``, ``env``); the child answers ``pid N``, then follows ``task``'s control protocol.

The server lives as long as its anchor, the Spark executor's Python daemon (the parent of the
task's Python worker), and ends when the socket file it serves is removed or replaced.
"""

from __future__ import annotations

import contextlib
import fcntl
import gc
import json
import os
import signal
import socket
import sys
import time
from typing import Any

from sparkeras.worker import task

#: Command-line flag of ``python -m sparkeras.worker`` that runs a fork server.
FLAG = "--fork-server"
#: Seconds between checks that the anchor process and the socket file are still there.
CHECK_SECONDS = 1.0
#: Tries to take the server lock, 20 ms apart.
LOCK_ATTEMPTS = 25
#: Seconds a new connection may take to send its request.
REQUEST_SECONDS = 10.0
#: Process name (``/proc/PID/comm``) of the server and of its children.
SERVER_NAME = b"sparkeras-fork"
CHILD_NAME = b"sparkeras-task"


def lock_path(socket_path: str) -> str:
    """The file a server holds locked for its whole life: free means no server is running."""
    return socket_path + ".lock"


def serve(socket_path: str, anchor_pid: int) -> int:
    """Serve fork requests on ``socket_path`` until ``anchor_pid`` exits; return the exit code.

    Returns at once with 0 when another server holds the lock of this path.
    """
    # Held (and locked) until the process ends; children close their inherited copy.
    lock = open(lock_path(socket_path), "w")  # noqa: SIM115
    if not _lock(lock):
        return 0
    _set_process_name(SERVER_NAME)
    _preload()
    with contextlib.suppress(FileNotFoundError):
        os.unlink(socket_path)  # left by a server that died
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(socket_path)
    listener.listen(64)
    listener.settimeout(CHECK_SECONDS)
    served = os.stat(socket_path).st_ino
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped by the kernel
    while _alive(anchor_pid) and _inode(socket_path) == served:
        try:
            connection, _ = listener.accept()
        except TimeoutError:
            continue
        try:
            connection.settimeout(REQUEST_SECONDS)
            request = json.loads(connection.makefile("rb").readline())
            connection.settimeout(None)
        except (OSError, ValueError):
            connection.close()
            continue
        try:
            child = os.fork()
        except OSError:  # out of memory or processes: the task starts a fresh process
            connection.close()
            continue
        if child == 0:
            try:
                listener.close()
                lock.close()
                from sparkeras.worker.task import exit_process

                exit_process(_run_child(connection, request))
            finally:
                os._exit(1)  # never the server's loop or interpreter teardown in a child
        connection.close()
    return 0


def _lock(lock: Any) -> bool:
    """Take the server lock; ``False`` when another server holds it.

    Tasks probe the lock by taking it for a moment (``ForkServer.is_running``), so a failed
    attempt is retried for a short while before another server is assumed.
    """
    for _ in range(LOCK_ATTEMPTS):
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            time.sleep(0.02)
    return False


def _run_child(connection: socket.socket, request: dict[str, Any]) -> int:
    """The forked child: become the task's process, then run the task (``task.run``)."""
    os.setsid()  # its own process group, which the task kills when it ends
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    _set_process_name(CHILD_NAME)
    os.environ.update(request["env"])  # before TensorFlow's first op, which reads them
    log = os.open(request["log_path"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    control = connection.makefile("rwb", buffering=0)
    control.write(b"pid %d\n" % os.getpid())
    return task.run(request["task_dir"], control, forked=True)


def _preload() -> None:
    """Import everything a task imports, without running any TensorFlow op."""
    import keras  # noqa: F401
    import tensorflow  # noqa: F401

    from sparkeras import serialization  # noqa: F401
    from sparkeras.worker import (  # noqa: F401
        checkpoint,
        data,
        keras_compat,
        mirrored,
        parameter_server,
        progress,
        report,
    )

    # Children then skip these ~400,000 objects in every full collection (0.19 s each), and
    # collections do not write to the pages they share with the server.
    gc.freeze()
    sys.stdout.flush()


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs; a zombie (ended, not yet reaped by its parent) does not."""
    try:
        with open(f"/proc/{pid}/stat") as file:
            return file.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _inode(path: str) -> int | None:
    try:
        return os.stat(path).st_ino
    except OSError:
        return None


def _set_process_name(name: bytes) -> None:
    """Name the process in ``ps``/``top`` (Linux ``prctl(PR_SET_NAME)``; elsewhere a no-op)."""
    pr_set_name = 15
    task.prctl(pr_set_name, name)
