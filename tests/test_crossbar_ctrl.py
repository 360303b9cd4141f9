"""crossbar_ctrl: golden and counter-model tests, parameter validation, cocotb regression.

The regression checks every output bit against ``sim.crossbar_ctrl.run`` and every counter
against ``sim.crossbar_ctrl.counters`` under random stalls, for configurations that cover
ADC sharing, a macro far slower than the emulation, clipping ADCs, block < rows, non-resident
layers (waves) and per-job inlier widths.
"""

import dataclasses
import os
import time

import numpy as np
import pytest

from sim import bf16, crossbar, mxop
from gen.harness import regress
from sim.crossbar_ctrl import (COUNTERS, FAULT_COUNTERS, OUT_DEPTH, PRESETS,
                               CrossbarCtrlParams, counters, programmed, run, slot_fault_map,
                               weight_rows)
from sim.faults import CellFaults

# ---------------------------------------------------------------- stimulus (shared) ----


def random_vectors(rng, m, k):
    """Random bf16 rows (m, k): normal values at mixed scales, sparse rows, outlier spikes."""
    scale = np.exp2(rng.integers(-12, 12, size=(m, 1))).astype(np.float32)
    x = rng.standard_normal((m, k)).astype(np.float32) * scale
    kind = rng.integers(0, 6, size=(m, 1))
    big = rng.random((m, k)) < 0.03
    x = np.where((kind == 1) & big, x * np.exp2(rng.integers(3, 12, size=(m, k))), x)
    x = np.where((kind == 2) & (rng.random((m, k)) < 0.8), 0, x)
    x = np.where(kind == 3, np.abs(x), x)
    x = np.where(kind == 4, -np.abs(x), x)
    return bf16.from_float32(x)


def random_layer(rng, p, kind="random"):
    """Weights (K, N), scale and bias (N,) bf16 for a layer of ``p``."""
    k, n, wb = p.in_features, p.out_features, p.weight_bits
    lo, hi = -(1 << (wb - 1)), (1 << (wb - 1)) - 1
    if kind == "max":
        w = np.where(rng.random((k, n)) < 0.5, lo, hi)
    elif kind == "negative":
        w = rng.integers(lo, 0, size=(k, n))
    else:
        w = rng.integers(lo, hi + 1, size=(k, n))
    scale = bf16.from_float32((rng.random(n) * 0.03 + 1e-3).astype(np.float32)
                              * np.exp2(rng.integers(-8, 8, size=n)).astype(np.float32))
    bias = bf16.from_float32((rng.standard_normal(n) * 0.5).astype(np.float32))
    return w, scale, bias


