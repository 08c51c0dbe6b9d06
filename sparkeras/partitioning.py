"""Split the training rows into exactly one balanced, randomly mixed partition per worker.

Every row draws a worker uniformly at random (``rand(seed)``); a hash repartition then sends it
there. Spark's hash partitioner puts a key in partition ``pmod(murmur3(key, 42), n)``, so each
worker is given a key that hashes to its own partition: no sampling job, shards within a few
hundred rows of each other, the same split for the same seed, and rows of a sorted DataFrame
mixed across workers. Tiny DataFrames, where a random draw could leave a worker empty, are
range-partitioned instead (Spark samples the bounds, which keeps every partition non-empty).
"""

from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

#: Below this many rows per worker, range partitioning guarantees non-empty shards.
MIN_ROWS_PER_WORKER_FOR_HASHING = 64

_SPARK_HASH_SEED = 42
_MASK = 0xFFFFFFFF


def shard_rows(data: DataFrame, num_workers: int, rows: int, seed: int) -> DataFrame:
    """``data`` in exactly ``num_workers`` partitions of about ``rows / num_workers`` rows.

    Examples
    --------
    >>> shards = shard_rows(frame, num_workers=2, rows=frame.count(), seed=0)  # doctest: +SKIP
    >>> shards.rdd.getNumPartitions()  # doctest: +SKIP
    2
    """
    draw = F.rand(seed)
    if rows < MIN_ROWS_PER_WORKER_FOR_HASHING * num_workers:
        return data.repartitionByRange(num_workers, draw)
    keys = F.array(*[F.lit(key) for key in partition_keys(num_workers)])
    worker = F.element_at(keys, (draw * num_workers).cast("int") + 1)
    return data.repartition(num_workers, worker)


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
