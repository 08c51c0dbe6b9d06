"""``SparkKerasEstimator``: validate on the driver -> plan -> one barrier stage -> ``SparkKerasModel``."""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import math
import shutil
import tempfile
import uuid
import warnings
from collections.abc import Iterator
from typing import Any

from pyspark import keyword_only
from pyspark.ml import Estimator
from pyspark.ml.param import Param, Params
from pyspark.ml.util import MLReadable, MLWritable
from pyspark.sql import DataFrame

from sparkeras import launch, partitioning, progress, serialization, validation
from sparkeras.model import SparkKerasModel
from sparkeras.params import SparkKerasTrainingParams
from sparkeras.persistence import SparkKerasReader, SparkKerasWriter
from sparkeras.plan import (
    TrainingPlan,
    keras_seed,
    per_replica_batch_size,
    steps_per_execution,
    task_roles,
)


def check_param_map(instance: Params, extra: Any) -> None:
    """Reject ParamMap keys that are not Params of ``instance`` (Spark would ignore them)."""
    for key in extra or {}:
        if not isinstance(key, Param):
            raise ValueError(
                f"ParamMap key {key!r} is not a Param; use the estimator's Param objects, e.g. "
                f"{{estimator.epochs: 3}} instead of {{'epochs': 3}}."
            )
        if not instance.hasParam(key.name) or key.parent != instance.uid:
            raise ValueError(
                f"ParamMap entry {key.name!r} (of {key.parent}) is not a param of this "
                f"{type(instance).__name__} ({instance.uid}). Available: "
                f"{sorted(p.name for p in instance.params)}."
            )


@contextlib.contextmanager
def _checkpoint_directory(base: str | None) -> Iterator[str]:
    """This fit's own checkpoint directory under ``base`` (a new temporary one when ``None``).

    Every fit gets a fresh directory, so only retries of its own stage resume from it. Workers
    write into it only while it exists. It is removed when the fit succeeds; after a failure, a
    directory under a user-given ``base`` is kept for inspection.
    """
    import tensorflow as tf  # the file system of checkpointDir may be hdfs://, gs://...

    temporary = base is None
    root = tempfile.mkdtemp(prefix="sparkeras-checkpoints-") if temporary else base
    directory = f"{root.rstrip('/')}/fit-{uuid.uuid4().hex}"
    try:
        tf.io.gfile.makedirs(directory)
    except tf.errors.OpError as error:
        raise ValueError(
            f"Cannot create the fit's checkpoint directory under checkpointDir={base!r}: "
            f"{error.message}. Set checkpointDir to a path TensorFlow can write (a local "
            "directory, hdfs://..., gs://...), or unset it for a temporary directory."
        ) from None
    try:
        yield directory
    finally:
        if temporary:
            shutil.rmtree(root, ignore_errors=True)
    if not temporary:
        tf.io.gfile.rmtree(directory)


def _check_finite_loss(history: dict[str, list[float]]) -> None:
    """A fit whose loss became NaN fails loudly instead of returning a broken model."""
    losses = history.get("loss", [])
    epoch = next((index + 1 for index, loss in enumerate(losses) if math.isnan(loss)), None)
    if epoch is not None:
        raise launch.TrainingError(
            f"The training loss became NaN in epoch {epoch}, so training stopped there. Lower "
            "the learning rate (learningRate), scale the features, or look for extreme or "
            f"invalid values in the data. History: {history}"
        )


