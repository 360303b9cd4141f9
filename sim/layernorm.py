"""Golden model of the ``layernorm`` unit: ``LN(x + r) * gamma + beta`` over rows of ``dim``.

Steps (docs/numerics.md, section "layernorm"), identical in ``hw/layernorm.py``:

1. ``x``, ``r``, ``gamma``, ``beta``: bf16, DAZ. A NaN or Inf in ``x`` or ``r`` makes the whole
   row 0x7FC0; a NaN or Inf in ``gamma[i]`` or ``beta[i]`` makes output ``i`` 0x7FC0.
2. ``x`` and ``r`` to signed fixed point with ``frac_bits`` fraction bits (magnitude
   truncated toward zero, saturated to ``2**(int_bits + frac_bits) - 1``);
   ``h = x + r`` saturated to the same bound.
3. Exact integers: ``S1 = sum(h)``, ``S2 = sum(h * h)``, ``V = dim * S2 - S1**2``
   (``dim**2`` times the variance), ``W = V + E`` with ``E = round(dim**2 * eps *
   2**(2 * frac_bits))`` (round half up, from the exact value of the float ``eps``).
4. ``1/sqrt(W)``: ``k = (bitlen(W) - 1) >> 1``, ``a = W * 2**(rsqrt_bits - 2k)`` (floor)
   in ``[1, 4)`` with ``rsqrt_bits`` fraction bits; initial guess ``y`` from a table of
   ``2**guess_bits`` entries indexed by the top ``guess_bits`` bits of ``a`` (the entry
   is the mean of ``1/sqrt`` at the bin's ends, rounded to nearest); then ``newton_steps``
   times ``y2 = (y*y) >> R; t = (a*y2) >> R; y = (y * (3 * 2**R - t)) >> (R + 1)`` (floors).
   ``1/sqrt(W) ~ y * 2**(-k - R)``. ``W = 0`` gives 0.
5. ``c = dim * h - S1`` (exact, ``dim`` times ``h - mean``); ``t = (c * y) >> (k + R -
   norm_frac)`` (floor): the normalised value with ``norm_frac`` fraction bits.
6. ``t * gamma`` (exact) and ``beta`` are each aligned to ``out_frac`` fraction bits (floor
   on right shifts) and saturated to ``2**(out_int + out_frac) - 1`` in magnitude, added,
   and the sum rounded once to bf16 (``bf16.round_fixed``: RNE, FTZ, exact zero -> +0).

The end of the module is the cycle model of the RTL (``rsqrt_cycles``, ``row_cycles``,
``latency`` and the pipeline depths ``hw/layernorm.py`` checks itself against).
"""

import dataclasses
import functools
import math
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from . import bf16
from .fixed import fix_trunc
from .params import check_float, check_int

__all__ = ["LayerNormParams", "PRESETS", "DEFAULT", "layernorm", "layernorm_slow",
           "rsqrt_table", "eps_const", "rsqrt_width", "front_stages", "back_stages",
           "rsqrt_cycles", "row_cycles", "latency"]


