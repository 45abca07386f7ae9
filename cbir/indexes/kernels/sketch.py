"""1-bit sign sketches as the bucket-ordered shortlist code: Hamming distance by popcount (issue 20, item 2).

A member's sketch is the signs of its centred PCA coordinates on the ``s`` scoring axes, packed into ⌈s/64⌉ uint64
words (bit ``j % 64`` of word ``j // 64`` is axis j; 128 axes: 16 bytes against the uint8 code's 128). In the
codebook's units (:class:`cbir.indexes.pca.Codebook`) the centre 0 is at ``zero = -low / step``, so a member's bit is
``code > zero`` and a query's ``units > zero``. The Hamming distance of two sketches estimates the angle between the
centred vectors (SimHash on the principal axes); it ranks the shortlist in place of the uint8 codes' squared L2.

:func:`block_score` and :func:`query_code` are numba overloads that pick the code's scoring by its dtype at compile
time: uint8 codes (squared L2 against float32 code units, :func:`code_distance`), uint64 sketches (popcount of the
XOR against the query's sketch). The block kernels (:mod:`.blocks`, :mod:`.single`) call them, so one kernel source
serves both codes.
"""

from __future__ import annotations

import numpy as np
from numba import types
from numba.extending import overload

from cbir.indexes.kernels.common import _jit

_WORD = 64
_M1 = np.uint64(0x5555555555555555)
_M2 = np.uint64(0x3333333333333333)
_M4 = np.uint64(0x0F0F0F0F0F0F0F0F)
_H01 = np.uint64(0x0101010101010101)
_ONE, _TWO, _FOUR, _TOP = np.uint64(1), np.uint64(2), np.uint64(4), np.uint64(56)


def sketch_words(score_dim: int) -> int:
    """uint64 words of a sketch of ``score_dim`` axes."""
    return max(1, -(-int(score_dim) // _WORD))


def sign_sketches(units: np.ndarray, zero: np.ndarray) -> np.ndarray:
    """Sketches (m, ⌈s/64⌉) uint64 of rows in code units (m, s) (uint8 codes or float32 units): bit j set where
    ``units[:, j] > zero[j]`` (the centred coordinate is positive)."""
    m, s = units.shape
    bits = np.zeros((m, sketch_words(s) * _WORD), dtype=np.uint8)
    bits[:, :s] = np.asarray(units, dtype=np.float32) > zero
    # little-endian bit order inside each byte, bytes little-endian inside each word: bit j of word j // 64
    packed = np.packbits(bits, axis=1, bitorder="little")
    return np.ascontiguousarray(packed.view("<u8").astype(np.uint64))


@_jit(fastmath={"reassoc"})
def code_distance(query: np.ndarray, code: np.ndarray) -> np.float32:
    """Squared L2 between a query in code units (s,) float32 and one uint8 code (s,)."""
    total = np.float32(0.0)
    for j in range(query.shape[0]):
        diff = np.float32(code[j]) - query[j]
        total += diff * diff
    return total


@_jit()
def _popcount(x: np.uint64) -> np.uint64:
    """Set bits of ``x`` (the SWAR count; LLVM turns it into one popcnt where the CPU has it)."""
    x = x - ((x >> _ONE) & _M1)
    x = (x & _M2) + ((x >> _TWO) & _M2)
    x = (x + (x >> _FOUR)) & _M4
    return (x * _H01) >> _TOP


@_jit()
def hamming(query: np.ndarray, code: np.ndarray) -> np.float32:
    """Hamming distance (as float32, the heap's key) between two sketches (w,) uint64."""
    total = np.uint64(0)
    for j in range(query.shape[0]):
        total += _popcount(query[j] ^ code[j])
    return np.float32(total)


def block_score(query: np.ndarray, code: np.ndarray) -> np.float32:
    """A member's shortlist score (smaller is nearer): :func:`code_distance` or :func:`hamming` by ``code``'s dtype."""
    raise NotImplementedError("numba only")


@overload(block_score, jit_options={"cache": True})
def _block_score(query, code):  # type: ignore[no-untyped-def]  # numba compares the signatures: no annotations
    if code.dtype == types.uint64:
        return lambda query, code: hamming(query, code)
    return lambda query, code: code_distance(query, code)


@_jit()
def _pack_one(units: np.ndarray, zero: np.ndarray, words: int) -> np.ndarray:
    """numba :func:`sign_sketches` of one row (s,) float32: (1, words) uint64."""
    sketch = np.zeros((1, words), dtype=np.uint64)
    for j in range(units.shape[0]):
        if units[j] > zero[j]:
            sketch[0, j // _WORD] |= np.uint64(1) << np.uint64(j % _WORD)
    return sketch


def query_code(units: np.ndarray, zero: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """A query's code (1, ·) as ``codes`` (bucket-ordered, (g·n, ·)) are scored: its units (1, s) float32 for uint8
    codes, its sketch (1, w) uint64 for sketches."""
    raise NotImplementedError("numba only")


@overload(query_code, jit_options={"cache": True})
def _query_code(units, zero, codes):  # type: ignore[no-untyped-def]  # no annotations (see _block_score)
    if codes.dtype == types.uint64:
        return lambda units, zero, codes: _pack_one(units[0], zero, codes.shape[1])
    return lambda units, zero, codes: units
