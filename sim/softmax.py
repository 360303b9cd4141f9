"""Golden model of the ``softmax`` unit: log2-domain softmax by shifts, adds and compares.

Every step is an integer operation the RTL (``hw/softmax.py``) performs identically
(docs/numerics.md, section "softmax"):

1. Input: bf16 scores, DAZ. A score is *kept* when its mask bit is 1 and it is not -Inf.
   A kept NaN or +Inf makes the row a NaN row.
2. ``x`` = the score in signed fixed point with ``frac_bits`` fraction bits: the magnitude is
   truncated toward zero and saturated to ``2**(int_bits + frac_bits) - 1``.
3. ``y = (x * C) >> log2e_frac`` (floor), ``C = round(log2(e) * 2**log2e_frac)``; the product
   is a sum of shifted copies of ``x`` (one per set bit of ``C``), so no multiplier.
   ``y`` = score * log2(e), ``frac_bits`` fraction bits: ``2**y == e**score``.
4. Online sum in index order, over kept elements: ``m = y >> F`` (floor), ``f = y & (2**F-1)``,
   ``e = pow2(f)`` (``2**f`` with ``exp_bits`` fraction bits, in ``[1, 2)``). The running
   integer maximum ``M`` and sum ``S`` (value ``S * 2**(M - exp_bits)``) start at the first
   kept element; then ``S = (S >> (m - M)) + e; M = m`` when ``m > M``, else
   ``S += e >> (M - m)``. Right shifts floor (bits shifted out are lost).
5. ``lS = log2(S)`` with ``frac_bits`` fraction bits: leading-one position ``p`` of ``S``,
   mantissa ``(S - 2**p) >> (p - exp_bits)`` (floor), ``lS = (p - exp_bits) * 2**F +
   log2p1(mantissa)``.
6. Output of a kept element: ``z = min(y - M * 2**F - lS, 0)``; ``p = pow2(z & (2**F-1)) *
   2**(z >> F)`` rounded once to bf16 (``bf16.round_fixed``: RNE, FTZ). Positions not kept
   give +0. A row with no kept element gives all +0. A NaN row gives 0x7FC0 at every
   position whose mask bit is 1 and +0 elsewhere.

``pow2`` and ``log2p1`` are piecewise-linear: ``pwl_segments`` segments chosen by the top
bits of the argument, each ``A_j + sum(+-(r >> s))`` (``r`` the offset inside the segment,
at most ``pwl_terms`` shifted copies, floor), clamped to the function's range. The tables
(``pwl_table``) are computed from the parameters, identically for the model and the RTL.
"""

import dataclasses
import functools
import math
from dataclasses import dataclass

import numpy as np

from . import bf16
from .fixed import fix_trunc
from .params import check_int

__all__ = ["SoftmaxParams", "PRESETS", "DEFAULT", "softmax", "softmax_slow", "pwl_table",
           "pwl_eval", "log2e_const", "LATENCY", "ROW_GAP", "row_cycles"]

# Timing of the unit (hw/softmax.py checks its pipeline against these): every preset and
# every params value has the same pipeline depths.
LATENCY = 22    # cycles from accepting a row's last score to its first probability, no stalls
ROW_GAP = 7     # a row can leave this many cycles after its last score entered its bank


def row_cycles(length):
    """Cycles per row of ``length`` elements in steady state (no stalls, equal rows): one
    element per cycle, except that a row's last score cannot enter a bank before the row
    two ahead of it has left, which bounds rows shorter than ``ROW_GAP``."""
    return max(length, (length + ROW_GAP) / 2)


@dataclass(frozen=True, kw_only=True)
class SoftmaxParams:
    """Parameters of the log2 softmax unit.

    max_len : longest row (buffer depth per row), 1..4096; rows end with a ``last`` flag.
    int_bits : integer bits of the fixed-point score (|score| saturates at 2**int_bits), 1..15.
    frac_bits : fraction bits of the fixed-point score, of ``y`` and of ``log2(sum)``, 4..16.
    log2e_frac : fraction bits of the log2(e) constant (shift-add terms), 1..16.
    exp_bits : fraction bits of ``2**f`` and of the running sum, 6..20.
    pwl_segments : segments of the piecewise-linear 2**f and log2(1+m), power of two 1..64.
    pwl_terms : shifted copies forming each segment's slope, 1..4.
    """

    max_len: int = 512
    int_bits: int = 8
    frac_bits: int = 12
    log2e_frac: int = 12
    exp_bits: int = 14
    pwl_segments: int = 16
    pwl_terms: int = 3

    def __post_init__(self):
        check_int("max_len", self.max_len, 1, 4096)
        check_int("int_bits", self.int_bits, 1, 15)
        check_int("frac_bits", self.frac_bits, 4, 16)
        check_int("log2e_frac", self.log2e_frac, 1, 16)
        check_int("exp_bits", self.exp_bits, 6, 20)
        check_int("pwl_segments", self.pwl_segments, 1, 64, pow2=True)
        check_int("pwl_terms", self.pwl_terms, 1, 4)
        if self.pwl_segments > (1 << self.frac_bits):
            raise ValueError(f"pwl_segments must be at most 2**frac_bits = {1 << self.frac_bits}, "
                             f"not {self.pwl_segments!r}")

    @property
    def x_width(self):
        """Signed width of the fixed-point score."""
        return self.int_bits + self.frac_bits + 1

    @property
    def y_width(self):
        """Signed width of ``y = x * log2(e)``."""
        c = log2e_const(self.log2e_frac)
        return self.x_width + c.bit_length() - self.log2e_frac + 1

    @property
    def sum_width(self):
        """Unsigned width of the running sum (value < 2 * max_len)."""
        return self.exp_bits + 2 + max(1, self.max_len.bit_length())

    @property
    def len_width(self):
        return max(1, (self.max_len - 1).bit_length())


