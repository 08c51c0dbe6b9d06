"""The barrier stage: one Spark task per role, each running its own TensorFlow process.

Flow of one task (``train_partition``): write the partition to a local shard -> gather every
task's ``host:port``, shard size and path (the rendezvous: on the driver, or with Spark's
``allGather``; see ``sparkeras.rendezvous``) -> write the plan and this task's
assignment -> run the TensorFlow process (forked from the executor's fork server, or fresh; see
``sparkeras.processes``) that dies with the task -> yield the worker's report and, on rank 0, the
trained model in chunks. The driver reassembles them in :func:`run_training`.

Mirrored mode: every task is a worker and returns when ``fit`` does. Parameter-server mode: task 0
is the coordinator; the worker and parameter-server tasks keep their TensorFlow servers up (and
restart them if they die) until the coordinator finishes and releases them (a last meeting).

Only plain values (the JSON plan) travel in the task closure; nothing here imports TensorFlow.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import os
import random
import re
import shutil
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession

from sparkeras import rendezvous
from sparkeras.devices import task_gpu_addresses, tensorflow_environment
from sparkeras.plan import (
    FAILURE_FILE,
    HEARTBEAT_FILE,
    REPEATED_FAILURE_NOTE,
    Role,
    TrainingPlan,
    WorkerAssignment,
)
from sparkeras.processes import (
    NO_EXIT_CODE,
    ForkServer,
    ForkServerError,
    FreshProcess,
    TaskProcess,
    process_environment,
)
from sparkeras.progress import driver_host

RESULT_SCHEMA = "rank int, kind string, seq int, payload binary"
#: Size of the rows that carry the trained model back to the driver.
CHUNK_BYTES = 8 * 1024 * 1024
#: Lines of a failed worker's log quoted in the error.
LOG_TAIL_LINES = 40
#: Task directories are named ``<prefix><rank>-<random>`` and record their task's process id.
TASK_DIR_PREFIX = "sparkeras-task"
OWNER_FILE = "owner.json"
#: Rendezvous rounds tried before giving up on distinct ports for every task.
RENDEZVOUS_ROUNDS = 3
#: How Spark counts task slots, for error messages.
SLOTS_EXPLAINED = (
    "executor cores / spark.task.cpus, and GPUs / spark.task.resource.gpu.amount when Spark "
    "schedules GPUs"
)
#: Times a parameter-server cluster's worker or parameter server is restarted after dying.
MAX_SERVER_RESTARTS = 3
#: How often a server's task checks that its process is alive.
SERVER_POLL_SECONDS = 0.25

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
    """Tasks the cluster can run at once, or ``None`` when that is unknown.

    Spark's scheduler says, where the JVM is in this process; over Spark Connect the count is
    worked out from the configuration (:func:`task_slots_from_conf`).
    """
    try:
        context = spark.sparkContext
        jvm_context = context._jsc.sc()  # type: ignore[union-attr]
        profile = jvm_context.resourceProfileManager().defaultResourceProfile()
        return int(jvm_context.maxNumConcurrentTasks(profile))
    except Exception:
        pass
    try:
        return task_slots_from_conf(lambda key: spark.conf.get(key, None))
    except Exception:
        return None


def task_slots_from_conf(conf: Callable[[str], str | None]) -> int | None:
    """Task slots implied by the configuration (``conf`` reads a key, ``None`` when unset), or
    ``None`` when it does not fix them (``local[*]``, dynamic allocation, unset core counts).

    Examples
    --------
    >>> settings = {"spark.master": "local-cluster[2,3,1024]", "spark.task.cpus": "2"}
    >>> task_slots_from_conf(settings.get)
    2
    >>> task_slots_from_conf({"spark.master": "local[4]"}.get)
    4
    >>> task_slots_from_conf({"spark.master": "local[*]"}.get) is None
    True
    >>> yarn = {"spark.master": "yarn", "spark.executor.instances": "2", "spark.executor.cores": "8"}
    >>> task_slots_from_conf(yarn.get)
    16
    >>> gpus = {"spark.executor.resource.gpu.amount": "1", "spark.task.resource.gpu.amount": "0.5"}
    >>> task_slots_from_conf({**yarn, **gpus}.get)
    4
    """
    master = (conf("spark.master") or "").replace(" ", "")
    task_cpus = int(conf("spark.task.cpus") or 1)
    if master == "local":
        return 1 // task_cpus
    if match := re.fullmatch(r"local\[(\d+)(,\d+)?\]", master):
        return int(match.group(1)) // task_cpus
    if match := re.fullmatch(r"local-cluster\[(\d+),(\d+),\d+\]", master):
        executors, cores = int(match.group(1)), match.group(2)
    else:
        instances, cores = conf("spark.executor.instances"), conf("spark.executor.cores")
        if not instances or (conf("spark.dynamicAllocation.enabled") or "").lower() == "true":
            return None
        executors = int(instances)
    if not cores:
        return None
    per_executor = int(cores) // task_cpus
    gpus, task_gpus = (
        conf("spark.executor.resource.gpu.amount"),
        conf("spark.task.resource.gpu.amount"),
    )
    if gpus and task_gpus:  # GPU scheduling: a task also needs its share of a GPU
        per_executor = min(per_executor, _tasks_per_resource(int(gpus), float(task_gpus)))
    return executors * per_executor


def _tasks_per_resource(amount: int, per_task: float) -> int:
    """Tasks that ``amount`` whole resources (GPUs) serve at ``per_task`` each, as Spark counts:
    a fraction of at most 0.5 packs ``floor(1 / per_task)`` tasks onto each one, a larger
    amount takes whole resources.

    Examples
    --------
    >>> _tasks_per_resource(2, 0.4), _tasks_per_resource(3, 0.4), _tasks_per_resource(4, 2.0)
    (4, 6, 2)
    """
    if per_task <= 0.5:
        return amount * math.floor(1 / per_task)
    return amount // math.ceil(per_task)


#: Spark's size suffixes, as powers of 1024 (a bare number is bytes).
_SIZE_UNITS = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4, "p": 5}

_RESULT_SIZE_FIX = (
    "Set spark.driver.maxResultSize higher (e.g. '4g', or '0' for no limit) when the session "
    "is created."
)


def max_result_bytes(spark: SparkSession) -> int | None:
    """``spark.driver.maxResultSize`` in bytes; ``None`` when unlimited or unreadable.

    The trained model returns to the driver as task results, which this setting caps.
    """
    try:
        value = str(spark.conf.get("spark.driver.maxResultSize", "1g"))
    except Exception:
        return None
    match = re.fullmatch(r"(\d+)([kmgtp]?)b?", value.strip().lower())
    if match is None:
        return None
    return int(match.group(1)) * 1024 ** _SIZE_UNITS[match.group(2)] or None


def check_result_size(spark: SparkSession, model_bytes: int) -> None:
    """Fail before training when the model could not come back to the driver afterwards.

    Examples
    --------
    >>> check_result_size(spark, 2 * 1024**3)  # doctest: +SKIP
    Traceback (most recent call last):
    ...
    ValueError: The model is 2048 MiB before training ...
    """
    limit = max_result_bytes(spark)
    if limit is not None and model_bytes >= limit:
        raise ValueError(
            f"The model is {model_bytes / 2**20:.0f} MiB before training (its optimizer state "
            "adds more), but the trained model returns to the driver as task results, which "
            f"spark.driver.maxResultSize caps at {limit / 2**20:.0f} MiB. {_RESULT_SIZE_FIX}"
        )


def check_task_slots(spark: SparkSession, plan_roles: list[Role]) -> None:
    """Fail fast instead of letting a barrier stage wait for slots that will never come."""
    slots = available_task_slots(spark)
    num_tasks = len(plan_roles)
    if slots is None or num_tasks <= slots:
        return
    if "ps" in plan_roles:
        workers, servers = plan_roles.count("worker"), plan_roles.count("ps")
        raise ValueError(
            f"strategy='parameter_server' with numWorkers={workers} and numPs={servers} needs "
            f"{num_tasks} concurrent Spark tasks ({workers} worker(s), {servers} parameter "
            f"server(s) and 1 coordinator), but the cluster has only {slots} task slot(s) "
            f"({SLOTS_EXPLAINED}). Lower numWorkers or numPs so that "
            f"numWorkers + numPs + 1 <= {slots}, or give the application more executor cores."
        )
    raise ValueError(
        f"numWorkers={num_tasks} needs {num_tasks} concurrent Spark tasks, but the cluster has "
        f"only {slots} task slot(s) ({SLOTS_EXPLAINED}). Lower numWorkers to at "
        f"most {slots}, or give the application more executor cores."
    )


def run_training(shards: DataFrame, plan: TrainingPlan) -> TrainingResult:
    """Run one barrier stage over ``shards`` (one partition per task of ``plan.roles``).

    Raises
    ------
    TrainingError
        When a worker fails; the message is the worker's own traceback and log tail.
    """
    plan_json = plan.to_json()
    features, label, roles, staging_dir = plan.features, plan.label, plan.roles, plan.staging_dir
    stall_timeout, checkpoint_dir = plan.stall_timeout, plan.checkpoint_dir
    use_fork_server = plan.fork_server
    run_id = uuid.uuid4().hex  # tells this fit's task directories from other fits'
    #: Where the tasks meet on the driver (address, secret), set below; None: ``allGather``.
    meeting_point: tuple[str, str] | None = None

    def train_partition(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from pyspark import BarrierTaskContext

        from sparkeras.shards import write_shard

        context = BarrierTaskContext.get()
        rank = context.partitionId()
        role = roles[rank]
        _fail_if_failed_before(checkpoint_dir)
        owner = TaskOwner(os.getpid(), run_id, rank, context.taskAttemptId())
        task_dir = _make_task_dir(staging_dir, owner)
        gpus = task_gpu_addresses(context)
        started = time.time()
        try:
            # Started first: TensorFlow's imports overlap the shard writing and the rendezvous.
            device_env = tensorflow_environment(gpus, os.environ)
            use_server = use_fork_server and ForkServer.supported()  # the executor's platform
            server, no_server = _fork_server() if use_server else (None, "")
            with contextlib.closing(
                _WorkerProcess(task_dir, device_env, server, no_server)
            ) as worker:
                shard_dir = os.path.join(task_dir, "shard")
                try:
                    rows = write_shard(batches, shard_dir, features, label)
                    error = None
                except ValueError as shard_error:  # reported after the rendezvous, by every task
                    rows, error = 0, f"{type(shard_error).__name__}: {shard_error}"
                executor = context.getTaskInfos()[rank].address
                host = executor.rsplit(":", 1)[0]
                message = {
                    "rows": rows,
                    "shard_dir": shard_dir,
                    "error": error,
                    "sees_checkpoints": _can_see(checkpoint_dir),
                }
                shard_written = time.time()
                for round_number in range(RENDEZVOUS_ROUNDS):  # until all drew distinct ports
                    message["address"] = f"{host}:{_free_port()}"
                    gathered, met_via = _gather(
                        context, meeting_point, round_number, len(roles), json.dumps(message)
                    )
                    peers = [json.loads(peer) for peer in gathered]
                    if len({peer["address"] for peer in peers}) == len(peers):
                        break
                rendezvous_done = time.time()
                release = functools.partial(_release, context, meeting_point, met_via, len(roles))
                _check_rendezvous(peers, roles, plan.validation_fraction, checkpoint_dir)
                assignment = WorkerAssignment(
                    rank=rank,
                    roles=roles,
                    addresses=[peer["address"] for peer in peers],
                    shard_rows=[peer["rows"] for peer in peers],
                    shard_dirs=[peer["shard_dir"] for peer in peers],
                    result_dir=task_dir,
                    cpus=context.cpus(),
                    executor=executor,
                )
                # Those that use checkpoints: every worker (mirrored), or the coordinator.
                checkpointing = [peers[roles.index("chief")]] if "ps" in roles else peers
                checkpoints_shared = all(peer["sees_checkpoints"] for peer in checkpointing)
                with open(os.path.join(task_dir, "plan.json"), "w") as file:
                    file.write(
                        plan_json
                        if checkpoints_shared
                        else _private_checkpoints(plan_json, task_dir)
                    )
                with open(os.path.join(task_dir, "assignment.json"), "w") as file:
                    file.write(assignment.to_json())
                if "ps" in roles and role != "chief":
                    # A parameter-server cluster's servers run until the coordinator is done.
                    restarts = worker.serve(rank, release=release, restartable=role == "worker")
                    report = {
                        "rank": rank,
                        "role": role,
                        "executor": executor,
                        "server_restarts": restarts,
                    }
                else:
                    worker.run(rank, stall_timeout)
                    if "ps" in roles:
                        release()  # the coordinator is done: release the servers
                    with open(os.path.join(task_dir, "report.json")) as file:
                        report = json.load(file)
                report["task_attempt"] = context.attemptNumber()
                report["task_gpus"] = gpus
                report["worker_process"] = worker.how
                report["rendezvous"] = met_via
                report["checkpoints"] = "shared" if checkpoints_shared else "not shared"
                report["task_started_at"] = started
                report["log_tail"] = _log_tail(worker.log_path)
                report["task_seconds"] = {
                    "write_shard": round(shard_written - started, 4),
                    "rendezvous": round(rendezvous_done - shard_written, 4),
                    "worker_process": round(time.time() - rendezvous_done, 4),
                }
                yield _result_batch(rank, "report", json.dumps(report).encode())
                if rank == 0:
                    # One small Arrow batch per chunk, so no single huge value; all of them
                    # count against spark.driver.maxResultSize (see check_result_size).
                    with open(os.path.join(task_dir, "model.keras"), "rb") as file:
                        chunks = iter(lambda: file.read(CHUNK_BYTES), b"")
                        for seq, chunk in enumerate(chunks):
                            yield _result_batch(rank, "model", chunk, seq)
        finally:
            shutil.rmtree(task_dir, ignore_errors=True)
            _remove_orphaned_task_dirs(os.path.dirname(task_dir), owner)

    # The shuffle after the barrier stage makes it a shuffle-map stage, which Spark retries as a
    # whole when a task fails (up to spark.stage.maxConsecutiveAttempts times, when the task
    # failures allowed by spark.task.maxFailures let it); a failed barrier *result* stage is
    # never retried. A retried stage resumes from the last epoch checkpoint.
    host = driver_host(shards.sparkSession)
    with contextlib.ExitStack() as stack:
        if host is not None:
            server = stack.enter_context(rendezvous.RendezvousServer(host))
            meeting_point = (server.address, server.secret)
        results = shards.mapInArrow(train_partition, RESULT_SCHEMA, barrier=True).repartition(1)
        try:
            with _cancelled_on_interrupt(shards.sparkSession):
                rows = results.collect()
        except Exception as error:
            detail = _worker_failure(str(error))
            too_large = re.search(
                r"Total size of serialized results.*?maxResultSize \(.*?\)", str(error)
            )
            if detail is None and too_large:
                detail = (
                    f"The trained model could not return to the driver: {too_large.group(0)}. "
                    + _RESULT_SIZE_FIX
                )
            if detail is None:
                raise
            raise TrainingError(detail) from None
    return _assemble(rows)


def _gather(
    context: Any, meeting_point: tuple[str, str] | None, round_number: int, size: int, message: str
) -> tuple[list[str], str]:
    """Every task's ``message`` by rank, and how the tasks met: on the driver when they all can
    (milliseconds), else with ``allGather`` (a second; see ``sparkeras.rendezvous``)."""
    if meeting_point is not None:
        messages = _meet_on_driver(context, meeting_point, str(round_number), size, message)
        if messages is not None:
            return messages, "driver"
    return context.allGather(message), "allGather"


def _release(context: Any, meeting_point: tuple[str, str] | None, met_via: str, size: int) -> None:
    """The end of a parameter-server cluster's stage: each task waits until all have arrived
    (the coordinator arrives when training is done). Tasks that met on the driver meet there
    again, with no deadline; the others use Spark's ``barrier``."""
    if met_via == "driver" and meeting_point is not None:
        _meet_on_driver(context, meeting_point, "release", size, "", patient=True)
    else:
        context.barrier()