@dataclass(frozen=True, kw_only=True)
class LayerNormParams:
    """Parameters of the residual-add + layernorm unit.

    dim : row length (hidden size), 2..1024.
    int_bits : integer bits of fixed-point x, r and h = x + r (saturating), 1..12.
    frac_bits : fraction bits of x, r and h, 4..14.
    eps : variance epsilon (float >= 0; BERT uses 1e-12).
    rsqrt_bits : fraction bits of the reciprocal square root and its Newton steps, 8..24.
    guess_bits : index bits of the initial-guess table over [0, 4), 2..8.
    newton_steps : Newton-Raphson steps, 0..4.
    norm_frac : fraction bits of the normalised value (x - mean) / std, 4..rsqrt_bits.
    out_frac : fraction bits of gamma * t + beta before the bf16 rounding, 6..24.
    out_int : integer bits of gamma * t + beta (saturating), 4..20.
    """

    dim: int = 384
    int_bits: int = 9
    frac_bits: int = 12
    eps: float = 1e-12
    rsqrt_bits: int = 20
    guess_bits: int = 5
    newton_steps: int = 2
    norm_frac: int = 12
    out_frac: int = 16
    out_int: int = 15

    def __post_init__(self):
        check_int("dim", self.dim, 2, 1024)
        check_int("int_bits", self.int_bits, 1, 12)
        check_int("frac_bits", self.frac_bits, 4, 14)
        check_float("eps", self.eps, 0, 1, open_hi=True)
        check_int("rsqrt_bits", self.rsqrt_bits, 8, 24)
        check_int("guess_bits", self.guess_bits, 2, 8)
        check_int("newton_steps", self.newton_steps, 0, 4)
        check_int("norm_frac", self.norm_frac, 4, self.rsqrt_bits)
        check_int("out_frac", self.out_frac, 6, 24)
        check_int("out_int", self.out_int, 4, 20)
        if self.s2_width > 62 or self.c_width + self.y_width > 63:
            raise ValueError(f"int_bits + frac_bits = {self.int_bits + self.frac_bits} is too "
                             f"wide for dim {self.dim} and rsqrt_bits {self.rsqrt_bits}: "
                             f"sum(h*h) needs {self.s2_width} bits (at most 62) and "
                             f"(dim*h - sum(h)) * rsqrt {self.c_width + self.y_width} (at "
                             f"most 63)")

    @property
    def h_width(self):
        """Signed width of h = x + r."""
        return self.int_bits + self.frac_bits + 1

    @property
    def dim_bits(self):
        return self.dim.bit_length()

    @property
    def s1_width(self):
        return self.h_width + self.dim_bits

    @property
    def s2_width(self):
        """Unsigned width of sum(h*h)."""
        return 2 * (self.h_width - 1) + self.dim_bits

    @property
    def w_width(self):
        """Unsigned width of W = dim * S2 - S1**2 + E (may exceed 64: the RTL register and
        the model's Python ints have no limit)."""
        return self.s2_width + self.dim_bits + 1

    @property
    def c_width(self):
        return self.s1_width + 1

    @property
    def y_width(self):
        """Unsigned width of the reciprocal square root mantissa (value <= 2**rsqrt_bits)."""
        return self.rsqrt_bits + 1

    @property
    def t_width(self):
        """Signed width of the normalised value (|t| <= sqrt(dim) * 2**norm_frac, with margin)."""
        return self.norm_frac + (self.dim_bits + 1) // 2 + 3

    @property
    def o_width(self):
        return self.out_int + self.out_frac + 1


DEFAULT = LayerNormParams()
PRESETS = {
    "tiny": dataclasses.replace(DEFAULT, dim=64),
    "minilm": DEFAULT,
    "bert-base": dataclasses.replace(DEFAULT, dim=768),
    "bert-large": dataclasses.replace(DEFAULT, dim=1024),
}


def eps_const(params):
    """``E = round(dim**2 * eps * 2**(2 * frac_bits))``, round half up, exact from the float."""
    p = params
    v = Fraction(p.eps) * p.dim * p.dim * (1 << (2 * p.frac_bits))
    return int(math.floor(v + Fraction(1, 2)))


@functools.lru_cache(maxsize=None)
def rsqrt_table(guess_bits, rsqrt_bits):
    """Initial guesses of ``1/sqrt(a)`` for ``a`` in [0, 4), ``rsqrt_bits`` fraction bits.

    Entry ``i`` covers ``[i, i + 1) * 4 / 2**guess_bits``; entries below ``a = 1`` are unused
    (``a >= 1`` always) and hold the entry for ``a = 1``.
    """
    n = 1 << guess_bits
    out = []
    for i in range(n):
        lo, hi = max(4 * i / n, 1.0), max(4 * (i + 1) / n, 1.0)
        v = 0.5 * (1 / math.sqrt(lo) + 1 / math.sqrt(hi))
        out.append(int(math.floor(v * (1 << rsqrt_bits) + 0.5)))
    return tuple(out)


def _rsqrt(W, p):
    """``(y, k)``: ``1/sqrt(W) ~ y * 2**(-k - rsqrt_bits)`` for exact integers ``W`` (any
    size: Python ints or an integer array), per the rule in the module docstring."""
    R = p.rsqrt_bits
    Wl = [int(w) for w in np.ravel(np.asarray(W, dtype=object))]
    shape = np.shape(W)
    k = [max(w.bit_length() - 1, 0) >> 1 for w in Wl]
    a = [w >> (2 * kk - R) if 2 * kk >= R else w << (R - 2 * kk) for w, kk in zip(Wl, k)]
    a = np.array(a, dtype=np.int64).reshape(shape)
    k = np.array(k, dtype=np.int64).reshape(shape)
    table = np.asarray(rsqrt_table(p.guess_bits, R), dtype=np.int64)
    y = table[np.clip(a >> (R + 2 - p.guess_bits), 0, len(table) - 1)]
    for _ in range(p.newton_steps):
        y2 = (y * y) >> R
        t = (a * y2) >> R
        y = (y * ((3 << R) - t)) >> (R + 1)
    zero = np.array([w == 0 for w in Wl], dtype=bool).reshape(shape)
    return np.where(zero, 0, y), k


