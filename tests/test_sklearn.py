"""KerasClassifier / KerasRegressor in scikit-learn workflows, in-process and on Spark."""

from __future__ import annotations

import pickle
import subprocess
import sys
import warnings

import keras
import numpy as np
import pandas as pd
import pytest
from conftest import build_classifier, separable
from sklearn.base import clone, is_classifier, is_regressor
from sklearn.exceptions import NotFittedError
from sklearn.model_selection import GridSearchCV, StratifiedKFold, check_cv, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from sparkeras import KerasClassifier, KerasRegressor

WIDTH = 6


def three_classes(rows: int = 300, seed: int = 0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=4.0, size=(3, WIDTH))
    index = rng.integers(0, 3, size=rows)
    features = centers[index] + rng.normal(size=(rows, WIDTH))
    return features, np.array(["cat", "dog", "fish"])[index]


def test_string_labels_multiclass_and_probabilities():
    features, labels = three_classes()
    classifier = KerasClassifier(build_classifier, epochs=20, random_state=0)
    with pytest.raises(NotFittedError):
        classifier.predict(features)
    classifier.fit(features, labels)
    assert list(classifier.classes_) == ["cat", "dog", "fish"]
    assert classifier.n_features_in_ == WIDTH
    predictions = classifier.predict(features)
    assert predictions.dtype == labels.dtype and set(predictions) <= {"cat", "dog", "fish"}
    assert classifier.score(features, labels) >= 0.95
    probabilities = classifier.predict_proba(features)
    assert probabilities.shape == (300, 3)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    assert len(classifier.history_["loss"]) == 20


def test_compiled_model_instance_is_copied_never_mutated_and_binary_labels_are_kept():
    features, labels = separable(400, WIDTH)
    signs = np.where(labels > 0, 1, -1)  # labels -1 / 1, one sigmoid unit
    model = keras.Sequential([keras.Input((WIDTH,)), keras.layers.Dense(1, activation="sigmoid")])
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss="binary_crossentropy")
    before = [weights.copy() for weights in model.get_weights()]
    classifier = KerasClassifier(model, epochs=10, random_state=0).fit(features, signs)
    assert set(classifier.predict(features)) == {-1, 1}
    assert classifier.score(features, signs) >= 0.9
    assert classifier.predict_proba(features).shape == (400, 2)
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights(), strict=True))
    assert int(model.optimizer.iterations) == 0
    assert classifier.model_ is not model


def test_one_hot_losses_get_one_hot_targets():
    features, labels = three_classes(seed=1)

    def build(n_features_in, n_classes):
        model = keras.Sequential(
            [keras.Input((n_features_in,)), keras.layers.Dense(n_classes, activation="softmax")]
        )
        model.compile(optimizer=keras.optimizers.Adam(0.05), loss="categorical_crossentropy")
        return model

    classifier = KerasClassifier(build, epochs=15, random_state=0).fit(features, labels)
    assert classifier.score(features, labels) >= 0.9


def test_models_that_output_logits_predict_probabilities():
    features, labels = three_classes(seed=3)
    binary = labels == "dog"
    for y, units, loss in [
        (binary, 1, keras.losses.BinaryCrossentropy(from_logits=True)),
        (labels, 3, keras.losses.SparseCategoricalCrossentropy(from_logits=True)),
    ]:
        model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(units)])  # logits
        model.compile(optimizer=keras.optimizers.Adam(0.05), loss=loss)
        classifier = KerasClassifier(model, epochs=20, random_state=0).fit(features, y)
        probabilities = classifier.predict_proba(features)
        logits = classifier.model_.predict(features, verbose=0).astype(np.float64)
        if units == 1:
            expected = 1 / (1 + np.exp(-logits[:, 0]))
            np.testing.assert_allclose(probabilities[:, 1], expected, rtol=1e-6)
        else:
            expected = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
            np.testing.assert_allclose(probabilities, expected, rtol=1e-6)
        assert probabilities.min() >= 0 and np.allclose(probabilities.sum(axis=1), 1)
        assert classifier.score(features, y) >= 0.9  # class 1 where the logit is > 0, not > 0.5


def test_grid_search_sees_epochs_and_routed_learning_rate_in_a_pipeline():
    features, labels = three_classes(rows=240, seed=2)
    pipeline = make_pipeline(StandardScaler(), KerasClassifier(build_classifier, random_state=0))
    grid = {
        "kerasclassifier__epochs": [1, 10],
        "kerasclassifier__optimizer__learning_rate": [1e-5, 1e-2],
    }
    search = GridSearchCV(pipeline, grid, cv=2).fit(features, labels)
    assert search.best_params_ == {
        "kerasclassifier__epochs": 10,
        "kerasclassifier__optimizer__learning_rate": 1e-2,
    }
    best = search.best_estimator_.named_steps["kerasclassifier"]
    # The routed params reached Keras: this is what clone-based tools silently lose elsewhere.
    assert float(best.model_.optimizer.learning_rate) == pytest.approx(1e-2)
    assert len(best.history_["loss"]) == 10
    assert search.best_score_ >= 0.9


