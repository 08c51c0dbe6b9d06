"""What the benchmark scripts share: the session, generated data, and reading a fit's timings.

Data is generated inside Spark (``mapInArrow`` over ``range``), seeded per partition, so that a
million-row or ten-thousand-column frame never passes through the driver. The label of every
generator is the sign of a fixed random projection: learnable, so accuracy says whether training
worked.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

#: Marks the machine-readable summary line of a benchmark (read by tests/test_benchmarks.py).
RESULT_PREFIX = "RESULT "


def session(slots: int, driver_memory: str = "4g"):
    """A ``local[slots]`` session for benchmarks (no UI, quiet logs)."""
    from sparkeras import get_or_create_session

    spark = get_or_create_session(
        f"local[{slots}]",
        app_name="sparkeras-benchmark",
        config={"spark.ui.enabled": "false", "spark.driver.memory": driver_memory},
    )
    spark.sparkContext.setLogLevel("ERROR")
    return spark


def _projection(width: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=width).astype(np.float32)


def dense_frame(spark, rows: int, width: int, partitions: int, seed: int = 0):
    """``rows`` x ``width`` standard normal ``array<float>`` features and a 0/1 ``label``."""
    from pyspark.sql.types import ArrayType, DoubleType, FloatType, StructField, StructType

    schema = StructType(
        [StructField("features", ArrayType(FloatType(), False)), StructField("label", DoubleType())]
    )
    projection = _projection(width, seed)
    arrow_schema = pa.schema(
        [
            pa.field("features", pa.list_(pa.field("element", pa.float32(), False))),
            pa.field("label", pa.float64()),
        ]
    )

    def generate(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            ids = batch.column(0).to_numpy()
            if len(ids) == 0:
                continue
            rng = np.random.default_rng([seed, int(ids[0])])
            features = rng.standard_normal((len(ids), width), dtype=np.float32)
            offsets = pa.array(np.arange(0, features.size + 1, width, dtype=np.int32))
            column = pa.ListArray.from_arrays(
                offsets, pa.array(features.ravel()), type=arrow_schema.field("features").type
            )
            labels = (features @ projection > 0).astype(np.float64)
            yield pa.RecordBatch.from_arrays([column, pa.array(labels)], schema=arrow_schema)

    return spark.range(0, rows, numPartitions=partitions).mapInArrow(generate, schema)


def sparse_frame(spark, rows: int, dimension: int, nonzeros: int, partitions: int, seed: int = 0):
    """``rows`` SparseVectors of ``dimension`` with ``nonzeros`` entries each, and a 0/1 label.

    Entry ``j`` of a row falls in the ``j``-th of ``nonzeros`` equal ranges of the dimension, so
    indices are strictly increasing without sorting.
    """
    from pyspark.ml.linalg import VectorUDT
    from pyspark.sql.types import DoubleType, StructField, StructType

    schema = StructType([StructField("features", VectorUDT()), StructField("label", DoubleType())])
    projection = _projection(dimension, seed)
    stride = dimension // nonzeros

    def generate(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            ids = batch.column(0).to_numpy()
            n = len(ids)
            if n == 0:
                continue
            rng = np.random.default_rng([seed, int(ids[0])])
            indices = rng.integers(0, stride, size=(n, nonzeros), dtype=np.int32)
            indices += np.arange(nonzeros, dtype=np.int32) * stride
            values = rng.standard_normal((n, nonzeros))
            labels = ((values * projection[indices]).sum(axis=1) > 0).astype(np.float64)
            offsets = pa.array(np.arange(0, n * nonzeros + 1, nonzeros, dtype=np.int32))
            vectors = pa.StructArray.from_arrays(
                [
                    pa.array(np.zeros(n, np.int8)),  # VectorUDT type 0: sparse
                    pa.array(np.full(n, dimension, np.int32)),
                    pa.ListArray.from_arrays(offsets, pa.array(indices.ravel())),
                    pa.ListArray.from_arrays(offsets, pa.array(values.ravel())),
                ],
                names=["type", "size", "indices", "values"],
            )
            yield pa.RecordBatch.from_arrays([vectors, pa.array(labels)], ["features", "label"])

    return spark.range(0, rows, numPartitions=partitions).mapInArrow(generate, schema)


def binary_mlp(width: int, hidden: tuple[int, ...], sparse: bool = False):
    """A compiled binary classifier: ReLU layers of ``hidden`` sizes, then a sigmoid unit.

    Seeded, so every run of a benchmark starts from the same weights; ``sparse`` declares a
    sparse input (batches arrive as ``tf.SparseTensor``).
    """
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((width,), sparse=sparse),
            *[keras.layers.Dense(units, activation="relu") for units in hidden],
            keras.layers.Dense(1, activation="sigmoid"),
        ]
    )
    model.compile(optimizer="adam", loss="binary_crossentropy", metrics=["accuracy"])
    return model


def cached(frame):
    """``frame`` cached and materialised, so that timings leave its generation out."""
    frame = frame.cache()
    frame.count()
    return frame


def warm_up(frame, width: int, workers: int, fork_server: bool = True) -> float:
    """Seconds of a 5-step fit that starts the executors' fork servers (TensorFlow imported once,
    see ``sparkeras.processes``), so that the fits timed after it are a session's steady state."""
    from sparkeras import SparkKerasEstimator

    started = time.perf_counter()
    SparkKerasEstimator(
        model=binary_mlp(width, (8,)), numWorkers=workers, stepsPerEpoch=5, forkServer=fork_server
    ).fit(frame)
    return time.perf_counter() - started


