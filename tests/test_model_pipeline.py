"""SparkKerasModel as a Spark ML citizen: output columns, evaluators, persistence, tuning."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from conftest import array_frame, binary_model, separable
from pyspark.ml import Pipeline, PipelineModel
from pyspark.ml.evaluation import (
    BinaryClassificationEvaluator,
    MulticlassClassificationEvaluator,
    RegressionEvaluator,
)
from pyspark.ml.feature import StandardScaler, VectorAssembler
from pyspark.ml.functions import vector_to_array
from pyspark.ml.tuning import (
    CrossValidator,
    CrossValidatorModel,
    ParamGridBuilder,
    TrainValidationSplit,
)

from sparkeras import SparkKerasEstimator, SparkKerasModel, inference, persistence

pytestmark = pytest.mark.spark
WIDTH = 6


@pytest.fixture(scope="module")
def binary_data(spark):
    features, labels = separable(800, WIDTH, seed=11)
    return array_frame(spark, features, labels).cache()


@pytest.fixture(scope="module")
def binary_fitted(binary_data):
    estimator = SparkKerasEstimator(
        model=binary_model(WIDTH, learning_rate=0.05), numWorkers=2, epochs=5, batchSize=32
    )
    return estimator.fit(binary_data)


def test_binary_classifier_columns_work_with_spark_evaluators(binary_fitted, binary_data):
    scored = binary_fitted.transform(binary_data)
    assert scored.columns == ["features", "label", "rawPrediction", "probability", "prediction"]
    assert BinaryClassificationEvaluator().evaluate(scored) > 0.97
    accuracy = MulticlassClassificationEvaluator(metricName="accuracy").evaluate(scored)
    assert accuracy > 0.9
    row = scored.first()
    assert row.probability[0] + row.probability[1] == pytest.approx(1.0)
    assert row.prediction == float(row.probability[1] > 0.5)
    assert np.sign(row.rawPrediction[1]) == np.sign(row.probability[1] - 0.5)
    # Columns can be renamed or left out.
    renamed = binary_fitted.copy().setProbabilityCol("").setRawPredictionCol("score")
    assert renamed.transform(binary_data).columns == ["features", "label", "score", "prediction"]


def test_softmax_and_regression_outputs(spark):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(600, 3))
    classes = np.argmax(x, axis=1).astype(float)
    frame = spark.createDataFrame(
        pd.DataFrame({"features": list(x), "label": classes, "target": x @ [1.0, -2.0, 0.5]})
    )
    softmax = keras.Sequential([keras.Input((3,)), keras.layers.Dense(3, activation="softmax")])
    softmax.compile(optimizer=keras.optimizers.Adam(0.1), loss="sparse_categorical_crossentropy")
    fitted = SparkKerasEstimator(model=softmax, numWorkers=2, epochs=8, batchSize=40).fit(frame)
    scored = fitted.transform(frame)
    assert MulticlassClassificationEvaluator(metricName="accuracy").evaluate(scored) > 0.85
    assert MulticlassClassificationEvaluator(metricName="logLoss").evaluate(scored) < 0.6

    linear = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    linear.compile(optimizer=keras.optimizers.Adam(0.1), loss="mse")
    regressor = SparkKerasEstimator(
        model=linear, labelCol="target", numWorkers=2, epochs=10, batchSize=40
    ).fit(frame)
    scored = regressor.transform(frame)
    assert dict(scored.dtypes)["prediction"] == "double"
    assert RegressionEvaluator(labelCol="target").evaluate(scored) < 0.2


def test_transform_errors(binary_fitted, binary_data):
    with pytest.raises(ValueError, match=r"features column 'features' is not in the DataFrame"):
        binary_fitted.transform(binary_data.drop("features"))
    narrow = binary_data.selectExpr("slice(features, 1, 3) AS features", "label")
    with pytest.raises(Exception, match=r"width 3, but the model expects 6"):
        binary_fitted.transform(narrow).collect()
    with pytest.raises(ValueError, match=r"Output column\(s\) \['probability'\] already exist"):
        binary_fitted.transform(binary_data.withColumn("probability", binary_data.label))
    clash = {binary_fitted.predictionCol: "probability"}
    with pytest.raises(ValueError, match=r"\['probability'\] are used twice"):
        binary_fitted.transform(binary_data, clash)


def test_streaming_transform_matches_batch(spark, binary_fitted, binary_data, tmp_path):
    source = str(tmp_path / "stream-source")
    binary_data.limit(100).write.parquet(source)
    stream = spark.readStream.schema(binary_data.schema).parquet(source)
    query = (
        binary_fitted.transform(stream)
        .writeStream.format("memory")
        .queryName("sparkeras_predictions")
        .trigger(availableNow=True)
        .start()
    )
    query.awaitTermination(120)
    streamed = spark.table("sparkeras_predictions").select(vector_to_array("probability")[1])
    batch = binary_fitted.transform(spark.read.parquet(source)).select(
        vector_to_array("probability")[1]
    )
    assert sorted(r[0] for r in streamed.collect()) == sorted(r[0] for r in batch.collect())


def test_model_cache_is_reused_and_keyed_by_content():
    inference._MODEL_CACHE.clear()
    from sparkeras import serialization

    first = serialization.model_to_bytes(binary_model(3))
    second = serialization.model_to_bytes(binary_model(3))
    objects = serialization.objects_to_bytes({})
    a = load_cached(first, objects)
    assert load_cached(first, objects) is a
    b = load_cached(second, objects)
    assert b is not a
    assert list(inference._MODEL_CACHE) == [inference.model_key(second, objects, True)]
    # The same bytes loaded with other custom objects or without safe mode are another entry.
    assert inference.model_key(second, objects, False) != inference.model_key(second, objects, True)
    other_objects = serialization.objects_to_bytes({"Dense": keras.layers.Dense})
    assert load_cached(second, other_objects) is not b


def load_cached(model_bytes: bytes, objects: bytes) -> inference.LoadedModel:
    key = inference.model_key(model_bytes, objects, True)
    return inference._cached_model(key, model_bytes, objects, True)


def test_estimator_and_model_save_and_load(binary_fitted, binary_data, tmp_path):
    estimator = SparkKerasEstimator(
        model=binary_model(WIDTH), numWorkers=2, epochs=3, learningRate=0.02, callbacks=[]
    )
    estimator.save(str(tmp_path / "estimator"))
    loaded = SparkKerasEstimator.load(str(tmp_path / "estimator"))
    assert loaded.uid == estimator.uid
    assert (loaded.getEpochs(), loaded.getLearningRate(), loaded.getNumWorkers()) == (3, 0.02, 2)
    assert loaded.getModel().count_params() == estimator.getModel().count_params()
    # PySpark 3.5's metadata functions take the SparkContext; 4.x takes either.
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(persistence, "METADATA_TAKES_SESSION", False)
        estimator.write().overwrite().save(str(tmp_path / "estimator"))
        assert SparkKerasEstimator.load(str(tmp_path / "estimator")).uid == estimator.uid

    path = str(tmp_path / "model")
    binary_fitted.write().overwrite().save(path)
    binary_fitted.write().overwrite().save(path)  # overwrite works
    restored = SparkKerasModel.load(path)
    assert restored.history == binary_fitted.history
    expected = binary_fitted.transform(binary_data).select("probability").collect()
    assert restored.transform(binary_data).select("probability").collect() == expected
    # The Keras file inside is plain Keras.
    plain = keras.models.load_model(os.path.join(path, "model.keras"))
    np.testing.assert_array_equal(plain.get_weights()[0], restored.getKerasModel().get_weights()[0])

    with pytest.raises(
        ValueError, match=r"holds a sparkeras.model.SparkKerasModel.*SparkKerasModel.load"
    ):
        SparkKerasEstimator.load(path)
    with pytest.raises(ValueError, match=r"holds a sparkeras.estimator.SparkKerasEstimator"):
        SparkKerasModel.load(str(tmp_path / "estimator"))
    with pytest.raises(ValueError, match=r"not a saved sparkeras model"):
        SparkKerasModel.load(str(tmp_path / "nothing-here"))


@keras.saving.register_keras_serializable("sparkeras_tests")
class Identity(keras.layers.Layer):
    def call(self, inputs):
        return inputs


def test_files_read_through_spark_come_back_whole_from_chunks(spark, tmp_path):
    """How Spark Connect reads a saved model file: no row may outgrow a Connect message."""
    data = bytes(range(256)) * 3 + b"end"
    (tmp_path / "model.keras").write_bytes(data)
    (tmp_path / "empty.pkl").write_bytes(b"")
    for chunk_bytes in (7, 256, len(data), 1 << 20):
        path = str(tmp_path / "model.keras")
        assert persistence.read_file_through_spark(spark, path, chunk_bytes) == data
    assert persistence.read_file_through_spark(spark, str(tmp_path / "empty.pkl"), 7) == b""
    # A path is not a glob pattern: brackets, braces and stars are plain characters.
    odd = tmp_path / "run[1]{a,b}*?"
    odd.mkdir()
    (odd / "model.keras").write_bytes(data)
    assert persistence.read_file_through_spark(spark, str(odd / "model.keras"), 100) == data


def test_saved_estimators_carry_registered_custom_objects(spark, tmp_path):
    """A fresh process may not have registered them: they travel like the fitted model's."""
    model = keras.Sequential(
        [keras.Input((WIDTH,)), Identity(), keras.layers.Dense(1, activation="sigmoid")]
    )
    model.compile(optimizer="adam", loss="binary_crossentropy")
    path = str(tmp_path / "estimator")
    SparkKerasEstimator(model=model, customObjects={"extra": len}).save(path)
    objects = SparkKerasEstimator.load(path).getCustomObjects()
    assert objects == {"sparkeras_tests>Identity": Identity, "extra": len}


