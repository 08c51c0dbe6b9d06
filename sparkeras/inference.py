"""Batched inference inside Spark tasks: Arrow batches in, the same batches plus predictions out.

The model is rebuilt once per Python worker and cached by the SHA-256 of its bytes, so a different
model can never be served from a stale cache entry. Each Arrow batch costs one call into TensorFlow
(the chunks of ``inferenceBatchSize`` rows are looped over inside the graph), its features reach
TensorFlow through one reused aligned buffer without a copy, and the worker's objects are frozen out
of the garbage collector that PySpark runs after every task.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
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
from sparkeras.shards import VECTOR_ARROW_TYPE, features_to_coo, features_to_dense
from sparkeras.tensors import aligned_float32, as_tensor

_MODEL_CACHE: dict[str, LoadedModel] = {}

#: Arrow-native scalar UDFs arrived in PySpark 4.1; older versions use ``mapInArrow``.
HAS_ARROW_UDF = hasattr(__import__("pyspark.sql.functions", fromlist=["arrow_udf"]), "arrow_udf")


def model_key(model_bytes: bytes, custom_objects_bytes: bytes, safe_mode: bool) -> str:
    """Cache key of a serialised model and what it is loaded with.

    Examples
    --------
    >>> model_key(b"model", b"objects", True) == model_key(b"model", b"objects", False)
    False
    """
    digests = (hashlib.sha256(part).hexdigest() for part in (model_bytes, custom_objects_bytes))
    return "-".join([*digests, "safe" if safe_mode else "unsafe"])


@dataclasses.dataclass
class LoadedModel:
    """A model rebuilt in this Python worker, with its compiled predict functions.

    ``predict_functions`` holds one function per (inference batch size, feature width), see
    :func:`chunked_predict_function`; ``sparse_predict_functions`` one per feature width, see
    :meth:`predict_sparse`.
    """

    model: Any
    predict_functions: dict[tuple[int, int], Callable[[Any], Any]] = dataclasses.field(
        default_factory=dict
    )
    sparse_predict_functions: dict[int, Callable[[Any], Any]] = dataclasses.field(
        default_factory=dict
    )

    def predict(self, inputs: np.ndarray, batch_size: int) -> Any:
        """The model's outputs for a float32 ``rows x width`` matrix, ``batch_size`` rows per call.

        A C-contiguous matrix that starts on a 64-byte boundary (see
        :func:`sparkeras.tensors.aligned_float32`) is handed to TensorFlow without a copy; any
        other is copied.
        """
        inputs = as_tensor(inputs)
        key = (batch_size, inputs.shape[1])
        if key in self.predict_functions:
            return self.predict_functions[key](inputs)
        self.predict_functions[key] = chunked_predict_function(self.model, *key)
        outputs = self.predict_functions[key](inputs)
        _freeze_in_task()  # tracing made many long-lived objects
        return outputs

    def predict_sparse(
        self, row_nnz: np.ndarray, cols: np.ndarray, values: np.ndarray, width: int, batch_size: int
    ) -> Any:
        """The outputs of a sparse-input model for CSR rows (per-row entry counts, column
        indices, values), ``batch_size`` rows per call, without densifying them: a batch of
        10,000 rows of 2^18 hashed features would be 10 GB dense."""
        import tensorflow as tf

        if width not in self.sparse_predict_functions:
            spec = tf.SparseTensorSpec([None, width], tf.float32)
            self.sparse_predict_functions[width] = tf.function(
                self.model.predict_step, input_signature=[spec], reduce_retracing=True
            )
        predict = self.sparse_predict_functions[width]
        ends = np.cumsum(row_nnz)
        outputs = []
        for start in range(0, max(len(row_nnz), 1), batch_size):  # one empty call for no rows
            stop = min(start + batch_size, len(row_nnz))
            first, last = (ends[start - 1] if start else 0), (ends[stop - 1] if stop else 0)
            rows = np.repeat(np.arange(stop - start, dtype=np.int64), row_nnz[start:stop])
            indices = np.stack([rows, cols[first:last].astype(np.int64)], axis=1)
            chunk = tf.SparseTensor(indices, values[first:last], (stop - start, width))
            outputs.append(predict(chunk))
        return tf.nest.map_structure(lambda *parts: tf.concat(parts, axis=0), *outputs)


def chunked_predict_function(model: Any, batch_size: int, width: int) -> Callable[[Any], Any]:
    """A TensorFlow function that predicts any number of rows, ``batch_size`` rows per model call.

    The chunks are sliced and predicted in a loop inside the graph, so a whole Arrow batch costs
    one call from Python. One ``predict_on_batch`` per 1,024 rows spent about 0.3 ms of Python
    per call; the 100-64-1 MLP of the transform benchmark took 0.71 CPU-seconds per million rows
    that way and 0.46 this way, with the same rows per model call (``inferenceBatchSize``). Any
    number of rows runs through one trace. Each chunk goes through ``model.predict_step``, so a
    model that overrides it is honoured.

    Examples
    --------
    >>> import keras, numpy as np
    >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    >>> predict = chunked_predict_function(model, batch_size=4, width=3)
    >>> predict(np.ones((10, 3), dtype="float32")).shape
    TensorShape([10, 1])
    """
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec([None, width], tf.float32)])
    def predict(inputs: Any) -> Any:
        calls = tf.maximum((tf.shape(inputs)[0] + batch_size - 1) // batch_size, 1)
        # The first chunk is predicted outside the loop: its outputs give the structure and
        # dtypes of the arrays that collect every chunk's outputs.
        first = model.predict_step(inputs[:batch_size])
        outputs = [
            tf.TensorArray(head.dtype, size=calls, infer_shape=False).write(0, head)
            for head in tf.nest.flatten(first)
        ]
        for call in tf.range(1, calls):
            predicted = model.predict_step(inputs[call * batch_size : (call + 1) * batch_size])
            outputs = [
                array.write(call, head)
                for array, head in zip(outputs, tf.nest.flatten(predicted), strict=True)
            ]
        return tf.nest.pack_sequence_as(first, [array.concat() for array in outputs])

    return predict


def _cached_model(
    key: str, model_bytes: bytes, custom_objects_bytes: bytes, safe_mode: bool
) -> LoadedModel:
    if key not in _MODEL_CACHE:
        from sparkeras.serialization import model_from_bytes, objects_from_bytes

        if _MODEL_CACHE:
            _MODEL_CACHE.clear()  # one model per worker process at a time bounds memory
            gc.unfreeze()  # the old model's reference cycles must be collected before the next
            gc.collect()  # freeze, or they would stay in memory for good
        custom_objects = objects_from_bytes(custom_objects_bytes)
        with _tensorflow_in_task() as tf:  # loading the model starts TensorFlow's runtime
            # Each new model in a long-lived Python worker traces its predict function once; TF
            # counts those traces together and warns about "retracing" that is expected here.
            tf.get_logger().setLevel("ERROR")
            _MODEL_CACHE[key] = LoadedModel(
                model_from_bytes(model_bytes, custom_objects, safe_mode=safe_mode)
            )
        _freeze_in_task()
    return _MODEL_CACHE[key]


def _freeze_in_task() -> None:
    """Exempt every object a Spark Python worker holds now from garbage collection.

    PySpark's daemon runs a full ``gc.collect()`` after every task of a reused Python worker.
    With TensorFlow, Keras and a model loaded, that walks about 400,000 objects (0.19 s per
    task measured here), and Python's own full collections walk them too. Frozen
    (``gc.freeze``), they are skipped: the transform benchmark's Python workers went from
    1.35-1.72 to 0.67-0.80 CPU-seconds per million rows, and the whole transform from
    1.76-2.25 s to 1.37-1.78 s.
    Reference counting still frees frozen objects; before a model replaces another in the cache,
    the worker is unfrozen and collected once, so that the old model's reference cycles go too.
    """
    from pyspark import TaskContext

    if TaskContext.get() is not None:
        gc.freeze()


@contextlib.contextmanager
def _tensorflow_in_task() -> Iterator[Any]:
    """TensorFlow limited to the task's CPUs and GPUs (see ``sparkeras.devices``), for a block
    that starts its runtime.

    Several Python workers share an executor's cores and GPUs. The limits only take effect when
    TensorFlow first starts in this Python worker; a worker where it already ran keeps them. The
    device variables are set for the block only: the same Python worker may run a training task
    later, whose device choice and fork server must see the user's environment, not these.
    """
    from pyspark import TaskContext

    context = TaskContext.get()
    first_start = context is not None and "tensorflow" not in sys.modules
    changes = tensorflow_environment(task_gpu_addresses(context), os.environ) if first_start else {}
    saved = {name: os.environ.get(name) for name in changes}
    os.environ.update(changes)
    try:
        with _native_stderr_silenced():  # TensorFlow's import banner would reach the console
            import keras  # noqa: F401
            import tensorflow as tf

        if context is not None:
            with contextlib.suppress(RuntimeError):  # TensorFlow already ran in this worker
                limit_threads(tf, 0, context.cpus())
        yield tf
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


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
    vectors and a double ``prediction`` label (see :func:`class_scores`). ``regression`` writes
    the model's output as a double (one unit) or an array of doubles.
    """

    mode: str
    width: int
    prediction_col: str
    raw_prediction_col: str = ""
    probability_col: str = ""
    #: The classifier outputs logits (compiled with ``from_logits=True``), not probabilities.
    logits: bool = False
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
        outputs = outputs_per_head[0].astype(np.float64, copy=False)
        if self.mode != "classification":
            return [_doubles(outputs, self.width)] if self.prediction_col else []
        probability, raw = class_scores(outputs, self.logits)
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


