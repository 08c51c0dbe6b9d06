"""Driver-side checks of the model, the schema and the data, run before the training stage.

Each check raises a ``ValueError``/``TypeError`` that names the problem and the fix. Everything that
the schema and the model reveal is checked without a Spark job; what needs the data (row count,
nulls, array widths) is computed in one aggregation job (:func:`collect_data_stats`).
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any

from pyspark.ml.linalg import VectorUDT
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql.types import (
    ArrayType,
    BooleanType,
    DataType,
    FractionalType,
    IntegralType,
    LongType,
    NumericType,
    StructType,
)

from sparkeras.plan import FeatureSpec, LabelSpec


def check_compiled_model(model: Any) -> None:
    """The model must be a compiled single-input ``keras.Model`` with a flat input."""
    import keras

    if not isinstance(model, keras.Model):
        raise TypeError(
            f"model must be a compiled keras.Model, got {type(model).__name__}. "
            "Pass e.g. keras.Sequential([...]) after calling model.compile(...)."
        )
    if not getattr(model, "compiled", False) or model.optimizer is None:
        raise ValueError(
            "The model is not compiled. Call model.compile(optimizer=..., loss=..., metrics=...) "
            "before passing it to sparkeras."
        )
    if len(model.outputs) != 1:
        raise ValueError(
            f"The model has {len(model.outputs)} outputs; sparkeras trains models with exactly "
            "one output (one label column). Concatenate the outputs into one layer."
        )
    if len(model.inputs) != 1:
        raise ValueError(
            f"The model has {len(model.inputs)} inputs; sparkeras feeds one features column, so "
            "the model needs exactly one input (concatenate features with VectorAssembler)."
        )


#: Callback hooks that the parameter-server loop never calls: it schedules steps on remote
#: workers and evaluates on a local copy of the model, so only the train and epoch hooks run.
_HOOKS_WITHOUT_PARAMETER_SERVERS = (
    "on_batch_begin",
    "on_batch_end",
    "on_train_batch_begin",
    "on_train_batch_end",
    "on_test_begin",
    "on_test_end",
    "on_test_batch_begin",
    "on_test_batch_end",
)


def check_callbacks(callbacks: list | None, strategy: str) -> None:
    """Refuse callbacks that cannot work on the workers, and warn about parameter-server
    callbacks whose batch or validation hooks would not be called."""
    import keras

    for callback in callbacks or []:
        if isinstance(callback, keras.callbacks.BackupAndRestore):
            raise ValueError(
                "keras.callbacks.BackupAndRestore cannot be used: sparkeras checkpoints every "
                "epoch itself and resumes retried stages from there (set checkpointDir to choose "
                "where), and in Keras 3 every worker would write the same backup directory. "
                "Remove it from callbacks."
            )
    if strategy != "parameter_server":
        return
    ignored = [type(callback).__name__ for callback in callbacks or [] if _acts_per_batch(callback)]
    if ignored:
        warnings.warn(
            f"strategy='parameter_server' calls only the train and epoch hooks of callbacks "
            f"(on_train_begin/end, on_epoch_begin/end): the batch-level or validation hooks of "
            f"{ignored} will not run. Act at epoch ends (e.g. ModelCheckpoint(save_freq='epoch')),"
            " or use strategy='mirrored'.",
            stacklevel=6,  # the caller of SparkKerasEstimator.fit
        )


def _acts_per_batch(callback: Any) -> bool:
    """Whether ``callback`` does anything in the hooks the parameter-server loop never calls:
    Keras' own callbacks whose settings use those hooks, and hooks a class or instance adds."""
    import keras

    configured = {
        keras.callbacks.ModelCheckpoint: lambda c: c.save_freq != "epoch",
        keras.callbacks.TensorBoard: lambda c: (
            c.update_freq != "epoch"
            or c.write_steps_per_second
            or getattr(c, "_start_batch", 0) > 0  # profile_batch
        ),
        # sparkeras itself stops on a NaN loss at the end of the epoch.
        keras.callbacks.TerminateOnNaN: lambda c: False,
    }
    reference, uses_batches = next(
        ((kind, check) for kind, check in configured.items() if isinstance(callback, kind)),
        (keras.callbacks.Callback, lambda c: False),
    )
    return uses_batches(callback) or any(
        hook in vars(callback) or getattr(type(callback), hook) is not getattr(reference, hook)
        for hook in _HOOKS_WITHOUT_PARAMETER_SERVERS
    )


