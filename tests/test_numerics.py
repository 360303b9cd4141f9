"""Golden numerics (sim/bf16.py, sim/mxop.py, sim/fixed.py) against independent references."""

from fractions import Fraction

import ml_dtypes
import numpy as np
import pytest

from sim import bf16, fixed, mxop

ALL = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)


def ref_round(fr):
    """bf16 pattern of an exact rational: RNE to 8 significant bits, FTZ, overflow to Inf."""
    if fr == 0:
        return 0
    neg = fr < 0
    a = abs(fr)
    e = a.numerator.bit_length() - a.denominator.bit_length()
    if a < Fraction(2) ** e:
        e -= 1
    q = round(a / Fraction(2) ** (e - 7))          # Fraction rounds half to even
    if q == 256:
        q, e = 128, e + 1
    biased = e + 127
    if biased >= 255:
        bits = bf16.POS_INF
    elif biased <= 0:
        bits = 0
    else:
        bits = (biased << 7) | (q - 128)
    return bits | (0x8000 if neg else 0)


def exact(bits):
    """Exact rational value of a finite bf16 pattern after DAZ."""
    m, e = bf16.to_fixed(np.uint16(bits))
    return Fraction(int(m)) * Fraction(2) ** int(e)


# ------------------------------------------------------------------ bf16 ----------------


def test_to_float32_matches_ml_dtypes_for_every_pattern():
    ours = bf16.to_float32(ALL)
    ref = ALL.view(ml_dtypes.bfloat16).astype(np.float32)
    assert np.array_equal(ours.view(np.uint32), ref.view(np.uint32))


def test_from_float32_matches_ml_dtypes_rne():
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(200_000) * np.exp2(rng.integers(-125, 127, 200_000))).astype(np.float32)
    x = np.concatenate([x, np.float32([0.0, -0.0, np.inf, -np.inf, 3.3895314e38, 3.4e38])])
    ref = x.astype(ml_dtypes.bfloat16).view(np.uint16)
    ours = bf16.from_float32(x)
    normal = np.abs(x) >= np.float32(2.0 ** -126)
    bad = np.flatnonzero((ref != ours) & normal)
    assert bad.size == 0, f"x={x[bad[0]]!r}: expected {ref[bad[0]]:#06x}, actual {ours[bad[0]]:#06x}"
    assert bf16.from_float32(np.float32(np.nan)) == bf16.NAN
    assert bf16.from_float32(np.float32(-0.0)) == 0x8000


def test_from_float32_flushes_below_min_normal():
    tiny = np.float32([1e-39, -1e-39, 2.0 ** -127])
    assert list(bf16.from_float32(tiny)) == [0, 0x8000, 0]


def test_round_fixed_matches_exact_rational_rounding():
    rng = np.random.default_rng(1)
    mant = rng.integers(-(1 << 40), 1 << 40, 20_000) >> rng.integers(0, 40, 20_000)
    mant[:50] = np.arange(-25, 25)                          # small values, zero, ties
    exp = rng.integers(-180, 140, 20_000)
    ours = bf16.round_fixed(mant, exp)
    for i in range(mant.size):
        ref = ref_round(Fraction(int(mant[i])) * Fraction(2) ** int(exp[i]))
        assert ours[i] == ref, f"mant={mant[i]} exp={exp[i]}: expected {ref:#06x}, actual {ours[i]:#06x}"


def test_round_fixed_ties_to_even():
    # 0x101 * 2**-8 = 1.00390625: exactly between 1.0 and 1.0078125 -> 1.0 (even)
    assert bf16.round_fixed(np.int64(0x101), -8) == 0x3F80
    assert bf16.round_fixed(np.int64(0x103), -8) == 0x3F82


def test_to_fixed_is_exact_and_applies_daz():
    finite = ALL[bf16.is_finite(ALL)]
    m, e = bf16.to_fixed(finite)
    val = m.astype(np.float64) * np.exp2(e.astype(np.float64))
    ref = bf16.to_float32(bf16.daz(finite)).astype(np.float64)
    assert np.array_equal(val, ref)


# ------------------------------------------------------------------ MX-OP ---------------


