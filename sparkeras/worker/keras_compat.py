"""Make Keras 3 ``model.fit`` work under MultiWorkerMirroredStrategy with 2+ workers.

Upstream bug keras-team/keras#20585 (open for Keras 3.0 - 3.15): two private call sites in
``keras/src/backend/tensorflow/trainer.py`` break as soon as ``strategy.extended`` is in
multi-worker mode.

1. ``TensorFlowTrainer._maybe_symbolic_build`` peeks at one distributed batch to build the model
   and runs ``strategy.reduce("MEAN", (x, y), axis=None)`` on the whole nested PerReplica batch:
   "Attempt to convert a value (PerReplica...)". The batch is only used for its shapes and dtypes
   (it becomes ``KerasTensor``s), so this module builds from the local replica's value instead:
   no collective, same result.
2. ``reduce_per_replica`` reduces every per-step metric with ``strategy.reduce("MEAN", v, axis=0)``;
   metrics are scalars: "Invalid reduction dimension 0 for input with 0 dimensions". Here the
   per-step logs stay local (the worker's own running values), with no collective at all: one
   cross-worker reduce per metric per step would cost more than the step itself. Epoch-level logs
   (history, EarlyStopping, ModelCheckpoint, validation) do not come from these values: Keras reads
   its metric variables, which are ``ON_READ``/``SUM`` synchronised, once per epoch, so they are
   global and identical on every worker. Only batch-level callbacks see local values.

The patches are applied only inside sparkeras' own TensorFlow worker processes (never on import
of ``sparkeras``), only on the Keras versions they were written for, and only once.
"""

from __future__ import annotations

import functools
from typing import Any

import keras
import tensorflow as tf

#: Keras versions checked against this module: ``[first, last]`` inclusive on (major, minor).
SUPPORTED_KERAS = ((3, 0), (3, 15))

_APPLIED_MARKER = "_sparkeras_patched"


def keras_version() -> tuple[int, int]:
    """(major, minor) of the installed Keras."""
    major, minor = keras.__version__.split(".")[:2]
    return int(major), int(minor)


def needs_patches(version: tuple[int, int] | None = None) -> bool:
    """Whether the installed (or given) Keras version has the multi-worker bugs patched here."""
    version = version or keras_version()
    return SUPPORTED_KERAS[0] <= version <= SUPPORTED_KERAS[1]


def apply() -> list[str]:
    """Patch Keras for multi-worker training; return the names of the patches now in place.

    Raises
    ------
    RuntimeError
        When the version is covered but the private functions are not where they are expected.
    """
    if not needs_patches():
        return []
    from keras.src.backend.tensorflow import trainer

    for owner, name in (
        (trainer.TensorFlowTrainer, "_maybe_symbolic_build"),
        (trainer, "reduce_per_replica"),
    ):
        if not callable(getattr(owner, name, None)):
            raise RuntimeError(
                f"Keras {keras.__version__} has no {name}; sparkeras' multi-worker compatibility "
                "patch does not match this Keras. Please report it with your Keras version."
            )
    if not getattr(trainer.reduce_per_replica, _APPLIED_MARKER, False):
        trainer.reduce_per_replica = _local_step_logs(trainer.reduce_per_replica)
        trainer.TensorFlowTrainer._maybe_symbolic_build = _maybe_symbolic_build_locally
    return ["_maybe_symbolic_build", "reduce_per_replica"]


def _local_value(value: Any) -> Any:
    """The first local replica's component of a distributed value, or the value itself."""
    if isinstance(value, tf.distribute.DistributedValues):
        return value.values[0]
    return value


def _maybe_symbolic_build_locally(self: Any, iterator: Any = None, data_batch: Any = None) -> None:
    """Keras' ``_maybe_symbolic_build`` without the cross-worker reduce of the sample batch."""
    if self._distribute_strategy is None:
        return
    if iterator is not None:
        for _, _, batches in iterator:
            data_batch = tf.nest.map_structure(_local_value, next(batches))
            break
    with self.distribute_strategy.scope():
        self._symbolic_build(data_batch=data_batch)


def _local_step_logs(original: Any) -> Any:
    @functools.wraps(original)
    def reduce_per_replica(values: Any, strategy: Any, reduction: str) -> Any:
        from keras.src.backend.tensorflow import trainer

        if reduction in ("auto", "mean") and trainer._collective_all_reduce_multi_worker(strategy):
            return tf.nest.map_structure(_local_value, values)
        return original(values, strategy, reduction)

    setattr(reduce_per_replica, _APPLIED_MARKER, True)
    return reduce_per_replica
