"""sparkeras scikit-learn demo: one KerasClassifier script, in-process and on Spark.

Tunes epochs and the optimizer's learning rate with GridSearchCV in a
Pipeline(StandardScaler, KerasClassifier) in this process, then trains the best configuration
again on a local Spark session with two workers, and compares test accuracy.

    .venv/bin/python examples/sklearn_demo.py
"""

from __future__ import annotations

import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
from sklearn.datasets import make_classification
from sklearn.model_selection import GridSearchCV, train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from sparkeras import KerasClassifier


def build(n_features_in: int, n_classes: int, hidden: int = 32) -> keras.Model:
    """A small MLP; sparkeras passes the data's shape, the grid passes ``model__hidden``."""
    model = keras.Sequential(
        [
            keras.Input((n_features_in,)),
            keras.layers.Dense(hidden, activation="relu"),
            keras.layers.Dense(n_classes, activation="softmax"),
        ]
    )
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def main() -> None:
    features, labels = make_classification(
        n_samples=4000, n_features=20, n_informative=10, n_classes=3, random_state=0
    )
    names = ["bronze", "silver", "gold"]
    labels = [names[label] for label in labels]  # string labels come back as strings
    train_x, test_x, train_y, test_y = train_test_split(
        features, labels, test_size=0.25, stratify=labels, random_state=0
    )

    search = GridSearchCV(
        make_pipeline(StandardScaler(), KerasClassifier(build, batch_size=64, random_state=0)),
        {
            "kerasclassifier__epochs": [5, 15],
            "kerasclassifier__optimizer__learning_rate": [1e-3, 1e-2],
        },
        cv=3,
    )
    started = time.perf_counter()
    search.fit(train_x, train_y)
    print(f"grid search in-process: {time.perf_counter() - started:.1f} s")
    print(f"best params: {search.best_params_}  cv accuracy {search.best_score_:.3f}")
    print(f"test accuracy (in-process): {search.score(test_x, test_y):.3f}")

    on_spark = search.best_estimator_.set_params(kerasclassifier__num_workers=2)
    started = time.perf_counter()
    on_spark.fit(train_x, train_y)  # the same pipeline, trained by two TensorFlow workers
    print(f"fit on Spark (2 workers): {time.perf_counter() - started:.1f} s")
    print(f"test accuracy (Spark):      {on_spark.score(test_x, test_y):.3f}")
    print(f"predictions: {on_spark.predict(test_x[:5]).tolist()}")


if __name__ == "__main__":
    main()
