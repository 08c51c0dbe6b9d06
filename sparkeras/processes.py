"""Starting a Spark task's TensorFlow process: forked from the executor's fork server, or fresh.

A fork server (``sparkeras.worker.fork_server``) is one process per executor and Python setup
that has imported TensorFlow once; each task asks it for a child over a Unix socket and gets a
process ready to train in milliseconds instead of a fresh interpreter that spends about 3 s
importing. The first task that needs a server starts it, without waiting for it, at the start of
the task, so its import overlaps the shard writing just as a fresh process's would. Where no
server can run (not Linux, or it fails to start), tasks start fresh processes
(``python -m sparkeras.worker TASK_DIR PARENT_PID``). Nothing here imports TensorFlow.

Both kinds of process follow the same control protocol (``sparkeras.worker.task``): ``go`` once
the rendezvous is done, and the process ends with its task.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import select
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

from sparkeras.worker import fork_server
from sparkeras.worker.task import EXIT, GO

#: Exit code reported for a forked process that ended without announcing one (killed, crashed).
NO_EXIT_CODE = -1000  # no signal number or exit status: a fresh process killed by SIGHUP is -1
#: Seconds a task waits for a fork server to come up (it imports TensorFlow first).
START_TIMEOUT = 120.0
#: Environment variables that change what importing TensorFlow does; part of a server's key.
_IMPORT_ENVIRONMENT = ("TF_", "KERAS_", "XLA_", "CUDA_", "OMP_", "MKL_", "PYTHON")
#: Longest Unix socket path that every platform accepts.
_MAX_SOCKET_PATH = 100


class ForkServerError(RuntimeError):
    """No fork server could be reached; the task starts a fresh process instead."""


class TaskProcess(Protocol):
    """A task's TensorFlow process, however it was started."""

    pid: int
    #: How it was started: "forked" or "fresh".
    how: str

    def go(self) -> None:
        """Tell the process that the rendezvous is done (plan and assignment are written)."""

    def wait(self, timeout: float) -> int | None:
        """Wait up to ``timeout`` seconds; the exit code, or ``None`` if it still runs."""

    def kill(self) -> None:
        """SIGKILL the process and its process group if it still runs."""


def process_environment(device_env: Mapping[str, str]) -> dict[str, str]:
    """The environment of a task's TensorFlow process (also a fork server's, without devices)."""
    env = dict(os.environ)
    env.update(
        PYTHONPATH=os.pathsep.join(path for path in sys.path if path),
        PYTHONUNBUFFERED="1",
        TF_CPP_MIN_LOG_LEVEL=env.get("TF_CPP_MIN_LOG_LEVEL", "2"),
        TF_GRPC_DEFAULT_OPTIONS=grpc_options(env.get("TF_GRPC_DEFAULT_OPTIONS", "")),
        **device_env,  # set before TensorFlow starts: it reads them once
    )
    return env


#: gRPC waits a whole second (its initial reconnect backoff) before it retries a connection that
#: was refused, so a TensorFlow process that reached out before its peer's server listened lost
#: about 0.8 s of start-up. Two MultiWorkerMirroredStrategy processes started 0.1-0.4 s apart
#: took 0.6-1.2 s to start the strategy, and 0.05-0.5 s with this option.
RECONNECT_BACKOFF = "grpc.initial_reconnect_backoff_ms=50"


def grpc_options(user_options: str) -> str:
    """``TF_GRPC_DEFAULT_OPTIONS`` for TensorFlow's gRPC channels: the user's, plus a short first
    reconnect backoff unless they chose one.

    Examples
    --------
    >>> grpc_options("")
    'grpc.initial_reconnect_backoff_ms=50'
    >>> grpc_options("grpc.keepalive_time_ms=60000")
    'grpc.keepalive_time_ms=60000,grpc.initial_reconnect_backoff_ms=50'
    >>> grpc_options("grpc.initial_reconnect_backoff_ms=500")
    'grpc.initial_reconnect_backoff_ms=500'
    """
    key = RECONNECT_BACKOFF.split("=")[0]
    if any(option.split("=")[0].strip() == key for option in user_options.split(",")):
        return user_options
    return ",".join(option for option in (user_options, RECONNECT_BACKOFF) if option)