def test_param_maps_with_foreign_or_string_keys_are_rejected(binary_data):
    estimator = SparkKerasEstimator(model=binary_model(WIDTH))
    other = SparkKerasEstimator(model=binary_model(WIDTH))
    with pytest.raises(ValueError, match=r"'epochs' .* is not a param of this SparkKerasEstimator"):
        estimator.fit(binary_data, {other.epochs: 2})
    with pytest.raises(ValueError, match=r"ParamMap key 'epochs' is not a Param"):
        estimator.fit(binary_data, {"epochs": 2})


def test_pipeline_cross_validation_and_persistence_in_a_fresh_process(spark, tmp_path):
    rng = np.random.default_rng(5)
    raw = rng.normal(loc=50, scale=10, size=(400, WIDTH))
    labels = ((raw - 50) @ rng.normal(size=WIDTH) > 0).astype(float)
    frame = spark.createDataFrame(
        pd.DataFrame(raw, columns=[f"c{i}" for i in range(WIDTH)]).assign(label=labels)
    ).cache()
    estimator = SparkKerasEstimator(
        model=binary_model(WIDTH), featuresCol="scaled", numWorkers=1, batchSize=16
    )
    pipeline = Pipeline(
        stages=[
            VectorAssembler(inputCols=[f"c{i}" for i in range(WIDTH)], outputCol="assembled"),
            StandardScaler(inputCol="assembled", outputCol="scaled", withMean=True),
            estimator,
        ]
    )
    grid = (
        ParamGridBuilder()
        .addGrid(estimator.epochs, [1, 6])
        .addGrid(estimator.learningRate, [0.001, 0.05])
        .build()
    )
    evaluator = BinaryClassificationEvaluator()
    cv_model = CrossValidator(
        estimator=pipeline, estimatorParamMaps=grid, evaluator=evaluator, numFolds=2, parallelism=1
    ).fit(frame)
    assert len(cv_model.avgMetrics) == 4
    assert max(cv_model.avgMetrics) > 0.9
    # The best param map reached the fit (AUC saturates on separable data, so which map wins
    # is not asserted).
    best = grid[int(np.argmax(cv_model.avgMetrics))]
    assert len(cv_model.bestModel.stages[-1].history["loss"]) == best[estimator.epochs]
    assert "featuresCol: features column name. (default: features, current: scaled)" in (
        cv_model.bestModel.stages[-1].explainParams()
    )
    assert "numWorkers: number of training processes" in estimator.explainParams()

    tvs_model = TrainValidationSplit(
        estimator=estimator.copy().setFeaturesCol("features").setEpochs(2),
        estimatorParamMaps=ParamGridBuilder().addGrid(estimator.learningRate, [0.02]).build(),
        evaluator=evaluator,
        parallelism=1,
    ).fit(
        VectorAssembler(inputCols=[f"c{i}" for i in range(WIDTH)], outputCol="features").transform(
            frame
        )
    )
    assert len(tvs_model.validationMetrics) == 1

    pipeline_path, cv_path = str(tmp_path / "pipeline"), str(tmp_path / "cv")
    cv_model.bestModel.save(pipeline_path)
    cv_model.save(cv_path)
    reloaded_cv = CrossValidatorModel.load(cv_path)
    assert reloaded_cv.avgMetrics == cv_model.avgMetrics
    scored = cv_model.bestModel.transform(frame).select("probability").collect()
    expected = [list(row.probability) for row in scored]
    assert [
        list(r.probability) for r in reloaded_cv.bestModel.transform(frame).collect()
    ] == expected

    data_path = str(tmp_path / "data")
    frame.write.parquet(data_path)
    script = textwrap.dedent(
        f"""
        import json, os
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
        from pyspark.ml import PipelineModel
        from sparkeras import get_or_create_session
        spark = get_or_create_session("local[2]", config={{"spark.ui.enabled": "false"}})
        frame = spark.read.parquet({data_path!r})
        model = PipelineModel.load({pipeline_path!r})
        rows = model.transform(frame).select("c0", "probability").collect()
        print("RESULT" + json.dumps({{r.c0: list(r.probability) for r in rows}}))
        spark.stop()
        """
    )
    completed = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    line = next(line for line in completed.stdout.splitlines() if line.startswith("RESULT"))
    fresh = json.loads(line[len("RESULT") :])
    in_process = cv_model.bestModel.transform(frame).select("c0", "probability").collect()
    assert {str(r.c0): list(r.probability) for r in in_process} == fresh  # bit-identical
    assert isinstance(PipelineModel.load(pipeline_path).stages[-1], SparkKerasModel)