def _meet_on_driver(
    context: Any,
    meeting_point: tuple[str, str],
    key: str,
    size: int,
    message: str,
    patient: bool = False,
) -> list[str] | None:
    """``rendezvous.gather`` for this task (its rank and application-wide task attempt id);
    a broken meeting fails the task with the worker-failure markers the driver reads."""
    address, secret = meeting_point
    member = (context.partitionId(), context.taskAttemptId())
    try:
        return rendezvous.gather(address, secret, key, member, size, message, patient=patient)
    except rendezvous.RendezvousError as error:
        raise _fail(str(error)) from None


@contextlib.contextmanager
def _cancelled_on_interrupt(spark: SparkSession) -> Iterator[None]:
    """Cancel the jobs started inside on Ctrl-C (``KeyboardInterrupt``) and re-raise.

    PySpark's own Ctrl-C handler can itself be interrupted before it cancels the job (seen with
    PySpark 4.3), which would leave the barrier stage training. The jobs carry a tag: the
    SparkContext's job tag in classic Spark, the session's operation tag over Spark Connect.
    """
    tag = f"sparkeras-training-{uuid.uuid4().hex}"
    try:
        context = spark.sparkContext
        add, cancel, remove = context.addJobTag, context.cancelJobsWithTag, context.removeJobTag
    except Exception:  # Spark Connect has no SparkContext
        add, cancel, remove = spark.addTag, spark.interruptTag, spark.removeTag
    add(tag)
    try:
        yield
    except KeyboardInterrupt:
        cancel(tag)
        raise
    finally:
        remove(tag)


