"""mxq: golden stream model tests, parameter validation, and the cocotb regression."""

import dataclasses

import numpy as np
import pytest

from sim import bf16, mxop
from gen.harness import regress
from sim.mxq import PRESETS, MXQParams, mxq

# ---------------------------------------------------------------- stimulus (shared) ----


def random_blocks(rng, nblocks, p):
    """Random bf16 blocks (nblocks, lanes, B) mixing the shapes activations take."""
    shape = (nblocks, p.lanes, p.block)
    scale = np.exp2(rng.integers(-30, 30, size=(nblocks, p.lanes, 1))).astype(np.float32)
    x = (rng.standard_normal(shape).astype(np.float32) * scale)
    kind = rng.integers(0, 8, size=(nblocks, p.lanes, 1))
    # outliers: a few elements 2**3..2**12 larger
    big = rng.random(shape) < 0.04
    x = np.where((kind == 1) & big, x * np.exp2(rng.integers(3, 13, size=shape)), x)
    # sparse blocks
    x = np.where((kind == 2) & (rng.random(shape) < 0.7), 0, x)
    # few distinct magnitudes: many ties
    x = np.where(kind == 3, np.sign(x) * scale * rng.integers(0, 3, size=shape), x)
    bits = bf16.from_float32(x)
    # raw bit patterns: subnormals, Inf, NaN, extremes
    raw = rng.integers(0, 1 << 16, size=shape, dtype=np.uint32).astype(np.uint16)
    bits = np.where((kind == 4) & (rng.random(shape) < 0.3), raw, bits)
    return bits.astype(np.uint16)