def test_multi_output_models_give_one_array_column_per_output(spark):
    inputs = keras.Input((3,))
    total = keras.layers.Dense(1, name="total")(inputs)
    pair = keras.layers.Dense(2, name="pair")(inputs)
    model = keras.Model(inputs, [total, pair])
    frame = spark.createDataFrame([([1.0, 2.0, 3.0],), ([0.0, -1.0, 0.5],)], ["features"])
    scored = SparkKerasModel.fromKerasModel(model).transform(frame).collect()
    expected_total, expected_pair = model.predict(np.array([[1, 2, 3], [0, -1, 0.5]]), verbose=0)
    np.testing.assert_allclose([r.prediction_total for r in scored], expected_total, rtol=1e-6)
    np.testing.assert_allclose([r.prediction_pair for r in scored], expected_pair, rtol=1e-6)
    unnamed = SparkKerasModel.fromKerasModel(model).setPredictionCol("")
    with pytest.raises(ValueError, match=r"predictionCol='' cannot leave out a multi-output"):
        unnamed.transform(frame)


def test_classifiers_that_output_logits_get_probabilities_and_logit_raw_scores(spark):
    rows = np.array([[1.0, 2.0, 3.0], [0.0, -1.0, 0.5], [-3.0, 0.2, 1.0]])
    frame = spark.createDataFrame([(row.tolist(),) for row in rows], ["features"])
    for units, loss in [
        (1, keras.losses.BinaryCrossentropy(from_logits=True)),
        (3, keras.losses.SparseCategoricalCrossentropy(from_logits=True)),
    ]:
        model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(units)])
        model.compile(optimizer="adam", loss=loss)  # auto: classification, from the loss
        logits = model.predict(rows, verbose=0).astype(np.float64)
        if units == 1:
            positive = 1 / (1 + np.exp(-logits[:, 0]))
            probabilities = np.stack([1 - positive, positive], axis=1)
            raw = np.hstack([-logits, logits])
        else:
            probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
            raw = logits
        scored = SparkKerasModel.fromKerasModel(model).transform(frame).collect()
        np.testing.assert_allclose([r.probability.toArray() for r in scored], probabilities, 1e-6)
        np.testing.assert_allclose([r.rawPrediction.toArray() for r in scored], raw, 1e-6)
        assert [r.prediction for r in scored] == probabilities.argmax(axis=1).tolist()


