"""Golden model of the crossbar controller: one linear layer on crossbar tiles, and its counters.

The numerics are ``sim.crossbar.linear`` (the controller adds no rounding of its own). This
module fixes the controller's parameters, the order of its input and output beats, and the
exact cycle and event counts of ``hw/crossbar_ctrl.py`` (``counters``), which the benchmark
and the cocotb regression compare against the counter ports of the RTL.

Layer job protocol (one ``i_layer`` beat each): ``vectors`` V; then N ``i_sb`` beats (scale,
bias per output channel); then the weights, one ``i_w`` beat per tile row in the order
``for g in groups: for t in row_tiles: for r in rows`` (channel ``j`` of the beat is output
channel ``g * channels + j``, row ``t * rows + r``; rows >= K and channels >= N are 0); then V
vectors of K ``i_x`` element beats (MX-OP elements as ``hw/mxq.py`` emits them) and N bf16
``o`` beats each. When the layer needs more tiles than ``tiles``, the weights are not loaded up
front: the full weight sequence is sent again for every vector and each tile is reprogrammed
just before its first use (``reprogram_writes``).
"""

import dataclasses
from dataclasses import dataclass

import numpy as np

from . import crossbar, mxop
from .params import check_int

__all__ = ["CrossbarCtrlParams", "PRESETS", "DEFAULT", "counters", "weight_rows", "run",
           "FRAC_BITS"]

FRAC_BITS = 16