def check_learning_rate_override(model: Any, learning_rate: float | None) -> None:
    """``learningRate`` replaces a constant learning rate; it cannot replace a schedule."""
    optimizer = getattr(model.optimizer, "inner_optimizer", model.optimizer)  # mixed precision
    schedule = optimizer.get_config().get("learning_rate")
    if learning_rate is not None and isinstance(schedule, dict):  # a serialised schedule
        raise ValueError(
            f"learningRate={learning_rate} cannot replace the model's learning-rate schedule "
            f"({schedule.get('class_name')}). Unset learningRate, or compile the model with a "
            "constant learning rate."
        )


def model_input_width(model: Any) -> int:
    """Width of the model's single flat input ``(batch, width)``."""
    shape = tuple(model.inputs[0].shape)
    if len(shape) != 2 or shape[1] is None:
        raise ValueError(
            f"The model's input has shape {shape}; sparkeras feeds flat feature vectors, so the "
            "input must be (None, width) with a known width. Add a keras.layers.Reshape after "
            "keras.Input((width,)) for image or sequence models."
        )
    return int(shape[1])


def model_input_is_sparse(model: Any) -> bool:
    """Whether the model declares ``keras.Input(..., sparse=True)``."""
    return bool(getattr(model.inputs[0], "sparse", False))


def _field_type(schema: StructType, column: str, role: str) -> DataType:
    if column not in schema.names:
        raise ValueError(
            f"{role} column '{column}' is not in the DataFrame. Available columns: {schema.names}. "
            f"Set {role}Col to one of them."
        )
    return schema[column].dataType


def _is_numeric_array(data_type: DataType) -> bool:
    return isinstance(data_type, ArrayType) and isinstance(data_type.elementType, NumericType)


def feature_spec(schema: StructType, column: str, model: Any) -> FeatureSpec:
    """Describe the features column and check it can feed the model."""
    data_type = _field_type(schema, column, "features")
    width = model_input_width(model)
    if isinstance(data_type, VectorUDT):
        kind = "vector"
        declared = _vector_size_from_metadata(schema[column].metadata)
        if declared is not None and declared != width:
            raise ValueError(_width_error(column, declared, width))
    elif _is_numeric_array(data_type):
        kind = "array"
    else:
        raise TypeError(
            f"features column '{column}' has type {data_type.simpleString()}; use a "
            "pyspark.ml.linalg Vector column (e.g. from VectorAssembler) or an array of numbers."
        )
    if model_input_is_sparse(model) and kind != "vector":
        raise TypeError(
            f"The model's input is sparse, but features column '{column}' is an array; use a "
            "SparseVector column or a dense model input."
        )
    return FeatureSpec(
        column=column,
        kind=kind,
        width=width,
        storage="sparse" if model_input_is_sparse(model) else "dense",
    )


def output_mode(model: Any, requested: str) -> str:
    """'classification' or 'regression'; 'auto' looks at the last layer's activation, and at
    the compiled loss for a classifier that outputs logits."""
    if requested != "auto":
        return requested
    return (
        "classification" if _ends_in_probabilities(model) or outputs_logits(model) else "regression"
    )


def outputs_logits(model: Any) -> bool:
    """Whether the model is a classifier that outputs logits: compiled with a loss taking
    ``from_logits=True`` (``BinaryCrossentropy`` for one unit, a categorical one for several),
    and its last layer is not a sigmoid or softmax already.

    Several units with a binary loss are independent labels (multi-label), not the classes of
    one label: they stay regression outputs.
    """
    loss = getattr(model, "loss", None)
    if not getattr(loss, "from_logits", False) or _ends_in_probabilities(model):
        return False
    return model_output_width(model) == 1 or "categorical" in type(loss).__name__.lower()


