"""bf16_array: golden model against ml_dtypes, parameter validation, cocotb regression."""

import dataclasses

import ml_dtypes
import numpy as np
import pytest

from sim import bf16
from gen.harness import regress
from sim.bf16_array import PRESETS, BF16ArrayParams, add, dot, mul

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


def test_golden_rejects_bad_length():
    with pytest.raises(ValueError, match="multiple of width=4"):
        dot(np.zeros((1, 6), np.uint16), np.zeros((6, 8), np.uint16), BF16ArrayParams())


# ---------------------------------------------------------------- cocotb regression -----

try:
    import cocotb
    from cocotb.triggers import RisingEdge
except ImportError:   # pragma: no cover
    cocotb = None

if cocotb is not None:
    from hw.bf16_array import bf16_array_input_layout, bf16_array_output_layout
    from gen.streamkit_legacy import (Packer, Scoreboard, StreamSink, StreamSource, clock_reset,
                               params_from_env, report, samples_from_env, seed_from_env)

    @cocotb.test()
    async def bf16_random(dut):
        """Random dot products (plus special values) against the golden model; stalls."""
        p = params_from_env()
        seed = seed_from_env()
        rng = np.random.default_rng(seed)
        n = samples_from_env(200)
        inp, out = Packer(bf16_array_input_layout(p)), Packer(bf16_array_output_layout(p))
        win, wout, vecs = [], [], 0
        while vecs < n:
            beats = int(rng.integers(1, 5))
            k = beats * p.width
            x, w = normal_bf16(rng, (4, k)), normal_bf16(rng, (k, p.lanes))
            sp = rng.random(x.shape) < 0.02
            x = np.where(sp, rng.choice(SPECIALS, size=x.shape), x).astype(np.uint16)
            exp = dot(x, w, p)                                         # (4, lanes)
            f = {"last": np.tile(np.arange(beats) == beats - 1, 4)}
            for j in range(p.width):
                f[f"x.{j}"] = x.reshape(4, beats, p.width)[:, :, j].ravel()
                for l in range(p.lanes):
                    f[f"w.{l}.{j}"] = np.tile(w[:, l].reshape(beats, p.width)[:, j], 4)
            win += inp.pack(**f)
            wout += out.pack(**{f"value.{l}": exp[:, l] for l in range(p.lanes)})
            vecs += 4
        await clock_reset(dut)
        src = StreamSource(dut, "i", idle=0.25, seed=seed)
        sink = StreamSink(dut, "o", backpressure=0.3, seed=seed)
        sb = Scoreboard(sink, wout, show=out.unpack)
        src.send(win)
        cycles = 0
        while not sb.done and cycles < 20 * len(win) + 1000:
            await RisingEdge(dut.clk)
            cycles += 1
        await sb.wait(dut.clk, 0)
        assert src.empty
        sb.check()
        report(vectors=vecs * p.lanes, beats=len(win), mismatches=sb.mismatches, cycles=cycles)


@pytest.mark.parametrize("case", ["tiny"])
def test_bf16_array_verilator(case):
    regress("bf16_array", PRESETS[case], case=case, samples=500, per_sample=PRESETS[case].lanes)
