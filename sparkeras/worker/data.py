"""A worker's shard (memory-mapped files written by ``sparkeras.shards``) -> ``tf.data`` pipelines.

Every worker runs exactly ``steps`` steps per epoch (collectives need it). Each epoch is a fresh
permutation of the worker's training rows, topped up with a resample of the same rows when the
shard is smaller than ``steps x batch``: every row is seen at least once per epoch.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterator

import numpy as np
import tensorflow as tf

from sparkeras.plan import FeatureSpec, LabelSpec
from sparkeras.shards import WEIGHTS_FILE
from sparkeras.tensors import as_tensor

#: Largest dense shard (feature bytes) copied into tensors for training; larger ones are
#: gathered from their memory-mapped files (see :func:`training_dataset`).
TENSOR_SHARD_BYTES = 256 * 1024 * 1024


@dataclasses.dataclass(frozen=True)
class Shard:
    """Memory-mapped arrays of one worker's rows; ``features`` is dense or a CSR triple."""

    features: np.ndarray | tuple[np.ndarray, np.ndarray, np.ndarray]
    labels: np.ndarray
    width: int
    weights: np.ndarray | None = None

    @property
    def rows(self) -> int:
        return len(self.labels)

    @property
    def sparse(self) -> bool:
        return isinstance(self.features, tuple)

    def take(self, index: np.ndarray) -> tuple:
        """Rows ``index`` as (features, labels[, weights]); sparse features as a
        ``tf.SparseTensor``."""
        weights = () if self.weights is None else (self.weights[index],)
        return (self._features(index), self.labels[index], *weights)

    def _features(self, index: np.ndarray) -> object:
        if not self.sparse:
            return self.features[index]
        indptr, indices, values = self.features
        starts, ends = indptr[index], indptr[index + 1]
        lengths = ends - starts
        positions = np.repeat(starts - np.cumsum(lengths) + lengths, lengths) + np.arange(
            lengths.sum()
        )
        row_ids = np.repeat(np.arange(len(index), dtype=np.int64), lengths)
        coordinates = np.stack([row_ids, indices[positions].astype(np.int64)], axis=1)
        sparse = tf.SparseTensor(coordinates, values[positions], (len(index), self.width))
        return tf.sparse.reorder(sparse)


