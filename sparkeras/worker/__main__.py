"""Entry point of the TensorFlow processes that Spark tasks start.

``python -m sparkeras.worker TASK_DIR PARENT_PID`` runs one task in a fresh process (see ``task``),
which dies with its parent, the Spark task's Python worker;
``python -m sparkeras.worker --fork-server SOCKET ANCHOR_PID`` runs an executor's fork server,
which forks a process per task (see ``fork_server``).
"""

from __future__ import annotations

import sys

from sparkeras.worker import fork_server, task

if __name__ == "__main__":
    if sys.argv[1] == fork_server.FLAG:
        task.exit_process(fork_server.serve(sys.argv[2], int(sys.argv[3])))
    task.die_with_parent(int(sys.argv[2]))
    task.exit_process(task.run(sys.argv[1], sys.stdin.buffer))
