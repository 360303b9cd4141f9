"""Crossbar cell faults in the golden model (sim/faults.py): stuck cells, spares, drift."""

import dataclasses

import numpy as np
import pytest

from sim import bf16, crossbar, mxop
from sim.faults import MNSIM_HIGH_SHARE, CellFaults, fault_map, program

P = dataclasses.replace(crossbar.PRESETS["tiny"], seed=5)        # 64 x 64 tiles, 2-bit cells
K, N = 192, 40                                                    # 3 row tiles, 3 column groups
FMT = mxop.MXOPFormat(block=64, outliers=2, bits=5)


@pytest.fixture(scope="module")
def layer():
    rng = np.random.default_rng(7)
    w = rng.integers(-128, 128, (K, N))
    x = bf16.from_float32(rng.standard_normal((6, K)).astype(np.float32))
    scale = bf16.from_float32(np.full(N, 0.01, np.float32))
    bias = bf16.from_float32(rng.standard_normal(N).astype(np.float32))
    return x, w, scale, bias, crossbar.linear(x, w, scale, bias, FMT, P)


def _run(layer, faults):
    x, w, scale, bias, _ = layer
    w2, counts = faults.weights(w, P)
    return crossbar.linear(x, w2, scale, bias, FMT, dataclasses.replace(P, faults=faults)), counts


def test_mnsim_split():
    assert MNSIM_HIGH_SHARE == 0.1 and CellFaults().high_share == 0.1


@pytest.mark.parametrize("seed", range(4))
def test_bit_exact_while_spares_cover_the_faulty_columns(layer, seed):
    """Every tile's faulty columns remapped to verified spares: outputs equal the clean ones."""
    f = CellFaults(stuck_rate=0.002, spares=16, seed=seed)
    out, c = _run(layer, f)
    assert c["faulty_columns"] > 0 and c["unrepaired_columns"] == 0
    assert c["worst_tile_columns"] <= f.spares
    assert np.array_equal(out, layer[-1])


def test_beyond_the_spares_results_change(layer):
    out, c = _run(layer, CellFaults(stuck_rate=0.003, spares=1, seed=1))
    assert c["unrepaired_columns"] > 0
    assert np.count_nonzero(out != layer[-1]) > 0


def test_detection_counts_equal_the_injected_faults():
    """Count, cell by cell, the stuck cells whose level differs from what is written: the
    controller's detected count (spares 0) is exactly that; stuck cells that happen to hold
    the written level are harmless and undetectable."""
    rng = np.random.default_rng(3)
    w = rng.integers(-128, 128, (K, N))
    f = CellFaults(stuck_rate=0.02, seed=9)
    cells = crossbar.bit_slices(w, P)
    fm = fault_map(K, N, P, f)
    ch, sl = P.channels, P.slices
    injected = harmful = 0
    for a, b, r, col in zip(*np.nonzero(fm >= 0)):
        injected += 1
        k, j, s = a * P.rows + r, b * ch + col // sl, col % sl
        target = cells[s, k, j] if k < K and j < N and col < ch * sl else 0
        harmful += int(fm[a, b, r, col] != target)
    read, c = program(cells, P, f)
    assert c["stuck_injected"] == injected
    assert c["stuck_detected"] == harmful > 0
    assert np.count_nonzero(read != cells) <= harmful
    assert c["verify_writes"] == 3 * 3 * P.rows * P.cols + harmful * (f.retries - 1)


def test_stuck_cells_read_their_stuck_level():
    """The faulty weights hold, in every stuck cell of a used position, the stuck level."""
    rng = np.random.default_rng(4)
    w = rng.integers(-128, 128, (K, N))
    f = CellFaults(stuck_rate=0.05, high_share=0.5, seed=2)
    w2, _ = f.weights(w, P)
    got = crossbar.bit_slices(w2, P)
    fm = fault_map(K, N, P, f)
    checked = 0
    for a, b, r, col in zip(*np.nonzero(fm >= 0)):
        k, j, s = a * P.rows + r, b * P.channels + col // P.slices, col % P.slices
        if k < K and j < N:
            assert got[s, k, j] == fm[a, b, r, col]
            checked += 1
    assert checked > 50


def test_same_main_faults_for_any_number_of_spares():
    a = fault_map(K, N, P, CellFaults(stuck_rate=0.01, seed=1))
    b = fault_map(K, N, P, CellFaults(stuck_rate=0.01, spares=5, seed=1))
    assert np.array_equal(a, b[..., :P.cols])


def test_drift_lowers_levels_and_changes_results(layer):
    x, w, scale, bias, ref = layer
    f = CellFaults(drift=0.05)
    cells = crossbar.bit_slices(w, P).astype(np.float64)
    d = f.apply(cells, P)
    assert np.all(d <= cells) and np.all(d >= 0) and np.any(d < cells)
    assert np.array_equal(CellFaults().apply(cells, P), cells)
    out = crossbar.linear(x, w, scale, bias, FMT, dataclasses.replace(P, faults=f))
    assert np.count_nonzero(out != ref) > 0


def test_no_faults_is_the_clean_array(layer):
    out, c = _run(layer, CellFaults())
    assert np.array_equal(out, layer[-1]) and c["stuck_detected"] == 0


@pytest.mark.parametrize("field, value, message", [
    ("stuck_rate", 1.5, r"stuck_rate must be a number in 0\.\.1, not 1\.5"),
    ("drift", -0.1, r"drift must be a number in 0\.\.1, not -0\.1"),
    ("high_share", True, r"high_share must be a number in 0\.\.1, not True"),
    ("spares", 65, r"spares must be an integer in 0\.\.64, not 65"),
    ("retries", 0, r"retries must be an integer in 1\.\.16, not 0"),
])
def test_params_rejects_out_of_range(field, value, message):
    with pytest.raises(ValueError, match=message):
        CellFaults(**{field: value})


def test_crossbar_params_reject_a_non_fault_object():
    with pytest.raises(ValueError, match="faults must be None or a sim.faults.CellFaults"):
        dataclasses.replace(P, faults="stuck")


def test_stuck_cells_need_whole_slices():
    p = dataclasses.replace(P, weight_bits=5)           # 3 slices of 2 bits: the top one is half used
    w = np.full((64, 8), 15)
    f = CellFaults(stuck_rate=1.0, high_share=1.0)
    with pytest.raises(ValueError, match=r"weight_bits \(5\) to be a multiple of cell_bits"):
        f.weights(w, p)


def test_tiles_are_programmed_whole_with_weight_zero_padding():
    """Rows and channels past the layer hold weight 0 (what the controller writes), so their
    stuck cells fail verify too: all-zero weights on cells all stuck at level 0 fail in every
    top slice (weight 0 is U = 128: level 2 there, 0 below)."""
    f = CellFaults(stuck_rate=1.0, high_share=0.0)
    _, c = f.weights(np.zeros((K, N), dtype=np.int64), P)
    tiles = 3 * 3                                     # N = 40 fills 3 groups of 16 channels
    assert c["stuck_detected"] == tiles * P.rows * P.channels
    assert c["bad_rows"] == tiles * P.rows and c["faulty_columns"] == tiles * P.channels
    assert c["spare_trials"] == c["spare_failed"] == 0
