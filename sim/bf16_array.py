"""Golden model of ``bf16_array``: the bf16 x bf16 dot-product array the mixed array is
compared against (same lanes, same multipliers per lane, same throughput).

Numerics (docs/numerics.md, section "bf16 comparison array"):

- Inputs DAZ. Each product ``x * w`` is rounded once to bf16 (RNE, FTZ, overflow to Inf).
- Each beat's ``width`` products are summed by a balanced binary tree of bf16 adders
  (pairs ``(0,1), (2,3), ...`` then pairs of those), every addition rounded once to bf16
  (RNE, FTZ, overflow to Inf); the beat sums are accumulated in order, ``acc = acc + s``
  (the first beat's sum starts the accumulator), again rounded after each addition.
- An exact zero result is +0. NaN operands, ``0 * Inf`` and ``Inf - Inf`` give ``0x7FC0``;
  otherwise an Inf operand gives Inf of the right sign.

Stream format of ``hw/bf16_array.py`` (``beats``): the accumulation adder takes several
cycles, so the array keeps ``slots`` vectors in flight; input beats visit the slots
round-robin (beat ``j`` belongs to slot ``j mod slots``), each slot's beats forming its own
vectors in order. ``beats`` builds that interleaving (padding with zero vectors) and
``run_beats`` consumes it as the hardware does.
"""

import dataclasses
from dataclasses import dataclass

import numpy as np

from . import bf16
from .params import check_int

__all__ = ["BF16ArrayParams", "PRESETS", "DEFAULT", "SLOTS", "mul", "add", "dot", "beats",
           "run_beats"]

SLOTS = 8
"""Vectors in flight: the accumulation adder's six pipeline stages, its operand register and
the accumulator register file between two additions of the same vector."""


@dataclass(frozen=True, kw_only=True)
class BF16ArrayParams:
    """Parameters of the bf16 comparison array.

    lanes : dot products computed in parallel, 1..64.
    width : bf16 multipliers per lane (elements per lane per cycle), a power of two in 1..64.
    """

    lanes: int = 4
    width: int = 32

    def __post_init__(self):
        check_int("lanes", self.lanes, 1, 64)
        check_int("width", self.width, 1, 64, pow2=True)

    @property
    def slots(self):
        """Vectors in flight (``SLOTS``): beats visit them round-robin."""
        return SLOTS


DEFAULT = BF16ArrayParams()
PRESETS = {
    "tiny": dataclasses.replace(DEFAULT, lanes=2, width=4),
    "minilm": DEFAULT,
    "bert-base": dataclasses.replace(DEFAULT, lanes=2, width=64),
    "bert-large": dataclasses.replace(DEFAULT, width=64),
}


def mul(a, b):
    """Elementwise bf16 product, rounded once (RNE, FTZ, overflow to Inf)."""
    a, b = bf16.daz(a), bf16.daz(b)
    ma, ea = bf16.to_fixed(a)
    mb, eb = bf16.to_fixed(b)
    res = bf16.round_fixed(ma * mb, ea + eb)
    neg = (bf16.sign(a) ^ bf16.sign(b)).astype(bool)
    zero = (bf16.magnitude(a) == 0) | (bf16.magnitude(b) == 0)
    inf = bf16.is_inf(a) | bf16.is_inf(b)
    nan = bf16.is_nan(a) | bf16.is_nan(b) | (inf & zero)
    res = np.where(inf, np.where(neg, bf16.NEG_INF, bf16.POS_INF), res)
    return np.where(nan, bf16.NAN, res).astype(np.uint16)


def add(a, b):
    """Elementwise bf16 sum, rounded once (RNE, FTZ, overflow to Inf; exact zero is +0).

    Computed as the hardware does: the smaller operand is aligned under three guard bits with
    the shifted-out bits jammed into a sticky bit, which rounds exactly like the exact sum.
    """
    a, b = bf16.daz(a), bf16.daz(b)
    ma, ea = bf16.to_fixed(a)
    mb, eb = bf16.to_fixed(b)
    big_a = bf16.magnitude(a) >= bf16.magnitude(b)
    m1, e1 = np.where(big_a, ma, mb), np.where(big_a, ea, eb)
    m2, e2 = np.where(big_a, mb, ma), np.where(big_a, eb, ea)
    d = np.minimum(e1 - e2, 15)
    g2 = np.abs(m2) << 3
    sh = g2 >> d
    sticky = (sh << d) != g2
    s = np.abs(m1) * 8 + np.where(np.sign(m1) * np.sign(m2) < 0, -1, 1) * (sh | sticky)
    s = np.where(m1 < 0, -s, s)
    res = bf16.round_fixed(s, e1 - 3)
    inf_a, inf_b = bf16.is_inf(a), bf16.is_inf(b)
    res = np.where(inf_a, a, np.where(inf_b, b, res))
    nan = (bf16.is_nan(a) | bf16.is_nan(b)
           | (inf_a & inf_b & (bf16.sign(a) != bf16.sign(b))))
    return np.where(nan, bf16.NAN, res).astype(np.uint16)


