"""Driver-side checks and model shipping, without Spark jobs."""

from __future__ import annotations

import warnings

import keras
import numpy as np
import pytest
from conftest import binary_model
from pyspark.ml.linalg import VectorUDT
from pyspark.sql.types import (
    ArrayType,
    DoubleType,
    IntegerType,
    LongType,
    StringType,
    StructField,
    StructType,
)

from sparkeras import serialization, validation
from sparkeras.plan import FeatureSpec, LabelSpec
from sparkeras.worker import keras_compat

SCHEMA = StructType(
    [
        StructField("vec", VectorUDT(), metadata={"ml_attr": {"num_attrs": 10}}),
        StructField("arr", ArrayType(DoubleType())),
        StructField("text", StringType()),
        StructField("y", IntegerType()),
        StructField("z", DoubleType()),
        StructField("id", LongType()),
    ]
)


def test_feature_and_label_specs_follow_the_schema():
    model = binary_model(10)
    assert validation.feature_spec(SCHEMA, "vec", model) == FeatureSpec("vec", "vector", 10)
    assert validation.feature_spec(SCHEMA, "arr", model).kind == "array"
    assert validation.label_spec(SCHEMA, "y", 1) == LabelSpec("y", "scalar", 1, "int32")
    assert validation.label_spec(SCHEMA, "z", 1).dtype == "float32"
    # Long labels keep their range: amounts or ids beyond 2**31 must not wrap around.
    assert validation.label_spec(SCHEMA, "id", 1) == LabelSpec("id", "scalar", 1, "int64")
    assert validation.label_spec(SCHEMA, "arr", 3) == LabelSpec("arr", "array", 3, "float32")


def test_schema_errors_name_the_problem_and_the_fix():
    model = binary_model(10)
    with pytest.raises(ValueError, match=r"features column 'nope' is not in the DataFrame.*'vec'"):
        validation.feature_spec(SCHEMA, "nope", model)
    with pytest.raises(TypeError, match=r"features column 'text' has type string"):
        validation.feature_spec(SCHEMA, "text", model)
    with pytest.raises(ValueError, match=r"width 10, but the model's input expects 4"):
        validation.feature_spec(SCHEMA, "vec", binary_model(4))
    with pytest.raises(TypeError, match="StringIndexer"):
        validation.label_spec(SCHEMA, "text", 1)


def test_models_need_one_flat_compiled_input():
    images = keras.Sequential([keras.Input((4, 4)), keras.layers.Flatten(), keras.layers.Dense(1)])
    images.compile(optimizer="sgd", loss="mse")
    with pytest.raises(ValueError, match=r"input has shape \(None, 4, 4\).*Reshape"):
        validation.model_input_width(images)
    with pytest.raises(ValueError, match="not compiled"):
        validation.check_compiled_model(
            keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
        )


def test_data_statistics_checks():
    features, label = FeatureSpec("f", "array", 3), LabelSpec("l", "scalar", 1, "float32")
    ok = validation.DataStats(rows=10, invalid_rows=0, feature_widths=(3, 3), label_widths=None)
    assert validation.check_data(ok, features, label, "error", 2) == 10
    with pytest.raises(ValueError, match="empty"):
        validation.check_data(validation.DataStats(0, 0, None, None), features, label, "error", 2)
    nulls = validation.DataStats(rows=10, invalid_rows=2, feature_widths=(3, 3), label_widths=None)
    with pytest.raises(ValueError, match=r"2 of 10 rows have a null"):
        validation.check_data(nulls, features, label, "error", 2)
    assert validation.check_data(nulls, features, label, "skip", 2) == 8
    ragged = validation.DataStats(rows=10, invalid_rows=0, feature_widths=(2, 3), label_widths=None)
    with pytest.raises(ValueError, match="width 2"):
        validation.check_data(ragged, features, label, "error", 2)
    with pytest.raises(ValueError, match=r"Only 10 usable row\(s\) for numWorkers=11"):
        validation.check_data(ok, features, label, "error", 11)


