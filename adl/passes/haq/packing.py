"""Bit-packing of signed integer codes, so that a layer stored at b bits takes b bits per weight.

Codes are stored in two's complement on `bits` bits, little-endian within the byte stream
(code i occupies bits [i*bits, (i+1)*bits) of the stream); the last byte is zero-padded.
"""

from __future__ import annotations

import numpy as np


def packed_size(count: int, bits: int) -> int:
    """Bytes that `count` codes of `bits` bits take."""
    return (count * bits + 7) // 8


def _check(bits: int) -> None:
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or not 1 <= bits <= 8:
        raise ValueError(f"bits must be an integer in [1, 8], got {bits!r}")


def pack_codes(codes: np.ndarray, bits: int) -> np.ndarray:
    """uint8 array of `packed_size(codes.size, bits)` bytes holding the signed `codes` (any shape)."""
    _check(bits)
    flat = np.asarray(codes).reshape(-1).astype(np.int64)
    low, high = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    if flat.size and (flat.min() < low or flat.max() > high):
        raise ValueError(
            f"codes outside [{low}, {high}] cannot be stored in {bits} bits (got [{flat.min()}, {flat.max()}])"
        )
    unsigned = (flat & (2**bits - 1)).astype(np.uint8)
    stream = (unsigned[:, None] >> np.arange(bits, dtype=np.uint8)) & 1
    return np.packbits(stream.reshape(-1), bitorder="little")


def unpack_codes(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    """The `count` signed int8 codes stored by `pack_codes`."""
    _check(bits)
    packed = np.asarray(packed, dtype=np.uint8).reshape(-1)
    if packed.size < packed_size(count, bits):
        raise ValueError(
            f"{packed.size} bytes cannot hold {count} codes of {bits} bits ({packed_size(count, bits)} needed)"
        )
    stream = np.unpackbits(packed, bitorder="little")[: count * bits].reshape(count, bits).astype(np.int16)
    values = (stream << np.arange(bits, dtype=np.int16)).sum(axis=1)
    values = np.where(values >= 2 ** (bits - 1), values - 2**bits, values)
    return values.astype(np.int8)
