"""layernorm: golden model vs float and a slow model, parameter validation, cycle model,
cocotb regression."""

import dataclasses

import numpy as np
import pytest

from sim import bf16
from gen.harness import regress
from sim.layernorm import (DEFAULT, PRESETS, LayerNormParams, eps_const, latency, layernorm,
                           layernorm_slow, row_cycles, rsqrt_cycles, rsqrt_table)

# ---------------------------------------------------------------- stimulus (shared) ----


def random_rows(rng, n, dim):
    """(x, r) rows (n, dim): hidden-state-like values, outlier channels, ties, raw patterns."""
    scale = np.exp2(rng.uniform(-4, 3, (n, 1)))
    x = rng.standard_normal((n, dim)) * scale + rng.normal(0, 1, (n, 1))
    r = rng.standard_normal((n, dim)) * scale * rng.uniform(0.1, 3, (n, 1))
    kind = rng.integers(0, 10, (n, 1))
    x = np.where((kind == 1) & (rng.random((n, dim)) < 0.05), x * 40, x)      # outliers
    x = np.where(kind == 2, np.round(x), x)                                    # ties
    r = np.where(kind == 2, 0, r)
    xb, rb = bf16.from_float32(x.astype(np.float32)), bf16.from_float32(r.astype(np.float32))
    raw = rng.integers(0, 1 << 16, (n, dim), dtype=np.uint32).astype(np.uint16)
    xb = np.where((kind == 3) & (rng.random((n, dim)) < 0.1), raw, xb)
    return xb.astype(np.uint16), rb.astype(np.uint16)


def random_params(rng, dim):
    g = bf16.from_float32((1 + rng.standard_normal(dim) * 0.3).astype(np.float32))
    b = bf16.from_float32((rng.standard_normal(dim) * 0.2).astype(np.float32))
    return g, b


