"""Asynchronous training with ``tf.distribute.ParameterServerStrategy``.

Keras 3's ``fit`` does not support this strategy, so the coordinator runs the loop itself:
the model, its compiled optimizer, loss and metrics are rebuilt inside the strategy's scope
(their variables live on the parameter servers), and every epoch the coordinator schedules
``steps`` calls of the model's own ``train_step`` through a ``ClusterCoordinator``, up to
``stepsPerExecution`` of them per scheduled function. Each function runs on whichever worker is
free, on batches of that worker's own shard. Between epochs the
coordinator reads the metrics, evaluates the held-out rows on a local copy of the weights and
runs the Keras callbacks, exactly where ``fit`` would.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import numpy as np

from sparkeras.devices import limit_threads
from sparkeras.plan import (
    HEARTBEAT_FILE,
    TrainingPlan,
    WorkerAssignment,
    asynchronous_steps_per_epoch,
    step_chunks,
)
from sparkeras.worker.progress import ProgressReporter, chief_callbacks
from sparkeras.worker.report import Heartbeat, PhaseClock, training_report
from sparkeras.worker.task import exit_process

#: How often the coordinator checks the parameter servers' step count while it waits.
JOIN_POLL_SECONDS = 0.5


def serve(plan: TrainingPlan, assignment: WorkerAssignment) -> None:
    """Run this task's worker or parameter server until the process is killed."""
    import tensorflow as tf

    limit_threads(tf, plan.intra_op_threads, assignment.cpus, minimum_inter=2)
    server = tf.distribute.Server(
        tf.train.ClusterSpec(assignment.cluster_spec),
        job_name=assignment.role,
        task_index=assignment.task_index,
        protocol="grpc",
        start=True,
    )
    server.join()


def coordinate(
    plan: TrainingPlan, assignment: WorkerAssignment, clock: PhaseClock, report_path: str
) -> None:
    """Train the plan's model on the cluster's workers, then save it, write the report and end
    the process (exit code 0)."""
    import tensorflow as tf

    limit_threads(tf, plan.intra_op_threads, assignment.cpus, minimum_inter=2)
    resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
        tf.train.ClusterSpec(assignment.cluster_spec),
        task_type="chief",
        task_id=0,
        rpc_layer="grpc",
    )
    strategy = tf.distribute.ParameterServerStrategy(resolver)
    coordinator = tf.distribute.coordinator.ClusterCoordinator(strategy)
    clock.mark("start_strategy")

    import keras

    from sparkeras.serialization import (
        objects_from_bytes,
        register_shipped_objects,
    )
    from sparkeras.worker import checkpoint, data

    custom_objects = objects_from_bytes(plan.custom_objects_bytes)
    register_shipped_objects(custom_objects)
    keras.utils.set_random_seed(plan.seed)
    # A retried stage resumes from the last completed epoch: weights, optimizer state, history.
    model, state = checkpoint.model_to_train(plan, strategy, custom_objects)
    initial_epoch = checkpoint.first_epoch(state, plan.epochs)
    with strategy.scope():
        # Metric, loss and optimizer variables must exist (on the parameter servers) before the
        # first step: a step runs remotely, where no variable can be created.
        model._symbolic_build(data_batch=_example_batch(plan))
    callbacks = objects_from_bytes(plan.callbacks_bytes) + chief_callbacks(plan)
    clock.mark("load_model")

    workers = assignment.of_role("worker")
    train_rows = sum(assignment.shard_rows[rank] for rank in workers)
    steps = asynchronous_steps_per_epoch(train_rows, plan.global_batch_size, plan.steps_per_epoch)
    shard_dirs = [assignment.shard_dirs[rank] for rank in workers]

    def per_worker_dataset() -> Any:
        return strategy.distribute_datasets_from_function(
            lambda _: data.staged_training_dataset(
                shard_dirs,
                plan.features,
                plan.label,
                batch_size=plan.global_batch_size,
                seed=plan.seed + initial_epoch,
            )
        )

    batches = iter(coordinator.create_per_worker_dataset(tf.function(per_worker_dataset)))

    # Each scheduled function runs up to stepsPerExecution steps on one worker: the per-step
    # round trip through the coordinator costs more than a small model's step.
    chunks = step_chunks(steps, plan.steps_per_execution)

    @tf.function
    def train_steps(iterator: Any, count: Any) -> None:
        for _ in tf.range(count):
            strategy.run(model.train_step, args=(next(iterator),))

    heartbeat = Heartbeat(os.path.join(assignment.result_dir, HEARTBEAT_FILE))
    validate = _validation(plan, assignment, custom_objects, heartbeat)
    epoch_checkpoint = checkpoint.EpochCheckpoint(plan.checkpoint_dir, is_chief=True, state=state)
    reporter = ProgressReporter(
        plan.progress_address, plan.progress_secret, epochs=plan.epochs, steps=steps
    )
    callback_list = keras.callbacks.CallbackList(
        [*callbacks, checkpoint.StopOnNaN(), epoch_checkpoint, reporter],
        add_history=True,
        model=model,
        epochs=plan.epochs,
        steps=steps,
        verbose=0,
    )
    model.stop_training = False
    epoch_seconds: list[float] = []
    epoch_starts: list[float] = []
    logs: dict[str, float] = {}
    callback_list.on_train_begin()
    for epoch in range(initial_epoch, plan.epochs):
        epoch_starts.append(time.time())
        callback_list.on_epoch_begin(epoch)
        model.reset_metrics()
        applied_before = int(model.optimizer.iterations.numpy())
        for count in chunks:
            coordinator.schedule(train_steps, args=(batches, tf.constant(count)))
        _join(coordinator, model.optimizer.iterations, applied_before, heartbeat, reporter)
        logs = {name: float(value) for name, value in model.get_metrics_result().items()}
        if validate is not None:
            logs.update(validate(model))
        callback_list.on_epoch_end(epoch, logs)
        epoch_seconds.append(round(time.time() - epoch_starts[-1], 4))
        if model.stop_training:
            break
    callback_list.on_train_end(logs)
    clock.mark("fit")

    model.save(os.path.join(assignment.result_dir, "model.keras"))
    clock.mark("save_model")
    report = training_report(
        assignment,
        model,
        epoch_checkpoint.history,
        epoch_seconds=epoch_seconds,
        epoch_starts=epoch_starts,
        initial_epoch=initial_epoch,
        steps=steps,
        train_rows=train_rows,
        validation_rows=assignment.shard_rows[assignment.rank],
        clock=clock,
    )
    with open(report_path, "w") as file:
        json.dump(report, file)
    # Like a mirrored worker: returning would first tear down the per-worker datasets and
    # iterators (remote resources on the workers), which nobody waits for.
    exit_process(0)


