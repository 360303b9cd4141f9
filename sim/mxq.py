"""Golden model of the ``mxq`` unit: a bf16 element stream in, MX-OP element beats out.

The encoding itself is ``sim.mxop.encode``; this module fixes the unit's parameters and the
order and content of its output beats, which ``hw/mxq.py`` must reproduce bit for bit.
"""

import dataclasses
from dataclasses import dataclass

import numpy as np

from . import mxop
from .params import check_int

__all__ = ["MXQParams", "PRESETS", "DEFAULT", "mxq"]


@dataclass(frozen=True, kw_only=True)
class MXQParams:
    """Parameters of the MX-OP quantizer.

    block : elements per MX-OP block (B), 2..1024.
    outliers : elements kept in bf16 per block (k), 0..min(B - 1, 16).
    bits : inlier width (n), 2..8 (3 or 5 for activations, 8 for MX-INT).
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


DEFAULT = MXQParams()
PRESETS = {
    "tiny": dataclasses.replace(DEFAULT, block=64),          # hidden 64 < B
    "minilm": DEFAULT,
    "bert-base": dataclasses.replace(DEFAULT, lanes=2),
    "bert-large": dataclasses.replace(DEFAULT, lanes=4),
}


def mxq(x, params):
    """Output beats of the unit for input ``x``: bf16 patterns of shape (nblocks, lanes, B).

    Block ``j`` of lane ``l`` is ``x[j, l]``. Returns a dict of arrays of shape
    (nblocks, B, lanes) — one output beat per (block, element), in stream order — with fields
    ``q`` (int, 0 at outliers), ``outlier`` (0/1), ``value`` (bf16 pattern at outliers after
    DAZ, else 0), ``exp`` (the block's shared biased exponent), and per beat ``index``
    (element position) and ``last`` (last element of the block), shape (nblocks, B).
    """
    p = params
    x = np.asarray(x, dtype=np.uint16)
    if x.ndim != 3 or x.shape[1:] != (p.lanes, p.block):
        raise ValueError(f"x must have shape (nblocks, lanes={p.lanes}, block={p.block}), "
                         f"not {x.shape}")
    enc = mxop.encode(x, p.fmt)                     # leading shape (nblocks, lanes, 1)
    q = enc.q[:, :, 0, :]
    exp = enc.exp[:, :, 0]
    out = np.zeros(q.shape, dtype=bool)
    value = np.zeros(q.shape, dtype=np.uint16)
    if p.outliers:
        idx = enc.out_idx[:, :, 0, :].astype(np.int64)
        np.put_along_axis(out, idx, True, axis=-1)
        np.put_along_axis(value, idx, enc.out_val[:, :, 0, :], axis=-1)
    nblocks = x.shape[0]
    index = np.broadcast_to(np.arange(p.block), (nblocks, p.block))
    return {
        "q": q.transpose(0, 2, 1).astype(np.int64),
        "outlier": out.transpose(0, 2, 1).astype(np.int64),
        "value": value.transpose(0, 2, 1).astype(np.int64),
        "exp": np.broadcast_to(exp[:, None, :], (nblocks, p.block, p.lanes)).astype(np.int64),
        "index": index.astype(np.int64),
        "last": (index == p.block - 1).astype(np.int64),
    }
