"""scikit-learn's own estimator checks over KerasClassifier and KerasRegressor."""

from __future__ import annotations

import keras
from conftest import build_classifier
from sklearn.utils.estimator_checks import parametrize_with_checks

from sparkeras import KerasClassifier, KerasRegressor
from sparkeras.sklearn import EXPECTED_FAILED_CHECKS


def build_regressor(n_features_in, n_outputs):
    model = keras.Sequential([keras.Input((n_features_in,)), keras.layers.Dense(n_outputs)])
    model.compile(optimizer=keras.optimizers.Adam(0.1), loss="mse")
    return model


@parametrize_with_checks(
    [
        KerasClassifier(
            build_classifier,
            epochs=30,
            batch_size=64,
            random_state=0,
            optimizer__learning_rate=0.05,
        ),
        KerasRegressor(build_regressor, epochs=60, batch_size=64, random_state=0),
    ],
    expected_failed_checks=lambda estimator: EXPECTED_FAILED_CHECKS,
)
def test_scikit_learn_estimator_checks(estimator, check):
    check(estimator)
