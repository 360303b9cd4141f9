"""Crossbar tile: golden-model tests (sim/crossbar.py) and the tile's cocotb regression."""

import dataclasses

import numpy as np
import pytest

from sim import bf16, crossbar as xb, fixed, mxop
from sim.faults import CellFaults
from gen.harness import regress
from hw.crossbar import Crossbar

SEED = 6


def _rand_layer(rng, m, k, n, wbits=8):
    x = bf16.from_float32((rng.standard_normal((m, k)) * np.exp2(rng.integers(-4, 4, (m, 1))))
                          .astype(np.float32))
    lo = -(1 << (wbits - 1))
    w = rng.integers(lo, -lo, (k, n))
    scale = bf16.from_float32((rng.random(n) * 0.02 + 1e-3).astype(np.float32))
    bias = bf16.from_float32(rng.standard_normal(n).astype(np.float32))
    return x, w, scale, bias


def _slow_terms(q, w, fmt, p):
    """Obviously-correct loop version of the crossbar's inlier terms (offset scheme, ADC)."""
    m, nb, b = q.shape
    k, n = w.shape
    seg = min(b, p.rows)
    out = np.zeros((m, nb, n), dtype=np.int64)
    u = w + p.offset
    npulse = -(-(fmt.bits - 1) // p.dac_bits) + 1
    for i in range(m):
        for blk in range(nb):
            for s0 in range(blk * b, (blk + 1) * b, seg):
                for j in range(n):
                    total = 0
                    for pulse in range(npulse):
                        for s in range(p.slices):
                            colsum = 0
                            for r in range(s0, s0 + seg):
                                v = int(q[i, blk, r - blk * b])
                                if pulse < npulse - 1:
                                    dig = ((v % (1 << (fmt.bits - 1))) >> (pulse * p.dac_bits)) \
                                        % (1 << p.dac_bits)
                                    wt = 1 << (pulse * p.dac_bits)
                                else:
                                    dig, wt = int(v < 0), -(1 << (fmt.bits - 1))
                                cell = (int(u[r, j]) >> (s * p.cell_bits)) % (1 << p.cell_bits)
                                colsum += dig * cell
                            code = min(colsum, p.adc_max)
                            total += wt * (code << (s * p.cell_bits))
                    out[i, blk, j] += total
            out[i, blk] -= p.offset * int(q[i, blk].sum())
    return out


@pytest.mark.parametrize("rows,cell_bits,dac_bits,wbits", [
    (64, 2, 1, 8), (128, 1, 2, 5), (256, 4, 3, 6), (64, 4, 4, 4)])
def test_bit_slices_equal_integer_matmul(rows, cell_bits, dac_bits, wbits):
    rng = np.random.default_rng(SEED)
    p = xb.CrossbarParams(rows=rows, cell_bits=cell_bits, dac_bits=dac_bits, weight_bits=wbits)
    for bits in (3, 5, 8):
        fmt = mxop.MXOPFormat(bits=bits)
        x, w, _, _ = _rand_layer(rng, 5, 512, 24, wbits)
        blocks = mxop.encode(x, fmt)
        got = xb.inlier_terms(blocks.q, w, fmt, p)
        want = np.einsum("mbi,bin->mbn", blocks.q.astype(np.int64), w.reshape(4, 128, 24))
        np.testing.assert_array_equal(got, want)
        # the slice/offset decomposition itself
        cells = xb.bit_slices(w, p)
        recon = sum(cells[s] << (s * cell_bits) for s in range(p.slices)) - p.offset
        np.testing.assert_array_equal(recon, w)


@pytest.mark.parametrize("adc_bits,rows,block", [(4, 64, 128), (6, 128, 64), (7, 256, 128),
                                                 (1, 64, 64)])
def test_clipping_adc_matches_slow_loop(adc_bits, rows, block):
    rng = np.random.default_rng(SEED + adc_bits)
    p = xb.CrossbarParams(rows=rows, adc_bits=adc_bits, cell_bits=2, dac_bits=2, weight_bits=6)
    fmt = mxop.MXOPFormat(block=block, bits=5)
    x, w, _, _ = _rand_layer(rng, 2, 256, 3, 6)
    blocks = mxop.encode(x, fmt)
    got = xb.inlier_terms(blocks.q, w, fmt, p)
    np.testing.assert_array_equal(got, _slow_terms(blocks.q, w, fmt, p))
    assert not p.adc_exact


def test_exact_adc_linear_equals_mxop_dot():
    rng = np.random.default_rng(SEED)
    for rows, block, k in ((64, 128, 384), (256, 128, 384), (128, 64, 64), (64, 32, 32)):
        p = xb.CrossbarParams(rows=rows)
        fmt = mxop.MXOPFormat(block=block, outliers=4, bits=5)
        x, w, scale, bias = _rand_layer(rng, 7, k, 40)
        got = xb.linear(x, w, scale, bias, fmt, p)
        f = fmt.for_length(k)
        acc, lsb, nan = fixed.mxop_dot(mxop.encode(x, f), f, w)
        want = fixed.affine_round(acc, lsb, scale, bias, nan)
        np.testing.assert_array_equal(got, want)
        # the emulation path (no shortcut) gives the same bits
        blocks = mxop.encode(x, f)
        acc = xb.accumulate(xb.inlier_terms(blocks.q, w, f, p), blocks, f, w)
        ref = fixed.mxop_dot(blocks, f, w)
        for a, b in zip(acc, ref):
            np.testing.assert_array_equal(a, b)


def test_clipping_adc_changes_results_and_is_deterministic():
    rng = np.random.default_rng(SEED)
    x, w, scale, bias = _rand_layer(rng, 4, 256, 16)
    fmt = mxop.MXOPFormat()
    exact = xb.linear(x, w, scale, bias, fmt, xb.CrossbarParams(rows=64))
    p = xb.CrossbarParams(rows=64, adc_bits=5)
    a = xb.linear(x, w, scale, bias, fmt, p)
    assert np.any(a != exact)
    np.testing.assert_array_equal(a, xb.linear(x, w, scale, bias, fmt, p))
    # wide enough ADC (exact width) gives the exact result through the emulation path
    pw = xb.CrossbarParams(rows=64, adc_bits=p.exact_adc_bits)
    assert pw.adc_exact
    np.testing.assert_array_equal(xb.linear(x, w, scale, bias, fmt, pw), exact)


def test_noise_is_seeded_and_small_noise_stays_close():
    rng = np.random.default_rng(SEED)
    x, w, scale, bias = _rand_layer(rng, 4, 256, 16)
    fmt = mxop.MXOPFormat()
    exact = bf16.to_float32(xb.linear(x, w, scale, bias, fmt, xb.CrossbarParams()))
    p = xb.CrossbarParams(noise=0.05, seed=3)
    a = xb.linear(x, w, scale, bias, fmt, p)
    np.testing.assert_array_equal(a, xb.linear(x, w, scale, bias, fmt, p))
    assert np.any(a != xb.linear(x, w, scale, bias, fmt, dataclasses.replace(p, seed=4)))
    err = np.abs(bf16.to_float32(a) - exact) / (np.abs(exact).max())
    assert np.median(err) < 0.02 and err.max() < 0.3


def test_nan_and_zero_rows():
    p = xb.CrossbarParams(rows=64, adc_bits=4)
    fmt = mxop.MXOPFormat()
    w = np.full((128, 4), -128)
    x = np.zeros((2, 128), dtype=np.uint16)
    x[1, 5] = bf16.NAN
    out = xb.linear(x, w, np.full(4, 0x3F80, np.uint16), np.full(4, 0x4000, np.uint16), fmt, p)
    np.testing.assert_array_equal(out[0], 0x4000)        # 0 * w + 2
    np.testing.assert_array_equal(out[1], bf16.NAN)


def test_linear_rejects_bad_operands():
    p = xb.CrossbarParams(weight_bits=4)
    fmt = mxop.MXOPFormat()
    with pytest.raises(ValueError, match="4-bit signed"):
        xb.linear(np.zeros((1, 128), np.uint16), np.full((128, 2), 8), 0x3F80, 0, fmt, p)
    with pytest.raises(ValueError, match="must be"):
        xb.linear(np.zeros((1, 64), np.uint16), np.zeros((128, 2), int), 0x3F80, 0, fmt, p)


@pytest.mark.parametrize("field,value,msg", [
    ("rows", 32, "rows must be a power of two in 64..256, not 32"),
    ("rows", 96, "rows must be a power of two"),
    ("cols", 512, "cols must be a power of two in 64..256, not 512"),
    ("cell_bits", 3, "cell_bits must be one of 1, 2, 4, not 3"),
    ("cell_bits", True, "cell_bits must be one of"),
    ("adc_bits", 17, "adc_bits must be an integer in 1..16, not 17"),
    ("adc_bits", -1, "adc_bits must be an integer in 1..16"),
    ("adc_bits", 1.5, "adc_bits must be an integer"),
    ("dac_bits", 0, "dac_bits must be an integer in 1..4, not 0"),
    ("dac_bits", 5, "dac_bits must be an integer in 1..4"),
    ("weight_bits", 3, "weight_bits must be an integer in 4..8, not 3"),
    ("weight_bits", 9, "weight_bits must be an integer in 4..8"),
    ("tiles", 0, "tiles must be an integer in 1..65536, not 0"),
    ("scheme", "differential", "scheme must be one of 'offset', not 'differential'"),
    ("noise", -0.1, "noise must be a float in 0..16"),
    ("seed", -1, "seed must be an integer in 0..4294967295"),
    ("act_bits", 1, "act_bits must be an integer in 2..8, not 1"),
    ("cols_per_adc", 3, "cols_per_adc must be a power of two in 1..128, not 3"),
    ("cols_per_adc", 256, "cols_per_adc must be a power of two in 1..128, not 256"),
    ("t_read", 0, "t_read must be an integer in 1..1024, not 0"),
    ("t_adc", 65, "t_adc must be an integer in 1..64, not 65"),
    ("t_write", 0, "t_write must be an integer in 1..4096, not 0"),
])
def test_params_rejects_bad_values(field, value, msg):
    with pytest.raises(ValueError, match=msg.replace("(", r"\(").replace(".", r"\.")):
        xb.CrossbarParams(**{field: value})


def test_presets_are_valid():
    for name, p in xb.PRESETS.items():
        assert p.adc_exact and p.channels * p.slices <= p.cols, name


def test_macro_contract_latency():
    """One pulse (and one row read): the read pulse, then each ADC converts its columns."""
    p = xb.CrossbarParams()
    assert (p.cols_per_adc, p.t_read, p.t_adc) == (8, 10, 1) and p.adcs == 16
    assert p.pulse_cycles == 18
    q = xb.CrossbarParams(cols=64, cols_per_adc=64, t_read=3, t_adc=5)
    assert q.adcs == 1 and q.pulse_cycles == 3 + 64 * 5
    assert xb.CrossbarParams(act_bits=5, dac_bits=1).max_pulses == 5
    assert xb.CrossbarParams(act_bits=8, dac_bits=3).max_pulses == 4




# ---------------------------------------------------------------- cocotb regression -----

try:
    import cocotb
    from cocotb.triggers import ClockCycles
except ImportError:   # pragma: no cover - cocotb is a dependency
    cocotb = None

if cocotb is not None:
    from gen import streamkit
    from sim.faults import stuck, tile_fault_map
    from hw.crossbar import (EMU_SWEEP_EXTRA, codes_layout, prog_layout, pulse_layout,
                             read_layout, row_layout)

    class TB(streamkit.TB):
        """crossbar: sources ``i_prog``, ``i_read``, ``i_pulse``; sinks ``o_read``,
        ``o_codes`` with their scoreboards."""

        def __init__(self, dut, **stalls):
            super().__init__(dut, **stalls)
            p = self.params
            self.prog = self.source("i_prog", prog_layout(p))
            self.read = self.source("i_read", read_layout(p))
            self.pulse = self.source("i_pulse", pulse_layout(p))
            self.rows = self.sink("o_read", row_layout(p))
            self.codes = self.sink("o_codes", codes_layout(p))

    def random_cells(rng, p):
        """Cells (tiles, R, C): random levels, a block of maximal cells in tile 0."""
        cells = rng.integers(0, 1 << p.cell_bits, size=(p.tiles, p.rows, p.phys_cols))
        cells[0, :p.rows // 4] = (1 << p.cell_bits) - 1
        return cells

    def random_trains(rng, p, n):
        """``n`` pulse trains: tile, pulse count and digits (n, max_pulses, R); the first is
        all zero, the second all maximal on tile 0 (the ADC's largest sums), some sparse."""
        dmax = (1 << p.dac_bits) - 1
        tiles = rng.integers(0, p.tiles, size=n)
        pulses = rng.integers(1, p.max_pulses + 1, size=n)
        digits = rng.integers(0, dmax + 1, size=(n, p.max_pulses, p.rows))
        digits[0], tiles[0] = 0, 0
        if n > 1:
            digits[1], tiles[1], pulses[1] = dmax, 0, p.max_pulses
        digits[2::7] *= rng.random(digits[2::7].shape) < 0.2
        return tiles, pulses, digits

    async def run_test(tb, cells, reads, trains):
        """Program ``cells``; then read rows ``reads`` (tile, row arrays) and apply ``trains``
        (tiles, pulses, digits) interleaved; check every row and every code. With faults,
        the tiles' stuck cells read their stuck level (``sim.faults.tile_fault_map``)."""
        await tb.start()
        codes = await stimulus(tb, cells, reads, trains)
        p = tb.params
        await tb.drain(4 * (len(reads[1]) * 4 + len(trains[0]) * (p.rows + 3 * p.max_pulses
                                                                  + 16)) + 1000)
        return int(np.sum(codes == p.adc_max)) if not p.adc_exact else 0

    async def stimulus(tb, cells, reads, trains):
        """Queue the programming of ``cells``; when it is done, the reads and trains and
        their expected rows and codes (returned)."""
        p = tb.params
        tiles, rows = np.meshgrid(np.arange(p.tiles), np.arange(p.rows), indexing="ij")
        flat = cells.reshape(-1, p.phys_cols)
        tb.prog.send(tile=tiles.ravel(), addr=rows.ravel(),
                     **{f"cells.{j}": flat[:, j] for j in range(p.phys_cols)})
        if p.faults is not None:
            cells = stuck(cells, tile_fault_map(p))
        while not tb.prog.empty:                # reads and pulses see every cell written
            await ClockCycles(tb.dut.clk, 64)
        rt, rr = reads
        tb.rows.expect(**{f"cells.{j}": cells[rt, rr, j] for j in range(p.phys_cols)})
        tb.read.send(tile=rt, addr=rr)
        wt, npulse, digits = trains
        code_rows, last = [], []
        for i in range(len(wt)):
            for pp in range(npulse[i]):
                code_rows.append(xb.mvm(digits[i, pp][None, None], cells[wt[i]][None], p)[0, 0])
                last.append(pp == npulse[i] - 1)
        codes = np.array(code_rows).reshape(-1, p.phys_cols)
        tb.codes.expect(last=np.array(last), **{f"codes.{j}": codes[:, j]
                                                for j in range(p.phys_cols)})
        tb.pulse.send(tile=wt, pulses=npulse,
                      **{f"digits.{pp}.{r}": digits[:, pp, r]
                         for pp in range(p.max_pulses) for r in range(p.rows)})
        return codes

    @cocotb.test()
    async def tile_random(dut):
        """Every row programmed and read back; NUM_SAMPLES random pulse trains against
        ``sim.crossbar.mvm``; random idle and backpressure on every stream."""
        tb = TB(dut, idle=0.3, backpressure=0.3)
        p = tb.params
        n = streamkit.samples_from_env(100)
        cells = random_cells(tb.rng, p)
        reads = np.meshgrid(np.arange(p.tiles), np.arange(p.rows), indexing="ij")
        reads = (reads[0].ravel(), reads[1].ravel())
        trains = random_trains(tb.rng, p, n)
        clipped = await run_test(tb, cells, reads, trains)
        if not p.adc_exact:
            assert clipped > 0, "the ADC never saturated"
        stuck_cells = 0 if p.faults is None else int(np.sum(tile_fault_map(p) >= 0))
        tb.report(vectors=n, clipped=clipped, stuck_cells=stuck_cells)

    @cocotb.test()
    async def tile_reset_midstream(dut):
        """Rounds of programming, row reads and pulse trains, each cut by a reset at a random
        cycle (in programming, reads or trains) under random stalls; a last round runs to
        the end: every row and code before a reset and after it is exact, none stale."""
        tb = TB(dut, idle=0.3, backpressure=0.3)
        p = tb.params
        await tb.start()
        n = max(streamkit.samples_from_env(100) // 10, 4)
        program = 3 * p.tiles * p.rows                  # programming under idle stalls

        def round_():
            cells = random_cells(tb.rng, p)
            rt = tb.rng.integers(0, p.tiles, size=n)
            reads = (rt, tb.rng.integers(0, p.rows, size=n))
            return cocotb.start_soon(stimulus(tb, cells, reads, random_trains(tb.rng, p, n)))

        for _ in range(8):
            task = round_()
            await ClockCycles(dut.clk, int(tb.rng.integers(0, program + n * 2 * p.rows)))
            task.cancel()           # nothing of this round is queued after the reset
            await tb.reset_midstream()
        await round_()
        await tb.drain(tb.cycle + 8 * n * (p.rows + 3 * p.max_pulses + 16) + 1000)
        assert tb.resets == 8
        tb.report(vectors=n)

    @cocotb.test()
    async def tile_latency(dut):
        """No stalls: a train's first codes beat ``rows + EMU_SWEEP_EXTRA`` cycles after its
        request, then one beat per cycle; a row read's result the next cycle."""
        tb = TB(dut, idle=0.0, backpressure=0.0)
        p = tb.params
        cells = random_cells(tb.rng, p)
        trains = random_trains(tb.rng, p, 3)
        trains[1][:] = p.max_pulses
        await run_test(tb, cells, (np.zeros(1, int), np.zeros(1, int)), trains)
        t_req, t_out = tb.pulse.times, tb.codes.sink.times
        assert t_out[0] - t_req[0] == p.rows + EMU_SWEEP_EXTRA, (t_req, t_out)
        assert t_out[p.max_pulses - 1] - t_out[0] == p.max_pulses - 1, t_out
        assert tb.rows.sink.times[0] - tb.read.times[0] == 1
        tb.report(vectors=0, latency=t_out[0] - t_req[0])


# ---------------------------------------------------------------- runner (pytest) -------

TILE_CASES = {
    # case: (params, random pulse trains in the default run)
    "tiny": (xb.PRESETS["tiny"], 300),
    "minilm": (xb.PRESETS["minilm"], 200),
    "r64-c2-d2-adc5-t3": (xb.CrossbarParams(rows=64, cols=64, cell_bits=2, dac_bits=2,
                                            adc_bits=5, act_bits=7, tiles=3), 300),
    # stuck cells (half at each level) and 3 spare columns per tile
    "tiny-stuck-t2": (dataclasses.replace(xb.PRESETS["tiny"], tiles=2, faults=CellFaults(
        stuck_rate=0.02, high_share=0.5, spares=3, seed=4)), 200),
}


@pytest.mark.parametrize("case", TILE_CASES)
def test_crossbar_verilator(case):
    params, n = TILE_CASES[case]
    rep = regress("crossbar", params, case=case, samples=n)
    if params.faults is not None:
        assert rep["stuck_cells"] > 0, "no stuck cell was injected"


def test_fault_map_rejects_other_shapes_and_drift():
    p = dataclasses.replace(xb.PRESETS["tiny"], faults=CellFaults(stuck_rate=0.1, spares=1))
    with pytest.raises(ValueError, match=r"fault_map must have shape \(1, 64, 65\)"):
        Crossbar(p, fault_map=np.zeros((1, 64, 64), np.int8))
    with pytest.raises(ValueError, match="faults.drift must be 0 in the tile emulation"):
        Crossbar(dataclasses.replace(p, faults=CellFaults(drift=0.01)))


@pytest.mark.icarus
def test_crossbar_icarus():
    regress("crossbar", xb.PRESETS["tiny"], case="tiny", samples=20, simulator="icarus")
