"""scikit-learn estimators backed by Keras: :class:`KerasClassifier` and :class:`KerasRegressor`.

numpy or pandas in, numpy out, with scikit-learn's semantics (``clone``, ``GridSearchCV``,
``Pipeline``, ``pickle``). ``num_workers=None`` (the default) trains in this process; an integer
trains on Spark with that many workers through :class:`sparkeras.SparkKerasEstimator`.

Parameters that do not belong to the estimator itself are routed by prefix, as in scikit-learn's
nested parameters: ``model__*`` to the model-building callable, ``compile__*`` to
``model.compile``, ``optimizer__*`` to the compiled optimizer's config and ``fit__*`` to Keras'
``fit``. ``get_params``, ``set_params``, ``clone`` and grid searches all see them.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import numbers
import random
from collections.abc import Iterator
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.utils.class_weight import compute_sample_weight
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import _check_sample_weight, check_is_fitted, validate_data

from sparkeras.plan import keras_seed

ROUTES = ("model", "compile", "optimizer", "fit")

#: scikit-learn checks that fail by the nature of mini-batch gradient descent in float32, with
#: why; passed to ``parametrize_with_checks(expected_failed_checks=...)`` and in the docs.
EXPECTED_FAILED_CHECKS: dict[str, str] = {
    "check_sample_weight_equivalence_on_dense_data": (
        "mini-batch training: repeating a row k times and giving it weight k change the batches "
        "and the number of steps per epoch, so the two fits differ"
    ),
}
#: Keras ``fit`` arguments that the estimator sets itself; ``fit__`` must not override them.
_OWN_FIT_ARGUMENTS = {
    "x",
    "y",
    "batch_size",
    "epochs",
    "verbose",
    "callbacks",
    "validation_split",
    "sample_weight",
    "class_weight",
}


class _KerasEstimator(BaseEstimator):
    """What :class:`KerasClassifier` and :class:`KerasRegressor` share: params, fit, pickling."""

    def __init__(
        self,
        model: Any = None,
        *,
        epochs: int = 1,
        batch_size: int = 32,
        verbose: int = 0,
        random_state: int | np.random.RandomState | None = None,
        callbacks: list | None = None,
        validation_split: float = 0.0,
        warm_start: bool = False,
        custom_objects: dict | None = None,
        num_workers: int | None = None,
        strategy: str = "mirrored",
        num_ps: int | None = None,
        safe_mode: bool = True,
        **routed: Any,
    ) -> None:
        self.model = model
        self.epochs = epochs
        self.batch_size = batch_size
        self.verbose = verbose
        self.random_state = random_state
        self.callbacks = callbacks
        self.validation_split = validation_split
        self.warm_start = warm_start
        self.custom_objects = custom_objects
        self.num_workers = num_workers
        self.strategy = strategy
        self.num_ps = num_ps
        self.safe_mode = safe_mode
        # Every keyword the signature does not name (routed params, or a typo that ``fit``
        # reports), in one private dict: public attributes set in __init__ must be the
        # signature's (scikit-learn's check_no_attributes_set_in_init).
        self._extra_params = dict(routed)

    def __sklearn_clone__(self) -> _KerasEstimator:
        """scikit-learn's clone, which deep-copies a ``keras.Model`` param: Keras rebuilds the
        copy from its config, and unregistered custom layers need ``custom_objects`` for that."""
        import keras

        from sparkeras import serialization

        with (
            keras.saving.custom_object_scope(self.custom_objects or {}),
            serialization.unbuilt_optimizer_warning_ignored(),
        ):
            return super().__sklearn_clone__()

    # ----------------------------------------------------------------------------- params
    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """The constructor's params and every routed ``prefix__name`` param."""
        return {**super().get_params(deep=deep), **self._extra_params}

    def set_params(self, **params: Any) -> _KerasEstimator:
        """Set params; routed ones (``model__units``, ``optimizer__learning_rate``...) too."""
        own = {}
        for name, value in params.items():
            if name.partition("__")[0] in ROUTES and "__" in name:
                self._extra_params[name] = value
            else:
                own[name] = value
        return super().set_params(**own)

    def _routed(self) -> dict[str, dict[str, Any]]:
        """Routed params by destination; an unknown name is a clear error."""
        routed: dict[str, dict[str, Any]] = {route: {} for route in ROUTES}
        for name, value in sorted(self._extra_params.items()):
            route, _, key = name.partition("__")
            if route not in ROUTES or not key:
                raise ValueError(
                    f"Unknown parameter {name!r} for {type(self).__name__}. Its own parameters "
                    f"are {sorted(self._get_param_names())}; other parameters must be routed "
                    "with a prefix: model__ (model-building callable), compile__ "
                    "(model.compile), optimizer__ (optimizer config) or fit__ (Keras fit)."
                )
            routed[route][key] = value
        return routed

    # ------------------------------------------------------------------------------- fit
    def fit(self, X: Any, y: Any, sample_weight: Any = None) -> _KerasEstimator:
        """Train for ``epochs`` epochs; a new model unless ``warm_start`` and already fitted.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : array-like of shape (n_samples,) or (n_samples, n_outputs)
        sample_weight : array-like of shape (n_samples,), optional

        Returns
        -------
        self
        """
        return self._train(X, y, sample_weight, epochs=self.epochs, warm=self.warm_start)

    def _train(
        self,
        X: Any,
        y: Any,
        sample_weight: Any,
        *,
        epochs: int,
        warm: bool,
        classes: Any = None,
    ) -> _KerasEstimator:
        routed = self._routed()
        first = not (warm and hasattr(self, "model_"))
        X, y = validate_data(
            self,
            X,
            y,
            reset=first,
            dtype=(np.float32, np.float64),
            multi_output=isinstance(self, RegressorMixin),
            y_numeric=isinstance(self, RegressorMixin),
        )
        X = np.asarray(X, dtype=np.float32)
        if first:
            self._learn_target_layout(y, classes)
            self.history_ = {}
        seed = _fit_seed(self.random_state)
        with _seeded(seed):
            if first:
                self.model_ = self._build_model(routed)
            targets = self._encode_targets(y)
            weights = self._sample_weights(X, y, sample_weight)
            if self.num_workers is None:
                history = self._fit_here(X, targets, weights, epochs, routed["fit"])
            else:
                history = self._fit_on_spark(X, targets, weights, epochs, routed["fit"], seed)
        for key, values in history.items():
            self.history_.setdefault(key, []).extend(float(value) for value in values)
        return self

    def _fit_here(
        self, X: np.ndarray, targets: np.ndarray, weights: Any, epochs: int, fit_kwargs: dict
    ) -> dict[str, list[float]]:
        own = sorted(_OWN_FIT_ARGUMENTS & set(fit_kwargs))
        if own:
            raise ValueError(
                f"fit__{own[0]} is set by the estimator itself; use its own parameter instead."
            )
        result = self.model_.fit(
            X,
            targets,
            batch_size=self.batch_size,
            epochs=epochs,
            verbose=self.verbose,
            # Copies: Keras attaches the model to its callbacks, and params must stay untouched
            # (on Spark the workers get copies too).
            callbacks=copy.deepcopy(list(self.callbacks or [])),
            validation_split=self.validation_split,
            sample_weight=weights,
            **fit_kwargs,
        )
        return result.history

    def _fit_on_spark(
        self,
        X: np.ndarray,
        targets: np.ndarray,
        weights: Any,
        epochs: int,
        fit_kwargs: dict,
        seed: int | None,
    ) -> dict[str, list[float]]:
        if fit_kwargs:
            raise ValueError(
                f"fit__ parameters {sorted(fit_kwargs)} are Keras fit arguments and only apply "
                "in-process (num_workers=None)."
            )
        import pandas as pd
        from pyspark.sql import SparkSession

        from sparkeras.estimator import SparkKerasEstimator
        from sparkeras.session import get_or_create_session

        spark = SparkSession.getActiveSession() or get_or_create_session()
        columns = {"features": list(X), "label": list(targets) if targets.ndim > 1 else targets}
        if weights is not None:
            columns["weight"] = weights
        frame = spark.createDataFrame(pd.DataFrame(columns))
        # Plain Python values: Spark's param converters refuse numpy scalars such as np.int32,
        # which grid searches produce, and Keras' verbose="auto".
        estimator = SparkKerasEstimator(
            model=self.model_,
            numWorkers=_spark_int(self.num_workers),
            strategy=self.strategy,
            numPs=None if self.num_ps is None else _spark_int(self.num_ps),
            epochs=_spark_int(epochs),
            batchSize=_spark_int(self.batch_size),
            validationFraction=float(self.validation_split),
            callbacks=list(self.callbacks or []),
            customObjects=self.custom_objects,
            seed=0 if seed is None else seed,
            weightCol="weight" if weights is not None else None,
            verbose=1 if self.verbose == "auto" else int(self.verbose),
            safeMode=bool(self.safe_mode),
        )
        fitted = estimator.fit(frame)
        self.model_ = fitted.getKerasModel()
        return fitted.history

    def _sample_weights(self, X: np.ndarray, y: np.ndarray, sample_weight: Any) -> Any:
        class_weight = getattr(self, "class_weight", None)
        if sample_weight is None and class_weight is None:
            return None
        weights = _check_sample_weight(sample_weight, X, dtype=np.float32)
        if class_weight is not None:
            weights = weights * compute_sample_weight(class_weight, y).astype(np.float32)
        return weights

    def _build_model(self, routed: dict[str, dict[str, Any]]) -> Any:
        """A fresh compiled copy of ``model`` (or what the callable returns), recompiled with
        the routed ``compile__`` / ``optimizer__`` overrides and a new optimizer."""
        import keras

        from sparkeras import serialization, validation

        if isinstance(self.model, keras.Model):
            if routed["model"]:
                raise ValueError(
                    f"model__ parameters {sorted(routed['model'])} need a callable model; "
                    "model is a keras.Model instance."
                )
            validation.check_compiled_model(self.model)
            model = serialization.model_from_bytes(
                serialization.model_to_bytes(self.model),
                self.custom_objects or {},
                safe_mode=self.safe_mode,
            )
        elif callable(self.model):
            model = self.model(**_builder_arguments(self.model, self._model_arguments(routed)))
            if not isinstance(model, keras.Model):
                raise TypeError(
                    f"The model callable returned {type(model).__name__}, not a keras.Model."
                )
            if not getattr(model, "compiled", False):
                raise ValueError(
                    "The model callable returned an uncompiled model; call model.compile(...) "
                    "before returning it."
                )
            validation.check_compiled_model(model)
        else:
            raise TypeError(
                f"model must be a compiled keras.Model or a callable returning one, got "
                f"{type(self.model).__name__}."
            )
        # Custom losses and metrics in the compile config need the custom objects to rebuild.
        with keras.saving.custom_object_scope(self.custom_objects or {}):
            model.compile(**_compile_arguments(model, routed["compile"], routed["optimizer"]))
        return model

    def _model_arguments(self, routed: dict[str, dict[str, Any]]) -> tuple[dict, dict]:
        """What describes the data (passed when accepted) and the routed ``model__`` params."""
        return {"n_features_in": self.n_features_in_, **self._target_meta()}, routed["model"]

    # ------------------------------------------------------------------------ predict
    def _predict_raw(self, X: Any) -> np.ndarray:
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=(np.float32, np.float64))
        outputs = self.model_.predict(
            np.asarray(X, dtype=np.float32), batch_size=self.batch_size, verbose=0
        )
        return np.asarray(outputs, dtype=np.float64)

    def __sklearn_is_fitted__(self) -> bool:
        return hasattr(self, "model_")

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        # Training is reproducible for a fixed int random_state, except asynchronous PS training.
        tags.non_deterministic = not isinstance(self.random_state, numbers.Integral) or (
            self.num_workers is not None and self.strategy == "parameter_server"
        )
        return tags

    # ------------------------------------------------------------------------ pickling
    def __getstate__(self) -> dict[str, Any]:
        """Keras models are pickled as ``.keras`` bytes plus their custom objects (Keras' own
        pickling fails for unregistered custom layers, keras-team/keras#19832)."""
        import keras

        state = dict(self.__dict__)
        for name in ("model", "model_"):
            if isinstance(state.get(name), keras.Model):
                state[name] = _PickledModel.of(
                    state[name], self.custom_objects or {}, self.safe_mode
                )
        # A model function, custom objects and callbacks from a script or notebook travel by
        # value, as they do to Spark's executors.
        if callable(state.get("model")) and not isinstance(state["model"], _PickledModel):
            state["model"] = _PickledByValue.of(state["model"])
        for name in ("custom_objects", "callbacks", "_extra_params"):  # routed params too
            if state.get(name):
                state[name] = _PickledByValue.of(state[name])
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        state.setdefault("safe_mode", True)  # pickled before the param existed
        for name, value in state.items():
            if isinstance(value, (_PickledModel, _PickledByValue)):
                state[name] = value.load()
        self.__dict__.update(state)


