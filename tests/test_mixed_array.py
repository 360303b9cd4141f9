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
from sim.mixed_array import (ONE, PRESETS, ZERO, MixedArrayParams, beats, matmul_static,
                             from_sign_magnitude, minilm_head_qkv, mixed_dot, mxint, pv,
                             pv_operands, qk, qk_operands, run_beats, to_sign_magnitude)

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
                           frac_bits=12, max_blocks=4, affine=True)


@pytest.mark.parametrize("seed", range(4))
def test_golden_static_matches_slow_exact(seed):
    rng = np.random.default_rng(seed)
    p = P_SMALL
    fmt = mxop.MXOPFormat(block=16, outliers=3, bits=int(rng.choice([3, 5])))
    m, k, n = 12, 48, 5
    x = random_rows(rng, m, k)
    w = rng.integers(-127, 128, size=(k, n))
    scale = random_bf16_scale(rng, n)
    bias = random_bf16_scale(rng, n)
    got = matmul_static(x, w, scale, bias, fmt, p)
    for i in range(m):
        for j in range(n):
            exp = slow_dot(x[i], w[:, j], None, False, scale[j], bias[j], fmt, p.frac_bits)
            assert got[i, j] == exp, f"[{i},{j}] expected {exp:#06x}, actual {got[i, j]:#06x}"


@pytest.mark.parametrize("seed, kv_bits", [(0, 8), (1, 5), (2, 4)])
def test_golden_qk_pv_match_slow_exact(seed, kv_bits):
    rng = np.random.default_rng(100 + seed)
    p = dataclasses.replace(P_SMALL, frac_bits=int(rng.choice([0, 4, 12])))
    fmt = mxop.MXOPFormat(block=16, outliers=2, bits=5)
    seq, d = 16, 8
    q, kk, v = (random_rows(rng, seq, d), random_rows(rng, seq, d), random_rows(rng, seq, d))
    s = qk(q, kk, fmt, p, kv_bits=kv_bits)
    fq = fmt.for_length(d)
    kw, kwe, kn = mxint(kk, fq.block, kv_bits)
    assert np.abs(kw).max() <= (1 << (kv_bits - 1)) - 1
    for i in range(seq):
        for j in range(seq):
            exp = slow_dot(q[i], kw[j], kwe[j], kn[j], ONE, ZERO, fq, p.frac_bits)
            assert s[i, j] == exp, f"S[{i},{j}] expected {exp:#06x}, actual {s[i, j]:#06x}"
    pm = random_rows(rng, seq, seq, specials=False)
    c = pv(pm, v, fmt, p, kv_bits=kv_bits)
    fp = fmt.for_length(seq)
    vw, vwe, vn = mxint(v.T, fp.block, kv_bits)
    for i in range(seq):
        for j in range(d):
            exp = slow_dot(pm[i], vw[j], vwe[j], vn[j], ONE, ZERO, fp, p.frac_bits)
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