DEFAULT = SoftmaxParams()
PRESETS = {
    "tiny": dataclasses.replace(DEFAULT, max_len=16),
    "minilm": dataclasses.replace(DEFAULT, max_len=256),   # sentence-transformers max_seq 256
    "bert-base": DEFAULT,
    "bert-large": DEFAULT,
}


def log2e_const(frac):
    """``round(log2(e) * 2**frac)``: the shift-add constant (its set bits are the shifts)."""
    return int(math.floor(math.log2(math.e) * (1 << frac) + 0.5))


def _slopes(terms):
    """Slopes that are sums of at most ``terms`` signed powers of two 2**1 .. 2**-12."""
    pows = [(s, k) for k in range(-1, 13) for s in (1, -1)]
    out = {(): 0.0}
    layer = {(): 0.0}
    for _ in range(terms):
        nxt = {}
        for combo in layer:
            last = combo[-1][1] if combo else -2
            for s, k in pows:
                if k > last:
                    c = combo + ((s, k),)
                    nxt[c] = sum(sg * 2.0 ** -kk for sg, kk in c)
        out.update(nxt)
        layer = nxt
    return out


@functools.lru_cache(maxsize=None)
def pwl_table(func, in_bits, out_bits, segments, terms):
    """Piecewise-linear table of ``func`` ("pow2": 2**u, "log2p1": log2(1+u)) on u in [0, 1).

    Returns ``(A, T, lo, hi)``: ``A[j]`` the intercept (``out_bits`` fraction bits), ``T[j]``
    a tuple of (sign, shift) terms; the value is ``clamp(A[j] + sum(sign * (r >> shift)), lo,
    hi)`` with ``r`` the offset in the segment aligned to ``out_bits`` fraction bits
    (shift -1 means ``r << 1``).
    """
    f = {"pow2": lambda u: 2.0 ** u, "log2p1": lambda u: np.log2(1.0 + u)}[func]
    if func == "pow2":
        lo, hi = 1 << out_bits, (2 << out_bits) - 1
    else:
        lo, hi = 0, (1 << out_bits) - 1
    cands = _slopes(terms)
    keys = list(cands)
    sl = np.array([cands[k] for k in keys])
    h = 1.0 / segments
    n_in = 1 << in_bits
    A, T = [], []
    for j in range(segments):
        u0 = j * h
        r = np.arange(int(round(h * n_in))) / n_in              # offsets on the input grid
        err = f(u0 + r)[None, :] - sl[:, None] * r[None, :]     # (cands, grid)
        spread = err.max(axis=1) - err.min(axis=1)
        best = int(np.argmin(spread + 1e-12 * np.array([len(k) for k in keys])))
        a = 0.5 * (err[best].max() + err[best].min())
        A.append(int(math.floor(a * (1 << out_bits) + 0.5)))
        T.append(keys[best])
    return tuple(A), tuple(T), lo, hi


def pwl_eval(u, in_bits, out_bits, table):
    """Evaluate a ``pwl_table`` on integer ``u`` in ``[0, 2**in_bits)`` (int64 array)."""
    A, T, lo, hi = table
    segments = len(A)
    sb = segments.bit_length() - 1
    u = np.asarray(u, dtype=np.int64)
    j = u >> (in_bits - sb)
    r = u & ((np.int64(1) << (in_bits - sb)) - 1)
    r = r << (out_bits - in_bits) if out_bits >= in_bits else r >> (in_bits - out_bits)
    out = np.zeros(u.shape, dtype=np.int64)
    for k in range(segments):
        v = np.full(u.shape, A[k], dtype=np.int64)
        for s, sh in T[k]:
            t = r << 1 if sh < 0 else r >> sh
            v = v + s * t
        out = np.where(j == k, v, out)
    return np.clip(out, lo, hi)


def _tables(p):
    F, W = p.frac_bits, p.exp_bits
    return (pwl_table("pow2", F, W, p.pwl_segments, p.pwl_terms),
            pwl_table("log2p1", W, F, p.pwl_segments, p.pwl_terms))


