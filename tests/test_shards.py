"""Arrow batches -> shard files -> memory-mapped batches, without Spark."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from sparkeras.plan import FeatureSpec, LabelSpec
from sparkeras.shards import VECTOR_ARROW_TYPE, ShardDataError, features_to_dense, write_shard
from sparkeras.worker import data


def vectors(rows: list) -> pa.Array:
    """Spark's Arrow form of VectorUDT: (type, size, indices, values); type 0 is sparse."""
    return pa.array(rows, VECTOR_ARROW_TYPE)


def dense(values):
    return {"type": 1, "size": None, "indices": None, "values": values}


def sparse(size, indices, values):
    return {"type": 0, "size": size, "indices": indices, "values": values}


MIXED = vectors(
    [dense([1.0, 2.0, 3.0]), sparse(3, [2], [5.0]), sparse(3, [], []), dense([0, 0, 7.0])]
)
EXPECTED = np.array([[1, 2, 3], [0, 0, 5], [0, 0, 0], [0, 0, 7]], dtype=np.float32)


def test_mixed_dense_and_sparse_vectors_become_a_dense_matrix():
    spec = FeatureSpec("f", "vector", 3)
    np.testing.assert_array_equal(features_to_dense(MIXED, spec), EXPECTED)
    # A sliced batch (non-zero offsets) converts the same way.
    np.testing.assert_array_equal(features_to_dense(MIXED.slice(1, 2), spec), EXPECTED[1:3])


@pytest.mark.parametrize("storage", ["dense", "sparse"])
def test_shard_round_trip_through_files(tmp_path, storage):
    features = FeatureSpec("f", "vector", 3, storage)
    label = LabelSpec("l", "scalar", 1, "int32")
    batch = pa.RecordBatch.from_arrays([MIXED, pa.array([1, 0, 1, 0])], ["f", "l"])
    rows = write_shard(iter([batch, batch.slice(0, 2)]), str(tmp_path), features, label)
    assert rows == 6
    shard = data.open_shard(str(tmp_path), features, label)
    got_features, got_labels = shard.take(np.array([0, 1, 3, 4]))
    if storage == "sparse":
        got_features = np.asarray(__import__("tensorflow").sparse.to_dense(got_features))
    np.testing.assert_array_equal(got_features, EXPECTED[[0, 1, 3, 0]])
    np.testing.assert_array_equal(got_labels, [1, 0, 0, 1])


def test_array_features_and_array_labels(tmp_path):
    features = FeatureSpec("f", "array", 2)
    label = LabelSpec("l", "array", 2, "float32")
    batch = pa.RecordBatch.from_pydict(
        {"f": [[1.0, 2.0], [3.0, 4.0]], "l": [[0.5, 1.5], [2.5, 3.5]]}
    )
    assert write_shard(iter([batch]), str(tmp_path), features, label) == 2
    shard = data.open_shard(str(tmp_path), features, label)
    np.testing.assert_array_equal(shard.features, [[1, 2], [3, 4]])
    np.testing.assert_array_equal(shard.labels, [[0.5, 1.5], [2.5, 3.5]])


def test_wrong_width_and_nulls_are_clear_errors(tmp_path):
    features = FeatureSpec("f", "vector", 4)
    label = LabelSpec("l", "scalar", 1, "float32")
    batch = pa.RecordBatch.from_arrays([MIXED, pa.array([1.0, 0, 1, 0])], ["f", "l"])
    with pytest.raises(
        ShardDataError, match="Column 'f' has a row of width 3, but the model expects 4"
    ):
        write_shard(iter([batch]), str(tmp_path), features, label)
    nulls = pa.RecordBatch.from_pydict({"f": [[1.0], None], "l": [1.0, 0.0]})
    with pytest.raises(ShardDataError, match=r"Column 'f' has 1 null.*handleInvalid='skip'"):
        write_shard(iter([nulls]), str(tmp_path), FeatureSpec("f", "array", 1), label)
    # Vector values cannot be checked on the driver without densifying: the shard writer does.
    not_finite = pa.RecordBatch.from_arrays([MIXED, pa.array([1.0, np.nan, 1, 0])], ["f", "l"])
    with pytest.raises(ShardDataError, match=r"Column 'l' has 1 NaN or infinite value"):
        write_shard(iter([not_finite]), str(tmp_path), FeatureSpec("f", "vector", 3), label)
    bad_vectors = vectors([dense([np.nan, 1.0, 2.0]), sparse(3, [1], [np.inf])])
    batch = pa.RecordBatch.from_arrays([bad_vectors, pa.array([1.0, 0.0])], ["f", "l"])
    for storage in ("dense", "sparse"):
        with pytest.raises(ShardDataError, match=r"Column 'f' has 2 NaN or infinite value"):
            write_shard(iter([batch]), str(tmp_path), FeatureSpec("f", "vector", 3, storage), label)