def test_models_with_a_dict_of_outputs_name_their_columns_by_key(spark):
    inputs = keras.Input((3,))
    heads = {"price": keras.layers.Dense(1)(inputs), "kind": keras.layers.Dense(2)(inputs)}
    model = keras.Model(inputs, heads)
    single = keras.Model(inputs, {"score": keras.layers.Dense(1)(inputs)})
    frame = spark.createDataFrame([([1.0, 2.0, 3.0],), ([0.0, -1.0, 0.5],)], ["features"])
    rows = np.array([[1, 2, 3], [0, -1, 0.5]], dtype=np.float32)
    scored = SparkKerasModel.fromKerasModel(model).transform(frame).collect()
    expected = model.predict(rows, verbose=0)
    np.testing.assert_allclose([r.prediction_price for r in scored], expected["price"], rtol=1e-6)
    np.testing.assert_allclose([r.prediction_kind for r in scored], expected["kind"], rtol=1e-6)
    scored = SparkKerasModel.fromKerasModel(single).transform(frame).collect()
    expected = single.predict(rows, verbose=0)["score"][:, 0]
    np.testing.assert_allclose([r.prediction for r in scored], expected, rtol=1e-6)


def test_transform_leaves_the_python_workers_environment_as_it_was():
    """Its device variables would otherwise reach later training tasks in the same worker.

    They are only set where TensorFlow starts for the first time, which a Spark test cannot
    arrange (earlier tests leave TensorFlow in the reused Python workers): a fresh interpreter
    plays a Python worker, with a task that was given no GPUs.
    """
    worker = textwrap.dedent(
        """
        import os
        import pyspark

        class TaskWithoutGpus:
            def resources(self):
                return {}

            def cpus(self):
                return 1

        pyspark.TaskContext.get = classmethod(lambda cls: TaskWithoutGpus())
        from sparkeras import inference

        with inference._tensorflow_in_task():
            during = os.environ.get("CUDA_VISIBLE_DEVICES", "<unset>")
        print(repr(during), repr(os.environ.get("CUDA_VISIBLE_DEVICES", "<unset>")))
        """
    )
    environment = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    run = subprocess.run(
        [sys.executable, "-c", worker], env=environment, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["''", "'<unset>'"]  # hidden while TensorFlow starts only


def test_lambda_models_transform_only_after_opting_out_of_safe_mode(spark):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Lambda(lambda x: x[:, :1] * 2.0)])
    frame = spark.createDataFrame([([1.0, 2.0, 3.0],)], ["features"])
    wrapped = SparkKerasModel.fromKerasModel(model)
    with pytest.raises(Exception, match=r"safeMode=False"):
        wrapped.transform(frame).collect()
    assert wrapped.setSafeMode(False).transform(frame).first().prediction == 2.0


