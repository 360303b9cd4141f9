"""Crossbar cell faults for the golden model: stuck-at cells, conductance drift, spare columns.

A ``CellFaults`` object in ``CrossbarParams.faults`` describes the faults of every array that
holds a layer; ``sim.quant`` applies it to each (layer, linear):

- **stuck-at**: each physical cell is stuck with probability ``stuck_rate``, at the high-
  resistance state (reads as level 0) or, with probability ``high_share``, at the low-
  resistance state (reads as level ``2**cell_bits - 1``). MNSIM 2.0's default device is
  ``Device_SAF = 9,1`` ("X% of Stuck-At-HRS and Stuck-At-LRS", SimConfig.ini of
  thu-nics/MNSIM-2.0): a 9 : 1 split, so ``high_share = 0.1``, and its default total rate is
  10%. A stuck cell changes what the array stores, so its effect is exactly a changed integer
  weight: ``weights`` returns ``W' = sum_s 2**(s*cell_bits) * read_s - offset`` from the
  cells as read, which both the bit-serial inlier path and the one-hot outlier row reads see.
- **drift** (``drift``): every programmed level ``v`` decays to ``v * (1 - d)``, ``d`` drawn
  per cell from ``drift * (1 + drift_spread * N(0, 1))`` clipped to 0..1 (the mean relative
  conductance loss since programming); the ADC then rounds the column sums (RNE), as with
  ``noise``. Drift is modelled in the golden model only, on the inlier path
  (``sim.crossbar.inlier_terms`` calls ``apply``); the one-hot read of an outlier's row
  converts one cell per column, which rounds back to the programmed level while
  ``level * loss < 1/2`` (a loss below 1/6 for 2-bit cells), so it stays exact.
- **spare columns** (``spares`` per tile, docs/reliability.md): programming writes every
  cell and reads it back (program-verify); a cell whose read differs from its target after
  the retries is detected as stuck, and its whole column is rebuilt in the next spare column
  of the tile that verifies. Up to ``spares`` faulty columns per tile the array is bit-exact;
  beyond that (or when spares are faulty too) the remaining faulty columns read as stuck.
  Drift develops after programming and is not repaired.

Fault maps are drawn per physical array (row tile x column group, ``rows`` x ``cols +
spares`` cells) from ``seed`` and the array's own seed (``CrossbarParams.seed``, which
``sim.quant`` derives per layer and linear), so each programmed array has fixed faults, the
same for every batch.
"""

from dataclasses import dataclass

import numpy as np

from .params import check_int

__all__ = ["CellFaults", "MNSIM_STUCK_RATE", "MNSIM_HIGH_SHARE", "fault_map", "tile_fault_map",
           "stuck", "program"]

MNSIM_STUCK_RATE = 0.10     # MNSIM 2.0 SimConfig.ini: Device_SAF = 9,1 (percent HRS, LRS)
MNSIM_HIGH_SHARE = 0.10     # of the stuck cells, the share stuck at LRS (1 of 9 + 1)


def _check_fraction(name, v):
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not 0 <= v <= 1:
        raise ValueError(f"{name} must be a number in 0..1, not {v!r}")


