"""The ``.npy`` format on an open binary handle, converted to another dtype a block of rows at a
time, so a large array is never copied whole in memory (:func:`goggles.io.storage.write_npy` and
:func:`~goggles.io.storage.read_npy` open the files)."""

from __future__ import annotations

from typing import Any

import numpy as np

BLOCK_BYTES = 16 << 20
"""Bytes of one block of rows converted at a time."""


def _rows_per_block(rows: np.ndarray, itemsize: int) -> int:
    return max(1, BLOCK_BYTES // max(1, rows[:1].size * itemsize))


def write_array(handle: Any, array: np.ndarray, stored: np.dtype) -> None:
    """``array`` as a ``.npy`` stored as ``stored``: numpy's own writer when nothing converts,
    else the header and then each block's own buffer (no bytes copy)."""
    if stored == array.dtype and array.flags.c_contiguous:
        np.save(handle, array, allow_pickle=False)
        return
    np.lib.format.write_array_header_1_0(handle, {
        "descr": np.lib.format.dtype_to_descr(stored), "fortran_order": False,
        "shape": array.shape})
    rows = array.reshape(1, -1) if array.ndim == 0 else array
    step = _rows_per_block(rows, stored.itemsize)
    for first in range(0, len(rows), step):
        handle.write(np.ascontiguousarray(rows[first:first + step], dtype=stored).data)


def read_array(handle: Any, dtype: Any) -> np.ndarray:
    """The ``.npy`` at ``handle``'s start as ``dtype``, read into one reused block and converted;
    raises :class:`EOFError` when the file ends before its array does. Fortran order and object
    arrays go to numpy's own reader (which refuses to unpickle)."""
    version = np.lib.format.read_magic(handle)
    header = {(1, 0): np.lib.format.read_array_header_1_0,
              (2, 0): np.lib.format.read_array_header_2_0}.get(version)
    shape, fortran, stored = header(handle) if header else ((), True, None)
    if fortran or stored is None or stored.hasobject:
        handle.seek(0)
        return np.load(handle, allow_pickle=False).astype(dtype, copy=False)  # type: ignore[no-any-return]
    out = np.empty(shape, dtype=dtype)
    rows = out.reshape(1, -1) if out.ndim == 0 else out
    step = _rows_per_block(rows, stored.itemsize)
    buffer = np.empty(min(len(rows), step) * rows[:1].size, dtype=stored)
    for first in range(0, len(rows), step):
        block = rows[first:first + step]
        data = buffer[:block.size]
        if handle.readinto(data.data.cast("B")) != data.nbytes:
            raise EOFError(f"ends before its {shape} array does")
        block[...] = data.reshape(block.shape)
    return out
