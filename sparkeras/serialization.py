"""Compiled Keras models and their custom objects <-> bytes.

Models travel in Keras' own ``.keras`` format (architecture, compile config with the optimizer's
config, loss, loss weights and metrics, weights and, once built, optimizer state). Custom objects
travel with cloudpickle, because Keras' own serialisation only records their *names*
(keras-team/keras#19832). Used by the driver, the TensorFlow worker processes and persistence.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import sysconfig
import tempfile
import types
import warnings
import zipfile
from collections.abc import Iterator, Mapping
from typing import Any

import cloudpickle


class ModelSerializationError(ValueError):
    """The model cannot be written to or rebuilt from the ``.keras`` format."""


def model_to_bytes(model: Any) -> bytes:
    """Serialise a Keras model, compiled state included, to ``.keras`` bytes.

    Examples
    --------
    >>> data = model_to_bytes(model)  # doctest: +SKIP
    >>> restored = model_from_bytes(data)  # doctest: +SKIP
    """
    with tempfile.TemporaryDirectory(prefix="sparkeras-model-") as tmp:
        path = os.path.join(tmp, "model.keras")
        try:
            model.save(path)
        except Exception as error:  # Keras raises many types here; all mean "cannot serialise".
            raise ModelSerializationError(
                f"Keras could not serialise the model ({type(error).__name__}: {error}). Subclassed "
                "layers and models need get_config(); pass their classes through customObjects."
            ) from error
        with open(path, "rb") as file:
            return file.read()


def model_from_bytes(
    data: bytes,
    custom_objects: Mapping[str, Any] | None = None,
    *,
    safe_mode: bool = True,
    compile: bool = True,
) -> Any:
    """Rebuild a Keras model from ``.keras`` bytes written by :func:`model_to_bytes`.

    Raises
    ------
    ModelSerializationError
        When a class the model uses is unknown (the message names it and says how to pass it).
    """
    import keras

    with tempfile.TemporaryDirectory(prefix="sparkeras-model-") as tmp:
        path = os.path.join(tmp, "model.keras")
        with open(path, "wb") as file:
            file.write(data)
        try:
            with unbuilt_optimizer_warning_ignored():
                return keras.saving.load_model(
                    path,
                    custom_objects=dict(custom_objects or {}),
                    compile=compile,
                    safe_mode=safe_mode,
                )
        except Exception as error:
            raise ModelSerializationError(_explain_load_error(error)) from error


@contextlib.contextmanager
def unbuilt_optimizer_warning_ignored() -> Iterator[None]:
    """Silence Keras' warning that an optimizer's variables were not restored, for a block that
    rebuilds a model: a model compiled but not yet fitted has an unbuilt optimizer, and so
    nothing to restore."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Skipping variable loading for optimizer")
        yield


def _explain_load_error(error: Exception) -> str:
    message = str(error)
    # First: a missing custom class may well have "Lambda" in its name.
    missing = sorted(set(re.findall(r"Could not locate (?:class|function) '([^']+)'", message)))
    if missing:
        example = ", ".join(f'"{name}": {name.split(">")[-1]}' for name in missing)
        return (
            f"The model uses custom object(s) {missing} that Keras cannot find when it rebuilds "
            "the model on the executors. Pass them through customObjects, e.g. "
            f"customObjects={{{example}}}."
        )
    if "safe_mode" in message:
        return (
            f"Keras refused to load the model in safe mode: {_first_line(message)}\n"
            "Lambda layers carry pickled Python code. Set safeMode=False (safe_mode=False in the "
            "scikit-learn estimators) only if you trust the model."
        )
    return f"Keras could not rebuild the model: {_first_line(message)}"


def _first_line(message: str, limit: int = 500) -> str:
    line = message.strip().splitlines()[0] if message.strip() else message
    return line[:limit]


def custom_objects_to_ship(data: bytes, user_objects: Mapping[str, Any]) -> dict[str, Any]:
    """The user's custom objects plus the registered ones the serialised model refers to.

    Registered objects live in the driver's Keras registry only; shipping them by value lets
    executors rebuild the model without importing the module that registered them.
    """
    return {**_registered_objects_used(data), **user_objects}


def _registered_objects_used(data: bytes) -> dict[str, Any]:
    """Objects from Keras' global custom-object registry that a serialised model refers to."""
    import io

    import keras

    registry = keras.saving.get_custom_objects()
    names = _custom_class_names(io.BytesIO(data))
    return {name: registry[name] for name in names if name in registry}


def register_shipped_objects(objects: Mapping[str, Any]) -> None:
    """Register unpickled objects under the names they had in the driver's Keras registry.

    A worker saves the trained model; with the same registry entries as the driver, the saved
    config names classes exactly as the driver's own ``model.save`` would.
    """
    import keras

    for name, value in objects.items():
        package, separator, short_name = name.partition(">")
        if separator:
            keras.saving.register_keras_serializable(package=package, name=short_name)(value)


def _custom_class_names(archive_file: Any) -> list[str]:
    """Names of classes in a ``.keras`` archive that are not part of Keras itself."""
    with zipfile.ZipFile(archive_file) as archive:
        config = json.loads(archive.read("config.json"))
    names: list[str] = []

    def visit(node: Any) -> None:
        if isinstance(node, dict):
            module = node.get("module")
            if "class_name" in node and (module is None or not str(module).startswith("keras")):
                names.append(str(node.get("registered_name") or node["class_name"]))
            for value in node.values():
                visit(value)
        elif isinstance(node, list):
            for value in node:
                visit(value)

    visit(config)
    return names


def objects_to_bytes(objects: Any) -> bytes:
    """Pickle custom objects or callbacks for the executors.

    Classes and functions from modules that are not installed packages (a script, a notebook, a
    helper module next to it, a test file) are pickled by value: executors have the installed
    packages, but not the files beside the driver's script.
    """
    modules = _uninstalled_modules(objects)
    for module in modules:
        cloudpickle.register_pickle_by_value(module)
    try:
        return cloudpickle.dumps(objects)
    except Exception as error:
        raise ModelSerializationError(
            f"Could not pickle {type(objects).__name__} for the executors: {error}"
        ) from error
    finally:
        for module in modules:
            cloudpickle.unregister_pickle_by_value(module)


def _uninstalled_modules(objects: Any) -> list[types.ModuleType]:
    installed = tuple(
        os.path.realpath(sysconfig.get_paths()[key]) for key in ("stdlib", "purelib", "platlib")
    )
    values = objects.values() if isinstance(objects, Mapping) else objects
    found: dict[str, types.ModuleType] = {}
    for value in values:
        owner = value if isinstance(value, (type, types.FunctionType)) else type(value)
        module = sys.modules.get(getattr(owner, "__module__", "") or "")
        path = getattr(module, "__file__", None)
        if (
            module is None
            or path is None
            or module.__name__ == "__main__"  # cloudpickle already pickles __main__ by value
            or module.__name__.split(".")[0] == "sparkeras"
            or os.path.realpath(path).startswith(installed)
        ):
            continue
        found[module.__name__] = module
    return list(found.values())


def objects_from_bytes(data: bytes) -> Any:
    """Inverse of :func:`objects_to_bytes`."""
    return cloudpickle.loads(data)