def class_scores(outputs: np.ndarray, logits: bool) -> tuple[np.ndarray, np.ndarray]:
    """A classifier's probabilities and raw scores (Spark's ``rawPrediction``), one column per
    class, from its ``rows x units`` outputs.

    One unit is a binary classifier: probabilities ``[1 - p, p]`` and raw scores
    ``[-logit, logit]``. Several units: the probabilities, and their logarithms (or the logits).
    ``logits`` says the outputs are logits, not probabilities.

    Examples
    --------
    >>> probability, raw = class_scores(np.array([[0.0], [2.0]]), logits=True)
    >>> probability.round(3).tolist(), raw.tolist()
    ([[0.5, 0.5], [0.119, 0.881]], [[-0.0, 0.0], [-2.0, 2.0]])
    """
    # float64 before clipping: in float32, 1 - 1e-12 is 1, and a saturated sigmoid's logit
    # would be infinite.
    outputs = outputs.astype(np.float64, copy=False)
    if outputs.shape[1] == 1:
        if logits:
            from scipy.special import expit  # the sigmoid, accurate far into both tails

            logit = outputs[:, 0]
            probability = np.stack([expit(-logit), expit(logit)], axis=1)
        else:
            positive = np.clip(outputs[:, 0], _EPSILON, 1 - _EPSILON)
            logit = np.log(positive) - np.log1p(-positive)
            probability = np.stack([1 - positive, positive], axis=1)
        return probability, np.stack([-logit, logit], axis=1)
    if logits:
        exponentials = np.exp(outputs - outputs.max(axis=1, keepdims=True))
        return exponentials / exponentials.sum(axis=1, keepdims=True), outputs
    return outputs, np.log(np.clip(outputs, _EPSILON, None))