class _PickledModel:
    """A Keras model inside a pickle: ``.keras`` bytes and its cloudpickled custom objects."""

    safe_mode = True  # for pickles made before it was recorded

    def __init__(self, model_bytes: bytes, objects_bytes: bytes, safe_mode: bool = True) -> None:
        self.model_bytes = model_bytes
        self.objects_bytes = objects_bytes
        self.safe_mode = safe_mode

    @classmethod
    def of(cls, model: Any, custom_objects: dict, safe_mode: bool) -> _PickledModel:
        from sparkeras import serialization

        model_bytes = serialization.model_to_bytes(model)
        shipped = serialization.custom_objects_to_ship(model_bytes, custom_objects)
        return cls(model_bytes, serialization.objects_to_bytes(shipped), safe_mode)

    def load(self) -> Any:
        from sparkeras import serialization

        custom_objects = serialization.objects_from_bytes(self.objects_bytes)
        return serialization.model_from_bytes(
            self.model_bytes, custom_objects, safe_mode=self.safe_mode
        )


class _PickledByValue:
    """An object, list or dict pickled with cloudpickle, by value when its module (a script, a
    notebook) is not installed."""

    def __init__(self, payload: bytes, single: bool) -> None:
        self.payload = payload
        self.single = single

    @classmethod
    def of(cls, value: Any) -> _PickledByValue:
        from sparkeras import serialization

        single = not isinstance(value, (dict, list))
        return cls(serialization.objects_to_bytes([value] if single else value), single)

    def load(self) -> Any:
        from sparkeras import serialization

        loaded = serialization.objects_from_bytes(self.payload)
        return loaded[0] if self.single else loaded


