"""softmax: golden model vs float and a slow model, parameter validation, cocotb regression."""

import dataclasses
import os
import re

import numpy as np
import pytest

from sim import bf16
from gen.harness import regress
from sim.softmax import (DEFAULT, LATENCY, PRESETS, ROW_GAP, SoftmaxParams, log2e_const,
                         pwl_eval, pwl_table, row_cycles, softmax, softmax_slow)

# ---------------------------------------------------------------- stimulus (shared) ----


def random_rows(rng, n, max_len, *, min_len=1):
    """``n`` rows as a list of (scores, mask): lengths min_len..max_len, mixed shapes."""
    rows = []
    for _ in range(n):
        L = int(rng.integers(min_len, max_len + 1))
        kind = int(rng.integers(0, 10))
        sigma = float(np.exp2(rng.uniform(-3, 4)))
        x = (rng.standard_normal(L) * sigma + rng.normal(0, 20)).astype(np.float32)
        if kind == 1:                                     # one dominant value
            x[rng.integers(L)] += np.float32(rng.uniform(10, 300))
        if kind == 2:                                     # ties
            x = np.round(x / 4).astype(np.float32) * 4
        s = bf16.from_float32(x)
        if kind == 3:                                     # raw patterns: specials, extremes
            raw = rng.integers(0, 1 << 16, L, dtype=np.uint32).astype(np.uint16)
            s = np.where(rng.random(L) < 0.15, raw, s).astype(np.uint16)
        mask = rng.random(L) < (0.6 if kind in (4, 5) else 1.0)
        if kind == 6 and L > 1:                           # padding at the end
            mask = np.arange(L) < rng.integers(1, L + 1)
        rows.append((s.astype(np.uint16), mask))
    return rows