@dataclasses.dataclass(frozen=True)
class BatchPredictor:
    """Everything an executor needs to predict, as plain values shipped in the task closure."""

    model_bytes: bytes
    custom_objects_bytes: bytes
    safe_mode: bool
    features: FeatureSpec
    output: OutputSpec
    batch_size: int
    #: The model cache's key, hashed once on the driver rather than in every partition.
    key: str = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        key = model_key(self.model_bytes, self.custom_objects_bytes, self.safe_mode)
        object.__setattr__(self, "key", key)

    def _partition_predictor(self) -> Callable[[pa.Array], list[np.ndarray]]:
        """A function from a features column to the model's outputs, one ``rows x width`` array
        per output, for the batches of one partition.

        The features of every batch are written into one reused, aligned float32 buffer that
        TensorFlow reads without a copy. Fresh memory per batch (numpy's cast, then TensorFlow's
        copy of it) was measured at 0.93 CPU-seconds per million rows of the transform
        benchmark against 0.33 this way; the buffer lives as long as the partition.
        """
        model = _cached_model(self.key, self.model_bytes, self.custom_objects_bytes, self.safe_mode)
        import keras  # loaded with the model

        output = self.output
        staging = np.empty(0, dtype=np.float32)

        def predict(column: pa.Array) -> list[np.ndarray]:
            nonlocal staging
            if self.features.storage == "sparse":
                csr = features_to_coo(column, self.features)
                predicted = model.predict_sparse(*csr, self.features.width, self.batch_size)
            else:
                if staging.size < len(column) * self.features.width:
                    staging = aligned_float32(len(column) * self.features.width)
                inputs = features_to_dense(column, self.features, out=staging)
                predicted = model.predict(inputs, self.batch_size)
            # One array per output, in the order of model.outputs (a dict's is by key).
            heads = keras.tree.flatten(predicted)
            return [
                head.numpy().reshape(-1, width)
                for head, width in zip(heads, output.widths, strict=True)
            ]

        return predict

    def map_in_arrow_function(
        self,
    ) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
        """A ``mapInArrow`` function that appends the output columns to every batch.

        Used where Spark has no Arrow UDFs (before 4.1); see :meth:`columns`.
        """
        names = [field.name for field in self.output.fields()]

        def predict(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
            outputs_of = self._partition_predictor()
            for batch in batches:
                outputs = outputs_of(batch.column(self.features.column))
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
            outputs_of = self._partition_predictor()
            for array in arrays:
                outputs = outputs_of(array)
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
