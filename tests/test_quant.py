"""Offline weight preparation: per-channel INT-w weights, bf16 scales, the 1/sqrt(d) fold."""

import dataclasses

import numpy as np
import pytest

from sim import bert, bf16, crossbar, mxop, quant
from sim import policy as pol


@pytest.fixture(scope="module")
def minilm():
    return bert.load("minilm")


@pytest.mark.parametrize("bits", [4, 5, 6, 7, 8])
def test_quantize_weight_per_channel(bits):
    rng = np.random.default_rng(bits)
    w = (rng.standard_normal((24, 40)) * np.exp2(rng.integers(-6, 3, (24, 1)))).astype(np.float32)
    w[3] = 0                                             # an all-zero output channel
    q, s = quant.quantize_weight(w, bits)
    qmax = (1 << (bits - 1)) - 1
    assert q.shape == (40, 24) and q.dtype == np.int8 and s.shape == (24,)
    assert np.abs(q).max() <= qmax
    sf = bf16.to_float32(s)
    assert np.array_equal(bf16.from_float32(sf), s)      # scales are bf16
    amax = np.abs(w).max(axis=1)
    nz = amax > 0
    # scale = amax/qmax rounded up to bf16: at most one bf16 step (2**-7 relative) above
    assert np.all(sf[nz] >= amax[nz] / qmax)
    assert np.all(sf[nz] <= amax[nz] / qmax * (1 + 2 ** -7) * (1 + 1e-6))
    assert sf[3] == 0 and np.all(q[:, 3] == 0)
    # every weight is the nearest multiple of its channel scale (no saturation happened)
    err = np.abs(q[:, nz] * sf[nz][None, :] - w.T[:, nz])
    assert np.all(err <= 0.5 * sf[nz][None, :] * (1 + 1e-6))
    # the channel maximum uses (almost) the full range
    assert np.all(np.abs(q[:, nz]).max(axis=0) >= qmax - 1)


def test_quantize_weight_rejects_bad_bits():
    with pytest.raises(ValueError, match="weight bits must be an integer in 2..8, not 9"):
        quant.quantize_weight(np.ones((2, 2)), 9)


def test_prepare_folds_scale_into_q_and_fits_crossbar(minilm):
    p = pol.uniform(minilm.config.layers, 5, 8)
    prep = quant.prepare(minilm, p)
    assert len(prep) == 6
    w = minilm.weights
    lw = prep[2]
    h = minilm.config.hidden
    deq = lw.qkv.dequantized()                                  # (H, 3H)
    ref_q = w["encoder.layer.2.attention.self.query.weight"].T / np.sqrt(32)
    ref_k = w["encoder.layer.2.attention.self.key.weight"].T
    assert np.abs(deq[:, :h] - ref_q).max() <= np.abs(ref_q).max() / 127 * 0.51 * 1.01
    assert np.abs(deq[:, h:2 * h] - ref_k).max() <= np.abs(ref_k).max() / 127 * 0.51 * 1.01
    bq = bf16.to_float32(lw.qkv.bias[:h])
    assert np.allclose(bq, w["encoder.layer.2.attention.self.query.bias"] / np.sqrt(32),
                       rtol=2 ** -8, atol=0)
    assert lw.ffn2.w.shape == (1536, 384) and lw.ffn1.w.shape == (384, 1536)
    g = bf16.to_float32(lw.ln2[0])
    assert np.allclose(g, w["encoder.layer.2.output.LayerNorm.weight"], rtol=2 ** -8)
    # the crossbar accepts every prepared operand at its bits
    x = bf16.from_float32(np.random.default_rng(0).standard_normal((3, 384)).astype(np.float32))
    y = crossbar.linear(x, lw.o.w, lw.o.scale, lw.o.bias, mxop.MXOPFormat(bits=5),
                        crossbar.DEFAULT)
    ref = bf16.to_float32(x) @ w["encoder.layer.2.attention.output.dense.weight"].T + \
        w["encoder.layer.2.attention.output.dense.bias"]
    assert np.corrcoef(bf16.to_float32(y).ravel(), ref.ravel())[0, 1] > 0.99


def test_prepare_weight_bits_follow_policy(minilm):
    p = pol.uniform(6, 5, 8)
    p = p.replace_layer(1, p.layer(1).with_weight("ffn1", 4))
    prep = quant.prepare(minilm, p)
    assert prep[1].ffn1.bits == 4 and np.abs(prep[1].ffn1.w).max() == 7
    assert prep[1].ffn2.bits == 8 and np.abs(prep[1].ffn2.w).max() == 127
    assert minilm.prepared(p) is minilm.prepared(p)             # cached per weight bits


def test_tile_map(minilm):
    p = pol.uniform(6, 5, 8)
    rows = quant.tile_map(minilm.config, p, crossbar.PRESETS["minilm"])
    qkv = [r for r in rows if r["layer"] == 0 and r["linear"] == "qkv"][0]
    # 8-bit weights in 2-bit cells: 4 slices; 128 columns hold 32 channels
    assert qkv["slices"] == 4 and qkv["row_tiles"] == 3 and qkv["col_groups"] == 1152 // 32
    assert sum(r["cells"] for r in rows) == 4 * 6 * (4 * 384 * 384 + 2 * 384 * 1536)


@pytest.mark.parametrize("length", [1, 2, 4, 5, 6, 13, 40, 127, 128, 129, 200])
def test_pv_blocks_of_b_equal_short_blocks_above_k_tokens(length):
    """P is encoded in blocks of B with zero padding (``quant.pv_length``). For more than k
    real tokens this is exactly the earlier format (block ``min(B, L rounded up to 4)``);
    for k or fewer, the earlier format kept only ``block - 1`` outliers."""
    from sim import mixed_array, softmax
    rng = np.random.default_rng(length)
    fmt = mxop.MXOPFormat(block=128, outliers=4, bits=3)
    s = bf16.from_float32((rng.standard_normal((length, length)) * 3).astype(np.float32))
    p = softmax.softmax(s, None, softmax.DEFAULT)
    v = bf16.from_float32(rng.standard_normal((length, 32)).astype(np.float32))
    ap = dataclasses.replace(mixed_array.DEFAULT, max_blocks=8)

    def run(lp):
        pr = np.zeros((length, lp), np.uint16)
        pr[:, :length] = p
        vp = np.zeros((lp, 32), np.uint16)
        vp[:length] = v
        return mixed_array.pv(pr, vp, fmt, ap)

    new = run(quant.pv_length(length, 128))
    old_lp = -(-length // 4) * 4
    if old_lp > 128:
        old_lp = -(-old_lp // 128) * 128
    old = run(old_lp)
    if length > 4:
        assert np.array_equal(new, old)
    else:
        # the earlier format kept block - 1 = 3 outliers of a 4-wide block; now all (at most
        # k) real elements are outliers of the 128-wide block
        assert fmt.for_length(old_lp).outliers == 3
