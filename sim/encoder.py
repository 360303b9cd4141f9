"""Golden model, parameters and analytic cycle model of the ``encoder`` unit (the accelerator).

The encoder runs whole BERT encoder layers: every layer's weights resident on chip, a sentence's
hidden vectors in, every layer's output vectors out. Its numerics are exactly those of the
quantized golden model that ``xbarllm embed --precision quant`` runs, ``sim.quant.layer``
(docs/model.md, "Quantized encoder"): ``encoder`` below calls it once per layer.

Parameters are the model's shape (``hidden``, ``heads``, ``intermediate``, ``layers``), the
longest sentence (``max_len``), the precision policy (MX-OP ``block`` B and ``outliers`` k
shared by every site; the inlier bits of every matmul input per layer, ``act_bits``, and the
weight bits of every linear per layer, ``weight_bits``, both flattened layer-major in the order
of ``sim.quant.SITES`` and ``sim.quant.LINEARS``), the crossbar tiles and the mixed array. The
policy is an input to generation: the hardware holds it in a table and sends every job the
widths of its layer and site.
"""

import dataclasses
from dataclasses import dataclass

import numpy as np

from . import (bf16, crossbar, crossbar_ctrl, gelu, layernorm, mixed_array, mxq, policy, quant,
               softmax)
from .params import check_float, check_int

__all__ = ["EncoderParams", "PRESETS", "DEFAULT", "encoder", "from_policy", "quant_options",
           "random_weights", "xbar_params", "xbar_bank", "xbar_counters", "XBAR_EVENTS",
           "PROGRAM", "program_memories", "memory_image", "model", "layer_counts", "BOUNDS",
           "array_latency", "program_beats", "hex_words"]


def _flat(per_layer, layers):
    return tuple(v for _ in range(layers) for v in per_layer)


def _policy_bits(path):
    """(act_bits, weight_bits) of a shipped policy file, flattened layer-major, and its
    ``kv_bits``."""
    p = policy.load(path)
    return (tuple(b for lp in p.layers for b in lp.act),
            tuple(b for lp in p.layers for b in lp.weights), p.kv_bits)


