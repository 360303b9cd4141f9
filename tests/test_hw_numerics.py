"""hw/numerics.py against its sim twins (sim/bf16.py, sim/fixed.py) in Amaranth's simulator.

Single-pattern primitives are checked over all 65,536 bf16 patterns; the wide ones over all
16-bit inputs plus random and directed wide values. A wrapper evaluates ``LANES`` copies per
simulator step, so an exhaustive sweep is a few hundred steps.
"""

import numpy as np
import pytest
from amaranth.hdl import Module, Shape, Signal, signed, unsigned
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out
from amaranth.sim import Simulator

from hw import numerics as hn
from hw.common import Pipeline
from sim import bf16, fixed

LANES = 256
ALL = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)


def _pack(values, width):
    mask = (1 << width) - 1
    out = 0
    for v in reversed(values):
        out = (out << width) | (int(v) & mask)
    return out


def _unpack(word, width, signed_, count):
    mask = (1 << width) - 1
    out = []
    for _ in range(count):
        v = word & mask
        out.append(v - (1 << width) if signed_ and v >> (width - 1) else v)
        word >>= width
    return out


def evaluate(build, inputs, out_shapes, *, lanes=LANES):
    """Run combinational ``build(m, *ins) -> outs`` over arrays ``inputs`` (name -> (shape,
    values)); return a list with an int64 array per output. ``lanes`` copies of the logic
    read one wide input signal per name, so each simulator step checks ``lanes`` values."""
    n = len(next(iter(inputs.values()))[1])
    names = list(inputs)
    shapes = [Shape.cast(inputs[k][0]) for k in names]
    oshapes = [Shape.cast(s) for s in out_shapes]
    m = Module()
    wide_in = [Signal(s.width * lanes, name=f"in_{k}") for k, s in zip(names, shapes)]
    wide_out = [Signal(s.width * lanes, name=f"out{i}") for i, s in enumerate(oshapes)]
    for j in range(lanes):
        args = [w[j * s.width:(j + 1) * s.width] for w, s in zip(wide_in, shapes)]
        args = [a.as_signed() if s.signed else a for a, s in zip(args, shapes)]
        res = build(m, *args)
        res = res if isinstance(res, tuple) else (res,)
        for w, s, v in zip(wide_out, oshapes, res):
            m.d.comb += w[j * s.width:(j + 1) * s.width].eq(v)
    got = [[] for _ in oshapes]

    async def bench(ctx):
        for base in range(0, n, lanes):
            cnt = min(lanes, n - base)
            for w, k, s in zip(wide_in, names, shapes):
                vals = list(inputs[k][1][base:base + cnt]) + [0] * (lanes - cnt)
                ctx.set(w, _pack(vals, s.width))
            for g, w, s in zip(got, wide_out, oshapes):
                g.extend(_unpack(ctx.get(w), s.width, s.signed, cnt))

    sim = Simulator(m)
    sim.add_testbench(bench)
    sim.run()
    return [np.array(g, dtype=np.int64) for g in got]


def test_to_fixed_and_daz_every_pattern():
    def build(m, x):
        mant, exp, fin = hn.to_fixed(m, x)
        return mant, exp, fin, hn.daz(x)
    mant, exp, fin, d = evaluate(build, {"x": (16, ALL)},
                                 [signed(9), signed(hn.EXP_WIDTH), 1, 16])
    sm, se = bf16.to_fixed(ALL)
    np.testing.assert_array_equal(mant, sm)
    np.testing.assert_array_equal(exp, se)
    np.testing.assert_array_equal(fin, bf16.is_finite(ALL))
    np.testing.assert_array_equal(d, bf16.daz(ALL))


def test_unpack_classifies_every_pattern():
    def build(m, x):
        f = hn.unpack(x)
        return f.zero, f.inf, f.nan, f.mant, f.magnitude
    zero, inf, nan, mant, mag = evaluate(build, {"x": (16, ALL)}, [1, 1, 1, 8, 15])
    np.testing.assert_array_equal(zero, bf16.exponent(ALL) == 0)
    np.testing.assert_array_equal(inf, bf16.is_inf(ALL))
    np.testing.assert_array_equal(nan, bf16.is_nan(ALL))
    np.testing.assert_array_equal(mag, bf16.magnitude(ALL))
    fin = bf16.is_finite(ALL)
    np.testing.assert_array_equal(mant[fin], np.abs(bf16.to_fixed(ALL)[0])[fin])