class FreshProcess:
    """``python -m sparkeras.worker TASK_DIR PARENT_PID``: a new interpreter that imports
    TensorFlow itself.

    It waits on its stdin for ``go``; end of input without it makes it exit. It is SIGKILLed when
    the Spark worker that started it dies (Linux; see ``task.die_with_parent``).
    """

    how = "fresh"

    def __init__(self, task_dir: str, log_path: str, env: Mapping[str, str]) -> None:
        with open(log_path, "ab") as log:  # a restarted server appends to the same log
            self.process = subprocess.Popen(
                [sys.executable, "-m", "sparkeras.worker", task_dir, str(os.getpid())],
                stdin=subprocess.PIPE,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=dict(env),
                start_new_session=True,
            )
        self.pid = self.process.pid

    def go(self) -> None:
        assert self.process.stdin is not None
        try:
            self.process.stdin.write(GO + b"\n")
            self.process.stdin.close()
        except BrokenPipeError:
            pass  # it died already (say, its import failed): wait() and its log tell why

    def wait(self, timeout: float) -> int | None:
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def kill(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


class ForkedProcess:
    """A child of a fork server, driven over its connection.

    Closing the connection ends the child (it watches it), which covers a Spark worker that
    dies without running any cleanup. The child announces its exit code before it ends.
    """

    how = "forked"

    def __init__(self, connection: socket.socket, pid: int) -> None:
        self.connection = connection
        self.pid = pid
        self._received = b""
        self._exit_code: int | None = None
        self._killed = False

    def go(self) -> None:
        self.connection.sendall(GO + b"\n")

    def wait(self, timeout: float) -> int | None:
        deadline = time.monotonic() + timeout
        poller = select.poll()  # unlike select(), any descriptor number
        poller.register(self.connection, select.POLLIN)
        while self._exit_code is None and not self._killed:
            remaining = max(0.0, deadline - time.monotonic())
            if not poller.poll(remaining * 1000):
                return None
            try:
                data = self.connection.recv(4096)
            except OSError:
                data = b""
            self._received += data
            *complete_lines, _ = self._received.split(b"\n")
            for line in complete_lines:
                words = line.split()
                if len(words) == 2 and words[0] == EXIT and words[1].lstrip(b"-").isdigit():
                    self._exit_code = int(words[1])
            if not data and self._exit_code is None:
                self._exit_code = NO_EXIT_CODE
        return self._exit_code

    def kill(self) -> None:
        """SIGKILL the child's process group once, unless it has announced its exit.

        The child is the fork server's, not ours: once it has ended, its process id may be
        reused, so it is never signalled after that, nor twice.
        """
        if self._killed:
            return
        if self.wait(0) is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGKILL)
        self._killed = True
        self.connection.close()


