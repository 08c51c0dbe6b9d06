"""Plain-value descriptions of a training run, computed on the driver and shipped to every task.

Nothing here touches Spark or TensorFlow: the driver builds a :class:`TrainingPlan`, the barrier
tasks carry it in their closure, and each TensorFlow worker process reads it back from JSON.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import operator
from typing import Any, Literal

#: Training steps per call into TensorFlow when neither the param nor the compiled model set it.
DEFAULT_STEPS_PER_EXECUTION = 32

#: The file in a task's directory that its training process touches as it makes progress.
HEARTBEAT_FILE = "heartbeat"
#: The file in a fit's checkpoint directory that holds an error a retry would only repeat.
FAILURE_FILE = "failure.txt"
#: How a retried attempt's failure says that it repeats an earlier attempt's error.
REPEATED_FAILURE_NOTE = (
    "(An earlier attempt failed with this error; retrying the stage would repeat it.)"
)

FeatureKind = Literal["vector", "array"]
Role = Literal["worker", "chief", "ps"]
LabelKind = Literal["scalar", "array", "vector"]
Storage = Literal["dense", "sparse"]


@dataclasses.dataclass(frozen=True)
class FeatureSpec:
    """How the features column is laid out and how shards store it.

    ``storage`` is ``"sparse"`` (CSR shards fed as ``tf.SparseTensor``) when the model's input
    is declared sparse, else ``"dense"`` (a ``rows x width`` float32 matrix).
    """

    column: str
    kind: FeatureKind
    width: int
    storage: Storage = "dense"


@dataclasses.dataclass(frozen=True)
class LabelSpec:
    """How the label column is laid out: a numeric scalar, or a fixed-width array/vector."""

    column: str
    kind: LabelKind
    width: int
    dtype: Literal["float32", "int32", "int64"]
    #: A numeric column of per-row weights (Keras' ``sample_weight``), or ``None``.
    weight_column: str | None = None


@dataclasses.dataclass(frozen=True)
class TrainingPlan:
    """Everything a worker needs, as plain values (bytes are base64 in JSON)."""

    model_bytes: bytes
    custom_objects_bytes: bytes
    callbacks_bytes: bytes
    features: FeatureSpec
    label: LabelSpec
    num_workers: int
    strategy: str
    epochs: int
    global_batch_size: int
    steps_per_epoch: int | None
    validation_fraction: float
    seed: int
    safe_mode: bool
    learning_rate: float | None = None
    num_ps: int = 0
    staging_dir: str | None = None
    #: This fit's own checkpoint directory (see ``worker/checkpoint.py``).
    checkpoint_dir: str = ""
    #: Seconds without training progress after which a worker counts as stuck.
    stall_timeout: float = 600.0
    #: Where the chief sends live progress (``host:port``, empty for none) and its secret.
    progress_address: str = ""
    progress_secret: str = ""
    #: TensorBoard log directory written by the chief, empty for none.
    log_dir: str = ""
    #: TensorFlow intra-op threads per process; 0 for the task's CPUs (see ``devices``).
    intra_op_threads: int = 0
    #: Fork each task's TensorFlow process from the executor's fork server (``processes``).
    fork_server: bool = True
    #: Most training steps per call into TensorFlow (see :func:`steps_per_execution`).
    steps_per_execution: int = 1

    @property
    def roles(self) -> list[Role]:
        """The role of each barrier task, by partition index (see :func:`task_roles`)."""
        return task_roles(self.strategy, self.num_workers, self.num_ps)

    def to_json(self) -> str:
        """Serialise for the worker process."""
        values = dataclasses.asdict(self)
        for key in ("model_bytes", "custom_objects_bytes", "callbacks_bytes"):
            values[key] = base64.b64encode(values[key]).decode("ascii")
        return json.dumps(values)

    @classmethod
    def from_json(cls, text: str) -> TrainingPlan:
        """Inverse of :meth:`to_json`."""
        values: dict[str, Any] = json.loads(text)
        for key in ("model_bytes", "custom_objects_bytes", "callbacks_bytes"):
            values[key] = base64.b64decode(values[key])
        values["features"] = FeatureSpec(**values["features"])
        values["label"] = LabelSpec(**values["label"])
        return cls(**values)


def keras_seed(seed: int) -> int:
    """A seed that Keras, TensorFlow and numpy accept (``[0, 2**32)``) for any integer.

    Spark seeds are 64-bit longs, often negative (pyspark's own default is a hash).

    Examples
    --------
    >>> keras_seed(-1), keras_seed(2**40 + 5), keras_seed(7)
    (4294967295, 5, 7)
    """
    return operator.index(seed) % 2**32


def task_roles(strategy: str, num_workers: int, num_ps: int) -> list[Role]:
    """The role of each barrier task, by partition index.

    Mirrored: every task is a worker (rank 0 is the chief). Parameter server: task 0 is the
    coordinator (``chief``, holding the validation rows), then the workers (holding the training
    rows), then the parameter servers (holding no rows).

    Examples
    --------
    >>> task_roles("parameter_server", num_workers=2, num_ps=1)
    ['chief', 'worker', 'worker', 'ps']
    """
    if strategy == "mirrored":
        return ["worker"] * num_workers
    return ["chief"] + ["worker"] * num_workers + ["ps"] * num_ps


@dataclasses.dataclass(frozen=True)
class WorkerAssignment:
    """One task's place in the cluster, decided by the barrier rendezvous.

    The lists hold one entry per barrier task, by partition index.
    """

    rank: int
    roles: list[Role]
    addresses: list[str]
    shard_rows: list[int]
    shard_dirs: list[str]
    result_dir: str
    cpus: int = 1
    executor: str = ""

    @property
    def role(self) -> Role:
        """This task's role."""
        return self.roles[self.rank]

    @property
    def shard_dir(self) -> str:
        """This task's shard directory."""
        return self.shard_dirs[self.rank]

    def of_role(self, role: Role) -> list[int]:
        """Ranks of the tasks with ``role``, in order (their index within the role's job)."""
        return [rank for rank, each in enumerate(self.roles) if each == role]

    def to_json(self) -> str:
        """Serialise for the worker process."""
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> WorkerAssignment:
        """Inverse of :meth:`to_json`."""
        return cls(**json.loads(text))

    @property
    def cluster_spec(self) -> dict[str, list[str]]:
        """TensorFlow's cluster: job name -> addresses."""
        cluster: dict[str, list[str]] = {}
        for role, address in zip(self.roles, self.addresses, strict=True):
            cluster.setdefault(role, []).append(address)
        return cluster

    @property
    def task_index(self) -> int:
        """Index of this task within its job."""
        return self.of_role(self.role).index(self.rank)

    @property
    def tf_config(self) -> dict[str, Any]:
        """This task's ``TF_CONFIG`` (for MultiWorkerMirroredStrategy, rank 0 is the chief)."""
        return {
            "cluster": self.cluster_spec,
            "task": {"type": self.role, "index": self.task_index},
        }


def per_replica_batch_size(global_batch_size: int, num_replicas: int) -> int:
    """Split the global batch evenly; ``ValueError`` when there are more replicas than rows."""
    if global_batch_size < num_replicas:
        raise ValueError(
            f"batchSize={global_batch_size} is smaller than the {num_replicas} training replicas; "
            f"use batchSize >= {num_replicas} (it is the global batch, split across workers)."
        )
    return global_batch_size // num_replicas


def steps_per_epoch(shard_rows: list[int], rows_per_step: int, override: int | None) -> int:
    """Steps every worker runs per epoch: enough for the largest shard to be seen once.

    All workers must run the same number of steps or the collectives hang; smaller shards are
    topped up with a random resample of their own rows (see ``worker.data.epoch_order``).

    Examples
    --------
    >>> steps_per_epoch([100, 37], rows_per_step=32, override=None)
    4
    """
    if override is not None:
        return override
    return max(1, -(-max(shard_rows) // rows_per_step))


def steps_per_execution(
    requested: int, compiled: Any, strategy: str, sparse_inputs: bool = False
) -> int:
    """Most training steps per call into TensorFlow (``stepsPerExecution``).

    ``requested`` is the param (0: automatic); ``compiled`` the model's own
    ``steps_per_execution``, honoured when the user compiled with more than 1.

    * Mirrored: automatic is ``DEFAULT_STEPS_PER_EXECUTION``. A model fed sparse inputs always
      runs one step per call: its sparse gradients differ in size between workers, and their
      padded all-gather fails inside a multi-step loop ("Shape mismatch in the collective
      instance"; ``Embedding`` gradients, the same size everywhere, are fine).
    * Parameter server: automatic is one step per scheduled function. Keras 3 applies every
      update as a read-add-write of the variable on its server, so steps that overlap on two
      workers lose updates, and longer scheduled functions overlap more (measured on the
      tests' model: 143 of 168 optimizer steps counted at one step per function, 113-127 at 32).

    Examples
    --------
    >>> steps_per_execution(0, 1, "mirrored"), steps_per_execution(0, 8, "mirrored")
    (32, 8)
    >>> steps_per_execution(1, 8, "mirrored"), steps_per_execution(0, 1, "parameter_server")
    (1, 1)
    >>> steps_per_execution(16, 1, "mirrored", sparse_inputs=True)
    1
    """
    if strategy == "mirrored" and sparse_inputs:
        return 1
    if requested:
        return requested
    if isinstance(compiled, int) and compiled > 1:
        return compiled
    return DEFAULT_STEPS_PER_EXECUTION if strategy == "mirrored" else 1


def step_chunks(steps: int, steps_per_execution: int) -> list[int]:
    """The steps of each call into TensorFlow over one epoch; the last call runs the remainder.

    Examples
    --------
    >>> step_chunks(29, 4)
    [4, 4, 4, 4, 4, 4, 4, 1]
    >>> step_chunks(5, 32)
    [5]
    """
    per_call = max(1, min(steps_per_execution, steps))
    return [min(per_call, steps - first) for first in range(0, steps, per_call)]


def asynchronous_steps_per_epoch(train_rows: int, batch_size: int, override: int | None) -> int:
    """Steps the coordinator schedules per epoch: one pass over all training rows on average.

    Any worker may take any step, so a fast worker takes more; there is no per-worker count.

    Examples
    --------
    >>> asynchronous_steps_per_epoch(1000, batch_size=64, override=None)
    16
    """
    if override is not None:
        return override
    return max(1, -(-train_rows // batch_size))


def validation_rows_per_worker(shard_rows: list[int], fraction: float) -> int:
    """Rows each worker holds out: the same count everywhere, so evaluation steps match.

    At least one row when ``fraction`` > 0, but every worker keeps at least one training row
    (the driver refuses a validation split of data that cannot give both).

    Examples
    --------
    >>> validation_rows_per_worker([500, 480], 0.2)
    98
    >>> validation_rows_per_worker([2, 2], 0.1)
    1
    >>> validation_rows_per_worker([2, 1], 0.2)
    0
    """
    if fraction <= 0.0:
        return 0
    wanted = round(fraction * sum(shard_rows) / len(shard_rows))
    return max(0, min(max(1, wanted), min(shard_rows) - 1))