class KerasClassifier(ClassifierMixin, _KerasEstimator):
    """A compiled Keras classifier with scikit-learn's API; trains in-process or on Spark.

    Labels may be strings or numbers, binary or multiclass; ``predict`` returns them in the
    original label space. A model with one sigmoid unit is trained on 0/1 targets, a model
    compiled with a (non-sparse) categorical loss on one-hot targets, any other model on class
    indices (e.g. ``sparse_categorical_crossentropy``).

    Parameters
    ----------
    model : keras.Model or callable
        A compiled model (copied for every fit, never modified), or a callable returning one,
        called with ``n_features_in``, ``n_classes`` and the ``model__*`` params it accepts.
    epochs, batch_size, verbose, callbacks, validation_split
        As in Keras' ``fit``.
    random_state : int, numpy.random.RandomState or None
        Seeds weight initialisation, shuffling and dropout. An int makes fits reproducible; a
        ``RandomState`` draws a new seed for each fit.
    warm_start : bool
        ``fit`` continues training the fitted model instead of starting anew.
    class_weight : dict, "balanced" or None
        Weights of the classes, as in scikit-learn's classifiers.
    custom_objects : dict, optional
        Custom layers, losses and metrics of the model (for Spark and pickling).
    num_workers : int, optional
        ``None`` trains in this process; an int trains on Spark with that many workers.
    strategy : {"mirrored", "parameter_server"}
        The distribution strategy on Spark.
    num_ps : int, optional
        Parameter servers for ``strategy="parameter_server"``.
    safe_mode : bool
        Keras safe mode for rebuilding the model (``False`` allows ``Lambda`` layers' code,
        only for models you trust).
    **routed
        ``model__*``, ``compile__*``, ``optimizer__*`` and ``fit__*`` params.

    Examples
    --------
    >>> def build(n_features_in, n_classes, hidden=32):
    ...     model = keras.Sequential([keras.Input((n_features_in,)),
    ...                               keras.layers.Dense(hidden, activation="relu"),
    ...                               keras.layers.Dense(n_classes, activation="softmax")])
    ...     model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    ...     return model
    >>> clf = KerasClassifier(build, epochs=20, model__hidden=64, optimizer__learning_rate=0.01)
    >>> clf.fit(X, y).predict(X[:3])  # doctest: +SKIP
    array(['setosa', 'setosa', 'setosa'], dtype=object)
    """

    def __init__(
        self,
        model: Any = None,
        *,
        epochs: int = 1,
        batch_size: int = 32,
        verbose: int = 0,
        random_state: int | np.random.RandomState | None = None,
        callbacks: list | None = None,
        validation_split: float = 0.0,
        warm_start: bool = False,
        class_weight: Any = None,
        custom_objects: dict | None = None,
        num_workers: int | None = None,
        strategy: str = "mirrored",
        num_ps: int | None = None,
        safe_mode: bool = True,
        **routed: Any,
    ) -> None:
        super().__init__(
            model,
            epochs=epochs,
            batch_size=batch_size,
            verbose=verbose,
            random_state=random_state,
            callbacks=callbacks,
            validation_split=validation_split,
            warm_start=warm_start,
            custom_objects=custom_objects,
            num_workers=num_workers,
            strategy=strategy,
            num_ps=num_ps,
            safe_mode=safe_mode,
            **routed,
        )
        self.class_weight = class_weight

    def partial_fit(
        self, X: Any, y: Any, classes: Any = None, sample_weight: Any = None
    ) -> KerasClassifier:
        """One epoch on ``X, y``, continuing from the fitted model if there is one.

        ``classes`` (all labels that will ever be seen) is needed on the first call when that
        batch does not contain every class.
        """
        given = None if classes is None else np.unique(np.asarray(classes))
        if (
            given is not None
            and hasattr(self, "model_")  # a first call that failed may leave classes_ alone
            and not np.array_equal(given, self.classes_)
        ):
            raise ValueError(
                f"classes={given.tolist()} differs from {self.classes_.tolist()}, the classes of "
                "the first partial_fit; pass the same classes, or start anew with fit."
            )
        return self._train(X, y, sample_weight, epochs=1, warm=True, classes=classes)

    def _learn_target_layout(self, y: np.ndarray, classes: Any) -> None:
        check_classification_targets(y)
        if y.ndim != 1:
            raise ValueError(
                f"{type(self).__name__} takes a 1-d y of labels, got shape {y.shape}; "
                "multi-label and multi-output targets are not supported."
            )
        self.classes_ = np.unique(y if classes is None else np.asarray(classes))
        if len(self.classes_) < 2:
            raise ValueError(
                f"{type(self).__name__} needs samples of at least 2 classes in the data, but "
                f"the data contains only one class: {self.classes_[0]!r}."
            )

    def _target_meta(self) -> dict[str, Any]:
        return {"n_classes": len(self.classes_)}

    def _encode_targets(self, y: np.ndarray) -> np.ndarray:
        unknown = np.setdiff1d(y, self.classes_)
        if len(unknown):
            raise ValueError(
                f"y contains labels not seen in the first fit: {unknown[:5].tolist()}; pass "
                "every label with classes= on the first partial_fit."
            )
        indices = np.searchsorted(self.classes_, y)
        units = int(self.model_.outputs[0].shape[-1])
        n_classes = len(self.classes_)
        if units == 1:
            if n_classes != 2:
                raise ValueError(
                    f"The model has 1 output unit, which fits 2 classes, but y has {n_classes}; "
                    f"end the model with Dense({n_classes}, activation='softmax')."
                )
            return indices.astype(np.float32)
        if units != n_classes:
            raise ValueError(
                f"The model has {units} output units, but y has {n_classes} classes; use "
                f"Dense({n_classes}) (or the n_classes argument of a model callable)."
            )
        if _uses_one_hot_targets(self.model_):
            return np.eye(n_classes, dtype=np.float32)[indices]
        return indices.astype(np.int32)

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities, columns in the order of ``classes_`` (also for a model that
        outputs logits, compiled with ``from_logits=True``)."""
        from sparkeras import inference, validation

        outputs = self._predict_raw(X)
        return inference.class_scores(outputs, validation.outputs_logits(self.model_))[0]

    def predict(self, X: Any) -> np.ndarray:
        """The most probable class of each row, in the original label space."""
        probabilities = self.predict_proba(X)  # checks that the estimator is fitted
        return self.classes_[np.argmax(probabilities, axis=1)]

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_label = False
        return tags


class KerasRegressor(RegressorMixin, _KerasEstimator):
    """A compiled Keras regressor with scikit-learn's API; trains in-process or on Spark.

    ``y`` may have one column (``predict`` returns a 1-d array) or several (2-d). ``score``
    is R². See :class:`KerasClassifier` for the parameters; a model callable receives
    ``n_features_in`` and ``n_outputs``.

    Examples
    --------
    >>> def build(n_features_in, n_outputs):
    ...     model = keras.Sequential([keras.Input((n_features_in,)), keras.layers.Dense(n_outputs)])
    ...     model.compile(optimizer="adam", loss="mse")
    ...     return model
    >>> KerasRegressor(build, epochs=50).fit(X, y).score(X, y)  # doctest: +SKIP
    0.98
    """

    def partial_fit(self, X: Any, y: Any, sample_weight: Any = None) -> KerasRegressor:
        """One epoch on ``X, y``, continuing from the fitted model if there is one."""
        return self._train(X, y, sample_weight, epochs=1, warm=True)

    def _learn_target_layout(self, y: np.ndarray, classes: Any) -> None:
        self.n_outputs_ = 1 if y.ndim == 1 else y.shape[1]
        self._y_is_1d = y.ndim == 1

    def _target_meta(self) -> dict[str, Any]:
        return {"n_outputs": self.n_outputs_}

    def _encode_targets(self, y: np.ndarray) -> np.ndarray:
        outputs = 1 if y.ndim == 1 else y.shape[1]
        if outputs != self.n_outputs_:
            raise ValueError(
                f"y has {outputs} outputs, but the model was fitted with {self.n_outputs_}."
            )
        units = int(np.prod(self.model_.outputs[0].shape[1:]))
        if units != outputs:  # Keras' losses would broadcast one against the other silently
            raise ValueError(
                f"The model has {units} output unit(s), but y has {outputs} output(s); end the "
                f"model with Dense({outputs}) (or use the n_outputs argument of a model callable)."
            )
        return np.asarray(y, dtype=np.float32)

    def predict(self, X: Any) -> np.ndarray:
        """Predicted values: shape (n_samples,) for a 1-d y, else (n_samples, n_outputs)."""
        outputs = self._predict_raw(X)
        return outputs.ravel() if self._y_is_1d else outputs

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags


def _spark_int(value: Any) -> Any:
    """A whole number (``np.int32(8)``, ``8.0``) as the plain int Spark's param converters take;
    anything else as it is, for the converter's own error.

    >>> _spark_int(np.int32(8)), _spark_int(8.0), _spark_int(2.5), _spark_int(None)
    (8, 8, 2.5, None)
    """
    is_whole = isinstance(value, numbers.Number) and float(value).is_integer()
    return int(value) if is_whole else value


def _fit_seed(random_state: Any) -> int | None:
    """The seed of one fit: ``None`` (unseeded), one drawn from a ``RandomState``, or the int."""
    if random_state is None:
        return None
    if isinstance(random_state, np.random.RandomState):
        return int(random_state.randint(2**32, dtype=np.int64))
    return keras_seed(random_state)


@contextlib.contextmanager
def _seeded(seed: int | None) -> Iterator[None]:
    """Seed Keras (and TensorFlow) for a reproducible fit, leaving the caller's ``random`` and
    ``numpy.random`` state as it was: scikit-learn estimators do not touch global random state,
    and a user's own shuffling between ``partial_fit`` calls must not repeat."""
    if seed is None:
        yield
        return
    import keras

    python_state, numpy_state = random.getstate(), np.random.get_state()
    keras.utils.set_random_seed(seed)
    try:
        yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)