def test_sparse_input_models_predict_from_sparse_rows_without_densifying(monkeypatch):
    """A batch of 10,000 rows of 2^18 hashed features would be 10 GB dense."""
    from sparkeras import serialization
    from sparkeras.plan import FeatureSpec
    from sparkeras.shards import VECTOR_ARROW_TYPE

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((5,), sparse=True), keras.layers.Dense(2)])
    rng = np.random.default_rng(0)
    dense = rng.normal(size=(7, 5)) * (rng.random((7, 5)) < 0.5)
    rows = [
        {"type": 0, "size": 5, "indices": np.flatnonzero(row).tolist(), "values": row[row != 0]}
        if index % 2
        else {"type": 1, "size": None, "indices": None, "values": row.tolist()}
        for index, row in enumerate(dense)
    ]
    column = pa.array(rows, VECTOR_ARROW_TYPE)

    def never(*args, **kwargs):
        raise AssertionError("densified")

    monkeypatch.setattr(inference, "features_to_dense", never)
    predictor = inference.BatchPredictor(
        model_bytes=serialization.model_to_bytes(model),
        custom_objects_bytes=serialization.objects_to_bytes({}),
        safe_mode=True,
        features=FeatureSpec("features", "vector", 5, "sparse"),
        output=inference.OutputSpec(mode="regression", width=2, prediction_col="prediction"),
        batch_size=3,  # calls of 3 + 3 + 1 rows
    )
    predict = predictor._partition_predictor()
    (predicted,) = predict(column)
    expected = model.predict(dense.astype(np.float32), verbose=0)
    np.testing.assert_allclose(predicted, expected, rtol=1e-5, atol=1e-6)
    assert predict(column.slice(0, 0))[0].shape == (0, 2)  # an empty batch


