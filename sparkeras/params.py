"""Spark ML ``Param`` mixins shared by :class:`SparkKerasEstimator` and :class:`SparkKerasModel`.

Every param is typed (a ``typeConverter`` rejects bad values when they are set, on the driver),
has a getter in its mixin and a setter on the public classes. Nothing here imports TensorFlow.
"""

from __future__ import annotations

from typing import Any

from pyspark.ml.param import Param, Params, TypeConverters
from pyspark.ml.param.shared import (
    HasFeaturesCol,
    HasLabelCol,
    HasPredictionCol,
    HasProbabilityCol,
    HasRawPredictionCol,
    HasSeed,
    HasWeightCol,
)

from sparkeras.plan import DEFAULT_STEPS_PER_EXECUTION

STRATEGIES = ("mirrored", "parameter_server")
OUTPUT_MODES = ("auto", "classification", "regression")
HANDLE_INVALID_OPTIONS = ("error", "skip")


def _to_keras_model(value: Any) -> Any:
    """Accept only ``keras.Model`` instances; the import stays lazy so executors never pay it."""
    import keras

    if not isinstance(value, keras.Model):
        raise TypeError(
            f"model must be a compiled keras.Model, got {type(value).__name__}. "
            "Build the model with keras.Sequential / the functional API and call model.compile(...)."
        )
    return value


def _to_positive_int(name: str, minimum: int = 1):
    def convert(value: Any) -> int:
        converted = TypeConverters.toInt(value)
        if converted < minimum:
            raise ValueError(f"{name} must be >= {minimum}, got {converted}.")
        return converted

    return convert


def _to_positive_float(name: str):
    def convert(value: Any) -> float:
        converted = TypeConverters.toFloat(value)
        if not converted > 0:
            raise ValueError(f"{name} must be > 0, got {converted}.")
        return converted

    return convert


def _to_choice(name: str, choices: tuple[str, ...]):
    def convert(value: Any) -> str:
        converted = TypeConverters.toString(value)
        if converted not in choices:
            raise ValueError(f"{name}={converted!r} is not valid; choose one of {list(choices)}.")
        return converted

    return convert


def _to_fraction(value: Any) -> float:
    converted = TypeConverters.toFloat(value)
    if not 0.0 <= converted < 1.0:
        raise ValueError(f"validationFraction must be in [0, 1), got {converted}.")
    return converted


def _to_callbacks(value: Any) -> list:
    import keras

    callbacks = list(value or [])
    for callback in callbacks:
        if not isinstance(callback, keras.callbacks.Callback):
            raise TypeError(
                f"callbacks must be keras.callbacks.Callback instances, got {type(callback).__name__}."
            )
    return callbacks


def _to_optional_directory(value: Any) -> str | None:
    """A directory path; ``""`` counts as unset (``None``), so no path is built on ``""``."""
    return TypeConverters.toString(value) or None


def _to_custom_objects(value: Any) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise TypeError(
            "customObjects must be a dict mapping names to classes or functions, "
            'e.g. {"MyLayer": MyLayer}.'
        )
    return dict(value)


class HasKerasModel(Params):
    """The compiled ``keras.Model`` to train; copied, never mutated."""

    model: Param[Any] = Param(
        Params._dummy(),
        "model",
        "compiled keras.Model to train (architecture, optimizer, loss, metrics and weights are used)",
        typeConverter=_to_keras_model,
    )

    def getModel(self) -> Any:
        """Return the compiled ``keras.Model`` this estimator trains."""
        return self.getOrDefault(self.model)


class HasCustomObjects(Params):
    """Custom layers, losses and metrics that Keras needs to rebuild the model on executors."""

    customObjects: Param[dict] = Param(
        Params._dummy(),
        "customObjects",
        "dict of name -> custom Keras class/function used by the model (shipped with cloudpickle)",
        typeConverter=_to_custom_objects,
    )

    def getCustomObjects(self) -> dict:
        """Return the custom objects shipped with the model."""
        return self.getOrDefault(self.customObjects)


class HasSafeMode(Params):
    """Keras' safe mode when deserialising models (it refuses to run pickled lambdas)."""

    safeMode: Param[bool] = Param(
        Params._dummy(),
        "safeMode",
        "load Keras models with safe_mode=True; set False only for trusted models with Lambda layers",
        typeConverter=TypeConverters.toBoolean,
    )

    def getSafeMode(self) -> bool:
        """Return whether Keras safe mode is used when models are deserialised."""
        return self.getOrDefault(self.safeMode)