def _can_see(checkpoint_dir: str) -> bool:
    """Whether this executor sees the fit's checkpoint directory (a remote one is assumed to be
    visible everywhere; the TensorFlow processes use it through TensorFlow's file system)."""
    return "://" in checkpoint_dir or os.path.isdir(checkpoint_dir)


def _private_checkpoints(plan_json: str, task_dir: str) -> str:
    """The plan with a checkpoint directory of this task's own.

    For a fit whose checkpoint directory some executors do not see (the default, a temporary
    directory on the driver, on a cluster of several hosts): workers that resumed from it while
    others could not would start from different epochs and weights, and hang or diverge. With
    directories of their own, no attempt resumes; each starts over.
    """
    plan = TrainingPlan.from_json(plan_json)
    directory = os.path.join(task_dir, "checkpoints")
    os.makedirs(directory, exist_ok=True)
    return dataclasses.replace(plan, checkpoint_dir=directory).to_json()


def _fail_if_failed_before(checkpoint_dir: str) -> None:
    """Fail a retried attempt at once when an earlier one recorded an error it would repeat.

    Only for a local checkpoint directory; a remote one (``hdfs://``...) needs TensorFlow's file
    system, so the training process checks it after starting.
    """
    path = os.path.join(checkpoint_dir, FAILURE_FILE)
    if "://" not in checkpoint_dir and os.path.exists(path):
        with open(path) as file:
            raise _fail(f"{file.read()}\n{REPEATED_FAILURE_NOTE}")


