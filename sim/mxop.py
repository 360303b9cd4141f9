"""MX-OP (OPAL microscaling with outliers) golden encode/decode.

A block of ``block`` bf16 elements becomes:

- ``outliers`` elements with the largest magnitude, kept exactly in bf16 with their indices
  (ascending index order); ties between equal magnitudes go to the lower index;
- the other elements as ``bits``-bit signed integers ``q`` in ``[-(2**(bits-1) - 1),
  2**(bits-1) - 1]`` sharing one power-of-two scale ``2**scale_exp(E, bits)``, where ``E`` is
  the biased bf16 exponent of the largest-magnitude inlier;
- ``q = 0`` at outlier positions, so a dot product is ``sum(q*w) * 2**e + sum(outlier*w)``.

Every rule is stated once in docs/numerics.md, section "MX-OP"; ``hw/mxq.py`` implements the
same operations. ``outliers = 0, bits = 8`` is plain MX-INT8.
"""

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from . import bf16

__all__ = ["MXOPFormat", "MXOPBlocks", "scale_exp", "select_outliers", "quantize_inliers",
           "encode", "decode", "EXP_NAN"]

EXP_NAN = 0xFF  # shared exponent of a block whose largest inlier is Inf or NaN


@dataclass(frozen=True, kw_only=True)
class MXOPFormat:
    """Parameters of an MX-OP block: ``block`` elements, ``outliers`` kept in bf16, ``bits``."""

    block: int = 128
    outliers: int = 4
    bits: int = 5

    def __post_init__(self):
        if not isinstance(self.block, int) or not 2 <= self.block <= 1024:
            raise ValueError(f"block must be an integer in 2..1024, not {self.block!r}")
        if not isinstance(self.outliers, int) or not 0 <= self.outliers < min(self.block, 17):
            raise ValueError(f"outliers must be an integer in 0..{min(self.block - 1, 16)}, "
                             f"not {self.outliers!r}")
        if not isinstance(self.bits, int) or not 2 <= self.bits <= 8:
            raise ValueError(f"bits must be an integer in 2..8, not {self.bits!r}")

    @property
    def qmax(self):
        """Largest inlier magnitude, ``2**(bits-1) - 1`` (symmetric range, saturating)."""
        return (1 << (self.bits - 1)) - 1

    def for_length(self, k):
        """The format for a reduction of length ``k``: block ``min(block, k)``."""
        b = min(self.block, k)
        return MXOPFormat(block=b, outliers=min(self.outliers, b - 1), bits=self.bits)


class MXOPBlocks(NamedTuple):
    """Encoded blocks; leading dims ``(..., nblocks)`` of the input's ``(..., K)``."""

    exp: np.ndarray      # uint16 (..., nblocks): biased shared exponent E (0: all zero, 255: NaN)
    q: np.ndarray        # int8   (..., nblocks, block): inliers, 0 at outlier positions
    out_idx: np.ndarray  # int16  (..., nblocks, outliers): ascending indices within the block
    out_val: np.ndarray  # uint16 (..., nblocks, outliers): bf16 patterns (after DAZ)


def scale_exp(exp, bits):
    """Power of two of the inlier scale: ``E - 127 - (bits - 2)``."""
    return np.asarray(exp, dtype=np.int64) - bf16.EXP_BIAS - (bits - 2)


def _blocks(x, fmt):
    x = np.asarray(x, dtype=np.uint16)
    if x.ndim == 0 or x.shape[-1] % fmt.block:
        raise ValueError(f"last dimension must be a multiple of block={fmt.block}, "
                         f"not shape {x.shape}")
    return bf16.daz(x).reshape(*x.shape[:-1], x.shape[-1] // fmt.block, fmt.block)


def select_outliers(xb, fmt):
    """Return ``(out_idx, inlier_max_key)`` for DAZ'd blocks ``xb`` of shape (..., block).

    The key of an element is its magnitude bits (``bf16.magnitude``): larger key, larger |x|;
    NaN above Inf. The first ``outliers`` entries of a stable descending sort are the outliers.
    """
    key = bf16.magnitude(xb).astype(np.int32)
    order = np.argsort(-key, axis=-1, kind="stable")
    out_idx = np.sort(order[..., :fmt.outliers], axis=-1).astype(np.int16)
    max_key = np.take_along_axis(key, order[..., fmt.outliers:fmt.outliers + 1], axis=-1)[..., 0]
    return out_idx, max_key


def shared_exponent(max_key):
    """Biased shared exponent from the largest inlier key: 255 when it is Inf or NaN."""
    max_key = np.asarray(max_key)
    return np.where(max_key >= bf16.POS_INF, EXP_NAN, max_key >> 7).astype(np.uint16)


def quantize_inliers(xb, exp, bits):
    """Quantize DAZ'd bf16 ``xb`` (..., block) against shared exponents ``exp`` (...).

    ``q = sat(RNE(M / 2**sh))`` with ``M = 1.f * 2**7`` and ``sh = E - Ex + 9 - bits`` (the
    shift is at least 1 since ``Ex <= E``; shifts above 10 act as 10). Zero elements, and all
    elements of a block with ``E`` of 0 or 255, give 0. Saturation to ``qmax`` only happens
    when an element with ``Ex == E`` rounds up to ``2**(bits-1)``.
    """
    qmax = (1 << (bits - 1)) - 1
    key = bf16.magnitude(xb).astype(np.int64)
    ex = key >> 7
    m = (key & 0x7F) | 0x80
    e = np.asarray(exp, dtype=np.int64)[..., None]
    sh = np.clip(e - ex + 9 - bits, 1, 10)
    shifted = m >> sh
    rnd = (m >> (sh - 1)) & 1
    sticky = (m & ((np.int64(1) << (sh - 1)) - 1)) != 0
    qm = shifted + (rnd & (sticky | (shifted & 1)))
    qm = np.minimum(qm, qmax)
    qm = np.where((key == 0) | (e == 0) | (e == EXP_NAN), 0, qm)
    return np.where(bf16.sign(xb) == 1, -qm, qm).astype(np.int8)


def encode(x, fmt):
    """Encode bf16 patterns ``x`` (..., K), K a multiple of ``fmt.block``, into MX-OP blocks."""
    xb = _blocks(x, fmt)
    out_idx, max_key = select_outliers(xb, fmt)
    exp = shared_exponent(max_key)
    is_out = np.zeros(xb.shape, dtype=bool)
    np.put_along_axis(is_out, out_idx.astype(np.int64), True, axis=-1)
    q = quantize_inliers(np.where(is_out, 0, xb).astype(np.uint16), exp, fmt.bits)
    out_val = np.take_along_axis(xb, out_idx.astype(np.int64), axis=-1)
    return MXOPBlocks(exp, q, out_idx, out_val.astype(np.uint16))


def decode(blocks, fmt):
    """Exact float64 values of encoded blocks, shape (..., K); NaN inliers where E = 255."""
    exp, q, out_idx, out_val = blocks
    val = q.astype(np.float64) * np.exp2(scale_exp(exp, fmt.bits).astype(np.float64))[..., None]
    val = np.where((np.asarray(exp) == EXP_NAN)[..., None], np.nan, val)
    if fmt.outliers:
        np.put_along_axis(val, out_idx.astype(np.int64),
                          bf16.to_float32(out_val).astype(np.float64), axis=-1)
    return val.reshape(*val.shape[:-2], -1)