def _builder_arguments(builder: Any, arguments: tuple[dict, dict]) -> dict[str, Any]:
    """Keyword arguments for the model callable: the data description it accepts, and every
    routed ``model__`` param (one it does not accept is an error, not silently dropped)."""
    meta, routed = arguments
    parameters = inspect.signature(builder).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return {**meta, **routed}
    unknown = sorted(set(routed) - set(parameters))
    if unknown:
        raise ValueError(
            f"model__{unknown[0]} is not an argument of the model callable "
            f"{getattr(builder, '__name__', builder)!r}; it accepts {sorted(parameters)}."
        )
    return {**{k: v for k, v in meta.items() if k in parameters}, **routed}


def _compile_arguments(model: Any, overrides: dict[str, Any], optimizer_overrides: dict) -> dict:
    """The model's compile arguments with a fresh optimizer and the routed overrides."""
    import keras

    accepted = set(inspect.signature(model.compile).parameters)
    unknown = sorted(set(overrides) - accepted)
    if unknown:
        raise ValueError(
            f"Unknown compile__ parameter(s) {unknown}; model.compile accepts {sorted(accepted)}."
        )
    arguments = keras.saving.deserialize_keras_object(model.get_compile_config())
    arguments.update(overrides)
    optimizer = keras.optimizers.get(arguments["optimizer"])
    config = optimizer.get_config()
    unknown = sorted(set(optimizer_overrides) - set(config))
    if unknown:
        raise ValueError(
            f"Unknown optimizer__ parameter(s) {unknown} for {type(optimizer).__name__}; its "
            f"config has {sorted(config)}."
        )
    arguments["optimizer"] = type(optimizer).from_config({**config, **optimizer_overrides})
    return arguments


def _uses_one_hot_targets(model: Any) -> bool:
    """Whether the compiled loss wants one-hot targets (categorical, not sparse, losses)."""
    loss = model.loss
    name = (
        loss
        if isinstance(loss, str)
        else getattr(loss, "name", None) or getattr(loss, "__name__", type(loss).__name__)
    )
    name = str(name).lower()
    return "categorical" in name and "sparse" not in name


__all__ = ["KerasClassifier", "KerasRegressor"]
