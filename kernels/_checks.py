"""Argument checks shared by the kernel wrappers: dtype, shape and contiguity, named in errors."""

from __future__ import annotations

import numpy as np

F8 = np.dtype(np.float64)
I8 = np.dtype(np.int64)
B1 = np.dtype(np.int8)


def check_array(
    name: str, array: object, dtype: np.dtype[np.generic], length: int = -1, width: int = 0
) -> None:
    """Raise unless ``array`` is a C-contiguous ndarray of ``dtype`` and the expected shape.

    Args:
        name: Argument name used in the error message.
        array: The value to check.
        dtype: Required dtype.
        length: Required number of rows; -1 accepts any.
        width: 0 for a 1-D array, else the required number of columns of a 2-D array.

    Raises:
        ValueError: Naming ``name`` and what is wrong with it.
    """
    if not isinstance(array, np.ndarray):
        raise ValueError(f"{name}: expected a numpy array, got {type(array).__name__}")
    shape = array.shape
    # PERF: builtin dtypes are singletons, so the identity test settles the common case
    # without the slower dtype equality.
    if array.dtype is not dtype and array.dtype != dtype:
        raise ValueError(f"{name}: expected dtype {dtype}, got {array.dtype}")
    if width:
        if len(shape) != 2 or shape[1] != width:
            raise ValueError(f"{name}: expected shape (n, {width}), got {shape}")
    elif len(shape) != 1:
        raise ValueError(f"{name}: expected a 1-D array, got shape {shape}")
    if length >= 0 and shape[0] != length:
        raise ValueError(f"{name}: expected {length} rows, got {shape[0]}")
    if not array.flags.c_contiguous:
        raise ValueError(f"{name}: array must be C-contiguous")
