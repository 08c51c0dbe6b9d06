"""One scikit-learn script, in-process and on Spark: a KerasRegressor tuned with GridSearchCV.

Tunes the epochs and the optimizer's learning rate in a Pipeline(StandardScaler, KerasRegressor)
in this process, then trains the best configuration again on a local Spark session with two
workers, and compares R² on a held-out split.

    .venv/bin/python examples/sklearn_demo.py           # 8,000 rows
    .venv/bin/python examples/sklearn_demo.py --quick   # 1,000 rows, a smaller grid
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
from sklearn.datasets import make_regression
from sklearn.model_selection import GridSearchCV, train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from sparkeras import KerasRegressor


def build(n_features_in: int, n_outputs: int, hidden: int = 32) -> keras.Model:
    """A small MLP; sparkeras passes the data's shape, a grid could pass ``model__hidden``."""
    model = keras.Sequential(
        [
            keras.Input((n_features_in,)),
            keras.layers.Dense(hidden, activation="relu"),
            keras.layers.Dense(n_outputs),
        ]
    )
    model.compile(optimizer="adam", loss="mse")
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    rows = 1_000 if args.quick else 8_000
    features, targets = make_regression(
        n_samples=rows, n_features=20, n_informative=10, noise=5.0, random_state=0
    )
    targets = targets / targets.std()
    train_x, test_x, train_y, test_y = train_test_split(features, targets, random_state=0)

    grid = {
        "kerasregressor__epochs": [5, 20],
        "kerasregressor__optimizer__learning_rate": [1e-2] if args.quick else [1e-3, 1e-2],
    }
    search = GridSearchCV(
        make_pipeline(StandardScaler(), KerasRegressor(build, batch_size=32, random_state=0)),
        grid,
        cv=3,
    )
    started = time.perf_counter()
    search.fit(train_x, train_y)
    print(f"grid search in-process: {time.perf_counter() - started:.1f} s")
    print(f"best params: {search.best_params_}  cv R2 {search.best_score_:.3f}")
    print(f"held-out R2 (in-process):   {search.score(test_x, test_y):.3f}")

    on_spark = search.best_estimator_.set_params(kerasregressor__num_workers=2)
    started = time.perf_counter()
    on_spark.fit(train_x, train_y)  # the same pipeline, trained by two TensorFlow workers
    print(f"fit on Spark (2 workers): {time.perf_counter() - started:.1f} s")
    print(f"held-out R2 (Spark):        {on_spark.score(test_x, test_y):.3f}")


if __name__ == "__main__":
    main()
