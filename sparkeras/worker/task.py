"""One task's TensorFlow process, started fresh or forked from a fork server (``fork_server``).

``TASK_DIR`` holds ``plan.json`` and ``assignment.json`` written by ``sparkeras.launch``. The
process writes ``report.json`` and exits with 0 when training ends, or writes ``error.txt`` (the
traceback) and exits with 1.

The Spark task talks to the process over a control channel: it sends ``go`` once the rendezvous
is done (end of input before that makes the process exit). A fresh process reads it from its
stdin; a forked one from its socket, which it then watches to exit as soon as its task is gone,
and on which it announces its exit code (the task is not its parent and cannot ``wait`` for it).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import threading
import time
import traceback
from typing import BinaryIO

from sparkeras.plan import TrainingPlan, WorkerAssignment

REPORT_FILE = "report.json"
ERROR_FILE = "error.txt"
#: The control channel's messages (one line each).
GO = b"go"
EXIT = b"exit"

#: The socket of a forked process's task, where :func:`exit_process` announces the exit code.
_announce_to: BinaryIO | None = None


def run(task_dir: str, control: BinaryIO, *, forked: bool = False) -> int:
    """Run the task described in ``task_dir`` and return the process's exit code.

    A mirrored worker ends the process itself when training ends; a parameter server or a
    parameter-server cluster's worker serves until its task kills it. An error that a retry of
    the stage would only repeat is recorded in the fit's checkpoint directory, so that retries
    fail at once with it instead of training again.

    Parameters
    ----------
    task_dir : str
        The task's directory.
    control : BinaryIO
        Where ``go`` arrives: stdin of a fresh process, the socket of a forked one.
    forked : bool
        Whether the process was forked from a fork server (its task is not its parent).
    """
    global _announce_to
    started = time.perf_counter()
    plan = None
    try:
        # A fresh process imports while the Spark task still writes the shard (importing runs
        # no TF op, so collectives can still be configured); a forked one has them already.
        import keras  # noqa: F401
        import tensorflow  # noqa: F401

        from sparkeras.worker import checkpoint
        from sparkeras.worker.report import PhaseClock

        clock = PhaseClock(started)
        clock.mark("import_tensorflow")
        if control.readline().strip() != GO:
            return 1  # the task ended before the rendezvous; nothing to report
        if forked:
            _announce_to = control
            threading.Thread(target=_exit_when_closed, args=(control,), daemon=True).start()
        clock.mark("wait_for_rendezvous")
        with open(os.path.join(task_dir, "plan.json")) as file:
            plan = TrainingPlan.from_json(file.read())
        with open(os.path.join(task_dir, "assignment.json")) as file:
            assignment = WorkerAssignment.from_json(file.read())
        earlier = checkpoint.recorded_failure(plan.checkpoint_dir)
        if earlier is not None:
            _write_error(
                task_dir,
                f"{earlier}\n(An earlier attempt failed with this error; "
                "retrying the stage would repeat it.)",
            )
            return 1
        report_path = os.path.join(task_dir, REPORT_FILE)
        if plan.strategy == "mirrored":
            from sparkeras.worker import mirrored

            mirrored.train(plan, assignment, clock, report_path)
        else:
            from sparkeras.worker import parameter_server

            if assignment.role == "chief":
                # Ends the process itself once the report is written.
                parameter_server.coordinate(plan, assignment, clock, report_path)
            else:
                parameter_server.serve(plan, assignment)  # runs until the task kills it
    except BaseException as error:
        text = traceback.format_exc()
        _write_error(task_dir, text)
        traceback.print_exc()
        if plan is not None and not checkpoint.is_retryable(error):
            checkpoint.record_failure(plan.checkpoint_dir, text)
    return 1


def exit_process(code: int) -> None:
    """End the process now, telling a forked process's task the exit code.

    Skips interpreter teardown: TensorFlow's thread pools and gRPC servers take up to a second
    to wind down, and every file the driver needs is already closed.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    if _announce_to is not None:
        try:
            _announce_to.write(EXIT + b" %d\n" % code)
            _announce_to.flush()
        except OSError:
            pass  # the task is gone: nobody to tell
    os._exit(code)


def die_with_parent(parent_pid: int) -> None:
    """SIGKILL this process when ``parent_pid``, the Spark worker that started it, dies (Linux).

    Set by the new process itself, first thing, rather than in ``Popen``'s ``preexec_fn``:
    Python's documentation warns that code run between fork and exec of a multithreaded parent
    (a Spark Python worker is one) can deadlock. A parent that died before this call would not
    signal, so that case is checked here.
    """
    if sys.platform.startswith("linux"):
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent_pid:
            os.kill(os.getpid(), signal.SIGKILL)


def prctl(option: int, argument: int | bytes) -> None:
    """Linux ``prctl(option, argument)``; a no-op where the C library has no ``prctl``."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(option, argument, 0, 0, 0)


_PR_SET_PDEATHSIG = 1


def _exit_when_closed(control: BinaryIO) -> None:
    """End a forked process when its task closes the channel (the task ended or was killed)."""
    while control.read(1):
        pass
    os._exit(1)


def _write_error(task_dir: str, text: str) -> None:
    with open(os.path.join(task_dir, ERROR_FILE), "w") as file:
        file.write(text)
