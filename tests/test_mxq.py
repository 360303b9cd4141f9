"""mxq: golden stream model tests, parameter validation, and the cocotb regression."""

import dataclasses

import numpy as np
import pytest

from sim import bf16, mxop
from gen.harness import regress
from sim.mxq import LATENCY, PRESETS, MXQParams, mxq

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


def random_framing(rng, nblocks, p):
    """Per-block inlier widths (2..bits) and lengths: most blocks full, some cut short by
    ``last`` (length 1, at most k, or random)."""
    bits = rng.integers(2, p.bits + 1, nblocks)
    bits = np.where(rng.random(nblocks) < 0.4, p.bits, bits)
    kind = rng.integers(0, 8, nblocks)
    length = np.where(kind == 0, rng.integers(1, p.block + 1, nblocks), p.block)
    length = np.where(kind == 1, 1, length)
    length = np.where(kind == 2, rng.integers(1, p.outliers + 2, nblocks), length)
    length = np.where(kind == 3, rng.integers(max(1, p.block - 3), p.block + 1, nblocks),
                      length)
    return bits.astype(np.int64), np.minimum(length, p.block).astype(np.int64)


# ---------------------------------------------------------------- golden model ----------


def test_golden_beats_follow_encode():
    p = MXQParams(block=16, outliers=3, bits=5, lanes=2)
    x = random_blocks(np.random.default_rng(3), 50, p)
    beats = mxq(x, p)
    enc = mxop.encode(x, p.fmt)
    for j in range(x.shape[0]):
        rows = slice(16 * j, 16 * (j + 1))
        for lane in range(p.lanes):
            q = beats["q"][rows, lane]
            assert np.array_equal(q, enc.q[j, lane, 0])
            pos = np.flatnonzero(beats["outlier"][rows, lane])
            assert np.array_equal(pos, enc.out_idx[j, lane, 0])
            assert np.array_equal(beats["value"][rows, lane][pos], enc.out_val[j, lane, 0])
            assert np.all(beats["exp"][rows, lane] == enc.exp[j, lane, 0])
    assert np.array_equal(beats["last"][:16], (np.arange(16) == 15))
    assert np.all(beats["bits"] == 5) and np.array_equal(beats["index"][16:32], np.arange(16))


def test_golden_per_block_bits_are_encode_at_that_width():
    p = MXQParams(block=16, outliers=2, bits=8)
    rng = np.random.default_rng(4)
    x = random_blocks(rng, 60, p)
    bits = rng.integers(2, 9, 60)
    beats = mxq(x, p, bits=bits)
    for j in range(60):
        enc = mxop.encode(x[j, 0], mxop.MXOPFormat(block=16, outliers=2, bits=int(bits[j])))
        assert np.array_equal(beats["q"][16 * j:16 * (j + 1), 0], enc.q[0])
        assert np.all(beats["exp"][16 * j:16 * (j + 1), 0] == enc.exp[0])
        assert np.all(beats["bits"][16 * j:16 * (j + 1)] == bits[j])
        assert np.abs(enc.q).max() <= (1 << (bits[j] - 1)) - 1


def test_golden_short_blocks_against_reference():
    """A block cut short to lp elements is mxop.encode of the block zero-padded to B, beats
    for its lp elements only. With lp > k it encodes like a block of those lp elements alone
    (the padding loses every tie and never sets E), checked against the slow exact
    reference; lp <= k makes every real element an outlier with E = 0."""
    from test_numerics import ref_encode
    p = MXQParams(block=16, outliers=4, bits=5)
    rng = np.random.default_rng(5)
    x = np.concatenate([directed_blocks(p), random_blocks(rng, 300, p)])
    n = x.shape[0]
    length = rng.integers(1, 17, n)
    beats = mxq(x, p, length=length)
    ends = np.cumsum(length)
    assert beats["q"].shape == (ends[-1], 1)
    for j in range(n):
        lp, rows = int(length[j]), slice(ends[j] - length[j], ends[j])
        xs = bf16.daz(x[j, 0, :lp])
        enc = mxop.encode(np.concatenate([x[j, 0, :lp], np.zeros(16 - lp, np.uint16)]), p.fmt)
        assert np.array_equal(beats["q"][rows, 0], enc.q[0, :lp])
        assert np.all(beats["exp"][rows, 0] == enc.exp[0])
        real = enc.out_idx[0] < lp
        assert np.array_equal(np.flatnonzero(beats["outlier"][rows, 0]), enc.out_idx[0][real])
        assert np.array_equal(beats["index"][rows], np.arange(lp))
        assert np.array_equal(beats["last"][rows], np.arange(lp) == lp - 1)
        if lp <= p.outliers:
            assert np.all(beats["outlier"][rows, 0] == 1) and np.all(beats["q"][rows, 0] == 0)
            assert np.array_equal(beats["value"][rows, 0], xs)
            assert np.all(beats["exp"][rows, 0] == 0)
            continue
        fmt = mxop.MXOPFormat(block=lp, outliers=p.outliers, bits=p.bits)
        exp, q, outs, vals = ref_encode([int(v) for v in x[j, 0, :lp]], fmt)
        assert np.all(beats["exp"][rows, 0] == exp), j
        assert list(beats["q"][rows, 0]) == q, j
        assert list(np.flatnonzero(beats["outlier"][rows, 0])) == outs, j
        assert list(beats["value"][rows, 0][outs]) == vals, j