def test_bit_length_all_16_bit_values_and_wide_ones():
    v = ALL.astype(np.int64)
    (got,) = evaluate(lambda m, x: hn.bit_length(m, x), {"x": (16, v)}, [unsigned(5)])
    np.testing.assert_array_equal(got, bf16.bit_length(v))
    rng = np.random.default_rng(1)
    wide = (rng.integers(0, 1 << 62, 1024) >> rng.integers(0, 62, 1024)).astype(np.int64)
    wide[:63] = np.int64(1) << np.arange(63)
    (got,) = evaluate(lambda m, x: hn.bit_length(m, x), {"x": (63, wide)}, [unsigned(6)])
    np.testing.assert_array_equal(got, bf16.bit_length(wide))


def test_leading_zeros_all_16_bit_values():
    v = ALL.astype(np.int64)
    for width in (16, 13):
        x = v & ((1 << width) - 1)
        (got,) = evaluate(lambda m, a: hn.leading_zeros(m, a), {"x": (width, x)},
                          [unsigned(5)])
        np.testing.assert_array_equal(got, width - bf16.bit_length(x))


def _round_cases(rng, n, width):
    mag = rng.integers(0, 1 << width, n, dtype=np.int64) >> rng.integers(0, width, n)
    # ties and carries: values whose dropped bits are exactly half, and 0x1FF.. patterns
    k = n // 4
    sh = rng.integers(1, max(width - 9, 2), k)
    mag[:k] = ((rng.integers(128, 256, k) * 2 + 1) << (sh - 1)) >> 1 << 1
    mag[k:2 * k] = (np.int64(1) << rng.integers(min(9, width - 1), width, k)) - 1
    exp = rng.integers(-200, 140, n)
    neg = rng.integers(0, 2, n)
    return mag & ((np.int64(1) << width) - 1), exp, neg


@pytest.mark.parametrize("width", [5, 9, 16, 40])
def test_round_fixed_matches_sim(width):
    rng = np.random.default_rng(width)
    mag, exp, neg = _round_cases(rng, 4096, width)
    mag[:256] = np.arange(256) & ((1 << width) - 1)  # small magnitudes, 0 included

    def build(m, mg, e, s):
        return hn.round_fixed(m, mg, s, e)
    (got,) = evaluate(build, {"mg": (width, mag), "e": (signed(hn.EXP_WIDTH), exp),
                              "s": (1, neg)}, [16])
    want = bf16.round_fixed(np.where(neg == 1, -mag, mag), exp)
    # an exact zero is +0 whatever the sign
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("int_bits, frac_bits", [(7, 8), (8, 12), (4, 10)])
def test_fix_trunc_every_finite_pattern(int_bits, frac_bits):
    x = ALL[bf16.is_finite(ALL)]
    w = int_bits + frac_bits + 1
    (got,) = evaluate(lambda m, v: hn.fix_trunc(m, v, int_bits, frac_bits), {"x": (16, x)},
                      [signed(w)])
    np.testing.assert_array_equal(got, fixed.fix_trunc(x, int_bits, frac_bits))


def run_pipeline(dut, stages, **inputs):
    """Feed one value of every input per cycle (``valid`` high) into a pipelined ``dut``
    with ports ``valid``/``out``/``out_valid``; return the ``out`` of every valid cycle."""
    n = len(next(iter(inputs.values())))
    got = []

    async def bench(ctx):
        for i in range(n + stages):
            ctx.set(dut.valid, int(i < n))
            if i < n:
                for k, v in inputs.items():
                    ctx.set(getattr(dut, k), int(v[i]))
            await ctx.tick()
            if ctx.get(dut.out_valid):
                got.append(ctx.get(dut.out))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return got


class _Affine(wiring.Component):
    def __init__(self, acc_bits):
        self.acc_bits = acc_bits
        super().__init__({"valid": In(1), "acc": In(signed(acc_bits)),
                          "lsb": In(signed(hn.EXP_WIDTH)), "scale": In(16), "bias": In(16),
                          "nan": In(1), "out": Out(16), "out_valid": Out(1)})

    def elaborate(self, platform):
        m = Module()
        pipe = Pipeline(m, self.valid, name="t")
        m.d.comb += pipe.ce.eq(1)
        last, res = hn.affine_round(m, pipe, self.acc, self.lsb, self.scale, self.bias,
                                    self.nan)
        m.d.comb += [self.out.eq(res), self.out_valid.eq(last.valid)]
        return m