def _align_sat(v, e, frac, limit):
    """Signed exact ``v * 2**e`` aligned to ``frac`` fraction bits (floor), saturated."""
    v = np.asarray(v, dtype=np.int64)
    sh = np.asarray(e, dtype=np.int64) + frac
    mag_bits = bf16.bit_length(np.abs(v))
    over = (v != 0) & (sh >= 0) & (mag_bits + sh > int(limit).bit_length())
    out = np.where(sh >= 0, v << np.clip(sh, 0, 62), v >> np.clip(-sh, 0, 63))
    out = np.clip(np.where(over, np.where(v < 0, -limit, limit), out), -limit, limit)
    return out


def layernorm(x, r, gamma, beta, params):
    """``LN(x + r)`` over the last axis (length ``params.dim``) -> bf16 (uint16).

    ``x``, ``r``: bf16 patterns (..., dim); ``gamma``, ``beta``: bf16 patterns (dim,).
    """
    p = params
    x = bf16.daz(np.asarray(x, dtype=np.uint16))
    r = bf16.daz(np.asarray(r, dtype=np.uint16))
    if x.shape != r.shape or x.shape[-1] != p.dim:
        raise ValueError(f"x and r must have the same shape (..., dim={p.dim}), "
                         f"not {x.shape} and {r.shape}")
    gamma = bf16.daz(np.broadcast_to(np.asarray(gamma, dtype=np.uint16), (p.dim,)))
    beta = bf16.daz(np.broadcast_to(np.asarray(beta, dtype=np.uint16), (p.dim,)))
    lim = (np.int64(1) << (p.int_bits + p.frac_bits)) - 1
    fin = bf16.is_finite(x) & bf16.is_finite(r)
    xf = fix_trunc(np.where(fin, x, 0), p.int_bits, p.frac_bits)
    rf = fix_trunc(np.where(fin, r, 0), p.int_bits, p.frac_bits)
    h = np.clip(xf + rf, -lim, lim)
    s1 = h.sum(axis=-1, keepdims=True)
    s2 = (h * h).sum(axis=-1, keepdims=True)
    E = eps_const(p)
    W = np.array([p.dim * int(a) - int(b) * int(b) + E                # exact, Python ints
                  for a, b in zip(s2.ravel(), s1.ravel())], dtype=object).reshape(s1.shape)
    y, k = _rsqrt(W, p)
    c = p.dim * h - s1
    t = (c * y) >> (k + p.rsqrt_bits - p.norm_frac)
    gm, ge = bf16.to_fixed(gamma)
    bm, be = bf16.to_fixed(beta)
    olim = (np.int64(1) << (p.out_int + p.out_frac)) - 1
    pa = _align_sat(t * gm, ge - p.norm_frac, p.out_frac, olim)
    ba = _align_sat(np.broadcast_to(bm, t.shape), be, p.out_frac, olim)
    out = bf16.round_fixed(pa + ba, -p.out_frac)
    bad = ~np.all(fin, axis=-1, keepdims=True) | ~bf16.is_finite(gamma) | ~bf16.is_finite(beta)
    return np.where(bad, bf16.NAN, out).astype(np.uint16)


