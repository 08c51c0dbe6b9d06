"""``SparkKerasModel``: the trained Keras model as a Spark ML Transformer."""

from __future__ import annotations

import dataclasses
from typing import Any

from pyspark.ml import Model
from pyspark.sql import DataFrame
from pyspark.sql.types import ArrayType, DoubleType, StructField, StructType

from sparkeras import serialization, validation
from sparkeras.inference import predictor
from sparkeras.params import SparkKerasModelParams


class SparkKerasModel(Model, SparkKerasModelParams):
    """A Keras model trained by :class:`SparkKerasEstimator`.

    ``transform`` appends ``predictionCol`` (a double for one output unit, else an array of
    doubles), computed in batches on the executors. ``history`` is the chief worker's per-epoch
    history; ``getKerasModel()`` returns the trained, compiled ``keras.Model``.

    Examples
    --------
    >>> fitted = SparkKerasEstimator(model=model, numWorkers=2).fit(df)  # doctest: +SKIP
    >>> fitted.history["loss"]  # doctest: +SKIP
    [0.61, 0.43]
    >>> fitted.transform(df).select("prediction").show()  # doctest: +SKIP
    """

    def __init__(self) -> None:
        super().__init__()
        self._model_bytes: bytes = b""
        self._custom_objects_bytes: bytes = serialization.objects_to_bytes({})
        self._history: dict[str, list[float]] = {}
        self._worker_reports: list[dict[str, Any]] = []
        self._keras_model: Any = None

    @classmethod
    def _from_training(
        cls,
        *,
        model_bytes: bytes,
        custom_objects_bytes: bytes,
        history: dict[str, list[float]],
        worker_reports: list[dict[str, Any]],
    ) -> SparkKerasModel:
        fitted = cls()
        fitted._model_bytes = model_bytes
        fitted._custom_objects_bytes = custom_objects_bytes
        fitted._history = history
        fitted._worker_reports = worker_reports
        return fitted

    @property
    def history(self) -> dict[str, list[float]]:
        """Per-epoch metrics of the chief worker, e.g. ``{"loss": [...], "val_loss": [...]}``."""
        return {name: list(values) for name, values in self._history.items()}

    @property
    def workerReports(self) -> list[dict[str, Any]]:
        """One dict per worker: rank, history, rows, steps per epoch and a digest of its weights."""
        return [dict(report) for report in self._worker_reports]

    def getKerasModel(self) -> Any:
        """The trained, compiled ``keras.Model`` (rebuilt once, then cached)."""
        if self._keras_model is None:
            custom_objects = serialization.objects_from_bytes(self._custom_objects_bytes)
            self._keras_model = serialization.model_from_bytes(
                self._model_bytes, custom_objects, safe_mode=self.getSafeMode()
            )
        return self._keras_model

    def setFeaturesCol(self, value: str) -> SparkKerasModel:
        """Set the features column read by ``transform``."""
        return self._set(featuresCol=value)

    def setPredictionCol(self, value: str) -> SparkKerasModel:
        """Set the column ``transform`` writes."""
        return self._set(predictionCol=value)

    def setInferenceBatchSize(self, value: int) -> SparkKerasModel:
        """Set the number of rows per model call in ``transform``."""
        return self._set(inferenceBatchSize=value)

    def _transform(self, dataset: DataFrame) -> DataFrame:
        keras_model = self.getKerasModel()
        features = validation.feature_spec(dataset.schema, self.getFeaturesCol(), keras_model)
        features = dataclasses.replace(features, storage="dense")
        width = validation.model_output_width(keras_model)
        output_type = DoubleType() if width == 1 else ArrayType(DoubleType(), containsNull=False)
        schema = StructType(
            [*dataset.schema.fields, StructField(self.getPredictionCol(), output_type)]
        )
        predict = predictor(
            self._model_bytes,
            self._custom_objects_bytes,
            self.getSafeMode(),
            features,
            self.getPredictionCol(),
            width,
            self.getInferenceBatchSize(),
        )
        return dataset.mapInArrow(predict, schema)
