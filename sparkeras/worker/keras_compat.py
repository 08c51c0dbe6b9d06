"""Make Keras 3 ``model.fit`` work under MultiWorkerMirroredStrategy with 2+ workers.

Upstream bug keras-team/keras#20585 (open as of Keras 3.15): two private call sites in
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
3. ``steps_per_execution`` > 1 fails under multi-worker training ("You must feed a value for
   placeholder tensor ... while/cond/Placeholder"): Keras' multi-step loop fetches each batch
   with ``get_next_as_optional`` inside a ``tf.cond`` inside a ``tf.while_loop``, and the
   distributed iterator's cross-worker "has data" check does not survive that nesting.
   :func:`use_in_graph_steps` gives the model train and test functions that do not need it:
   our training datasets repeat, and every worker runs exactly ``steps_per_epoch`` steps.
   This is not version-gated: it only uses ``strategy.run``, ``train_step`` and ``test_step``.

4. Keras 3's callbacks have no chief logic. :func:`write_files_privately` keeps the non-chief
   workers' file-writing callbacks out of the user's paths, and :class:`StopTogether` makes a
   stop that one worker's callback requests from a batch hook (on local per-step logs) end
   every worker at the same epoch.

The patches are applied only inside sparkeras' own TensorFlow worker processes (never on import
of ``sparkeras``), only on the Keras versions they were written for, and only once.
"""

from __future__ import annotations

import functools
import itertools
import os
from collections.abc import Callable
from typing import Any

import keras
import tensorflow as tf

#: Keras versions this module is written for: ``[first, last]`` inclusive on (major, minor).
#: 3.11 is the first whose epoch iterator yields ``(begin, end, iterator)``, as the patched
#: ``_maybe_symbolic_build`` and the in-graph steps expect (3.5-3.10 yield pairs, and 3.0-3.4
#: have no ``_maybe_symbolic_build``); 3.15 is the last one run here.
SUPPORTED_KERAS = ((3, 11), (3, 15))

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


def use_in_graph_steps(model: Any, chunks: list[int]) -> None:
    """Run several training steps per call into TensorFlow, in one graph.

    Each call of Keras' train function would otherwise cost a Python round trip through Keras'
    loop, the distributed iterator and the callbacks: about 3 ms per step with two workers on
    two cores, more than the step itself for a small model. An epoch still runs exactly its
    steps (the calls run ``chunks`` steps each, in order), so every worker runs the same steps.
    Batch-level callbacks then run once per call, as with Keras' ``steps_per_execution``.
    Evaluation keeps one step per call: validation sets end by exhaustion, which needs the
    per-step end-of-data check.

    Parameters
    ----------
    model : keras.Model
        A compiled model, built in the strategy's scope.
    chunks : list of int
        Steps of each call in an epoch (``plan.step_chunks``); the same on every worker.
    """
    if model.run_eagerly:
        return
    step = _distributed_step(model, model.train_step)

    @tf.function(reduce_retracing=True)
    def run_steps(iterator: Any, count: Any) -> Any:
        outputs = step(next(iterator))
        for _ in tf.range(count - 1):
            outputs = step(next(iterator))
        return outputs

    calls = itertools.count()

    def train_function(iterator: Any) -> Any:
        # Keras makes len(chunks) calls per epoch, from the epoch's start.
        return run_steps(iterator, tf.constant(chunks[next(calls) % len(chunks)]))

    test_step = _distributed_step(model, model.test_step)
    model.steps_per_execution = chunks[0]  # Keras' epoch loop advances by this many steps
    model.train_function = train_function
    model.test_function = lambda iterator: test_step(next(iterator))


def _distributed_step(model: Any, step_function: Any) -> Callable[[Any], Any]:
    """One step of ``step_function`` on every replica, returning this worker's own logs."""
    strategy = model.distribute_strategy

    def one_step(data: Any) -> Any:
        outputs = strategy.run(step_function, args=(data,))
        return tf.nest.map_structure(_local_value, outputs)

    return tf.function(one_step, reduce_retracing=True, jit_compile=model.jit_compile)


def write_files_privately(callbacks: list[Any], directory: str) -> None:
    """Point a non-chief worker's file-writing Keras callbacks into its task directory.

    Keras 3's ``ModelCheckpoint``, ``CSVLogger`` and ``TensorBoard`` have no chief logic: every
    worker would write the same file at once (a ``.keras`` file is not written atomically), or
    files would land on every executor's disk. The chief's (worker 0's) are the ones the user
    gets; the others go with the task directory.
    """
    os.makedirs(directory, exist_ok=True)
    for callback in callbacks:
        for kind, attribute in (
            (keras.callbacks.ModelCheckpoint, "filepath"),
            (keras.callbacks.CSVLogger, "filename"),
            (keras.callbacks.TensorBoard, "log_dir"),
        ):
            if isinstance(callback, kind):
                name = os.path.basename(str(getattr(callback, attribute)).rstrip("/"))
                setattr(callback, attribute, os.path.join(directory, name))


class StopTogether(keras.callbacks.Callback):
    """Ends training on every worker at the same epoch when any worker's callback asked to stop
    during the epoch.

    Per-step logs are each worker's own (see above), so a callback that stops from a batch hook
    (``TerminateOnNaN``, a time limit) may fire on one worker only; that worker would leave the
    epoch while the others wait in the next step's all-reduce. The request is held until the
    epoch ends, where the workers agree on it in one all-reduce, with any stop a callback asked
    for at the epoch's end from the worker's own state (a time limit). Put it after the user's
    callbacks.
    """

    #: Its batch hook must not switch off Keras' callback thread where a backend has one (Keras 3
    #: uses it with thread-safe backends only, not TensorFlow's).
    async_safe = True

    def __init__(self, strategy: Any) -> None:
        super().__init__()
        self.strategy = strategy
        self.requested = False

    def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
        if self.model.stop_training:
            self.requested = True
            self.model.stop_training = False

    def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
        vote = tf.constant(1.0 if self.requested or self.model.stop_training else 0.0)
        votes = self.strategy.reduce("SUM", self.strategy.run(lambda: vote + 0.0), axis=None)
        if float(votes) > 0:
            self.model.stop_training = True
        self.requested = False
