"""Batched inference inside Spark tasks: Arrow batches in, the same batches plus predictions out.

The model is rebuilt once per Python worker and cached by the SHA-256 of its bytes, so a different
model can never be served from a stale cache entry.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import sys
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import numpy as np
import pyarrow as pa
from pyspark.ml.linalg import VectorUDT
from pyspark.sql import Column
from pyspark.sql.types import ArrayType, DoubleType, StructField, StructType

from sparkeras.devices import limit_threads, task_gpu_addresses, tensorflow_environment
from sparkeras.plan import FeatureSpec
from sparkeras.shards import VECTOR_ARROW_TYPE, features_to_dense

_MODEL_CACHE: dict[str, Any] = {}

#: Arrow-native scalar UDFs arrived in PySpark 4.1; older versions use ``mapInArrow``.
HAS_ARROW_UDF = hasattr(__import__("pyspark.sql.functions", fromlist=["arrow_udf"]), "arrow_udf")


def model_key(model_bytes: bytes) -> str:
    """Cache key of a serialised model."""
    return hashlib.sha256(model_bytes).hexdigest()


def _cached_model(
    key: str, model_bytes: bytes, custom_objects_bytes: bytes, safe_mode: bool
) -> Any:
    if key not in _MODEL_CACHE:
        tf = _tensorflow_in_task()
        # Each new model in a long-lived Python worker traces its predict function once; TF
        # counts those traces together and warns about "retracing" that is expected here.
        tf.get_logger().setLevel("ERROR")

        from sparkeras.serialization import model_from_bytes, objects_from_bytes

        _MODEL_CACHE.clear()  # one model per worker process at a time bounds memory
        custom_objects = objects_from_bytes(custom_objects_bytes)
        _MODEL_CACHE[key] = model_from_bytes(model_bytes, custom_objects, safe_mode=safe_mode)
    return _MODEL_CACHE[key]


def _tensorflow_in_task() -> Any:
    """Import TensorFlow limited to the task's CPUs and GPUs (see ``sparkeras.devices``).

    Several Python workers share an executor's cores and GPUs. The limits only take effect on
    TensorFlow's first import in this Python worker; a worker where it already ran keeps them.
    """
    from pyspark import TaskContext

    context = TaskContext.get()
    if context is not None and "tensorflow" not in sys.modules:
        os.environ.update(tensorflow_environment(task_gpu_addresses(context), os.environ))
    with _native_stderr_silenced():  # TensorFlow's import banner would reach the console
        import keras  # noqa: F401
        import tensorflow as tf

    if context is not None:
        with contextlib.suppress(RuntimeError):  # TensorFlow already ran in this worker
            limit_threads(tf, 0, context.cpus())
    return tf


@contextlib.contextmanager
def _native_stderr_silenced() -> Iterator[None]:
    """Send file descriptor 2 to /dev/null (C++ logging ignores ``sys.stderr``)."""
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


@dataclasses.dataclass(frozen=True)
class OutputSpec:
    """Which prediction columns ``transform`` writes; an empty column name disables that column.

    ``classification`` follows Spark's own classifiers: ``probability`` and ``rawPrediction``
    vectors and a double ``prediction`` label. A sigmoid output gives ``[1 - p, p]`` and raw
    scores ``[-logit, logit]``; a softmax output gives its probabilities and their logarithms.
    ``regression`` writes the model's output as a double (one unit) or an array of doubles.
    """

    mode: str
    width: int
    prediction_col: str
    raw_prediction_col: str = ""
    probability_col: str = ""
    #: Multi-output models ("multi_output" mode): one array column per output,
    #: ``{prediction_col}_{name}``.
    output_names: tuple[str, ...] = ()
    output_widths: tuple[int, ...] = ()

    @property
    def widths(self) -> tuple[int, ...]:
        """Width of each model output."""
        return self.output_widths if self.mode == "multi_output" else (self.width,)

    def fields(self) -> list[StructField]:
        """The Spark fields appended to the input schema."""
        if self.mode == "multi_output":
            return [
                StructField(f"{self.prediction_col}_{name}", ArrayType(DoubleType(), False))
                for name in self.output_names
            ]
        vector_fields = [
            StructField(name, VectorUDT())
            for name in (self.raw_prediction_col, self.probability_col)
            if self.mode == "classification" and name
        ]
        if not self.prediction_col:
            return vector_fields
        if self.mode == "classification" or self.width == 1:
            return [*vector_fields, StructField(self.prediction_col, DoubleType())]
        return [StructField(self.prediction_col, ArrayType(DoubleType(), containsNull=False))]

    def columns(
        self, outputs_per_head: list[np.ndarray], vectors_as_arrays: bool = False
    ) -> list[pa.Array]:
        """Arrow arrays for :meth:`fields`, from each model output's ``rows x width`` values.

        Vector columns are Arrow's form of Spark's VectorUDT, or plain lists of doubles when
        ``vectors_as_arrays`` (the JVM then makes them vectors with ``array_to_vector``).
        """
        if self.mode == "multi_output":
            return [_doubles(values, values.shape[1], as_lists=True) for values in outputs_per_head]
        outputs = outputs_per_head[0]
        if self.mode != "classification":
            return [_doubles(outputs, self.width)] if self.prediction_col else []
        if self.width == 1:
            positive = np.clip(outputs[:, 0], _EPSILON, 1 - _EPSILON)
            probability = np.stack([1 - positive, positive], axis=1)
            logit = np.log(positive) - np.log1p(-positive)
            raw = np.stack([-logit, logit], axis=1)
        else:
            probability = outputs
            raw = np.log(np.clip(outputs, _EPSILON, None))
        vectors = (
            partial(_doubles, width=raw.shape[1], as_lists=True)
            if vectors_as_arrays
            else _dense_vectors
        )
        columns = [
            vectors(values)
            for name, values in (
                (self.raw_prediction_col, raw),
                (self.probability_col, probability),
            )
            if name
        ]
        if self.prediction_col:
            columns.append(pa.array(probability.argmax(axis=1).astype(np.float64), pa.float64()))
        return columns


_EPSILON = 1e-12


@dataclasses.dataclass(frozen=True)
class BatchPredictor:
    """Everything an executor needs to predict, as plain values shipped in the task closure."""

    model_bytes: bytes
    custom_objects_bytes: bytes
    safe_mode: bool
    features: FeatureSpec
    output: OutputSpec
    batch_size: int

    def _model(self) -> Any:
        return _cached_model(
            model_key(self.model_bytes), self.model_bytes, self.custom_objects_bytes, self.safe_mode
        )

    def map_in_arrow_function(
        self,
    ) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
        """A ``mapInArrow`` function that appends the output columns to every batch.

        Used where Spark has no Arrow UDFs (before 4.1); see :meth:`columns`.
        """
        names = [field.name for field in self.output.fields()]

        def predict(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
            model = self._model()
            for batch in batches:
                outputs = _predict(model, batch.column(self.features.column), self)
                for name, column in zip(names, self.output.columns(outputs), strict=True):
                    batch = batch.append_column(name, column)
                yield batch

        return predict

    def columns(self) -> list[Column]:
        """The output columns as expressions over one Arrow UDF on the features column.

        Only the features travel to Python and only the predictions come back (``mapInArrow``
        would ship every column both ways), which makes transform about a third faster.
        """
        from pyspark.ml.functions import array_to_vector
        from pyspark.sql.functions import arrow_udf, col

        fields = self.output.fields()
        result_type = StructType(
            [
                StructField(
                    field.name,
                    ArrayType(DoubleType(), False)
                    if isinstance(field.dataType, VectorUDT)
                    else field.dataType,
                    nullable=False,
                )
                for field in fields
            ]
        )

        def predict(arrays: Iterator[pa.Array]) -> Iterator[pa.Array]:
            model = self._model()
            for array in arrays:
                outputs = _predict(model, array, self)
                yield pa.StructArray.from_arrays(
                    self.output.columns(outputs, vectors_as_arrays=True), names=result_type.names
                )

        udf = arrow_udf(predict, result_type)  # an iterator UDF, by its type hints
        predictions = udf(col(self.features.column))
        return [
            (
                array_to_vector(predictions[field.name])
                if isinstance(field.dataType, VectorUDT)
                else predictions[field.name]
            ).alias(field.name)
            for field in fields
        ]


def _predict(model: Any, column: pa.Array, spec: BatchPredictor) -> list[np.ndarray]:
    """The model's outputs, one ``rows x width`` array per output, for a features column."""
    output, batch_size = spec.output, spec.batch_size
    inputs = features_to_dense(column, spec.features)
    outputs = [np.zeros((len(inputs), width)) for width in output.widths]
    for start in range(0, len(inputs), batch_size):
        chunk = inputs[start : start + batch_size]
        predicted = model.predict_on_batch(_pad_rows(chunk, batch_size))
        if isinstance(predicted, dict):
            predicted = [predicted[name] for name in output.output_names]
        heads = predicted if isinstance(predicted, (list, tuple)) else [predicted]
        for values, head, width in zip(outputs, heads, output.widths, strict=True):
            values[start : start + len(chunk)] = np.asarray(head)[: len(chunk)].reshape(-1, width)
    return outputs


