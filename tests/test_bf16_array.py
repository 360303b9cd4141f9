"""bf16_array: golden model against ml_dtypes, parameter validation, cocotb regression."""

import dataclasses

import ml_dtypes
import numpy as np
import pytest

from sim import bf16
from gen.harness import regress
from sim.bf16_array import PRESETS, BF16ArrayParams, add, beats, dot, mul, run_beats

BF = ml_dtypes.bfloat16


def normal_bf16(rng, shape, lo=-30, hi=30):
    """Random bf16 whose products and sums stay normal (ml_dtypes keeps subnormals)."""
    x = rng.standard_normal(shape).astype(np.float32) * np.exp2(
        rng.integers(lo, hi, size=shape)).astype(np.float32)
    return bf16.from_float32(x)


def ml(x):
    return np.asarray(x, np.uint16).view(BF)


def bits(x):
    """ml_dtypes results as patterns; -0 becomes +0 (our exact-zero rule), NaN canonical."""
    b = np.asarray(x).astype(BF).view(np.uint16)
    b = np.where(b == 0x8000, 0, b)
    return np.where(bf16.is_nan(b), bf16.NAN, b).astype(np.uint16)


def ml_dot(x, w, width):
    """The array's order of operations in ml_dtypes bf16 arithmetic."""
    prod = ml(x)[:, :, None] * ml(w)[None, :, :]
    m, k, n = prod.shape
    prod = prod.reshape(m, k // width, width, n)
    level = [prod[:, :, j] for j in range(width)]
    while len(level) > 1:
        level = [(level[j] + level[j + 1]).astype(BF) for j in range(0, len(level), 2)]
    acc = level[0][:, 0]
    for j in range(1, level[0].shape[1]):
        acc = (acc + level[0][:, j]).astype(BF)
    return bits(acc)


def expected_outputs(x, w, order, p):
    """``dot``'s results in the order of ``order`` (padding vectors give +0)."""
    ref = dot(x, w, p)
    rows, grp = order[:, 0], order[:, 1]
    cols = grp[:, None] * p.lanes + np.arange(p.lanes)[None]
    return np.where(rows[:, None] >= 0, ref[rows[:, None], cols], 0).astype(np.uint16)


SPECIALS = np.array([0, 0x8000, bf16.POS_INF, bf16.NEG_INF, bf16.NAN, 0x3F80, 0xBF80,
                     0x7F00, 0xFF00], np.uint16)


def test_golden_mul_add_match_ml_dtypes():
    rng = np.random.default_rng(0)
    a, b = normal_bf16(rng, 100000), normal_bf16(rng, 100000)
    assert np.array_equal(mul(a, b), bits(ml(a) * ml(b)))
    assert np.array_equal(add(a, b), bits(ml(a) + ml(b)))
    # cancellation: nearby magnitudes, opposite signs
    c = (b ^ 0x8000) + rng.integers(-3, 4, size=b.shape).astype(np.uint16)
    c = np.where(bf16.is_finite(c), c, b).astype(np.uint16)
    assert np.array_equal(add(b, c), bits(ml(b) + ml(c)))
    # specials and overflow to Inf
    sa, sb = np.meshgrid(SPECIALS, SPECIALS)
    with np.errstate(all="ignore"):            # Inf * 0, Inf - Inf, overflow in the reference
        ref_mul, ref_add = bits(ml(sa) * ml(sb)), bits(ml(sa) + ml(sb))
    assert np.array_equal(mul(sa, sb), ref_mul)
    assert np.array_equal(add(sa, sb), ref_add)


def test_golden_dot_matches_ml_dtypes():
    rng = np.random.default_rng(1)
    for p in (BF16ArrayParams(lanes=2, width=4), BF16ArrayParams(lanes=1, width=8),
              BF16ArrayParams(lanes=3, width=1)):
        x, w = normal_bf16(rng, (20, 32), -20, 20), normal_bf16(rng, (32, 7), -20, 20)
        assert np.array_equal(dot(x, w, p), ml_dot(x, w, p.width))


def test_golden_ftz_daz():
    assert mul(np.uint16(0x0080), np.uint16(0x3F00)) == 0          # 2**-127 flushes to +0
    assert mul(np.uint16(0x0001), np.uint16(0x3F80)) == 0          # subnormal input is zero
    assert add(np.uint16(0x3F80), np.uint16(0xBF80)) == 0          # exact zero is +0


@pytest.mark.parametrize("field, value, message", [
    ("lanes", 0, r"lanes must be an integer in 1\.\.64, not 0"),
    ("lanes", 65, r"lanes must be an integer in 1\.\.64, not 65"),
    ("width", 3, r"width must be a power of two in 1\.\.64, not 3"),
    ("width", 0, r"width must be a power of two in 1\.\.64, not 0"),
])
def test_params_rejects_out_of_range(field, value, message):
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(BF16ArrayParams(), **{field: value})


def test_golden_beats_match_dot():
    """The interleaved beat stream, consumed slot by slot, gives ``dot``'s results."""
    rng = np.random.default_rng(2)
    for p in (BF16ArrayParams(lanes=2, width=4), BF16ArrayParams(lanes=1, width=8),
              BF16ArrayParams(lanes=3, width=1)):
        x, w = normal_bf16(rng, (11, 16), -20, 20), normal_bf16(rng, (16, 2 * p.lanes), -20, 20)
        bt = beats(x, w, p)
        got = run_beats(bt, p)
        assert np.array_equal(got, expected_outputs(x, w, bt["order"], p))
        assert len(bt["order"]) % p.slots == 0 and np.all(bt["order"][22:] == -1)


def test_golden_rejects_bad_length():
    p = BF16ArrayParams(lanes=2, width=4)
    with pytest.raises(ValueError, match="multiple of width=4"):
        dot(np.zeros((1, 6), np.uint16), np.zeros((6, 8), np.uint16), p)
    with pytest.raises(ValueError, match="multiple of width=4"):
        beats(np.zeros((1, 6), np.uint16), np.zeros((6, 8), np.uint16), p)
    with pytest.raises(ValueError, match=r"w must be \(8, a multiple of lanes=2\)"):
        beats(np.zeros((1, 8), np.uint16), np.zeros((8, 3), np.uint16), p)


# ---------------------------------------------------------------- stimulus for the RTL --


def random_problem(rng, p, rows, groups):
    """Random (x, w) with 1..4 beats per vector; 2% special values in x."""
    k = int(rng.integers(1, 5)) * p.width
    x, w = normal_bf16(rng, (rows, k)), normal_bf16(rng, (k, groups * p.lanes))
    sp = rng.random(x.shape) < 0.02
    return np.where(sp, rng.choice(SPECIALS, size=x.shape), x).astype(np.uint16), w


def corner_problems(rng, p):
    """Directed (x, w): overflow to Inf, FTZ, NaN/Inf operands, cancellation, DAZ, -0."""
    k = 3 * p.width
    n = p.lanes
    big, tiny = bf16.MAX_FINITE, bf16.MIN_NORMAL
    rows = {
        "overflow": np.full(k, big),                            # products overflow to Inf
        "overflow-sum": np.full(k, 0x7E00),                     # sums overflow
        "inf-minus-inf": np.where(np.arange(k) % 2, bf16.POS_INF, bf16.NEG_INF),
        "nan": np.where(np.arange(k) == 1, bf16.NAN, 0x3F80),
        "inf-times-zero": np.where(np.arange(k) == 0, bf16.POS_INF, 0),
        "ftz": np.full(k, tiny),                                # products flush to zero
        "ftz-neg": np.full(k, 0x8000 | tiny),
        "subnormal": np.arange(k, dtype=np.uint16) % 0x7F + 1,  # DAZ: read as zero
        "neg-zero": np.full(k, 0x8000),
        "cancel": np.where(np.arange(k) % 2, 0x3F81, 0xBF81),   # pairs cancel exactly
        "cancel-near": np.where(np.arange(k) % 2, 0x4049, 0xC048),
        "cancel-acc": np.concatenate([np.full(p.width, 0x4100),
                                      np.full(p.width, 0xC100), np.full(k - 2 * p.width, 0)]),
        "spread": np.where(np.arange(k) == 0, 0x7000, 0x0100),  # one huge, rest tiny
        "rne-ties": np.full(k, 0x3F81),
    }
    x = np.array(list(rows.values()), np.uint16)
    cols = [np.full(k, 0x3F80), np.full(k, 0x4000), np.full(k, 0xBF80), np.full(k, 0),
            np.full(k, tiny), np.full(k, 0x3F81), np.full(k, bf16.POS_INF)]
    w = np.stack([cols[j % len(cols)] for j in range(n * 2)], axis=1).astype(np.uint16)
    return x, w


# ---------------------------------------------------------------- cocotb regression -----

try:
    import cocotb
except ImportError:   # pragma: no cover - cocotb is a dependency
    cocotb = None

if cocotb is not None:
    from gen import streamkit
    from hw.bf16_array import bf16_array_input_layout, bf16_array_output_layout, latency

    class TB(streamkit.TB):
        """bf16_array: source ``i``, sink ``o`` with its scoreboard."""

        def __init__(self, dut, **stalls):
            super().__init__(dut, **stalls)
            p = self.params
            self.src = self.source("i", bf16_array_input_layout(p))
            self.out = self.sink("o", bf16_array_output_layout(p))

    def queue(tb, x, w):
        """Queue the beats of problem (x, w) and its results; return (vectors, beats)."""
        p = tb.params
        bt = beats(x, w, p)
        exp = expected_outputs(x, w, bt["order"], p)
        tb.out.expect(**{f"value.{l}": exp[:, l] for l in range(p.lanes)})
        f = {"last": bt["last"]}
        for j in range(p.width):
            f[f"x.{j}"] = bt["x"][:, j]
            for l in range(p.lanes):
                f[f"w.{l}.{j}"] = bt["w"][:, l, j]
        tb.src.send(**f)
        return int(np.sum(bt["order"][:, 0] >= 0)) * p.lanes, len(bt["last"])

    async def run_test(tb, problems):
        """Stream every (x, w) problem through; check every result; return the vector count."""
        await tb.start()
        nvec = sum(queue(tb, x, w)[0] for x, w in problems)
        await tb.drain(20 * len(tb.src.queue) + 1000)
        return nvec

    @cocotb.test()
    async def bf16_corners(dut):
        """Overflow to Inf, FTZ, NaN/Inf, 0 x Inf, cancellation, DAZ; random stalls."""
        tb = TB(dut, idle=0.3, backpressure=0.3)
        n = await run_test(tb, [corner_problems(tb.rng, tb.params)])
        tb.report(vectors=n)

    @cocotb.test()
    async def bf16_random(dut):
        """NUM_SAMPLES random dot products (2% special values); random idle and backpressure."""
        tb = TB(dut)
        p = tb.params
        target, got, problems = streamkit.samples_from_env(2000), 0, []
        while got < target:
            rows, groups = int(tb.rng.integers(1, 12)), int(tb.rng.integers(1, 3))
            problems.append(random_problem(tb.rng, p, rows, groups))
            got += rows * groups * p.lanes
        tb.report(vectors=await run_test(tb, problems))

    @cocotb.test()
    async def bf16_reset_midstream(dut):
        """Rounds of random problems, each cut by a reset at a random cycle under random
        stalls (the slot order restarts from slot 0 with it); a last round runs to the end:
        every result before a reset and after it is exact, and nothing stale comes out."""
        tb = TB(dut)
        p = tb.params
        await tb.start()
        rows = max(streamkit.samples_from_env(2000) // (20 * p.lanes), 2)
        for _ in range(8):
            _, n = queue(tb, *random_problem(tb.rng, p, rows, 1))
            await tb.reset_after(0, 3 * n)
        _, n = queue(tb, *random_problem(tb.rng, p, rows, 1))
        await tb.drain(tb.cycle + 20 * n + 1000)
        assert tb.resets == 8
        tb.report(vectors=tb.out.index * p.lanes)

    @cocotb.test()
    async def bf16_throughput(dut):
        """No stalls: one beat per cycle; the first result ``latency`` cycles after its last
        beat."""
        tb = TB(dut, idle=0.0, backpressure=0.0)
        p = tb.params
        x, w = random_problem(tb.rng, p, 3 * p.slots, 1)
        n = await run_test(tb, [(x, w)])
        t_in, t_out = tb.src.times, tb.out.sink.times
        assert t_in[-1] - t_in[0] == len(t_in) - 1, "input stalled"
        first_last = int(np.argmax(beats(x, w, p)["last"]))
        assert t_out[0] - t_in[first_last] == latency(p), (t_out[0] - t_in[first_last])
        tb.report(vectors=n, latency=latency(p))


# ---------------------------------------------------------------- runner (pytest) -------

CASES = {
    # case: (params, random dot products in the default run)
    "tiny": (PRESETS["tiny"], 6000),
    "l3-w1": (BF16ArrayParams(lanes=3, width=1), 2000),
    "l1-w8": (BF16ArrayParams(lanes=1, width=8), 2000),
}


@pytest.mark.parametrize("case", CASES)
def test_bf16_array_verilator(case):
    params, n = CASES[case]
    regress("bf16_array", params, case=case, samples=n)


@pytest.mark.icarus
def test_bf16_array_icarus():
    regress("bf16_array", PRESETS["tiny"], case="tiny", samples=300, simulator="icarus")