def process_namespace() -> str:
    """Where a pid names this process: the host and the PID namespace (a container).

    A ``stagingDir`` shared between hosts or containers holds directories whose owners' pids
    mean nothing here.
    """
    parts = [socket.gethostname()]
    with contextlib.suppress(OSError):
        parts.append(os.readlink("/proc/self/ns/pid"))
    return "/".join(parts)


@dataclasses.dataclass(frozen=True)
class TaskOwner:
    """Who made a task directory: written into it, read by :func:`_remove_orphaned_task_dirs`."""

    #: The task's Python worker.
    pid: int
    #: The fit (a random id per ``run_training``).
    run: str
    rank: int
    #: Spark's task attempt id, unique in the application and growing with each attempt.
    task: int
    #: Where ``pid`` is meaningful (:func:`process_namespace`).
    namespace: str = dataclasses.field(default_factory=process_namespace)


def _make_task_dir(staging_dir: str | None, owner: TaskOwner) -> str:
    """A fresh directory for this task's shard and files, under ``stagingDir`` when set.

    Directories that no task will use again are removed first (:func:`_remove_orphaned_task_dirs`).
    """
    try:
        if staging_dir is not None:
            os.makedirs(staging_dir, exist_ok=True)
        _remove_orphaned_task_dirs(staging_dir or tempfile.gettempdir(), owner)
        task_dir = tempfile.mkdtemp(prefix=f"{TASK_DIR_PREFIX}{owner.rank}-", dir=staging_dir)
        with open(os.path.join(task_dir, OWNER_FILE), "w") as file:
            json.dump(dataclasses.asdict(owner), file)
        return task_dir
    except OSError as error:
        raise _fail(
            f"Cannot create the task directory under stagingDir={staging_dir!r} on "
            f"{socket.gethostname()}: {error}. Set stagingDir to a writable directory on every "
            "executor's local disk."
        ) from None


