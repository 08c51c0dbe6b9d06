"""``SparkKerasModel``: the trained Keras model as a Spark ML Transformer."""

from __future__ import annotations

import json
from typing import Any

from pyspark.ml import Model
from pyspark.ml.util import MLReadable, MLWritable
from pyspark.sql import DataFrame
from pyspark.sql.types import StructType

from sparkeras import inference, serialization, validation
from sparkeras.inference import OutputSpec
from sparkeras.params import SparkKerasModelParams
from sparkeras.persistence import SparkKerasReader, SparkKerasWriter, json_bytes


class SparkKerasModel(Model, SparkKerasModelParams, MLWritable, MLReadable):
    """A Keras model trained by :class:`SparkKerasEstimator`.

    ``transform`` appends prediction columns, computed in Arrow batches on the executors: for
    classifiers (last layer sigmoid or softmax, logits with a ``from_logits=True`` loss, or
    ``outputMode='classification'``) the
    ``rawPrediction`` and ``probability`` vectors and a double ``prediction`` label, as Spark's
    own classifiers do; for regressors a double ``prediction`` (an array for several units);
    for multi-output models one array column per output, ``{predictionCol}_<output name>``.
    ``history`` is the chief worker's per-epoch history; ``getKerasModel()`` returns the trained,
    compiled ``keras.Model``.

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

    @classmethod
    def fromKerasModel(cls, model: Any, customObjects: dict | None = None) -> SparkKerasModel:
        """Wrap an already trained ``keras.Model`` for batched inference on Spark.

        Examples
        --------
        >>> scored = SparkKerasModel.fromKerasModel(trained).transform(df)  # doctest: +SKIP
        """
        model_bytes = serialization.model_to_bytes(model)
        custom_objects = serialization.custom_objects_to_ship(model_bytes, customObjects or {})
        fitted = cls._from_training(
            model_bytes=model_bytes,
            custom_objects_bytes=serialization.objects_to_bytes(custom_objects),
            history={},
            worker_reports=[],
        )
        return fitted._set(customObjects=custom_objects)

    @property
    def history(self) -> dict[str, list[float]]:
        """Per-epoch metrics of the chief worker, e.g. ``{"loss": [...], "val_loss": [...]}``."""
        return {name: list(values) for name, values in self._history.items()}

    @property
    def workerReports(self) -> list[dict[str, Any]]:
        """One dict per worker: rank, history, rows, steps per epoch and a digest of its weights."""
        return [dict(report) for report in self._worker_reports]

    def plotHistory(self, path: str | None = None) -> Any:
        """Plot the training history (see :func:`sparkeras.plot_history`); returns the figure."""
        from sparkeras.plotting import plot_history

        return plot_history(self.history, path)

    def getKerasModel(self) -> Any:
        """The trained, compiled ``keras.Model`` (rebuilt once, then cached)."""
        if self._keras_model is None:
            custom_objects = serialization.objects_from_bytes(self._custom_objects_bytes)
            self._keras_model = serialization.model_from_bytes(
                self._model_bytes, custom_objects, safe_mode=self.getSafeMode()
            )
        return self._keras_model

    def write(self) -> SparkKerasWriter:
        """Writer for ``save``: ``model.keras`` loads with plain ``keras.models.load_model``."""
        training = {"history": self._history, "workerReports": self._worker_reports}
        return SparkKerasWriter(
            self,
            {
                "model.keras": self._model_bytes,
                "custom_objects.pkl": self._custom_objects_bytes,
                "training.json": json_bytes(training),
            },
        )

    @classmethod
    def read(cls) -> SparkKerasReader:
        """Reader for ``load``; the Keras model is rebuilt lazily, with ``safeMode`` as saved."""
        return SparkKerasReader(cls)

    def _load_files(self, files: dict[str, bytes]) -> None:
        training = json.loads(files["training.json"])
        self._model_bytes = files["model.keras"]
        self._custom_objects_bytes = files["custom_objects.pkl"]
        self._set(customObjects=serialization.objects_from_bytes(self._custom_objects_bytes))
        self._history = training["history"]
        self._worker_reports = training["workerReports"]
        self._keras_model = None

    def setFeaturesCol(self, value: str) -> SparkKerasModel:
        """Set the features column read by ``transform``."""
        return self._set(featuresCol=value)

    def setPredictionCol(self, value: str) -> SparkKerasModel:
        """Set the column ``transform`` writes."""
        return self._set(predictionCol=value)

    def setRawPredictionCol(self, value: str) -> SparkKerasModel:
        """Set the raw score vector column of classifiers ('' to skip it)."""
        return self._set(rawPredictionCol=value)

    def setProbabilityCol(self, value: str) -> SparkKerasModel:
        """Set the probability vector column of classifiers ('' to skip it)."""
        return self._set(probabilityCol=value)

    def setOutputMode(self, value: str) -> SparkKerasModel:
        """Set 'auto', 'classification' or 'regression'."""
        return self._set(outputMode=value)

    def setInferenceBatchSize(self, value: int) -> SparkKerasModel:
        """Set the number of rows per model call in ``transform``."""
        return self._set(inferenceBatchSize=value)

    def setSafeMode(self, value: bool) -> SparkKerasModel:
        """Set Keras safe mode for rebuilding the model (``False`` allows ``Lambda`` layers'
        code: only for models you trust)."""
        return self._set(safeMode=value)

    def _transform(self, dataset: DataFrame) -> DataFrame:
        keras_model = self.getKerasModel()
        features = validation.feature_spec(dataset.schema, self.getFeaturesCol(), keras_model)
        multi_output = len(keras_model.outputs) > 1
        output = OutputSpec(
            mode="multi_output"
            if multi_output
            else validation.output_mode(keras_model, self.getOutputMode()),
            width=validation.model_output_width(keras_model),
            prediction_col=self.getPredictionCol(),
            raw_prediction_col=self.getRawPredictionCol(),
            probability_col=self.getProbabilityCol(),
            logits=not multi_output and validation.outputs_logits(keras_model),
            output_names=validation.model_output_names(keras_model) if multi_output else (),
            output_widths=tuple(int(out.shape[-1] or 1) for out in keras_model.outputs),
        )
        _check_output_columns(output, dataset.columns)
        predictor = inference.BatchPredictor(
            model_bytes=self._model_bytes,
            custom_objects_bytes=self._custom_objects_bytes,
            safe_mode=self.getSafeMode(),
            features=features,
            output=output,
            batch_size=self.getInferenceBatchSize(),
        )
        if inference.HAS_ARROW_UDF:
            return dataset.select("*", *predictor.columns())
        schema = StructType([*dataset.schema.fields, *output.fields()])
        return dataset.mapInArrow(predictor.map_in_arrow_function(), schema)


def _check_output_columns(output: OutputSpec, columns: list[str]) -> None:
    """The columns ``transform`` adds must be new, and different from each other."""
    if output.mode == "multi_output" and not output.prediction_col:
        raise ValueError(
            "predictionCol='' cannot leave out a multi-output model's columns: it is the prefix "
            "of their names ({predictionCol}_{output name}). Set predictionCol."
        )
    names = [field.name for field in output.fields()]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(
            f"Output column name(s) {repeated} are used twice: predictionCol, rawPredictionCol and "
            "probabilityCol must differ (or be '' to skip one)."
        )
    existing = [name for name in names if name in columns]
    if existing:
        raise ValueError(
            f"Output column(s) {existing} already exist in the DataFrame; rename them with "
            "setPredictionCol / setRawPredictionCol / setProbabilityCol, or set '' to skip."
        )
