"""sparkeras: train compiled Keras 3 models on Spark, straight from Spark DataFrames.

Public names are imported lazily: Spark's Python workers import ``sparkeras.launch`` and
``sparkeras.shards`` to run training tasks, and must not pay for (or initialise) TensorFlow.

Examples
--------
>>> from sparkeras import SparkKerasEstimator  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_PUBLIC = {
    "SparkKerasEstimator": "sparkeras.estimator",
    "SparkKerasModel": "sparkeras.model",
    "TrainingError": "sparkeras.launch",
    "ModelSerializationError": "sparkeras.serialization",
    "get_or_create_session": "sparkeras.session",
    "KerasClassifier": "sparkeras.sklearn",
    "KerasRegressor": "sparkeras.sklearn",
    "plot_history": "sparkeras.plotting",
}

__all__ = [*_PUBLIC, "__version__"]


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'sparkeras' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
