"""Entry point of one task's TensorFlow process: ``python -m sparkeras.worker TASK_DIR``.

``TASK_DIR`` holds ``plan.json`` and ``assignment.json`` written by ``sparkeras.launch``. The
process writes ``report.json`` on success, or ``error.txt`` (the traceback) and exits with 1.
"""

from __future__ import annotations

import json
import os
import sys
import traceback

from sparkeras.plan import TrainingPlan, WorkerAssignment

REPORT_FILE = "report.json"
ERROR_FILE = "error.txt"


def main(task_dir: str) -> int:
    """Run the worker described in ``task_dir``; return the process exit code."""
    try:
        with open(os.path.join(task_dir, "plan.json")) as file:
            plan = TrainingPlan.from_json(file.read())
        with open(os.path.join(task_dir, "assignment.json")) as file:
            assignment = WorkerAssignment.from_json(file.read())
        from sparkeras.worker import mirrored

        report = mirrored.train(plan, assignment)
    except BaseException:
        with open(os.path.join(task_dir, ERROR_FILE), "w") as file:
            file.write(traceback.format_exc())
        traceback.print_exc()
        return 1
    with open(os.path.join(task_dir, REPORT_FILE), "w") as file:
        json.dump(report, file)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