def test_golden_ignores_elements_after_the_end():
    p = MXQParams(block=8, outliers=2, bits=3, lanes=2)
    rng = np.random.default_rng(6)
    x = random_blocks(rng, 40, p)
    length = rng.integers(1, 9, 40)
    y = x.copy()
    for j in range(40):
        y[j, :, length[j]:] = rng.integers(0, 1 << 16, (2, 8 - length[j]))
    a, b = mxq(x, p, length=length), mxq(y, p, length=length)
    assert all(np.array_equal(a[f], b[f]) for f in a)


def test_golden_rejects_wrong_shape():
    with pytest.raises(ValueError, match=r"x must have shape \(nblocks, lanes=1, block=128\)"):
        mxq(np.zeros((2, 64), np.uint16), PRESETS["minilm"])


@pytest.mark.parametrize("kw, message", [
    ({"bits": 6}, r"bits must be an integer or 2 integers in 2\.\.5, not 6"),
    ({"bits": [5, 1]}, r"bits must be an integer or 2 integers in 2\.\.5, not \[5, 1\]"),
    ({"length": 0}, r"length must be an integer or 2 integers in 1\.\.128, not 0"),
    ({"length": [1, 2, 3]}, r"length must be an integer or 2 integers in 1\.\.128"),
    ({"length": 2.5}, r"length must be an integer or 2 integers in 1\.\.128, not 2\.5"),
])
def test_golden_rejects_bad_framing(kw, message):
    with pytest.raises(ValueError, match=message):
        mxq(np.zeros((2, 1, 128), np.uint16), PRESETS["minilm"], **kw)


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
except ImportError:   # pragma: no cover - cocotb is a dependency
    cocotb = None

