"""layernorm: golden model vs float and a slow model, parameter validation, cocotb regression."""

import dataclasses

import numpy as np
import pytest

from sim import bf16
from gen.harness import regress
from sim.layernorm import (DEFAULT, PRESETS, LayerNormParams, eps_const, layernorm,
                           layernorm_slow, rsqrt_table)

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
    """Corners: all equal, one huge value, extremes, -0, subnormals, Inf, NaN."""
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
    assert np.all(out[9] == bf16.NAN) and np.all(out[10] == bf16.NAN)
    assert not np.any(out[:9] == bf16.NAN)


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


# ---------------------------------------------------------------- cocotb regression -----

try:
    import cocotb
    from cocotb.triggers import ClockCycles, RisingEdge
except ImportError:   # pragma: no cover - cocotb is a dependency
    cocotb = None

if cocotb is not None:
    from hw.layernorm import (layernorm_input_layout, layernorm_output_layout,
                              layernorm_param_layout, rsqrt_cycles)
    from gen.streamkit_legacy import (Packer, Scoreboard, StreamSink, StreamSource, clock_reset,
                               params_from_env, report, samples_from_env, seed_from_env)

    async def _run(dut, batches, *, idle, backpressure, seed):
        """``batches``: list of (x, r, gamma, beta); the table is reloaded before each batch
        (through ``i_param``, with random idle cycles) once the previous batch has drained."""
        p = params_from_env()
        pin = Packer(layernorm_input_layout(p))
        ppar = Packer(layernorm_param_layout(p))
        pout = Packer(layernorm_output_layout(p))
        await clock_reset(dut)
        src = StreamSource(dut, "i", idle=idle, seed=seed)
        psrc = StreamSource(dut, "i_param", idle=0.5, seed=seed + 1)
        sink = StreamSink(dut, "o", backpressure=backpressure, seed=seed)
        expected = []
        ends = []
        cycles = 0
        sb = Scoreboard(sink, expected, show=pout.unpack)
        check = sink.callback

        first = {}

        def on_beat(word):
            first.setdefault("out", cycles)
            if pout.unpack(word)["last"]:
                ends.append(cycles)
            check(word)
        sink.callback = on_beat
        total = 0
        for x, r, g, b in batches:
            psrc.send(ppar.pack(gamma=g, beta=b))
            while not psrc.empty:
                await RisingEdge(dut.clk)
                cycles += 1
            await ClockCycles(dut.clk, 2)
            o = layernorm(x, r, g, b, p)
            last = np.broadcast_to(np.arange(p.dim) == p.dim - 1, x.shape).astype(np.int64)
            sb.expected.extend(pout.pack(data=o, last=last))
            src.send(pin.pack(x=x, r=r))
            total += x.size
            limit = cycles + 30 * x.size + 1000
            sent0 = src.sent
            while not sb.done and cycles < limit:
                await RisingEdge(dut.clk)
                cycles += 1
                if src.sent > sent0:
                    first.setdefault("in", cycles)
        await sb.wait(dut.clk, 0)
        assert src.empty, f"{len(src.queue) - src.pos} input beats not accepted"
        sb.check()
        _run.ends = ends
        _run.latency = first.get("out", 0) - first.get("in", 0)
        return cycles, total, sb.mismatches

    @cocotb.test()
    async def layernorm_directed(dut):
        """Corner rows under random stalls, with gamma/beta corners (NaN, Inf, 0, huge)."""
        p = params_from_env()
        rng = np.random.default_rng(11)
        x, r = directed_rows(p.dim)
        g, b = random_params(rng, p.dim)
        g2, b2 = g.copy(), b.copy()
        g2[0], b2[-1] = bf16.NAN, bf16.NEG_INF
        g2[1 % p.dim], b2[1 % p.dim] = 0x0000, 0x8000
        g2[-1], b2[0] = bf16.MAX_FINITE, 0x0001
        batches = [(x, r, g, b), (x, r, g2, b2)]
        cycles, beats, bad = await _run(dut, batches, idle=0.3, backpressure=0.3, seed=1)
        report(vectors=2 * x.shape[0], beats=beats, mismatches=bad, cycles=cycles)

    @cocotb.test()
    async def layernorm_random(dut):
        """NUM_SAMPLES random rows in a few batches (table reloaded per batch), random stalls."""
        p = params_from_env()
        seed = seed_from_env()
        n = samples_from_env(200)
        rng = np.random.default_rng(seed)
        batches = []
        for part in np.array_split(np.arange(n), 3):
            x, r = random_rows(rng, len(part), p.dim)
            batches.append((x, r) + random_params(rng, p.dim))
        cycles, beats, bad = await _run(dut, batches, idle=0.2, backpressure=0.3, seed=seed)
        report(vectors=n, beats=beats, mismatches=bad, cycles=cycles)

    @cocotb.test()
    async def layernorm_throughput(dut):
        """No stalls: cycles per row in steady state (target dim + 1)."""
        p = params_from_env()
        n = 8
        rng = np.random.default_rng(5)
        x, r = random_rows(rng, n, p.dim)
        cycles, beats, bad = await _run(dut, [(x, r) + random_params(rng, p.dim)],
                                        idle=0.0, backpressure=0.0, seed=0)
        ends = _run.ends
        per_row = (ends[-1] - ends[0]) / (n - 1)
        assert per_row <= max(p.dim + 1, rsqrt_cycles(p)), per_row
        report(vectors=0, beats=0, mismatches=bad, cycles=cycles, row_len=p.dim,
               cycles_per_row=per_row, latency=_run.latency)


# ---------------------------------------------------------------- runner (pytest) -------

CASES = {
    # case: (params, random rows in the default run)
    "d4": (dataclasses.replace(DEFAULT, dim=4), 6000),
    "d6-small": (LayerNormParams(dim=6, int_bits=4, frac_bits=5, eps=1e-3, rsqrt_bits=10,
                                 guess_bits=2, newton_steps=1, norm_frac=6, out_frac=8,
                                 out_int=5), 3000),
    "tiny": (PRESETS["tiny"], 1000),
    "minilm": (PRESETS["minilm"], 40),
}
# 6000 + 3000 + 1000 + 40 = 10,040 random rows, plus the corner rows


@pytest.mark.parametrize("case", CASES)
def test_layernorm_verilator(case):
    params, n = CASES[case]
    regress("layernorm", params, case=case, samples=n)


@pytest.mark.icarus
def test_layernorm_icarus():
    regress("layernorm", CASES["d6-small"][0], case="d6-small", samples=150, simulator="icarus")
