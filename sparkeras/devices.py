"""Which devices and how many threads a task's TensorFlow may use.

Spark decides what a task may use: its CPUs (``spark.task.cpus``) and, when GPU scheduling is
configured (``spark.task.resource.gpu.amount`` with a discovery script), the addresses of its
GPUs. Several TensorFlow processes often share one machine (one per task), so each must stay
inside its task's share: TensorFlow's defaults would give every process all cores and all GPU
memory. Everything here is plain Python, so it runs before TensorFlow is imported.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

#: Environment variables that pin a process to GPUs; read by CUDA and TensorFlow at start-up.
VISIBLE_DEVICES = "CUDA_VISIBLE_DEVICES"
ALLOW_GROWTH = "TF_FORCE_GPU_ALLOW_GROWTH"


def task_gpu_addresses(context: Any) -> list[str]:
    """The GPU addresses Spark assigned to the running task (empty when it assigned none).

    ``context`` is the task's ``TaskContext`` or ``BarrierTaskContext``.
    """
    gpu = context.resources().get("gpu")
    return list(gpu.addresses) if gpu is not None else []


def tensorflow_environment(
    gpu_addresses: Sequence[str], inherited: Mapping[str, str]
) -> dict[str, str]:
    """Environment variables that give a task's TensorFlow exactly the task's GPUs.

    Parameters
    ----------
    gpu_addresses
        The GPUs Spark assigned to the task (:func:`task_gpu_addresses`).
    inherited
        The environment the process would otherwise get; a ``CUDA_VISIBLE_DEVICES`` or
        ``TF_FORCE_GPU_ALLOW_GROWTH`` set there by the user (e.g. ``spark.executorEnv.*``) wins
        when Spark assigned no GPU.

    Returns
    -------
    dict
        Variables to add to the process environment. With GPUs: only those are visible, and
        memory grows on demand, so co-located processes do not each reserve a whole GPU. Without
        GPUs: none is visible (unless the user chose otherwise), so a CPU-only task neither
        probes nor grabs a GPU that Spark gave to another task.

    Examples
    --------
    >>> tensorflow_environment(["1", "3"], {})
    {'CUDA_VISIBLE_DEVICES': '1,3', 'TF_FORCE_GPU_ALLOW_GROWTH': 'true'}
    >>> tensorflow_environment([], {})
    {'CUDA_VISIBLE_DEVICES': ''}
    """
    if gpu_addresses:
        return {
            VISIBLE_DEVICES: ",".join(gpu_addresses),
            ALLOW_GROWTH: inherited.get(ALLOW_GROWTH, "true"),
        }
    return {VISIBLE_DEVICES: inherited.get(VISIBLE_DEVICES, "")}


def thread_counts(requested: int, task_cpus: int, minimum_inter: int = 1) -> tuple[int, int]:
    """TensorFlow's (intra-op, inter-op) thread counts for one process.

    ``requested`` is the ``intraOpThreads`` param (0: one thread per CPU of the task). Inter-op
    threads run independent ops side by side, each op on its own core, so they count against
    the same CPUs: a process with one intra-op but two inter-op threads was measured using up to
    1.9 cores of two. Collectives run on their own executor and need no inter-op thread; a
    parameter-server cluster's processes ask for ``minimum_inter=2`` so that a blocked remote op
    never holds the only thread.

    Examples
    --------
    >>> thread_counts(0, task_cpus=1)
    (1, 1)
    >>> thread_counts(4, task_cpus=1)
    (4, 4)
    >>> thread_counts(1, task_cpus=1, minimum_inter=2)
    (1, 2)
    """
    intra = requested if requested > 0 else max(1, task_cpus)
    return intra, max(minimum_inter, intra)


def limit_threads(tf: Any, requested: int, task_cpus: int, minimum_inter: int = 1) -> None:
    """Apply :func:`thread_counts` to TensorFlow (``tf``), before it runs its first op."""
    intra, inter = thread_counts(requested, task_cpus, minimum_inter)
    tf.config.threading.set_intra_op_parallelism_threads(intra)
    tf.config.threading.set_inter_op_parallelism_threads(inter)