def _ends_in_probabilities(model: Any) -> bool:
    last = model.layers[-1] if model.layers else None
    activation = getattr(last, "activation", None)
    name = getattr(activation, "__name__", "") or type(last).__name__.lower()
    return name in ("sigmoid", "softmax")


def model_output_width(model: Any) -> int:
    """Last dimension of the model's (first) output: the width of array or vector labels."""
    return int(model.outputs[0].shape[-1] or 1)


def model_output_names(model: Any) -> tuple[str, ...]:
    """A name for each of ``model.outputs``, in that order: the keys of a dict of outputs (which
    Keras orders by key), otherwise the output layers' names."""
    import keras

    structure = getattr(model, "output", None)
    if isinstance(structure, dict):
        return tuple(str(path[-1]) for path, _ in keras.tree.flatten_with_path(structure))
    return tuple(model.output_names)


def label_spec(schema: StructType, column: str, width: int) -> LabelSpec:
    """Describe the label column; array and vector labels must be ``width`` long."""
    data_type = _field_type(schema, column, "label")
    if isinstance(data_type, LongType):  # class ids fit int32, but amounts or ids may not
        return LabelSpec(column=column, kind="scalar", width=1, dtype="int64")
    if isinstance(data_type, (IntegralType, BooleanType)):
        return LabelSpec(column=column, kind="scalar", width=1, dtype="int32")
    if isinstance(data_type, FractionalType):
        return LabelSpec(column=column, kind="scalar", width=1, dtype="float32")
    if isinstance(data_type, VectorUDT) or _is_numeric_array(data_type):
        kind = "vector" if isinstance(data_type, VectorUDT) else "array"
        return LabelSpec(column=column, kind=kind, width=width, dtype="float32")
    raise TypeError(
        f"label column '{column}' has type {data_type.simpleString()}; use a numeric column, "
        "an array of numbers or a Vector. Index string labels first with StringIndexer."
    )


def with_weights(schema: StructType, label: LabelSpec, column: str | None) -> LabelSpec:
    """``label`` with its per-row weight column, which must be numeric."""
    if column is None:
        return label
    data_type = _field_type(schema, column, "weight")
    if not isinstance(data_type, NumericType):
        raise TypeError(
            f"weight column '{column}' has type {data_type.simpleString()}; sample weights must "
            "be a numeric column."
        )
    return dataclasses.replace(label, weight_column=column)


def _vector_size_from_metadata(metadata: dict) -> int | None:
    size = metadata.get("ml_attr", {}).get("num_attrs")
    return int(size) if size is not None else None


def _width_error(column: str, found: int, expected: int) -> str:
    return (
        f"features column '{column}' has width {found}, but the model's input expects {expected} "
        f"features. Change the model's keras.Input(({found},)) or the feature pipeline."
    )


@dataclasses.dataclass(frozen=True)
class DataStats:
    """What one aggregation job over the training columns tells."""

    rows: int
    invalid_rows: int
    feature_widths: tuple[int, int] | None
    label_widths: tuple[int, int] | None


#: Doubles of this magnitude and up become infinite as float32, the type the model is fed.
FLOAT32_OVERFLOW = float.fromhex("0x1.ffffffp+127")


def invalid_rows(features: FeatureSpec, label: LabelSpec) -> Column:
    """True for rows with a null, or a NaN, infinite or float32-overflowing number in an array or
    fractional column, or a negative weight.

    Vector columns are a user-defined type that SQL cannot look into without densifying every
    row; their values are checked by the executors as they write the shards.
    """

    def unusable(value: Column) -> Column:
        # Spark SQL orders NaN above every number, so this is true for NaN too. No abs(): under
        # ANSI mode it fails on an integer column's minimum value.
        return (value <= F.lit(-FLOAT32_OVERFLOW)) | (value >= F.lit(FLOAT32_OVERFLOW))

    invalid = F.col(features.column).isNull() | F.col(label.column).isNull()
    for column, kind in ((features.column, features.kind), (label.column, label.kind)):
        if kind == "array":
            invalid = invalid | F.exists(column, lambda value: value.isNull() | unusable(value))
    if label.kind == "scalar" and label.dtype == "float32":
        invalid = invalid | unusable(F.col(label.column))
    if label.weight_column is not None:
        weight = F.col(label.weight_column)
        invalid = invalid | weight.isNull() | unusable(weight) | (weight < 0)
    return invalid


