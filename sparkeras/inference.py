"""Batched inference inside Spark tasks: Arrow batches in, the same batches plus predictions out.

The model is rebuilt once per Python worker and cached by the SHA-256 of its bytes, so a different
model can never be served from a stale cache entry.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pyarrow as pa

from sparkeras.plan import FeatureSpec

_MODEL_CACHE: dict[str, Any] = {}


def model_key(model_bytes: bytes) -> str:
    """Cache key of a serialised model."""
    return hashlib.sha256(model_bytes).hexdigest()


def _cached_model(
    key: str, model_bytes: bytes, custom_objects_bytes: bytes, safe_mode: bool
) -> Any:
    if key not in _MODEL_CACHE:
        with _native_stderr_silenced():  # TensorFlow's import banner would reach the console
            import keras  # noqa: F401

        from sparkeras.serialization import model_from_bytes, objects_from_bytes

        _MODEL_CACHE.clear()  # one model per worker process at a time bounds memory
        custom_objects = objects_from_bytes(custom_objects_bytes)
        _MODEL_CACHE[key] = model_from_bytes(model_bytes, custom_objects, safe_mode=safe_mode)
    return _MODEL_CACHE[key]


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


def predictor(
    model_bytes: bytes,
    custom_objects_bytes: bytes,
    safe_mode: bool,
    features: FeatureSpec,
    prediction_col: str,
    prediction_width: int,
    batch_size: int,
) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """A ``mapInArrow`` function that appends ``prediction_col`` to every batch."""
    key = model_key(model_bytes)

    def predict(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from sparkeras.shards import features_to_dense

        model = _cached_model(key, model_bytes, custom_objects_bytes, safe_mode)
        for batch in batches:
            inputs = features_to_dense(batch.column(features.column), features)
            outputs = np.zeros((len(inputs), prediction_width))
            for start in range(0, len(inputs), batch_size):
                chunk = model.predict_on_batch(inputs[start : start + batch_size])
                outputs[start : start + batch_size] = np.asarray(chunk).reshape(
                    -1, prediction_width
                )
            yield batch.append_column(prediction_col, _prediction_array(outputs, prediction_width))

    return predict


def _prediction_array(outputs: np.ndarray, width: int) -> pa.Array:
    if width == 1:
        return pa.array(outputs.reshape(-1), pa.float64())
    flat = pa.array(outputs.reshape(-1), pa.float64())
    offsets = pa.array(np.arange(0, len(flat) + 1, width, dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, flat)