def _operands(x, w, p):
    x = np.asarray(x, np.uint16)
    w = np.asarray(w, np.uint16)
    k = x.shape[-1]
    if k % p.width or k == 0:
        raise ValueError(f"reduction length must be a positive multiple of width={p.width}, "
                         f"not {k}")
    if w.shape[0] != k:
        raise ValueError(f"w must have {k} rows (x's reduction length), not {w.shape[0]}")
    return x, w


def dot(x, w, params):
    """bf16 ``x`` (M, K) times bf16 ``w`` (K, N) by the array's order of operations -> (M, N).

    K must be a multiple of ``width``.
    """
    p = params
    x, w = _operands(x, w, p)
    m, k = x.shape
    n = w.shape[1]
    prod = mul(x[:, :, None], w[None, :, :])                  # (M, K, N)
    prod = prod.reshape(m, k // p.width, p.width, n)
    level = [prod[:, :, j] for j in range(p.width)]
    while len(level) > 1:
        level = [add(level[j], level[j + 1]) for j in range(0, len(level), 2)]
    beat = level[0]                                            # (M, beats, N)
    acc = beat[:, 0]
    for j in range(1, beat.shape[1]):
        acc = add(acc, beat[:, j])
    return acc.astype(np.uint16)


def beats(x, w, params):
    """Input beats for the hardware: every row of ``x`` (M, K) against ``lanes`` columns of
    ``w`` (K, N); K a positive multiple of ``width``, N of ``lanes``.

    Vectors (a row against a group of ``lanes`` columns) go in the order ``for group: for
    row``, ``slots`` at a time: the beats of a batch of ``slots`` vectors interleave
    round-robin, and the last batch is padded with zero vectors. Returns a dict of int64
    arrays, one entry per beat: ``x`` (beats, width), ``w`` (beats, lanes, width), ``last``
    (beats,); and ``order`` (outputs, 2): (row, group) of each output vector in output order,
    (-1, -1) for padding.
    """
    p = params
    x, w = _operands(x, w, p)
    m, k = x.shape
    n = w.shape[1]
    if n % p.lanes:
        raise ValueError(f"w must be ({k}, a multiple of lanes={p.lanes}), not {w.shape}")
    nb, s = k // p.width, p.slots
    order = [(r, g) for g in range(n // p.lanes) for r in range(m)]
    order += [(-1, -1)] * (-len(order) % s)
    order = np.array(order, np.int64).reshape(-1, 2)
    xs = np.where(order[:, :1] >= 0, x[order[:, 0]], 0)                     # (V, K)
    cols = order[:, 1:] * p.lanes + np.arange(p.lanes)[None]                # (V, lanes)
    ws = np.where(order[:, :1, None] >= 0, w.T[cols], 0)                    # (V, lanes, K)
    nv = len(order)
    # beat order: batch, beat within the vector, slot
    xb = xs.reshape(nv // s, s, nb, p.width).transpose(0, 2, 1, 3).reshape(-1, p.width)
    wb = (ws.reshape(nv // s, s, p.lanes, nb, p.width).transpose(0, 3, 1, 2, 4)
          .reshape(-1, p.lanes, p.width))
    last = np.zeros((nv // s, nb, s), np.int64)
    last[:, -1, :] = 1
    return {"x": xb, "w": wb, "last": last.reshape(-1), "order": order}


def run_beats(bt, params):
    """Consume beats as the hardware does: products, tree, per-slot accumulators; return the
    bf16 results (vectors, lanes) in output order."""
    p = params
    x, w, last = bt["x"], bt["w"], bt["last"]
    prod = mul(x[:, None, :], w)                               # (beats, lanes, width)
    level = [prod[:, :, j] for j in range(p.width)]
    while len(level) > 1:
        level = [add(level[j], level[j + 1]) for j in range(0, len(level), 2)]
    acc = [None] * p.slots
    out = []
    for i, s in enumerate(level[0]):
        slot = i % p.slots
        acc[slot] = s if acc[slot] is None else add(acc[slot], s)
        if last[i]:
            out.append(acc[slot])
            acc[slot] = None
    return np.array(out, np.uint16).reshape(-1, p.lanes)
