"""Entry point of one task's TensorFlow process: ``python -m sparkeras.worker TASK_DIR``.

``TASK_DIR`` holds ``plan.json`` and ``assignment.json`` written by ``sparkeras.launch``. The
process writes ``report.json`` and exits with 0 when training ends, or writes ``error.txt`` (the
traceback) and exits with 1.
"""

from __future__ import annotations

import os
import sys
import time
import traceback

from sparkeras.plan import TrainingPlan, WorkerAssignment

REPORT_FILE = "report.json"
ERROR_FILE = "error.txt"


def main(task_dir: str) -> int:
    """Run the task described in ``task_dir`` and return the process's exit code.

    A mirrored worker ends the process itself when training ends; a parameter server or a
    parameter-server cluster's worker serves until its task kills it. An error that a retry of
    the stage would only repeat is recorded in the fit's checkpoint directory, so that retries
    fail at once with it instead of training again.
    """
    started = time.perf_counter()
    plan = None
    try:
        # Imported while the Spark task still writes the shard (importing runs no TF op, so
        # collectives can still be configured); then wait for the rendezvous to finish.
        import keras  # noqa: F401
        import tensorflow  # noqa: F401

        from sparkeras.worker import checkpoint
        from sparkeras.worker.report import PhaseClock

        clock = PhaseClock(started)
        clock.mark("import_tensorflow")
        if sys.stdin.readline().strip() != "go":
            return 1  # the task ended before the rendezvous; nothing to report
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
                parameter_server.coordinate(plan, assignment, clock, report_path)
                return 0
            else:
                parameter_server.serve(plan, assignment)  # runs until the task kills it
    except BaseException as error:
        text = traceback.format_exc()
        _write_error(task_dir, text)
        traceback.print_exc()
        if plan is not None and not checkpoint.is_retryable(error):
            checkpoint.record_failure(plan.checkpoint_dir, text)
    return 1


def _write_error(task_dir: str, text: str) -> None:
    with open(os.path.join(task_dir, ERROR_FILE), "w") as file:
        file.write(text)


if __name__ == "__main__":
    exit_code = main(sys.argv[1])
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip interpreter teardown: TensorFlow's thread pools and gRPC servers take up to a second
    # to wind down, and every file the driver needs is already closed.
    os._exit(exit_code)