def directed_rows(max_len):
    """Corners: all equal, one huge value, all masked but one, extremes, -0, Inf, NaN."""
    L = max_len
    one = lambda v: np.full(L, v, dtype=np.uint16)
    idx = np.arange(L)
    ones = np.ones(L, bool)
    f = lambda a: bf16.from_float32(np.asarray(a, dtype=np.float32))
    rows = [
        (one(0x3F80), ones),                                        # all equal
        (one(0x0000), ones),                                        # all zero
        (one(0x8000), ones),                                        # all -0
        (np.where(idx == L // 2, 0x4700, 0x3F80).astype(np.uint16), ones),   # one huge
        (one(0x3F80), idx == L - 1),                                # all masked but one
        (one(0x3F80), np.zeros(L, bool)),                           # all masked
        (one(bf16.MAX_FINITE), ones),                               # largest
        (one(0x8000 | bf16.MAX_FINITE), ones),                      # most negative
        (np.where(idx == 0, bf16.MAX_FINITE, 0x8000 | bf16.MAX_FINITE).astype(np.uint16),
         ones),
        (one(bf16.MIN_NORMAL), ones),                               # smallest normal
        (one(0x0001), ones),                                        # subnormals: zero
        (np.where(idx == 0, bf16.NEG_INF, 0x3F80).astype(np.uint16), ones),   # -Inf: 0
        (one(bf16.NEG_INF), ones),                                  # all -Inf
        (np.where(idx == L - 1, bf16.POS_INF, 0x3F80).astype(np.uint16), ones),  # +Inf: NaN
        (np.where(idx == 0, bf16.NAN, 0x3F80).astype(np.uint16), ones),       # NaN row
        (np.where(idx == 0, bf16.NAN, 0x3F80).astype(np.uint16), idx != 0),   # masked NaN
        (f(np.linspace(-40, 40, L)), ones),                         # wide spread
        (f(np.linspace(-300, 300, L)), ones),                       # saturating scores
    ]
    return [(s.astype(np.uint16), m.astype(bool)) for s, m in rows]


def row_golden(rows, p):
    """Golden outputs of a list of rows of different lengths (grouped by length)."""
    out = [None] * len(rows)
    by_len = {}
    for i, (s, _) in enumerate(rows):
        by_len.setdefault(len(s), []).append(i)
    for L, ids in by_len.items():
        s = np.stack([rows[i][0] for i in ids])
        msk = np.stack([rows[i][1] for i in ids])
        o = softmax(s, msk, p)
        for k, i in enumerate(ids):
            out[i] = o[k]
    return out


def float_softmax(s, mask):
    x = bf16.to_float32(bf16.daz(s)).astype(np.float64)
    x = np.where(mask, x, -np.inf)
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


# ---------------------------------------------------------------- golden model ----------


def test_golden_matches_slow_model():
    rng = np.random.default_rng(1)
    rows = random_rows(rng, 300, 12) + directed_rows(12)
    for (s, msk), o in zip(rows, row_golden(rows, DEFAULT)):
        assert np.array_equal(o, softmax_slow(s[None], msk[None], DEFAULT)[0]), (s, msk)


def test_golden_matches_slow_model_other_params():
    p = SoftmaxParams(max_len=8, int_bits=4, frac_bits=6, log2e_frac=4, exp_bits=8,
                      pwl_segments=2, pwl_terms=1)
    rows = random_rows(np.random.default_rng(2), 300, 8) + directed_rows(8)
    for (s, msk), o in zip(rows, row_golden(rows, p)):
        assert np.array_equal(o, softmax_slow(s[None], msk[None], p)[0])


def test_golden_close_to_float_softmax():
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((2000, 64)) * 3).astype(np.float32)
    mask = rng.random((2000, 64)) < 0.8
    mask[:, 0] = True
    s = bf16.from_float32(x)
    ref = float_softmax(s, mask)
    out = bf16.to_float32(softmax(s, mask, DEFAULT)).astype(np.float64)
    assert np.abs(out - ref).max() < 0.01
    assert np.abs(out.sum(axis=-1) - 1).max() < 0.01
    assert np.all(out[~mask] == 0)
    q = out / out.sum(axis=-1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        kl = np.sum(np.where(ref > 0, ref * np.log(ref / np.maximum(q, 1e-30)), 0), axis=-1)
    assert kl.mean() < 1e-4


def test_golden_pwl_tables_accuracy():
    p = DEFAULT
    F, W = p.frac_bits, p.exp_bits
    u = np.arange(1 << F)
    v = pwl_eval(u, F, W, pwl_table("pow2", F, W, p.pwl_segments, p.pwl_terms)) / 2 ** W
    assert np.abs(v - 2.0 ** (u / 2 ** F)).max() < 4e-3
    u = np.arange(1 << W)
    v = pwl_eval(u, W, F, pwl_table("log2p1", W, F, p.pwl_segments, p.pwl_terms)) / 2 ** F
    assert np.abs(v - np.log2(1 + u / 2 ** W)).max() < 4e-3
    for _, terms, _, _ in [pwl_table("pow2", F, W, 8, 3)]:
        assert all(len(t) <= 3 for t in terms)


def test_golden_log2e_constant():
    assert log2e_const(4) == 0b10111                     # OPAL's 1.0111b
    assert abs(log2e_const(10) / 1024 - 1.4426950408889634) < 2 ** -11


def test_golden_directed_semantics():
    p = PRESETS["tiny"]
    rows = directed_rows(16)
    out = row_golden(rows, p)
    eq, zero = out[0], out[1]
    assert np.all(eq == bf16.from_float32(np.float32(1 / 16)))          # exactly 1/16
    assert np.array_equal(zero, eq)
    assert out[3][8] == 0x3F80 and np.all(np.delete(out[3], 8) == 0)    # one huge -> 1, 0
    assert out[4][15] == 0x3F80 and np.all(out[4][:15] == 0)            # single kept -> 1.0
    assert np.all(out[5] == 0)                                          # all masked -> 0
    assert out[11][0] == 0 and np.all(out[11][1:] == out[11][1])        # -Inf -> 0
    assert np.all(out[12] == 0)                                         # all -Inf -> 0
    assert np.all(out[13] == bf16.NAN) and np.all(out[14] == bf16.NAN)  # +Inf, NaN rows
    assert out[15][0] == 0 and np.all(out[15][1:] == out[0][0] * 0 + out[15][1])  # masked NaN
    assert np.all(out[15][1:] != bf16.NAN)


def test_golden_rejects_long_rows():
    with pytest.raises(ValueError, match=r"row length must be in 1\.\.16, not 17"):
        softmax(np.zeros((2, 17), np.uint16), None, PRESETS["tiny"])


def test_rtl_has_no_multiplier_or_divider():
    """The datapath is shifts, adds, compares and leading-one detection only."""
    from amaranth.back import rtlil
    from hw.softmax import Softmax
    for name in ("tiny", "minilm"):
        cells = set(re.findall(r"^\s*cell (\S+)", rtlil.convert(Softmax(PRESETS[name])), re.M))
        assert cells and not cells & {"$mul", "$div", "$mod", "$divfloor", "$modfloor", "$pow"}
        assert "$shr" in cells or "$sshr" in cells or "$shift" in cells or "$shiftx" in cells


# ---------------------------------------------------------------- parameters ------------


@pytest.mark.parametrize("field, value, message", [
    ("max_len", 0, r"max_len must be an integer in 1\.\.4096, not 0"),
    ("max_len", 4097, r"max_len must be an integer in 1\.\.4096, not 4097"),
    ("int_bits", 0, r"int_bits must be an integer in 1\.\.15, not 0"),
    ("int_bits", 16, r"int_bits must be an integer in 1\.\.15, not 16"),
    ("frac_bits", 3, r"frac_bits must be an integer in 4\.\.16, not 3"),
    ("frac_bits", 17, r"frac_bits must be an integer in 4\.\.16, not 17"),
    ("log2e_frac", 0, r"log2e_frac must be an integer in 1\.\.16, not 0"),
    ("log2e_frac", 17, r"log2e_frac must be an integer in 1\.\.16, not 17"),
    ("exp_bits", 5, r"exp_bits must be an integer in 6\.\.20, not 5"),
    ("exp_bits", 21, r"exp_bits must be an integer in 6\.\.20, not 21"),
    ("pwl_segments", 3, r"pwl_segments must be a power of two in 1\.\.64, not 3"),
    ("pwl_segments", 128, r"pwl_segments must be a power of two in 1\.\.64, not 128"),
    ("pwl_terms", 0, r"pwl_terms must be an integer in 1\.\.4, not 0"),
    ("pwl_terms", 5, r"pwl_terms must be an integer in 1\.\.4, not 5"),
    ("max_len", 16.0, r"max_len must be an integer in 1\.\.4096, not 16\.0"),
])
def test_params_rejects_out_of_range(field, value, message):
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(SoftmaxParams(), **{field: value})


def test_params_rejects_segments_finer_than_fraction():
    with pytest.raises(ValueError, match=r"pwl_segments must be at most 2\*\*frac_bits = 16, "
                                         r"not 32"):
        SoftmaxParams(frac_bits=4, pwl_segments=32)


def test_params_keyword_only():
    with pytest.raises(TypeError):
        SoftmaxParams(16)


def test_presets_cover_every_name():
    assert set(PRESETS) == {"tiny", "minilm", "bert-base", "bert-large"}
    assert PRESETS["minilm"].max_len == 256 and PRESETS["bert-large"].max_len == 512


# ---------------------------------------------------------------- cocotb regression -----

try:
    import cocotb
except ImportError:   # pragma: no cover - cocotb is a dependency
    cocotb = None

if cocotb is not None:
    from gen import streamkit
    from hw.softmax import softmax_input_layout, softmax_output_layout

    class TB(streamkit.TB):
        """softmax: source ``i`` (scores), sink ``o`` (probabilities) with its scoreboard."""

        def __init__(self, dut, **stalls):
            super().__init__(dut, **stalls)
            self.src = self.source("i", softmax_input_layout(self.params))
            self.out = self.sink("o", softmax_output_layout(self.params))

    async def run_test(tb, rows):
        """Stream ``rows`` (a list of (scores, mask)) through; check every probability.
        Returns the ``last`` flag of every beat."""
        await tb.start()
        last = send_rows(tb, rows)
        await tb.drain(20 * last.size + 1000)
        return last

    def send_rows(tb, rows):
        """Queue ``rows`` on the source and their golden probabilities on the scoreboard (the
        stimulus of ``run_test``); returns the ``last`` flag of every beat."""
        s = np.concatenate([r[0] for r in rows])
        msk = np.concatenate([r[1] for r in rows]).astype(np.int64)
        last = np.concatenate([np.arange(len(r[0])) == len(r[0]) - 1 for r in rows])
        last = last.astype(np.int64)
        tb.out.expect(data=np.concatenate(row_golden(rows, tb.params)), last=last)
        # a full-length row ends by its count whether or not ``last`` is set
        full = np.concatenate([np.full(len(r[0]), len(r[0]) == tb.params.max_len)
                               for r in rows])
        sent_last = np.where(full & (tb.rng.random(last.size) < 0.5), 0, last)
        tb.src.send(data=s, mask=msk, last=sent_last)
        return last

    @cocotb.test()
    async def softmax_directed(dut):
        """Corner rows at full length and at length 1..3, under random stalls."""
        tb = TB(dut, idle=0.3, backpressure=0.3)
        p = tb.params
        rows = directed_rows(p.max_len) + directed_rows(min(3, p.max_len))
        rows += [(r[0][:1], r[1][:1]) for r in directed_rows(p.max_len)]
        await run_test(tb, rows)
        tb.report(vectors=len(rows))

    @cocotb.test()
    async def softmax_random(dut):
        """NUM_SAMPLES random rows of 1..12 elements, then FULL_ROWS random rows at full
        length, under random stalls."""
        tb = TB(dut)
        p = tb.params
        full = int(os.environ.get("FULL_ROWS", 4))
        rows = random_rows(tb.rng, streamkit.samples_from_env(300), min(p.max_len, 12))
        rows += random_rows(tb.rng, full, p.max_len, min_len=p.max_len)
        await run_test(tb, rows)
        tb.report(vectors=len(rows), full_rows=full)

    @cocotb.test()
    async def softmax_reset_midstream(dut):
        """Rounds of random rows, each cut by a reset at a random cycle under random stalls; a
        last round runs to the end: every probability before a reset and after it is
        bit-exact, and nothing stale comes out."""
        tb = TB(dut)
        p = tb.params
        await tb.start()
        n = max(streamkit.samples_from_env(300) // 20, 4)
        for _ in range(8):
            last = send_rows(tb, random_rows(tb.rng, n, p.max_len))
            await tb.reset_after(0, 3 * last.size)
        last = send_rows(tb, random_rows(tb.rng, n, p.max_len))
        await tb.drain(tb.cycle + 20 * last.size + 1000)
        assert tb.resets == 8
        tb.report(vectors=0)

    @cocotb.test()
    async def softmax_throughput(dut):
        """No stalls: rows of ``L`` take ``row_cycles(L)`` cycles each (``L`` at full length,
        more for rows shorter than ``ROW_GAP``); a row's first probability comes ``LATENCY``
        cycles after its last score."""
        tb = TB(dut, idle=0.0, backpressure=0.0)
        p = tb.params
        n, short = 8, max(1, min(p.max_len, ROW_GAP) // 2)
        rows = random_rows(tb.rng, n, p.max_len, min_len=p.max_len)
        rows += random_rows(tb.rng, 2 * n, short, min_len=short)
        last = await run_test(tb, rows)
        t_in, t_out = np.array(tb.src.times), np.array(tb.out.sink.times)
        ends = t_out[last == 1]
        per_row = (ends[n - 1] - ends[0]) / (n - 1)
        per_short = (ends[-1] - ends[n + 3]) / (2 * n - 4)     # after the change of length
        latency = int(t_out[0] - t_in[p.max_len - 1])
        assert per_row == row_cycles(p.max_len), f"{per_row} cycles per row of {p.max_len}"
        want = row_cycles(short)
        assert per_short == want, f"{per_short} cycles per row of {short}, expected {want}"
        assert latency == LATENCY, f"latency {latency}, expected {LATENCY}"
        tb.report(vectors=0, row_len=p.max_len, cycles_per_row=per_row, latency=latency,
                  short_row=short, cycles_per_short_row=per_short)


# ---------------------------------------------------------------- runner (pytest) -------

CASES = {
    # case: (params, random short rows, random full-length rows in the default run)
    "tiny": (PRESETS["tiny"], 7000, 300),
    "l8-i4-f6-e8-s2-t1": (SoftmaxParams(max_len=8, int_bits=4, frac_bits=6, log2e_frac=4,
                                        exp_bits=8, pwl_segments=2, pwl_terms=1), 2500, 300),
    "minilm": (PRESETS["minilm"], 600, 1000),
}
# 10,100 short rows and 1,600 full-length ones (1,000 of 256 elements), plus the corners


@pytest.mark.parametrize("case", CASES)
def test_softmax_verilator(case):
    params, n, full = CASES[case]
    full = int(os.environ.get("FULL_ROWS", full))
    rep = regress("softmax", params, case=case, samples=n, env={"FULL_ROWS": str(full)})
    assert rep["full_rows"] == full


@pytest.mark.icarus
def test_softmax_icarus():
    regress("softmax", PRESETS["tiny"], case="tiny", samples=200, simulator="icarus",
            env={"FULL_ROWS": "20"})