def open_shard(directory: str, features: FeatureSpec, label: LabelSpec) -> Shard:
    """Memory-map a shard directory (no copy until rows are gathered).

    The maps are copy-on-write (``mode="c"``): nothing ever writes to them, but only a writable
    array can lend its memory to a tensor (:func:`training_dataset`).
    """
    with open(os.path.join(directory, "meta.json")) as file:
        rows = json.load(file)["rows"]

    def mapped(name: str, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
        if 0 in shape:
            return np.zeros(shape, dtype=dtype)
        return np.memmap(os.path.join(directory, name), dtype=dtype, mode="c", shape=shape)

    label_shape = (rows,) if label.kind == "scalar" else (rows, label.width)
    labels = mapped(f"labels.{label.dtype}", label.dtype, label_shape)
    weights = None if label.weight_column is None else mapped(WEIGHTS_FILE, "float32", (rows,))
    if features.storage == "sparse":
        indptr = np.fromfile(os.path.join(directory, "indptr.i64"), dtype=np.int64)
        nnz = int(indptr[-1])
        csr = (
            indptr,
            mapped("indices.i32", "int32", (nnz,)),
            mapped("values.f32", "float32", (nnz,)),
        )
        return Shard(csr, labels, features.width, weights)
    dense = mapped("features.f32", "float32", (rows, features.width))
    return Shard(dense, labels, features.width, weights)


def split_validation(rows: int, validation_rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Row indices for training and validation; the validation sample is fixed for the whole fit."""
    order = np.random.default_rng(seed).permutation(rows)
    return np.sort(order[validation_rows:]), np.sort(order[:validation_rows])


def epoch_order(rows: np.ndarray, total: int, rng: np.random.Generator) -> np.ndarray:
    """A permutation of ``rows`` topped up (or cut) to ``total`` entries."""
    order = rng.permutation(rows)
    if total > len(order):
        order = np.concatenate([order, rng.choice(rows, total - len(order))])
    return order[:total]


def _signature(shard: Shard, features: FeatureSpec, label: LabelSpec) -> tuple:
    feature_spec = (
        tf.SparseTensorSpec((None, features.width), tf.float32)
        if shard.sparse
        else tf.TensorSpec((None, features.width), tf.float32)
    )
    label_shape = (None,) if label.kind == "scalar" else (None, label.width)
    weights = () if label.weight_column is None else (tf.TensorSpec((None,), tf.float32),)
    return (feature_spec, tf.TensorSpec(label_shape, tf.as_dtype(label.dtype)), *weights)


def training_dataset(
    shard: Shard,
    rows: np.ndarray,
    features: FeatureSpec,
    label: LabelSpec,
    *,
    batch_size: int,
    steps: int,
    epochs: int,
    seed: int,
) -> tf.data.Dataset:
    """Exactly ``epochs x steps`` batches of ``batch_size`` rows.

    Dense batches are gathered without Python's ``from_generator``: tearing such an iterator
    down stalled the end of ``fit`` by seconds. A shard up to ``TENSOR_SHARD_BYTES`` is wrapped
    in tensors without a copy (DLPack over the memory maps; a fresh copy of a 200 MB shard took
    0.5 s, mostly page faults) and gathered by TensorFlow ops, the fastest path (no Python per
    batch). A larger one is gathered batch by batch from the memory-mapped files by a
    ``numpy_function`` call, run in parallel by ``tf.data``: a tensor over 2 GB cannot be
    captured by a dataset at all, and the earlier tensor copy peaked at 3x the shard's size.
    The ``numpy_function`` way makes a small MLP's epochs about 15 % slower, so small shards
    keep the tensors.
    """
    rng = np.random.default_rng(seed)
    orders = np.concatenate(
        [
            epoch_order(rows, steps * batch_size, rng).reshape(steps, batch_size)
            for _ in range(epochs)
        ]
    )
    orders.sort(axis=1)  # ascending reads within a batch are kinder to memory
    if shard.sparse:
        return tf.data.Dataset.from_generator(
            lambda: (shard.take(index) for index in orders),
            output_signature=_signature(shard, features, label),
        ).prefetch(tf.data.AUTOTUNE)
    columns = [shard.features, shard.labels]
    if shard.weights is not None:
        columns.append(shard.weights)
    indices = tf.data.Dataset.from_tensor_slices(orders.astype(np.int32))
    if shard.features.nbytes <= TENSOR_SHARD_BYTES:
        tensors = [as_tensor(column) for column in columns]

        def batch(index: tf.Tensor) -> tuple:
            return tuple(tf.gather(tensor, index) for tensor in tensors)

    else:
        signature = _signature(shard, features, label)

        def gather(index: np.ndarray) -> list[np.ndarray]:
            return [np.asarray(column[index]) for column in columns]

        def batch(index: tf.Tensor) -> tuple:
            tensors = tf.numpy_function(
                gather, [index], [spec.dtype for spec in signature], stateful=False
            )
            for tensor, spec in zip(tensors, signature, strict=True):
                tensor.set_shape(spec.shape)
            return tuple(tensors)

    return indices.map(batch, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def validation_dataset(
    shard: Shard, rows: np.ndarray, features: FeatureSpec, label: LabelSpec, *, batch_size: int
) -> tf.data.Dataset:
    """The held-out rows in order; every worker holds the same number, so steps match."""

    def batches() -> Iterator[tuple]:
        for start in range(0, len(rows), batch_size):
            yield shard.take(rows[start : start + batch_size])

    dataset = tf.data.Dataset.from_generator(
        batches, output_signature=_signature(shard, features, label)
    )
    return dataset.prefetch(tf.data.AUTOTUNE)


def staged_training_dataset(
    shard_dirs: list[str],
    features: FeatureSpec,
    label: LabelSpec,
    *,
    batch_size: int,
    seed: int,
) -> tf.data.Dataset:
    """An endless stream of shuffled ``batch_size`` batches of the worker's own shard.

    For ``ParameterServerStrategy``: the coordinator traces this once and every worker runs it,
    so the shard is chosen at run time by the worker's index, and read by TensorFlow ops from the
    files its Spark task wrote (``shard_dirs[i]`` is worker ``i``'s directory on its own host).
    """
    worker = tf.distribute.coordinator.experimental_get_current_worker_index()
    directory = tf.gather(tf.constant(shard_dirs), worker)

    def read(name: str, dtype: tf.DType) -> tf.Tensor:
        return tf.io.decode_raw(tf.io.read_file(tf.strings.join([directory, name], "/")), dtype)

    labels = read(f"labels.{label.dtype}", tf.as_dtype(label.dtype))
    if label.kind != "scalar":
        labels = tf.reshape(labels, [-1, label.width])
    weights = [] if label.weight_column is None else [read(WEIGHTS_FILE, tf.float32)]
    if features.storage == "sparse":
        csr = (
            read("indptr.i64", tf.int64),
            read("indices.i32", tf.int32),
            read("values.f32", tf.float32),
        )

        def take(index: tf.Tensor) -> tuple:
            rest = (tf.gather(tensor, index) for tensor in [labels, *weights])
            return (_sparse_rows(*csr, index, features.width), *rest)

    else:
        values = tf.reshape(read("features.f32", tf.float32), [-1, features.width])

        def take(index: tf.Tensor) -> tuple:
            return tuple(tf.gather(tensor, index) for tensor in [values, labels, *weights])

    rows = tf.shape(labels, out_type=tf.int64)[0]
    order = tf.data.Dataset.range(rows).shuffle(rows, seed=seed, reshuffle_each_iteration=True)
    batches = order.repeat().batch(batch_size, drop_remainder=True)
    return batches.map(take, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def _sparse_rows(
    indptr: tf.Tensor, indices: tf.Tensor, values: tf.Tensor, index: tf.Tensor, width: int
) -> tf.SparseTensor:
    """Rows ``index`` of a CSR matrix as a ``tf.SparseTensor``, with TensorFlow ops only."""
    positions = tf.ragged.range(tf.gather(indptr, index), tf.gather(indptr, index + 1))
    flat = positions.flat_values
    coordinates = tf.stack(
        [positions.value_rowids(), tf.cast(tf.gather(indices, flat), tf.int64)], axis=1
    )
    shape = tf.stack([tf.size(index, out_type=tf.int64), tf.constant(width, tf.int64)])
    return tf.sparse.reorder(tf.SparseTensor(coordinates, tf.gather(values, flat), shape))