def _prepare(s, mask, p):
    s = bf16.daz(np.asarray(s, dtype=np.uint16))
    if mask is None:
        mask = np.ones(s.shape, dtype=bool)
    mask = np.broadcast_to(np.asarray(mask, dtype=bool), s.shape)
    if s.shape[-1] < 1 or s.shape[-1] > p.max_len:
        raise ValueError(f"row length must be in 1..{p.max_len}, not {s.shape[-1]}")
    bad = mask & (bf16.is_nan(s) | (s == bf16.POS_INF))
    kept = mask & ~(s == bf16.NEG_INF) & ~bad
    x = fix_trunc(np.where(bf16.is_finite(s), s, 0), p.int_bits, p.frac_bits)
    c = log2e_const(p.log2e_frac)
    y = np.zeros_like(x)
    for b in range(c.bit_length()):
        if c >> b & 1:
            y = y + (x << b)
    y = y >> p.log2e_frac
    return mask, kept, bad, y


def softmax(s, mask, params):
    """Softmax over the last axis of bf16 scores ``s`` (uint16, shape (..., L)).

    ``mask``: bool, broadcastable to ``s``, True = keep, False = padding (probability +0);
    ``None`` keeps everything. Returns bf16 probabilities (uint16), same shape.
    """
    p = params
    s = np.asarray(s, dtype=np.uint16)
    shape = s.shape
    mask, kept, bad, y = _prepare(s, mask, p)
    L = shape[-1]
    kept = kept.reshape(-1, L)
    y = y.reshape(-1, L)
    rows = y.shape[0]
    F, W = p.frac_bits, p.exp_bits
    t_pow, t_log = _tables(p)
    mi = y >> F
    fi = y & ((1 << F) - 1)
    ei = pwl_eval(fi, F, W, t_pow)
    M = np.zeros(rows, dtype=np.int64)
    S = np.zeros(rows, dtype=np.int64)
    started = np.zeros(rows, dtype=bool)
    for i in range(L):
        k, m, e = kept[:, i], mi[:, i], ei[:, i]
        up = m > M
        s_up = (S >> np.clip(m - M, 0, 63)) + e
        s_dn = S + (e >> np.clip(M - m, 0, 63))
        S = np.where(k & ~started, e, np.where(k & up, s_up, np.where(k, s_dn, S)))
        M = np.where(k & (~started | up), m, M)
        started |= k
    S = np.where(started, S, 1 << W)
    pos = bf16.bit_length(S) - 1
    mant = (S - (np.int64(1) << pos)) >> (pos - W)
    lS = ((pos - W) << F) + pwl_eval(mant, W, F, t_log)
    z = np.minimum(y - (M << F)[:, None] - lS[:, None], 0)
    pm = pwl_eval(z & ((1 << F) - 1), F, W, t_pow)
    out = bf16.round_fixed(pm, (z >> F) - W)
    out = np.where(kept, out, 0).reshape(shape)
    row_bad = np.any(bad.reshape(-1, L), axis=1).reshape(shape[:-1] + (1,))
    out = np.where(row_bad & mask, bf16.NAN, out)
    return out.astype(np.uint16)


def softmax_slow(s, mask, params):
    """Element-by-element Python-int version of ``softmax`` (the same integer algorithm)."""
    p = params
    s = np.asarray(s, dtype=np.uint16)
    mask, kept, bad, y = _prepare(s, mask, p)
    F, W = p.frac_bits, p.exp_bits
    t_pow, t_log = _tables(p)

    def pw(u, table, ib, ob):
        return int(pwl_eval(np.array([u]), ib, ob, table)[0])

    out = np.zeros(s.shape, dtype=np.uint16)
    for idx in np.ndindex(s.shape[:-1]):
        row_y = [int(v) for v in y[idx]]
        row_k = [bool(v) for v in kept[idx]]
        if any(bad[idx]):
            out[idx] = np.where(mask[idx], bf16.NAN, 0)
            continue
        M = S = None
        for yy, k in zip(row_y, row_k):
            if not k:
                continue
            m, e = yy >> F, pw(yy & ((1 << F) - 1), t_pow, F, W)
            if M is None:
                M, S = m, e
            elif m > M:
                S, M = (S >> (m - M)) + e, m
            else:
                S += e >> (M - m)
        if M is None:
            continue
        pos = S.bit_length() - 1
        lS = ((pos - W) << F) + pw((S - (1 << pos)) >> (pos - W), t_log, W, F)
        for i, (yy, k) in enumerate(zip(row_y, row_k)):
            if k:
                z = min(yy - (M << F) - lS, 0)
                mant = pw(z & ((1 << F) - 1), t_pow, F, W)
                out[idx + (i,)] = bf16.round_fixed(np.array([mant]), np.array([(z >> F) - W]))[0]
    return out
