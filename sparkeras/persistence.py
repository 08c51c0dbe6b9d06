"""Spark ML persistence (``save`` / ``write().overwrite()`` / ``load``) of estimator and model.

A saved directory holds Spark's usual ``metadata/`` (class, uid, JSON params) and plain files::

    model.keras          the Keras model in Keras' own format (keras.models.load_model reads it)
    custom_objects.pkl   cloudpickled customObjects
    callbacks.pkl        estimator only: cloudpickled callbacks
    training.json        model only: history and worker reports

Files go through Hadoop's FileSystem API when the JVM is reachable (so HDFS, S3, ABFS... work),
else through the local file system.
"""

from __future__ import annotations

import json
import os
from typing import Any

import pyspark
from pyspark.ml.util import DefaultParamsReader, DefaultParamsWriter, MLReader, MLWriter
from pyspark.sql import SparkSession

import sparkeras

#: Params that hold Python objects; they are stored as files, not in the JSON metadata.
OBJECT_PARAMS = ("model", "customObjects", "callbacks")

#: PySpark >= 4.0 reads and writes ML metadata through a SparkSession (which Spark Connect
#: has); PySpark 3.5 needs the SparkContext.
METADATA_TAKES_SESSION = int(pyspark.__version__.split(".")[0]) >= 4


def _metadata_context(spark: SparkSession) -> Any:
    return spark if METADATA_TAKES_SESSION else spark.sparkContext


class SparkKerasWriter(MLWriter):
    """Writes a :class:`SparkKerasEstimator` or :class:`SparkKerasModel` to a directory."""

    def __init__(self, instance: Any, files: dict[str, bytes]) -> None:
        super().__init__()
        self.instance = instance
        self.files = files

    def saveImpl(self, path: str) -> None:
        json_params = {
            param.name: value
            for param, value in self.instance._paramMap.items()
            if param.name not in OBJECT_PARAMS
        }
        DefaultParamsWriter.saveMetadata(
            self.instance,
            path,
            _metadata_context(self.sparkSession),
            extraMetadata={"sparkerasVersion": sparkeras.__version__, "files": sorted(self.files)},
            paramMap=json_params,
        )
        for name, data in self.files.items():
            write_file(self.sparkSession, os.path.join(path, name), data)


class SparkKerasReader(MLReader):
    """Reads what :class:`SparkKerasWriter` wrote, checking that the class matches."""

    def __init__(self, cls: type) -> None:
        super().__init__()
        self.cls = cls

    def load(self, path: str) -> Any:
        expected = f"{self.cls.__module__}.{self.cls.__name__}"
        try:
            metadata = DefaultParamsReader.loadMetadata(path, _metadata_context(self.sparkSession))
        except Exception as error:
            raise ValueError(
                f"{path!r} is not a saved sparkeras model or estimator (no readable metadata): "
                f"{str(error).splitlines()[0]}"
            ) from None
        if metadata.get("class") != expected:
            found = str(metadata.get("class"))
            raise ValueError(
                f"{path!r} holds a {found}, not a {expected}; load it with "
                f"{found.rsplit('.', 1)[-1]}.load(path)."
            )
        instance = self.cls()
        instance._resetUid(metadata["uid"])
        DefaultParamsReader.getAndSetParams(instance, metadata)
        files = {
            name: read_file(self.sparkSession, os.path.join(path, name))
            for name in metadata.get("files", [])
        }
        instance._load_files(files)
        return instance


def _hadoop_fs(spark: SparkSession, path: str) -> tuple[Any, Any] | None:
    try:
        jvm = spark.sparkContext._jvm  # type: ignore[attr-defined]
        hadoop_path = jvm.org.apache.hadoop.fs.Path(path)
        configuration = spark.sparkContext._jsc.hadoopConfiguration()  # type: ignore[union-attr]
        return hadoop_path.getFileSystem(configuration), hadoop_path
    except Exception:  # Spark Connect: no JVM in this process
        return None


def write_file(spark: SparkSession, path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` on the file system Spark uses for it."""
    target = _hadoop_fs(spark, path)
    if target is None:
        with open(path, "wb") as file:
            file.write(data)
        return
    fs, hadoop_path = target
    stream = fs.create(hadoop_path, True)
    try:
        stream.write(bytearray(data))
    finally:
        stream.close()


def read_file(spark: SparkSession, path: str) -> bytes:
    """Read the file ``path`` written by :func:`write_file`."""
    target = _hadoop_fs(spark, path)
    if target is None:
        with open(path, "rb") as file:
            return file.read()
    fs, hadoop_path = target
    stream = fs.open(hadoop_path)
    try:
        jvm = spark.sparkContext._jvm  # type: ignore[attr-defined]
        return bytes(jvm.org.apache.commons.io.IOUtils.toByteArray(stream))
    finally:
        stream.close()


def json_bytes(value: Any) -> bytes:
    """UTF-8 JSON of ``value``."""
    return json.dumps(value).encode()
