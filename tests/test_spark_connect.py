"""sparkeras over Spark Connect (no JVM in the client): fit, transform and persistence."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
from conftest import separable
from connect_session import probabilities

from sparkeras import SparkKerasModel

pytestmark = pytest.mark.spark
for module in ("grpc_status", "google.rpc", "zstandard"):
    pytest.importorskip(module, reason="Spark Connect's client needs pyspark[connect]")


def test_fit_transform_save_and_load_over_spark_connect(spark, tmp_path):
    """Directories saved by either kind of session load in the other, and predict the same."""
    inputs, labels = separable(200, 4)
    np.save(tmp_path / "inputs.npy", inputs.astype(np.float64))
    np.save(tmp_path / "labels.npy", labels)
    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1, activation="sigmoid")])
    SparkKerasModel.fromKerasModel(model).save(str(tmp_path / "classic"))

    script = Path(__file__).with_name("connect_session.py")
    environment = {**os.environ, "PYSPARK_PYTHON": sys.executable}
    result = subprocess.run(
        [sys.executable, str(script), str(tmp_path)],
        env=environment,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    # A classic directory (plain model.keras) read over Spark Connect.
    positive = model.predict(inputs, verbose=0)[:, 0]
    on_classic = np.load(tmp_path / "on_classic.npy")
    np.testing.assert_allclose(on_classic[:, 1], positive, rtol=1e-6)
    # Spark Connect stores the files as a table in the saved directory, which a classic
    # session reads; the reloaded model predicts exactly as the fitted one did.
    assert sorted(os.listdir(tmp_path / "connect")) == ["metadata", "table"]
    from_connect = SparkKerasModel.load(str(tmp_path / "connect"))
    assert len(from_connect.history["loss"]) == 1
    frame = spark.createDataFrame(
        [(i, x.tolist()) for i, x in enumerate(inputs.astype(np.float64))],
        "id long, features array<double>",
    )
    predicted = probabilities(from_connect.transform(frame))
    np.testing.assert_array_equal(predicted, np.load(tmp_path / "connect.npy"))
    np.testing.assert_array_equal(np.load(tmp_path / "pipeline.npy"), predicted)