def directed_blocks(p):
    """Corner blocks (each repeated over lanes): zero, ties, specials, extremes, saturation."""
    b = p.block
    rows = [
        np.zeros(b),                                          # all zero
        np.full(b, 0x8000),                                   # all -0
        np.tile([0x3F80, 0xBF80], b)[:b],                     # all equal magnitudes
        np.where(np.arange(b) < p.outliers + 3, 0x4780, 0x3F00),  # more than k large values
        np.full(b, bf16.MAX_FINITE),                          # largest normal
        np.full(b, 0x8000 | bf16.MAX_FINITE),
        np.full(b, bf16.MIN_NORMAL),                          # smallest normal
        np.arange(b) % 0x7F + 1,                              # subnormals (read as zero)
        np.where(np.arange(b) == b // 2, bf16.POS_INF, 0x3F80),  # one Inf
        np.where(np.arange(b) == 1, bf16.NAN, 0xBF80),       # one NaN
        np.where(np.arange(b) % 3 == 0, bf16.NEG_INF, 0x4000),  # many Inf: Inf inliers
        np.full(b, bf16.NAN),                                 # all NaN
        np.full(b, 0x3FFF),                                   # mantissa all ones: saturates
        np.where(np.arange(b) % 2 == 0, 0x3FFF, 0xBFFF),
        np.where(np.arange(b) == 0, 0x7F7F, 0x0080),          # widest exponent spread
    ]
    x = np.array(rows, dtype=np.uint16)
    return np.repeat(x[:, None, :], p.lanes, axis=1)


# ---------------------------------------------------------------- golden model ----------


def test_golden_beats_follow_encode():
    p = MXQParams(block=16, outliers=3, bits=5, lanes=2)
    x = random_blocks(np.random.default_rng(3), 50, p)
    beats = mxq(x, p)
    enc = mxop.encode(x, p.fmt)
    for j in range(x.shape[0]):
        for lane in range(p.lanes):
            q = beats["q"][j, :, lane]
            assert np.array_equal(q, enc.q[j, lane, 0])
            pos = np.flatnonzero(beats["outlier"][j, :, lane])
            assert np.array_equal(pos, enc.out_idx[j, lane, 0])
            assert np.array_equal(beats["value"][j, pos, lane], enc.out_val[j, lane, 0])
            assert np.all(beats["exp"][j, :, lane] == enc.exp[j, lane, 0])
    assert np.array_equal(beats["last"][0], (np.arange(16) == 15))


def test_golden_rejects_wrong_shape():
    with pytest.raises(ValueError, match=r"x must have shape \(nblocks, lanes=1, block=128\)"):
        mxq(np.zeros((2, 64), np.uint16), PRESETS["minilm"])


# ---------------------------------------------------------------- parameters ------------


@pytest.mark.parametrize("field, value, message", [
    ("block", 1, r"block must be an integer in 2\.\.1024, not 1"),
    ("block", 2048, r"block must be an integer in 2\.\.1024, not 2048"),
    ("block", 16.0, r"block must be an integer in 2\.\.1024, not 16\.0"),
    ("outliers", -1, r"outliers must be an integer in 0\.\.16, not -1"),
    ("outliers", 17, r"outliers must be an integer in 0\.\.16, not 17"),
    ("bits", 1, r"bits must be an integer in 2\.\.8, not 1"),
    ("bits", 9, r"bits must be an integer in 2\.\.8, not 9"),
    ("lanes", 0, r"lanes must be an integer in 1\.\.64, not 0"),
    ("lanes", True, r"lanes must be an integer in 1\.\.64, not True"),
])
def test_params_rejects_out_of_range(field, value, message):
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(MXQParams(), **{field: value})


def test_params_rejects_outliers_not_below_block():
    with pytest.raises(ValueError, match=r"outliers must be an integer in 0\.\.3, not 4"):
        MXQParams(block=4, outliers=4)


def test_params_keyword_only():
    with pytest.raises(TypeError):
        MXQParams(128)


# ---------------------------------------------------------------- cocotb regression -----

try:
    import cocotb
    from cocotb.triggers import RisingEdge
except ImportError:   # pragma: no cover - cocotb is a dependency
    cocotb = None

if cocotb is not None:
    from hw.mxq import mxq_input_layout, mxq_output_layout
    from gen.streamkit_legacy import (Packer, Scoreboard, StreamSink, StreamSource, clock_reset,
                               params_from_env, report, samples_from_env, seed_from_env)

    class TB:
        """mxq testbench: clock, reset, input source, output sink, in-order scoreboard."""

        def __init__(self, dut):
            self.dut = dut
            self.p = params_from_env()
            self.inp = Packer(mxq_input_layout(self.p))
            self.out = Packer(mxq_output_layout(self.p))

        def words(self, x):
            """Input payloads of blocks ``x`` and the golden model's expected output payloads."""
            p = self.p
            beats = mxq(x, p)
            win = self.inp.pack(**{f"x.{lane}": x[:, lane, :] for lane in range(p.lanes)})
            fields = {"index": beats["index"], "last": beats["last"]}
            for lane in range(p.lanes):
                for f in ("q", "outlier", "value", "exp"):
                    fields[f"lane.{lane}.{f}"] = beats[f][:, :, lane]
            return win, self.out.pack(**fields)

        async def run(self, x, *, idle, backpressure, seed):
            """Stream blocks ``x`` through; return (cycles, beats, mismatches) after checks."""
            win, wout = self.words(x)
            await clock_reset(self.dut)
            src = StreamSource(self.dut, "i", idle=idle, seed=seed)
            sink = StreamSink(self.dut, "o", backpressure=backpressure, seed=seed)
            sb = Scoreboard(sink, wout, show=self.out.unpack)
            cycles = 0
            src.send(win)
            while not sb.done and cycles < 20 * len(wout) + 1000:
                await RisingEdge(self.dut.clk)
                cycles += 1
            await sb.wait(self.dut.clk, 0)
            assert src.empty, f"{len(src.queue) - src.pos} input beats not accepted"
            sb.check()
            return cycles, len(wout), sb.mismatches

    @cocotb.test()
    async def mxq_directed(dut):
        """Corner blocks, under random stalls on both sides."""
        tb = TB(dut)
        p = tb.p
        x = directed_blocks(p)
        cycles, beats, bad = await tb.run(x, idle=0.3, backpressure=0.3, seed=1)
        report(vectors=x.shape[0] * p.lanes, beats=beats, mismatches=bad, cycles=cycles)

    @cocotb.test()
    async def mxq_random(dut):
        """Random blocks (NUM_SAMPLES per lane-group), random idle and backpressure."""
        tb = TB(dut)
        p = tb.p
        seed = seed_from_env()
        n = samples_from_env(200)
        x = random_blocks(np.random.default_rng(seed), n, p)
        cycles, beats, bad = await tb.run(x, idle=0.25, backpressure=0.35, seed=seed)
        report(vectors=n * p.lanes, beats=beats, mismatches=bad, cycles=cycles)

    @cocotb.test()
    async def mxq_throughput(dut):
        """No stalls: cycles per block in steady state (target: block)."""
        tb = TB(dut)
        p = tb.p
        n = 16
        x = random_blocks(np.random.default_rng(5), n, p)
        cycles, beats, bad = await tb.run(x, idle=0.0, backpressure=0.0, seed=0)
        report(vectors=0, beats=0, mismatches=bad, cycles=cycles,
               cycles_per_block=(cycles - (p.block + 3)) / n)


# ---------------------------------------------------------------- runner (pytest) -------

CASES = {
    # case: (params, random blocks per lane-group in the default run)
    "tiny": (PRESETS["tiny"], 2000),
    "b16-k2-n3-l2": (MXQParams(block=16, outliers=2, bits=3, lanes=2), 6000),
    "b32-k0-n8": (MXQParams(block=32, outliers=0, bits=8), 5000),
    "minilm": (PRESETS["minilm"], 1000),
}
# 2000 + 2 * 6000 + 5000 + 1000 = 20,000 random blocks, plus the directed ones


@pytest.mark.parametrize("case", CASES)
def test_mxq_verilator(case):
    params, n = CASES[case]
    regress("mxq", params, case=case, samples=n, per_sample=params.lanes)


@pytest.mark.icarus
@pytest.mark.parametrize("case", ["b16-k2-n3-l2", "tiny"])
def test_mxq_icarus(case):
    params, _ = CASES[case]
    regress("mxq", params, case=case, samples=150, per_sample=params.lanes, simulator="icarus")
