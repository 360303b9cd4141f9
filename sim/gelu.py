"""Golden model of the ``gelu`` unit: GELU(x) = x * Phi(x) with a fixed-point Phi.

Steps (docs/numerics.md, section "gelu"), identical in ``hw/gelu.py``:

1. Input bf16, DAZ. NaN -> 0x7FC0, +Inf -> +Inf, -Inf -> +0.
2. ``a = |x|`` in fixed point with ``frac_bits`` fraction bits, truncated toward zero. If
   ``|x| >= 2**clip_log2`` then ``q = 2**coef_bits`` for x > 0 and ``q = 0`` for x < 0.
3. Otherwise ``Phi(a)`` by a piecewise-linear table over ``[0, 2**clip_log2)``: segment
   ``j`` = the top ``log2(segments)`` bits of ``a``, ``r`` the rest (``frac_bits`` fraction
   bits), ``phi = C[j] + ((D[j] * r) >> frac_bits)`` (floor); ``C``, ``D`` have
   ``coef_bits`` fraction bits. ``q = phi`` for x >= 0, ``q = 2**coef_bits - phi`` for
   x < 0 (Phi(-a) = 1 - Phi(a)).
4. Output ``m_x * q * 2**(e_x - coef_bits)`` (``m_x * 2**e_x`` is the bf16 input: an
   exact 8-bit by ``coef_bits + 1``-bit product), rounded once to bf16 with
   ``bf16.round_fixed`` (RNE, FTZ; an exact zero is +0).

The table is fitted to ``math.erf`` in float64 (minimax offset per segment around the
chord slope), then rounded to nearest; ``gelu_table`` returns it for the RTL.
"""

import functools
import math
from dataclasses import dataclass

import numpy as np

from . import bf16
from .params import check_int

__all__ = ["GeluParams", "PRESETS", "DEFAULT", "gelu", "gelu_slow", "gelu_table", "phi_fixed"]


@dataclass(frozen=True, kw_only=True)
class GeluParams:
    """Parameters of the GELU unit.

    frac_bits : fraction bits of the fixed-point |x| that indexes the table, 4..16.
    clip_log2 : the table covers |x| < 2**clip_log2; beyond it GELU(x) = max(x, 0), 1..3.
    segments : piecewise-linear segments over [0, 2**clip_log2), power of two 1..256.
    coef_bits : fraction bits of Phi (intercepts, slopes, the multiplier q), 8..20.
    """

    frac_bits: int = 10
    clip_log2: int = 2
    segments: int = 32
    coef_bits: int = 16

    def __post_init__(self):
        check_int("frac_bits", self.frac_bits, 4, 16)
        check_int("clip_log2", self.clip_log2, 1, 3)
        check_int("segments", self.segments, 1, 256, pow2=True)
        check_int("coef_bits", self.coef_bits, 8, 20)
        if self.segments > (1 << (self.frac_bits + self.clip_log2)):
            raise ValueError(f"segments must be at most 2**(frac_bits + clip_log2) = "
                             f"{1 << (self.frac_bits + self.clip_log2)}, not {self.segments!r}")

    @property
    def seg_bits(self):
        return self.segments.bit_length() - 1

    @property
    def a_width(self):
        """Unsigned width of the fixed-point |x| below the clip."""
        return self.frac_bits + self.clip_log2

    @property
    def r_width(self):
        """Width of the offset inside a segment."""
        return self.a_width - self.seg_bits


DEFAULT = GeluParams()
PRESETS = {name: DEFAULT for name in ("tiny", "minilm", "bert-base", "bert-large")}


def _phi(u):
    return 0.5 * (1.0 + np.vectorize(math.erf)(np.asarray(u, dtype=np.float64) / math.sqrt(2)))


@functools.lru_cache(maxsize=None)
def gelu_table(params):
    """``(C, D)``: per-segment intercept and slope of Phi, ``coef_bits`` fraction bits."""
    p = params
    Q, F = p.coef_bits, p.frac_bits
    n_r = 1 << p.r_width
    C, D = [], []
    for j in range(p.segments):
        r = np.arange(n_r, dtype=np.int64)
        u = (j * n_r + r) / (1 << F)
        h = n_r / (1 << F)
        slope = (_phi(j * h + h) - _phi(j * h)) / h
        d = int(math.floor(slope * (1 << Q) + 0.5))
        err = _phi(u) * (1 << Q) - ((d * r) >> F)
        c = int(math.floor(0.5 * (err.max() + err.min()) + 0.5))
        C.append(c)
        D.append(d)
    return tuple(C), tuple(D)


def phi_fixed(a, params):
    """Phi(a) with ``coef_bits`` fraction bits for fixed-point ``a`` in ``[0, 2**a_width)``."""
    p = params
    C, D = gelu_table(p)
    a = np.asarray(a, dtype=np.int64)
    j = a >> p.r_width
    r = a & ((1 << p.r_width) - 1)
    c = np.asarray(C, dtype=np.int64)[j]
    d = np.asarray(D, dtype=np.int64)[j]
    return np.minimum(c + ((d * r) >> p.frac_bits), np.int64(1) << p.coef_bits)


def gelu(x, params):
    """GELU of bf16 patterns ``x`` (uint16, any shape) -> bf16 patterns, same shape."""
    p = params
    x = bf16.daz(np.asarray(x, dtype=np.uint16))
    m, e = bf16.to_fixed(x)
    mag = np.abs(m)
    sh = e + p.frac_bits
    big = (mag > 0) & (sh + 8 > p.a_width)                         # |x| >= 2**clip_log2
    a = np.where(sh >= 0, mag << np.clip(sh, 0, 40), mag >> np.clip(-sh, 0, 63))
    a = np.where(big, 0, a)
    phi = phi_fixed(a, p)
    one = np.int64(1) << p.coef_bits
    q = np.where(m < 0, one - phi, phi)
    q = np.where(big, np.where(m < 0, 0, one), q)
    out = bf16.round_fixed(m * q, e - p.coef_bits)
    out = np.where(x == bf16.POS_INF, bf16.POS_INF, out)
    out = np.where(x == bf16.NEG_INF, 0, out)
    out = np.where(bf16.is_nan(x), bf16.NAN, out)
    return out.astype(np.uint16)


def gelu_slow(x, params):
    """Element-by-element Python-int version of ``gelu`` (the same integer algorithm)."""
    p = params
    C, D = gelu_table(p)
    out = []
    for v in np.asarray(x, dtype=np.uint16).ravel().tolist():
        if (v >> 7) & 0xFF == 0:
            v &= 0x8000
        ex, fr, neg = (v >> 7) & 0xFF, v & 0x7F, v >> 15
        if ex == 0xFF:
            out.append(bf16.NAN if fr else (0 if neg else bf16.POS_INF))
            continue
        if ex == 0:
            out.append(0)
            continue
        mag, e = fr | 0x80, ex - 127 - 7
        if mag * 2.0 ** e >= 2 ** p.clip_log2:
            q = 0 if neg else 1 << p.coef_bits
        else:
            sh = e + p.frac_bits
            a = mag >> -sh if sh < 0 else mag << sh
            j, r = a >> p.r_width, a & ((1 << p.r_width) - 1)
            phi = min(C[j] + ((D[j] * r) >> p.frac_bits), 1 << p.coef_bits)
            q = (1 << p.coef_bits) - phi if neg else phi
        out.append(int(bf16.round_fixed(np.array([(-mag if neg else mag) * q]),
                                        np.array([e - p.coef_bits]))[0]))
    return np.array(out, dtype=np.uint16).reshape(np.shape(x))
