"""Spark ML persistence (``save`` / ``write().overwrite()`` / ``load``) of estimator and model.

A saved directory holds Spark's usual ``metadata/`` (class, uid, JSON params) and plain files::

    model.keras          the Keras model in Keras' own format (keras.models.load_model reads it)
    custom_objects.pkl   cloudpickled customObjects
    callbacks.pkl        estimator only: cloudpickled callbacks
    training.json        model only: history and worker reports

Files go through Hadoop's FileSystem API (so HDFS, S3, ABFS... work). Over Spark Connect
(PySpark >= 4.0) the client has no file system API of Spark's, so the files are written through
Spark instead, as a Parquet table ``table/`` of chunks inside the saved directory (the metadata
says which), and plain files are read with Spark's ``binaryFile`` source, in chunks; a directory
written either way loads in either kind of session.
"""

from __future__ import annotations

import json
import os
import re
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
#: Where a saved directory's files are: plain files, or a table of chunks (Spark Connect).
PLAIN_FILES, FILE_TABLE = "files", "table"
#: Bytes per row of the file table, and per row read back over Spark Connect: far below
#: Spark Connect's gRPC message limit (128 MiB), which a whole model file could exceed.
TABLE_CHUNK_BYTES = 4 << 20


def _metadata_context(spark: SparkSession) -> Any:
    return spark if METADATA_TAKES_SESSION else spark.sparkContext


class SparkKerasWriter(MLWriter):
    """Writes a :class:`SparkKerasEstimator` or :class:`SparkKerasModel` to a directory."""

    def __init__(self, instance: Any, files: dict[str, bytes]) -> None:
        super().__init__()
        self.instance = instance
        self.files = files

    def save(self, path: str) -> None:
        """Save to ``path``; ``overwrite()`` first removes what is there, through Spark Connect's
        ML helper when the session has no JVM (Spark's own writer needs one)."""
        if _has_jvm(self.sparkSession):
            super().save(path)
            return
        _check_connect_support()
        from pyspark.ml.connect.readwrite import RemoteMLWriter

        RemoteMLWriter.handleOverwrite(path, self.shouldOverwrite)
        self.saveImpl(path)

    def saveImpl(self, path: str) -> None:
        json_params = {
            param.name: value
            for param, value in self.instance._paramMap.items()
            if param.name not in OBJECT_PARAMS
        }
        store = PLAIN_FILES if _has_jvm(self.sparkSession) else FILE_TABLE
        DefaultParamsWriter.saveMetadata(
            self.instance,
            path,
            _metadata_context(self.sparkSession),
            extraMetadata={
                "sparkerasVersion": sparkeras.__version__,
                "files": sorted(self.files),
                "fileStore": store,
            },
            paramMap=json_params,
        )
        if store == FILE_TABLE:
            _write_file_table(self.sparkSession, os.path.join(path, FILE_TABLE), self.files)
            return
        for name, data in self.files.items():
            write_file(self.sparkSession, os.path.join(path, name), data)


class SparkKerasReader(MLReader):
    """Reads what :class:`SparkKerasWriter` wrote, checking that the class matches."""

    def __init__(self, cls: type) -> None:
        super().__init__()
        self.cls = cls

    def load(self, path: str) -> Any:
        expected = f"{self.cls.__module__}.{self.cls.__name__}"
        if not _has_jvm(self.sparkSession):
            _check_connect_support()
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
        names = metadata.get("files", [])
        if metadata.get("fileStore", PLAIN_FILES) == FILE_TABLE:
            files = _read_file_table(self.sparkSession, os.path.join(path, FILE_TABLE), names)
        else:
            files = {name: read_file(self.sparkSession, os.path.join(path, name)) for name in names}
        instance._load_files(files)
        return instance


def _has_jvm(spark: SparkSession) -> bool:
    """Whether the session lives in this process's JVM (not a Spark Connect client)."""
    return hasattr(spark, "_jsparkSession")


def _check_connect_support() -> None:
    if not METADATA_TAKES_SESSION:
        raise NotImplementedError(
            f"Saving and loading over Spark Connect needs PySpark >= 4.0 (this is "
            f"{pyspark.__version__}); upgrade PySpark, or use a classic SparkSession."
        )


def _hadoop_fs(spark: SparkSession, path: str) -> tuple[Any, Any]:
    jvm = spark.sparkContext._jvm  # type: ignore[attr-defined]
    hadoop_path = jvm.org.apache.hadoop.fs.Path(path)
    configuration = spark.sparkContext._jsc.hadoopConfiguration()  # type: ignore[union-attr]
    return hadoop_path.getFileSystem(configuration), hadoop_path


def write_file(spark: SparkSession, path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` on the file system Spark uses for it (needs the JVM)."""
    fs, hadoop_path = _hadoop_fs(spark, path)
    stream = fs.create(hadoop_path, True)
    try:
        stream.write(bytearray(data))
    finally:
        stream.close()


def read_file(spark: SparkSession, path: str) -> bytes:
    """Read the file ``path`` written by :func:`write_file`: through Hadoop's FileSystem API, or
    over Spark Connect with Spark's ``binaryFile`` source."""
    if not _has_jvm(spark):
        return read_file_through_spark(spark, path)
    fs, hadoop_path = _hadoop_fs(spark, path)
    stream = fs.open(hadoop_path)
    try:
        jvm = spark.sparkContext._jvm  # type: ignore[attr-defined]
        return bytes(jvm.org.apache.commons.io.IOUtils.toByteArray(stream))
    finally:
        stream.close()


def read_file_through_spark(
    spark: SparkSession, path: str, chunk_bytes: int = TABLE_CHUNK_BYTES
) -> bytes:
    """The file ``path``, read by Spark's ``binaryFile`` source and returned in chunks of
    ``chunk_bytes`` (one row each), so that no single row outgrows a Spark Connect message."""
    chunks = (
        spark.read.format("binaryFile")
        .load(re.sub(r"([\\\[\]{}*?])", r"\\\1", path))  # a path, not a glob pattern
        .selectExpr(
            f"posexplode(transform(sequence(0, greatest(ceil(length / {chunk_bytes}) - 1, 0)), "
            f"i -> substr(content, cast(i * {chunk_bytes} + 1 AS int), {chunk_bytes})))"
        )
        .collect()
    )
    return b"".join(bytes(chunk) for _, chunk in sorted(chunks))


def _write_file_table(spark: SparkSession, path: str, files: dict[str, bytes]) -> None:
    """Store ``files`` as a Parquet table of (name, part, data) rows through Spark."""
    rows = [
        (name, part, data[start : start + TABLE_CHUNK_BYTES])
        for name, data in files.items()
        for part, start in enumerate(range(0, max(len(data), 1), TABLE_CHUNK_BYTES))
    ]
    schema = "name string, part int, data binary"
    spark.createDataFrame(rows, schema).coalesce(1).write.parquet(path)


def _read_file_table(spark: SparkSession, path: str, names: list[str]) -> dict[str, bytes]:
    """The files :func:`_write_file_table` stored."""
    parts: dict[str, list[tuple[int, bytes]]] = {name: [] for name in names}
    for row in spark.read.parquet(path).collect():
        parts[row["name"]].append((row["part"], bytes(row["data"])))
    return {name: b"".join(data for _, data in sorted(chunks)) for name, chunks in parts.items()}


def json_bytes(value: Any) -> bytes:
    """UTF-8 JSON of ``value``."""
    return json.dumps(value).encode()
