"""The barrier stage: one Spark task per worker, each starting a fresh TensorFlow process.

Flow of one task (``_train_partition``): write the partition to a local shard -> ``allGather``
``host:port`` and shard sizes (the rendezvous) -> write the plan and this task's assignment ->
run ``python -m sparkeras.worker`` as a child that dies with the task -> yield the worker's report
and, on rank 0, the trained model in chunks. The driver reassembles them in :func:`run_training`.

Only plain values (the JSON plan) travel in the task closure; nothing here imports TensorFlow.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession

from sparkeras.plan import TrainingPlan, WorkerAssignment

RESULT_SCHEMA = "rank int, kind string, seq int, payload binary"
#: Size of the rows that carry the trained model back to the driver.
CHUNK_BYTES = 8 * 1024 * 1024
#: Lines of a failed worker's log quoted in the error.
LOG_TAIL_LINES = 40

_FAILURE_START = "<<<sparkeras-worker-failure>>>"
_FAILURE_END = "<<<end-sparkeras-worker-failure>>>"


class TrainingError(RuntimeError):
    """A training worker failed; the message carries its traceback and log tail."""


@dataclasses.dataclass(frozen=True)
class TrainingResult:
    """What the workers sent back: the chief's trained model and every worker's report."""

    model_bytes: bytes
    reports: list[dict[str, Any]]

    @property
    def chief(self) -> dict[str, Any]:
        """Report of rank 0, whose history is the run's history."""
        return self.reports[0]


def available_task_slots(spark: SparkSession) -> int | None:
    """Tasks the cluster can run at once, or ``None`` when Spark does not say (Spark Connect)."""
    try:
        context = spark.sparkContext
        jvm_context = context._jsc.sc()  # type: ignore[union-attr]
        profile = jvm_context.resourceProfileManager().defaultResourceProfile()
        return int(jvm_context.maxNumConcurrentTasks(profile))
    except Exception:
        return None


def check_task_slots(spark: SparkSession, num_tasks: int) -> None:
    """Fail fast instead of letting a barrier stage wait for slots that will never come."""
    slots = available_task_slots(spark)
    if slots is not None and num_tasks > slots:
        raise ValueError(
            f"numWorkers={num_tasks} needs {num_tasks} concurrent Spark tasks, but the cluster has "
            f"only {slots} task slot(s) (executor cores / spark.task.cpus). Lower numWorkers to at "
            f"most {slots}, or give the application more executor cores."
        )


def run_training(shards: DataFrame, plan: TrainingPlan) -> TrainingResult:
    """Run one barrier stage over ``shards`` (exactly ``plan.num_workers`` partitions).

    Raises
    ------
    TrainingError
        When a worker fails; the message is the worker's own traceback and log tail.
    """
    plan_json = plan.to_json()
    features, label, num_workers = plan.features, plan.label, plan.num_workers

    def train_partition(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from pyspark import BarrierTaskContext

        from sparkeras.shards import write_shard

        context = BarrierTaskContext.get()
        rank = context.partitionId()
        task_dir = tempfile.mkdtemp(prefix=f"sparkeras-task{rank}-")
        started = time.time()
        try:
            # Started first: TensorFlow's imports overlap the shard writing and the rendezvous.
            with contextlib.closing(_WorkerProcess(task_dir)) as worker:
                shard_dir = os.path.join(task_dir, "shard")
                try:
                    rows = write_shard(batches, shard_dir, features, label)
                    error = None
                except ValueError as shard_error:  # reported after the rendezvous, by every task
                    rows, error = 0, f"{type(shard_error).__name__}: {shard_error}"
                executor = context.getTaskInfos()[rank].address
                host = executor.rsplit(":", 1)[0]
                message = json.dumps(
                    {"address": f"{host}:{_free_port()}", "rows": rows, "error": error}
                )
                shard_written = time.time()
                peers = [json.loads(peer) for peer in context.allGather(message)]
                rendezvous_done = time.time()
                _check_rendezvous(peers, num_workers)
                assignment = WorkerAssignment(
                    rank=rank,
                    addresses=[peer["address"] for peer in peers],
                    shard_rows=[peer["rows"] for peer in peers],
                    shard_dir=shard_dir,
                    result_dir=task_dir,
                    cpus=context.cpus(),
                    executor=executor,
                )
                with open(os.path.join(task_dir, "plan.json"), "w") as file:
                    file.write(plan_json)
                with open(os.path.join(task_dir, "assignment.json"), "w") as file:
                    file.write(assignment.to_json())
                worker.run(rank)
                with open(os.path.join(task_dir, "report.json")) as file:
                    report = json.load(file)
                report["task_seconds"] = {
                    "write_shard": round(shard_written - started, 4),
                    "rendezvous": round(rendezvous_done - shard_written, 4),
                    "worker_process": round(time.time() - rendezvous_done, 4),
                }
                yield _result_batch(rank, "report", json.dumps(report).encode())
                if rank == 0:
                    # One small Arrow batch per chunk: a multi-GB model never becomes one value.
                    with open(os.path.join(task_dir, "model.keras"), "rb") as file:
                        chunks = iter(lambda: file.read(CHUNK_BYTES), b"")
                        for seq, chunk in enumerate(chunks):
                            yield _result_batch(rank, "model", chunk, seq)
        finally:
            shutil.rmtree(task_dir, ignore_errors=True)

    try:
        rows = shards.mapInArrow(train_partition, RESULT_SCHEMA, barrier=True).collect()
    except Exception as error:
        detail = _worker_failure(str(error))
        if detail is None:
            raise
        raise TrainingError(detail) from None
    return _assemble(rows)


def _worker_failure(message: str) -> str | None:
    """The worker's own failure text inside a Spark error message, if there is one."""
    match = re.search(re.escape(_FAILURE_START) + r"(.*?)" + re.escape(_FAILURE_END), message, re.S)
    return match.group(1).strip() if match else None


def _fail(text: str) -> TrainingError:
    return TrainingError(f"{_FAILURE_START}\n{text}\n{_FAILURE_END}")


def _check_rendezvous(peers: list[dict[str, Any]], num_workers: int) -> None:
    errors = [
        f"worker {index}: {peer['error']}" for index, peer in enumerate(peers) if peer["error"]
    ]
    if errors:
        raise _fail("Reading the training data failed:\n" + "\n".join(errors))
    if len(peers) != num_workers:
        raise _fail(f"Expected {num_workers} barrier tasks, got {len(peers)}.")
    empty = [index for index, peer in enumerate(peers) if peer["rows"] == 0]
    if empty:
        raise _fail(
            f"Worker(s) {empty} received no rows (shard sizes {[p['rows'] for p in peers]}). "
            "Use fewer workers or more data."
        )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("", 0))
        return probe.getsockname()[1]