def collect_data_stats(data: DataFrame, features: FeatureSpec, label: LabelSpec) -> DataStats:
    """Count rows and invalid rows, and the min/max width of array columns, in one job."""
    invalid = invalid_rows(features, label)
    aggregates = [F.count(F.lit(1)), F.count(F.when(invalid, 1))]

    def widths(column: str, kind: str) -> list:
        if kind != "array":
            return []
        size = F.when(F.col(column).isNotNull(), F.size(column))
        return [F.min(size), F.max(size)]

    aggregates += widths(features.column, features.kind) + widths(label.column, label.kind)
    row = data.agg(*aggregates).first()
    values = list(row) if row is not None else [0, 0]
    feature_widths = tuple(values[2:4]) if features.kind == "array" else None
    label_widths = tuple(values[-2:]) if label.kind == "array" else None
    return DataStats(int(values[0]), int(values[1]), feature_widths, label_widths)


def check_data(
    stats: DataStats, features: FeatureSpec, label: LabelSpec, handle_invalid: str, num_workers: int
) -> int:
    """Check the statistics against the plan; return the number of rows that will be trained on."""
    if stats.rows == 0:
        raise ValueError("The training DataFrame is empty; there is nothing to fit.")
    if stats.invalid_rows and handle_invalid == "error":
        raise ValueError(
            f"{stats.invalid_rows} of {stats.rows} rows have a null, NaN or infinite value (or a "
            f"number beyond float32's range, about 3.4e38) in '{features.column}' or "
            f"'{label.column}'"
            + (f", or a negative weight in '{label.weight_column}'" if label.weight_column else "")
            + ". Fill or drop them (e.g. with Imputer), or set handleInvalid='skip' to drop and "
            "count them."
        )
    if stats.feature_widths and stats.feature_widths != (features.width, features.width):
        found = next(w for w in stats.feature_widths if w != features.width)
        raise ValueError(_width_error(features.column, found, features.width))
    if stats.label_widths and stats.label_widths != (label.width, label.width):
        raise ValueError(
            f"label column '{label.column}' has arrays of length {stats.label_widths[0]} to "
            f"{stats.label_widths[1]}, but the model's output has width {label.width}; every label "
            "must match the model's output."
        )
    usable = stats.rows - (stats.invalid_rows if handle_invalid == "skip" else 0)
    if usable < num_workers:
        raise ValueError(
            f"Only {usable} usable row(s) for numWorkers={num_workers}; every worker needs at least "
            "one row. Use fewer workers or more data."
        )
    return usable


def check_validation_split(rows: int, num_workers: int, fraction: float, strategy: str) -> None:
    """A validation split must hold out at least one row and leave every worker a training row.

    In mirrored mode every worker holds out its own rows; in parameter-server mode the held-out
    rows go to the coordinator.

    Examples
    --------
    >>> check_validation_split(3, 2, 0.2, "mirrored")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: validationFraction=0.2 cannot split 3 usable row(s) for numWorkers=2: ...
    """
    if fraction <= 0.0:
        return
    if strategy == "mirrored":
        enough = rows >= 2 * num_workers
    else:
        held_out = round(fraction * rows)
        enough = held_out >= 1 and rows - held_out >= num_workers
    if not enough:
        raise ValueError(
            f"validationFraction={fraction} cannot split {rows} usable row(s) for "
            f"numWorkers={num_workers}: every worker needs a training row and the validation set "
            "at least one row. Use more data or fewer workers, or validationFraction=0."
        )