def faulty_weights(rng, p, faulty):
    """Weights (K, N) whose cells make exactly ``faulty(t)`` columns of tile slot ``t`` fail
    verify (the lowest columns with a stuck cell; ``None``: every column with one): their
    stuck cells get a target other than the stuck level, every other stuck cell its stuck
    level. The first faulty column of a tile also differs from the tile's stuck spare cells,
    so a spare that is tried for it fails. Needs K and N to fill the tiles."""
    fm = slot_fault_map(p)
    R, C, RT, S, c = p.rows, p.cols, p.row_tiles, p.tile.slices, p.cell_bits
    top = (1 << c) - 1
    cells = rng.integers(0, top + 1, size=(S, p.in_features, p.out_features))
    for slot, tmap in enumerate(fm):
        t, g = slot % RT, slot // RT
        cols = np.flatnonzero((tmap[:, :C] >= 0).any(axis=0))
        bad = cols if faulty(slot) is None else cols[:faulty(slot)]
        for col in cols:
            for r in np.flatnonzero(tmap[:, col] >= 0):
                level = tmap[r, col]
                cells[col % S, t * R + r, g * p.channels + col // S] = \
                    top - level if col in bad else level
        if len(bad):
            for r, level in zip(*np.nonzero(tmap[:, C:] >= 0)):
                if r not in np.flatnonzero(tmap[:, bad[0]] >= 0):
                    cells[bad[0] % S, t * R + r, g * p.channels + bad[0] // S] = \
                        top - tmap[r, C + level]
    u = sum(cells[s].astype(np.int64) << (s * c) for s in range(S))
    return u - p.tile.offset


def corner_vectors(p):
    """Zero, all-negative, all-outlier blocks (only k nonzero per block), specials."""
    k, b = p.in_features, p.fmt.block
    rows = [np.zeros(k), -np.ones(k) * 3.5, np.full(k, 448.0), np.full(k, -2.0 ** -100)]
    spiky = np.zeros(k)
    for blk in range(k // b):
        spiky[blk * b:blk * b + p.fmt.outliers] = [(-1) ** i * 2.0 ** (i + 3)
                                                   for i in range(p.fmt.outliers)]
    rows.append(spiky)
    alt = np.where(np.arange(k) % 2, 1.0, -1.0) * 2.0 ** 20
    rows.append(alt)
    x = bf16.from_float32(np.array(rows, dtype=np.float32))
    nanrow = x[1].copy()
    nanrow[k // 2] = bf16.NAN
    infrow = x[2].copy()
    infrow[1] = bf16.NEG_INF
    return np.vstack([x, nanrow[None], infrow[None]])


def x_fields(x, p, act_bits=None):
    """Element-beat fields of MX-OP rows ``x`` (M, K), flattened in stream order."""
    enc = mxop.encode(x, p.format(act_bits))
    m, nb, b = enc.q.shape
    outl = np.zeros(enc.q.shape, dtype=bool)
    val = np.zeros(enc.q.shape, dtype=np.int64)
    if p.fmt.outliers:
        np.put_along_axis(outl, enc.out_idx.astype(np.int64), True, axis=-1)
        np.put_along_axis(val, enc.out_idx.astype(np.int64), enc.out_val.astype(np.int64),
                          axis=-1)
    exp = np.broadcast_to(enc.exp[..., None], enc.q.shape)
    return {"q": enc.q.ravel(), "outlier": outl.ravel(), "value": val.ravel(),
            "exp": exp.ravel()}


# ---------------------------------------------------------------- golden / params ------

def test_weight_rows_order():
    p = CrossbarCtrlParams(in_features=128, out_features=40, block=64, rows=64, cols=64,
                           tiles=6)
    w = np.arange(128 * 40).reshape(128, 40) % 97 - 48
    rows = weight_rows(w, p)
    assert rows.shape == (p.groups * p.row_tiles * p.rows, p.channels)
    # group 1, row tile 1, row 5 holds W[64 + 5, 16:32]
    np.testing.assert_array_equal(rows[(1 * 2 + 1) * 64 + 5], w[69, 16:32])
    np.testing.assert_array_equal(rows[(2 * 2) * 64 + 3, :8], w[3, 32:40])
    assert not rows[(2 * 2) * 64 + 3, 8:].any()


def test_run_is_crossbar_linear_at_the_job_width():
    rng = np.random.default_rng(3)
    p = CrossbarCtrlParams(in_features=128, out_features=24, block=64, rows=64, cols=64,
                           adc_bits=5, tiles=8)
    x = random_vectors(rng, 9, 128)
    w, s, b = random_layer(rng, p)
    np.testing.assert_array_equal(run(x, w, s, b, p),
                                  crossbar.linear(x, w, s, b, mxop.MXOPFormat(block=64), p.tile))
    np.testing.assert_array_equal(run(x, w, s, b, p, act_bits=3),
                                  crossbar.linear(x, w, s, b, mxop.MXOPFormat(block=64, bits=3),
                                                  p.tile))
    with pytest.raises(ValueError, match=r"act_bits must be an integer in 2\.\.5, not 6"):
        run(x, w, s, b, p, act_bits=6)


def test_counters_by_hand():
    """A tiny layer worked out by hand: 2 row tiles x 2 groups, 64 x 64 tiles, block 128 (two
    row tiles per block), 4 outliers, 5-bit inliers, 1-bit DAC, L = 10 + 8 * 1 = 18."""
    p = CrossbarCtrlParams(in_features=128, out_features=32, block=128, rows=64, cols=64,
                           tiles=4)
    assert (p.row_tiles, p.groups, p.channels, p.seg, p.phases) == (2, 2, 16, 64, 1)
    assert p.tile.pulse_cycles == 18 and p.tail == 4 + 1
    assert p.core_cycles() == 1 * (5 + 4) * 18 + 5 == 167
    assert p.row_program_cycles == 50 + 18 + 1
    c = counters(p, 10)
    assert c["cycles"] == (1 + 32 + 4 * 64 * 69 + 10 * (1 + 128 + 167 + 32 + OUT_DEPTH) + 1)
    assert c["tile_pulses"] == 10 * 2 * 2 * 5                # vectors x groups x segments x P
    assert c["outlier_reads"] == 10 * 2 * 1 * 4               # vectors x groups x blocks x k
    assert c["adc_conversions"] == 64 * (200 + 80)
    assert c["dac_pulses"] == 64 * 200 + 80
    assert c["cell_reads"] == 64 * (64 * 200 + 80)
    assert c["fp_lane_ops"] == 16 * 80 and c["out_conversions"] == 320
    assert c["cell_writes"] == 4 * 64 * 64 and c["reprogram_writes"] == 0
    assert c["verify_reads"] == 4 * 64
    assert counters(p, 10, act_bits=3)["tile_pulses"] == 10 * 2 * 2 * 3
    assert counters(p, 10, jobs=3) == {k: 3 * v for k, v in c.items()}
    assert set(c) == set(COUNTERS)


def test_counters_waves_when_not_resident():
    p = CrossbarCtrlParams(in_features=128, out_features=32, block=128, rows=64, cols=64,
                           tiles=3)
    assert not p.resident and p.physical == 3 and p.waves == 2
    q = dataclasses.replace(p, tiles=4)
    c, r = counters(p, 10), counters(q, 10)
    assert c["cell_writes"] == 0 and c["reprogram_writes"] == 10 * 4 * 64 * 64
    assert c["verify_reads"] == 10 * 4 * 64
    # every vector programs all 4 tiles and runs two waves; the job programs nothing
    assert c["cycles"] - r["cycles"] == 10 * (4 * 64 * 69 + 167) - 4 * 64 * 69
    for key in ("tile_pulses", "adc_conversions", "outlier_reads", "fp_lane_ops"):
        assert c[key] == r[key]


def test_counters_keep_programs_nothing():
    """A job that keeps its bank's weights: no writes, no read-backs, no programming time."""
    p = CrossbarCtrlParams(in_features=128, out_features=32, block=128, rows=64, cols=64,
                           tiles=4, banks=6)
    c, k = counters(p, 10), counters(p, 10, keep=True)
    assert k["cell_writes"] == k["verify_reads"] == 0
    assert c["cycles"] - k["cycles"] == 4 * 64 * p.row_program_cycles
    for key in ("tile_pulses", "adc_conversions", "outlier_reads", "out_conversions"):
        assert c[key] == k[key]
    with pytest.raises(ValueError, match="keep needs a resident layer"):
        counters(dataclasses.replace(p, tiles=3, banks=1), 10, keep=True)


def test_params_reject_bad_banks():
    with pytest.raises(ValueError, match=r"banks must be an integer in 1\.\.64, not 0"):
        CrossbarCtrlParams(banks=0)
    with pytest.raises(ValueError, match="banks > 1 needs a resident layer: tiles must be at "
                                         "least 36, not 3"):
        CrossbarCtrlParams(tiles=3, banks=2)
    with pytest.raises(ValueError, match="banks must be 1 with faults"):
        CrossbarCtrlParams(banks=2, faults=CellFaults(stuck_rate=0.01))


def test_counters_block_smaller_than_rows():
    """Block 32 on 128-row tiles: a tile holds 4 segments, pulsed one phase at a time."""
    p = CrossbarCtrlParams(in_features=256, out_features=8, block=32, outliers=2, rows=128,
                           cols=64, tiles=2)
    assert (p.seg, p.segments, p.phases, p.row_tiles) == (32, 8, 4, 2)
    assert p.core_cycles() == 4 * (5 + 2) * 18 + 4 + 1
    q = dataclasses.replace(p, in_features=64)              # one tile, two segments in use
    assert q.phases == 2
    c = counters(p, 1)
    assert c["tile_pulses"] == 1 * 1 * 8 * 5 and c["dac_pulses"] == 32 * 40 + 8 * 2


def test_macro_timing_only_changes_cycles():
    p = CrossbarCtrlParams(in_features=128, out_features=32, rows=64, cols=64, tiles=4)
    slow = dataclasses.replace(p, t_read=100, cols_per_adc=64, t_adc=4)
    a, b = counters(p, 7), counters(slow, 7)
    assert slow.tile.pulse_cycles == 356
    assert {k: v for k, v in a.items() if k != "cycles"} == \
        {k: v for k, v in b.items() if k != "cycles"}
    assert b["cycles"] - a["cycles"] == (7 * 9 + 4 * 64) * (356 - 18)


@pytest.mark.parametrize("field,value,msg", [
    ("in_features", 0, "in_features must be an integer in 1..8192, not 0"),
    ("in_features", 100, "block 100 and rows 128 must divide one another"),
    ("in_features", 200, "in_features must be a multiple of block 128, not 200"),
    ("out_features", 0, "out_features must be an integer in 1..8192, not 0"),
    ("out_features", 9000, "out_features must be an integer in 1..8192"),
    ("block", 96, "block must be a power of two in 2..1024, not 96"),
    ("block", 2048, "block must be a power of two in 2..1024"),
    ("outliers", 17, "outliers must be an integer in 0..16, not 17"),
    ("outliers", -1, "outliers must be an integer in 0..16"),
    ("act_bits", 1, "act_bits must be an integer in 2..8, not 1"),
    ("act_bits", 9, "act_bits must be an integer in 2..8"),
    ("rows", 512, "rows must be a power of two in 64..256, not 512"),
    ("cols", 48, "cols must be a power of two in 64..256, not 48"),
    ("cell_bits", 8, "cell_bits must be one of 1, 2, 4, not 8"),
    ("adc_bits", 20, "adc_bits must be an integer in 1..16, not 20"),
    ("dac_bits", 0, "dac_bits must be an integer in 1..4, not 0"),
    ("weight_bits", 10, "weight_bits must be an integer in 4..8, not 10"),
    ("tiles", 0, "tiles must be an integer in 1..65536, not 0"),
    ("cols_per_adc", 6, "cols_per_adc must be a power of two in 1..128, not 6"),
    ("t_read", 2000, "t_read must be an integer in 1..1024, not 2000"),
    ("t_adc", 0, "t_adc must be an integer in 1..64, not 0"),
    ("t_write", -1, "t_write must be an integer in 1..4096, not -1"),
])
def test_params_rejects_bad_values(field, value, msg):
    with pytest.raises(ValueError, match=msg.replace(".", r"\.")):
        CrossbarCtrlParams(**{field: value})


def test_params_rejects_block_rows_mismatch_and_positional():
    # a block of 32 with 64-row tiles is fine (tiles hold two blocks); K=64, block 64, rows 256
    CrossbarCtrlParams(in_features=64, out_features=8, block=32, rows=64)
    with pytest.raises(TypeError):
        CrossbarCtrlParams(64)                              # keyword-only


def test_counters_reject_bad_job():
    p = CrossbarCtrlParams()
    with pytest.raises(ValueError, match=r"act_bits must be an integer in 2\.\.5, not 8"):
        counters(p, 4, act_bits=8)
    with pytest.raises(ValueError, match=r"vectors must be an integer in 0\.\.16777215"):
        counters(p, -1)


def test_params_reject_faults_with_drift_or_waves():
    with pytest.raises(ValueError, match=r"faults\.drift must be 0 in the controller"):
        CrossbarCtrlParams(faults=CellFaults(drift=0.01))
    with pytest.raises(ValueError, match="faults need a resident layer: tiles must be at "
                                         "least 36, not 3"):
        CrossbarCtrlParams(tiles=3, faults=CellFaults(stuck_rate=0.01))


def test_slot_fault_map_is_the_golden_layer_map():
    """Tile slot ``g * row_tiles + t`` carries ``sim.faults.fault_map``'s row tile t, group g;
    ``programmed`` reads the weights through it."""
    from sim.faults import fault_map
    p = CrossbarCtrlParams(in_features=128, out_features=40, block=64, rows=64, cols=64,
                           tiles=6, faults=CellFaults(stuck_rate=0.05, spares=2, seed=3))
    fm, slots = fault_map(128, 40, p.tile, p.faults), slot_fault_map(p)
    assert slots.shape == (6, 64, 66)
    for t in range(2):
        for g in range(3):
            np.testing.assert_array_equal(slots[g * 2 + t], fm[t, g])
    w = np.random.default_rng(0).integers(-128, 128, (128, 40))
    np.testing.assert_array_equal(programmed(w, p)[0], p.faults.weights(w, p.tile)[0])
    assert programmed(w, dataclasses.replace(p, faults=None))[1] is None


def test_counters_with_faults_by_hand():
    """Retries: ``retries - 1`` more row writes and reads per failed row (one pulse per failed
    cell); each spare tried: one choosing cycle and ``rows`` row programs of one cell; one
    more choosing cycle per tile."""
    p = CrossbarCtrlParams(in_features=128, out_features=16, rows=64, cols=64, tiles=2,
                           faults=CellFaults(stuck_rate=0.01, spares=3, retries=3))
    prog = dict(bad_rows=5, spare_trials=2, spare_failed=1, stuck_detected=9,
                faulty_columns=6, repaired_columns=1)
    c, c0 = counters(p, 3, program=prog), counters(dataclasses.replace(p, faults=None), 3)
    extra_rows = 2 * (5 + 1) + 2 * 64
    assert c["cycles"] - c0["cycles"] == extra_rows * p.row_program_cycles + 2 + 2
    assert c["cell_writes"] - c0["cell_writes"] == 2 * 9 + 2 * 64
    assert c["verify_reads"] - c0["verify_reads"] == extra_rows
    assert (c["verify_errors"], c["stuck_detected"], c["repaired_columns"]) == (6, 9, 1)
    no_spares = dataclasses.replace(p, faults=CellFaults(stuck_rate=0.01, retries=3))
    clean = counters(no_spares, 3, program=dict.fromkeys(prog, 0))
    assert clean["cycles"] == c0["cycles"] and clean["stuck_detected"] == 0


def test_presets_valid_and_resident():
    for name, p in PRESETS.items():
        assert p.resident, name


def minilm_wq(tokens=16):
    """Real all-MiniLM-L6-v2 layer-0 Wq (1/sqrt(d_head) folded, 8-bit per-channel symmetric
    by ``sim.quant.quantize_weight``) and the bf16 layer-0 input of ``tokens`` real tokens
    (word + position + type embeddings, layernorm in float32)."""
    from safetensors.numpy import load_file
    from tokenizers import Tokenizer
    from sim.bert import model_dir
    from sim.quant import quantize_weight
    d = model_dir("minilm")
    t = load_file(os.path.join(d, "model.safetensors"))
    pre = "" if "embeddings.word_embeddings.weight" in t else "bert."
    tok = Tokenizer.from_file(os.path.join(d, "tokenizer.json"))
    text = ("The crossbar keeps every weight of the model on chip, so nothing moves off "
            "chip during inference of this sentence.")
    ids = tok.encode(text).ids[:tokens]
    assert len(ids) == tokens
    e = (t[pre + "embeddings.word_embeddings.weight"][ids]
         + t[pre + "embeddings.position_embeddings.weight"][:tokens]
         + t[pre + "embeddings.token_type_embeddings.weight"][0])
    mu = e.mean(-1, keepdims=True)
    var = ((e - mu) ** 2).mean(-1, keepdims=True)
    h = ((e - mu) / np.sqrt(var + 1e-12) * t[pre + "embeddings.LayerNorm.weight"]
         + t[pre + "embeddings.LayerNorm.bias"]).astype(np.float32)
    mult = 1.0 / np.sqrt(32.0)
    w, scale = quantize_weight(t[pre + "encoder.layer.0.attention.self.query.weight"], 8,
                               multiplier=mult)
    bias = bf16.from_float32(t[pre + "encoder.layer.0.attention.self.query.bias"]
                             * np.float32(mult))
    return bf16.from_float32(h), w.astype(np.int64), scale, bias


def test_minilm_wq_golden_close_to_float():
    x, w, scale, bias = minilm_wq()
    p = PRESETS["minilm"]
    y = bf16.to_float32(run(x, w, scale, bias, p))
    ref = bf16.to_float32(x) @ (w * bf16.to_float32(scale)[None, :]) + bf16.to_float32(bias)
    rel = np.linalg.norm(y - ref) / np.linalg.norm(ref)
    assert rel < 0.1, rel          # 5-bit MX-OP inputs, 8-bit weights


# ---------------------------------------------------------------- cocotb regression -----

try:
    import cocotb
    from cocotb.triggers import ClockCycles
except ImportError:   # pragma: no cover - cocotb is a dependency
    cocotb = None

if cocotb is not None:
    from gen import streamkit
    from hw.crossbar import EMU_SWEEP_EXTRA
    from hw.crossbar_ctrl import layer_layout, o_layout, sb_layout, w_layout, x_layout

    def emulation_cycles(p, vectors):
        """A bound on the cycles the emulated tiles take beyond the chip's time (timeouts)."""
        per_tile_segment = p.rows + EMU_SWEEP_EXTRA + p.tile.max_pulses + 12
        core = p.groups * (p.segments * per_tile_segment + p.nblocks * p.fmt.outliers * 6 + 8)
        return vectors * core

    class TB(streamkit.TB):
        """crossbar_ctrl: sources ``i_layer``, ``i_sb``, ``i_w``, ``i_x``; sink ``o`` with its
        scoreboard; the counters every queued job adds (``sim.crossbar_ctrl.counters``)."""

        def __init__(self, dut, **stalls):
            super().__init__(dut, **stalls)
            p = self.params
            self.layer = self.source("i_layer", layer_layout(p))
            self.sb = self.source("i_sb", sb_layout(p))
            self.w = self.source("i_w", w_layout(p))
            self.x = self.source("i_x", x_layout(p))
            self.out = self.sink("o", o_layout(p))
            self.names = COUNTERS + ((*FAULT_COUNTERS, "verify_errors") if p.faults else ())
            self.want = dict.fromkeys(self.names, 0)
            self.exact = self.beyond = 0
            self.budget = 1000
            self.vectors = 0
            self.clipped = 0
            self.held = {}              # bank -> the weights it holds (jobs queued so far)

        def job(self, x, w, scale, bias, act_bits=None, bank=0, keep=False):
            """Queue one layer job with ``act_bits``-bit inliers on tile bank ``bank``; with
            ``keep`` it runs on the weights the bank holds (``w`` must be those); its outputs
            and counters."""
            p = self.params
            v = x.shape[0]
            a = p.act_bits if act_bits is None else act_bits
            self.layer.send(vectors=[v], act_bits=[a], bank=[bank], keep=[int(keep)])
            self.sb.send(scale=scale, bias=bias)
            if keep:
                assert w is self.held[bank], "a keep job runs on the weights its bank holds"
                prog = None
            else:
                rows = weight_rows(w, p)
                reps = 1 if p.resident else v
                self.w.send(**{f"w.{j}": np.tile(rows[:, j], reps) for j in range(p.channels)})
                _, prog = programmed(w, p)
                self.held[bank] = w
            if v:
                self.x.send(**x_fields(x, p, a))
                y = run(x, w, scale, bias, p, act_bits=a)
                self.out.expect(y=y.ravel())
                if prog is not None:            # repaired: the fault-free layer bit for bit
                    clean = run(x, w, scale, bias, dataclasses.replace(p, faults=None),
                                act_bits=a)
                    if prog["unrepaired_columns"] == 0:
                        assert np.array_equal(y, clean), "repaired layer differs"
                        self.exact += 1
                    else:
                        self.beyond += 1
                if not p.tile.adc_exact:        # evidence that the ADC really clips
                    exact = run(x, w, scale, bias, dataclasses.replace(p, adc_bits=0),
                                act_bits=a)
                    self.clipped += int(np.sum(exact != y))
            c = counters(p, v, act_bits=a, program=prog, keep=keep)
            for key, val in c.items():
                self.want[key] += val
            # chip time, emulation, and room for the random stalls on every stream
            self.budget += 3 * (c["cycles"] + emulation_cycles(p, v))
            self.vectors += v

        async def finish(self):
            """Drain every stream; check outputs, verify errors and every counter. Returns
            the counters and the emulation's ``(emu_stall, emu_ahead)``."""
            await self.drain(self.budget)
            got = {k: int(getattr(self.dut, k).value) for k in self.names}
            emu = tuple(int(getattr(self.dut, k).value) for k in ("emu_stall", "emu_ahead"))
            if not self.params.faults:
                assert int(self.dut.verify_errors.value) == 0, "rows failed their read-back"
            bad = {k: (self.want[k], got[k]) for k in self.names if got[k] != self.want[k]}
            assert not bad, f"counters (predicted, RTL) differ: {bad} (seed {self.seed})"
            return got, emu

        def report(self, got, emu, **extra):
            super().report(vectors=self.vectors, counters=got, predicted=self.want,
                           emu_stall=emu[0], emu_ahead=emu[1], clipped=self.clipped,
                           exact_jobs=self.exact, beyond_jobs=self.beyond, **extra)

    async def run_test(tb, jobs):
        """Run ``jobs`` (x, w, scale, bias, act_bits[, bank, keep]); check outputs and
        counters."""
        await tb.start()
        for job in jobs:
            tb.job(*job)
        return await tb.finish()

    def random_jobs(tb, n):
        """``n`` random vectors over a few random layers at random inlier widths; with
        ``banks``, on random banks, half the jobs on a bank that holds weights (at least the
        last) keeping them (a bank's weights as its last programming job left them)."""
        p = tb.params
        count = (3 + 2 * (p.banks > 1)) if p.resident else 1
        jobs, held, kept = [], dict(tb.held), False
        for i in range(count):
            w, s, b = random_layer(tb.rng, p)
            if p.banks > 1 and i == count - 1 and not kept:     # at least one keep job
                bank, keep = int(tb.rng.choice(sorted(held))), True
            else:
                bank = int(tb.rng.integers(0, p.banks))
                keep = bank in held and bool(tb.rng.integers(0, 2))
            kept |= keep
            if keep:
                w = held[bank]
            held[bank] = w
            a = int(tb.rng.integers(2, p.act_bits + 1)) if i else p.act_bits
            x = random_vectors(tb.rng, n // count + (i < n % count), p.in_features)
            jobs.append((x, w, s, b, a, bank, keep))
        return jobs

    @cocotb.test()
    async def ctrl_random(dut):
        """NUM_SAMPLES random vectors, random layers and inlier widths, random stalls."""
        tb = TB(dut)
        got, emu = await run_test(tb, random_jobs(tb, streamkit.samples_from_env(200)))
        tb.report(got, emu)

    @cocotb.test()
    async def ctrl_corners(dut):
        """Largest and all-negative weights, zero/negative/all-outlier inputs, specials, the
        narrowest inliers, an empty job, reprogramming between layers."""
        tb = TB(dut)
        p = tb.params
        xc = corner_vectors(p)
        jobs = [(xc, *random_layer(tb.rng, p, kind), a)
                for kind, a in (("max", p.act_bits), ("negative", 2), ("random", p.act_bits))]
        w, s, b = random_layer(tb.rng, p)
        jobs.append((xc[:0], w, s, b, p.act_bits))           # a job with no vectors
        jobs.append((random_vectors(tb.rng, 3, p.in_features), w, s, b, 2))
        got, emu = await run_test(tb, jobs)
        tb.report(got, emu)

    @cocotb.test()
    async def ctrl_accounting(dut):
        """No stalls: the run takes ``cycles + emu_stall - emu_ahead`` clock cycles."""
        tb = TB(dut, idle=0.0, backpressure=0.0)
        got, (stall, ahead) = await run_test(tb, random_jobs(tb, 6))
        elapsed = tb.out.sink.times[-1]
        assert elapsed == got["cycles"] + stall - ahead, (elapsed, got["cycles"], stall, ahead)
        tb.report(got, (stall, ahead), elapsed=elapsed)

    @cocotb.test()
    async def ctrl_reset_midstream(dut):
        """Jobs cut by a reset at a random cycle (in the scales, programming, inputs, core or
        outputs) under random stalls, 8 times; then a job runs to the end: its outputs are
        bit-exact, none stale, and the counters restart from 0 with the reset."""
        tb = TB(dut)
        p = tb.params
        await tb.start()
        for _ in range(8):
            x, w, s, b, a, _, _ = random_jobs(tb, 6)[0]
            tb.want = dict.fromkeys(tb.names, 0)
            tb.job(x, w, s, b, a)
            # a random cycle of the job (chip time bounds it; a slow macro's job ends sooner)
            span = counters(p, len(x), act_bits=a)["cycles"] + emulation_cycles(p, len(x))
            end = tb.cycle + int(tb.rng.integers(0, 2 * span))
            while tb.cycle < end and tb.out.index < len(tb.out.expected):
                await ClockCycles(dut.clk, min(64, end - tb.cycle))
            await tb.reset_midstream()
            tb.held.clear()             # a reset may cut a programming job: no bank is kept
        tb.want = dict.fromkeys(tb.names, 0)
        tb.budget = tb.cycle + 1000
        tb.job(*random_jobs(tb, 6)[0])
        got, emu = await tb.finish()
        assert tb.resets == 8
        tb.report(got, emu)

    @cocotb.test()
    async def ctrl_faults(dut):
        """Stuck cells (only with ``faults``): a layer with as many faulty columns per tile as
        it has spares that verify (bit-exact with the fault-free layer), one with one more
        (follows the golden model's unrepaired columns), one where every stuck cell differs
        from its target (detected = injected), each as two jobs with random stalls."""
        tb = TB(dut)
        p = tb.params
        if p.faults is None:
            return
        fm = slot_fault_map(p)
        good = [p.faults.spares - int((t[:, p.cols:] >= 0).any(axis=0).sum()) for t in fm]
        await tb.start()
        injected = 0
        for faulty in (lambda t: good[t], lambda t: good[t] + 1, lambda t: None):
            w = faulty_weights(tb.rng, p, faulty)
            _, prog = programmed(w, p)
            if faulty(0) is None:
                assert prog["stuck_detected"] - prog["spare_failed"] == \
                    int(np.sum(fm[:, :, :p.cols] >= 0))
                injected += prog["stuck_detected"]
            else:
                assert prog["faulty_columns"] == sum(map(faulty, range(len(fm))))
            _, s, b = random_layer(tb.rng, p)
            for a in (p.act_bits, 2):
                tb.job(random_vectors(tb.rng, 4, p.in_features), w, s, b, a)
        got, emu = await tb.finish()
        assert tb.exact == 2 and tb.beyond == 4, (tb.exact, tb.beyond)
        tb.report(got, emu, injected=injected)

    @cocotb.test(skip=not os.environ.get("XBARLLM_XBAR_JOB"))
    async def ctrl_file(dut):
        """One job from an .npz (XBARLLM_XBAR_JOB: x, w, scale, bias, act_bits), no stalls:
        real MiniLM layers through the RTL."""
        d = np.load(os.environ["XBARLLM_XBAR_JOB"])
        tb = TB(dut, idle=0.0, backpressure=0.0)
        t0 = time.time()
        got, emu = await run_test(tb, [(d["x"], d["w"], d["scale"], d["bias"],
                                        int(d["act_bits"]))])
        tb.report(got, emu, sim_seconds=round(time.time() - t0, 1))


# ---------------------------------------------------------------- runner (pytest) -------

CASES = {
    # case: (params, random vectors in the default run). Every macro is slower than one cycle
    # (pulse_cycles >= 2); between them: ADC sharing, a macro far slower than the emulation,
    # clipping ADCs, a block across two row tiles and blocks smaller than a tile, a layer in
    # waves (not resident), 1- to 4-bit DACs and cells, 3- to 8-bit inliers, 2 and 3 banks of
    # resident weights (jobs on random banks, half of them keeping the weights held).
    "k128-exact": (CrossbarCtrlParams(in_features=128, out_features=16, block=128, outliers=4,
                                      act_bits=5, rows=64, cols=64, cell_bits=2, dac_bits=1,
                                      weight_bits=8, tiles=2, banks=3), 200),
    "k128-adc4-shared": (CrossbarCtrlParams(in_features=128, out_features=40, block=64,
                                            outliers=2, act_bits=3, rows=64, cols=64,
                                            cell_bits=1, dac_bits=2, adc_bits=4, weight_bits=6,
                                            tiles=6, cols_per_adc=16, t_read=3, t_adc=2), 60),
    "k64-r128-adc6": (CrossbarCtrlParams(in_features=64, out_features=20, block=32,
                                         outliers=1, act_bits=8, rows=128, cols=64,
                                         cell_bits=4, dac_bits=4, adc_bits=6, weight_bits=4,
                                         tiles=1, cols_per_adc=1, t_read=1, t_adc=1,
                                         banks=2), 200),
    "waves-slow-macro": (CrossbarCtrlParams(in_features=128, out_features=24, block=64,
                                            outliers=3, act_bits=5, rows=64, cols=64,
                                            cell_bits=2, dac_bits=2, weight_bits=7, tiles=1,
                                            cols_per_adc=64, t_read=1000, t_adc=8, t_write=3),
                         30),
    # stuck cells (17 and 16 per tile, one in a spare) with 3 spare columns, 3 attempts
    "k128-stuck": (CrossbarCtrlParams(in_features=128, out_features=16, block=128, outliers=4,
                                      act_bits=5, rows=64, cols=64, cell_bits=2, dac_bits=1,
                                      weight_bits=8, tiles=2, faults=CellFaults(
                                          stuck_rate=0.004, spares=3, retries=3, seed=5)), 60),
}


def _records(case):
    """Per-test records of the last run of ``case`` (counters measured and predicted)."""
    import json
    from gen.harness import BUILD
    path = BUILD / f"crossbar_ctrl-{case}" / "report.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("case", [c for c in CASES])
def test_crossbar_ctrl_verilator(case):
    params, n = CASES[case]
    tests = ["ctrl_random", "ctrl_corners", "ctrl_accounting", "ctrl_reset_midstream"]
    if params.faults is not None:
        tests.append("ctrl_faults")
    regress("crossbar_ctrl", params, case=case, samples=n, testcase=tests)
    recs = _records(case)
    assert len(recs) == len(tests) and all(r["counters"] == r["predicted"] for r in recs)
    if params.faults is not None:
        assert recs[-1]["counters"]["repaired_columns"] > 0
        assert recs[-1]["counters"]["stuck_detected"] >= recs[-1]["injected"] > 0
    if not params.tile.adc_exact:
        assert sum(r["clipped"] for r in recs) > 0, "the low-bit ADC never clipped"
    # the emulation is ahead of a macro with 1000-cycle read pulses, behind a 2-cycle one
    if params.t_read >= 1000:
        assert all(r["emu_stall"] == 0 and r["emu_ahead"] > 0 for r in recs)
    if params.tile.pulse_cycles <= 2:
        assert all(r["emu_stall"] > 0 for r in recs)


@pytest.mark.slow
def test_minilm_layer_verilator(tmp_path):
    """A real MiniLM layer's four linears (8 tokens, the shipped policy) through the RTL, one
    controller each: every output bit-exact, every counter equal to the model
    (``scripts/bench_crossbar.py``; the benchmark runs 128 tokens)."""
    import json
    import subprocess
    import sys
    from gen.harness import ROOT
    out = tmp_path / "bench.json"
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_crossbar.py"),
                        "--tokens", "8", "--json", str(out)], capture_output=True, text=True)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    d = json.loads(out.read_text())
    assert d["rtl"] == d["model"] and d["model"]["out_conversions"] == 8 * (1152 + 384 + 1536
                                                                            + 384)


@pytest.mark.icarus
@pytest.mark.slow
def test_crossbar_ctrl_icarus():
    params, _ = CASES["k128-exact"]
    regress("crossbar_ctrl", params, case="k128-exact", samples=20, simulator="icarus",
            testcase=["ctrl_random", "ctrl_accounting"])