def _beats_vs_mixed_dot(rng, p, fmt, k, *, length=None, rows=9):
    x = random_rows(rng, rows, k)
    if length is not None:
        x[:, length:] = 0
    w = rng.integers(-p.wmax, p.wmax + 1, size=(k, 4))
    we = rng.integers(-140, 120, size=(k // fmt.block, 4))
    wn = rng.random(4) < 0.2
    sc, bi = ((random_bf16_scale(rng, 4), random_bf16_scale(rng, 4)) if p.affine
              else (ONE, ZERO))
    ref = mixed_dot(x, w, we, wn, sc, bi, fmt, p)
    bt = beats(x, w, we, wn, sc, bi, fmt, p, length=length)
    rows_, grp = bt["order"][:, 0], bt["order"][:, 1]
    exp = np.stack([ref[r, g * p.lanes:(g + 1) * p.lanes] for r, g in zip(rows_, grp)])
    assert np.array_equal(run_beats(bt, p), exp)
    return bt


def test_golden_beats_match_mxop_dot():
    """The beat stream of the hardware, consumed term by term, gives the golden results."""
    rng = np.random.default_rng(11)
    for p, fmt in ((P_SMALL, mxop.MXOPFormat(block=16, outliers=3, bits=3)),
                   (dataclasses.replace(P_SMALL, width=8, affine=False),
                    mxop.MXOPFormat(block=16, outliers=3, bits=5)),
                   (dataclasses.replace(P_SMALL, width=16, frac_bits=0),
                    mxop.MXOPFormat(block=16, outliers=0)),
                   (dataclasses.replace(P_SMALL, width=16, block=32, outliers=4),
                    mxop.MXOPFormat(block=8, outliers=4))):
        bt = _beats_vs_mixed_dot(rng, p, fmt, 32)
        assert bt["o_val"].shape[1] == p.outliers
        assert np.all(bt["o_val"][bt["blast"] == 0] == 0)      # outliers ride on blast


def test_golden_beats_end_blocks_early():
    """``length``: a block ends after the beats holding real elements (zero padding)."""
    rng = np.random.default_rng(12)
    p = dataclasses.replace(P_SMALL, width=4, block=32, max_blocks=2)
    fmt = mxop.MXOPFormat(block=32, outliers=3, bits=5)
    for length in (1, 5, 32, 33, 40, 64):
        bt = _beats_vs_mixed_dot(rng, p, fmt, 64, length=length)
        per_vector = bt["last"].sum()
        nb = [max(1, -(-min(max(length - b * 32, 0), 32) // 4)) for b in range(2)]
        assert len(bt["last"]) == per_vector * sum(nb), (length, len(bt["last"]))
        assert bt["blast"].sum() == 2 * per_vector


def test_golden_rejects_bad_operands():
    p = P_SMALL
    fmt = mxop.MXOPFormat(block=16, outliers=3, bits=5)
    x = np.zeros((1, 16), np.uint16)
    with pytest.raises(ValueError, match=r"integer operand must be in -127\.\.127"):
        matmul_static(x, np.full((16, 1), -128), 0x3F80, 0, fmt, p)
    with pytest.raises(ValueError, match=r"format bits=8 exceed"):
        matmul_static(x, np.zeros((16, 1), int), 0x3F80, 0,
                      mxop.MXOPFormat(block=16, outliers=0, bits=8), p)
    with pytest.raises(ValueError, match=r"at most max_blocks=4 blocks"):
        beats(np.zeros((1, 80), np.uint16), np.zeros((80, 2), int), None, None, 0x3F80, 0,
              fmt, p)
    with pytest.raises(ValueError, match=r"multiple of block=16"):
        matmul_static(np.zeros((1, 40), np.uint16), np.zeros((40, 1), int), 0x3F80, 0, fmt, p)
    with pytest.raises(ValueError, match=r"kv_bits must be an integer in 2\.\.5"):
        qk(x, x, fmt, dataclasses.replace(p, weight_bits=5), kv_bits=8)
    with pytest.raises(ValueError, match=r"elements past length=3 must be zero"):
        beats(np.full((1, 16), 0x3F80, np.uint16), np.zeros((16, 2), int), None, None,
              0x3F80, 0, fmt, p, length=3)
    with pytest.raises(ValueError, match=r"scale and bias must be 1\.0 and \+0"):
        beats(x, np.zeros((16, 2), int), None, None, 0x4000, 0, fmt,
              dataclasses.replace(p, affine=False))


# ---------------------------------------------------------------- parameters ------------


@pytest.mark.parametrize("field, value, message", [
    ("lanes", 0, r"lanes must be an integer in 1\.\.64, not 0"),
    ("lanes", 65, r"lanes must be an integer in 1\.\.64, not 65"),
    ("width", 3, r"width must be a power of two in 1\.\.64, not 3"),
    ("width", 128, r"width must be a power of two in 1\.\.64, not 128"),
    ("block", 1, r"block must be an integer in 2\.\.1024, not 1"),
    ("block", 2048, r"block must be an integer in 2\.\.1024, not 2048"),
    ("block", 130, r"block must be a multiple of width=32, not 130"),
    ("outliers", -1, r"outliers must be an integer in 0\.\.16, not -1"),
    ("outliers", 17, r"outliers must be an integer in 0\.\.16, not 17"),
    ("bits", 1, r"bits must be an integer in 2\.\.8, not 1"),
    ("bits", 9, r"bits must be an integer in 2\.\.8, not 9"),
    ("weight_bits", 1, r"weight_bits must be an integer in 2\.\.8, not 1"),
    ("weight_bits", 9, r"weight_bits must be an integer in 2\.\.8, not 9"),
    ("frac_bits", -1, r"frac_bits must be an integer in 0\.\.24, not -1"),
    ("frac_bits", 25, r"frac_bits must be an integer in 0\.\.24, not 25"),
    ("max_blocks", 0, r"max_blocks must be an integer in 1\.\.64, not 0"),
    ("max_blocks", 65, r"max_blocks must be an integer in 1\.\.64, not 65"),
    ("lanes", True, r"lanes must be an integer in 1\.\.64, not True"),
    ("frac_bits", 16.0, r"frac_bits must be an integer in 0\.\.24, not 16\.0"),
    ("affine", 1, r"affine must be a bool, not 1"),
])
def test_params_rejects_out_of_range(field, value, message):
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(MixedArrayParams(), **{field: value})


def test_params_keyword_only():
    with pytest.raises(TypeError):
        MixedArrayParams(4)


def test_params_presets_valid():
    assert set(PRESETS) == {"tiny", "minilm", "bert-base", "bert-large"}
    for name, p in PRESETS.items():
        assert p.acc_bits <= 46, name                  # affine_round's accumulator bound


def test_golden_minilm_head_runs():
    """A real MiniLM head through qk, softmax and pv gives finite, plausible values."""
    from sim import softmax as sm
    q, k, v = minilm_head_qkv(16)
    p = PRESETS["minilm"]
    fmt = mxop.MXOPFormat(block=128, outliers=4, bits=5)
    s = qk(q, k, fmt, p, kv_bits=p.weight_bits)
    ref = bf16.to_float32(q).astype(np.float64) @ bf16.to_float32(k).astype(np.float64).T
    got = bf16.to_float32(s).astype(np.float64)
    assert np.all(bf16.is_finite(s))
    assert np.max(np.abs(got - ref)) < 0.1 * np.max(np.abs(ref))
    pm = sm.softmax(s, None, sm.PRESETS["minilm"])
    c = pv(pm, v, fmt, p, kv_bits=p.weight_bits)
    ref = bf16.to_float32(pm).astype(np.float64) @ bf16.to_float32(v).astype(np.float64)
    assert np.max(np.abs(bf16.to_float32(c) - ref)) < 0.1 * np.max(np.abs(ref))


# ---------------------------------------------------------------- stimulus for the RTL --


def corner_cases(rng, p, fmt, m_rows):
    """Directed (x, w, w_exp, w_nan, scale, bias) problems: outlier ties, zero blocks,
    extreme spreads, saturating inliers, cancellation, Inf/NaN, subnormals, and with
    ``affine`` extreme and non-finite scales and biases."""
    b = fmt.block
    k = b * min(2, p.max_blocks)
    n = p.lanes
    qm = p.wmax
    rows = [
        np.full(k, 0x3F80, np.uint16),                         # every element a candidate
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
        np.where(np.arange(k) < fmt.outliers, 0x0100, 0x7000),  # outliers far below (FTZ'd)
    ]
    x = np.array(rows, np.uint16)
    x = np.concatenate([x, random_rows(rng, max(0, m_rows - len(rows)), k)])
    cols = [np.full(k, qm), np.full(k, -qm), np.where(np.arange(k) % 2, qm, -qm),
            np.zeros(k, np.int64), np.ones(k, np.int64)]
    w = np.stack([cols[j % len(cols)] if j < len(cols) else rng.integers(-qm, qm + 1, k)
                  for j in range(n)], axis=1)
    one, zero = np.full(n, ONE, np.uint16), np.full(n, ZERO, np.uint16)
    problems = [(x, w, None, None, one, zero)]
    if p.affine:      # cancellation against a bias, extreme scales, Inf/NaN scale and bias
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
    problems.append((x, w, we, wn, one, zero))
    return problems


def random_problem(rng, p, fmt, rows, n_groups, mode):
    """Random (x, w, w_exp, w_nan, scale, bias): ``static`` or ``dynamic`` (MX-INT K/V)."""
    nb = int(rng.integers(1, p.max_blocks + 1))
    k = fmt.block * nb
    n = p.lanes * n_groups
    x = random_rows(rng, rows, k)
    if mode == "static":
        w = rng.integers(-p.wmax, p.wmax + 1, size=(k, n))
        if p.affine:
            return x, w, None, None, random_bf16_scale(rng, n), random_bf16_scale(rng, n)
        return x, w, None, None, ONE, ZERO
    w, we, wn = mxint(random_rows(rng, n, k), fmt.block, p.weight_bits)
    return x, w.T, we.T, wn, ONE, ZERO


def test_sign_magnitude_round_trip():
    v = np.arange(-31, 32)
    c = to_sign_magnitude(v, 6)
    assert c.min() >= 0 and c.max() < 64 and np.array_equal(from_sign_magnitude(c, 6), v)
    assert to_sign_magnitude(-5, 6) == 32 | 5


def expected_outputs(problem, fmt, p, length=None):
    """Beats and the expected output values (vectors, lanes) for one problem."""
    x, w, we, wn, sc, bi = problem
    if length is not None:
        x = np.where(np.arange(x.shape[1]) < length, x, 0).astype(np.uint16)
    ref = mixed_dot(x, w, we, wn, sc, bi, fmt, p)
    bt = beats(x, w, we, wn, sc, bi, fmt, p, length=length)
    rows, grp = bt["order"][:, 0], bt["order"][:, 1]
    cols = grp[:, None] * p.lanes + np.arange(p.lanes)[None]
    return bt, ref[rows[:, None], cols]


def head_problems(p, n_tok, kv_bits):
    """S = Q K^T and C = P V of one MiniLM head (layer 0) as (problem, format, length)."""
    from sim import softmax as sm
    q, k, v = minilm_head_qkv(n_tok)
    fq = mxop.MXOPFormat(block=min(p.block, 128), outliers=min(4, p.outliers),
                         bits=min(5, p.bits)).for_length(q.shape[1])
    pm = sm.softmax(qk(q, k, fq, p, kv_bits=kv_bits), None, sm.PRESETS["minilm"])
    # P is padded with zeros to a whole block; V with zero rows
    fp = mxop.MXOPFormat(block=min(p.block, 128), outliers=fq.outliers, bits=fq.bits)
    lp = -(-n_tok // fp.block) * fp.block
    pp = np.zeros((n_tok, lp), np.uint16)
    pp[:, :n_tok] = pm
    vp = np.zeros((lp, v.shape[1]), np.uint16)
    vp[:n_tok] = v
    one, zero = np.uint16(ONE), np.uint16(ZERO)
    return [((q, *qk_operands(k, fq, kv_bits), one, zero), fq, None),
            ((pp, *pv_operands(vp, fp, kv_bits), one, zero), fp, n_tok)]


# ---------------------------------------------------------------- cocotb regression -----

try:
    import cocotb
except ImportError:   # pragma: no cover - cocotb is a dependency
    cocotb = None

if cocotb is not None:
    from gen import streamkit
    from hw.mixed_array import (latency, mixed_array_input_layout,
                                mixed_array_output_layout)

    class TB(streamkit.TB):
        """mixed_array: source ``i``, sink ``o`` with its scoreboard."""

        def __init__(self, dut, **stalls):
            super().__init__(dut, **stalls)
            p = self.params
            self.src = self.source("i", mixed_array_input_layout(p))
            self.out = self.sink("o", mixed_array_output_layout(p))

        def send(self, bt):
            """Queue the beats of ``sim.mixed_array.beats``."""
            p = self.params
            f = {k: bt[k] for k in ("exp", "bits", "blast", "last")}
            for j in range(p.width):
                f[f"q.{j}"] = bt["q"][:, j]
            for j in range(p.outliers):
                f[f"o_val.{j}"] = bt["o_val"][:, j]
            for l in range(p.lanes):
                for j in range(p.width):
                    f[f"lane.{l}.w.{j}"] = bt["w"][:, l, j]
                for j in range(p.outliers):
                    f[f"lane.{l}.o_w.{j}"] = bt["o_w"][:, l, j]
                for k in ("wexp", "wnan") + (("scale", "bias") if p.affine else ()):
                    f[f"lane.{l}.{k}"] = bt[k][:, l]
            self.src.send(**f)

    def queue(tb, prob, fmt, length=None):
        """Queue one (problem, format, length) and its results; return (dot products,
        beats)."""
        p = tb.params
        bt, exp = expected_outputs(prob, fmt, p, length)
        tb.out.expect(**{f"value.{l}": exp[:, l] for l in range(p.lanes)})
        tb.send(bt)
        return exp.size, len(bt["last"])

    async def run_test(tb, items):
        """Stream every (problem, format, length) through; check every result; return the
        number of dot products checked."""
        await tb.start()
        n = sum(queue(tb, *item)[0] for item in items)
        await tb.drain(20 * len(tb.src.queue) + 1000)
        return n

    def _formats(p, rng, n):
        """Random run-time formats the array accepts."""
        out = []
        for _ in range(n):
            blocks = [b for b in (p.block, p.block // 2, p.block // 4, p.block // 3) if b >= 2]
            b = int(rng.choice(blocks))
            k = int(rng.integers(0, min(p.outliers, b - 1) + 1))
            bits = int(rng.integers(2, p.bits + 1))
            out.append(mxop.MXOPFormat(block=b, outliers=k, bits=bits))
        return out

    async def _random_mode(dut, mode):
        tb = TB(dut)
        p, rng = tb.params, tb.rng
        target = streamkit.samples_from_env(400)
        items, got = [], 0
        fmts = _formats(p, rng, 4)
        while got < target:
            fmt = fmts[len(items) % len(fmts)]
            rows, g = int(rng.integers(1, 12)), int(rng.integers(1, 3))
            prob = random_problem(rng, p, fmt, rows, g, mode)
            k = prob[0].shape[1]
            length = int(rng.integers(1, k + 1)) if rng.random() < 0.3 else None
            items.append((prob, fmt, length))
            got += rows * g * p.lanes
        tb.report(vectors=await run_test(tb, items), mode=mode)

    @cocotb.test()
    async def mixed_static_random(dut):
        """Random MX-OP rows x static signed weights (with ``affine``, random scale and bias);
        random block ends; stalls."""
        await _random_mode(dut, "static")

    @cocotb.test()
    async def mixed_dynamic_random(dut):
        """Random MX-OP rows x a dynamic MX-INT operand (per-block exponents); stalls."""
        await _random_mode(dut, "dynamic")

    @cocotb.test()
    async def mixed_reset_midstream(dut):
        """Rounds of random problems (random formats, static and dynamic operands, random
        block ends), each cut by a reset at a random cycle under random stalls; a last round
        runs to the end: every result before a reset and after it is exact, none stale."""
        tb = TB(dut)
        p, rng = tb.params, tb.rng
        await tb.start()
        fmts = _formats(p, rng, 4)
        rows = max(streamkit.samples_from_env(400) // (4 * p.lanes), 2)

        def round_(i):
            fmt = fmts[i % len(fmts)]
            prob = random_problem(rng, p, fmt, rows, 1, ("static", "dynamic")[i % 2])
            length = int(rng.integers(1, prob[0].shape[1] + 1)) if i % 3 == 2 else None
            return queue(tb, prob, fmt, length)[1]

        for i in range(8):
            await tb.reset_after(0, 3 * round_(i))
        n = round_(8)
        await tb.drain(tb.cycle + 20 * n + 1000)
        assert tb.resets == 8
        tb.report(vectors=tb.out.index * p.lanes, mode="reset")

    @cocotb.test()
    async def mixed_corners(dut):
        """Directed corners: outlier ties, zero blocks, extremes, cancellation, Inf/NaN."""
        tb = TB(dut, idle=0.3, backpressure=0.3)
        p = tb.params
        fmts = {mxop.MXOPFormat(block=p.block, outliers=min(p.outliers, p.block - 1),
                                bits=p.bits),
                mxop.MXOPFormat(block=p.block, outliers=0, bits=p.bits),
                mxop.MXOPFormat(block=max(2, p.block // 4), outliers=min(p.outliers, 1),
                                bits=2)}
        items = [(prob, fmt, None) for fmt in sorted(fmts, key=str)
                 for prob in corner_cases(tb.rng, p, fmt, 20)]
        tb.report(vectors=await run_test(tb, items), mode="corners")

    @cocotb.test()
    async def mixed_attention_head(dut):
        """One MiniLM head (layer 0, real weights and tokens): S = Q K^T, then C = P V with P
        padded to a whole block and its blocks ended at the sentence length."""
        tb = TB(dut, idle=0.1, backpressure=0.1)
        p = tb.params
        n_tok = int(os.environ.get("HEAD_TOKENS", 16))
        items = head_problems(p, n_tok, p.weight_bits)
        # the head's S is exactly the golden qk
        (prob, fq, _), _ = items
        bt, exp = expected_outputs(prob, fq, p)
        q, k, _ = minilm_head_qkv(n_tok)
        s_ref = qk(q, k, fq, p, kv_bits=p.weight_bits)
        assert np.array_equal(exp.reshape(-1, n_tok, p.lanes).transpose(1, 0, 2)
                              .reshape(n_tok, -1)[:, :n_tok], s_ref)
        tb.report(vectors=await run_test(tb, items), mode="head")

    @cocotb.test()
    async def mixed_throughput(dut):
        """No stalls: one beat per cycle, the latency, and the counters (busy, mults, FP ops)."""
        tb = TB(dut, idle=0.0, backpressure=0.0)
        p = tb.params
        fmt = p.fmt
        prob = random_problem(tb.rng, p, fmt, 16, 2, "dynamic")
        bt, _ = expected_outputs(prob, fmt, p)
        n = await run_test(tb, [(prob, fmt, None)])
        t_in, t_out = tb.src.times, tb.out.sink.times
        assert t_in[-1] - t_in[0] == len(t_in) - 1, "input stalled"
        first_last = int(np.argmax(bt["last"]))
        nblk = int(bt["blast"][:first_last + 1].sum())
        got = t_out[0] - t_in[first_last]
        assert got == latency(p, blocks=nblk), (got, latency(p, blocks=nblk), nblk)
        nbeats = len(bt["last"])
        assert int(dut.mults.value) == nbeats * p.lanes * p.width
        present = (bt["o_val"] & 0x7FFF) != 0
        assert int(dut.fp_ops.value) == int(present.sum()) * p.lanes
        busy = int(dut.busy_cycles.value)
        assert busy == t_out[-1] - t_in[0] + 1, (busy, t_in[0], t_out[-1])
        tb.report(vectors=n, latency=latency(p), beats_per_cycle=nbeats / busy)

    @cocotb.test(skip=os.environ.get("MIXED_BENCH", "") == "")
    async def mixed_utilization(dut):
        """A MiniLM head at HEAD_TOKENS tokens, no stalls: S = Q K^T then C = P V back to back.

        Reports useful multiplies / (INT multipliers x cycles) over the input's steady state
        (first to last accepted beat) and over the whole run. Run by
        scripts/bench_mixed_array.py (MIXED_BENCH=1).
        """
        tb = TB(dut, idle=0.0, backpressure=0.0)
        p = tb.params
        n_tok = int(os.environ.get("HEAD_TOKENS", 128))
        n = await run_test(tb, head_problems(p, n_tok, p.weight_bits))
        t_in, t_out = tb.src.times, tb.out.sink.times
        useful = 2 * n_tok * n_tok * 32
        mults = p.lanes * p.width
        steady = t_in[-1] - t_in[0] + 1
        tb.report(vectors=n, tokens=n_tok, useful_mults=useful, multipliers=mults,
                  in_beats=len(t_in), steady_cycles=steady, total_cycles=t_out[-1] + 1,
                  util_steady=useful / (mults * steady),
                  util_total=useful / (mults * (t_out[-1] + 1)),
                  issued_mults=int(dut.mults.value), fp_ops=int(dut.fp_ops.value),
                  busy_cycles=int(dut.busy_cycles.value))


# ---------------------------------------------------------------- runner (pytest) -------

CASES = {
    # case: (params, random dot products per mode in the default run, in make test-slow)
    "tiny": (PRESETS["tiny"], 300, 3000),
    "l2-w4-b16-k3-n8-affine-mb3": (MixedArrayParams(lanes=2, width=4, block=16, outliers=3,
                                                    bits=8, weight_bits=8, frac_bits=10,
                                                    max_blocks=3, affine=True), 300, 3000),
    "minilm": (PRESETS["minilm"], 200, 4000),
}
# make test-slow: 3000 + 3000 + 4000 = 10,000 random dot products per mode


@pytest.mark.parametrize("case", CASES)
def test_mixed_array_verilator(case):
    params, n, _ = CASES[case]
    regress("mixed_array", params, case=case, samples=n, per_sample=2)   # both modes


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES)
def test_mixed_array_verilator_10k(case):
    params, _, n = CASES[case]
    # the real head at 128 tokens, or the longest reduction the case's array takes
    tokens = min(128, params.max_blocks * params.block)
    regress("mixed_array", params, case=case, samples=n, per_sample=2,
            env={"HEAD_TOKENS": str(tokens)})


@pytest.mark.icarus
def test_mixed_array_icarus():
    regress("mixed_array", PRESETS["tiny"], case="tiny", samples=60, per_sample=2,
            simulator="icarus")