def test_model_bytes_round_trip_keeps_compile_state():
    model = binary_model(5, learning_rate=0.123)
    rebuilt = serialization.model_from_bytes(serialization.model_to_bytes(model))
    assert rebuilt.optimizer.get_config()["learning_rate"] == pytest.approx(0.123)
    assert rebuilt.loss == "binary_crossentropy"
    for before, after in zip(model.get_weights(), rebuilt.get_weights(), strict=True):
        assert (before == after).all()


def test_keras_compat_is_version_checked_and_idempotent():
    assert keras_compat.needs_patches((3, 15))
    assert keras_compat.needs_patches((3, 11))
    assert not keras_compat.needs_patches((3, 10))  # its epoch iterator yields pairs
    assert not keras_compat.needs_patches((3, 16))
    assert not keras_compat.needs_patches((2, 15))
    from keras.src.backend.tensorflow import trainer

    original = trainer.reduce_per_replica
    original_build = trainer.TensorFlowTrainer._maybe_symbolic_build
    try:
        assert keras_compat.apply() == ["_maybe_symbolic_build", "reduce_per_replica"]
        patched = trainer.reduce_per_replica
        keras_compat.apply()
        assert trainer.reduce_per_replica is patched  # not wrapped twice
    finally:
        trainer.reduce_per_replica = original
        trainer.TensorFlowTrainer._maybe_symbolic_build = original_build


def test_safe_mode_refuses_lambda_layers_unless_opted_out():
    model = keras.Sequential([keras.Input((2,)), keras.layers.Lambda(lambda x: x * 2.0)])
    model.compile(optimizer="sgd", loss="mse")
    data = serialization.model_to_bytes(model)
    with pytest.raises(
        serialization.ModelSerializationError, match=r"(?s)safe mode.*safeMode=False"
    ):
        serialization.model_from_bytes(data)
    rebuilt = serialization.model_from_bytes(data, safe_mode=False)
    assert float(rebuilt(np.ones((1, 2), dtype="float32"))[0, 0]) == 2.0


def test_a_missing_custom_class_is_named_even_with_lambda_in_its_name():
    error = TypeError("Could not locate class 'MyLambdaBlock'. Make sure custom classes are ...")
    explained = serialization._explain_load_error(error)
    assert 'customObjects={"MyLambdaBlock": MyLambdaBlock}' in explained
    assert "safe mode" not in explained


def test_a_validation_split_needs_a_training_row_per_worker_and_a_validation_row():
    for strategy in ("mirrored", "parameter_server"):
        validation.check_validation_split(4, 2, 0.2, strategy)  # enough: nothing raised
        validation.check_validation_split(2, 2, 0.0, strategy)  # no split asked for
    with pytest.raises(ValueError, match=r"validationFraction=0.2 cannot split 3 usable row"):
        validation.check_validation_split(3, 2, 0.2, "mirrored")
    # Parameter server: 0.2 of 2 rows rounds to no validation row at all.
    with pytest.raises(
        ValueError, match=r"Use more data or fewer workers, or validationFraction=0"
    ):
        validation.check_validation_split(2, 2, 0.2, "parameter_server")
    with pytest.raises(ValueError, match=r"cannot split 3 usable row\(s\) for numWorkers=3"):
        validation.check_validation_split(3, 3, 0.5, "parameter_server")


def test_named_outputs_are_named_by_their_keys_in_keras_order():
    inputs = keras.Input((4,))
    hidden = keras.layers.Dense(8)(inputs)
    heads = {"price": keras.layers.Dense(1)(hidden), "cls": keras.layers.Dense(3)(hidden)}
    named = keras.Model(inputs, heads)
    assert validation.model_output_names(named) == ("cls", "price")
    assert [int(out.shape[-1]) for out in named.outputs] == [3, 1]  # the same order
    listed = keras.Model(
        inputs, [keras.layers.Dense(1, name="a")(hidden), keras.layers.Dense(2, name="b")(hidden)]
    )
    assert validation.model_output_names(listed) == ("a", "b")


