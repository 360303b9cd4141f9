"""gelu: golden model vs float and a slow model, parameter validation, cocotb regression."""

import dataclasses
import math

import numpy as np
import pytest

from sim import bf16
from gen.harness import regress
from sim.gelu import DEFAULT, PRESETS, GeluParams, gelu, gelu_slow, gelu_table, phi_fixed

ALL = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)

# ---------------------------------------------------------------- stimulus (shared) ----


def random_elements(rng, n):
    """bf16 elements: mostly N(0, 2) (the useful range), some wide-range and raw patterns."""
    x = rng.standard_normal(n).astype(np.float32) * 2
    wide = (rng.standard_normal(n) * np.exp2(rng.integers(-20, 20, n))).astype(np.float32)
    bits = np.where(rng.random(n) < 0.2, bf16.from_float32(wide), bf16.from_float32(x))
    raw = rng.integers(0, 1 << 16, n, dtype=np.uint32).astype(np.uint16)
    return np.where(rng.random(n) < 0.1, raw, bits).astype(np.uint16)


def directed_elements(p):
    """Zeros, -0, subnormals, Inf, NaN, extremes, the clip boundary and segment edges."""
    clip = float(2 ** p.clip_log2)
    edges = np.arange(0, clip, clip / p.segments)
    vals = np.concatenate([edges, -edges, edges + 2.0 ** -p.frac_bits, -edges - 2.0 ** -9,
                           [clip, -clip, clip * 0.999, -clip * 0.999, 1e-30, -1e-30, 2.0 ** -126]])
    specials = [0x0000, 0x8000, 0x0001, 0x807F, 0x7F80, 0xFF80, 0x7FC0, 0xFFFF, 0x7F81,
                bf16.MAX_FINITE, 0x8000 | bf16.MAX_FINITE, bf16.MIN_NORMAL, 0x8080,
                0x3F80, 0xBF80]
    return np.concatenate([bf16.from_float32(vals.astype(np.float32)),
                           np.array(specials, dtype=np.uint16)]).astype(np.uint16)


def gelu_float(x):
    xf = bf16.to_float32(bf16.daz(x)).astype(np.float64)
    return xf * 0.5 * (1 + np.vectorize(math.erf)(xf / math.sqrt(2)))


# ---------------------------------------------------------------- golden model ----------


def test_golden_matches_slow_model_exhaustively():
    assert np.array_equal(gelu(ALL, DEFAULT), gelu_slow(ALL, DEFAULT))


def test_golden_matches_slow_model_other_params():
    p = GeluParams(frac_bits=6, clip_log2=3, segments=8, coef_bits=10)
    assert np.array_equal(gelu(ALL, p), gelu_slow(ALL, p))
    # the sign is right everywhere (the table saturates at Phi = 1)
    out = bf16.to_float32(gelu(ALL, p))
    x = bf16.to_float32(bf16.daz(ALL))
    with np.errstate(invalid="ignore"):
        assert not np.any((out > 0) & (x < 0)) and not np.any((out < 0) & (x > 0))


def test_golden_error_below_goal_on_all_inputs_in_range():
    """Every bf16 x in [-4, 4]: |gelu(x) - GELU(x)| < 0.01 (I-BERT's i-GELU: 0.018)."""
    out = bf16.to_float32(gelu(ALL, DEFAULT)).astype(np.float64)
    with np.errstate(invalid="ignore"):
        ref = gelu_float(ALL)
        sel = np.isfinite(ref) & (np.abs(bf16.to_float32(bf16.daz(ALL))) <= 4)
        err = np.abs(out - ref)[sel]
        xs = np.abs(bf16.to_float32(bf16.daz(ALL)).astype(np.float64))[sel]
    assert err.max() < 0.01, err.max()
    # error = the bf16 rounding (half an ulp) + |x| times the Phi error: table (< 2.5e-4)
    # plus the argument truncation (Phi' <= 0.4 times 2**-frac_bits)
    r = np.abs(ref[sel])
    half_ulp = np.exp2(np.floor(np.log2(np.maximum(r, 2.0 ** -126))) - 8)
    ftz = np.where(r < 2.0 ** -126, 2.0 ** -126, 0)                # results flush to zero
    assert np.all(err <= half_ulp + xs * (2.5e-4 + 0.4 * 2.0 ** -DEFAULT.frac_bits) + ftz)


def test_golden_phi_table_accuracy_and_range():
    p = DEFAULT
    a = np.arange(1 << p.a_width)
    phi = phi_fixed(a, p)
    ref = 0.5 * (1 + np.vectorize(math.erf)(a / 2 ** p.frac_bits / math.sqrt(2)))
    assert np.abs(phi / 2 ** p.coef_bits - ref).max() < 3e-4
    assert phi.min() >= 1 << (p.coef_bits - 1) and phi.max() <= 1 << p.coef_bits
    assert np.all(np.diff(phi) >= 0)                              # monotone
    C, D = gelu_table(p)
    assert len(C) == len(D) == p.segments


def test_golden_specials():
    x = np.array([0x7FC0, 0xFFC1, 0x7F80, 0xFF80, 0x0000, 0x8000, 0x0001, 0x8001,
                  bf16.MAX_FINITE, 0x8000 | bf16.MAX_FINITE], dtype=np.uint16)
    assert gelu(x, DEFAULT).tolist() == [0x7FC0, 0x7FC0, 0x7F80, 0, 0, 0, 0, 0,
                                         bf16.MAX_FINITE, 0]


def test_golden_large_inputs_are_relu():
    x = bf16.from_float32(np.array([4.0, 5.5, 100.0, -4.0, -7.0, -1e10], dtype=np.float32))
    assert gelu(x, DEFAULT).tolist() == [int(v) for v in x[:3]] + [0, 0, 0]