def ref_encode(block, fmt):
    """Obviously-correct encoder for one block of bf16 patterns (pure Python)."""
    x = [int(v) for v in bf16.daz(np.asarray(block, np.uint16))]
    key = [v & 0x7FFF for v in x]
    order = sorted(range(len(x)), key=lambda i: (-key[i], i))
    outs = sorted(order[:fmt.outliers])
    inl = [i for i in range(len(x)) if i not in outs]
    kmax = max(key[i] for i in inl)
    exp = 255 if kmax >= 0x7F80 else kmax >> 7
    q = [0] * len(x)
    if exp not in (0, 255):
        step = Fraction(2) ** int(mxop.scale_exp(exp, fmt.bits))
        for i in inl:
            if key[i]:
                v = round(abs(exact(x[i])) / step)
                v = min(v, fmt.qmax)
                q[i] = -v if x[i] >> 15 else v
    return exp, q, outs, [x[i] for i in outs]


@pytest.mark.parametrize("block, outliers, bits", [(16, 2, 3), (32, 4, 5), (8, 0, 8), (128, 4, 5)])
def test_encode_matches_reference(block, outliers, bits):
    from test_mxq import directed_blocks, random_blocks
    from sim.mxq import MXQParams
    p = MXQParams(block=block, outliers=outliers, bits=bits)
    rng = np.random.default_rng(block + bits)
    x = np.concatenate([directed_blocks(p), random_blocks(rng, 150, p)])[:, 0, :]
    enc = mxop.encode(x, p.fmt)
    for j in range(x.shape[0]):
        exp, q, outs, vals = ref_encode(x[j], p.fmt)
        assert enc.exp[j, 0] == exp, f"block {j}: exponent expected {exp}, actual {enc.exp[j, 0]}"
        assert list(enc.q[j, 0]) == q, f"block {j}: inliers differ"
        assert list(enc.out_idx[j, 0]) == outs, f"block {j}: outlier indices differ"
        assert list(enc.out_val[j, 0]) == vals, f"block {j}: outlier values differ"


def test_outliers_reproduced_exactly_and_inlier_error_bound():
    fmt = mxop.MXOPFormat(block=32, outliers=4, bits=5)
    rng = np.random.default_rng(7)
    xf = rng.standard_normal((4000, 32)).astype(np.float32) * np.exp2(rng.integers(-20, 20, (4000, 1)))
    xf[rng.random(xf.shape) < 0.05] *= 300
    x = bf16.from_float32(xf)
    enc = mxop.encode(x, fmt)
    dec = mxop.decode(enc, fmt).reshape(4000, 32)
    val = bf16.to_float32(x).astype(np.float64)
    is_out = np.zeros(x.shape, bool)
    np.put_along_axis(is_out, enc.out_idx[:, 0].astype(np.int64), True, axis=-1)
    assert np.array_equal(dec[is_out], val[is_out])
    step = np.exp2(mxop.scale_exp(enc.exp[:, 0], fmt.bits).astype(np.float64))[:, None]
    err = np.abs(dec - val)
    sat = np.abs(enc.q[:, 0]) == fmt.qmax
    assert np.all(err[~is_out & ~sat] <= step.repeat(32, 1)[~is_out & ~sat] / 2)   # RNE
    assert np.all(err[~is_out & sat] < step.repeat(32, 1)[~is_out & sat])          # saturated


@pytest.mark.parametrize("bits", [3, 5, 8])
def test_decode_encode_roundtrip_for_representable_values(bits):
    fmt = mxop.MXOPFormat(block=16, outliers=2, bits=bits)
    rng = np.random.default_rng(bits)
    qmax = fmt.qmax
    for _ in range(300):
        e_big = int(rng.integers(20, 230))
        q = rng.integers(-qmax, qmax + 1, 16)
        q[rng.integers(0, 16)] = qmax * rng.choice([-1, 1])    # the largest inlier sets E
        vals = q.astype(np.float64) * 2.0 ** (e_big - 127 - (bits - 2))
        pos = rng.choice(16, 2, replace=False)
        vals[pos] = rng.choice([-1, 1], 2) * 2.0 ** (e_big - 127 + 3) * rng.uniform(1, 1.9, 2)
        x = bf16.from_float32(vals.astype(np.float32))
        back = mxop.decode(mxop.encode(x, fmt), fmt)
        assert np.array_equal(back, bf16.to_float32(x).astype(np.float64))


def test_format_validation():
    with pytest.raises(ValueError, match=r"block must be an integer in 2\.\.1024, not 0"):
        mxop.MXOPFormat(block=0)
    with pytest.raises(ValueError, match=r"bits must be an integer in 2\.\.8, not 12"):
        mxop.MXOPFormat(bits=12)
    with pytest.raises(ValueError, match=r"outliers must be an integer in 0\.\.7, not 8"):
        mxop.MXOPFormat(block=8, outliers=8)
    with pytest.raises(ValueError, match=r"multiple of block=16"):
        mxop.encode(np.zeros(24, np.uint16), mxop.MXOPFormat(block=16))
    assert mxop.MXOPFormat(block=128, outliers=4).for_length(32).block == 32