def timed_fit(estimator, frame) -> tuple[Any, dict[str, float]]:
    """Fit and split the wall time with the workers' reports (all on one host's clock).

    Returns the fitted model and, in seconds: ``fit`` (call to returned model), ``start_up``
    (call to the first training step of the slowest worker), ``data_path`` (a barrier task's
    start to its first training step, slowest task: shards, rendezvous, TensorFlow start),
    ``training`` (the chief's epochs) and ``finish`` (last epoch to returned model); and the
    largest ``peak_memory_mib`` of the training processes.
    """
    called = time.time()
    fitted = estimator.fit(frame)
    returned = time.time()
    reports = [report for report in fitted.workerReports if "training_started_at" in report]
    first_step = max(report["training_started_at"] for report in reports)
    training = sum(fitted.workerReports[0]["epoch_seconds"])
    return fitted, {
        "fit": returned - called,
        "start_up": first_step - called,
        "data_path": max(r["training_started_at"] - r["task_started_at"] for r in reports),
        "write_shard": max(r["task_seconds"]["write_shard"] for r in reports),
        "training": training,
        "finish": returned - first_step - training,
        "peak_memory_mib": max(report["peak_memory_mib"] for report in reports),
    }


@contextlib.contextmanager
def plot_to(path: str) -> Iterator[Any]:
    """Axes of a new 6 x 3.5 inch figure, written to the PNG ``path`` when the block ends."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 3.5))
    yield axes
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def print_result(name: str, values: dict[str, Any]) -> None:
    """Print the benchmark's summary as one JSON line (rounded), after its readable output."""
    rounded = {
        key: round(value, 4) if isinstance(value, float) else value for key, value in values.items()
    }
    print(RESULT_PREFIX + json.dumps({"benchmark": name, **rounded}), flush=True)


def machine() -> str:
    """One line describing this machine, for the record."""
    import platform

    return (
        f"{os.cpu_count()} CPUs, {platform.processor() or platform.machine()}, "
        f"Python {sys.version.split()[0]}"
    )


class MachineMemory:
    """Peak memory in use on the whole machine while the ``with`` block runs (sampled 10x/s)."""

    def __enter__(self) -> MachineMemory:
        import threading

        import psutil

        self.peak_gib = 0.0
        self._done = threading.Event()

        def sample() -> None:
            while not self._done.wait(0.1):
                used = psutil.virtual_memory().used / 2**30
                self.peak_gib = max(self.peak_gib, used)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._done.set()
        self._thread.join()