def _remove_orphaned_task_dirs(root: str, me: TaskOwner) -> None:
    """Remove the task directories under ``root`` that no task will use again.

    Spark kills the other tasks of a failed barrier stage, so their ``finally`` may never run.
    A directory is an orphan when its task's Python worker is gone, or when an earlier attempt
    of this task (same fit and rank) made it: Spark gives a killed task's Python worker
    ``spark.python.task.killTimeout`` (2 s) before it destroys it, and a quick retry can be
    done before that. Whether a worker is gone is only judged in its own PID namespace.
    """
    for entry in os.scandir(root):
        if not entry.name.startswith(TASK_DIR_PREFIX) or not entry.is_dir():
            continue
        try:
            with open(os.path.join(entry.path, OWNER_FILE)) as file:
                owner = TaskOwner(**json.load(file))
            if (owner.run, owner.rank) == (me.run, me.rank) and owner.task < me.task:
                shutil.rmtree(entry.path, ignore_errors=True)
                continue
            if owner.namespace != me.namespace:
                continue  # another host's or container's: its pid means nothing here
            os.kill(owner.pid, 0)  # raises when the task's Python worker is gone
        except ProcessLookupError:
            shutil.rmtree(entry.path, ignore_errors=True)
        except (OSError, ValueError, TypeError):
            continue  # being created, or not ours to judge