@dataclass(frozen=True, kw_only=True)
class CellFaults:
    """Faults of the crossbar cells (golden model).

    stuck_rate : fraction of cells stuck, 0..1.
    high_share : share of the stuck cells stuck at the low-resistance state (top level), 0..1.
    drift : mean relative conductance loss of a programmed cell, 0..1.
    drift_spread : relative standard deviation of the per-cell loss, 0..1.
    spares : spare columns per tile, 0..64.
    retries : program-verify attempts per cell before it counts as stuck, 1..16 (a stuck cell
        never verifies; the count only sets the programming pulses, ``program``).
    seed : seed of the fault draw, combined with each array's own seed.
    """

    stuck_rate: float = 0.0
    high_share: float = MNSIM_HIGH_SHARE
    drift: float = 0.0
    drift_spread: float = 0.5
    spares: int = 0
    retries: int = 4
    seed: int = 0

    def __post_init__(self):
        for name in ("stuck_rate", "high_share", "drift", "drift_spread"):
            _check_fraction(name, getattr(self, name))
        check_int("spares", self.spares, 0, 64)
        check_int("retries", self.retries, 1, 16)
        check_int("seed", self.seed, 0, 2**32 - 1)

    def weights(self, w_int, params):
        """``(W', counts)``: the weights the arrays hold after programming with stuck cells
        and spare-column repair (``program``), as signed integers like ``w_int`` (K, N)."""
        from .crossbar import bit_slices
        k, n = np.shape(w_int)
        # the arrays are programmed in whole tiles: rows and channels past the layer hold
        # weight 0 (``sim.crossbar_ctrl.weight_rows``), whose cells take part in verify
        full = np.zeros((-(-k // params.rows) * params.rows,
                         -(-n // params.channels) * params.channels), dtype=np.int64)
        full[:k, :n] = w_int
        read, counts = program(bit_slices(full, params), params, self)
        u = sum(read[s, :k, :n].astype(np.int64) << (s * params.cell_bits)
                for s in range(params.slices))
        w = u - params.offset
        lo, hi = -(1 << (params.weight_bits - 1)), (1 << (params.weight_bits - 1)) - 1
        if w.size and (w.min() < lo or w.max() > hi):
            raise ValueError(f"stuck cells need weight_bits ({params.weight_bits}) to be a "
                             f"multiple of cell_bits ({params.cell_bits})")
        return w, counts

    def apply(self, cells, params):
        """Drifted cells (``sim.crossbar.inlier_terms``'s hook): (slices, nseg, seg, N) float."""
        if not self.drift:
            return cells
        rng = np.random.default_rng([self.seed, params.seed, 1])
        d = self.drift * (1 + self.drift_spread * rng.standard_normal(np.shape(cells)))
        return cells * (1 - np.clip(d, 0, 1))


def fault_map(k, n, params, faults):
    """Stuck levels of every physical cell of the arrays holding a K x N layer.

    Returns int8 (row_tiles, col_groups, rows, cols + spares): -1 where the cell is good, else
    the level it is stuck at (0 or ``2**cell_bits - 1``).
    """
    rt, cg = -(-k // params.rows), -(-n // params.channels)
    top = (1 << params.cell_bits) - 1
    maps = []
    # main and spare columns from separate streams: the same main faults for any ``spares``
    for part, width in ((0, params.cols), (2, faults.spares)):
        rng = np.random.default_rng([faults.seed, params.seed, part])
        shape = (rt, cg, params.rows, width)
        stuck = rng.random(shape) < faults.stuck_rate
        high = rng.random(shape) < faults.high_share
        maps.append(np.where(stuck, np.where(high, top, 0), -1).astype(np.int8))
    return np.concatenate(maps, axis=3)


def tile_fault_map(params):
    """Stuck levels of the ``tiles`` tiles of ``params`` (``params.faults``): int8 (tiles,
    rows, cols + spares), -1 where the cell is good. The tiles are taken to hold row tiles
    0..tiles-1 of one column group, so tile ``i`` has ``fault_map``'s faults at ``[i, 0]``
    (the tile emulation of ``hw/crossbar.py`` injects them)."""
    return fault_map(params.tiles * params.rows, params.channels, params, params.faults)[:, 0]


def stuck(cells, fmap):
    """The levels ``cells`` read as: the stuck level where ``fmap`` >= 0, else the cell."""
    return np.where(fmap >= 0, fmap, cells)


def program(target, params, faults):
    """Program and verify one layer's cells; return ``(read, counts)``.

    ``target`` (slices, K, N): the levels to write (``sim.crossbar.bit_slices``). ``read``:
    the levels the array returns (stuck cells after spare-column repair), same shape.
    ``counts``: ``stuck_detected`` (cells that failed verify, spares included),
    ``faulty_columns`` (before repair), ``repaired_columns``, ``unrepaired_columns``,
    ``worst_tile_columns`` (most faulty columns of one tile), ``verify_writes`` (write
    pulses: 1 per good cell, ``retries`` per stuck one), and what the controller's schedule
    depends on (``sim.crossbar_ctrl.counters``): ``bad_rows`` (tile rows with a cell that
    failed verify, before repair), ``spare_trials`` (spare columns programmed, each over the
    tile's rows), ``spare_failed`` (spare cells that failed verify, one per row of a trial).
    """
    s_n, k, n = target.shape
    rows, ch, cols = params.rows, params.channels, params.cols
    fm = fault_map(k, n, params, faults)
    rt, cg = fm.shape[:2]
    # lay the target out as the physical tiles: (rt, cg, rows, cols), zero-padded
    phys = np.zeros((rt, cg, rows, cols), dtype=np.int64)
    t = np.zeros((s_n, rt * rows, cg * ch), dtype=np.int64)
    t[:, :k, :n] = target
    # physical column of (channel j, slice s) = j * slices + s
    t = t.reshape(s_n, rt, rows, cg, ch).transpose(1, 3, 2, 4, 0)      # rt, cg, rows, ch, s
    phys[..., :ch * s_n] = t.reshape(rt, cg, rows, ch * s_n)
    main, spare = fm[..., :cols], fm[..., cols:]
    bad = (main >= 0) & (main != phys)                    # cells that fail verify
    col_bad = bad.any(axis=2)                             # (rt, cg, cols)
    read = np.where(main >= 0, main, phys)
    repaired = np.zeros_like(col_bad)
    spare_bad = trials = 0
    for a in range(rt):
        for b in range(cg):
            free = list(range(faults.spares))
            for c in np.flatnonzero(col_bad[a, b]):
                while free:
                    sp = spare[a, b, :, free.pop(0)]
                    trials += 1
                    fails = (sp >= 0) & (sp != phys[a, b, :, c])
                    spare_bad += int(fails.sum())
                    if not fails.any():
                        read[a, b, :, c] = phys[a, b, :, c]
                        repaired[a, b, c] = True
                        break
    out = read[..., :ch * s_n].reshape(rt, cg, rows, ch, s_n).transpose(4, 0, 2, 1, 3)
    out = out.reshape(s_n, rt * rows, cg * ch)[:, :k, :n]
    n_bad = int(bad.sum())
    counts = {
        "stuck_injected": int((fm >= 0).sum()),
        "stuck_detected": n_bad + spare_bad,
        "faulty_columns": int(col_bad.sum()),
        "repaired_columns": int(repaired.sum()),
        "unrepaired_columns": int((col_bad & ~repaired).sum()),
        "worst_tile_columns": int(col_bad.sum(axis=2).max()) if col_bad.size else 0,
        "verify_writes": int(phys.size + n_bad * (faults.retries - 1)),
        "bad_rows": int(bad.any(axis=3).sum()),
        "spare_trials": trials,
        "spare_failed": spare_bad,
    }
    return out, counts