class _SharedParams(
    HasFeaturesCol,
    HasPredictionCol,
    HasRawPredictionCol,
    HasProbabilityCol,
    HasCustomObjects,
    HasSafeMode,
):
    """Params of both the estimator and the fitted model (``_copyValues`` carries them over)."""

    outputMode: Param[str] = Param(
        Params._dummy(),
        "outputMode",
        "prediction columns of transform(): 'classification' (rawPrediction, probability, "
        "prediction label, like Spark's classifiers), 'regression' (prediction values), or "
        "'auto' (classification when the last layer is a sigmoid or softmax, or the loss was "
        "compiled with from_logits=True)",
        typeConverter=_to_choice("outputMode", OUTPUT_MODES),
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._setDefault(
            featuresCol="features",
            predictionCol="prediction",
            rawPredictionCol="rawPrediction",
            probabilityCol="probability",
            outputMode="auto",
            customObjects={},
            safeMode=True,
        )

    def getOutputMode(self) -> str:
        """Return the output mode of ``transform``."""
        return self.getOrDefault(self.outputMode)


class SparkKerasModelParams(_SharedParams):
    """Params of :class:`SparkKerasModel`."""

    inferenceBatchSize: Param[int] = Param(
        Params._dummy(),
        "inferenceBatchSize",
        "rows per model call in transform()",
        typeConverter=_to_positive_int("inferenceBatchSize"),
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._setDefault(inferenceBatchSize=1024)

    def getInferenceBatchSize(self) -> int:
        """Return the number of rows per model call in ``transform``."""
        return self.getOrDefault(self.inferenceBatchSize)


class SparkKerasTrainingParams(_SharedParams, HasKerasModel, HasLabelCol, HasSeed, HasWeightCol):
    """Params of :class:`SparkKerasEstimator`."""

    numWorkers: Param[int] = Param(
        Params._dummy(),
        "numWorkers",
        "number of training processes, one Spark barrier task each",
        typeConverter=_to_positive_int("numWorkers"),
    )
    strategy: Param[str] = Param(
        Params._dummy(),
        "strategy",
        f"distribution strategy, one of {list(STRATEGIES)}",
        typeConverter=_to_choice("strategy", STRATEGIES),
    )
    numPs: Param[int] = Param(
        Params._dummy(),
        "numPs",
        "number of parameter-server tasks (strategy='parameter_server' only; default 1)",
        typeConverter=_to_positive_int("numPs"),
    )
    stagingDir: Param[str] = Param(
        Params._dummy(),
        "stagingDir",
        "directory on each executor's local disk where a fit stages its shard files (removed "
        "when the fit ends); default: the executor's temporary directory",
        typeConverter=_to_optional_directory,
    )
    checkpointDir: Param[str] = Param(
        Params._dummy(),
        "checkpointDir",
        "directory for the epoch checkpoints a retried training stage resumes from (any path "
        "TensorFlow's file system can write; on a cluster, one every executor can reach); "
        "default: a temporary directory on the driver, fine for local and local-cluster masters",
        typeConverter=_to_optional_directory,
    )
    logDir: Param[str] = Param(
        Params._dummy(),
        "logDir",
        "directory for TensorBoard logs written by the chief (epoch scalars); unset for none",
        typeConverter=_to_optional_directory,
    )
    stallTimeout: Param[float] = Param(
        Params._dummy(),
        "stallTimeout",
        "seconds without a finished training step after which a worker counts as stuck: its "
        "task fails, and the stage is retried (resuming from the last checkpoint) or the fit "
        "fails; it must exceed the slowest step, evaluation or checkpoint",
        typeConverter=_to_positive_float("stallTimeout"),
    )
    intraOpThreads: Param[int] = Param(
        Params._dummy(),
        "intraOpThreads",
        "TensorFlow threads per training process (intra-op, and as many inter-op); 0 (default) "
        "uses the task's CPUs (spark.task.cpus), so processes sharing a machine do not "
        "oversubscribe its cores",
        typeConverter=_to_positive_int("intraOpThreads", minimum=0),
    )
    forkServer: Param[bool] = Param(
        Params._dummy(),
        "forkServer",
        "fork each task's TensorFlow process from a per-executor server that imported "
        "TensorFlow once (Linux), instead of starting a fresh interpreter that spends about 3 s "
        "importing it; the server ends with its executor",
        typeConverter=TypeConverters.toBoolean,
    )
    stepsPerExecution: Param[int] = Param(
        Params._dummy(),
        "stepsPerExecution",
        "training steps run per call into TensorFlow, in one graph (Keras' steps_per_execution; "
        "with parameter servers, per scheduled function): it removes the per-step Python and "
        "scheduling overhead, which dominates small models in multi-worker training; batch-level "
        "callbacks then run once per call (mirrored). 0 (default) "
        "uses the compiled model's steps_per_execution when it is above 1, else "
        f"{DEFAULT_STEPS_PER_EXECUTION} (mirrored) or 1 (parameter_server: longer scheduled "
        "functions overlap more, and Keras 3 loses overlapping updates); 1 calls TensorFlow "
        "once per step, as do mirrored models fed sparse inputs",
        typeConverter=_to_positive_int("stepsPerExecution", minimum=0),
    )
    epochs: Param[int] = Param(
        Params._dummy(),
        "epochs",
        "number of passes over the data",
        typeConverter=_to_positive_int("epochs"),
    )
    batchSize: Param[int] = Param(
        Params._dummy(),
        "batchSize",
        "global batch size, split evenly across workers (mirrored); the batch of each "
        "asynchronous step (parameter_server)",
        typeConverter=_to_positive_int("batchSize"),
    )
    stepsPerEpoch: Param[int] = Param(
        Params._dummy(),
        "stepsPerEpoch",
        "training steps per epoch on every worker; by default enough for each worker to see every "
        "row of the largest shard once",
        typeConverter=_to_positive_int("stepsPerEpoch"),
    )
    learningRate: Param[float] = Param(
        Params._dummy(),
        "learningRate",
        "learning rate for the compiled optimizer (overrides its own; handy in ParamGridBuilder)",
        typeConverter=_to_positive_float("learningRate"),
    )
    validationFraction: Param[float] = Param(
        Params._dummy(),
        "validationFraction",
        "fraction of rows held out for validation (val_* metrics in the history); 0 disables it",
        typeConverter=_to_fraction,
    )
    callbacks: Param[list] = Param(
        Params._dummy(),
        "callbacks",
        "list of keras.callbacks.Callback run on every worker (epoch-level logs are global)",
        typeConverter=_to_callbacks,
    )
    handleInvalid: Param[str] = Param(
        Params._dummy(),
        "handleInvalid",
        "rows with null features or labels: 'error' fails the fit, 'skip' drops and counts them",
        typeConverter=_to_choice("handleInvalid", HANDLE_INVALID_OPTIONS),
    )
    verbose: Param[int] = Param(
        Params._dummy(),
        "verbose",
        "0 silent, 1 live progress on the driver (epoch, steps, ETA, the chief's metrics), "
        "2 one line per epoch",
        typeConverter=TypeConverters.toInt,
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._setDefault(
            labelCol="label",
            numWorkers=1,
            strategy="mirrored",
            epochs=1,
            batchSize=32,
            validationFraction=0.0,
            callbacks=[],
            verbose=0,
            handleInvalid="error",
            seed=0,
            stallTimeout=600.0,
            intraOpThreads=0,
            forkServer=True,
            stepsPerExecution=0,
        )

    def getNumWorkers(self) -> int:
        """Return the number of training processes."""
        return self.getOrDefault(self.numWorkers)

    def getStrategy(self) -> str:
        """Return the distribution strategy name."""
        return self.getOrDefault(self.strategy)

    def getNumPs(self) -> int | None:
        """Return the number of parameter servers, or ``None`` when not set."""
        return self.getOrDefault(self.numPs) if self.isDefined(self.numPs) else None

    def getStagingDir(self) -> str | None:
        """Return the executor-local staging directory, or ``None`` for the temporary directory."""
        return self.getOrDefault(self.stagingDir) if self.isDefined(self.stagingDir) else None

    def getCheckpointDir(self) -> str | None:
        """Return the checkpoint directory, or ``None`` for a temporary one per fit."""
        return self.getOrDefault(self.checkpointDir) if self.isDefined(self.checkpointDir) else None

    def getLogDir(self) -> str | None:
        """Return the TensorBoard log directory, or ``None``."""
        return self.getOrDefault(self.logDir) if self.isDefined(self.logDir) else None

    def getStallTimeout(self) -> float:
        """Return the seconds without progress after which a worker counts as stuck."""
        return self.getOrDefault(self.stallTimeout)

    def getIntraOpThreads(self) -> int:
        """Return the intra-op threads per training process (0: the task's CPUs)."""
        return self.getOrDefault(self.intraOpThreads)

    def getStepsPerExecution(self) -> int:
        """Return the training steps per call into TensorFlow (0: automatic)."""
        return self.getOrDefault(self.stepsPerExecution)

    def getForkServer(self) -> bool:
        """Return whether task processes are forked from a per-executor fork server."""
        return self.getOrDefault(self.forkServer)

    def getEpochs(self) -> int:
        """Return the number of epochs."""
        return self.getOrDefault(self.epochs)

    def getBatchSize(self) -> int:
        """Return the global batch size."""
        return self.getOrDefault(self.batchSize)

    def getStepsPerEpoch(self) -> int | None:
        """Return the steps-per-epoch override, or ``None`` when derived from the data."""
        return self.getOrDefault(self.stepsPerEpoch) if self.isDefined(self.stepsPerEpoch) else None

    def getLearningRate(self) -> float | None:
        """Return the learning-rate override, or ``None`` to keep the compiled optimizer's."""
        return self.getOrDefault(self.learningRate) if self.isDefined(self.learningRate) else None

    def getValidationFraction(self) -> float:
        """Return the fraction of rows held out for validation."""
        return self.getOrDefault(self.validationFraction)

    def getCallbacks(self) -> list:
        """Return the Keras callbacks run on the workers."""
        return self.getOrDefault(self.callbacks)

    def getHandleInvalid(self) -> str:
        """Return how rows with null features or labels are handled."""
        return self.getOrDefault(self.handleInvalid)

    def getVerbose(self) -> int:
        """Return the verbosity level."""
        return self.getOrDefault(self.verbose)