def test_golden_small_inputs_are_half():
    x = bf16.from_float32(np.array([2.0 ** -20, -(2.0 ** -30), 2.0 ** -100], np.float32))
    out = bf16.to_float32(gelu(x, DEFAULT))
    assert np.array_equal(out, bf16.to_float32(x) / 2)


# ---------------------------------------------------------------- parameters ------------


@pytest.mark.parametrize("field, value, message", [
    ("frac_bits", 3, r"frac_bits must be an integer in 4\.\.16, not 3"),
    ("frac_bits", 17, r"frac_bits must be an integer in 4\.\.16, not 17"),
    ("clip_log2", 0, r"clip_log2 must be an integer in 1\.\.3, not 0"),
    ("clip_log2", 4, r"clip_log2 must be an integer in 1\.\.3, not 4"),
    ("segments", 24, r"segments must be a power of two in 1\.\.256, not 24"),
    ("segments", 512, r"segments must be a power of two in 1\.\.256, not 512"),
    ("coef_bits", 7, r"coef_bits must be an integer in 8\.\.20, not 7"),
    ("coef_bits", 21, r"coef_bits must be an integer in 8\.\.20, not 21"),
    ("coef_bits", 16.0, r"coef_bits must be an integer in 8\.\.20, not 16\.0"),
])
def test_params_rejects_out_of_range(field, value, message):
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(GeluParams(), **{field: value})


def test_params_rejects_more_segments_than_grid_points():
    with pytest.raises(ValueError, match=r"segments must be at most 2\*\*\(frac_bits \+ "
                                         r"clip_log2\) = 32, not 64"):
        GeluParams(frac_bits=4, clip_log2=1, segments=64)


def test_params_keyword_only():
    with pytest.raises(TypeError):
        GeluParams(10)


def test_presets_cover_every_name():
    assert set(PRESETS) == {"tiny", "minilm", "bert-base", "bert-large"}


# ---------------------------------------------------------------- cocotb regression -----

try:
    import cocotb
except ImportError:   # pragma: no cover - cocotb is a dependency
    cocotb = None

if cocotb is not None:
    from gen import streamkit
    from hw.gelu import LATENCY, gelu_layout

    class TB(streamkit.TB):
        """gelu: source ``i``, sink ``o`` with its scoreboard."""

        def __init__(self, dut, **stalls):
            super().__init__(dut, **stalls)
            layout = gelu_layout(self.params)
            self.src = self.source("i", layout)
            self.out = self.sink("o", layout)

    async def run_test(tb, x):
        """Stream elements ``x`` (a ``last`` every 7th) through; check every result."""
        await tb.start()
        last = (np.arange(x.size) % 7 == 6).astype(np.int64)
        tb.out.expect(data=gelu(x, tb.params), last=last)
        tb.src.send(data=x, last=last)
        await tb.drain(20 * x.size + 1000)

    @cocotb.test()
    async def gelu_directed(dut):
        """Corner elements, under random stalls on both sides."""
        tb = TB(dut, idle=0.3, backpressure=0.3)
        x = directed_elements(tb.params)
        await run_test(tb, x)
        tb.report(vectors=x.size)

    @cocotb.test()
    async def gelu_random(dut):
        """NUM_SAMPLES random elements, random idle and backpressure."""
        tb = TB(dut)
        x = random_elements(tb.rng, streamkit.samples_from_env(2000))
        await run_test(tb, x)
        tb.report(vectors=x.size)

    @cocotb.test()
    async def gelu_reset_midstream(dut):
        """Rounds of random elements, each cut by a reset at a random cycle under random stalls;
        a last round runs to the end: every beat before a reset and after it is bit-exact, and
        nothing stale comes out."""
        tb = TB(dut)
        await tb.start()
        m = max(streamkit.samples_from_env(2000) // 20, 16)

        def queue():
            x = random_elements(tb.rng, m)
            last = (np.arange(m) % 7 == 6).astype(np.int64)
            tb.out.expect(data=gelu(x, tb.params), last=last)
            tb.src.send(data=x, last=last)

        for _ in range(8):
            queue()
            await tb.reset_after(0, 3 * m)
        queue()
        await tb.drain(tb.cycle + 20 * m + 1000)
        assert tb.resets == 8
        tb.report(vectors=tb.out.index)

    @cocotb.test()
    async def gelu_throughput(dut):
        """No stalls: one element per cycle after ``LATENCY`` cycles."""
        tb = TB(dut, idle=0.0, backpressure=0.0)
        x = random_elements(tb.rng, 512)
        await run_test(tb, x)
        t_in, t_out = tb.src.times, tb.out.sink.times
        latency = t_out[0] - t_in[0]
        per_element = (t_out[-1] - t_out[0]) / (len(t_out) - 1)
        assert latency == LATENCY, latency
        assert per_element == 1.0, per_element
        tb.report(vectors=0, cycles_per_element=per_element, latency=latency)


# ---------------------------------------------------------------- runner (pytest) -------

CASES = {
    # case: (params, random elements in the default run)
    "minilm": (PRESETS["minilm"], 80000),
    "f6-c3-s8-q10": (GeluParams(frac_bits=6, clip_log2=3, segments=8, coef_bits=10), 20000),
}


@pytest.mark.parametrize("case", CASES)
def test_gelu_verilator(case):
    params, n = CASES[case]
    regress("gelu", params, case=case, samples=n)


@pytest.mark.icarus
def test_gelu_icarus():
    regress("gelu", PRESETS["minilm"], case="minilm", samples=3000, simulator="icarus")