@dataclass(frozen=True, kw_only=True)
class CrossbarCtrlParams:
    """Parameters of the crossbar controller (one K x N layer on crossbar tiles).

    in_features, out_features : K (a multiple of the MX-OP block) and N, 1..8192.
    block, outliers, act_bits : the MX-OP input format (``block`` a power of two, 2..1024;
        used as ``min(block, K)``), see ``sim.mxop.MXOPFormat``.
    rows, cols, cell_bits, adc_bits, dac_bits, weight_bits, tiles : the tiles, see
        ``sim.crossbar.CrossbarParams``.
    """

    in_features: int = 384
    out_features: int = 384
    block: int = 128
    outliers: int = 4
    act_bits: int = 5
    rows: int = 128
    cols: int = 128
    cell_bits: int = 2
    adc_bits: int = 0
    dac_bits: int = 1
    weight_bits: int = 8
    tiles: int = 36

    def __post_init__(self):
        check_int("in_features", self.in_features, 1, 8192)
        check_int("out_features", self.out_features, 1, 8192)
        check_int("block", self.block, 2, 1024, pow2=True)
        check_int("act_bits", self.act_bits, 2, 8)
        b = min(self.block, self.in_features)
        check_int("outliers", self.outliers, 0, min(b - 1, 16))
        if self.in_features % b:
            raise ValueError(f"in_features must be a multiple of block {b}, "
                             f"not {self.in_features!r}")
        self.tile       # validates the tile fields
        if b % self.rows and self.rows % b:
            raise ValueError(f"block {b} and rows {self.rows} must divide one another")

    @property
    def tile(self):
        return crossbar.CrossbarParams(rows=self.rows, cols=self.cols, cell_bits=self.cell_bits,
                                       adc_bits=self.adc_bits, dac_bits=self.dac_bits,
                                       weight_bits=self.weight_bits, tiles=self.tiles)

    @property
    def fmt(self):
        """The MX-OP format of the input vectors (block ``min(block, K)``)."""
        return mxop.MXOPFormat(block=self.block, outliers=self.outliers,
                               bits=self.act_bits).for_length(self.in_features)

    @property
    def channels(self):
        return self.tile.channels

    @property
    def row_tiles(self):
        return -(-self.in_features // self.rows)

    @property
    def groups(self):
        return -(-self.out_features // self.channels)

    @property
    def tiles_needed(self):
        return self.row_tiles * self.groups

    @property
    def resident(self):
        """All tiles of the layer fit in the physical tiles (programmed once per layer)."""
        return self.tiles_needed <= self.tiles

    @property
    def seg(self):
        """Rows of one segment (one tile's rows within one block)."""
        return min(self.fmt.block, self.rows)

    @property
    def nblocks(self):
        return self.in_features // self.fmt.block

    @property
    def pulses(self):
        return crossbar.pulses_of(self.act_bits, self.dac_bits)


DEFAULT = CrossbarCtrlParams()
PRESETS = {
    "tiny": dataclasses.replace(DEFAULT, in_features=64, out_features=64, rows=64, cols=64,
                                tiles=4),
    "minilm": DEFAULT,
    "bert-base": dataclasses.replace(DEFAULT, in_features=768, out_features=768, rows=256,
                                     cols=256, tiles=36),
    "bert-large": dataclasses.replace(DEFAULT, in_features=1024, out_features=1024, rows=256,
                                      cols=256, tiles=64),
}


def weight_rows(w_int, params):
    """The ``i_w`` beats of one full weight load: int array (groups*row_tiles*rows, channels)."""
    p = params
    w = np.asarray(w_int, dtype=np.int64)
    full = np.zeros((p.row_tiles * p.rows, p.groups * p.channels), dtype=np.int64)
    full[:w.shape[0], :w.shape[1]] = w
    return full.reshape(p.row_tiles * p.rows, p.groups, p.channels).transpose(1, 0, 2) \
               .reshape(-1, p.channels)


def run(x_bf16, w_int, scale_bf16, bias_bf16, params):
    """Output beats of one layer job: bf16 patterns (V, N) = ``sim.crossbar.linear``."""
    return crossbar.linear(x_bf16, w_int, scale_bf16, bias_bf16, params.fmt, params.tile,
                           frac_bits=FRAC_BITS)


# cycle costs of the controller's steps (hw/crossbar_ctrl.py states)
ROW_PROGRAM = 3        # PROG_W (write beat), PROG_R (read-back request), PROG_C (compare)
PULSE = 3              # PULSE (issue) + the tile's R + 2 cycles (PWAIT) = rows + 3
OUTLIER_SKIP = 1       # OB: outlier slot not in this segment
OUTLIER_READ = 3       # OB (one-hot read request), OC (FP lane multiply), OD (align, add)
SEG_START = 1          # SEG
BLOCK_FINISH = 1       # FIN: offset correction, align, add
CONVERT = 4            # C1 (x scale), C2 (anchor of the sum), C3 (sticky sum), C4 (round, out)
TILE_RELOAD = 1        # the extra SEG visit after reprogramming a tile


def counters(params, vectors, *, jobs=1):
    """Counter values of ``jobs`` layer jobs of ``vectors`` vectors each (exact, as the RTL).

    ``cycles`` counts every clock cycle except those spent waiting on a stream handshake
    (``i_layer``, ``i_sb``, ``i_w``, ``i_x`` not valid, ``o`` not ready).
    """
    p = params
    ev = crossbar.events(p.in_features, p.out_features,
                         mxop.MXOPFormat(block=p.block, outliers=p.outliers, bits=p.act_bits),
                         p.tile, vectors)
    nseg = p.in_features // p.seg
    spb = p.fmt.block // p.seg
    k = p.fmt.outliers
    tile_prog = p.rows * ROW_PROGRAM
    per_group = (nseg * (SEG_START + p.pulses * (p.rows + PULSE))
                 + p.nblocks * (k * ((spb - 1) * OUTLIER_SKIP + OUTLIER_READ) + BLOCK_FINISH))
    per_vector = 1 + p.in_features + p.groups * per_group + p.out_features * CONVERT
    if not p.resident:
        per_vector += p.tiles_needed * (tile_prog + TILE_RELOAD)
    per_job = 1 + p.out_features + vectors * per_vector + 1
    if p.resident:
        per_job += p.tiles_needed * tile_prog
    out = {"cycles": jobs * per_job}
    for name in ("adc", "dac", "cell_writes", "reprogram_writes", "fp_ops"):
        out[name] = jobs * ev[name]
    return out