class SparkKerasEstimator(Estimator, SparkKerasTrainingParams, MLWritable, MLReadable):
    """Train a compiled Keras 3 model on a Spark DataFrame, one TensorFlow process per Spark task.

    ``fit`` ships the compiled model (architecture, optimizer and its config, loss, metrics,
    weights) to one Spark barrier stage. With ``strategy="mirrored"`` its ``numWorkers`` tasks
    train on their own shards of the DataFrame with ``MultiWorkerMirroredStrategy`` (synchronous
    all-reduce). With ``strategy="parameter_server"`` the stage holds a coordinator, ``numWorkers``
    workers and ``numPs`` parameter servers, and training is asynchronous
    (``ParameterServerStrategy``). The user's model is never modified.

    Examples
    --------
    >>> import keras
    >>> model = keras.Sequential([keras.Input((200,)), keras.layers.Dense(1, "sigmoid")])
    >>> model.compile(optimizer="adam", loss="binary_crossentropy", metrics=["accuracy"])
    >>> estimator = SparkKerasEstimator(model=model, numWorkers=2, epochs=5, batchSize=128)
    >>> fitted = estimator.fit(df)  # doctest: +SKIP
    >>> fitted.history["accuracy"][-1]  # doctest: +SKIP
    0.97
    """

    @keyword_only
    def __init__(
        self,
        *,
        model: Any = None,
        featuresCol: str = "features",
        labelCol: str = "label",
        predictionCol: str = "prediction",
        rawPredictionCol: str = "rawPrediction",
        probabilityCol: str = "probability",
        outputMode: str = "auto",
        numWorkers: int = 1,
        strategy: str = "mirrored",
        numPs: int | None = None,
        stagingDir: str | None = None,
        checkpointDir: str | None = None,
        stallTimeout: float = 600.0,
        intraOpThreads: int = 0,
        forkServer: bool = True,
        stepsPerExecution: int = 0,
        weightCol: str | None = None,
        logDir: str | None = None,
        epochs: int = 1,
        batchSize: int = 32,
        stepsPerEpoch: int | None = None,
        learningRate: float | None = None,
        validationFraction: float = 0.0,
        callbacks: list | None = None,
        customObjects: dict | None = None,
        handleInvalid: str = "error",
        seed: int = 0,
        verbose: int = 0,
        safeMode: bool = True,
    ) -> None:
        super().__init__()
        self.setParams(**self._input_kwargs)

    @keyword_only
    def setParams(
        self,
        *,
        model: Any = None,
        featuresCol: str = "features",
        labelCol: str = "label",
        predictionCol: str = "prediction",
        rawPredictionCol: str = "rawPrediction",
        probabilityCol: str = "probability",
        outputMode: str = "auto",
        numWorkers: int = 1,
        strategy: str = "mirrored",
        numPs: int | None = None,
        stagingDir: str | None = None,
        checkpointDir: str | None = None,
        stallTimeout: float = 600.0,
        intraOpThreads: int = 0,
        forkServer: bool = True,
        stepsPerExecution: int = 0,
        weightCol: str | None = None,
        logDir: str | None = None,
        epochs: int = 1,
        batchSize: int = 32,
        stepsPerEpoch: int | None = None,
        learningRate: float | None = None,
        validationFraction: float = 0.0,
        callbacks: list | None = None,
        customObjects: dict | None = None,
        handleInvalid: str = "error",
        seed: int = 0,
        verbose: int = 0,
        safeMode: bool = True,
    ) -> SparkKerasEstimator:
        """Set params by keyword; ``None`` leaves a param unset."""
        kwargs = {key: value for key, value in self._input_kwargs.items() if value is not None}
        return self._set(**kwargs)

    def setModel(self, value: Any) -> SparkKerasEstimator:
        """Set the compiled ``keras.Model`` to train."""
        return self._set(model=value)

    def setFeaturesCol(self, value: str) -> SparkKerasEstimator:
        """Set the features column (Vector or array of numbers)."""
        return self._set(featuresCol=value)

    def setLabelCol(self, value: str) -> SparkKerasEstimator:
        """Set the label column (number, array of numbers or Vector)."""
        return self._set(labelCol=value)

    def setPredictionCol(self, value: str) -> SparkKerasEstimator:
        """Set the prediction column of the fitted model."""
        return self._set(predictionCol=value)

    def setRawPredictionCol(self, value: str) -> SparkKerasEstimator:
        """Set the raw score vector column of the fitted classifier ('' to skip it)."""
        return self._set(rawPredictionCol=value)

    def setProbabilityCol(self, value: str) -> SparkKerasEstimator:
        """Set the probability vector column of the fitted classifier ('' to skip it)."""
        return self._set(probabilityCol=value)

    def setOutputMode(self, value: str) -> SparkKerasEstimator:
        """Set 'auto', 'classification' or 'regression' for the fitted model's columns."""
        return self._set(outputMode=value)

    def setNumWorkers(self, value: int) -> SparkKerasEstimator:
        """Set the number of training processes (one barrier task each)."""
        return self._set(numWorkers=value)

    def setStrategy(self, value: str) -> SparkKerasEstimator:
        """Set the distribution strategy."""
        return self._set(strategy=value)

    def setNumPs(self, value: int) -> SparkKerasEstimator:
        """Set the number of parameter servers (``strategy='parameter_server'`` only)."""
        return self._set(numPs=value)

    def setStagingDir(self, value: str) -> SparkKerasEstimator:
        """Set the executor-local directory where shards are staged during a fit."""
        return self._set(stagingDir=value)

    def setCheckpointDir(self, value: str) -> SparkKerasEstimator:
        """Set the directory of the epoch checkpoints that retried stages resume from."""
        return self._set(checkpointDir=value)

    def setLogDir(self, value: str) -> SparkKerasEstimator:
        """Set the directory for the chief's TensorBoard logs."""
        return self._set(logDir=value)

    def setWeightCol(self, value: str) -> SparkKerasEstimator:
        """Set the column of per-row sample weights."""
        return self._set(weightCol=value)

    def setStallTimeout(self, value: float) -> SparkKerasEstimator:
        """Set the seconds without progress after which a worker counts as stuck."""
        return self._set(stallTimeout=value)

    def setIntraOpThreads(self, value: int) -> SparkKerasEstimator:
        """Set TensorFlow's threads (intra- and inter-op) per training process (0: task CPUs)."""
        return self._set(intraOpThreads=value)

    def setForkServer(self, value: bool) -> SparkKerasEstimator:
        """Set whether task processes are forked from a per-executor fork server."""
        return self._set(forkServer=value)

    def setStepsPerExecution(self, value: int) -> SparkKerasEstimator:
        """Set the training steps per call into TensorFlow (0: automatic, 1: one per call)."""
        return self._set(stepsPerExecution=value)

    def setEpochs(self, value: int) -> SparkKerasEstimator:
        """Set the number of epochs."""
        return self._set(epochs=value)

    def setBatchSize(self, value: int) -> SparkKerasEstimator:
        """Set the global batch size."""
        return self._set(batchSize=value)

    def setStepsPerEpoch(self, value: int) -> SparkKerasEstimator:
        """Override the number of steps per epoch."""
        return self._set(stepsPerEpoch=value)

    def setLearningRate(self, value: float) -> SparkKerasEstimator:
        """Override the compiled optimizer's learning rate."""
        return self._set(learningRate=value)

    def setValidationFraction(self, value: float) -> SparkKerasEstimator:
        """Set the fraction of rows held out for validation."""
        return self._set(validationFraction=value)

    def setCallbacks(self, value: list) -> SparkKerasEstimator:
        """Set the Keras callbacks run on the workers."""
        return self._set(callbacks=value)

    def setCustomObjects(self, value: dict) -> SparkKerasEstimator:
        """Set the custom Keras objects the model needs."""
        return self._set(customObjects=value)

    def setHandleInvalid(self, value: str) -> SparkKerasEstimator:
        """Set how rows with nulls are handled ('error' or 'skip')."""
        return self._set(handleInvalid=value)

    def setSeed(self, value: int) -> SparkKerasEstimator:
        """Set the seed of data shuffling and random ops."""
        return self._set(seed=value)

    def setVerbose(self, value: int) -> SparkKerasEstimator:
        """Set the verbosity."""
        return self._set(verbose=value)

    def setSafeMode(self, value: bool) -> SparkKerasEstimator:
        """Set Keras safe mode for deserialising the model."""
        return self._set(safeMode=value)

    def fit(self, dataset: DataFrame, params: Any = None) -> Any:
        """Fit on ``dataset``; ``params`` (a ParamMap or a list of them) must hold only this
        estimator's Params: Spark would silently ignore others."""
        for param_map in params if isinstance(params, (list, tuple)) else [params]:
            check_param_map(self, param_map)
        return super().fit(dataset, params)

    def write(self) -> SparkKerasWriter:
        """Writer for ``save``; the Keras model is stored as ``model.keras``."""
        custom_objects = self.getCustomObjects()
        files = {"callbacks.pkl": serialization.objects_to_bytes(self.getCallbacks())}
        if self.isDefined(self.model):
            files["model.keras"] = serialization.model_to_bytes(self.getModel())
            # Registered classes too: a fresh process may not have run their registration.
            custom_objects = serialization.custom_objects_to_ship(
                files["model.keras"], custom_objects
            )
        files["custom_objects.pkl"] = serialization.objects_to_bytes(custom_objects)
        return SparkKerasWriter(self, files)

    @classmethod
    def read(cls) -> SparkKerasReader:
        """Reader for ``load``."""
        return SparkKerasReader(cls)

    def _load_files(self, files: dict[str, bytes]) -> None:
        custom_objects = serialization.objects_from_bytes(files["custom_objects.pkl"])
        self._set(customObjects=custom_objects)
        self._set(callbacks=serialization.objects_from_bytes(files["callbacks.pkl"]))
        if "model.keras" in files:
            self._set(
                model=serialization.model_from_bytes(
                    files["model.keras"], custom_objects, safe_mode=self.getSafeMode()
                )
            )

    def _fit(self, dataset: DataFrame) -> SparkKerasModel:
        display = progress.ProgressDisplay(self.getVerbose())
        with (
            _checkpoint_directory(self.getCheckpointDir()) as checkpoint_dir,
            progress.progress_channel(dataset.sparkSession, display) as (address, secret),
        ):
            plan, shards = self._plan(dataset, checkpoint_dir)
            plan = dataclasses.replace(plan, progress_address=address, progress_secret=secret)
            result = launch.run_training(shards, plan)
        history = result.chief["history"]
        _check_finite_loss(history)
        fitted = SparkKerasModel._from_training(
            model_bytes=result.model_bytes,
            custom_objects_bytes=plan.custom_objects_bytes,
            history=history,
            worker_reports=result.reports,
        )
        if not display.epochs_shown:  # no live progress reached the driver: show the epochs now
            self._print_history(fitted.history)
        return self._copyValues(fitted)

    def _plan(self, dataset: DataFrame, checkpoint_dir: str) -> tuple[TrainingPlan, DataFrame]:
        """Every driver-side check and decision; returns the plan and the sharded rows.

        Checks that need no data run first, so their errors come before any Spark job.
        """
        if not self.isDefined(self.model):
            raise ValueError("No model to train: pass model=<compiled keras.Model>.")
        model = self.getModel()
        validation.check_compiled_model(model)
        validation.check_learning_rate_override(model, self.getLearningRate())
        strategy, num_workers, num_ps = self._cluster_shape()
        validation.check_callbacks(self.getCallbacks(), strategy)
        if strategy == "mirrored":
            per_worker = per_replica_batch_size(self.getBatchSize(), num_workers)
            if per_worker * num_workers != self.getBatchSize():
                warnings.warn(
                    f"batchSize={self.getBatchSize()} is not divisible by numWorkers={num_workers}: "
                    f"each worker trains on {per_worker} rows per step, a global batch of "
                    f"{per_worker * num_workers}. Use a multiple of {num_workers} to silence this.",
                    stacklevel=5,  # _plan, _fit, Estimator.fit, our fit, the caller
                )
        features = validation.feature_spec(dataset.schema, self.getFeaturesCol(), model)
        label = validation.label_spec(
            dataset.schema, self.getLabelCol(), validation.model_output_width(model)
        )
        weight_column = self.getWeightCol() if self.isDefined(self.weightCol) else None
        label = validation.with_weights(dataset.schema, label, weight_column or None)
        roles = task_roles(strategy, num_workers, num_ps)
        launch.check_task_slots(dataset.sparkSession, roles)
        if self.getLogDir() is not None and importlib.util.find_spec("tensorboard") is None:
            raise ValueError(
                "logDir needs the tensorboard package on the driver and the executors: "
                "pip install 'sparkeras[tensorboard]' (or tensorboard), or unset logDir."
            )
        model_bytes = serialization.model_to_bytes(model)
        launch.check_result_size(dataset.sparkSession, len(model_bytes))
        custom_objects = serialization.custom_objects_to_ship(model_bytes, self.getCustomObjects())
        # Rebuilding here turns "unknown layer" surprises on the executors into a driver error.
        serialization.model_from_bytes(model_bytes, custom_objects, safe_mode=self.getSafeMode())

        # The only Spark job before training, once everything else has been checked.
        # An autoencoder's label is its features column: select it once.
        columns = dict.fromkeys([features.column, label.column, label.weight_column])
        data = dataset.select(*[column for column in columns if column is not None])
        stats = validation.collect_data_stats(data, features, label)
        rows = validation.check_data(stats, features, label, self.getHandleInvalid(), num_workers)
        validation.check_validation_split(rows, num_workers, self.getValidationFraction(), strategy)
        if stats.invalid_rows:  # handleInvalid == "skip"
            data = data.filter(~validation.invalid_rows(features, label))
        if features.kind == "array":
            # Shards hold float32: casting before the shuffle halves the bytes it moves.
            data = data.withColumn(features.column, data[features.column].cast("array<float>"))
        plan = TrainingPlan(
            model_bytes=model_bytes,
            custom_objects_bytes=serialization.objects_to_bytes(custom_objects),
            callbacks_bytes=serialization.objects_to_bytes(self.getCallbacks()),
            features=features,
            label=label,
            num_workers=num_workers,
            strategy=strategy,
            epochs=self.getEpochs(),
            global_batch_size=self.getBatchSize(),
            steps_per_epoch=self.getStepsPerEpoch(),
            validation_fraction=self.getValidationFraction(),
            seed=keras_seed(self.getOrDefault(self.seed)),
            safe_mode=self.getSafeMode(),
            learning_rate=self.getLearningRate(),
            num_ps=num_ps,
            staging_dir=self.getStagingDir(),
            checkpoint_dir=checkpoint_dir,
            stall_timeout=self.getStallTimeout(),
            intra_op_threads=self.getIntraOpThreads(),
            fork_server=self.getForkServer(),
            steps_per_execution=steps_per_execution(
                self.getStepsPerExecution(),
                getattr(model, "steps_per_execution", 1),
                strategy,
                sparse_inputs=features.storage == "sparse",
            ),
            log_dir=self.getLogDir() or "",
        )
        # Balanced, mixed shards whatever the input partitioning (skewed, too few partitions,
        # sorted by label); coalesce would be cheaper for one worker, but barrier stages reject it.
        # In parameter-server mode the coordinator's shard is the validation set.
        holdout = plan.validation_fraction if strategy == "parameter_server" else 0.0
        return plan, partitioning.shard_rows(data, roles, rows, plan.seed, holdout)

    def _cluster_shape(self) -> tuple[str, int, int]:
        """The strategy, number of workers and number of parameter servers, checked together."""
        strategy, num_workers, num_ps = self.getStrategy(), self.getNumWorkers(), self.getNumPs()
        if strategy == "mirrored":
            if num_ps is not None:
                raise ValueError(
                    f"numPs={num_ps} is only used with strategy='parameter_server'; unset numPs "
                    "(estimator.clear(estimator.numPs)), or set strategy='parameter_server'."
                )
            return strategy, num_workers, 0
        return strategy, num_workers, 1 if num_ps is None else num_ps

    def _print_history(self, history: dict[str, list[float]]) -> None:
        if self.getVerbose() < 1 or not history:
            return
        for epoch in range(len(next(iter(history.values())))):
            metrics = " - ".join(f"{name}: {values[epoch]:.4f}" for name, values in history.items())
            print(f"Epoch {epoch + 1}/{self.getEpochs()} - {metrics}")
