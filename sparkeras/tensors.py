"""Handing numpy arrays to TensorFlow without a copy (training shards and inference batches).

TensorFlow's CPU kernels may assume their inputs are aligned like its own allocations (64
bytes), so only C-contiguous arrays that start on such a boundary are shared through DLPack;
any other is copied. Nothing here imports TensorFlow until a tensor is made.
"""

from __future__ import annotations

from typing import Any

import numpy as np

ALIGNMENT = 64


def aligned_float32(size: int) -> np.ndarray:
    """An uninitialised float32 array of ``size`` values that starts on a 64-byte boundary.

    Examples
    --------
    >>> aligned_float32(10).ctypes.data % 64
    0
    """
    raw = np.empty(size * 4 + ALIGNMENT, dtype=np.uint8)
    start = -raw.ctypes.data % ALIGNMENT
    return raw[start : start + size * 4].view(np.float32)


def as_tensor(array: np.ndarray) -> Any:
    """``array`` as a TensorFlow tensor that shares its memory when it can, else a copy.

    The array must outlive the tensor when they share memory (a memory-mapped shard, or a
    buffer reused for the next batch only after the tensor is no longer used).

    Examples
    --------
    >>> buffer = aligned_float32(6).reshape(2, 3)
    >>> buffer[:] = 1
    >>> tensor = as_tensor(buffer)
    >>> buffer[0, 0] = 5  # shared, not copied
    >>> float(tensor[0, 0])
    5.0
    """
    import tensorflow as tf

    if array.flags.c_contiguous and array.ctypes.data % ALIGNMENT == 0:
        return tf.experimental.dlpack.from_dlpack(array.__dlpack__())
    return tf.convert_to_tensor(array)