def layernorm_slow(x, r, gamma, beta, params):
    """Row-by-row Python-int version of ``layernorm`` (same integer algorithm, no NumPy ints)."""
    p = params
    R = p.rsqrt_bits
    x = np.asarray(x, dtype=np.uint16)
    out = np.zeros(x.shape, dtype=np.uint16)
    lim = (1 << (p.int_bits + p.frac_bits)) - 1
    olim = (1 << (p.out_int + p.out_frac)) - 1
    table = rsqrt_table(p.guess_bits, R)

    def fix(v):
        m, e = (int(t[0]) for t in bf16.to_fixed(np.array([v], dtype=np.uint16)))
        return m, e

    def tofix(v):
        m, e = fix(v)
        mag = abs(m)
        if mag and mag * 2.0 ** e >= 2 ** p.int_bits:
            val = lim
        else:
            sh = e + p.frac_bits
            val = min(mag << sh if sh >= 0 else mag >> -sh, lim)
        return -val if m < 0 else val

    def align(v, e, frac):
        sh = e + frac
        val = v << sh if sh >= 0 else v >> -sh
        return max(-olim, min(olim, val))

    for idx in np.ndindex(x.shape[:-1]):
        xs = [int(v) for v in bf16.daz(x[idx])]
        rs = [int(v) for v in bf16.daz(np.asarray(r)[idx])]
        if any((v >> 7) & 0xFF == 0xFF for v in xs + rs):
            out[idx] = bf16.NAN
            continue
        h = [max(-lim, min(lim, tofix(a) + tofix(b))) for a, b in zip(xs, rs)]
        s1, s2 = sum(h), sum(v * v for v in h)
        W = p.dim * s2 - s1 * s1 + eps_const(p)
        if W == 0:
            y = k = 0
        else:
            k = (W.bit_length() - 1) // 2
            a = W >> (2 * k - R) if 2 * k >= R else W << (R - 2 * k)
            y = table[a >> (R + 2 - p.guess_bits)]
            for _ in range(p.newton_steps):
                y = (y * ((3 << R) - ((a * ((y * y) >> R)) >> R))) >> (R + 1)
        for i, hv in enumerate(h):
            g, b = int(bf16.daz(np.uint16(gamma[i]))), int(bf16.daz(np.uint16(beta[i])))
            if (g >> 7) & 0xFF == 0xFF or (b >> 7) & 0xFF == 0xFF:
                out[idx + (i,)] = bf16.NAN
                continue
            t = ((p.dim * hv - s1) * y) >> (k + R - p.norm_frac)
            gm, ge = fix(g)
            bm, be = fix(b)
            acc = align(t * gm, ge - p.norm_frac, p.out_frac) + align(bm, be, p.out_frac)
            out[idx + (i,)] = bf16.round_fixed(np.array([acc]), np.array([-p.out_frac]))[0]
    return out


# ------------------------------------------------------------------------------------------
# Cycle model of the RTL (hw/layernorm.py asserts its pipeline depths against it)
# ------------------------------------------------------------------------------------------

def _mul_stages(a_bits, a_signed, b_bits, b_signed):
    """Stages of ``hw.numerics.multiply``: 17-bit limbs (a signed operand's top limb takes one
    bit more), one stage of limb products, one per level of the adder tree."""
    n = max(1, -(-(a_bits - a_signed) // 17)) * max(1, -(-(b_bits - b_signed) // 17))
    return 1 + (n - 1).bit_length()


def rsqrt_width(params):
    """Operand width of the reciprocal square root's multiplier: ``|S1|`` and the Newton
    operands (``a``, ``y`` and ``3 * 2**R - t`` are at most ``R + 2`` bits)."""
    return max(params.s1_width - 1, params.rsqrt_bits + 2)


def front_stages(params):
    """Cycles from accepting an element on ``i`` to adding it into the row sums: fixed point,
    signs, ``x + r``, saturation, ``dim * h``, ``dim * h * h``."""
    p = params
    return (4 + _mul_stages(p.h_width, True, p.dim_bits, False)
            + _mul_stages(p.s1_width, True, p.h_width, True))


def back_stages(params):
    """Cycles from reading an element out of the row buffer to its result on ``o``: read,
    the block RAM output register, ``c = dim * h - S1``, ``c * y``, the shift to ``t``,
    ``t * gamma``, alignment, saturation, the sum, its magnitude, leading zeros,
    normalisation, the rounded output register."""
    p = params
    return (3 + _mul_stages(p.c_width, True, p.y_width, False) + 1
            + _mul_stages(p.t_width, True, 9, True) + 7)


def rsqrt_cycles(params):
    """Cycles the reciprocal-square-root sequencer spends per row: load, ``S1**2`` in the
    pipelined multiplier (``M`` stages), ``W``, leading zeros, normalisation, table, then per
    Newton step three dependent products of ``M + 1`` cycles each."""
    p = params
    m = _mul_stages(rsqrt_width(p), False, rsqrt_width(p), False)
    return 5 + m + 3 * (m + 1) * p.newton_steps


def row_cycles(params):
    """Steady-state cycles per row with ``i`` always valid and ``o`` always ready: ``dim`` (one
    element per cycle) unless the reciprocal square root is slower. With two row-buffer banks
    a row is written behind the read-out of the row two before it, element ``j`` at least
    three cycles after element ``j`` was read (the write permission is a register), so two
    rows take at least ``dim + rsqrt_cycles + 3`` cycles; this limits only when ``dim`` and
    ``rsqrt_cycles`` differ by less than three."""
    d, r = params.dim, rsqrt_cycles(params)
    return max(d, r, (d + r + 3) / 2)


def latency(params):
    """Cycles from accepting a row's first element to its first result on ``o`` (no stalls,
    the unit idle before): the row enters, its sums settle, the reciprocal square root runs,
    the first element is read out and passes the output pipeline."""
    return params.dim + front_stages(params) + rsqrt_cycles(params) + back_stages(params)
