"""Each task's TensorFlow gets the task's GPUs and CPUs, and nothing more."""

from __future__ import annotations

import pytest
from conftest import array_frame, binary_model, separable

from sparkeras.devices import tensorflow_environment, thread_counts


def test_assigned_gpus_are_the_only_visible_ones_and_memory_grows():
    assert tensorflow_environment(["2", "5"], {"CUDA_VISIBLE_DEVICES": "0,1,2,3,4,5"}) == {
        "CUDA_VISIBLE_DEVICES": "2,5",
        "TF_FORCE_GPU_ALLOW_GROWTH": "true",
    }


def test_user_choice_of_memory_growth_is_kept():
    environment = tensorflow_environment(["0"], {"TF_FORCE_GPU_ALLOW_GROWTH": "false"})
    assert environment["TF_FORCE_GPU_ALLOW_GROWTH"] == "false"


def test_a_task_without_gpus_sees_none_unless_the_user_chose_some():
    assert tensorflow_environment([], {}) == {"CUDA_VISIBLE_DEVICES": ""}
    assert tensorflow_environment([], {"CUDA_VISIBLE_DEVICES": "1"}) == {
        "CUDA_VISIBLE_DEVICES": "1"
    }


def test_threads_follow_the_task_cpus_unless_requested():
    assert thread_counts(0, task_cpus=1) == (1, 1)
    assert thread_counts(0, task_cpus=4) == (4, 4)
    assert thread_counts(3, task_cpus=1) == (3, 3)
    assert thread_counts(1, task_cpus=1, minimum_inter=2) == (1, 2)


def test_negative_thread_count_is_rejected():
    from sparkeras import SparkKerasEstimator

    with pytest.raises(ValueError, match="intraOpThreads must be >= 0, got -1"):
        SparkKerasEstimator(intraOpThreads=-1)


def test_a_cpu_only_task_hides_gpus_and_uses_the_requested_threads(spark):
    from sparkeras import SparkKerasEstimator

    features, labels = separable(1_000, 8)
    fitted = SparkKerasEstimator(
        model=binary_model(8), numWorkers=2, epochs=4, batchSize=64, intraOpThreads=2
    ).fit(array_frame(spark, features, labels))

    for report in fitted.workerReports:
        assert report["task_gpus"] == []  # local[2] schedules no GPUs
        assert report["cuda_visible_devices"] == ""
        assert report["gpus"] == []
        assert report["intra_op_threads"] == 2
        assert report["peak_memory_mib"] > 100  # TensorFlow alone takes more
    assert fitted.history["accuracy"][-1] >= 0.9  # 0.96-0.98 over four init seeds
