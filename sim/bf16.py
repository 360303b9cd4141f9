"""bfloat16 golden numerics: bit patterns as ``np.uint16``, every rounding named.

Rules (stated once in docs/numerics.md, section "bf16"):

- Inputs: subnormals are read as zero of the same sign (DAZ).
- Results: rounded to 8 significant bits, round-to-nearest-even (RNE) with an unbounded
  exponent; then magnitudes below 2**-126 flush to zero of the same sign (FTZ) and magnitudes
  above the largest finite value become infinity of the same sign.
- An exact zero result is +0. Every NaN result is the canonical quiet NaN ``0x7FC0``.
"""

import numpy as np

__all__ = [
    "NAN", "POS_INF", "NEG_INF", "MAX_FINITE", "MIN_NORMAL", "EXP_BIAS", "MANT_BITS",
    "sign", "exponent", "fraction", "magnitude", "is_nan", "is_inf", "is_finite",
    "is_subnormal", "daz", "to_float32", "from_float32", "round_fixed", "to_fixed",
    "bit_length",
]

NAN = 0x7FC0
POS_INF = 0x7F80
NEG_INF = 0xFF80
MAX_FINITE = 0x7F7F
MIN_NORMAL = 0x0080
EXP_BIAS = 127
MANT_BITS = 7  # stored fraction bits; 8 significant bits with the hidden one


def _u16(x):
    return np.asarray(x, dtype=np.uint16)


def sign(x):
    """Sign bit (0 or 1) of each bf16 pattern."""
    return (_u16(x) >> 15).astype(np.uint16)


def exponent(x):
    """Biased exponent field (0..255)."""
    return ((_u16(x) >> 7) & 0xFF).astype(np.uint16)


def fraction(x):
    """Stored fraction field (0..127)."""
    return (_u16(x) & 0x7F).astype(np.uint16)


def magnitude(x):
    """Magnitude bits ``x & 0x7FFF``: ordered like |x| for non-NaN patterns, NaN above Inf."""
    return (_u16(x) & 0x7FFF).astype(np.uint16)


def is_nan(x):
    return magnitude(x) > POS_INF


def is_inf(x):
    return magnitude(x) == POS_INF


def is_finite(x):
    return exponent(x) != 0xFF


def is_subnormal(x):
    return (exponent(x) == 0) & (fraction(x) != 0)


def daz(x):
    """Read subnormals as zero of the same sign (the input rule of every unit)."""
    x = _u16(x)
    return np.where(exponent(x) == 0, x & 0x8000, x).astype(np.uint16)


def to_float32(x):
    """Exact float32 value of each bf16 pattern (subnormals kept; apply ``daz`` first)."""
    return (_u16(x).astype(np.uint32) << 16).view(np.float32)


def bit_length(m):
    """Position of the leading one plus one, elementwise, for non-negative int64 arrays."""
    m = np.asarray(m, dtype=np.int64)
    # frexp of the float64 value; above 2**53 the conversion may round up to the next power
    # of two, which the comparison with 2**(e-1) corrects
    e = np.minimum(np.frexp(m.astype(np.float64))[1].astype(np.int64), 63)
    low = np.left_shift(np.int64(1), np.clip(e - 1, 0, 62))
    return np.where(m <= 0, 0, np.where(m < low, e - 1, e))


def round_fixed(mant, exp):
    """Round the exact value ``mant * 2**exp`` to bf16 (RNE, FTZ, overflow to Inf).

    ``mant`` is a signed int64 array (|mant| < 2**62), ``exp`` an integer or int array of the
    same shape. This is the one conversion from wide fixed point to bf16 used by every unit.
    """
    mant = np.asarray(mant, dtype=np.int64)
    exp = np.broadcast_to(np.asarray(exp, dtype=np.int64), mant.shape)
    neg = mant < 0
    m = np.abs(mant)
    p = bit_length(m) - 1                      # leading-one position
    shift = np.maximum(p - MANT_BITS, 0)
    q = m >> shift
    rem = m & ((np.int64(1) << shift) - 1)
    half = np.where(shift > 0, np.int64(1) << np.maximum(shift - 1, 0), 0)
    up = (shift > 0) & ((rem > half) | ((rem == half) & ((q & 1) == 1)))
    q = q + up
    carry = q >> (MANT_BITS + 1)               # rounding overflowed to 2**8
    q = q >> carry
    q = np.where(p < MANT_BITS, m << np.maximum(MANT_BITS - p, 0), q)
    e = exp + p + carry + EXP_BIAS             # biased exponent of the result
    frac = q & 0x7F
    out = (e << 7) | frac
    out = np.where(e >= 0xFF, POS_INF, out)
    out = np.where(e <= 0, 0, out)
    out = np.where(m == 0, 0, out)
    out = np.where(neg & (out != 0), out | 0x8000, out)
    out = np.where(neg & (m != 0) & (e <= 0), 0x8000, out)
    return out.astype(np.uint16)


def to_fixed(x):
    """Split bf16 patterns into ``(mant, exp)`` with value ``mant * 2**exp`` (after DAZ).

    ``mant`` is signed int64 with |mant| in [128, 255] (0 for zeros); non-finite inputs give
    mant 0 and must be handled by the caller (see ``is_finite``).
    """
    x = daz(x)
    e = exponent(x).astype(np.int64)
    m = np.where(e == 0, 0, fraction(x).astype(np.int64) | 0x80)
    m = np.where(is_finite(x), m, 0)
    m = np.where(sign(x) == 1, -m, m)
    return m, e - EXP_BIAS - MANT_BITS


def from_float32(x):
    """Round float32 values to bf16 by the same rule as ``round_fixed`` (NaN -> 0x7FC0)."""
    x = np.asarray(x, dtype=np.float32)
    bits = x.view(np.uint32)
    e = ((bits >> 23) & 0xFF).astype(np.int64)
    f = (bits & 0x7FFFFF).astype(np.int64)
    m = np.where(e == 0, f, f | (1 << 23))
    m = np.where((bits >> 31) == 1, -m, m)
    out = round_fixed(m, np.maximum(e, 1) - 127 - 23)
    out = np.where(np.isinf(x), np.where(x > 0, POS_INF, NEG_INF), out)
    out = np.where(np.isnan(x), NAN, out)
    out = np.where((x == 0) & np.signbit(x), 0x8000, out)   # -0.0 stays -0
    return out.astype(np.uint16)
