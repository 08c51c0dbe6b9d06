"""Synchronous data-parallel training with ``tf.distribute.MultiWorkerMirroredStrategy``."""

from __future__ import annotations

import json
import os
import time
from typing import Any

from sparkeras.devices import limit_threads
from sparkeras.plan import (
    HEARTBEAT_FILE,
    TrainingPlan,
    WorkerAssignment,
    per_replica_batch_size,
    step_chunks,
    steps_per_epoch,
)
from sparkeras.plan import validation_rows_per_worker as validation_rows
from sparkeras.worker.progress import ProgressReporter, chief_callbacks
from sparkeras.worker.report import Heartbeat, PhaseClock, training_report
from sparkeras.worker.task import exit_process

#: Gradients are packed into all-reduce messages of up to this size.
GRADIENT_PACK_BYTES = 32 * 1024 * 1024


def train(
    plan: TrainingPlan, assignment: WorkerAssignment, clock: PhaseClock, report_path: str
) -> None:
    """Fit the plan's model on this worker's shard; the chief also saves the trained model.

    At the end of training the worker writes its report (history, rows, steps, a digest of its
    final weights, timings) to ``report_path`` and ends the process from Keras' ``on_train_end``:
    what ``fit`` does after that point is tear down the distributed input pipeline, which took
    about 3 s on a non-chief worker (Keras 3.15, TF 2.21) and delays the whole stage.
    """
    # TF_CONFIG and threading must be set before TensorFlow runs its first op.
    os.environ["TF_CONFIG"] = json.dumps(assignment.tf_config)
    import tensorflow as tf

    limit_threads(tf, plan.intra_op_threads, assignment.cpus)
    strategy = tf.distribute.MultiWorkerMirroredStrategy(
        # One all-reduce per step for all gradients instead of one per variable: on CPU the
        # collective's latency, not its bandwidth, dominates a step.
        communication_options=tf.distribute.experimental.CommunicationOptions(
            bytes_per_pack=GRADIENT_PACK_BYTES
        )
    )
    clock.mark("start_strategy")

    import keras

    from sparkeras.serialization import (
        objects_from_bytes,
        register_shipped_objects,
    )
    from sparkeras.worker import checkpoint, data, keras_compat

    patches = keras_compat.apply() if plan.num_workers > 1 else []
    custom_objects = objects_from_bytes(plan.custom_objects_bytes)
    register_shipped_objects(custom_objects)
    # Before the model is rebuilt: random layers (Dropout) draw their seeds as they are built.
    keras.utils.set_random_seed(plan.seed)
    # A retried stage resumes from the last completed epoch: weights, optimizer state, history.
    model, state = checkpoint.model_to_train(plan, strategy, custom_objects)
    initial_epoch = checkpoint.first_epoch(state, plan.epochs)
    callbacks = objects_from_bytes(plan.callbacks_bytes)
    if assignment.rank == 0:
        callbacks += chief_callbacks(plan)
    else:
        keras_compat.write_files_privately(
            callbacks, os.path.join(assignment.result_dir, "callback-files")
        )
    epoch_checkpoint = checkpoint.EpochCheckpoint(
        plan.checkpoint_dir, is_chief=assignment.rank == 0, state=state
    )
    clock.mark("load_model")

    local_replicas = strategy.num_replicas_in_sync // plan.num_workers
    batch = per_replica_batch_size(plan.global_batch_size, strategy.num_replicas_in_sync)
    held_out = validation_rows(assignment.shard_rows, plan.validation_fraction)
    shard_rows = [rows - held_out for rows in assignment.shard_rows]
    steps = steps_per_epoch(shard_rows, batch * local_replicas, plan.steps_per_epoch)

    keras_compat.use_in_graph_steps(model, step_chunks(steps, plan.steps_per_execution))

    shard = data.open_shard(assignment.shard_dir, plan.features, plan.label)
    train_rows, val_rows = data.split_validation(shard.rows, held_out, plan.seed + assignment.rank)
    seed = plan.seed * 7919 + assignment.rank

    epoch_starts: list[float] = []
    epoch_seconds: list[float] = []

    def finish(logs: Any) -> None:
        clock.mark("fit")
        if assignment.rank == 0:
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
            train_rows=len(train_rows),
            validation_rows=len(val_rows),
            clock=clock,
            keras_patches=patches,
        )
        with open(report_path, "w") as file:
            json.dump(report, file)
        exit_process(0)

    bookkeeping = keras.callbacks.LambdaCallback(
        on_epoch_begin=lambda epoch, logs: epoch_starts.append(time.time()),
        on_epoch_end=lambda epoch, logs: epoch_seconds.append(
            round(time.time() - epoch_starts[-1], 4)
        ),
        on_train_end=finish,
    )
    if initial_epoch >= plan.epochs:  # an earlier attempt ended training, then was lost
        finish(None)
    # Endless, so that Keras does not count a known length down by steps_per_execution steps
    # per call: an epoch's last call runs fewer steps, and Keras would end the last epoch early.
    train_data = strategy.distribute_datasets_from_function(
        lambda _: data.training_dataset(
            shard,
            train_rows,
            plan.features,
            plan.label,
            batch_size=batch,
            steps=steps * local_replicas,
            epochs=plan.epochs - initial_epoch,
            seed=seed + initial_epoch,
        ).repeat()
    )
    fit_kwargs: dict[str, Any] = {}
    if held_out:
        # Finite and the same length on every worker; no validation_steps, because Keras reuses an
        # exhausted iterator when it is set with a tf.distribute dataset (also on one worker). Its
        # length is unknown to Keras (a generator), so Keras evaluates until the data ends, one
        # step per call (keras_compat.use_in_graph_steps), not one call per steps_per_execution.
        fit_kwargs["validation_data"] = strategy.distribute_datasets_from_function(
            lambda _: data.validation_dataset(
                shard, val_rows, plan.features, plan.label, batch_size=batch
            )
        )

    model.fit(
        train_data,
        epochs=plan.epochs,
        initial_epoch=initial_epoch,
        steps_per_epoch=steps,
        # Last, so that every user callback has run (and changed the logs) before them.
        callbacks=[
            *callbacks,
            checkpoint.StopOnNaN(),
            keras_compat.StopTogether(strategy),
            epoch_checkpoint,
            Heartbeat(os.path.join(assignment.result_dir, HEARTBEAT_FILE)),
            *(
                [
                    ProgressReporter(
                        plan.progress_address, plan.progress_secret, epochs=plan.epochs, steps=steps
                    )
                ]
                if assignment.rank == 0
                else []
            ),
            bookkeeping,
        ],
        shuffle=False,  # the datasets shuffle per epoch themselves
        verbose=2,
        **fit_kwargs,
    )
    raise RuntimeError("Keras' fit returned without calling on_train_end.")