@dataclass(frozen=True, kw_only=True)
class EncoderParams:
    """Parameters of the encoder accelerator.

    hidden, heads, intermediate, layers : the BERT shape (hidden a multiple of heads).
    max_len : longest sentence in tokens, 1..1024.
    eps : layernorm epsilon of the model.
    block, outliers : MX-OP B (a power of two, 4..1024) and k of every matmul input.
    act_bits : inlier bits n (2..8) per layer and site, ``layers * 6`` values, layer-major in
        ``sim.quant.SITES`` order (qkv, qk, pv, o, ffn1, ffn2).
    weight_bits : weight bits (4..8) per layer and linear, ``layers * 4`` values, layer-major
        in ``sim.quant.LINEARS`` order (qkv, o, ffn1, ffn2).
    rows, cols, cell_bits, adc_bits, dac_bits : the crossbar tiles (``sim.crossbar``).
    kv_bits : MX-INT width of K and V, the mixed array's stationary operands (2..8; the
        policy's ``kv_bits``).
    lanes, width : the mixed array (attention): dot products in parallel (a power of two up
        to B dividing d_head), multipliers per lane.
    """

    hidden: int = 384
    heads: int = 12
    intermediate: int = 1536
    layers: int = 6
    max_len: int = 128
    eps: float = 1e-12
    block: int = 128
    outliers: int = 4
    act_bits: tuple = (5,) * 36
    weight_bits: tuple = (8,) * 24
    rows: int = 128
    cols: int = 128
    cell_bits: int = 2
    adc_bits: int = 0
    dac_bits: int = 1
    kv_bits: int = quant.KV_BITS
    lanes: int = 4
    width: int = 32

    def __post_init__(self):
        check_int("hidden", self.hidden, 8, 4096)
        check_int("heads", self.heads, 1, 64)
        check_int("intermediate", self.intermediate, 8, 16384)
        check_int("layers", self.layers, 1, 48)
        check_int("max_len", self.max_len, 1, 1024)
        check_float("eps", self.eps, 0, 1, open_hi=True)
        check_int("block", self.block, 4, 1024, pow2=True)
        check_int("outliers", self.outliers, 0, 16)
        check_int("kv_bits", self.kv_bits, 2, 8)
        self.tile          # validates rows, cols, cell_bits, adc_bits, dac_bits
        check_int("width", self.width, 1, 64, pow2=True)
        if self.hidden % self.heads:
            raise ValueError(f"hidden must be a multiple of heads={self.heads}, "
                             f"not {self.hidden!r}")
        for name, n, lo in (("act_bits", len(quant.SITES), 2),
                            ("weight_bits", len(quant.LINEARS), 4)):
            v = getattr(self, name)
            if not isinstance(v, tuple) or len(v) != self.layers * n:
                raise ValueError(f"{name} must be a tuple of layers * {n} = "
                                 f"{self.layers * n} integers, not {v!r}")
            for i, b in enumerate(v):
                check_int(f"{name}[{i}]", b, lo, 8)
        bq = self.qk_block
        if bq % self.width or self.d_head % bq:
            raise ValueError(f"the attention block min(block, d_head) = {bq} must be a "
                             f"multiple of width={self.width} and divide d_head={self.d_head}")
        if self.outliers >= bq:
            raise ValueError(f"outliers must be below min(block, d_head) = {bq}, "
                             f"not {self.outliers!r}")
        check_int("lanes", self.lanes, 1, min(64, self.block), pow2=True)
        if self.d_head % self.lanes:
            raise ValueError(f"d_head={self.d_head} must be a multiple of lanes={self.lanes}")
        for k in (self.hidden, self.intermediate):
            b = min(self.block, k)
            if k % b:
                raise ValueError(f"{'hidden' if k == self.hidden else 'intermediate'} must be "
                                 f"a multiple of min(block, {k}) = {b}, not {k}")
            if b % self.rows and self.rows % b:
                raise ValueError(f"min(block, {k}) = {b} and rows={self.rows} must divide "
                                 f"one another")

    # -- shape --------------------------------------------------------------------------
    @property
    def d_head(self):
        return self.hidden // self.heads

    @property
    def qk_block(self):
        """MX-OP block of Q (and MX-INT block of K) along d_head: ``min(block, d_head)``."""
        return min(self.block, self.d_head)

    def lin_shape(self, lin):
        """(K, N) of linear ``lin`` (``sim.quant.LINEARS``)."""
        h, i = self.hidden, self.intermediate
        return {"qkv": (h, 3 * h), "o": (h, h), "ffn1": (h, i), "ffn2": (i, h)}[lin]

    # -- policy -------------------------------------------------------------------------
    def bits(self, layer, site):
        """Inlier bits of matmul input ``site`` in ``layer``."""
        return self.act_bits[layer * len(quant.SITES) + quant.SITES.index(site)]

    def wbits(self, layer, lin):
        """Weight bits of linear ``lin`` in ``layer``."""
        return self.weight_bits[layer * len(quant.LINEARS) + quant.LINEARS.index(lin)]

    @property
    def policy(self):
        """The precision policy as a ``sim.policy.Policy``."""
        ns, nl = len(quant.SITES), len(quant.LINEARS)
        layers = tuple(policy.LayerPolicy(act=self.act_bits[l * ns:(l + 1) * ns],
                                          weights=self.weight_bits[l * nl:(l + 1) * nl])
                       for l in range(self.layers))
        return policy.Policy(layers=layers, block=self.block, outliers=self.outliers,
                             kv_bits=self.kv_bits)

    # -- the units' parameters ----------------------------------------------------------
    @property
    def tile(self):
        return crossbar.CrossbarParams(rows=self.rows, cols=self.cols,
                                       cell_bits=self.cell_bits, adc_bits=self.adc_bits,
                                       dac_bits=self.dac_bits)

    @property
    def softmax(self):
        """Softmax rows are the keys of ``ceil(L / lanes)`` lane groups (masked past L)."""
        return dataclasses.replace(softmax.DEFAULT,
                                   max_len=-(-self.max_len // self.lanes) * self.lanes)

    @property
    def layernorm(self):
        return dataclasses.replace(layernorm.DEFAULT, dim=self.hidden, eps=float(self.eps))

    @property
    def gelu(self):
        return gelu.DEFAULT

    @property
    def mixed_array(self):
        """The attention array: blocks up to B (P) and qk_block (Q), ``kv_bits`` K and V."""
        bits = max(self.bits(l, s) for l in range(self.layers) for s in ("qk", "pv"))
        return mixed_array.MixedArrayParams(
            lanes=self.lanes, width=self.width, block=self.block, outliers=self.outliers,
            bits=bits, weight_bits=self.kv_bits, frac_bits=mixed_array.DEFAULT.frac_bits,
            max_blocks=max(-(-self.softmax.max_len // self.block),
                           self.d_head // self.qk_block))


def _served(params, lin, layer):
    """The layers whose ``lin`` runs on the controller of ``layer``'s (same weight width)."""
    p = params
    return [l for l in range(p.layers) if p.wbits(l, lin) == p.wbits(layer, lin)]


def xbar_params(params, lin, layer):
    """``sim.crossbar_ctrl.CrossbarCtrlParams`` of linear ``lin`` of ``layer`` (its tiles).

    The encoder has one controller per linear and weight width, with one bank of tiles per
    layer it serves (every layer's weights stay programmed, ``xbar_bank``); it is sized for
    the widest inliers of those layers, and each job runs with its layer's own width
    (``params.bits(layer, lin)``, the job beat's ``act_bits``)."""
    p = params
    k, n = p.lin_shape(lin)
    served = _served(p, lin, layer)
    xp = crossbar_ctrl.CrossbarCtrlParams(
        in_features=k, out_features=n, block=p.block, outliers=p.outliers,
        act_bits=max(p.bits(l, lin) for l in served), rows=p.rows, cols=p.cols,
        cell_bits=p.cell_bits, adc_bits=p.adc_bits, dac_bits=p.dac_bits,
        weight_bits=p.wbits(layer, lin), tiles=1)
    return dataclasses.replace(xp, tiles=xp.tiles_needed, banks=len(served))


def xbar_bank(params, lin, layer):
    """The bank of ``layer``'s ``lin`` weights in its controller's tiles."""
    return _served(params, lin, layer).index(layer)


def xbar_counters(params, lin, layer, length, *, keep=True):
    """``sim.crossbar_ctrl.counters`` of the crossbar job of ``lin`` of ``layer`` on a
    sentence of ``length`` tokens; ``keep``: the layer's bank already holds its weights
    (else the job programs them first)."""
    return crossbar_ctrl.counters(xbar_params(params, lin, layer), length,
                                  act_bits=params.bits(layer, lin), keep=keep)


XBAR_EVENTS = tuple(n for n in crossbar_ctrl.COUNTERS if n != "cycles")
"""The crossbar controllers' event counters the encoder reports (summed over its
controllers; their ``cycles`` is ``busy_crossbar``)."""


# -- the programmed state ------------------------------------------------------------------
PROGRAM = tuple(f"w_{lin}" for lin in quant.LINEARS) + tuple(
    f"sb_{lin}" for lin in quant.LINEARS) + ("ln",)
"""The memories the programming port writes, in the order of its ``sel`` field: the weight
rows of each linear (``sim.crossbar_ctrl.weight_rows`` order, every layer one after the
other), the scale and bias of every output channel (bf16 ``scale | bias << 16``, layer-major)
and the layernorm parameters (``gamma | beta << 16``; per layer LN1 then LN2, H each)."""


def program_memories(params):
    """Programmed memories: name -> dict(width, depth, base) (``base[l]``: layer l's first word)."""
    p = params
    out = {}
    for lin in quant.LINEARS:
        xps = [xbar_params(p, lin, l) for l in range(p.layers)]
        rows = [x.groups * x.row_tiles * x.rows for x in xps]
        out[f"w_{lin}"] = dict(width=max(x.channels * x.weight_bits for x in xps),
                               depth=sum(rows), base=tuple(np.cumsum([0] + rows[:-1])))
    for lin in quant.LINEARS:
        n = p.lin_shape(lin)[1]
        out[f"sb_{lin}"] = dict(width=32, depth=p.layers * n,
                                base=tuple(l * n for l in range(p.layers)))
    out["ln"] = dict(width=32, depth=p.layers * 2 * p.hidden,
                     base=tuple(l * 2 * p.hidden for l in range(p.layers)))
    return out


def _pack(vals, bits):
    """Rows of signed ``bits``-bit integers (n, m) -> little-endian bytes (n, ceil(m*bits/8))."""
    v = np.asarray(vals, dtype=np.int64) & ((1 << bits) - 1)
    bitmat = ((v[:, :, None] >> np.arange(bits)) & 1).astype(np.uint8).reshape(len(v), -1)
    return np.packbits(bitmat, axis=1, bitorder="little")


def memory_image(weights, params):
    """Contents of every programmed memory for ``weights`` (``sim.quant.LayerWeights`` per
    layer; ``None`` leaves a layer's words 0): name -> little-endian bytes (depth, width/8)."""
    p = params
    mems = program_memories(p)
    img = {name: np.zeros((m["depth"], -(-m["width"] // 8)), dtype=np.uint8)
           for name, m in mems.items()}
    for l, lw in enumerate(weights):
        if lw is None:
            continue
        for lin in quant.LINEARS:
            ql = getattr(lw, lin)
            xp = xbar_params(p, lin, l)
            rows = _pack(crossbar_ctrl.weight_rows(ql.w, xp), xp.weight_bits)
            b = mems[f"w_{lin}"]["base"][l]
            img[f"w_{lin}"][b:b + len(rows), :rows.shape[1]] = rows
            sb = ql.scale.astype(np.uint32) | (ql.bias.astype(np.uint32) << 16)
            b = mems[f"sb_{lin}"]["base"][l]
            img[f"sb_{lin}"][b:b + len(sb)] = sb.view(np.uint8).reshape(-1, 4)
        gb = np.concatenate([g.astype(np.uint32) | (bb.astype(np.uint32) << 16)
                             for g, bb in (lw.ln1, lw.ln2)])
        b = mems["ln"]["base"][l]
        img["ln"][b:b + len(gb)] = gb.view(np.uint8).reshape(-1, 4)
    return img


def program_beats(weights, params):
    """The programming port's beats for ``weights``: (sel, addr, data) lists of every word of
    ``memory_image`` (layers given as ``None`` skipped), memory by memory."""
    p = params
    mems = program_memories(p)
    img = memory_image(weights, p)
    sel, addr, dat = [], [], []
    for s, name in enumerate(PROGRAM):
        base = mems[name]["base"]
        for l, lw in enumerate(weights):
            if lw is None:
                continue
            end = base[l + 1] if l + 1 < p.layers else mems[name]["depth"]
            for a in range(base[l], end):
                sel.append(s)
                addr.append(a)
                dat.append(int.from_bytes(img[name][a].tobytes(), "little"))
    return sel, addr, dat


def hex_words(words, width):
    """``$readmemh`` text of little-endian byte rows ``words`` (one ``width``-bit word per
    line)."""
    digits = -(-width // 4)
    rev = np.ascontiguousarray(words[:, ::-1])
    lines = [r.tobytes().hex()[-digits:] for r in rev]
    return "\n".join(lines) + "\n"


def quant_options(params):
    """The ``sim.bert.QuantOptions`` of the golden model this encoder matches bit for bit."""
    from .bert import QuantOptions
    return QuantOptions(crossbar=params.tile, softmax=params.softmax, gelu=params.gelu,
                        layernorm=params.layernorm).resolved()


def from_policy(params, policy):
    """``params`` with the bits, block, outliers and K/V width of ``policy`` (a
    ``sim.policy.Policy``)."""
    if len(policy.layers) != params.layers:
        raise ValueError(f"the policy has {len(policy.layers)} layers, the encoder "
                         f"{params.layers}")
    return dataclasses.replace(
        params, block=policy.block, outliers=policy.outliers, kv_bits=policy.kv_bits,
        act_bits=tuple(b for lp in policy.layers for b in lp.act),
        weight_bits=tuple(b for lp in policy.layers for b in lp.weights))


def encoder(weights, x, params, *, first=0, count=None):
    """Every layer's output for one sentence: the output beats of the unit.

    ``weights`` is the list of ``sim.quant.LayerWeights`` of all layers (``None`` entries for
    layers not run), ``x`` the sentence's hidden vectors, bf16 patterns (L, hidden), L in
    1..max_len. Layers ``first .. first + count - 1`` run in turn (default: all from
    ``first``). Returns bf16 (count, L, hidden): the output of each layer, one beat per
    token. Each layer is ``sim.quant.layer``, the golden model of ``xbarllm embed
    --precision quant``.
    """
    p = params
    x = np.asarray(x, dtype=np.uint16)
    if x.ndim != 2 or x.shape[1] != p.hidden or not 1 <= x.shape[0] <= p.max_len:
        raise ValueError(f"x must have shape (L, hidden={p.hidden}) with L in "
                         f"1..{p.max_len}, not {x.shape}")
    count = p.layers - first if count is None else count
    if not 0 <= first < p.layers or not 1 <= count <= p.layers - first:
        raise ValueError(f"layers {first}..{first + count - 1} are not within "
                         f"0..{p.layers - 1}")
    opts = quant_options(p)
    pol = p.policy
    mask = np.ones((1, x.shape[0]), dtype=bool)
    out = []
    h = x[None]
    for l in range(first, first + count):
        h = quant.layer(weights[l], h, mask, pol.layer(l), opts, p, block=p.block,
                        outliers=p.outliers, kv_bits=p.kv_bits, index=l)
        out.append(h[0])
    return np.stack(out)


def random_weights(params, rng, *, layers=None):
    """Random prepared weights (``sim.quant.LayerWeights``) of every layer, for regressions.

    Weights are the policy's bits with a spread of channel scales; biases and layernorm
    parameters are bf16 of moderate size, so activations stay in the range of a real model.
    """
    p = params
    out = []
    for l in range(p.layers if layers is None else layers):
        lins = {}
        for lin in quant.LINEARS:
            k, n = p.lin_shape(lin)
            wb = p.wbits(l, lin)
            w = (rng.standard_normal((n, k)) * np.sqrt(2 / k)
                 * np.exp2(rng.uniform(-1, 1, (n, 1)))).astype(np.float32)
            wi, scale = quant.quantize_weight(w, wb)
            bias = bf16.from_float32((rng.standard_normal(n) * 0.2).astype(np.float32))
            lins[lin] = quant.QLinear(wi, scale, bias, wb)
        g1, g2 = (bf16.from_float32((1 + 0.2 * rng.standard_normal(p.hidden)).astype(
            np.float32)) for _ in range(2))
        b1, b2 = (bf16.from_float32((0.1 * rng.standard_normal(p.hidden)).astype(np.float32))
                  for _ in range(2))
        out.append(quant.LayerWeights(ln1=(g1, b1), ln2=(g2, b2), **lins))
    return out


_MINILM = _policy_bits(policy.DEFAULT_POLICY_FILE)
DEFAULT = EncoderParams(act_bits=_MINILM[0], weight_bits=_MINILM[1], kv_bits=_MINILM[2])
PRESETS = {
    # blocks of 8 give several MX-OP blocks everywhere at this size (Q, K, P, every linear)
    "tiny": EncoderParams(hidden=64, heads=4, intermediate=128, layers=2, max_len=16,
                          block=8, outliers=4, rows=64, cols=64, lanes=2, width=4,
                          act_bits=(5, 3, 5, 3, 5, 3, 5, 5, 3, 3, 5, 3),
                          weight_bits=(8,) * 8),
    # all-MiniLM-L6-v2 with the shipped policy (sim/policies/minilm.json)
    "minilm": EncoderParams(hidden=384, heads=12, intermediate=1536, layers=6, max_len=128,
                            act_bits=_MINILM[0], weight_bits=_MINILM[1],
                            kv_bits=_MINILM[2]),
    "bert-base": EncoderParams(hidden=768, heads=12, intermediate=3072, layers=12,
                               max_len=512, act_bits=(5,) * 72, weight_bits=(8,) * 48,
                               rows=256, cols=256, lanes=2, width=64),
    "bert-large": EncoderParams(hidden=1024, heads=16, intermediate=4096, layers=24,
                                max_len=512, act_bits=(5,) * 144, weight_bits=(8,) * 96,
                                rows=256, cols=256, lanes=4, width=64),
}


# -- cycle and event model ------------------------------------------------------------------
# Timing of the pieces the phases are made of (docs/encoder.md, "Cycle model"). The
# crossbar's own cycles come from sim.crossbar_ctrl.counters.
READ = 3          # a read request -> its word at the consumer (SRAM read, then a FIFO of
                  # latency 2: amaranth SyncFIFOBuffered)
MXQ = mxq.LATENCY          # a block's first beat after its last element (sim/mxq.py)
SOFTMAX = softmax.LATENCY  # a row's first probability after its last score (sim/softmax.py)
GELU = 8          # gelu: hw/gelu.py LATENCY
FIFO_LATENCY = 2  # mixed array: a block record through its SyncFIFOBuffered


def ln_tail(lnp):
    """Cycles from a row's last element into layernorm to its first result
    (``sim.layernorm.latency`` less the row)."""
    return layernorm.latency(lnp) - lnp.dim + 1


def array_latency(ap, blocks=1):
    """Cycles from the last beat of a vector of ``blocks`` blocks into the mixed array to its
    result (``hw.mixed_array.latency``, which ``tests/test_encoder.py`` checks this
    against)."""
    k = ap.outliers + 1
    levels = lambda n: (n - 1).bit_length()           # noqa: E731
    a = 1 + max(1, levels(ap.width), levels(k)) + 1
    c = 1 + levels(k) + ((1 + FIFO_LATENCY + 1 + 1) if ap.max_blocks > 1 else 0)
    d = 7 if ap.affine else 3
    return a + c + d + blocks


def _att_row(p, length):
    """Cycles of one attention row, and the mixed array, softmax and mxq busy cycles in it."""
    B, K, W, LN_ = p.block, p.outliers, p.width, p.lanes
    nbk = p.d_head // p.qk_block
    nbq = p.qk_block // W                            # beats per Q block
    g = -(-length // LN_)
    lg = g * LN_                                     # softmax row
    nbp = -(-lg // B)
    nch = [B // W] * (nbp - 1) + [-(-(lg - (nbp - 1) * B) // W)]   # beats per P block
    vb_qk = nbk * nbq
    vb_pv = sum(nch)
    p_qk, p_pv = max(vb_qk, LN_), max(vb_pv, LN_)    # cycles per vector (at least lanes)
    gpv = p.d_head // LN_
    s_qk = nbk + 2                                   # Q blocks into registers
    c_qk = s_qk + (g - 1) * p_qk + vb_qk - 1 + READ  # last QK beat at the array
    x = c_qk + array_latency(p.mixed_array, nbk) + LN_   # last score into the softmax
    lp = lg if nbp == 1 else nbp * B                 # P into mxq: one block, or whole blocks
    blk = min(lp, B)
    s_pv = x + SOFTMAX + lp + MXQ + blk              # P encoded, PV starts
    c_pv = s_pv + (gpv - 1) * p_pv + vb_pv - 1 + READ
    end = c_pv + array_latency(p.mixed_array, nbp) + LN_     # last context element
    first_s = s_qk + READ + vb_qk + array_latency(p.mixed_array, nbk)
    return {
        "cycles": end + 2,
        "array": (x - LN_ - s_qk - READ + 1) + (end - LN_ - s_pv - READ + 1),
        "softmax": x + SOFTMAX + lg - first_s,
        "mxq": lp + MXQ + blk - 1,
        "beats": (g * vb_qk, gpv * vb_pv),
        "outlier_slots": (g * nbk * K, gpv * nbp * K),
        "lg": lg,
        "lp": lp,
    }


def layer_counts(params, length, layer, *, program=()):
    """Counters of one layer of a sentence of ``length`` tokens (the phases qkv .. store):
    its weights are in the tiles but for the linears in ``program``, whose jobs program
    them first (the layer's first run after reset or after its weights were written)."""
    p = params
    H, I, L = p.hidden, p.intermediate, length
    lnp = p.layernorm
    ln_lat = ln_tail(lnp)
    c = {}
    xc = {lin: xbar_counters(p, lin, layer, L, keep=lin not in program)
          for lin in quant.LINEARS}
    xb = {lin: xc[lin]["cycles"] for lin in quant.LINEARS}
    c["cycles_qkv"] = xb["qkv"] + 3
    nbp_v = -(-L // p.block)
    lv = L if L <= p.block else nbp_v * p.block          # a V column into mxq
    enc = max(H * lv + min(lv, p.block), L * H + p.qk_block)
    c["cycles_enc"] = enc + MXQ + 4
    row = _att_row(p, L)
    c["cycles_att"] = p.heads * L * row["cycles"] + 1
    c["cycles_o"] = xb["o"] + 2 * H + ln_lat + 6
    c["cycles_ffn1"] = xb["ffn1"] + I + 15
    c["cycles_ffn2"] = xb["ffn2"] + 2 * H + ln_lat + 6
    c["cycles_store"] = L * (H + 2) + 2
    rows = p.heads * L
    c["busy_crossbar"] = sum(xb.values())
    c["busy_mixed_array"] = rows * row["array"]
    c["busy_softmax"] = rows * row["softmax"]
    c["busy_layernorm"] = 2 * L * (2 * H + ln_lat - 1)
    c["busy_gelu"] = L * (I + GELU)
    lin_mxq = sum(L * (p.lin_shape(lin)[0] + min(p.block, p.lin_shape(lin)[0]) + MXQ - 1)
                  for lin in quant.LINEARS)
    c["busy_mxq"] = lin_mxq + enc + MXQ - 1 + rows * row["mxq"]
    for name in XBAR_EVENTS:
        c[name] = sum(xc[lin][name] for lin in quant.LINEARS)
    c["array_mults"] = rows * sum(row["beats"]) * p.lanes * p.width
    c["array_fp_ops"] = rows * sum(row["outlier_slots"]) * p.lanes
    c["softmax_elems"] = rows * row["lg"]
    c["layernorm_elems"] = 2 * L * H
    c["gelu_elems"] = L * I
    c["mxq_elems"] = L * (3 * H + I) + 2 * L * H + H * lv + rows * row["lp"]
    c["tokens"] = L
    return c


BOUNDS = ("array_fp_ops",)
"""Counters that depend on the data, for which ``model`` gives an upper bound: the mixed
array forms an outlier product only for a nonzero outlier (a block with fewer than k nonzero
elements, e.g. a short row of P, has zero outliers), the model counts every outlier slot."""


def model(params, jobs, *, loaded=False):
    """Every counter of the encoder after the sentence ``jobs`` since reset: a list of
    (length, first layer, layer count). The same names as ``hw.encoder.counter_layout``;
    exact but for ``BOUNDS``, upper bounds. The first job of each layer programs its tiles
    (the weights stay there); ``loaded``: every layer's tiles were programmed before."""
    p = params
    total = {}
    done = {(lin, l) for lin in quant.LINEARS for l in range(p.layers)} if loaded else set()

    def add(d):
        for k, v in d.items():
            total[k] = total.get(k, 0) + v
    for length, first, count in jobs:
        add({"cycles_load": length * p.hidden + 2, "sentences": 1})
        for l in range(first, first + count):
            program = {lin for lin in quant.LINEARS if (lin, l) not in done}
            add(layer_counts(p, length, l, program=program))
            done |= {(lin, l) for lin in program}
    return total