def test_saturated_sigmoid_scores_keep_finite_raw_predictions():
    spec = inference.OutputSpec(
        mode="classification",
        width=1,
        prediction_col="prediction",
        raw_prediction_col="rawPrediction",
        probability_col="probability",
    )
    outputs = np.array([[1.0], [0.0], [0.5]], dtype=np.float32)  # sigmoid(40) is 1.0 in float32
    raw, probability, prediction = spec.columns([outputs])
    assert probability.field("values").to_pylist()[2] == [0.5, 0.5]
    raw = np.array(raw.field("values").to_pylist())
    assert np.isfinite(raw).all()
    np.testing.assert_allclose(raw[0], -raw[1], rtol=1e-5)  # as sure of 1 as of 0
    assert raw[2].tolist() == [0.0, 0.0]
    assert prediction.to_pylist() == [1.0, 0.0, 0.0]


def test_confident_logits_keep_distinct_probabilities_in_both_tails():
    logits = np.array([[-40.0], [-38.0], [38.0], [40.0]])
    probability, raw = inference.class_scores(logits, logits=True)
    assert (probability > 0).all()  # no ties at 0: rankings (AUC) still see the order
    # Each small probability is exact (their complements are 1.0 in float64, as they must be).
    assert probability[0, 1] < probability[1, 1] and probability[2, 0] > probability[3, 0]
    np.testing.assert_allclose(probability[0, 1], np.exp(-40.0), rtol=1e-12)
    np.testing.assert_array_equal(raw, np.hstack([-logits, logits]))


def test_map_in_arrow_path_for_older_spark_gives_the_same_columns(
    binary_fitted, binary_data, monkeypatch
):
    expected = binary_fitted.transform(binary_data).collect()  # Arrow UDF path (PySpark >= 4.1)
    monkeypatch.setattr(inference, "HAS_ARROW_UDF", False)
    fallback = binary_fitted.transform(binary_data)
    assert fallback.columns == ["features", "label", "rawPrediction", "probability", "prediction"]
    assert fallback.collect() == expected


class RowsPerCall(keras.layers.Layer):
    """Predicts, for every row, the number of rows in the model call that predicted it."""

    def call(self, inputs):
        rows = keras.ops.cast(keras.ops.shape(inputs)[0], "float32")
        return keras.ops.ones_like(inputs[:, :1]) * rows


def test_transform_calls_the_model_on_inference_batch_size_rows_at_a_time(spark):
    model = keras.Sequential([keras.Input((3,)), RowsPerCall()])
    frame = spark.createDataFrame([([float(i)] * 3,) for i in range(10)], ["features"])
    fitted = SparkKerasModel.fromKerasModel(model, customObjects={"RowsPerCall": RowsPerCall})
    scored = fitted.setInferenceBatchSize(4).transform(frame.coalesce(1)).collect()
    assert [row.prediction for row in scored] == [4.0] * 8 + [2.0] * 2
    assert [row.features[0] for row in scored] == list(range(10))  # row order kept

    predict = inference.chunked_predict_function(model, batch_size=4, width=3)
    assert predict(np.zeros((0, 3), np.float32)).shape == (0, 1)


def test_cached_models_are_frozen_out_of_the_collector_and_freed_when_replaced(spark):
    """PySpark collects garbage after every task; a model's objects are frozen out of that walk
    (gc.freeze) and unfrozen again when another model replaces it, so that it can be freed."""
    from sparkeras import serialization

    first, second = (serialization.model_to_bytes(binary_model(3)) for _ in range(2))
    objects = serialization.objects_to_bytes({})

    def in_task(frames):
        import gc
        import weakref

        import pandas as pd

        inference._MODEL_CACHE.clear()
        loaded = inference._cached_model(
            inference.model_key(first, objects, True), first, objects, True
        )
        frozen_with_first = gc.get_freeze_count()
        old_model = weakref.ref(loaded.model)
        del loaded
        inference._cached_model(inference.model_key(second, objects, True), second, objects, True)
        gc.collect()
        for _ in frames:
            pass
        yield pd.DataFrame(
            {
                "frozen_with_first": [frozen_with_first],
                "frozen_with_second": [gc.get_freeze_count()],
                "first_freed": [old_model() is None],
            }
        )

    row = (
        spark.range(1)
        .mapInPandas(
            in_task, "frozen_with_first long, frozen_with_second long, first_freed boolean"
        )
        .first()
    )
    assert row.frozen_with_first > 100_000  # TensorFlow, Keras and the model
    assert row.frozen_with_second > 100_000
    assert row.first_freed
