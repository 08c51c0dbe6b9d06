"""Planning arithmetic and driver-side limits, without Spark."""

from __future__ import annotations

import os

import pytest

from sparkeras import launch
from sparkeras.plan import (
    FeatureSpec,
    LabelSpec,
    TrainingPlan,
    WorkerAssignment,
    asynchronous_steps_per_epoch,
    per_replica_batch_size,
    step_chunks,
    steps_per_epoch,
    steps_per_execution,
    task_roles,
    validation_rows_per_worker,
)


def test_steps_cover_the_largest_shard():
    assert steps_per_epoch([100, 37], rows_per_step=32, override=None) == 4
    assert steps_per_epoch([5, 595], rows_per_step=16, override=None) == 38
    assert steps_per_epoch([3], rows_per_step=64, override=None) == 1
    assert steps_per_epoch([100, 37], rows_per_step=32, override=9) == 9


def test_steps_per_execution_honours_the_param_then_the_compiled_model():
    assert steps_per_execution(0, 1, "mirrored") == 32  # neither set: sparkeras' default
    assert steps_per_execution(0, 8, "mirrored") == 8  # compiled with steps_per_execution=8
    assert steps_per_execution(1, 8, "mirrored") == 1  # the param wins
    assert steps_per_execution(5, 1, "mirrored") == 5
    assert steps_per_execution(5, 8, "mirrored", sparse_inputs=True) == 1
    # Parameter servers: one step per scheduled function unless asked; sparse inputs are fine.
    assert steps_per_execution(0, 1, "parameter_server") == 1
    assert steps_per_execution(0, 8, "parameter_server") == 8
    assert steps_per_execution(16, 1, "parameter_server", sparse_inputs=True) == 16


def test_negative_steps_per_execution_is_rejected_when_set():
    from sparkeras import SparkKerasEstimator

    with pytest.raises(ValueError, match="stepsPerExecution must be >= 0, got -2"):
        SparkKerasEstimator(stepsPerExecution=-2)


def test_step_chunks_cover_the_epoch_with_the_remainder_last():
    assert step_chunks(29, 4) == [4] * 7 + [1]
    assert step_chunks(64, 32) == [32, 32]
    assert step_chunks(5, 32) == [5]  # capped at the epoch
    assert step_chunks(3, 1) == [1, 1, 1]


def test_batch_is_split_across_replicas():
    assert per_replica_batch_size(128, 2) == 64
    assert per_replica_batch_size(129, 2) == 64
    with pytest.raises(ValueError, match=r"batchSize=1 is smaller than the 2 training replicas"):
        per_replica_batch_size(1, 2)


def test_validation_rows_are_equal_on_every_worker_and_leave_training_rows():
    assert validation_rows_per_worker([500, 480], 0.2) == 98
    assert validation_rows_per_worker([500, 480], 0.0) == 0
    assert validation_rows_per_worker([10, 2], 0.5) == 1  # the small shard keeps one row


def example_plan(**changes) -> TrainingPlan:
    values = dict(
        model_bytes=b"\x00model",
        custom_objects_bytes=b"objects",
        callbacks_bytes=b"callbacks",
        features=FeatureSpec("f", "vector", 7, "sparse"),
        label=LabelSpec("l", "scalar", 1, "int32"),
        num_workers=2,
        strategy="mirrored",
        epochs=3,
        global_batch_size=64,
        steps_per_epoch=None,
        validation_fraction=0.1,
        seed=5,
        safe_mode=True,
    )
    return TrainingPlan(**{**values, **changes})


def test_plan_and_assignment_survive_json():
    plan = example_plan()
    assert TrainingPlan.from_json(plan.to_json()) == plan
    assignment = WorkerAssignment(
        1, ["worker", "worker"], ["a:1", "b:2"], [10, 12], ["/s0", "/s1"], "/r", 2, "e:3"
    )
    assert WorkerAssignment.from_json(assignment.to_json()) == assignment
    assert assignment.shard_dir == "/s1"
    assert assignment.tf_config == {
        "cluster": {"worker": ["a:1", "b:2"]},
        "task": {"type": "worker", "index": 1},
    }


def test_a_checkpoint_directory_not_every_executor_sees_is_replaced_by_private_ones(tmp_path):
    """Workers resuming from different epochs would hang or diverge: none resumes instead."""
    shared = tmp_path / "fit-1"
    shared.mkdir()
    assert launch._can_see(str(shared))
    assert not launch._can_see(str(tmp_path / "on-the-driver-only"))
    assert launch._can_see("hdfs://namenode/checkpoints/fit-1")  # TensorFlow's to judge
    plan = example_plan(checkpoint_dir=str(shared))
    private = TrainingPlan.from_json(launch._private_checkpoints(plan.to_json(), str(tmp_path)))
    assert private.checkpoint_dir == str(tmp_path / "checkpoints")
    assert os.path.isdir(private.checkpoint_dir)
    assert private == example_plan(checkpoint_dir=private.checkpoint_dir)  # nothing else changed


def test_parameter_server_roles_and_tf_config():
    roles = task_roles("parameter_server", num_workers=2, num_ps=1)
    assert roles == ["chief", "worker", "worker", "ps"]
    addresses = ["c:1", "w:1", "w:2", "p:1"]
    second_worker = WorkerAssignment(2, roles, addresses, [9, 50, 51, 0], ["/d"] * 4, "/r")
    assert second_worker.tf_config == {
        "cluster": {"chief": ["c:1"], "worker": ["w:1", "w:2"], "ps": ["p:1"]},
        "task": {"type": "worker", "index": 1},
    }
    assert second_worker.of_role("worker") == [1, 2]
    assert WorkerAssignment(3, roles, addresses, [0] * 4, ["/d"] * 4, "/r").task_index == 0
    assert task_roles("mirrored", num_workers=3, num_ps=0) == ["worker"] * 3
    # One epoch is one pass over all training rows, whichever worker takes each step.
    assert asynchronous_steps_per_epoch(101, batch_size=10, override=None) == 11
    assert asynchronous_steps_per_epoch(101, batch_size=10, override=3) == 3


def test_partition_keys_cover_every_partition():
    from sparkeras.partitioning import partition_keys, spark_hash_int

    for partitions in (1, 2, 3, 8):
        keys = partition_keys(partitions)
        assert sorted(spark_hash_int(key) % partitions for key in keys) == list(range(partitions))


class _Conf:
    def __init__(self, value: str | None) -> None:
        self.value = value

    def get(self, key: str, default: str) -> str:
        assert key == "spark.driver.maxResultSize"
        return default if self.value is None else self.value


class _Session:
    def __init__(self, value: str | None) -> None:
        self.conf = _Conf(value)


@pytest.mark.parametrize(
    ("setting", "expected"),
    [
        (None, 2**30),
        ("1g", 2**30),
        ("512m", 2**29),
        ("4GB", 2**32),
        ("1048576", 2**20),
        ("0", None),
        ("lots", None),
    ],
)
def test_max_result_size_is_read_like_spark(setting, expected):
    assert launch.max_result_bytes(_Session(setting)) == expected


def test_a_model_too_large_to_return_to_the_driver_is_refused_before_training():
    launch.check_result_size(_Session("1g"), 2**30 - 1)
    launch.check_result_size(_Session("0"), 2**40)  # no limit
    with pytest.raises(ValueError, match=r"2048 MiB before training.*caps at 1024 MiB.*'0' for"):
        launch.check_result_size(_Session(None), 2 * 2**30)
