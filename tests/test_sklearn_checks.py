"""scikit-learn's own estimator checks over KerasClassifier and KerasRegressor."""

from __future__ import annotations

import keras
from sklearn.utils.estimator_checks import parametrize_with_checks

from sparkeras import KerasClassifier, KerasRegressor
from sparkeras.sklearn import EXPECTED_FAILED_CHECKS


def build_classifier(n_features_in, n_classes, hidden=16):
    model = keras.Sequential(
        [
            keras.Input((n_features_in,)),
            keras.layers.Dense(hidden, activation="relu"),
            keras.layers.Dense(n_classes, activation="softmax"),
        ]
    )
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss="sparse_categorical_crossentropy")
    return model


def build_regressor(n_features_in, n_outputs):
    model = keras.Sequential([keras.Input((n_features_in,)), keras.layers.Dense(n_outputs)])
    model.compile(optimizer=keras.optimizers.Adam(0.1), loss="mse")
    return model


@parametrize_with_checks(
    [
        KerasClassifier(build_classifier, epochs=30, batch_size=64, random_state=0),
        KerasRegressor(build_regressor, epochs=60, batch_size=64, random_state=0),
    ],
    expected_failed_checks=lambda estimator: EXPECTED_FAILED_CHECKS,
)
def test_scikit_learn_estimator_checks(estimator, check):
    check(estimator)
