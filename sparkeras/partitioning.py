"""Split the rows into one partition per barrier task: training rows to workers, balanced and mixed.

Every row draws a number uniformly at random (``rand(seed)``) that picks its task; a hash
repartition then sends it there. Spark's hash partitioner puts a key in partition
``pmod(murmur3(key, 42), n)``, so each task is given a key that hashes to its own partition: no
sampling job, shards within a few hundred rows of each other, the same split and the same row
order within each shard for the same seed, and rows of a sorted DataFrame mixed across workers.
Tiny DataFrames, where a random draw could leave a worker empty, are dealt round-robin in the
order of the draw instead.

In parameter-server mode the coordinator's partition receives the held-out validation rows and
the parameter servers' partitions stay empty.
"""

from __future__ import annotations

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from sparkeras.plan import Role

#: Below this many rows per worker, rows are dealt round-robin so that no shard is empty.
MIN_ROWS_PER_WORKER_FOR_HASHING = 64

_SPARK_HASH_SEED = 42
_MASK = 0xFFFFFFFF
_DRAW, _TARGET = "__sparkeras_draw", "__sparkeras_task"


def shard_rows(
    data: DataFrame, roles: list[Role], rows: int, seed: int, holdout_fraction: float = 0.0
) -> DataFrame:
    """``data`` in exactly one partition per task of ``roles``.

    The ``"worker"`` tasks share the training rows evenly; with ``holdout_fraction`` > 0 that
    fraction of the rows goes to the ``"chief"`` task instead.

    Examples
    --------
    >>> shards = shard_rows(frame, ["worker", "worker"], rows=frame.count(), seed=0)  # doctest: +SKIP
    >>> shards.rdd.getNumPartitions()  # doctest: +SKIP
    2
    """
    keys = partition_keys(len(roles))
    worker_keys = F.array(
        *[F.lit(keys[rank]) for rank, role in enumerate(roles) if role == "worker"]
    )
    num_workers = roles.count("worker")
    holdout_key = F.lit(keys[roles.index("chief")] if "chief" in roles else -1)
    draw = F.col(_DRAW)
    if rows < MIN_ROWS_PER_WORKER_FOR_HASHING * num_workers:
        # One small window: the first rows in draw order are held out, the rest dealt in turn.
        position = F.row_number().over(Window.orderBy(draw)) - 1 - round(holdout_fraction * rows)
        target = F.when(position < 0, holdout_key).otherwise(
            F.element_at(worker_keys, F.pmod(position, F.lit(num_workers)).cast("int") + 1)
        )
    else:
        worker = ((draw - holdout_fraction) / (1.0 - holdout_fraction) * num_workers).cast("int")
        target = F.when(draw < holdout_fraction, holdout_key).otherwise(
            F.element_at(worker_keys, worker + 1)
        )
    return (
        data.withColumn(_DRAW, F.rand(seed))
        .withColumn(_TARGET, target)
        .repartition(len(roles), _TARGET)
        # A shuffle delivers a partition's blocks in whatever order they arrive: sorting by the
        # draw makes each shard's row order, and so the fit, the same for the same seed.
        .sortWithinPartitions(_DRAW)
        .drop(_DRAW, _TARGET)
    )


def partition_keys(num_partitions: int) -> list[int]:
    """For each partition ``p``, the smallest int that Spark's hash partitioner sends to ``p``.

    Examples
    --------
    >>> partition_keys(2)
    [2, 0]
    """
    keys: dict[int, int] = {}
    candidate = 0
    while len(keys) < num_partitions:
        keys.setdefault(spark_hash_int(candidate) % num_partitions, candidate)
        candidate += 1
    return [keys[partition] for partition in range(num_partitions)]


def spark_hash_int(value: int) -> int:
    """Spark's ``hash(int)``: Murmur3 x86 32-bit with seed 42, as a signed 32-bit int."""

    def rotate_left(x: int, bits: int) -> int:
        return ((x << bits) | (x >> (32 - bits))) & _MASK

    k1 = (value & _MASK) * 0xCC9E2D51 & _MASK
    k1 = rotate_left(k1, 15) * 0x1B873593 & _MASK
    h1 = _SPARK_HASH_SEED ^ k1
    h1 = (rotate_left(h1, 13) * 5 + 0xE6546B64) & _MASK
    h1 ^= 4  # length in bytes
    h1 ^= h1 >> 16
    h1 = h1 * 0x85EBCA6B & _MASK
    h1 ^= h1 >> 13
    h1 = h1 * 0xC2B2AE35 & _MASK
    h1 ^= h1 >> 16
    return h1 - (1 << 32) if h1 & 0x80000000 else h1
