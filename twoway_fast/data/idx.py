"""Reader for the IDX format of the MNIST files (gzipped or not), with the checks a corrupt or truncated
download needs: magic number, declared sizes against the bytes present."""
from __future__ import annotations

import gzip
import math
import struct
from pathlib import Path

import numpy as np

# The third byte of the magic number gives the element type (http://yann.lecun.com/exdb/mnist/).
IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | Path) -> np.ndarray:
    """The array stored in an IDX file (`.gz` is decompressed). Raises ValueError naming the file when
    the magic number, the header or the data length is wrong."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as err:  # gzip raises these on a truncated or non-gzip file
        raise ValueError(f"{path}: cannot read IDX data: {err}") from err
    if len(raw) < 4:
        raise ValueError(f"{path}: truncated IDX file ({len(raw)} bytes, the magic number alone needs 4)")
    zero0, zero1, code, ndim = raw[:4]
    if zero0 or zero1 or code not in IDX_DTYPES or ndim == 0:
        raise ValueError(f"{path}: not an IDX file (magic number {raw[:4].hex()}; expected 0000 then a type "
                         f"code in {[hex(c) for c in IDX_DTYPES]} and a non-zero rank)")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: truncated IDX header ({len(raw)} bytes, {header} needed for rank {ndim})")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = np.dtype(IDX_DTYPES[code])
    expected = header + math.prod(shape) * dtype.itemsize  # Python ints: a corrupt header cannot overflow
    if len(raw) != expected:
        what = "truncated" if len(raw) < expected else "has trailing bytes"
        raise ValueError(f"{path}: {what}: shape {shape} of {dtype} needs {expected} bytes, the file has {len(raw)}")
    return np.frombuffer(raw, dtype, offset=header).reshape(shape)


def write_idx(path: str | Path, array: np.ndarray) -> None:
    """Writes `array` in IDX format (gzipped when the name ends in .gz): for tests and for users who
    want to feed their own images to the MNIST loader."""
    path = Path(path)
    codes = {np.dtype(v).str: k for k, v in IDX_DTYPES.items()}
    dtype = array.dtype.newbyteorder(">")
    if dtype.str not in codes:
        raise ValueError(f"IDX cannot store dtype {array.dtype}; it stores {sorted(codes)}")
    data = bytes([0, 0, codes[dtype.str], array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    data += np.ascontiguousarray(array, dtype).tobytes()
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wb") as f:
        f.write(data)