def directed_rows(dim):
    """Corners: all equal, one huge value, extremes, -0, subnormals, cancellation in x + r,
    saturation of x, r and h, and Inf/NaN in x or r (rows 9, 10, 12, 13: NaN rows)."""
    one = lambda v: np.full(dim, v, dtype=np.uint16)
    idx = np.arange(dim)
    z = one(0)
    rows = [
        (one(0x3F80), z),                                            # all equal -> beta
        (z, z),                                                      # all zero
        (one(0x8000), one(0x8000)),                                  # -0
        (np.where(idx == 0, 0x4700, 0x3F80), z),                     # one huge
        (np.where(idx == 1, 0x4700, 0xC700), one(0x4700)),           # cancels in x + r
        (one(bf16.MAX_FINITE), z),                                   # saturates
        (np.where(idx % 2 == 0, bf16.MAX_FINITE, 0x8000 | bf16.MAX_FINITE), z),
        (one(bf16.MIN_NORMAL), z),                                   # below the fixed grid
        (np.where(idx % 2 == 0, 0x0001, 0x807F), z),                 # subnormals
        (np.where(idx == dim - 1, bf16.POS_INF, 0x3F80), z),         # Inf -> NaN row
        (z, np.where(idx == 0, bf16.NAN, 0)),                        # NaN in r -> NaN row
        ((idx % 3).astype(np.uint16) * 0x40 + 0x3F00, (idx % 5).astype(np.uint16) + 0xBF00),
        (np.where(idx == dim // 2, bf16.NAN, 0x4000), one(0x3F80)),  # NaN in x -> NaN row
        (one(0xBF80), np.where(idx == 1, bf16.NEG_INF, 0x3F00)),     # -Inf in r -> NaN row
        ((0x4380 + idx % 8).astype(np.uint16),                       # x + r = 0 exactly but
         (0xC380 + idx % 8).astype(np.uint16) ^ (idx == 0) * 1),     # one element
        (one(0x43FF), one(0x43FF)),                                  # h saturates: all equal
        (np.where(idx % 3 == 0, 0x43FF, 0xC3FF), np.where(idx % 3 == 0, 0x43F0, 0xC3F0)),
        (np.where(idx % 2 == 0, 0x3F81, 0x3F80), one(0xBF80)),       # tiny variance
    ]
    x = np.array([r[0] for r in rows], dtype=np.uint16)
    r = np.array([r[1] for r in rows], dtype=np.uint16)
    return x, r


def float_ln(x, r, g, b, eps):
    f = lambda a: bf16.to_float32(bf16.daz(a)).astype(np.float64)
    h = f(x) + f(r)
    return (h - h.mean(-1, keepdims=True)) / np.sqrt(h.var(-1, keepdims=True) + eps) * f(g) + f(b)


# ---------------------------------------------------------------- golden model ----------


def test_golden_matches_slow_model():
    p = PRESETS["tiny"]
    rng = np.random.default_rng(1)
    x, r = random_rows(rng, 60, p.dim)
    dx, dr = directed_rows(p.dim)
    x, r = np.concatenate([x, dx]), np.concatenate([r, dr])
    g, b = random_params(rng, p.dim)
    g[3], b[5] = bf16.NAN, bf16.POS_INF
    assert np.array_equal(layernorm(x, r, g, b, p), layernorm_slow(x, r, g, b, p))


def test_golden_matches_slow_model_other_params():
    p = LayerNormParams(dim=6, int_bits=4, frac_bits=5, eps=1e-3, rsqrt_bits=10, guess_bits=2,
                        newton_steps=1, norm_frac=6, out_frac=8, out_int=5)
    rng = np.random.default_rng(2)
    x, r = random_rows(rng, 300, p.dim)
    g, b = random_params(rng, p.dim)
    g[0] = bf16.from_float32(np.float32(300.0))                  # product saturates
    assert np.array_equal(layernorm(x, r, g, b, p), layernorm_slow(x, r, g, b, p))


def test_golden_matches_slow_model_bert_large_extremes():
    """dim 1024 with saturating values: the widest sums the presets produce."""
    p = PRESETS["bert-large"]
    idx = np.arange(p.dim)
    x = np.array([np.where(idx % 2 == 0, bf16.MAX_FINITE, 0x8000 | bf16.MAX_FINITE),
                  np.where(idx < 3, bf16.MAX_FINITE, 0x3F80),
                  np.where(idx % 7 == 0, 0x43FF, 0xC3FF)], dtype=np.uint16)
    r = np.where(idx % 3 == 0, 0x43FF, 0).astype(np.uint16)[None].repeat(3, axis=0)
    g, b = random_params(np.random.default_rng(6), p.dim)
    assert np.array_equal(layernorm(x, r, g, b, p), layernorm_slow(x, r, g, b, p))


def test_golden_close_to_float():
    p = DEFAULT
    rng = np.random.default_rng(3)
    x = bf16.from_float32(rng.normal(0, 1, (300, p.dim)).astype(np.float32))
    r = bf16.from_float32(rng.normal(0.5, 2, (300, p.dim)).astype(np.float32))
    g, b = random_params(rng, p.dim)
    out = bf16.to_float32(layernorm(x, r, g, b, p)).astype(np.float64)
    ref = float_ln(x, r, g, b, p.eps)
    # bf16 output: half an ulp (2**-9 relative) plus a little from the fixed-point steps
    assert np.all(np.abs(out - ref) <= np.abs(ref) * 2.0 ** -8 + 2e-3)


def test_golden_rsqrt_accuracy():
    """1/sqrt(W) error after the table and Newton steps, over many magnitudes."""
    from sim.layernorm import _rsqrt
    p = DEFAULT
    W = np.unique(np.round(np.exp2(np.linspace(0, 58, 5000))).astype(np.int64)).astype(object)
    W = np.concatenate([W, [1 << 70, (1 << 72) + 12345, 3 << 66]])     # beyond int64
    y, k = _rsqrt(W, p)
    approx = y * np.exp2(-k.astype(np.float64) - p.rsqrt_bits)
    rel = np.abs(approx * np.sqrt(np.array([float(w) for w in W])) - 1)
    assert rel.max() < 2.0 ** -16
    assert len(rsqrt_table(p.guess_bits, p.rsqrt_bits)) == 1 << p.guess_bits


def test_golden_eps_constant():
    assert eps_const(DEFAULT) == 2                        # 1e-12 * 384**2 * 2**24 = 2.47
    p = dataclasses.replace(DEFAULT, eps=1e-5)
    assert eps_const(p) == round(1e-5 * 384 ** 2 * 2 ** 24)
    assert eps_const(dataclasses.replace(DEFAULT, eps=0.0)) == 0


def test_golden_directed_semantics():
    p = PRESETS["tiny"]
    x, r = directed_rows(p.dim)
    g, b = random_params(np.random.default_rng(4), p.dim)
    out = layernorm(x, r, g, b, p)
    f = lambda a: bf16.to_float32(a).astype(np.float64)
    assert np.all(np.abs(f(out[0]) - f(b)) <= 2.0 ** -p.out_frac)      # all equal -> beta
    nan_rows = [9, 10, 12, 13]
    assert np.all(out[nan_rows] == bf16.NAN)
    assert not np.any(np.delete(out, nan_rows, axis=0) == bf16.NAN)


def test_golden_rejects_wrong_shape():
    with pytest.raises(ValueError, match=r"x and r must have the same shape \(\.\.\., dim=64\)"):
        layernorm(np.zeros((2, 32), np.uint16), np.zeros((2, 32), np.uint16),
                  np.zeros(64, np.uint16), np.zeros(64, np.uint16), PRESETS["tiny"])


# ---------------------------------------------------------------- parameters ------------


@pytest.mark.parametrize("field, value, message", [
    ("dim", 1, r"dim must be an integer in 2\.\.1024, not 1"),
    ("dim", 1025, r"dim must be an integer in 2\.\.1024, not 1025"),
    ("int_bits", 0, r"int_bits must be an integer in 1\.\.12, not 0"),
    ("int_bits", 13, r"int_bits must be an integer in 1\.\.12, not 13"),
    ("frac_bits", 3, r"frac_bits must be an integer in 4\.\.14, not 3"),
    ("frac_bits", 15, r"frac_bits must be an integer in 4\.\.14, not 15"),
    ("eps", -1e-5, r"eps must be a float in \[0, 1\), not -1e-05"),
    ("eps", 1.0, r"eps must be a float in \[0, 1\), not 1\.0"),
    ("eps", "1e-5", r"eps must be a float in \[0, 1\), not '1e-5'"),
    ("rsqrt_bits", 7, r"rsqrt_bits must be an integer in 8\.\.24, not 7"),
    ("rsqrt_bits", 25, r"rsqrt_bits must be an integer in 8\.\.24, not 25"),
    ("guess_bits", 1, r"guess_bits must be an integer in 2\.\.8, not 1"),
    ("guess_bits", 9, r"guess_bits must be an integer in 2\.\.8, not 9"),
    ("newton_steps", -1, r"newton_steps must be an integer in 0\.\.4, not -1"),
    ("newton_steps", 5, r"newton_steps must be an integer in 0\.\.4, not 5"),
    ("norm_frac", 3, r"norm_frac must be an integer in 4\.\.20, not 3"),
    ("norm_frac", 21, r"norm_frac must be an integer in 4\.\.20, not 21"),
    ("out_frac", 5, r"out_frac must be an integer in 6\.\.24, not 5"),
    ("out_frac", 25, r"out_frac must be an integer in 6\.\.24, not 25"),
    ("out_int", 3, r"out_int must be an integer in 4\.\.20, not 3"),
    ("out_int", 21, r"out_int must be an integer in 4\.\.20, not 21"),
])
def test_params_rejects_out_of_range(field, value, message):
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(LayerNormParams(), **{field: value})


def test_params_rejects_too_wide_variance():
    with pytest.raises(ValueError, match=r"int_bits \+ frac_bits = 26 is too wide for dim 1024 "
                                         r"and rsqrt_bits 20: sum\(h\*h\) needs 63 bits"):
        LayerNormParams(dim=1024, int_bits=12, frac_bits=14)


def test_params_keyword_only():
    with pytest.raises(TypeError):
        LayerNormParams(64)


def test_presets_cover_every_name():
    assert set(PRESETS) == {"tiny", "minilm", "bert-base", "bert-large"}
    assert [PRESETS[n].dim for n in ("tiny", "minilm", "bert-base", "bert-large")] == \
        [64, 384, 768, 1024]
    # every preset, and the default with any dim (what the quantized BERT builds), validates
    for d in (2, 64, 384, 768, 1024):
        dataclasses.replace(DEFAULT, dim=d)


# ---------------------------------------------------------------- cycle model -----------


def test_cycle_model_at_the_presets():
    """The figures the docstring of hw/layernorm.py states: the reciprocal square root keeps
    up with every preset's rows, so a row takes dim cycles, and latency is dim + 57."""
    for p in PRESETS.values():
        assert rsqrt_cycles(p) == 32 < p.dim
        assert row_cycles(p) == p.dim
        assert latency(p) == p.dim + 57
    short = dataclasses.replace(DEFAULT, dim=6)
    assert row_cycles(short) == rsqrt_cycles(short)
    # dim within 3 of rsqrt_cycles: the two banks limit (measured by layernorm_throughput)
    assert row_cycles(dataclasses.replace(DEFAULT, dim=32)) == 33.5
    assert row_cycles(dataclasses.replace(DEFAULT, dim=34)) == 34.5
    assert row_cycles(dataclasses.replace(DEFAULT, dim=35)) == 35


# ---------------------------------------------------------------- cocotb regression -----

try:
    import cocotb
    from cocotb.triggers import ClockCycles
except ImportError:   # pragma: no cover - cocotb is a dependency
    cocotb = None

if cocotb is not None:
    from gen import streamkit
    from hw.layernorm import (layernorm_input_layout, layernorm_output_layout,
                              layernorm_param_layout)

    class TB(streamkit.TB):
        """layernorm: sources ``i`` (x, r) and ``i_param`` (gamma, beta), sink ``o``."""

        def __init__(self, dut, **stalls):
            super().__init__(dut, **stalls)
            self.src = self.source("i", layernorm_input_layout(self.params))
            self.par = self.source("i_param", layernorm_param_layout(self.params))
            self.out = self.sink("o", layernorm_output_layout(self.params))

    async def run_test(tb, batches):
        """``batches``: (x, r, gamma, beta) each. The gamma/beta table is loaded (under the
        source's idle cycles) before each batch, once the previous batch has drained; every
        row of a batch is checked against the golden model."""
        await tb.start()
        p = tb.params
        for x, r, g, b in batches:
            await send_batch(tb, x, r, g, b)
            await tb.drain(tb.cycle + 12 * x.size + 4 * rsqrt_cycles(p) * len(x) + 2000)

    async def send_batch(tb, x, r, g, b):
        """Load the gamma/beta table (wait until it is taken), then queue the rows and their
        golden results (the stimulus of one ``run_test`` batch)."""
        p = tb.params
        tb.par.send(gamma=g, beta=b)
        while not tb.par.empty:
            await ClockCycles(tb.dut.clk, 16)
        last = np.broadcast_to(np.arange(p.dim) == p.dim - 1, x.shape).astype(np.int64)
        tb.out.expect(data=layernorm(x, r, g, b, p), last=last)
        tb.src.send(x=x, r=r)

    def directed_params(rng, dim):
        """gamma/beta sets: random, then NaN/Inf, zeros, huge gamma (saturates), tiny gamma
        (floors), subnormal and huge beta."""
        g, b = random_params(rng, dim)
        g2, b2 = g.copy(), b.copy()
        idx = np.arange(dim)
        for i, (gv, bv) in enumerate([(bf16.NAN, 0x3F80), (0x3F80, bf16.NEG_INF),
                                      (bf16.POS_INF, 0), (0x0000, 0x8000),
                                      (bf16.MAX_FINITE, 0x0001), (0x0080, 0x47FF),
                                      (0x8080, 0xC7FF), (0xC780, bf16.MAX_FINITE)]):
            g2[idx % 8 == i], b2[idx % 8 == i] = gv, bv
        return [(g, b), (g2, b2)]

    @cocotb.test()
    async def layernorm_directed(dut):
        """Corner rows under random stalls, with two gamma/beta sets (NaN, Inf, 0, extremes):
        the table is reloaded between the batches."""
        tb = TB(dut, idle=0.3, backpressure=0.3)
        x, r = directed_rows(tb.params.dim)
        sets = directed_params(tb.rng, tb.params.dim)
        await run_test(tb, [(x, r, g, b) for g, b in sets])
        tb.report(vectors=len(sets) * x.shape[0])

    @cocotb.test()
    async def layernorm_random(dut):
        """NUM_SAMPLES random rows in three batches (table reloaded per batch), random idle
        and backpressure on every stream."""
        tb = TB(dut)
        n = streamkit.samples_from_env(200)
        batches = []
        for part in np.array_split(np.arange(n), 3):
            x, r = random_rows(tb.rng, len(part), tb.params.dim)
            batches.append((x, r) + random_params(tb.rng, tb.params.dim))
        await run_test(tb, batches)
        tb.report(vectors=n)

    @cocotb.test()
    async def layernorm_reset_midstream(dut):
        """Batches of random rows (a new gamma/beta table each), each cut by a reset at a
        random cycle under random stalls; a last batch runs to the end: every result before a
        reset and after it is bit-exact, and nothing stale comes out."""
        tb = TB(dut)
        p = tb.params
        await tb.start()
        n = max(streamkit.samples_from_env(200) // 20, 4)
        for i in range(9):
            x, r = random_rows(tb.rng, n, p.dim)
            await send_batch(tb, x, r, *random_params(tb.rng, p.dim))
            if i < 8:
                await tb.reset_after(0, 3 * x.size + rsqrt_cycles(p) * n)
        await tb.drain(tb.cycle + 12 * x.size + 4 * rsqrt_cycles(p) * n + 2000)
        assert tb.resets == 8
        tb.report(vectors=0)

    @cocotb.test()
    async def layernorm_throughput(dut):
        """No stalls: ``row_cycles`` cycles per row once the two banks are in step, and the
        first result ``latency`` cycles after the first element."""
        tb = TB(dut, idle=0.0, backpressure=0.0)
        p = tb.params
        n = 10
        x, r = random_rows(tb.rng, n, p.dim)
        await run_test(tb, [(x, r) + random_params(tb.rng, p.dim)])
        ends = np.array(tb.out.sink.times[p.dim - 1::p.dim])
        per_row = np.diff(ends)[3:].mean()           # 6 intervals after the first rows
        first = tb.out.sink.times[0] - tb.src.times[0]
        assert per_row == row_cycles(p), (per_row, row_cycles(p), np.diff(ends).tolist())
        assert first == latency(p), (first, latency(p))
        tb.report(vectors=0, row_len=p.dim, cycles_per_row=per_row, latency=first)


# ---------------------------------------------------------------- runner (pytest) -------

SMALL = LayerNormParams(dim=10, int_bits=4, frac_bits=5, eps=1e-3, rsqrt_bits=10, guess_bits=2,
                        newton_steps=1, norm_frac=6, out_frac=8, out_int=5)
CASES = {
    # case: (params, random rows in the default run). Rows limited by the reciprocal square
    # root (d4: eps = 0, so W = 0 occurs; no Newton step; the largest table), by the two
    # banks (d10-small: narrow widths, one Newton step, the smallest table) and by dim
    # (minilm, the preset).
    "d4-eps0-n0": (dataclasses.replace(DEFAULT, dim=4, eps=0.0, newton_steps=0,
                                        guess_bits=8), 4000),
    "d10-small": (SMALL, 2000),
    "minilm": (PRESETS["minilm"], 1000),
}


def test_cases_cover_each_throughput_limit():
    d4, small, minilm = (CASES[c][0] for c in CASES)
    assert row_cycles(d4) == rsqrt_cycles(d4) > d4.dim
    assert row_cycles(small) == (small.dim + rsqrt_cycles(small) + 3) / 2 > rsqrt_cycles(small)
    assert row_cycles(minilm) == minilm.dim


@pytest.mark.parametrize("case", CASES)
def test_layernorm_verilator(case):
    params, n = CASES[case]
    regress("layernorm", params, case=case, samples=n)


@pytest.mark.icarus
def test_layernorm_icarus():
    regress("layernorm", SMALL, case="d10-small", samples=150, simulator="icarus")
