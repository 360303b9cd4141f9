"""mixed_array: golden model tests (float math, slow exact Fractions), parameter validation,
the cocotb regression (random dot products per mode, corners, a MiniLM attention head)."""

import dataclasses
import math
import os
from fractions import Fraction

import numpy as np
import pytest

from sim import bf16, mxop
from gen.harness import regress
from sim.mixed_array import (PRESETS, MixedArrayParams, beats, matmul_static, minilm_head_qkv,
                             mixed_dot, mxint, pv, qk, run_beats)

# ---------------------------------------------------------------- stimulus (shared) ----


def random_rows(rng, m, k, *, specials=True):
    """Random bf16 rows (m, k): varied scales, outliers, sparse rows, ties, raw patterns."""
    scale = np.exp2(rng.integers(-20, 20, size=(m, 1))).astype(np.float32)
    x = rng.standard_normal((m, k)).astype(np.float32) * scale
    kind = rng.integers(0, 8, size=(m, 1))
    big = rng.random((m, k)) < 0.05
    x = np.where((kind == 1) & big, x * np.exp2(rng.integers(3, 14, size=(m, k))), x)
    x = np.where((kind == 2) & (rng.random((m, k)) < 0.8), 0, x)
    x = np.where(kind == 3, np.sign(x) * scale * rng.integers(0, 3, size=(m, k)), x)
    bits = bf16.from_float32(x)
    if specials:
        raw = rng.integers(0, 1 << 16, size=(m, k), dtype=np.uint32).astype(np.uint16)
        bits = np.where((kind == 4) & (rng.random((m, k)) < 0.05), raw, bits)
    return bits.astype(np.uint16)


def random_bf16_scale(rng, n):
    return bf16.from_float32((rng.standard_normal(n) * np.exp2(rng.integers(-12, 4, n)))
                             .astype(np.float32))


# ---------------------------------------------------------------- slow references ------


def slow_round(v):
    """Round a Fraction to bf16 bits: RNE to 8 significant bits, FTZ, overflow to Inf."""
    if v == 0:
        return 0
    neg = v < 0
    a = -v if neg else v
    e = math.floor(math.log2(a.numerator) - math.log2(a.denominator))
    while Fraction(2) ** e > a:
        e -= 1
    while Fraction(2) ** (e + 1) <= a:
        e += 1
    m = a / Fraction(2) ** (e - 7)               # in [128, 256)
    r = math.floor(m)
    frac = m - r
    if frac > Fraction(1, 2) or (frac == Fraction(1, 2) and r % 2):
        r += 1
    if r == 256:
        r, e = 128, e + 1
    be = e + 127
    sign = 0x8000 if neg else 0
    if be >= 255:
        return sign | 0x7F80
    if be <= 0:
        return sign
    return sign | (be << 7) | (r - 128)


def fval(b):
    """Exact Fraction of a finite bf16 pattern after DAZ."""
    b = int(bf16.daz(np.uint16(b)))
    e = (b >> 7) & 0xFF
    if e == 0:
        return Fraction(0)
    m = Fraction((b & 0x7F) | 0x80) * Fraction(2) ** (e - 134)
    return -m if b >> 15 else m