def test_cross_validation_is_stratified_for_the_classifier():
    features, labels = three_classes(rows=180, seed=3)
    classifier = KerasClassifier(build_classifier, epochs=10, random_state=0)
    assert is_classifier(classifier) and not is_regressor(classifier)
    assert isinstance(check_cv(3, labels, classifier=is_classifier(classifier)), StratifiedKFold)
    scores = cross_val_score(classifier, features, labels, cv=3)
    assert scores.min() >= 0.9


def test_regressor_one_and_several_outputs_with_pandas_input():
    rng = np.random.default_rng(4)
    frame = pd.DataFrame(rng.normal(size=(300, WIDTH)), columns=[f"x{i}" for i in range(WIDTH)])
    coefficients = rng.normal(size=(WIDTH, 2))
    targets = frame.to_numpy() @ coefficients

    def build(n_features_in, n_outputs):
        model = keras.Sequential([keras.Input((n_features_in,)), keras.layers.Dense(n_outputs)])
        model.compile(optimizer=keras.optimizers.Adam(0.05), loss="mse")
        return model

    regressor = KerasRegressor(build, epochs=60, random_state=0)
    assert KerasRegressor(build).__sklearn_tags__().non_deterministic  # no random_state
    assert not regressor.__sklearn_tags__().non_deterministic
    assert is_regressor(regressor)
    regressor.fit(frame, targets[:, 0])
    assert list(regressor.feature_names_in_) == list(frame.columns)
    assert regressor.predict(frame).shape == (300,)
    assert regressor.score(frame, targets[:, 0]) >= 0.95
    regressor.fit(frame, targets)
    assert regressor.n_outputs_ == 2 and regressor.predict(frame).shape == (300, 2)
    stopper = keras.callbacks.EarlyStopping(monitor="loss", min_delta=10.0, patience=1)
    regressor.set_params(callbacks=[stopper]).fit(frame, targets)
    assert len(regressor.history_["loss"]) == 2  # no epoch improves by 10: stopped after two
    assert stopper.model is None  # the param itself is not touched; Keras got a copy


@keras.saving.register_keras_serializable("sparkeras_sklearn_tests")
class Doubler(keras.layers.Layer):
    def call(self, inputs):
        return inputs * 2.0


class Halver(keras.layers.Layer):
    """Not registered: only custom_objects carries it (keras-team/keras#19832)."""

    def call(self, inputs):
        return inputs * 0.5