def _worker_failure(message: str) -> str | None:
    """The worker's own failure text inside a Spark error message, if there is one."""
    match = re.search(re.escape(_FAILURE_START) + r"(.*?)" + re.escape(_FAILURE_END), message, re.S)
    return match.group(1).strip() if match else None


def _fail(text: str) -> TrainingError:
    return TrainingError(f"{_FAILURE_START}\n{text}\n{_FAILURE_END}")


def _fail_for_good(checkpoint_dir: str, text: str) -> TrainingError:
    """A failure that every retry would repeat (the data's): recorded in a local checkpoint
    directory, so that retried attempts fail at once (:func:`_fail_if_failed_before`) instead of
    reading and converting the data again."""
    if "://" not in checkpoint_dir and os.path.isdir(checkpoint_dir):
        with open(os.path.join(checkpoint_dir, FAILURE_FILE), "w") as file:
            file.write(text)
    return _fail(text)


def _check_rendezvous(
    peers: list[dict[str, Any]], roles: list[Role], validation_fraction: float, checkpoint_dir: str
) -> None:
    errors = [f"task {index}: {peer['error']}" for index, peer in enumerate(peers) if peer["error"]]
    if errors:
        raise _fail_for_good(
            checkpoint_dir, "Reading the training data failed:\n" + "\n".join(errors)
        )
    if len(peers) != len(roles):
        raise _fail(f"Expected {len(roles)} barrier tasks, got {len(peers)}.")
    if len({peer["address"] for peer in peers}) != len(peers):
        raise _fail(f"Tasks drew the same TCP port {RENDEZVOUS_ROUNDS} times; retry the fit.")
    rows = [peer["rows"] for peer in peers]
    empty = [index for index, role in enumerate(roles) if role == "worker" and rows[index] == 0]
    if empty:
        raise _fail_for_good(
            checkpoint_dir,
            f"Worker task(s) {empty} received no rows (rows per task {rows}). "
            "Use fewer workers or more data.",
        )
    if "chief" in roles and validation_fraction > 0 and rows[roles.index("chief")] == 0:
        raise _fail_for_good(
            checkpoint_dir,
            f"validationFraction={validation_fraction} left no validation rows for the "
            "coordinator; use a larger fraction or more data.",
        )


