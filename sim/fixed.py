"""Fixed-point golden numerics: exact aligned accumulation and the one output rounding.

Rules (docs/numerics.md, section "Fixed point and dot products"):

- A dot product of an MX-OP vector with an integer operand is a sum of terms, each an exact
  integer ``T`` at a power-of-two exponent ``e``: one term per block for the inliers
  (``sum(q * w)`` at ``scale_exp(E) + w_exp``) and one per outlier (``M * w`` at the outlier's
  exponent ``+ w_exp``, ``M`` its signed 8-bit significand).
- The anchor ``A`` is the largest exponent among the terms that can be nonzero (blocks with
  ``E`` not 0, outliers that are not zero). Every term is aligned to the accumulator LSB
  ``A - frac_bits`` by an arithmetic shift: left shifts are exact, right shifts round toward
  minus infinity (floor). After alignment integer additions are exact, so the result does not
  depend on order or on how the reduction is split across tiles or lanes.
- Any Inf or NaN operand makes the result NaN.
- Output conversion ``acc * 2**(A - frac_bits) * scale + bias`` is computed exactly and
  rounded once to bf16 (``bf16.round_fixed``: RNE, FTZ, overflow to Inf).
"""

import numpy as np

from . import bf16
from .mxop import EXP_NAN, scale_exp

__all__ = ["fix_trunc", "align", "mxop_dot", "affine_round"]

_NO_TERM = np.iinfo(np.int64).min // 4


def fix_trunc(x, int_bits, frac_bits):
    """bf16 patterns -> signed fixed point with ``frac_bits`` fraction bits (truncate, saturate).

    DAZ; the magnitude is truncated toward zero and saturates at
    ``2**(int_bits + frac_bits) - 1``. Non-finite inputs give 0: callers flag them.
    """
    m, e = bf16.to_fixed(x)
    mag = np.abs(m)
    sh = e + frac_bits
    big = (mag > 0) & (sh + 8 > int_bits + frac_bits)         # |x| >= 2**int_bits
    v = np.where(sh >= 0, mag << np.clip(sh, 0, 40), mag >> np.clip(-sh, 0, 63))
    v = np.where(big, (np.int64(1) << (int_bits + frac_bits)) - 1, v)
    v = np.minimum(v, (np.int64(1) << (int_bits + frac_bits)) - 1)
    return np.where(m < 0, -v, v).astype(np.int64)


def align(term, term_exp, lsb_exp):
    """Shift exact integer ``term`` at ``term_exp`` onto an accumulator with LSB ``lsb_exp``.

    Left shifts are exact; right shifts floor (arithmetic shift right).
    """
    term = np.asarray(term, dtype=np.int64)
    d = np.asarray(term_exp, dtype=np.int64) - np.asarray(lsb_exp, dtype=np.int64)
    left = np.clip(d, 0, 62)
    right = np.clip(-d, 0, 63)
    return np.where(d >= 0, term << left, term >> right)