def test_learning_rate_cannot_replace_a_schedule():
    model = binary_model(3)
    validation.check_learning_rate_override(model, 0.5)  # a constant rate: replaced
    decaying = keras.optimizers.schedules.ExponentialDecay(0.1, decay_steps=100, decay_rate=0.9)
    model.compile(optimizer=keras.optimizers.Adam(decaying), loss="binary_crossentropy")
    validation.check_learning_rate_override(model, None)
    with pytest.raises(ValueError, match=r"learningRate=0.5 cannot replace .*ExponentialDecay"):
        validation.check_learning_rate_override(model, 0.5)
    scaled = keras.optimizers.LossScaleOptimizer(keras.optimizers.Adam(decaying))  # mixed precision
    model.compile(optimizer=scaled, loss="binary_crossentropy")
    with pytest.raises(ValueError, match=r"cannot replace .*ExponentialDecay"):
        validation.check_learning_rate_override(model, 0.5)


def test_stop_requests_are_voted_on_at_the_epoch_end():
    import tensorflow as tf

    stopper = keras_compat.StopTogether(tf.distribute.get_strategy())
    stopper.set_model(binary_model(3))
    stopper.model.stop_training = True  # asked from a batch hook on this worker
    stopper.on_train_batch_end(0)
    assert not stopper.model.stop_training  # held: the other workers go on with the epoch
    stopper.on_epoch_end(0)
    assert stopper.model.stop_training  # everyone stops after it
    stopper.model.stop_training = False
    stopper.on_epoch_end(1)
    assert not stopper.model.stop_training
    stopper.model.stop_training = True  # asked at the epoch's end from this worker's own state
    stopper.on_epoch_end(2)
    assert stopper.model.stop_training


def test_parameter_server_fits_warn_about_callbacks_whose_batch_hooks_would_not_run():
    class PerBatch(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            pass

    epoch_wise = [
        keras.callbacks.ModelCheckpoint("/tmp/unused.keras"),
        keras.callbacks.EarlyStopping(),
        keras.callbacks.TerminateOnNaN(),  # sparkeras stops on NaN at the epoch's end itself
        keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: None),
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        validation.check_callbacks(epoch_wise, "parameter_server")
        validation.check_callbacks([PerBatch()], "mirrored")  # Keras' fit calls every hook

    class CheckpointEachBatch(keras.callbacks.ModelCheckpoint):  # save_freq stays "epoch"
        def on_train_batch_end(self, batch, logs=None):
            pass

    per_batch = [
        PerBatch(),
        keras.callbacks.ModelCheckpoint("/tmp/unused.keras", save_freq=10),
        keras.callbacks.LambdaCallback(on_test_end=lambda logs: None),
        CheckpointEachBatch("/tmp/unused.keras"),
        keras.callbacks.TensorBoard("/tmp/unused", write_steps_per_second=True),
    ]
    names = "'PerBatch', 'ModelCheckpoint', 'LambdaCallback', 'CheckpointEachBatch', 'TensorBoard'"
    with pytest.warns(UserWarning, match=rf"hooks of \[{names}\] will not"):
        validation.check_callbacks(per_batch, "parameter_server")


def test_logit_classifiers_and_multi_label_logits():
    def compiled(units, loss, activation=None):
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(units, activation)])
        model.compile(optimizer="sgd", loss=loss)
        return model

    binary = keras.losses.BinaryCrossentropy(from_logits=True)
    categorical = keras.losses.CategoricalCrossentropy(from_logits=True)
    cases = [  # (model, logits, auto output mode)
        (compiled(1, binary), True, "classification"),
        (compiled(3, categorical), True, "classification"),
        (compiled(3, binary), False, "regression"),  # 3 independent labels, not 3 classes
        (compiled(1, binary, "sigmoid"), False, "classification"),  # probabilities already
        (compiled(1, "binary_crossentropy"), False, "regression"),
    ]
    for model, logits, mode in cases:
        assert validation.outputs_logits(model) is logits
        assert validation.output_mode(model, "auto") == mode