def _die_with_parent() -> None:
    """Runs in the child before exec: SIGKILL it when the Spark worker that started it dies."""
    pr_set_pdeathsig = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


class _WorkerProcess:
    """The task's TensorFlow process, ``python -m sparkeras.worker TASK_DIR``.

    It imports TensorFlow at once, then waits on its stdin for the go signal that follows the
    rendezvous; end of input without it makes it exit. It is SIGKILLed when the Spark worker
    that started it dies (Linux), and by :meth:`close` whenever the task ends early.
    """

    def __init__(self, task_dir: str) -> None:
        self.task_dir = task_dir
        self.log_path = os.path.join(task_dir, "worker.log")
        env = dict(os.environ)
        env.update(
            PYTHONPATH=os.pathsep.join(path for path in sys.path if path),
            PYTHONUNBUFFERED="1",
            TF_CPP_MIN_LOG_LEVEL=env.get("TF_CPP_MIN_LOG_LEVEL", "2"),
        )
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "sparkeras.worker", task_dir],
                stdin=subprocess.PIPE,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
                start_new_session=True,
            )

    def run(self, rank: int) -> None:
        """Let the process train (plan and assignment are written) and wait for it."""
        assert self.process.stdin is not None
        self.process.stdin.write(b"go\n")
        self.process.stdin.close()
        exit_code = self.process.wait()
        if exit_code != 0:
            raise _fail(_describe_failure(self.task_dir, rank, exit_code, self.log_path))

    def close(self) -> None:
        """Kill the process group if it is still running."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


def _describe_failure(task_dir: str, rank: int, exit_code: int, log_path: str) -> str:
    error_path = os.path.join(task_dir, "error.txt")
    with open(log_path, errors="replace") as log:
        tail = "".join(log.readlines()[-LOG_TAIL_LINES:])
    if os.path.exists(error_path):
        with open(error_path) as file:
            cause = file.read().strip()
    else:
        cause = f"The TensorFlow process exited with code {exit_code} (signal or crash)."
    return f"Training worker {rank} failed.\n{cause}\n--- last lines of worker {rank}'s log ---\n{tail}"


def _result_batch(rank: int, kind: str, payload: bytes, seq: int = 0) -> pa.RecordBatch:
    return pa.RecordBatch.from_pydict(
        {
            "rank": pa.array([rank], pa.int32()),
            "kind": pa.array([kind], pa.string()),
            "seq": pa.array([seq], pa.int32()),
            "payload": pa.array([payload], pa.binary()),
        }
    )


def _assemble(rows: list[Any]) -> TrainingResult:
    reports = sorted(
        (json.loads(row.payload) for row in rows if row.kind == "report"), key=lambda r: r["rank"]
    )
    chunks = sorted((row.seq, row.payload) for row in rows if row.kind == "model")
    return TrainingResult(
        model_bytes=b"".join(bytes(chunk) for _, chunk in chunks), reports=reports
    )
