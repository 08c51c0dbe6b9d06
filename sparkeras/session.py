"""The SparkSession sparkeras uses when the caller has none."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Mapping

from pyspark.sql import SparkSession


def get_or_create_session(
    master: str | None = None, app_name: str = "sparkeras", config: Mapping[str, str] | None = None
) -> SparkSession:
    """Return the active SparkSession, or start one: a local one whose executors run this Python.

    Spark executors start ``python3`` from ``PATH`` unless told otherwise; pointing
    ``PYSPARK_PYTHON`` at ``sys.executable`` makes them use the same interpreter (and virtual
    environment, with sparkeras, TensorFlow and Keras) as the driver. Without ``master``, a
    script started by ``spark-submit`` keeps the master and Python that ``spark-submit`` was
    given; anything else gets ``local[*]``.

    ``config`` adds Spark settings to a new session; it is ignored when one is already active.

    Examples
    --------
    >>> spark = get_or_create_session("local[2]")  # doctest: +SKIP
    """
    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        raise RuntimeError(
            "Spark needs Java 17 or newer, and no 'java' is on PATH (nor JAVA_HOME set). Install "
            "it, e.g. 'sudo apt-get install -y openjdk-17-jre-headless' (Debian/Ubuntu) or 'brew "
            "install openjdk@17' (macOS), then try again."
        )
    builder = (
        SparkSession.builder.appName(app_name)
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.ui.showConsoleProgress", "false")
    )
    if master is not None or "PYSPARK_GATEWAY_PORT" not in os.environ:  # not spark-submit's
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
        builder = builder.master(master or "local[*]").config(
            "spark.pyspark.python", os.environ["PYSPARK_PYTHON"]
        )
    for key, value in (config or {}).items():
        builder = builder.config(key, value)
    return builder.getOrCreate()