def _affine_cases(rng, n):
    acc = rng.integers(-(1 << 45), 1 << 45, n) >> rng.integers(0, 46, n)
    acc[:16] = [0, 1, -1, (1 << 45) - 1, -(1 << 45) + 1, 255, -256, 1 << 20, 0, 0, 7, -7,
                3, 1 << 44, -(1 << 44), 12345]
    lsb = rng.integers(-300, 200, n)
    fin = lambda k: bf16.from_float32((rng.standard_normal(k) * np.exp2(
        rng.integers(-40, 40, k))).astype(np.float32))
    scale, bias = fin(n), fin(n)
    raw = rng.integers(0, 1 << 16, n).astype(np.uint16)
    scale = np.where(rng.random(n) < 0.05, raw, scale)
    bias = np.where(rng.random(n) < 0.05, raw[::-1], bias)
    bias = np.where(rng.random(n) < 0.2, 0, bias)
    # bias comparable to the product (cancellation) and far below it (sticky)
    near = rng.random(n) < 0.3
    prod = bf16.round_fixed(acc * bf16.to_fixed(scale)[0], lsb + bf16.to_fixed(scale)[1])
    bias = np.where(near, prod ^ 0x8000, bias).astype(np.uint16)
    nan = (rng.random(n) < 0.02).astype(np.int64)
    return acc, lsb, scale, bias, nan


def test_affine_round_pipeline_matches_sim():
    rng = np.random.default_rng(7)
    n = 3000
    acc, lsb, scale, bias, nan = _affine_cases(rng, n)
    got = run_pipeline(_Affine(47), hn.AFFINE_STAGES,
                       acc=acc, lsb=lsb, scale=scale, bias=bias, nan=nan)
    want = fixed.affine_round(acc, lsb, scale, bias, nan.astype(bool))
    assert len(got) == n
    bad = np.flatnonzero(np.array(got) != want)
    assert bad.size == 0, [(int(i), hex(got[i]), hex(want[i]), int(acc[i]), int(lsb[i]),
                            hex(scale[i]), hex(bias[i])) for i in bad[:5]]


class _Multiply(wiring.Component):
    def __init__(self, a_shape, b_shape):
        self.a_shape, self.b_shape = a_shape, b_shape
        sgn = a_shape.signed or b_shape.signed
        width = a_shape.width + b_shape.width
        super().__init__({"valid": In(1), "a": In(a_shape), "b": In(b_shape),
                          "out": Out(signed(width) if sgn else unsigned(width)),
                          "out_valid": Out(1)})

    def elaborate(self, platform):
        m = Module()
        pipe = Pipeline(m, self.valid, name="t")
        m.d.comb += pipe.ce.eq(1)
        last, prod = hn.multiply(m, pipe, self.a, self.b)
        assert pipe.depth == hn.multiply_stages(self.a_shape, self.b_shape)
        m.d.comb += [self.out.eq(prod), self.out_valid.eq(last.valid)]
        return m


def _operands(rng, shape, n):
    lo, hi = (-(1 << (shape.width - 1)), 1 << (shape.width - 1)) if shape.signed else \
        (0, 1 << shape.width)
    v = [int(x) for x in rng.integers(lo, hi, n, dtype=np.int64)]
    v[:4] = [lo, hi - 1, 0, 1 if hi > 1 else 0]             # the extremes first
    return v


@pytest.mark.parametrize("a_shape, b_shape", [
    (unsigned(17), unsigned(17)), (signed(18), unsigned(17)), (unsigned(30), unsigned(21)),
    (signed(32), unsigned(21)), (signed(20), signed(9)), (signed(40), signed(35)),
    (unsigned(52), unsigned(3)),
])
def test_multiply_pipeline_matches_python(a_shape, b_shape):
    """Exact products over random operands and the extremes, for limb counts 1 to 3."""
    rng = np.random.default_rng(a_shape.width * 64 + b_shape.width)
    n = 400
    a, b = _operands(rng, a_shape, n), _operands(rng, b_shape, n)
    b[:4] = b[:4][::-1]
    got = run_pipeline(_Multiply(a_shape, b_shape), hn.multiply_stages(a_shape, b_shape),
                       a=a, b=b)
    want = [x * y for x, y in zip(a, b)]
    bad = [i for i in range(n) if got[i] != want[i]]
    assert len(got) == n and not bad, [(i, a[i], b[i], got[i], want[i]) for i in bad[:5]]
