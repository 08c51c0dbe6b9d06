"""Arrow record batches of one partition -> a worker's shard as flat binary files.

Runs inside the Spark task (no TensorFlow). Conversion is vectorised over whole Arrow batches:
no per-row Python objects, and the task streams batch by batch without holding the shard. The
TensorFlow worker memory-maps the files (``worker/data.py``).

Layout of a shard directory::

    meta.json                   number of rows
    features.f32                dense storage: rows x width float32, row-major
    indptr.i64 indices.i32 values.f32   sparse storage: CSR
    labels.<dtype>              rows x label width
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable
from typing import Any, BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sparkeras.plan import FeatureSpec, LabelSpec

#: Spark's VectorUDT as it travels through Arrow; ``type`` 0 is a sparse vector, 1 a dense one.
VECTOR_ARROW_TYPE = pa.struct(
    [
        pa.field("type", pa.int8(), nullable=False),
        pa.field("size", pa.int32()),
        pa.field("indices", pa.list_(pa.field("element", pa.int32(), nullable=False))),
        pa.field("values", pa.list_(pa.field("element", pa.float64(), nullable=False))),
    ]
)
_SPARSE_VECTOR = 0


#: Per-row sample weights (float32), present when the plan has a weight column.
WEIGHTS_FILE = "weights.f32"


class ShardDataError(ValueError):
    """A row cannot be turned into the tensor the model expects."""


def write_shard(
    batches: Iterable[pa.RecordBatch], directory: str, features: FeatureSpec, label: LabelSpec
) -> int:
    """Stream ``batches`` into ``directory`` and return the number of rows written.

    Examples
    --------
    >>> rows = write_shard(iter(batches), "/tmp/shard", feature_spec, label_spec)  # doctest: +SKIP
    """
    os.makedirs(directory, exist_ok=True)
    names = (
        ["values.f32", "indices.i32", "row_nnz.i64"]
        if features.storage == "sparse"
        else ["features.f32"]
    )
    label_file_name = f"labels.{label.dtype}"
    if label.weight_column is not None:
        names.append(WEIGHTS_FILE)
    rows = 0
    with contextlib.ExitStack() as stack:
        files: dict[str, BinaryIO] = {
            name: stack.enter_context(open(os.path.join(directory, name), "wb"))
            for name in [*names, label_file_name]
        }
        for batch in batches:
            if batch.num_rows == 0:
                continue
            feature_column = batch.column(features.column)
            if features.storage == "sparse":
                row_nnz, cols, values = features_to_coo(feature_column, features)
                files["values.f32"].write(values.tobytes())
                files["indices.i32"].write(cols.astype(np.int32, copy=False).tobytes())
                files["row_nnz.i64"].write(row_nnz.astype(np.int64, copy=False).tobytes())
            else:
                files["features.f32"].write(features_to_dense(feature_column, features).tobytes())
            files[label_file_name].write(
                _labels_to_numpy(batch.column(label.column), label).tobytes()
            )
            if label.weight_column is not None:
                files[WEIGHTS_FILE].write(_weights_to_numpy(batch.column(label.weight_column)))
            rows += batch.num_rows
    if features.storage == "sparse":
        _row_counts_to_indptr(directory)
    with open(os.path.join(directory, "meta.json"), "w") as file:
        json.dump({"rows": rows}, file)
    return rows


def _row_counts_to_indptr(directory: str) -> None:
    counts_path = os.path.join(directory, "row_nnz.i64")
    counts = np.fromfile(counts_path, dtype=np.int64)
    indptr = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    indptr.tofile(os.path.join(directory, "indptr.i64"))
    os.remove(counts_path)


def _check_no_nulls(column: pa.Array, name: str) -> None:
    if column.null_count:
        raise ShardDataError(
            f"Column '{name}' has {column.null_count} null value(s). Fill or drop them first "
            "(for fit, handleInvalid='skip' drops such rows itself)."
        )


def _to_float32(values: np.ndarray, name: str, out: np.ndarray | None = None) -> np.ndarray:
    """``values`` as float32 (written into ``out`` when given), refusing NaN and infinities.

    The check runs after the cast, so a finite double beyond float32's range, which the cast
    turns into an infinity, is refused too instead of being trained on as one.
    """
    with np.errstate(over="ignore", invalid="ignore"):
        if out is None:
            converted = values.astype(np.float32, copy=False)
        else:
            np.copyto(out, values, casting="unsafe")
            converted = out
        # A sum is one pass with no temporary array; it is finite unless a value is NaN or
        # infinite (or, harmlessly, the sum overflows: the exact count below then finds nothing).
        if np.isfinite(converted.sum()):
            return converted
    finite = np.isfinite(converted)
    if not finite.all():
        raise ShardDataError(
            f"Column '{name}' has {int((~finite).sum())} NaN or infinite value(s) (numbers "
            "beyond float32's range, about 3.4e38 in magnitude, count as infinite). Replace or "
            "drop them first (for fit, handleInvalid='skip' drops such rows itself from array "
            "and numeric columns; filter Vector columns yourself)."
        )
    return converted


def _list_parts(column: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Row lengths and the flattened values of a list array (slices and offsets respected)."""
    lengths = pc.list_value_length(column).fill_null(0).to_numpy(zero_copy_only=False)
    flat = column.flatten().to_numpy(zero_copy_only=False)
    return lengths.astype(np.int64, copy=False), flat


