"""Golden model of the crossbar controller: one linear layer on crossbar tiles, and its counters.

The numerics are ``sim.crossbar.linear`` (the controller adds no rounding of its own). This
module fixes the controller's parameters, the order of its input and output beats, the
tile-parallel schedule and the exact counts of ``hw/crossbar_ctrl.py`` (``counters``): chip
cycles per the macro contract and every analog and digital event, which the cocotb
regression and ``scripts/bench_crossbar.py`` compare with the counter ports of the RTL.

Layer job protocol (one ``i_layer`` beat each): ``vectors`` V and the job's inlier width
``act_bits`` (2..``params.act_bits``); then N ``i_sb`` beats (scale, bias per output
channel); then the weights, one ``i_w`` beat per tile row in the order ``for g in groups:
for t in row_tiles: for r in rows`` (channel ``j`` of the beat is output channel
``g * channels + j``, row ``t * rows + r``; rows >= K and channels >= N are 0); then V
vectors of K ``i_x`` element beats (MX-OP elements as ``hw/mxq.py`` emits them, encoded with
the job's ``act_bits``) and N bf16 ``o`` beats each. When the layer needs more tiles than
``tiles``, the weights are not loaded up front: the full weight sequence is sent again for
every vector, and the layer runs in waves of ``tiles`` tiles, each wave programmed just
before it runs (``reprogram_writes``).

Schedule (docs/crossbar.md, "Tile-parallel schedule"): per vector, the input beats (K
cycles), then the core: every tile of the layer (of the wave) runs the same pulse trains at
the same time, ``phases`` segment phases of ``P + k`` macro operations each (``P`` pulses of
the job's digits, ``k`` one-hot outlier row reads), each ``pulse_cycles`` long, plus the
periphery's ``tail``; then the N output conversions through a pipeline of ``OUT_DEPTH``.
"""

import dataclasses
from dataclasses import dataclass

import numpy as np

from . import crossbar, faults, mxop
from .params import check_int

__all__ = ["CrossbarCtrlParams", "PRESETS", "DEFAULT", "counters", "weight_rows", "run",
           "programmed", "slot_fault_map", "FRAC_BITS", "COUNTERS", "FAULT_COUNTERS",
           "OUT_DEPTH", "PERIPHERY_CYCLES"]

FRAC_BITS = 16

OUT_DEPTH = 10
"""Pipeline stages of the output conversion: accumulator read, channel select, the seven of
``affine_round``, the output register."""

PERIPHERY_CYCLES = 4
"""The chip's digital periphery behind the last ADC code of a vector: shift-add, offset
correction and alignment, accumulation, accumulator write; the reduction across row tiles
adds ``ceil(log2(row_tiles))`` adder-tree levels (``CrossbarCtrlParams.tail``)."""

COUNTERS = ("cycles", "tile_pulses", "adc_conversions", "dac_pulses", "cell_reads",
            "outlier_reads", "fp_lane_ops", "out_conversions", "cell_writes",
            "reprogram_writes", "verify_reads")
"""The counter ports of ``hw.crossbar_ctrl.CrossbarCtrl`` that ``counters`` predicts (besides
these the RTL reports ``emu_stall`` and ``emu_ahead``, how far the emulation fell behind and
ran ahead of the contract)."""

FAULT_COUNTERS = ("stuck_detected", "faulty_columns", "repaired_columns")
"""The counter ports a controller with ``faults`` adds, equal to ``sim.faults.program``'s
counts of each programming: cells that failed verify after the retries (spares included),
columns with such a cell, columns rebuilt in a spare."""