def _pad_rows(chunk: np.ndarray, batch_size: int) -> np.ndarray:
    """Zero-pad to a power of two (at most ``batch_size``) rows.

    Every new input shape retraces Keras' predict function; padding bounds the shapes to
    log2(batch_size) + 1 of them however Spark sizes its Arrow batches.
    """
    rows = min(batch_size, 1 << max(0, len(chunk) - 1).bit_length())
    if rows == len(chunk):
        return chunk
    padded = np.zeros((rows, *chunk.shape[1:]), dtype=chunk.dtype)
    padded[: len(chunk)] = chunk
    return padded


def _doubles(outputs: np.ndarray, width: int, as_lists: bool = False) -> pa.Array:
    flat = pa.array(outputs.reshape(-1), pa.float64())
    if width == 1 and not as_lists:
        return flat
    offsets = pa.array(np.arange(0, len(flat) + 1, width, dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, flat)


def _dense_vectors(values: np.ndarray) -> pa.Array:
    rows, width = values.shape
    offsets = pa.array(np.arange(0, rows * width + 1, width, dtype=np.int32))
    flat = pa.array(values.reshape(-1).astype(np.float64), pa.float64())
    return pa.StructArray.from_arrays(
        [
            pa.array(np.ones(rows, dtype=np.int8), pa.int8()),
            pa.nulls(rows, pa.int32()),
            pa.nulls(rows, VECTOR_ARROW_TYPE.field("indices").type),
            pa.ListArray.from_arrays(offsets, flat, type=VECTOR_ARROW_TYPE.field("values").type),
        ],
        fields=list(VECTOR_ARROW_TYPE),
    )
