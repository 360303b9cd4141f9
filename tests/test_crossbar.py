"""Crossbar tile: golden-model tests (sim/crossbar.py) and the tile's cocotb regression."""

import dataclasses

import numpy as np
import pytest

from sim import bf16, crossbar as xb, fixed, mxop
from gen.harness import regress

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


def test_events_counts():
    p = xb.CrossbarParams(rows=64, cols=64, tiles=2)     # 8-bit weights, 2-bit cells: 16 ch/tile
    fmt = mxop.MXOPFormat(block=128, outliers=4, bits=5)
    ev = xb.events(128, 32, fmt, p, vectors=3)
    # 2 row tiles x 2 groups = 4 tiles > 2: reprogrammed per vector
    assert ev["tile_pulses"] == 3 * 2 * 2 * 5
    assert ev["adc"] == ev["tile_pulses"] * 64 and ev["dac"] == ev["tile_pulses"] * 64
    assert ev["cell_writes"] == 0 and ev["reprogram_writes"] == 3 * 4 * 64 * 64
    assert ev["fp_ops"] == 3 * 2 * 1 * 4 * 16
    ev = xb.events(128, 32, fmt, dataclasses.replace(p, tiles=4), vectors=3)
    assert ev["cell_writes"] == 4 * 64 * 64 and ev["reprogram_writes"] == 0


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
    ("tiles", 0, "tiles must be an integer in 1..4096, not 0"),
    ("scheme", "differential", "scheme must be one of 'offset', not 'differential'"),
    ("noise", -0.1, "noise must be a float in 0..16"),
    ("seed", -1, "seed must be an integer in 0..4294967295"),
])
def test_params_rejects_bad_values(field, value, msg):
    with pytest.raises(ValueError, match=msg.replace("(", r"\(").replace(".", r"\.")):
        xb.CrossbarParams(**{field: value})


def test_presets_are_valid():
    for name, p in xb.PRESETS.items():
        assert p.adc_exact and p.channels * p.slices <= p.cols, name


# ---------------------------------------------------------------- cocotb: the tile -------

try:
    import cocotb
    from cocotb.triggers import RisingEdge
except ImportError:   # pragma: no cover - cocotb is a dependency
    cocotb = None

if cocotb is not None:
    from hw.crossbar import codes_layout, prog_layout, pulse_layout, read_layout, row_layout
    from gen.streamkit_legacy import (Packer, Scoreboard, StreamSink, StreamSource, clock_reset,
                               params_from_env, report, samples_from_env, seed_from_env)

    async def _drain(dut, src, sb, limit):
        for _ in range(limit):
            if src.empty and sb.done:
                break
            await RisingEdge(dut.clk)
        await sb.wait(dut.clk, 0)
        assert src.empty, f"{src.name}: {len(src.queue) - src.pos} beats not accepted"
        sb.check()

    @cocotb.test()
    async def tile_program_verify_mvm(dut):
        """Program random cells into every tile, read every row back, then random pulses
        (all-zero, all-max and random digits) against ``sim.crossbar.mvm``; random stalls."""
        p = params_from_env()
        seed = seed_from_env()
        rng = np.random.default_rng(seed)
        n = samples_from_env(100)
        await clock_reset(dut)
        cells = rng.integers(0, 1 << p.cell_bits, size=(p.tiles, p.rows, p.cols))
        cells[0, : p.rows // 4] = (1 << p.cell_bits) - 1          # a block of maximal cells
        pk = {k: Packer(f(p)) for k, f in (("prog", prog_layout), ("read", read_layout),
                                           ("row", row_layout), ("pulse", pulse_layout),
                                           ("codes", codes_layout))}
        prog = StreamSource(dut, "i_prog", idle=0.3, seed=seed)
        rd = StreamSource(dut, "i_read", idle=0.3, seed=seed + 1)
        pulse = StreamSource(dut, "i_pulse", idle=0.3, seed=seed + 2)
        o_read = StreamSink(dut, "o_read", backpressure=0.3, seed=seed)
        o_codes = StreamSink(dut, "o_codes", backpressure=0.3, seed=seed + 1)
        tiles, rows = np.meshgrid(np.arange(p.tiles), np.arange(p.rows), indexing="ij")
        flat = cells.reshape(-1, p.cols)
        prog.send(pk["prog"].pack(tile=tiles.ravel(), addr=rows.ravel(),
                                  **{f"cells.{j}": flat[:, j] for j in range(p.cols)}))
        sb_read = Scoreboard(o_read, pk["row"].pack(**{f"cells.{j}": flat[:, j]
                                                       for j in range(p.cols)}), name="o_read")
        for _ in range(20 * p.tiles * p.rows):
            if prog.empty:
                break
            await RisingEdge(dut.clk)
        rd.send(pk["read"].pack(tile=tiles.ravel(), addr=rows.ravel()))
        await _drain(dut, rd, sb_read, 20 * p.tiles * p.rows)
        # pulses
        dmax = (1 << p.dac_bits) - 1
        digits = rng.integers(0, dmax + 1, size=(n, p.rows))
        digits[0] = 0
        digits[1] = dmax
        digits[2:n:7] *= rng.random((len(range(2, n, 7)), p.rows)) < 0.2     # sparse pulses
        which = rng.integers(0, p.tiles, size=n)
        which[1] = 0
        codes = np.stack([crossbar_mvm_one(digits[i], cells[which[i]], p) for i in range(n)])
        sb_codes = Scoreboard(o_codes, pk["codes"].pack(**{f"codes.{j}": codes[:, j]
                                                          for j in range(p.cols)}),
                              name="o_codes")
        pulse.send(pk["pulse"].pack(tile=which, **{f"digits.{r}": digits[:, r]
                                                   for r in range(p.rows)}))
        await _drain(dut, pulse, sb_codes, n * (p.rows + 40) * 3)
        clipped = int(np.sum(codes == p.adc_max)) if not p.adc_exact else 0
        report(vectors=n, beats=n + p.tiles * p.rows, mismatches=0, cycles=0, clipped=clipped)


def crossbar_mvm_one(digits, cells, p):
    """Codes of one pulse on one tile by ``sim.crossbar.mvm``."""
    return xb.mvm(digits[None, None, :], cells[None], p)[0, 0]


TILE_CASES = {
    "tiny": (xb.PRESETS["tiny"], 150),
    "r64-c2-d2-adc5-t3": (xb.CrossbarParams(rows=64, cols=64, cell_bits=2, dac_bits=2,
                                            adc_bits=5, tiles=3), 150),
}


@pytest.mark.parametrize("case", TILE_CASES)
def test_crossbar_tile_verilator(case):
    params, n = TILE_CASES[case]
    regress("crossbar", params, case=case, samples=n)