def features_to_coo(
    column: pa.Array, spec: FeatureSpec
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-row entry counts, column indices and float32 values of a Vector column (CSR
    without the offsets): how sparse-input models get their rows, in shards and in inference.

    Only Vector columns get here: sparse storage requires one (``validation.feature_spec``).
    """
    _check_no_nulls(column, spec.column)
    lengths, values = _list_parts(column.field("values"))
    values = _to_float32(values, spec.column)
    kinds = column.field("type").to_numpy(zero_copy_only=False)
    is_sparse = kinds == _SPARSE_VECTOR
    if is_sparse.any():
        sizes = column.field("size").to_numpy(zero_copy_only=False)[is_sparse]
        bad = sizes != spec.width
        if bad.any():
            raise ShardDataError(_width_message(spec, int(sizes[bad][0])))
    if (~is_sparse).any():
        _check_widths(lengths[~is_sparse], spec)
    row_starts = np.repeat(np.cumsum(lengths) - lengths, lengths)
    cols = np.arange(len(values), dtype=np.int64) - row_starts
    sparse_entries = np.repeat(is_sparse, lengths)
    if sparse_entries.any():
        cols[sparse_entries] = column.field("indices").flatten().to_numpy(zero_copy_only=False)
    return lengths, cols, values


def features_to_dense(
    column: pa.Array, spec: FeatureSpec, out: np.ndarray | None = None
) -> np.ndarray:
    """A ``rows x width`` float32 matrix; sparse vectors are scattered into zeros.

    ``out``, a float32 array of at least ``rows * width`` values, receives the matrix instead of
    new memory: fresh memory for every batch costs page faults (see ``inference``).
    """
    _check_no_nulls(column, spec.column)
    rows = len(column)
    target = None if out is None else out[: rows * spec.width].reshape(rows, spec.width)
    if spec.kind == "array" or not (column.field("type").to_numpy(zero_copy_only=False) == 0).any():
        source = column if spec.kind == "array" else column.field("values")
        lengths, values = _list_parts(source)
        _check_widths(lengths, spec)
        return _to_float32(values.reshape(rows, spec.width), spec.column, out=target)
    lengths, cols, values = features_to_coo(column, spec)
    if target is None:
        target = np.zeros((rows, spec.width), dtype=np.float32)
    else:
        target.fill(0)
    target[np.repeat(np.arange(rows), lengths), cols] = values
    return target


def _check_widths(lengths: np.ndarray, spec: FeatureSpec) -> None:
    bad = lengths != spec.width
    if bad.any():
        raise ShardDataError(_width_message(spec, int(lengths[bad][0])))


def _width_message(spec: FeatureSpec, found: int) -> str:
    return (
        f"Column '{spec.column}' has a row of width {found}, but the model expects {spec.width} "
        "features. Every row must have the same width as the model's input."
    )


def _weights_to_numpy(column: pa.Array) -> bytes:
    name = "the weight column"
    _check_no_nulls(column, name)
    weights = _to_float32(column.to_numpy(zero_copy_only=False), name)
    if (weights < 0).any():
        raise ShardDataError(f"{name} has {int((weights < 0).sum())} negative weight(s).")
    return weights.tobytes()


def _labels_to_numpy(column: pa.Array, spec: LabelSpec) -> np.ndarray:
    _check_no_nulls(column, spec.column)
    if spec.kind == "scalar":
        values: Any = column.to_numpy(zero_copy_only=False)
        if spec.dtype == "float32":
            values = _to_float32(values, spec.column)
    else:
        label_features = FeatureSpec(column=spec.column, kind=spec.kind, width=spec.width)
        values = features_to_dense(column, label_features)
    return np.ascontiguousarray(values, dtype=np.dtype(spec.dtype))