@pytest.mark.parametrize("storage", ["dense", "sparse"])
def test_doubles_beyond_float32_range_are_refused_not_trained_on_as_infinity(tmp_path, storage):
    """Shards hold float32: 1e39 would become inf, so it is refused like inf, with its reason."""
    features = FeatureSpec("f", "vector", 3, storage)
    label = LabelSpec("l", "scalar", 1, "float32")
    largest = float(np.finfo(np.float32).max)
    fine = vectors([dense([largest, -largest, 1.0]), sparse(3, [0], [-largest])])
    batch = pa.RecordBatch.from_arrays([fine, pa.array([largest, 0.0])], ["f", "l"])
    assert write_shard(iter([batch]), str(tmp_path), features, label) == 2
    too_large = vectors([dense([1e39, 1.0, 2.0]), sparse(3, [1], [-1e39])])
    batch = pa.RecordBatch.from_arrays([too_large, pa.array([1.0, 0.0])], ["f", "l"])
    with pytest.raises(
        ShardDataError, match=r"Column 'f' has 2 NaN or infinite value.*beyond float32's range"
    ):
        write_shard(iter([batch]), str(tmp_path), features, label)
    batch = pa.RecordBatch.from_arrays([fine, pa.array([1e39, 0.0])], ["f", "l"])
    with pytest.raises(ShardDataError, match=r"Column 'l' has 1 NaN or infinite value"):
        write_shard(iter([batch]), str(tmp_path), features, label)


def test_epoch_order_visits_every_row_and_tops_up():
    rng = np.random.default_rng(0)
    rows = np.arange(10)
    order = data.epoch_order(rows, 16, rng)
    assert len(order) == 16
    assert set(order) == set(rows)
    assert sorted(data.epoch_order(rows, 10, rng)) == list(rows)


def test_validation_split_is_disjoint_and_complete():
    train, held_out = data.split_validation(20, 5, seed=1)
    assert len(held_out) == 5
    assert sorted([*train, *held_out]) == list(range(20))


def test_training_dataset_yields_exactly_epochs_times_steps_batches(tmp_path):
    features = FeatureSpec("f", "array", 2)
    label = LabelSpec("l", "scalar", 1, "float32")
    batch = pa.RecordBatch.from_pydict({"f": [[float(i), 0.0] for i in range(7)], "l": [0.0] * 7})
    write_shard(iter([batch]), str(tmp_path), features, label)
    shard = data.open_shard(str(tmp_path), features, label)
    dataset = data.training_dataset(
        shard, np.arange(7), features, label, batch_size=3, steps=3, epochs=2, seed=0
    )
    batches = [x.numpy() for x, _ in dataset]
    assert len(batches) == 6
    assert all(b.shape == (3, 2) for b in batches)
    first_epoch = np.concatenate(batches[:3])[:, 0]
    assert set(first_epoch) == set(range(7))  # 9 slots, 7 rows: all seen, 2 repeated


def test_large_shards_are_gathered_from_their_files_with_the_same_batches(tmp_path, monkeypatch):
    features = FeatureSpec("f", "array", 3)
    label = LabelSpec("l", "scalar", 1, "float32", weight_column="w")
    rows = 50
    batch = pa.RecordBatch.from_pydict(
        {
            "f": [[float(i), float(-i), 0.5] for i in range(rows)],
            "l": [float(i % 2) for i in range(rows)],
            "w": [float(i) / rows for i in range(rows)],
        }
    )
    write_shard(iter([batch]), str(tmp_path), features, label)
    shard = data.open_shard(str(tmp_path), features, label)

    def batches():
        dataset = data.training_dataset(
            shard, np.arange(rows), features, label, batch_size=8, steps=7, epochs=2, seed=3
        )
        return [[part.numpy() for part in element] for element in dataset]

    from_tensors = batches()
    monkeypatch.setattr(data, "TENSOR_SHARD_BYTES", 0)  # every shard counts as large
    from_files = batches()
    assert len(from_files) == len(from_tensors) == 14
    for got, expected in zip(from_files, from_tensors, strict=True):
        assert [part.shape for part in got] == [(8, 3), (8,), (8,)]
        for got_part, expected_part in zip(got, expected, strict=True):
            np.testing.assert_array_equal(got_part, expected_part)
    np.testing.assert_array_equal(from_files[0][0][:, 0], -from_files[0][0][:, 1])  # rows intact


def test_long_labels_keep_values_beyond_int32(tmp_path):
    features = FeatureSpec("f", "array", 1)
    label = LabelSpec("l", "scalar", 1, "int64")
    batch = pa.RecordBatch.from_pydict({"f": [[1.0], [2.0]], "l": [2**31 + 5, -(2**40)]})
    assert write_shard(iter([batch]), str(tmp_path), features, label) == 2
    shard = data.open_shard(str(tmp_path), features, label)
    assert shard.labels.tolist() == [2**31 + 5, -(2**40)]
