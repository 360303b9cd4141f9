"""Golden model of the ``mxq`` unit: a bf16 element stream in, MX-OP element beats out.

The encoding itself is ``sim.mxop.encode``; this module fixes the unit's parameters and the
order and content of its output beats, which ``hw/mxq.py`` must reproduce bit for bit.
"""

import dataclasses
from dataclasses import dataclass

import numpy as np

from . import mxop
from .params import check_int

__all__ = ["MXQParams", "PRESETS", "DEFAULT", "mxq", "LATENCY"]

# Timing of the unit (hw/mxq.py checks its pipeline against it), the same for all params: a
# block of lp elements takes lp cycles in steady state (no stalls).
LATENCY = 8     # cycles from accepting a block's last element to its first beat, no stalls


@dataclass(frozen=True, kw_only=True)
class MXQParams:
    """Parameters of the MX-OP quantizer.

    block : elements per MX-OP block (B), 2..1024; a block may end earlier (``last``).
    outliers : elements kept in bf16 per block (k), 0..min(B - 1, 16).
    bits : the widest inlier width (n), 2..8 (3 or 5 for activations, 8 for MX-INT); each
        block chooses its own width in 2..bits at run time.
    lanes : independent quantizer lanes moving in lock step, 1..64.
    """

    block: int = 128
    outliers: int = 4
    bits: int = 5
    lanes: int = 1

    def __post_init__(self):
        check_int("block", self.block, 2, 1024)
        check_int("outliers", self.outliers, 0, min(self.block - 1, 16))
        check_int("bits", self.bits, 2, 8)
        check_int("lanes", self.lanes, 1, 64)

    @property
    def fmt(self):
        return mxop.MXOPFormat(block=self.block, outliers=self.outliers, bits=self.bits)

    @property
    def index_width(self):
        """Bits of an element index within a block."""
        return max(1, (self.block - 1).bit_length())

    @property
    def bits_width(self):
        """Bits of the per-block inlier width field (holds ``bits``)."""
        return self.bits.bit_length()


DEFAULT = MXQParams()
PRESETS = {
    "tiny": dataclasses.replace(DEFAULT, block=64),          # hidden 64 < B
    "minilm": DEFAULT,
    "bert-base": dataclasses.replace(DEFAULT, lanes=2),
    "bert-large": dataclasses.replace(DEFAULT, lanes=4),
}


def _per_block(name, value, nblocks, lo, hi, default):
    if value is None:
        value = default
    arr = np.asarray(value)
    if arr.ndim == 0:
        arr = np.full(nblocks, arr)
    if (arr.shape != (nblocks,) or arr.dtype.kind not in "iu" or arr.size and
            (arr.min() < lo or arr.max() > hi)):
        raise ValueError(f"{name} must be an integer or {nblocks} integers in {lo}..{hi}, "
                         f"not {value!r}")
    return arr.astype(np.int64)


def mxq(x, params, *, bits=None, length=None):
    """Output beats of the unit for input ``x``: bf16 patterns of shape (nblocks, lanes, B).

    Block ``j`` of lane ``l`` is ``x[j, l, :length[j]]``. ``length`` (one integer, or one per
    block, in 1..B; default B) is where the input's ``last`` ends the block; the elements
    beyond it are not streamed and are ignored here. A block of length ``lp < B`` is encoded
    as the full block with zeros appended (``mxop.encode`` of the zero-padded block), and
    beats are emitted for its ``lp`` real elements only. ``bits`` (one integer, or one per
    block, in 2..``params.bits``; default ``params.bits``) is the block's inlier width.

    Returns a dict of arrays, one output beat per element in stream order: per lane, shape
    (nbeats, lanes), ``q`` (int, 0 at outliers), ``outlier`` (0/1), ``value`` (bf16 pattern
    at outliers after DAZ, else 0), ``exp`` (the block's shared biased exponent); per beat,
    shape (nbeats,), ``index`` (element position), ``last`` (last element of the block) and
    ``bits`` (the block's inlier width).
    """
    p = params
    x = np.asarray(x, dtype=np.uint16)
    if x.ndim != 3 or x.shape[1:] != (p.lanes, p.block):
        raise ValueError(f"x must have shape (nblocks, lanes={p.lanes}, block={p.block}), "
                         f"not {x.shape}")
    nblocks = x.shape[0]
    bits = _per_block("bits", bits, nblocks, 2, p.bits, p.bits)
    length = _per_block("length", length, nblocks, 1, p.block, p.block)
    index = np.broadcast_to(np.arange(p.block), (nblocks, p.block))
    real = index < length[:, None]                                  # (nblocks, B)
    xz = np.where(real[:, None, :], x, 0).astype(np.uint16)
    shape = (nblocks, p.lanes, p.block)
    q = np.zeros(shape, dtype=np.int64)
    out = np.zeros(shape, dtype=bool)
    value = np.zeros(shape, dtype=np.uint16)
    exp = np.zeros(shape[:2], dtype=np.int64)
    for b in np.unique(bits):
        sel = bits == b
        fmt = dataclasses.replace(p, bits=int(b)).fmt
        enc = mxop.encode(xz[sel], fmt)                  # leading shape (n, lanes, 1)
        q[sel] = enc.q[:, :, 0, :]
        exp[sel] = enc.exp[:, :, 0]
        if p.outliers:
            idx = enc.out_idx[:, :, 0, :].astype(np.int64)
            o = np.zeros(idx.shape[:2] + (p.block,), dtype=bool)
            v = np.zeros(o.shape, dtype=np.uint16)
            np.put_along_axis(o, idx, True, axis=-1)
            np.put_along_axis(v, idx, enc.out_val[:, :, 0, :], axis=-1)
            out[sel], value[sel] = o, v
    keep = real.ravel()

    def lanes_(a):
        return a.transpose(0, 2, 1).reshape(-1, p.lanes)[keep].astype(np.int64)

    def beat(a):
        return np.asarray(a).reshape(-1)[keep].astype(np.int64)

    return {
        "q": lanes_(q),
        "outlier": lanes_(out),
        "value": lanes_(value),
        "exp": lanes_(np.broadcast_to(exp[:, :, None], shape)),
        "index": beat(index),
        "last": beat(index == length[:, None] - 1),
        "bits": beat(np.broadcast_to(bits[:, None], (nblocks, p.block))),
    }