def _example_batch(plan: TrainingPlan) -> tuple[np.ndarray, np.ndarray]:
    """A one-row batch with the shapes and dtypes of the training data, to build variables."""
    label_shape = (1,) if plan.label.kind == "scalar" else (1, plan.label.width)
    return (
        np.zeros((1, plan.features.width), np.float32),
        np.zeros(label_shape, plan.label.dtype),
    )


def _join(
    coordinator: Any,
    iterations: Any,
    applied_before: int,
    heartbeat: Heartbeat,
    reporter: ProgressReporter,
) -> None:
    """Wait for the scheduled steps, beating the heartbeat and reporting progress while the
    step count (optimizer steps applied on the parameter servers) advances past
    ``applied_before``, its value before the epoch's steps were scheduled.

    Raises a worker's error; the steps of a lost worker are rescheduled by the coordinator.
    """
    applied = applied_before
    while not coordinator.done():
        current = int(iterations.numpy())
        if current != applied:
            applied = current
            heartbeat.beat()
            reporter.step(current - applied_before)
        time.sleep(JOIN_POLL_SECONDS)
    coordinator.join()
    heartbeat.beat()


def _validation(
    plan: TrainingPlan, assignment: WorkerAssignment, custom_objects: dict, heartbeat: Heartbeat
) -> Any:
    """A function returning the ``val_*`` metrics of the model, or ``None`` without held-out rows.

    The coordinator's own shard holds the held-out rows. They are evaluated in this process, on a
    local copy of the model that receives the current weights: evaluation then needs no worker
    and cannot disturb the training metrics, which live on the parameter servers.
    """
    rows = assignment.shard_rows[assignment.rank]
    if rows == 0:
        return None
    from sparkeras.serialization import model_from_bytes
    from sparkeras.worker import data

    shard = data.open_shard(assignment.shard_dir, plan.features, plan.label)
    dataset = data.validation_dataset(
        shard, np.arange(rows), plan.features, plan.label, batch_size=plan.global_batch_size
    )
    local_model = model_from_bytes(plan.model_bytes, custom_objects, safe_mode=plan.safe_mode)

    def validate(model: Any) -> dict[str, float]:
        local_model.set_weights(model.get_weights())
        results = local_model.evaluate(dataset, return_dict=True, verbose=0, callbacks=[heartbeat])
        return {f"val_{name}": float(value) for name, value in results.items()}

    return validate