def slow_dot(x, w, w_exp, w_nan, scale, bias, fmt, frac_bits):
    """One output by Python ints and Fractions: terms, anchor, floor alignment, one rounding."""
    enc = mxop.encode(np.asarray(x, np.uint16)[None], fmt)
    b = fmt.block
    nan = bool(w_nan)
    terms = []                                   # (Fraction value, exponent, live)
    for j in range(len(x) // b):
        e = int(enc.exp[0, j])
        we = 0 if w_exp is None else int(w_exp[j])
        t = sum(int(enc.q[0, j, i]) * int(w[j * b + i]) for i in range(b))
        se = e - 127 - (fmt.bits - 2) + we
        terms.append((t, se, e not in (0, 255)))
        nan |= e == 255
        for o in range(fmt.outliers):
            v = int(enc.out_val[0, j, o])
            if (v >> 7) & 0xFF == 255:
                nan = True
                continue
            fv = fval(v)
            if fv == 0:
                continue
            oe = ((v >> 7) & 0xFF) - 134 + we
            mant = int(fv / Fraction(2) ** (oe - we))
            terms.append((mant * int(w[j * b + int(enc.out_idx[0, j, o])]), oe, True))
    if nan or (int(scale) >> 7) & 0xFF == 255 or (int(bias) >> 7) & 0xFF == 255:
        return bf16.NAN
    live = [e for t, e, lv in terms if lv]
    if not live:
        acc, lsb = 0, 0
    else:
        lsb = max(live) - frac_bits
        acc = 0
        for t, e, lv in terms:
            if lv:
                acc += t * 2 ** (e - lsb) if e >= lsb else t // 2 ** (lsb - e)   # floor
    return slow_round(Fraction(acc) * Fraction(2) ** lsb * fval(scale) + fval(bias))


# ---------------------------------------------------------------- golden model ----------

P_SMALL = MixedArrayParams(lanes=2, width=4, block=16, outliers=3, bits=5, weight_bits=8,
                           frac_bits=12, max_blocks=4)


@pytest.mark.parametrize("seed", range(4))
def test_golden_static_matches_slow_exact(seed):
    rng = np.random.default_rng(seed)
    p = P_SMALL
    fmt = mxop.MXOPFormat(block=16, outliers=3, bits=int(rng.choice([3, 5])))
    m, k, n = 12, 48, 5
    x = random_rows(rng, m, k)
    w = rng.integers(-128, 128, size=(k, n))
    scale = random_bf16_scale(rng, n)
    bias = random_bf16_scale(rng, n)
    got = matmul_static(x, w, scale, bias, fmt, p)
    for i in range(m):
        for j in range(n):
            exp = slow_dot(x[i], w[:, j], None, False, scale[j], bias[j], fmt, p.frac_bits)
            assert got[i, j] == exp, f"[{i},{j}] expected {exp:#06x}, actual {got[i, j]:#06x}"


@pytest.mark.parametrize("seed", range(3))
def test_golden_qk_pv_match_slow_exact(seed):
    rng = np.random.default_rng(100 + seed)
    p = P_SMALL
    fmt = mxop.MXOPFormat(block=16, outliers=2, bits=5)
    seq, d = 16, 8
    p8 = dataclasses.replace(p, width=4, block=16)
    q, kk, v = (random_rows(rng, seq, d), random_rows(rng, seq, d), random_rows(rng, seq, d))
    s = qk(q, kk, fmt, p8)
    fq = fmt.for_length(d)
    kw, kwe, kn = mxint(kk, fq.block)
    for i in range(seq):
        for j in range(seq):
            exp = slow_dot(q[i], kw[j], kwe[j], kn[j], 0x3F80, 0, fq, p.frac_bits)
            assert s[i, j] == exp, f"S[{i},{j}] expected {exp:#06x}, actual {s[i, j]:#06x}"
    pm = random_rows(rng, seq, seq, specials=False)
    c = pv(pm, v, fmt, p8)
    fp = fmt.for_length(seq)
    vw, vwe, vn = mxint(v.T, fp.block)
    for i in range(seq):
        for j in range(d):
            exp = slow_dot(pm[i], vw[j], vwe[j], vn[j], 0x3F80, 0, fp, p.frac_bits)
            assert c[i, j] == exp, f"C[{i},{j}] expected {exp:#06x}, actual {c[i, j]:#06x}"


def test_golden_close_to_float():
    """Without specials the result is within MX-OP quantization error of float math."""
    rng = np.random.default_rng(7)
    p = PRESETS["minilm"]
    seq, d = 32, 32
    q = bf16.from_float32(rng.standard_normal((seq, d)).astype(np.float32))
    k = bf16.from_float32(rng.standard_normal((seq, d)).astype(np.float32))
    fmt = mxop.MXOPFormat(block=128, outliers=4, bits=5)
    s = bf16.to_float32(qk(q, k, fmt, p)).astype(np.float64)
    ref = bf16.to_float32(q).astype(np.float64) @ bf16.to_float32(k).astype(np.float64).T
    err = np.abs(s - ref) / (np.abs(bf16.to_float32(q)).astype(np.float64)
                             @ np.abs(bf16.to_float32(k)).astype(np.float64).T)
    assert np.median(err) < 0.05 and err.max() < 0.3
    pm = rng.random((seq, seq)).astype(np.float32)
    pm = bf16.from_float32(pm / pm.sum(axis=1, keepdims=True))
    c = bf16.to_float32(pv(pm, k, fmt, p)).astype(np.float64)
    ref = bf16.to_float32(pm).astype(np.float64) @ bf16.to_float32(k).astype(np.float64)
    assert np.max(np.abs(c - ref)) < 0.1 * np.max(np.abs(ref))


def test_golden_specials():
    p = P_SMALL
    fmt = mxop.MXOPFormat(block=16, outliers=2, bits=5)
    x = np.full((3, 16), 0x3F80, np.uint16)
    x[1, 3] = bf16.POS_INF
    x[2, 5] = bf16.NAN
    w = np.ones((16, 2), np.int64)
    out = matmul_static(x, w, [0x3F80, 0x3F80], [0, bf16.POS_INF], fmt, p)
    assert out[0, 0] == 0x4180                 # 16.0
    assert np.all(out[1:] == bf16.NAN) and out[0, 1] == bf16.NAN
    # Inf in the stationary MX-INT operand poisons its column only
    kk = np.full((16, 16), 0x3F80, np.uint16)
    kk[4, 0] = bf16.NEG_INF
    s = qk(np.full((16, 16), 0x3F80, np.uint16), kk, fmt, p)
    assert np.all(s[:, 4] == bf16.NAN) and np.all(s[:, :4] == 0x4180)


def test_golden_beats_match_mxop_dot():
    """The beat stream of the hardware, consumed term by term, gives the golden results."""
    rng = np.random.default_rng(11)
    for p, fmt in ((P_SMALL, mxop.MXOPFormat(block=16, outliers=3, bits=3)),
                   (dataclasses.replace(P_SMALL, width=8), mxop.MXOPFormat(block=16, outliers=3,
                                                                            bits=5)),
                   (dataclasses.replace(P_SMALL, width=16), mxop.MXOPFormat(block=16,
                                                                             outliers=3))):
        x = random_rows(rng, 9, 32)
        w = rng.integers(-128, 128, size=(32, 4))
        we = rng.integers(-140, 120, size=(2, 4))
        wn = rng.random(4) < 0.2
        sc, bi = random_bf16_scale(rng, 4), random_bf16_scale(rng, 4)
        ref = mixed_dot(x, w, we, wn, sc, bi, fmt, p)
        bt = beats(x, w, we, wn, sc, bi, fmt, p)
        got = run_beats(bt, p)
        rows, grp = bt["order"][:, 0], bt["order"][:, 1]
        exp = np.stack([ref[r, g * p.lanes:(g + 1) * p.lanes] for r, g in zip(rows, grp)])
        assert np.array_equal(got, exp)


def test_golden_rejects_bad_operands():
    p = P_SMALL
    fmt = mxop.MXOPFormat(block=16, outliers=3, bits=5)
    x = np.zeros((1, 16), np.uint16)
    with pytest.raises(ValueError, match=r"integer operand must be in -128\.\.127"):
        matmul_static(x, np.full((16, 1), 128), 0x3F80, 0, fmt, p)
    with pytest.raises(ValueError, match=r"format bits=8 exceed"):
        matmul_static(x, np.zeros((16, 1), int), 0x3F80, 0,
                      mxop.MXOPFormat(block=16, outliers=0, bits=8), p)
    with pytest.raises(ValueError, match=r"at most max_blocks=4 blocks"):
        beats(np.zeros((1, 80), np.uint16), np.zeros((80, 2), int), None, None, 0x3F80, 0,
              fmt, p)
    with pytest.raises(ValueError, match=r"multiple of block=16"):
        matmul_static(np.zeros((1, 40), np.uint16), np.zeros((40, 1), int), 0x3F80, 0, fmt, p)


# ---------------------------------------------------------------- parameters ------------


@pytest.mark.parametrize("field, value, message", [
    ("lanes", 0, r"lanes must be an integer in 1\.\.64, not 0"),
    ("lanes", 65, r"lanes must be an integer in 1\.\.64, not 65"),
    ("width", 3, r"width must be a power of two in 1\.\.64, not 3"),
    ("width", 128, r"width must be a power of two in 1\.\.64, not 128"),
    ("block", 1, r"block must be an integer in 2\.\.1024, not 1"),
    ("block", 2048, r"block must be an integer in 2\.\.1024, not 2048"),
    ("block", 130, r"block must be a multiple of width=4, not 130"),
    ("outliers", -1, r"outliers must be an integer in 0\.\.16, not -1"),
    ("outliers", 17, r"outliers must be an integer in 0\.\.16, not 17"),
    ("bits", 1, r"bits must be an integer in 2\.\.8, not 1"),
    ("bits", 9, r"bits must be an integer in 2\.\.8, not 9"),
    ("weight_bits", 1, r"weight_bits must be an integer in 2\.\.8, not 1"),
    ("weight_bits", 9, r"weight_bits must be an integer in 2\.\.8, not 9"),
    ("frac_bits", 3, r"frac_bits must be an integer in 4\.\.24, not 3"),
    ("frac_bits", 25, r"frac_bits must be an integer in 4\.\.24, not 25"),
    ("max_blocks", 0, r"max_blocks must be an integer in 1\.\.64, not 0"),
    ("max_blocks", 65, r"max_blocks must be an integer in 1\.\.64, not 65"),
    ("lanes", True, r"lanes must be an integer in 1\.\.64, not True"),
    ("frac_bits", 16.0, r"frac_bits must be an integer in 4\.\.24, not 16\.0"),
])
def test_params_rejects_out_of_range(field, value, message):
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(MixedArrayParams(), **{field: value})


def test_params_keyword_only():
    with pytest.raises(TypeError):
        MixedArrayParams(4)


def test_params_presets_valid():
    for name, p in PRESETS.items():
        assert p.acc_bits <= 64 - 2, name


def test_golden_minilm_head_runs():
    """A real MiniLM head through qk, softmax and pv gives finite, plausible values."""
    from sim import softmax as sm
    q, k, v = minilm_head_qkv(16)
    p = PRESETS["minilm"]
    fmt = mxop.MXOPFormat(block=128, outliers=4, bits=5)
    s = qk(q, k, fmt, p)
    ref = bf16.to_float32(q).astype(np.float64) @ bf16.to_float32(k).astype(np.float64).T
    got = bf16.to_float32(s).astype(np.float64)
    assert np.all(bf16.is_finite(s))
    assert np.max(np.abs(got - ref)) < 0.1 * np.max(np.abs(ref))
    pm = sm.softmax(s, None, sm.PRESETS["minilm"])
    c = pv(pm, v, fmt, p)
    ref = bf16.to_float32(pm).astype(np.float64) @ bf16.to_float32(v).astype(np.float64)
    assert np.max(np.abs(bf16.to_float32(c) - ref)) < 0.1 * np.max(np.abs(ref))


# ---------------------------------------------------------------- stimulus for the RTL --


def corner_cases(rng, p, fmt, m_rows):
    """Directed (x, w, w_exp, w_nan, scale, bias) problems: the corners listed in the issue."""
    b = fmt.block
    k = b * min(2, p.max_blocks)
    n = p.lanes
    qm = (1 << (p.weight_bits - 1))
    one = np.full(k, 0x3F80, np.uint16)
    rows = [
        one,                                                   # every element a candidate
        np.where(np.arange(k) % 2 == 0, 0x3F80, 0xBF80),       # ties, mixed signs
        np.zeros(k, np.uint16),                                # zero blocks
        np.where(np.arange(k) < b, 0, 0x4000),                 # first block zero
        np.where(np.arange(k) == 0, bf16.MAX_FINITE, bf16.MIN_NORMAL),   # extreme spread
        np.full(k, bf16.MAX_FINITE),                           # largest finite
        np.full(k, 0x8000 | bf16.MAX_FINITE),
        np.full(k, bf16.MIN_NORMAL),                           # smallest normal
        np.full(k, 0x3FFF),                                    # saturating inliers
        np.where(np.arange(k) % 2 == 0, 0x3FFF, 0xBFFF),       # cancellation
        np.where(np.arange(k) == 3, bf16.POS_INF, 0x3F80),     # Inf outlier
        np.where(np.arange(k) == 1, bf16.NAN, 0xBF80),         # NaN outlier
        np.where(np.arange(k) % 3 == 0, bf16.NEG_INF, 0x4000),  # Inf inliers
        np.arange(k, dtype=np.uint16) % 0x7F + 1,              # subnormals: zero
        np.where(np.arange(k) < fmt.outliers, 0x7000, 0x0100),  # outliers far above inliers
    ]
    x = np.array(rows, np.uint16)
    x = np.concatenate([x, random_rows(rng, max(0, m_rows - len(rows)), k)])
    cols = [np.full(k, qm - 1), np.full(k, -qm), np.where(np.arange(k) % 2, qm - 1, -qm),
            np.zeros(k, np.int64), np.ones(k, np.int64)]
    w = np.stack([cols[j % len(cols)] if j < len(cols) else rng.integers(-qm, qm, k)
                  for j in range(n)], axis=1)
    problems = []
    sc = np.full(n, 0x3F80, np.uint16)
    bi = np.zeros(n, np.uint16)
    problems.append((x, w, None, None, sc, bi))
    # cancellation against a bias, extreme scales, Inf/NaN scale and bias
    sc2 = np.resize(np.array([0x3F80, bf16.MAX_FINITE, bf16.MIN_NORMAL, bf16.POS_INF,
                              0xBF80, bf16.NAN, 0x0001, 0x4000], np.uint16), n)
    bi2 = np.resize(np.array([0xC180, 0x7F00, bf16.NEG_INF, 0, 0x0080, 0x4180, bf16.NAN,
                              0x8000], np.uint16), n)
    problems.append((x, w, None, None, sc2, bi2))
    # dynamic MX-INT operand with extreme block exponents, zero blocks and NaN columns
    nb = k // b
    we = rng.integers(-133, 122, size=(nb, n))
    we[0, 0] = -133
    we[:, min(1, n - 1)] = 121
    wn = np.zeros(n, bool)
    wn[-1] = n > 2
    problems.append((x, w, we, wn, sc, bi))
    return problems


def random_problem(rng, p, fmt, rows, n_groups, mode):
    """Random (x, w, w_exp, w_nan, scale, bias): ``static`` or ``dynamic`` (MX-INT K/V)."""
    nb = int(rng.integers(1, p.max_blocks + 1))
    k = fmt.block * nb
    n = p.lanes * n_groups
    x = random_rows(rng, rows, k)
    if mode == "static":
        qm = 1 << (p.weight_bits - 1)
        w = rng.integers(-qm, qm, size=(k, n))
        return x, w, None, None, random_bf16_scale(rng, n), random_bf16_scale(rng, n)
    y = random_rows(rng, n, k)
    w, we, wn = mxint(y, fmt.block)
    if p.weight_bits < 8:
        w = np.clip(w, -(1 << (p.weight_bits - 1)), (1 << (p.weight_bits - 1)) - 1)
    return x, w.T, we.T, wn, np.full(n, 0x3F80, np.uint16), np.zeros(n, np.uint16)


def expected_outputs(problem, fmt, p):
    """Beats and the expected output payload fields for one problem."""
    x, w, we, wn, sc, bi = problem
    ref = mixed_dot(x, w, we, wn, sc, bi, fmt, p)
    bt = beats(x, w, we, wn, sc, bi, fmt, p)
    rows, grp = bt["order"][:, 0], bt["order"][:, 1]
    cols = grp[:, None] * p.lanes + np.arange(p.lanes)[None]
    return bt, ref[rows[:, None], cols]


# ---------------------------------------------------------------- cocotb regression -----

try:
    import cocotb
    from cocotb.triggers import RisingEdge
except ImportError:   # pragma: no cover - cocotb is a dependency
    cocotb = None

if cocotb is not None:
    from hw.mixed_array import mixed_array_input_layout, mixed_array_output_layout
    from gen.streamkit_legacy import (Packer, Scoreboard, StreamSink, StreamSource, clock_reset,
                               params_from_env, report, samples_from_env, seed_from_env)

    class TB:
        """mixed_array testbench: clock, reset, input source, output sink, scoreboard."""

        def __init__(self, dut):
            self.dut = dut
            self.p = params_from_env()
            self.inp = Packer(mixed_array_input_layout(self.p))
            self.out = Packer(mixed_array_output_layout(self.p))

        def words(self, bt, expected):
            p = self.p
            f = {"exp": bt["exp"], "bits": bt["bits"], "o_valid": bt["o_valid"],
                 "o_val": bt["o_val"], "blast": bt["blast"], "last": bt["last"]}
            for j in range(p.width):
                f[f"q.{j}"] = bt["q"][:, j]
            for l in range(p.lanes):
                for j in range(p.width):
                    f[f"lane.{l}.w.{j}"] = bt["w"][:, l, j]
                for name in ("o_w", "wexp", "wnan", "scale", "bias"):
                    f[f"lane.{l}.{name}"] = bt[name][:, l]
            win = self.inp.pack(**f)
            nv = expected.shape[0]
            lane = np.broadcast_to(np.arange(p.lanes), (nv, p.lanes))
            wout = self.out.pack(value=expected, lane=lane, last=lane == p.lanes - 1)
            return win, wout

        async def run(self, items, *, idle, backpressure, seed):
            """Stream every (problem, format) through; return (cycles, dot products, mismatches).

            Call once per cocotb test: it starts the clock and the stream drivers.
            """
            win, wout = [], []
            for prob, fmt in items:
                bt, exp = expected_outputs(prob, fmt, self.p)
                a, b = self.words(bt, exp)
                win += a
                wout += b
            await clock_reset(self.dut)
            src = StreamSource(self.dut, "i", idle=idle, seed=seed)
            sink = StreamSink(self.dut, "o", backpressure=backpressure, seed=seed)
            sb = Scoreboard(sink, wout, show=self.out.unpack)
            src.send(win)
            cycles = 0
            limit = 20 * (len(win) + len(wout)) + 1000
            while not sb.done and cycles < limit:
                await RisingEdge(self.dut.clk)
                cycles += 1
            await sb.wait(self.dut.clk, 0)
            assert src.empty, f"{len(src.queue) - src.pos} input beats not accepted"
            sb.check()
            self.beats = len(win)
            return cycles, len(wout), sb.mismatches

    def _formats(p, rng, n):
        """Random run-time formats the array accepts."""
        out = []
        for _ in range(n):
            blocks = [b for b in (p.block, p.block // 2, p.block // 4)
                      if b >= max(2, p.width) and b % p.width == 0]
            b = int(rng.choice(blocks))
            k = int(rng.integers(0, min(p.outliers, b - 1) + 1))
            bits = int(rng.integers(2, p.bits + 1))
            out.append(mxop.MXOPFormat(block=b, outliers=k, bits=bits))
        return out

    async def _random_mode(dut, mode):
        tb = TB(dut)
        p = tb.p
        seed = seed_from_env()
        rng = np.random.default_rng(seed + (mode == "dynamic"))
        target = samples_from_env(400)
        items = []
        got = 0
        fmts = _formats(p, rng, 4)
        while got < target:
            fmt = fmts[len(items) % len(fmts)]
            rows = int(rng.integers(1, 12))
            g = int(rng.integers(1, 3))
            items.append((random_problem(rng, p, fmt, rows, g, mode), fmt))
            got += rows * g * p.lanes
        cycles, n, bad = await tb.run(items, idle=0.2, backpressure=0.3, seed=seed)
        report(vectors=n, beats=tb.beats, mismatches=bad, cycles=cycles, mode=mode)

    @cocotb.test()
    async def mixed_static_random(dut):
        """Random MX-OP rows x static signed weights with random scale and bias; stalls."""
        await _random_mode(dut, "static")

    @cocotb.test()
    async def mixed_dynamic_random(dut):
        """Random MX-OP rows x a dynamic MX-INT8 operand (per-block exponents); stalls."""
        await _random_mode(dut, "dynamic")

    @cocotb.test()
    async def mixed_corners(dut):
        """Directed corners: outlier ties, zero blocks, extremes, cancellation, Inf/NaN."""
        tb = TB(dut)
        p = tb.p
        rng = np.random.default_rng(3)
        fmts = {mxop.MXOPFormat(block=p.block, outliers=min(p.outliers, p.block - 1),
                                bits=p.bits),
                mxop.MXOPFormat(block=p.block, outliers=0, bits=p.bits)}
        if p.block // p.width > 1 and p.outliers:
            # more outliers than chunks per block: extra beats
            b = p.width * 2
            fmts.add(mxop.MXOPFormat(block=b, outliers=min(p.outliers, b - 1), bits=2))
        items = [(prob, fmt) for fmt in sorted(fmts, key=str)
                 for prob in corner_cases(rng, p, fmt, 20)]
        cycles, n, bad = await tb.run(items, idle=0.3, backpressure=0.3, seed=4)
        report(vectors=n, beats=tb.beats, mismatches=bad, cycles=cycles, mode="corners")

    @cocotb.test()
    async def mixed_attention_head(dut):
        """One MiniLM head (layer 0, real weights and tokens): S = Q K^T, then C = P V."""
        from sim import softmax as sm
        tb = TB(dut)
        p = tb.p
        n_tok = int(os.environ.get("HEAD_TOKENS", 16))
        q, k, v = minilm_head_qkv(n_tok)
        fq = mxop.MXOPFormat(block=min(p.block, 128), outliers=min(4, p.outliers),
                             bits=min(5, p.bits)).for_length(q.shape[1])
        kw, kwe, kn = mxint(k, fq.block)
        s_ref = qk(q, k, fq, p)
        pm = sm.softmax(s_ref, None, sm.PRESETS["minilm"])
        fp = fq.for_length(n_tok)
        vw, vwe, vn = mxint(v.T, fp.block)
        one, zero = np.uint16(0x3F80), np.uint16(0)
        items = [((q, kw.T, kwe.T, kn, one, zero), fq), ((pm, vw.T, vwe.T, vn, one, zero), fp)]
        # the head's S and C are exactly the golden qk and pv
        bt, exp = expected_outputs(items[0][0], fq, p)
        groups = n_tok // p.lanes
        assert np.array_equal(exp.reshape(groups, n_tok, p.lanes).transpose(1, 0, 2)
                              .reshape(n_tok, n_tok), s_ref)
        cycles, n, bad = await tb.run(items, idle=0.1, backpressure=0.1, seed=1)
        report(vectors=n, beats=tb.beats, mismatches=bad, cycles=cycles, mode="head")

    @cocotb.test(skip=os.environ.get("MIXED_BENCH", "") == "")
    async def mixed_utilization(dut):
        """A MiniLM head at HEAD_TOKENS tokens, no stalls: S = Q K^T then C = P V back to back.

        Reports useful multiplies / (INT multipliers x cycles) over the input's steady state
        (first to last accepted beat) and over the whole run. Run by
        scripts/bench_mixed_array.py (MIXED_BENCH=1).
        """
        from sim import softmax as sm
        tb = TB(dut)
        p = tb.p
        n_tok = int(os.environ.get("HEAD_TOKENS", 128))
        q, k, v = minilm_head_qkv(n_tok)
        fq = mxop.MXOPFormat(block=min(p.block, 128), outliers=min(4, p.outliers),
                             bits=min(5, p.bits)).for_length(q.shape[1])
        fp = fq.for_length(n_tok)
        kw, kwe, kn = mxint(k, fq.block)
        pm = sm.softmax(qk(q, k, fq, p), None, sm.PRESETS["minilm"])
        vw, vwe, vn = mxint(v.T, fp.block)
        one, zero = np.uint16(0x3F80), np.uint16(0)
        items = [((q, kw.T, kwe.T, kn, one, zero), fq), ((pm, vw.T, vwe.T, vn, one, zero), fp)]
        win, wout = [], []
        for prob, fmt in items:
            bt, exp = expected_outputs(prob, fmt, p)
            a, b = tb.words(bt, exp)
            win += a
            wout += b
        await clock_reset(dut)
        src = StreamSource(dut, "i", idle=0.0, seed=0)
        sink = StreamSink(dut, "o", backpressure=0.0, seed=0)
        sb = Scoreboard(sink, wout, show=tb.out.unpack)
        src.send(win)
        cycles = 0
        first = last = None
        while not sb.done and cycles < 4 * len(win) + 1000:
            await RisingEdge(dut.clk)
            cycles += 1
            if first is None and src.sent:
                first = cycles
            if last is None and src.sent == len(win):
                last = cycles
        await sb.wait(dut.clk, 0)
        sb.check()
        useful = 2 * n_tok * n_tok * q.shape[1]
        mults = p.lanes * p.width
        steady = last - first + 1
        report(vectors=len(wout), beats=len(win), mismatches=sb.mismatches, cycles=cycles,
               mode="bench", tokens=n_tok, useful_mults=useful, multipliers=mults,
               steady_cycles=steady, util_steady=useful / (mults * steady),
               util_total=useful / (mults * cycles),
               issued_mults=int(dut.mults.value), fp_ops=int(dut.fp_ops.value),
               busy_cycles=int(dut.busy_cycles.value))

    @cocotb.test()
    async def mixed_throughput(dut):
        """No stalls: accepted beats per cycle and the counters (busy, mults, FP ops)."""
        tb = TB(dut)
        p = tb.p
        rng = np.random.default_rng(9)
        fmt = mxop.MXOPFormat(block=p.block, outliers=min(p.outliers, p.block - 1), bits=p.bits)
        prob = random_problem(rng, p, fmt, 16, 2, "static")
        bt, _ = expected_outputs(prob, fmt, p)
        c, n, b = await tb.run([(prob, fmt)], idle=0.0, backpressure=0.0, seed=0)
        nbeats = len(bt["last"])
        assert int(dut.mults.value) == nbeats * p.lanes * p.width
        assert int(dut.fp_ops.value) == int(bt["o_valid"].sum()) * p.lanes
        busy = int(dut.busy_cycles.value)
        assert nbeats <= busy <= c
        report(vectors=0, beats=0, mismatches=b, cycles=c, beats_per_cycle=nbeats / busy)


# ---------------------------------------------------------------- runner (pytest) -------

CASES = {
    # case: (params, random dot products per mode in the default run)
    "tiny": (PRESETS["tiny"], 4000),
    "l4-w8-b32-k4-n8": (MixedArrayParams(lanes=4, width=8, block=32, outliers=4, bits=8,
                                         weight_bits=8, frac_bits=10, max_blocks=3), 3000),
    "minilm": (PRESETS["minilm"], 3000),
}
# 4000 + 3000 + 3000 = 10,000 random dot products per mode, plus corners and the head


@pytest.mark.parametrize("case", CASES)
def test_mixed_array_verilator(case):
    params, n = CASES[case]
    regress("mixed_array", params, case=case, samples=n, per_sample=2)   # both modes


@pytest.mark.icarus
@pytest.mark.parametrize("case", ["tiny"])
def test_mixed_array_icarus(case):
    params, _ = CASES[case]
    regress("mixed_array", params, case=case, samples=100, per_sample=2, simulator="icarus")