@dataclass(frozen=True, kw_only=True)
class CrossbarCtrlParams:
    """Parameters of the crossbar controller (one K x N layer on crossbar tiles).

    in_features, out_features : K (a multiple of the MX-OP block) and N, 1..8192.
    block, outliers, act_bits : the MX-OP input format (``block`` a power of two, 2..1024;
        used as ``min(block, K)``), see ``sim.mxop.MXOPFormat``. ``act_bits`` is the widest
        inlier; each job gives its own width, 2..act_bits.
    rows, cols, cell_bits, adc_bits, dac_bits, weight_bits, tiles : the tiles, see
        ``sim.crossbar.CrossbarParams``.
    cols_per_adc, t_read, t_adc, t_write : the macro contract, see
        ``sim.crossbar.CrossbarParams`` (cycles of the digital clock).
    faults : stuck cells, program-verify retries and spare columns of the tiles
        (``sim.faults.CellFaults``, no drift; None = fault-free tiles, no repair logic). The
        layer must be resident: the faults belong to the physical tiles, drawn as
        ``sim.faults.fault_map`` draws them for the layer (``slot_fault_map``).
    banks : weight sets the tiles hold, 1..64 (more than 1: a resident layer without
        ``faults``). Bank ``b`` is its own ``tiles_needed`` tiles (physical tiles
        ``b * tiles_needed`` on); a job names its bank and may ``keep`` the weights the bank
        already holds (no programming), so several layers stay programmed at once.
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
    cols_per_adc: int = 8
    t_read: int = 10
    t_adc: int = 1
    t_write: int = 50
    faults: object = None
    banks: int = 1

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
        if self.faults is not None:
            if self.faults.drift:
                raise ValueError(f"faults.drift must be 0 in the controller (drift is "
                                 f"modelled in the golden model only), not {self.faults.drift!r}")
            if not self.resident:
                raise ValueError(f"faults need a resident layer: tiles must be at least "
                                 f"{self.tiles_needed}, not {self.tiles}")
        check_int("banks", self.banks, 1, 64)
        if self.banks > 1 and not self.resident:
            raise ValueError(f"banks > 1 needs a resident layer: tiles must be at least "
                             f"{self.tiles_needed}, not {self.tiles}")
        if self.banks > 1 and self.faults is not None:
            raise ValueError(f"banks must be 1 with faults (the fault map covers one bank), "
                             f"not {self.banks}")

    @property
    def tile(self):
        """The tile parameters (``tiles`` physical tiles)."""
        return crossbar.CrossbarParams(
            rows=self.rows, cols=self.cols, cell_bits=self.cell_bits, adc_bits=self.adc_bits,
            dac_bits=self.dac_bits, weight_bits=self.weight_bits, tiles=self.tiles,
            act_bits=self.act_bits, cols_per_adc=self.cols_per_adc, t_read=self.t_read,
            t_adc=self.t_adc, t_write=self.t_write, faults=self.faults)

    def format(self, act_bits=None):
        """The MX-OP format of a job's input vectors (block ``min(block, K)``)."""
        return mxop.MXOPFormat(block=self.block, outliers=self.outliers,
                               bits=self.job_bits(act_bits)).for_length(self.in_features)

    @property
    def fmt(self):
        """The input format at the widest inliers (``format(act_bits)``)."""
        return self.format()

    def job_bits(self, act_bits=None):
        """A job's inlier width: ``act_bits`` checked against 2..params.act_bits."""
        if act_bits is None:
            return self.act_bits
        check_int("act_bits", act_bits, 2, self.act_bits)
        return act_bits

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
    def physical(self):
        """Physical tiles in use: ``min(tiles, tiles_needed)``."""
        return min(self.tiles, self.tiles_needed)

    @property
    def waves(self):
        """Tile waves per vector: 1 when resident, else ``ceil(tiles_needed / tiles)``."""
        return -(-self.tiles_needed // self.physical)

    @property
    def seg(self):
        """Rows of one segment (one tile's rows within one block)."""
        return min(self.fmt.block, self.rows)

    @property
    def segments(self):
        """Segments of the input vector, ``K / seg``."""
        return self.in_features // self.seg

    @property
    def phases(self):
        """Segment phases of the tile-parallel schedule: the most segments one tile holds,
        ``min(rows / seg, segments)`` (a pulse drives one segment, so that no analog sum
        mixes two block exponents)."""
        return min(self.rows // self.seg, self.segments)

    @property
    def nblocks(self):
        return self.in_features // self.fmt.block

    def pulses(self, act_bits=None):
        """Pulses per inlier of a job: magnitude digits plus the sign pulse."""
        return crossbar.pulses_of(self.job_bits(act_bits), self.dac_bits)

    @property
    def tail(self):
        """Periphery cycles after the last ADC code: ``PERIPHERY_CYCLES`` plus the adder tree
        across row tiles, ``ceil(log2(row_tiles))``."""
        return PERIPHERY_CYCLES + (self.row_tiles - 1).bit_length()

    def core_cycles(self, act_bits=None):
        """Chip cycles of one vector's (one wave's) tile-parallel core: ``phases`` times
        ``pulses + outliers`` macro operations of ``pulse_cycles``, then ``tail``."""
        return (self.phases * (self.pulses(act_bits) + self.fmt.outliers)
                * self.tile.pulse_cycles + self.tail)

    @property
    def row_program_cycles(self):
        """Chip cycles to program one row: the write beat, the rest of the write pulse, the
        verify read (``pulse_cycles``): ``t_write + pulse_cycles + 1``."""
        return self.t_write + self.tile.pulse_cycles + 1


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


def slot_fault_map(params):
    """Stuck levels of the controller's physical tiles: int8 (tiles_needed, rows, cols +
    spares), -1 where the cell is good. Tile slot ``g * row_tiles + t`` (the order the
    weights are programmed in) holds ``sim.faults.fault_map``'s row tile ``t`` of column
    group ``g``, so the RTL's faults are the golden model's."""
    p = params
    fm = faults.fault_map(p.in_features, p.out_features, p.tile, p.faults)
    return fm.transpose(1, 0, 2, 3).reshape(-1, p.rows, p.tile.phys_cols)


def programmed(w_int, params):
    """``(W', counts)``: the weights the tiles hold after programming ``w_int`` with
    program-verify-retry and spare-column repair, and ``sim.faults.program``'s counts (None
    without ``faults``)."""
    if params.faults is None:
        return np.asarray(w_int, dtype=np.int64), None
    return params.faults.weights(w_int, params.tile)


def run(x_bf16, w_int, scale_bf16, bias_bf16, params, *, act_bits=None):
    """Output beats of one layer job: bf16 patterns (V, N) = ``sim.crossbar.linear`` with the
    job's inlier width ``act_bits`` (default ``params.act_bits``), on the weights the tiles
    hold (``programmed``: stuck cells that no spare repaired read their stuck level)."""
    w, _ = programmed(w_int, params)
    return crossbar.linear(x_bf16, w, scale_bf16, bias_bf16, params.format(act_bits),
                           dataclasses.replace(params.tile, faults=None), frac_bits=FRAC_BITS)


def counters(params, vectors, *, act_bits=None, jobs=1, program=None, keep=False):
    """Counter values of ``jobs`` layer jobs of ``vectors`` vectors each (exact, as the RTL).
    ``keep``: the jobs keep the weights their bank holds (resident layers; no programming).

    ``cycles`` is chip time per the macro contract: the clock cycles of the digital side,
    without those spent waiting on a stream handshake (``i_layer``, ``i_sb``, ``i_w``, ``i_x``
    not valid, ``o`` not ready), each tile operation counted at its contract time however long
    the emulation took (the RTL's ``emu_stall`` and ``emu_ahead`` hold the difference). Per
    job::

        1 + N + [resident, not keep] tiles_needed * rows * row_program_cycles
          + V * (1 + K + waves * core_cycles + [not resident] tiles_needed * rows *
                 row_program_cycles + N + OUT_DEPTH) + 1

    Events: ``tile_pulses`` (one per tile, segment and input digit), ``adc_conversions``
    (``cols`` per tile pulse and per outlier read), ``dac_pulses`` (the ``seg`` rows a tile
    pulse drives; one per outlier read), ``cell_reads`` (cells on driven rows),
    ``outlier_reads`` (one-hot row reads, one per outlier and column group),
    ``fp_lane_ops`` (``channels`` FP-lane multiplies per outlier read), ``out_conversions``
    (N per vector), ``cell_writes`` (``cols`` per programmed row; resident layers),
    ``reprogram_writes`` (the same while running vectors; non-resident layers),
    ``verify_reads`` (one read-back per programmed row).

    With ``faults``, ``program`` is the job's programming (``programmed(w, params)[1]``):
    every row whose read-back differs is written again, at most ``retries`` times in all
    (the cells that failed, ``cell_writes``; each attempt ``row_program_cycles``); then each
    spare column tried is programmed over the tile's rows (one cell per row), after one
    cycle choosing it; one more such cycle per tile ends its repair. The counts add
    ``FAULT_COUNTERS``, and ``verify_errors``: rows whose last read-back differed.
    """
    p = params
    check_int("vectors", vectors, 0, (1 << 24) - 1)
    a = p.job_bits(act_bits)
    k = p.fmt.outliers
    v = vectors
    if keep and not p.resident:
        raise ValueError("keep needs a resident layer (the tiles hold the whole layer)")
    rows_programmed = 0 if keep else p.tiles_needed * p.rows
    per_vector = 1 + p.in_features + p.waves * p.core_cycles(a) + p.out_features + OUT_DEPTH
    if not p.resident:
        per_vector += rows_programmed * p.row_program_cycles
    per_job = 1 + p.out_features + v * per_vector + 1
    if p.resident:
        per_job += rows_programmed * p.row_program_cycles
    pulses = v * p.groups * p.segments * p.pulses(a)
    reads = v * p.groups * p.nblocks * k
    out = {
        "cycles": per_job,
        "tile_pulses": pulses,
        "adc_conversions": p.cols * (pulses + reads),
        "dac_pulses": p.seg * pulses + reads,
        "cell_reads": p.cols * (p.seg * pulses + reads),
        "outlier_reads": reads,
        "fp_lane_ops": p.channels * reads,
        "out_conversions": v * p.out_features,
        "cell_writes": p.cols * rows_programmed if p.resident else 0,
        "reprogram_writes": 0 if p.resident else v * p.cols * rows_programmed,
        "verify_reads": rows_programmed * (1 if p.resident else v),
    }
    if p.faults is not None:
        c = (None if keep else program) or dict.fromkeys(
            ("bad_rows", "spare_trials", "spare_failed", "stuck_detected", "faulty_columns",
             "repaired_columns"), 0)
        again = p.faults.retries - 1
        failed_rows = c["bad_rows"] + c["spare_failed"]
        extra_rows = again * failed_rows + c["spare_trials"] * p.rows
        out["cycles"] += (extra_rows * p.row_program_cycles
                          + (p.tiles_needed + c["spare_trials"]
                             if p.faults.spares and not keep else 0))
        out["cell_writes"] += again * c["stuck_detected"] + c["spare_trials"] * p.rows
        out["verify_reads"] += extra_rows
        out.update({name: c[name] for name in FAULT_COUNTERS}, verify_errors=failed_rows)
    return {name: jobs * val for name, val in out.items()}