class ForkServer:
    """The Spark task's handle on its executor's fork server.

    A server is identified by a key: the Python executable, ``sys.path``, the anchor (the
    executor's Python daemon, parent of this Python worker), the installed sparkeras files and
    the environment variables that change TensorFlow's import. A task whose key differs (a new
    SparkContext, an upgraded package) gets its own server; an outdated one ends with its anchor.

    Parameters
    ----------
    root : str, optional
        Directory for the ``sparkeras-UID`` directory of sockets and logs (default: the
        temporary directory).
    anchor : int, optional
        Process whose end ends the server (default: this process's parent).

    Examples
    --------
    >>> server = ForkServer()  # in a Spark task  # doctest: +SKIP
    >>> server.start()  # returns at once; the server imports TensorFlow  # doctest: +SKIP
    >>> process = server.fork(task_dir, log_path, env)  # waits for the server  # doctest: +SKIP
    """

    def __init__(self, root: str | None = None, anchor: int | None = None) -> None:
        self.anchor = anchor or os.getppid()
        key = hashlib.sha256(
            json.dumps(
                [
                    sys.executable,
                    sys.path,
                    self.anchor,
                    _package_fingerprint(),
                    sorted(
                        (name, value)
                        for name, value in os.environ.items()
                        if name.startswith(_IMPORT_ENVIRONMENT)
                    ),
                ]
            ).encode()
        ).hexdigest()[:16]
        # A container's temporary directory (YARN) can be too deep for a Unix socket's path.
        roots = [root] if root else [tempfile.gettempdir(), "/tmp"]
        fitting = [r for r in roots if len(_socket_path(r, key)) <= _MAX_SOCKET_PATH]
        if not fitting:
            raise ForkServerError(f"socket path too long: {_socket_path(roots[0], key)}")
        directory = _private_directory(fitting[0])
        self.socket_path = _socket_path(fitting[0], key)
        self.log_path = os.path.join(directory, f"fork-{key}.log")
        #: The server this handle started last (it may have lost the race to another task's).
        self._started: subprocess.Popen | None = None
        self._starts = 0

    @staticmethod
    def supported() -> bool:
        """Fork servers run on Linux only (forking is unsafe with macOS system frameworks)."""
        return sys.platform.startswith("linux")

    def start(self) -> None:
        """Start the server unless one is running or starting; does not wait for it."""
        if self.is_running() or (self._started is not None and self._started.poll() is None):
            return
        self._starts += 1
        command = [sys.executable, "-m", "sparkeras.worker", fork_server.FLAG]
        with open(self.log_path, "ab") as log:
            self._started = subprocess.Popen(
                [*command, self.socket_path, str(self.anchor)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=process_environment({}),
                start_new_session=True,  # outlives this Python worker; ends with the anchor
            )

    def fork(
        self,
        task_dir: str,
        log_path: str,
        env: Mapping[str, str],
        timeout: float = START_TIMEOUT,
    ) -> ForkedProcess:
        """A new child of the server for this task, waiting for ``go``.

        Waits up to ``timeout`` seconds for a server that is still importing TensorFlow, and
        starts one (again) if none is running.

        Raises
        ------
        ForkServerError
            When no server answers.
        """
        deadline = time.monotonic() + timeout
        while True:
            connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                connection.connect(self.socket_path)
                break
            except OSError:
                connection.close()
            if not self.is_running() and (
                self._started is None or self._started.poll() is not None
            ):
                if self._starts >= 2:
                    raise ForkServerError(f"the fork server exited: {self._log_tail()}")
                self.start()
            if time.monotonic() > deadline:
                raise ForkServerError(f"no fork server answered within {timeout:g} s")
            time.sleep(0.02)
        try:
            request = {"task_dir": task_dir, "log_path": log_path, "env": dict(env)}
            connection.sendall(json.dumps(request).encode() + b"\n")
            connection.settimeout(fork_server.REQUEST_SECONDS)
            reply = connection.makefile("rb", buffering=0).readline().split()
            connection.settimeout(None)
            if len(reply) != 2 or reply[0] != b"pid":
                raise ValueError(f"unexpected reply {reply!r}")
            return ForkedProcess(connection, int(reply[1]))
        except (OSError, ValueError, IndexError) as error:
            connection.close()
            raise ForkServerError(f"the fork server did not fork: {error!r}") from None

    def is_running(self) -> bool:
        """Whether a server holds the lock of this socket path (from its start to its end)."""
        with open(fork_server.lock_path(self.socket_path), "a") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(lock, fcntl.LOCK_UN)
            return False

    def _log_tail(self) -> str:
        with open(self.log_path, errors="replace") as log:
            return "".join(log.readlines()[-20:]).strip()


def _socket_path(root: str, key: str) -> str:
    return os.path.join(root, f"sparkeras-{os.getuid()}", f"fork-{key}.sock")


def _private_directory(root: str) -> str:
    """``ROOT/sparkeras-UID``, readable by this user only: its sockets fork processes as us."""
    directory = os.path.join(root, f"sparkeras-{os.getuid()}")
    with contextlib.suppress(FileExistsError):
        os.mkdir(directory, 0o700)
    status = os.lstat(directory)
    if not stat.S_ISDIR(status.st_mode) or status.st_uid != os.getuid() or status.st_mode & 0o077:
        raise ForkServerError(f"{directory} is not a directory private to this user")
    return directory


def _package_fingerprint() -> list[tuple[str, int, int]]:
    """Name, size and modification time of every module of the installed sparkeras."""
    package = Path(__file__).parent
    return sorted(
        (str(path.relative_to(package)), path.stat().st_size, path.stat().st_mtime_ns)
        for path in package.rglob("*.py")
    )