def _free_port() -> int:
    """A port that is free now and that outgoing connections will not take before TF binds it.

    The TensorFlow process binds the port seconds later. A port from the kernel's ephemeral range
    can meanwhile be taken by any outgoing connection (gRPC opens many), so the port is drawn
    below that range.
    """
    low = _first_ephemeral_port()
    for port in random.sample(range(10_000, low), k=64) if low > 10_064 else []:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind(("", port))
            except OSError:
                continue
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:  # let the kernel choose
        probe.bind(("", 0))
        return probe.getsockname()[1]


def _first_ephemeral_port() -> int:
    """The start of the kernel's range of ports for outgoing connections."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as file:
            return int(file.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def _fork_server() -> tuple[ForkServer | None, str]:
    """This executor's fork server, or ``None`` and why it cannot have one (see ``processes``)."""
    try:
        return ForkServer(), ""
    except (ForkServerError, OSError) as error:
        return None, str(error)


class _WorkerProcess:
    """The task's TensorFlow process (``sparkeras.processes``), started and watched by the task.

    With a fork server, the server is started (if needed) when the task starts, so that its
    TensorFlow import overlaps the shard writing, and the process is forked after the
    rendezvous. Without one, a fresh process starts at once and imports while the shard is
    written. Either way :meth:`close` kills the process whenever the task ends.
    """

    def __init__(
        self,
        task_dir: str,
        device_env: dict[str, str],
        fork_server: ForkServer | None,
        no_fork_server: str = "",
    ) -> None:
        self.task_dir = task_dir
        self.log_path = os.path.join(task_dir, "worker.log")
        open(self.log_path, "ab").close()
        self.env = process_environment(device_env)
        self.fork_server = fork_server
        #: How the process was started ("forked", "fresh"), and why not forked when it was not.
        self.how = f"fresh ({no_fork_server})" if no_fork_server else ""
        self.process: TaskProcess | None = None
        if fork_server is not None:
            try:
                fork_server.start()
            except OSError as error:
                self.fork_server = None
                self.how = f"fresh (the fork server did not start: {error})"
        if self.fork_server is None:
            self.process = self._start()

    def _start(self) -> TaskProcess:
        if self.fork_server is not None:
            try:
                forked = self.fork_server.fork(self.task_dir, self.log_path, self.env)
            except (ForkServerError, OSError) as error:  # still trains, paying the import
                self.fork_server = None
                self.how = f"fresh ({error})"
            else:
                self.how = forked.how
                return forked
        process = FreshProcess(self.task_dir, self.log_path, self.env)
        self.how = self.how or process.how
        return process

    def _go(self) -> TaskProcess:
        if self.process is None:
            self.process = self._start()
        self.process.go()
        return self.process

    def run(self, rank: int, stall_timeout: float) -> None:
        """Let the process train (plan and assignment are written) and wait for it.

        The process touches ``heartbeat`` in the task directory as training advances; when it
        has not for ``stall_timeout`` seconds, the process is killed and the task fails, so a
        stuck worker ends in a retry or an error instead of a hang.
        """
        process = self._go()
        heartbeat = os.path.join(self.task_dir, HEARTBEAT_FILE)
        started = time.time()  # the task directory is new: no heartbeat is older than this
        while (exit_code := process.wait(SERVER_POLL_SECONDS * 4)) is None:
            last = os.path.getmtime(heartbeat) if os.path.exists(heartbeat) else started
            if time.time() - last > stall_timeout:
                self.close()
                raise _fail(
                    f"Training worker {rank} made no progress for {stall_timeout:g} s "
                    "(stallTimeout): a worker is stuck, or a step, an evaluation or a "
                    "checkpoint takes longer than that. Raise stallTimeout if it is slow work."
                ) from None
        if exit_code != 0:
            raise _fail(_describe_failure(self.task_dir, rank, exit_code, self.log_path))

    def serve(self, rank: int, release: Callable[[], Any], restartable: bool) -> int:
        """Keep a parameter-server cluster's server running until ``release`` returns.

        ``release`` blocks until the coordinator is done. A ``restartable`` (worker) server
        that dies meanwhile is restarted on the same address, up to :data:`MAX_SERVER_RESTARTS`
        times: TensorFlow's coordinator reschedules a lost worker's steps and resumes using it
        once it is back. A parameter server is not: a new one would come back without the
        variables it held, so its loss fails the task, and the stage is retried from the last
        checkpoint.

        Returns
        -------
        int
            How many times the server was restarted.
        """
        process = self._go()
        outcome: dict[str, BaseException] = {}

        def wait_for_release() -> None:
            try:
                release()
            except BaseException as error:
                outcome["error"] = error

        waiter = threading.Thread(target=wait_for_release, daemon=True)
        waiter.start()
        restarts = 0
        while waiter.is_alive():
            exit_code = process.wait(SERVER_POLL_SECONDS)
            if exit_code is None or not waiter.is_alive():
                continue
            if not restartable or restarts == MAX_SERVER_RESTARTS:
                raise _fail(_describe_failure(self.task_dir, rank, exit_code, self.log_path))
            restarts += 1
            process.kill()  # closes a forked process's connection
            self.process = None
            process = self._go()
        if "error" in outcome:
            raise outcome["error"]
        return restarts

    def close(self) -> None:
        """Kill the process if it is still running."""
        if self.process is not None:
            self.process.kill()


def _log_tail(log_path: str) -> str:
    """The last lines of a TensorFlow process's log (its output never reaches the console)."""
    with open(log_path, errors="replace") as log:
        return "".join(log.readlines()[-LOG_TAIL_LINES:])


def _describe_failure(task_dir: str, rank: int, exit_code: int, log_path: str) -> str:
    error_path = os.path.join(task_dir, "error.txt")
    tail = _log_tail(log_path)
    if os.path.exists(error_path):
        with open(error_path) as file:
            cause = file.read().strip()
    elif exit_code == NO_EXIT_CODE:  # a forked process that could not announce its end
        cause = (
            "The TensorFlow process ended without an exit code: it was killed (a SIGKILL, often "
            "the out-of-memory killer) or crashed."
        )
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