def mxop_dot(blocks, fmt, w, w_exp=None, *, frac_bits=16):
    """Dot products of encoded MX-OP rows with an integer matrix.

    Parameters
    ----------
    blocks : MXOPBlocks
        Encoded rows, leading shape ``(M, nblocks)`` (``sim.mxop.encode`` of an (M, K) array).
    fmt : MXOPFormat
    w : int array (K, N)
        Integer operand (weights, or MX-INT integers of K/V).
    w_exp : int array (nblocks, N) or None
        Per-block power-of-two exponent of ``w`` (MX-INT operand); ``None`` means 0.
    frac_bits : int
        Accumulator bits below the anchor.

    Returns
    -------
    acc : int64 (M, N), lsb_exp : int64 (M, N), nan : bool (M, N)
        The value is ``acc * 2**lsb_exp`` (exact up to the documented floor alignment).
    """
    exp, q, out_idx, out_val = blocks
    m_rows, nb, b = q.shape
    w = np.asarray(w, dtype=np.int64)
    k, n = w.shape
    if k != nb * b:
        raise ValueError(f"operand has {k} rows, encoded rows have {nb * b} elements")
    # The sums below run in float64, exact while every partial sum stays below 2**53: each
    # aligned term is at most |T| * 2**frac_bits since no term exponent exceeds the anchor.
    wmax = int(np.max(np.abs(w), initial=1))
    per_block = (b << max(fmt.bits - 1, 0)) + (fmt.outliers << 8)
    bound = (wmax << frac_bits) * nb * per_block
    if bound >= 1 << 53:
        raise ValueError(f"mxop_dot: frac_bits={frac_bits} with |w| <= {wmax} and {nb} blocks of "
                         f"{b} can exceed the exact accumulator range (2**53); lower frac_bits")
    wf = w.astype(np.float64)
    exp = np.asarray(exp, dtype=np.int64)
    live_in = (exp != 0) & (exp != EXP_NAN)                               # (M, nb)
    e_in = scale_exp(exp, fmt.bits)                                       # (M, nb)
    nan = np.any(exp == EXP_NAN, axis=1)
    # exact inlier terms (nb, M, N)
    t_in = np.matmul(q.astype(np.float64).transpose(1, 0, 2), wf.reshape(nb, b, n))
    blk_max = np.where(live_in, e_in, _NO_TERM)                           # (M, nb)
    if fmt.outliers:
        om, oe = bf16.to_fixed(out_val)                                   # (M, nb, k)
        live_o = om != 0
        blk_max = np.maximum(blk_max, np.max(np.where(live_o, oe, _NO_TERM), axis=2))
        nan = nan | np.any(~bf16.is_finite(out_val), axis=(1, 2))
        gi = out_idx.astype(np.int64) + (np.arange(nb) * b)[None, :, None]
    nan = np.broadcast_to(nan[:, None], (m_rows, n))
    if w_exp is None:
        anchor = np.max(blk_max, axis=1)[:, None]                          # (M, 1)
        we = np.zeros((nb, 1), dtype=np.int64)
    else:
        we = np.asarray(w_exp, dtype=np.int64)                            # (nb, N)
        anchor = np.max(np.where(blk_max[:, :, None] > _NO_TERM,
                                 blk_max[:, :, None] + we[None], _NO_TERM), axis=1)
    has = anchor > _NO_TERM
    lsb = np.where(has, anchor - frac_bits, 0)                            # (M, 1 or N)
    d_in = np.clip(e_in.T[:, :, None] + we[:, None, :] - lsb[None], -63, None)
    contrib = np.where(live_in.T[:, :, None], np.floor(np.ldexp(t_in, d_in)), 0.0)
    acc = contrib.sum(axis=0)                                             # (M, N)
    if fmt.outliers:
        if w_exp is None:
            d_o = oe - lsb[:, :, None]                                    # (M, nb, k)
            lin = live_o & (d_o >= 0)
            x_o = np.zeros((m_rows, k))
            rr = np.broadcast_to(np.arange(m_rows)[:, None, None], gi.shape)
            np.add.at(x_o, (rr[lin], gi[lin]), np.ldexp(om[lin].astype(np.float64),
                                                         d_o[lin]))
            acc = acc + x_o @ wf
            fl = live_o & (d_o < 0)
            if np.any(fl):
                r_, g_ = rr[fl], gi[fl]
                t = np.floor(np.ldexp(om[fl][:, None] * wf[g_], np.maximum(d_o[fl], -63)[:, None]))
                np.add.at(acc, r_, t)
        else:
            wsel = wf[gi]                                                 # (M, nb, k, N)
            d_o = np.clip(oe[..., None] + we[None, :, None, :] - lsb[:, None, None, :], -63, None)
            t = np.floor(np.ldexp(om[..., None] * wsel, d_o))
            acc = acc + np.where(live_o[..., None], t, 0.0).sum(axis=(1, 2))
    acc = np.where(has, acc, 0.0).astype(np.int64)
    return acc, np.broadcast_to(lsb, (m_rows, n)).copy(), nan.copy()


def affine_round(acc, lsb_exp, scale, bias, nan=None):
    """``bf16(acc * 2**lsb_exp * scale + bias)``, computed exactly, rounded once (RNE).

    ``scale`` and ``bias`` are bf16 patterns broadcast against ``acc``; a non-finite scale or
    bias, or ``nan``, gives NaN. ``|acc| < 2**46`` is required.
    """
    acc = np.asarray(acc, dtype=np.int64)
    if np.any(np.abs(acc) >= (1 << 46)):
        raise ValueError("accumulator exceeds 46 bits; raise frac_bits budget or split the sum")
    sm, se = bf16.to_fixed(scale)
    bm, be = bf16.to_fixed(bias)
    pm = acc * sm                                    # |pm| < 2**54
    pe = np.asarray(lsb_exp, dtype=np.int64) + se
    # exact sum of pm*2**pe and bm*2**be: align both to a common LSB; bits shifted out of
    # the smaller term are jammed into a sticky LSB (three guard bits keep RNE exact).
    top = np.maximum(np.where(pm != 0, pe + bf16.bit_length(np.abs(pm)), _NO_TERM),
                     np.where(bm != 0, be + 8, _NO_TERM))
    lsb = np.maximum(np.minimum(pe, be), top - 58)
    out = np.zeros(np.broadcast(pm, bm, lsb).shape, dtype=np.int64)
    for m, e in ((pm, pe), (bm, be)):
        d = lsb - e
        sh = np.clip(d, 0, 63)
        lost = np.where(d > 0, (np.abs(m) & ((np.int64(1) << np.minimum(sh, 62)) - 1)) != 0, False)
        lost |= (d > 62) & (m != 0)
        mag = np.where(d > 0, np.abs(m) >> np.minimum(sh, 62), np.abs(m) << np.clip(-d, 0, 62))
        mag = np.where(d > 62, 0, mag)
        # jam: a term that lost bits is nudged by one LSB towards its own sign's direction
        # only in magnitude terms; sticky below the 3 guard bits makes RNE see "above half"
        mag = (mag << 3) | lost
        out = out + np.where(m < 0, -mag, mag)
    res = bf16.round_fixed(out, lsb - 3)
    bad = ~bf16.is_finite(scale) | ~bf16.is_finite(bias)
    if nan is not None:
        bad = bad | np.asarray(nan)
    return np.where(bad, bf16.NAN, res).astype(np.uint16)