def test_pickle_round_trip_with_custom_objects_and_clone(tmp_path):
    features, labels = three_classes(seed=5)

    def build(n_features_in, n_classes):
        model = keras.Sequential(
            [
                keras.Input((n_features_in,)),
                Halver(),
                Doubler(),
                keras.layers.Dense(n_classes, activation="softmax"),
            ]
        )
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
        return model

    with pytest.raises(ValueError, match="model__unused is not an argument of the model callable"):
        KerasClassifier(build, model__unused=None).fit(features, labels)

    def local_loss(y_true, y_pred):
        return keras.losses.sparse_categorical_crossentropy(y_true, y_pred)

    # Local functions (as in a notebook), routed ones too, and an unregistered layer all
    # survive pickling.
    classifier = KerasClassifier(
        build,
        epochs=3,
        random_state=0,
        custom_objects={"Halver": Halver, "local_loss": local_loss},
        compile__loss=local_loss,
    )
    classifier.fit(features, labels)
    restored = pickle.loads(pickle.dumps(classifier))
    expected = classifier.predict_proba(features)
    np.testing.assert_array_equal(restored.predict_proba(features), expected)
    # A fresh interpreter, without this test module: everything travels inside the pickle.
    (tmp_path / "model.pkl").write_bytes(pickle.dumps(classifier))
    np.save(tmp_path / "features.npy", features)
    script = (
        "import pickle, numpy as np\n"
        f"estimator = pickle.loads(open({str(tmp_path / 'model.pkl')!r}, 'rb').read())\n"
        f"features = np.load({str(tmp_path / 'features.npy')!r})\n"
        f"np.save({str(tmp_path / 'out.npy')!r}, estimator.predict_proba(features))\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, cwd=tmp_path)
    np.testing.assert_array_equal(np.load(tmp_path / "out.npy"), expected)
    fresh = clone(classifier)
    assert not hasattr(fresh, "model_")
    assert fresh.get_params() == classifier.get_params()


def halved_loss(y_true, y_pred):
    """Not registered: only custom_objects carries it."""
    return 0.5 * keras.losses.sparse_categorical_crossentropy(y_true, y_pred)


def test_unregistered_custom_layers_losses_and_metrics_in_a_compiled_model_fit_and_clone():
    features, labels = three_classes(seed=6)
    model = keras.Sequential(
        [keras.Input((features.shape[1],)), Halver(), keras.layers.Dense(3, activation="softmax")]
    )
    model.compile(optimizer="adam", loss=halved_loss, metrics=[halved_loss])
    objects = {"Halver": Halver, "halved_loss": halved_loss}
    classifier = KerasClassifier(model, epochs=2, random_state=0, custom_objects=objects)
    # clone deep-copies the model param, which Keras rebuilds from its config (quietly).
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        cloned = clone(classifier)
    assert isinstance(cloned.model, keras.Model) and cloned.model is not model
    fitted = cloned.fit(features, labels)
    assert set(fitted.history_) == {"loss", "halved_loss"}
    assert fitted.history_["loss"][-1] == pytest.approx(fitted.history_["halved_loss"][-1])


def test_lambda_models_need_safe_mode_off_to_fit_and_unpickle():
    features, labels = three_classes(seed=8)
    model = keras.Sequential(
        [
            keras.Input((features.shape[1],)),
            keras.layers.Lambda(lambda x: x * 0.5),
            keras.layers.Dense(3, activation="softmax"),
        ]
    )
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    with pytest.raises(Exception, match=r"(?s)safe mode.*safe_mode=False in the scikit-learn"):
        KerasClassifier(model, epochs=1).fit(features, labels)
    trusted = KerasClassifier(model, epochs=1, safe_mode=False).fit(features, labels)
    restored = pickle.loads(pickle.dumps(trusted))
    np.testing.assert_array_equal(restored.predict_proba(features), trusted.predict_proba(features))


def test_estimators_pickled_before_safe_mode_existed_still_load():
    features, labels = three_classes(seed=9)
    fitted = KerasClassifier(build_classifier, epochs=1, random_state=0).fit(features, labels)
    state = fitted.__getstate__()
    del state["safe_mode"]  # as pickled by an earlier version
    del state["model_"].safe_mode
    restored = KerasClassifier.__new__(KerasClassifier)
    restored.__setstate__(state)
    assert restored.get_params()["safe_mode"] is True
    np.testing.assert_array_equal(restored.predict(features), fitted.predict(features))


def test_random_state_leaves_the_callers_random_state_alone():
    features, labels = three_classes(seed=7)
    np.random.seed(123)
    expected = np.random.permutation(10)
    np.random.seed(123)
    KerasClassifier(build_classifier, epochs=1, random_state=0).fit(features, labels)
    assert np.random.permutation(10).tolist() == expected.tolist()


def test_random_state_takes_numpy_ints_large_ints_and_random_states():
    features, labels = three_classes(seed=7)

    def probabilities(random_state):
        classifier = KerasClassifier(build_classifier, epochs=1, random_state=random_state)
        return classifier.fit(features, labels).predict_proba(features)

    np.testing.assert_array_equal(probabilities(np.int64(3)), probabilities(3))
    np.testing.assert_array_equal(probabilities(-1), probabilities(2**32 - 1))  # Keras' range
    assert (
        not KerasClassifier(build_classifier, random_state=3).__sklearn_tags__().non_deterministic
    )
    shared = np.random.RandomState(0)  # a new seed for each fit, drawn from it
    assert not np.array_equal(probabilities(shared), probabilities(shared))
    assert (
        KerasClassifier(build_classifier, random_state=shared).__sklearn_tags__().non_deterministic
    )


def test_sample_weight_class_weight_partial_fit_and_warm_start():
    features, labels = separable(400, WIDTH, seed=6)
    labels = labels.astype(int)

    def positive_rate(**params):
        classifier = KerasClassifier(build_classifier, epochs=5, random_state=0, **params)
        return classifier.fit(features, labels).predict(features).mean()

    plain = positive_rate()
    assert positive_rate(class_weight={0: 1.0, 1: 50.0}) > plain + 0.05

    weighted = KerasClassifier(build_classifier, epochs=5, random_state=0)
    weights = np.where(labels == 1, 50.0, 1.0)
    assert (
        weighted.fit(features, labels, sample_weight=weights).predict(features).mean()
        > plain + 0.05
    )

    online = KerasClassifier(build_classifier, random_state=0)
    online.partial_fit(features[:200], labels[:200], classes=[0, 1])
    online.partial_fit(features[200:], labels[200:])
    assert len(online.history_["loss"]) == 2
    with pytest.raises(ValueError, match="labels not seen"):
        online.partial_fit(features[:5], np.full(5, 7))
    with pytest.raises(ValueError, match=r"classes=\[0, 1, 2\] differs from \[0, 1\]"):
        online.partial_fit(features[:5], labels[:5], classes=[0, 1, 2])
    retried = KerasClassifier(build_classifier, random_state=0)
    with pytest.raises(ValueError, match="at least 2 classes"):
        retried.partial_fit(features[:5], np.zeros(5, dtype=int))
    retried.partial_fit(features[:5], np.zeros(5, dtype=int), classes=[0, 1])  # what it asked for
    assert retried.classes_.tolist() == [0, 1]

    warm = KerasClassifier(build_classifier, epochs=2, warm_start=True, random_state=0)
    first_model = warm.fit(features, labels).model_
    assert warm.fit(features, labels).model_ is first_model
    assert len(warm.history_["loss"]) == 4


def test_bad_input_gets_clear_errors():
    features, labels = three_classes(seed=7)
    classifier = KerasClassifier(build_classifier, epochs=1).fit(features, labels)
    with pytest.raises(ValueError, match="X has 3 features, but KerasClassifier is expecting 6"):
        classifier.predict(features[:, :3])
    broken = features.copy()
    broken[0, 0] = np.nan
    with pytest.raises(ValueError, match="Input X contains NaN"):
        KerasClassifier(build_classifier).fit(broken, labels)
    with pytest.raises(TypeError, match=r"compiled keras\.Model or a callable"):
        KerasClassifier("not a model").fit(features, labels)

    def uncompiled(n_features_in, n_classes):
        return keras.Sequential([keras.Input((n_features_in,)), keras.layers.Dense(n_classes)])

    with pytest.raises(ValueError, match="uncompiled model"):
        KerasClassifier(uncompiled).fit(features, labels)
    with pytest.raises(ValueError, match="Unknown parameter 'epoch'"):
        KerasClassifier(build_classifier, epoch=3).fit(features, labels)
    with pytest.raises(ValueError, match="Invalid parameter 'bogus'"):
        KerasClassifier(build_classifier).set_params(bogus__x=1)
    with pytest.raises(ValueError, match=r"Unknown optimizer__ parameter\(s\) \['lr'\]"):
        KerasClassifier(build_classifier, optimizer__lr=0.1).fit(features, labels)
    with pytest.raises(ValueError, match="needs samples of at least 2 classes"):
        KerasClassifier(build_classifier).fit(features, np.zeros(len(features)))

    three_units = keras.Sequential([keras.Input((6,)), keras.layers.Dense(3)])
    three_units.compile(optimizer="sgd", loss="mse")
    # Keras' mse would broadcast a 1-d y against 3 outputs, and predict 3 values per row.
    with pytest.raises(ValueError, match=r"3 output unit\(s\), but y has 1 output\(s\)"):
        KerasRegressor(three_units).fit(features, np.arange(len(features), dtype=float))


@pytest.mark.spark
def test_the_same_script_in_process_and_on_spark(spark):
    features, labels = three_classes(rows=400, seed=8)
    results = {}
    for num_workers in (None, 2):
        # numpy scalars (as np.arange grids give) and a bool verbose: Spark's param converters
        # refuse them, so the estimator converts them.
        classifier = KerasClassifier(
            build_classifier,
            epochs=np.int32(8),
            batch_size=np.int64(32),
            random_state=np.int64(0),
            verbose=False,
            validation_split=np.float32(0.0),
            num_workers=num_workers,
        )
        classifier.fit(features, labels)
        results[num_workers] = classifier
    local, distributed = results[None], results[2]
    assert list(distributed.classes_) == list(local.classes_) == ["cat", "dog", "fish"]
    assert distributed.predict(features).dtype == labels.dtype
    assert local.score(features, labels) >= 0.95
    assert distributed.score(features, labels) >= 0.95
    assert len(distributed.history_["loss"]) == len(local.history_["loss"]) == 8
    assert distributed.predict_proba(features).shape == (400, 3)
    # Sample weights reach the Spark workers too: "fish" rows weighing nothing are never predicted.
    weights = np.where(labels == "fish", 0.0, 1.0)
    weighted = clone(distributed).fit(features, labels, sample_weight=weights)
    assert "fish" not in set(weighted.predict(features))