if cocotb is not None:
    from gen import streamkit
    from hw.mxq import mxq_input_layout, mxq_output_layout

    class TB(streamkit.TB):
        """mxq: source ``i`` (element beats), sink ``o`` (MX-OP beats) with its scoreboard."""

        def __init__(self, dut, **stalls):
            super().__init__(dut, **stalls)
            self.src = self.source("i", mxq_input_layout(self.params))
            self.out = self.sink("o", mxq_output_layout(self.params))

    async def run_test(tb, x, bits=None, length=None, *, sent_bits=None, timeout=None):
        """Stream blocks ``x`` (cut to ``length``, at width ``bits``) through; check every
        beat against ``sim.mxq.mxq``. ``sent_bits`` is the width field as driven (default
        ``bits``); it is random on every beat but a block's first, which the unit ignores.
        Returns the golden beats."""
        await tb.start()
        beats = send_blocks(tb, x, bits, length, sent_bits=sent_bits)
        await tb.drain(timeout or 20 * beats["index"].size + 1000)
        return beats

    def send_blocks(tb, x, bits=None, length=None, *, sent_bits=None):
        """Queue blocks ``x`` on the source and their golden beats on the scoreboard (the
        stimulus of ``run_test``); returns the golden beats."""
        p = tb.params
        n = x.shape[0]
        bits = np.full(n, p.bits) if bits is None else np.asarray(bits)
        length = np.full(n, p.block) if length is None else np.asarray(length)
        sent_bits = bits if sent_bits is None else np.asarray(sent_bits)
        beats = mxq(x, p, bits=bits, length=length)
        fields = {"index": beats["index"], "last": beats["last"], "bits": beats["bits"]}
        for lane in range(p.lanes):
            for f in ("q", "outlier", "value", "exp"):
                fields[f"lane.{lane}.{f}"] = beats[f][:, lane]
        tb.out.expect(**fields)
        block = np.repeat(np.arange(n), length)
        index = beats["index"]
        width = np.where(index == 0, sent_bits[block],
                         tb.rng.integers(0, 1 << p.bits_width, index.size))
        # a full block ends by its count whether or not ``last`` is set
        last = beats["last"] & ((length[block] < p.block) | (tb.rng.random(index.size) < 0.5))
        tb.src.send(**{f"x.{lane}": x[block, lane, index] for lane in range(p.lanes)},
                    bits=width, last=last)
        return beats

    @cocotb.test()
    async def mxq_directed(dut):
        """Corner blocks at full length and width, then cut short, under random stalls."""
        tb = TB(dut, idle=0.3, backpressure=0.3)
        p = tb.params
        x = np.concatenate([directed_blocks(p)] * 3)
        n = x.shape[0] // 3
        length = np.concatenate([np.full(n, p.block), np.full(n, min(p.outliers + 1, p.block)),
                                 np.maximum(1, np.arange(n) % (p.outliers + 2))])
        await run_test(tb, x, length=length)
        tb.report(vectors=x.shape[0] * p.lanes)

    @cocotb.test()
    async def mxq_random(dut):
        """NUM_SAMPLES random blocks per lane, random widths and lengths, random stalls."""
        tb = TB(dut)
        p = tb.params
        n = streamkit.samples_from_env(200)
        x = random_blocks(tb.rng, n, p)
        bits, length = random_framing(tb.rng, n, p)
        await run_test(tb, x, bits, length)
        tb.report(vectors=n * p.lanes)

    @cocotb.test()
    async def mxq_reset_midstream(dut):
        """Rounds of random blocks, each cut by a reset at a random cycle under random stalls;
        a last round runs to the end: every beat before a reset and after it is bit-exact,
        and nothing stale comes out."""
        tb = TB(dut)
        p = tb.params
        await tb.start()
        n = max(streamkit.samples_from_env(200) // 20, 4)
        for _ in range(8):
            send_blocks(tb, random_blocks(tb.rng, n, p), *random_framing(tb.rng, n, p))
            await tb.reset_after(0, 3 * n * p.block)
        beats = send_blocks(tb, random_blocks(tb.rng, n, p), *random_framing(tb.rng, n, p))
        await tb.drain(tb.cycle + 20 * beats["index"].size + 1000)
        assert tb.resets == 8
        tb.report(vectors=0)

    @cocotb.test()
    async def mxq_width_clamped(dut):
        """A width field outside 2..bits acts as the nearest end of the range."""
        tb = TB(dut)
        p = tb.params
        sent = np.array([0, 1, (1 << p.bits_width) - 1, p.bits + 1, 2, p.bits])
        sent = np.minimum(sent, (1 << p.bits_width) - 1)
        x = random_blocks(tb.rng, sent.size, p)
        await run_test(tb, x, np.clip(sent, 2, p.bits), sent_bits=sent)
        tb.report(vectors=0)

    @cocotb.test()
    async def mxq_throughput(dut):
        """No stalls: ``block`` cycles per full block, ``lp`` cycles per block cut to ``lp``
        elements, and a block's first beat ``LATENCY`` cycles after its last element."""
        tb = TB(dut, idle=0.0, backpressure=0.0)
        p = tb.params
        n, short = 16, max(1, p.block // 3)
        x = random_blocks(tb.rng, 2 * n, p)
        length = np.repeat([p.block, short], n)
        beats = await run_test(tb, x, length=length)
        t_in, t_out = np.array(tb.src.times), np.array(tb.out.sink.times)
        ends = t_out[beats["last"] == 1]                   # each block's last beat
        per_block = (ends[n - 1] - ends[0]) / (n - 1)
        per_short = (ends[-1] - ends[n + 2]) / (n - 3)     # after the change of length
        latency = int(t_out[0] - t_in[p.block - 1])
        assert per_block == p.block, f"{per_block} cycles per block, expected {p.block}"
        assert per_short == short, f"{per_short} cycles per {short}-element block"
        assert latency == LATENCY, f"latency {latency}, expected {LATENCY}"
        tb.report(vectors=0, cycles_per_block=per_block, latency=latency,
                  cycles_per_short_block=per_short, short_block=short)


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