# ------------------------------------------------------------------ fixed point ---------


def ref_mxop_dot(enc, fmt, w, w_exp, frac_bits, row):
    """Slow reference of sim.fixed.mxop_dot for one row: Python ints, explicit floor."""
    exp, q, out_idx, out_val = (a[row] for a in enc)
    nb, b = q.shape
    n = w.shape[1]
    res = []
    for col in range(n):
        terms = []
        for blk in range(nb):
            if exp[blk] not in (0, 255):
                t = sum(int(q[blk, i]) * int(w[blk * b + i, col]) for i in range(b))
                terms.append((t, int(mxop.scale_exp(exp[blk], fmt.bits)) + int(w_exp[blk, col])))
            for j in range(fmt.outliers):
                m, e = bf16.to_fixed(out_val[blk, j])
                if m:
                    terms.append((int(m) * int(w[blk * b + out_idx[blk, j], col]),
                                  int(e) + int(w_exp[blk, col])))
        if not terms:
            res.append((0, 0))
            continue
        lsb = max(e for _, e in terms) - frac_bits
        acc = sum(t << (e - lsb) if e >= lsb else t >> (lsb - e) for t, e in terms)
        res.append((acc, lsb))
    return res


def test_mxop_dot_matches_reference_and_is_order_independent():
    fmt = mxop.MXOPFormat(block=16, outliers=2, bits=5)
    rng = np.random.default_rng(11)
    xf = rng.standard_normal((20, 64)).astype(np.float32) * np.exp2(rng.integers(-8, 8, (20, 4)).repeat(16, 1))
    x = bf16.from_float32(xf)
    w = rng.integers(-127, 128, (64, 5))
    w_exp = rng.integers(-6, 6, (4, 5))
    enc = mxop.encode(x, fmt)
    acc, lsb, nan = fixed.mxop_dot(enc, fmt, w, w_exp, frac_bits=12)
    for r in range(20):
        for c, (a, l) in enumerate(ref_mxop_dot(enc, fmt, w, w_exp, 12, r)):
            assert (acc[r, c], lsb[r, c]) == (a, l), f"row {r} col {c}"
    assert not nan.any()
    # permuting whole blocks (and the operand with them) leaves the result unchanged
    perm = np.array([2, 0, 3, 1])
    xp = x.reshape(20, 4, 16)[:, perm].reshape(20, 64)
    wp = w.reshape(4, 16, 5)[perm].reshape(64, 5)
    acc2, lsb2, _ = fixed.mxop_dot(mxop.encode(xp, fmt), fmt, wp, w_exp[perm], frac_bits=12)
    assert np.array_equal(acc, acc2) and np.array_equal(lsb, lsb2)


def test_affine_round_is_exact_then_rne():
    rng = np.random.default_rng(12)
    n = 20_000
    acc = rng.integers(-(1 << 45), 1 << 45, n) >> rng.integers(0, 45, n)
    lsb = rng.integers(-60, 20, n)
    scale = bf16.from_float32((rng.standard_normal(n) * np.exp2(rng.integers(-20, 20, n))).astype(np.float32))
    bias = bf16.from_float32((rng.standard_normal(n) * np.exp2(rng.integers(-40, 40, n))).astype(np.float32))
    bias[:100] = 0
    ours = fixed.affine_round(acc, lsb, scale, bias)
    for i in range(n):
        fr = Fraction(int(acc[i])) * Fraction(2) ** int(lsb[i]) * exact(scale[i]) + exact(bias[i])
        ref = ref_round(fr)
        assert ours[i] == ref, (f"acc={acc[i]} lsb={lsb[i]} scale={scale[i]:#06x} bias={bias[i]:#06x}: "
                                f"expected {ref:#06x}, actual {ours[i]:#06x}")


def test_affine_round_nan_and_cancellation():
    one = np.uint16(0x3F80)
    assert fixed.affine_round(np.int64(1), 0, one, np.uint16(0xBF80)) == 0          # 1 - 1 = +0
    assert fixed.affine_round(np.int64(1), 0, bf16.NAN, one) == bf16.NAN
    assert fixed.affine_round(np.int64(1), 0, one, bf16.POS_INF) == bf16.NAN
    assert fixed.affine_round(np.int64(1), 0, one, one, nan=True) == bf16.NAN
    with pytest.raises(ValueError, match="46 bits"):
        fixed.affine_round(np.int64(1 << 50), 0, one, one)
