"""Rows/second of SparkKerasModel.transform against plain model.predict and predict_batch_udf.

Workload (issue #3): 1,000,000 rows x 100 float features, MLP 100-64-1, local[2]; each Spark
variant runs transform + a full write to the "noop" sink from a cached DataFrame. The baseline is
``model.predict`` on a float32 numpy array of the same shape in the driver process. A fourth
variant is Spark's floor for any Python model: an Arrow UDF over the same column that returns
zeros without running a model, i.e. what Spark alone spends handing the rows to Python and the
results back. Each variant is run once to warm up, then the best of three runs counts. Run from
the repo root:

    .venv/bin/python benchmarks/bench_transform.py          # 1,000,000 rows
    .venv/bin/python benchmarks/bench_transform.py --quick  # 100,000 rows
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
from common import print_result


def timed(action, repeats: int = 3) -> float:
    """Best of ``repeats`` timed runs after one warm-up run (which pays the Python workers'
    TensorFlow import); the best run is the least disturbed by other work on the machine."""
    action()
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        action()
        best = min(best, time.perf_counter() - started)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100,000 rows")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=1024, help="rows per model call, everywhere")
    args = parser.parse_args()
    rows, width = (100_000 if args.quick else args.rows), 100

    import keras
    from pyspark.ml.functions import predict_batch_udf
    from pyspark.sql import functions as F
    from pyspark.sql.types import DoubleType

    from sparkeras import SparkKerasModel, get_or_create_session
    from sparkeras.serialization import model_from_bytes, model_to_bytes

    spark = get_or_create_session(
        "local[2]", config={"spark.ui.enabled": "false", "spark.driver.memory": "4g"}
    )
    spark.sparkContext.setLogLevel("ERROR")
    frame = (
        spark.range(rows, numPartitions=4)
        .select(F.array(*[F.rand(seed) for seed in range(width)]).alias("features"))
        .cache()
    )
    frame.count()

    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((width,)), keras.layers.Dense(64, activation="relu"), keras.layers.Dense(1)]
    )
    model.compile(optimizer="adam", loss="mse")
    matrix = np.random.default_rng(0).random((rows, width), dtype=np.float32)

    fitted = SparkKerasModel.fromKerasModel(model).setInferenceBatchSize(args.batch)

    def written(scored) -> None:
        """A full write of every row and column, to Spark's sink that discards them."""
        scored.write.format("noop").mode("overwrite").save()

    sparkeras_seconds = timed(lambda: written(fitted.transform(frame)))

    model_bytes = model_to_bytes(model)

    def make_predict_fn():
        loaded = model_from_bytes(model_bytes)
        return lambda inputs: loaded.predict_on_batch(inputs).reshape(-1)

    udf = predict_batch_udf(
        make_predict_fn,
        return_type=DoubleType(),
        batch_size=args.batch,
        input_tensor_shapes=[[width]],
    )
    udf_seconds = timed(lambda: written(frame.withColumn("prediction", udf("features"))))

    def zeros(arrays: Iterator[pa.Array]) -> Iterator[pa.Array]:
        for array in arrays:
            yield pa.array(np.zeros(len(array)))

    floor_seconds = float("nan")  # Arrow UDFs arrived in PySpark 4.1
    if hasattr(F, "arrow_udf"):
        zeros_udf = F.arrow_udf(zeros, DoubleType())
        floor_seconds = timed(
            lambda: written(frame.withColumn("prediction", zeros_udf("features")))
        )
    numpy_seconds = timed(lambda: model.predict(matrix, batch_size=args.batch, verbose=0))

    print(f"rows={rows} width={width} batch={args.batch}")
    for name, seconds in [
        ("sparkeras transform", sparkeras_seconds),
        ("predict_batch_udf", udf_seconds),
        ("zeros UDF (Spark floor)", floor_seconds),
        ("model.predict (numpy)", numpy_seconds),
    ]:
        print(f"{name:24s} {seconds:7.2f} s  {rows / seconds:12,.0f} rows/s")
    print(f"sparkeras / model.predict throughput: {numpy_seconds / sparkeras_seconds:.2f}")
    print(f"sparkeras / predict_batch_udf throughput: {udf_seconds / sparkeras_seconds:.2f}")
    print(
        f"zeros UDF / model.predict throughput (the best any UDF gets): {numpy_seconds / floor_seconds:.2f}"
    )
    print_result(
        "transform",
        {
            "rows": rows,
            "sparkeras_seconds": sparkeras_seconds,
            "predict_batch_udf_seconds": udf_seconds,
            "numpy_seconds": numpy_seconds,
            "floor_seconds": floor_seconds,
            "floor_vs_numpy": numpy_seconds / floor_seconds,
            "vs_numpy": numpy_seconds / sparkeras_seconds,
            "vs_predict_batch_udf": udf_seconds / sparkeras_seconds,
        },
    )
    spark.stop()


if __name__ == "__main__":
    main()
