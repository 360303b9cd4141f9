"""INT/FP mixed multiplier array (OPAL): MX-OP x INT dot products with bf16 outlier units."""

from amaranth.hdl import Cat, Const, Module, Mux, Signal, Value, signed, unsigned
from amaranth.lib import data, fifo, stream, wiring
from amaranth.lib.wiring import In, Out

from sim.mixed_array import PRESETS, MixedArrayParams, run_beats

from . import numerics as hn
from .common import Pipeline, Unit

__all__ = ["MixedArray", "mixed_array_input_layout", "mixed_array_lane_layout",
           "mixed_array_output_layout", "latency", "UNIT"]

EXP = signed(hn.EXP_WIDTH)      # term exponents, anchors and LSB exponents
WEXP = signed(10)               # the stationary operand's block exponent (-512..511)


def mixed_array_lane_layout(params):
    """The stationary-operand part of an input beat for one lane (one output column).

    w : weight_bits x width            integers of the column at the beat's elements,
                                       sign-magnitude (sign in the top bit)
    o_w : weight_bits x outliers       the column's integer at each outlier's position,
                                       sign-magnitude (read on ``blast``)
    wexp : signed(10)                  power-of-two exponent of the column's block (read on
                                       ``blast``; 0 for static weights)
    wnan : 1                           the column's block holds Inf/NaN: the result is NaN
                                       (read on ``blast``)
    scale, bias : 16                   bf16 output scale and bias (only with ``affine``; read
                                       on ``last``)
    """
    fields = {
        "w": data.ArrayLayout(unsigned(params.weight_bits), params.width),
        "o_w": data.ArrayLayout(unsigned(params.weight_bits), params.outliers),
        "wexp": WEXP,
        "wnan": unsigned(1),
    }
    if params.affine:
        fields.update(scale=unsigned(16), bias=unsigned(16))
    return data.StructLayout(fields)


def mixed_array_input_layout(params):
    """One input beat: up to ``width`` elements of one block of an MX-OP vector, broadcast to
    every lane, and each lane's matching stationary integers.

    q : bits x width           inliers, sign-magnitude (sign in the top bit; 0 at outlier
                               positions and past the block's end)
    exp : 8                    biased shared exponent E of the block (read on ``blast``)
    bits : 4                   inlier width n of the block, 2..``bits`` (read on ``blast``):
                               the inliers' scale is ``2**(E - 127 - (n - 2))``
    o_val : 16 x outliers      the block's bf16 outliers (read on ``blast``; +0 where the block
                               has fewer)
    blast : 1                  last beat of a block
    last : 1                   last beat of the vector (only with ``blast``)
    lane : mixed_array_lane_layout x lanes
    """
    return data.StructLayout({
        "q": data.ArrayLayout(unsigned(params.bits), params.width),
        "exp": unsigned(8),
        "bits": unsigned(4),
        "o_val": data.ArrayLayout(unsigned(16), params.outliers),
        "blast": unsigned(1),
        "last": unsigned(1),
        "lane": data.ArrayLayout(mixed_array_lane_layout(params), params.lanes),
    })


def mixed_array_output_layout(params):
    """One output beat: the bf16 result of every lane for one vector."""
    return data.StructLayout({"value": data.ArrayLayout(unsigned(16), params.lanes)})


FIFO_LATENCY = 2    # cycles from a block record's register through ``SyncFIFOBuffered`` to its reader


def _levels(n):
    """Levels of a balanced binary tree over ``n`` values."""
    return (n - 1).bit_length()


def latency(params, blocks=1):
    """Cycles from a vector's last accepted beat to its result on ``o`` (no stalls), for a
    vector of ``blocks`` blocks: its block records leave the FIFO one per cycle once the last
    one is in, so each block beyond the first adds a cycle."""
    p = params
    if not 1 <= blocks <= p.max_blocks:
        raise ValueError(f"blocks must be in 1..{p.max_blocks} (max_blocks), not {blocks!r}")
    k = p.outliers + 1
    a = 1 + max(1, _levels(p.width), _levels(k)) + 1        # products, tree, shifts
    c = 1 + _levels(k)                                      # align, add the terms
    d = 7 if p.affine else 3                                        # rounding
    if p.max_blocks > 1:
        c += 1 + FIFO_LATENCY + 1 + 1      # record register, FIFO, vector shifts, block sum
    return a + c + d + 1 + blocks - 1


class MixedArray(wiring.Component):
    """Compute ``lanes`` MX-OP x INT dot products at a time, bit-exact with ``sim.mixed_array``.

    Each input beat carries up to ``width`` elements of one block of an MX-OP vector
    (broadcast to every lane) and, per lane, the matching integers of that lane's column:
    static weights, or the MX-INT K or V with a per-block exponent. Both come in
    sign-magnitude. Each lane multiplies them in ``width`` INT multipliers (``bits - 1`` x
    ``weight_bits - 1`` magnitude bits) and an adder tree and sums the block's beats exactly. On the block's last beat (``blast``) its ``outliers`` FP units
    multiply the block's bf16 outliers (their 8-bit significands, exactly) by the lane's
    integers at the outliers' positions. The block sum and the outlier products are terms
    with power-of-two exponents; the anchor is their largest live exponent (it depends only
    on the streamed block's exponents, so one copy serves every lane), each term is shifted
    to ``anchor - frac_bits`` (left exact, right floor) and the terms are added exactly. Across
    the blocks of a vector (``max_blocks > 1``) the terms wait in a FIFO until the vector's
    last block fixes each lane's anchor. The sum is rounded once to bf16 (RNE, FTZ, overflow to
    Inf: ``hw.numerics.round_fixed`` in three stages), or with ``affine`` multiplied by the
    lane's scale and the bias added first (``hw.numerics.affine_round``). Inf/NaN anywhere in
    a lane's operands gives ``0x7FC0``. docs/numerics.md, "Mixed array", states the rules;
    docs/mixed_array.md the structure.

    Parameters
    ----------
    params : MixedArrayParams

    Members
    -------
    i : In(stream.Signature(mixed_array_input_layout(params)))
        Vector chunks (``sim.mixed_array.beats`` builds them). A block is 1 to
        ``block / width`` beats, the last with ``blast`` carrying the block's ``exp``,
        ``bits``, outliers and, per lane, ``o_w``, ``wexp`` and ``wnan``; a block may end
        early (the elements not sent count as zeros). A vector is 1 to ``max_blocks`` blocks,
        its last beat marked ``last`` (and ``blast``).
    o : Out(stream.Signature(mixed_array_output_layout(params)))
        One beat per vector: every lane's bf16 result, vectors in input order.
    busy_cycles : Out(48)
        Cycles in which the unit receives or holds work: ``i.valid``, a vector begun and not
        ended, or a vector whose result has not left.
    mults : Out(48)
        INT multiplies issued: ``lanes * width`` per accepted beat.
    fp_ops : Out(48)
        Outlier products formed: ``lanes`` per nonzero outlier pattern on a block's last
        beat.

    Throughput: one beat per cycle (one MAC per INT multiplier per cycle), and so one vector
    per cycle per lane when a vector is one beat. Backpressure: ``i.ready = ~o.valid |
    o.ready`` (the pipeline holds as a whole); with ``max_blocks > 1`` a FIFO of
    ``2 * max_blocks + 4`` block records sits between the blocks and the vectors, and
    ``i.ready`` falls only when it is full. Latency: ``latency(params)`` cycles from a
    vector's last beat to its result, without stalls.
    """

    def __init__(self, params):
        if not isinstance(params, MixedArrayParams):
            raise TypeError(f"params must be MixedArrayParams, not {params!r}")
        self.params = params
        super().__init__({
            "i": In(stream.Signature(mixed_array_input_layout(params))),
            "o": Out(stream.Signature(mixed_array_output_layout(params))),
            "busy_cycles": Out(48),
            "mults": Out(48),
            "fp_ops": Out(48),
        })

    def elaborate(self, platform):
        p = self.params
        m = Module()
        L, W, K, F = p.lanes, p.width, p.outliers, p.frac_bits
        pin = self.i.payload

        # ---- A: products, the block sum, outlier products, the block's anchor ------------
        carry = {"blast": pin.blast, "last": pin.last}
        for l in range(L):
            carry[f"wexp{l}"] = pin.lane[l].wexp
            carry[f"wnan{l}"] = pin.lane[l].wnan
            if p.affine:
                carry[f"scale{l}"] = pin.lane[l].scale
                carry[f"bias{l}"] = pin.lane[l].bias
        pa = Pipeline(m, self.i.valid, name="a", fields=carry)

        # Sign-magnitude products: the magnitudes multiply unsigned and a negative product
        # enters the adder tree as its one's complement; the missing +1 rides into an adder
        # of the tree as its carry-in (one per adder, the last one into the block sum).
        nq, nw = p.bits - 1, p.weight_bits - 1
        f1 = {}
        for l in range(L):
            for j in range(W):
                q, w = pin.q[j], pin.lane[l].w[j]
                neg = q[nq] ^ w[nw]
                prod = q[:nq] * w[:nw]
                f1[f"pr{l}_{j}"] = Cat(prod ^ neg.replicate(len(prod)), neg).as_signed()
                f1[f"pc{l}_{j}"] = neg
        f1["se"] = (pin.exp - 125 - pin.bits)[:hn.EXP_WIDTH].as_signed()
        f1["blive"] = (pin.exp != 0) & (pin.exp != 0xFF)
        nan = pin.exp == 0xFF
        for j in range(K):
            o = hn.unpack(pin.o_val[j])
            _, oe, fin = hn.to_fixed(m, pin.o_val[j], name=f"o{j}")
            f1[f"om{j}"] = Mux(fin, o.mant, 0)              # |significand|, 0: no term
            f1[f"os{j}"], f1[f"oe{j}"] = o.sign, oe
            nan = nan | ~fin
            for l in range(L):
                f1[f"ow{l}_{j}"] = pin.lane[l].o_w[j]
        f1["nan"] = nan
        s = pa.stage(**f1)

        # the FP units: exact outlier products, two's complement for the aligners
        f2 = {}
        for l in range(L):
            for j in range(K):
                w = s.fields[f"ow{l}_{j}"]
                neg = s.fields[f"os{j}"] ^ w[nw]
                prod = s.fields[f"om{j}"] * w[:nw]
                f2[f"ot{l}_{j}"] = Cat(prod ^ neg.replicate(len(prod)), neg).as_signed() + neg
        f2.update({f"olive{j}": s.fields[f"om{j}"] != 0 for j in range(K)})
        drop2 = ([f"{k}{j}" for k in ("om", "os") for j in range(K)]
                 + [f"ow{l}_{j}" for l in range(L) for j in range(K)])
        # the exponent path (shared by the lanes) runs beside the adder tree
        exps = [(s.fields[f"oe{j}"], s.fields[f"om{j}"] != 0) for j in range(K)]
        exps.append((s.fields["se"], s.fields["blive"]))
        parts = [[(s.fields[f"pr{l}_{j}"], s.fields[f"pc{l}_{j}"]) for j in range(W)]
                 for l in range(L)]
        leaves = [f"{k}{l}_{j}" for k in ("pr", "pc") for l in range(L) for j in range(W)]
        first = True
        while len(parts[0]) > 1 or len(exps) > 1 or first:
            fs, drop = {}, []
            if first:
                fs, drop = f2, drop2 + leaves
            # one level of the adder tree per stage: a carry-chain adder each (Yosys would
            # merge two levels into a multi-operand adder of full adders, larger on LUT4s)
            parts = [_reduce(ps, lambda x, y: (x[0] + y[0] + x[1], y[1])) for ps in parts]
            for l in range(L):
                for i, (v, c) in enumerate(parts[l]):
                    fs[f"tr{l}_{i}"], fs[f"tc{l}_{i}"] = v, c
            # one level of the anchor's maximum per stage
            exps = _reduce(exps, _max_live)
            for i, (e, live) in enumerate(exps):
                fs[f"xe{i}"], fs[f"xl{i}"] = e, live
            drop += [k for k in pa.fields if k.startswith(("tr", "tc", "xe", "xl"))]
            s = pa.stage(**fs, drop=drop)
            parts = [[(s.fields[f"tr{l}_{i}"], s.fields[f"tc{l}_{i}"])
                      for i in range(len(parts[l]))] for l in range(L)]
            exps = [(s.fields[f"xe{i}"], s.fields[f"xl{i}"]) for i in range(len(exps))]
            first = False

        # the block sum (a loop register per lane) and the shifts onto the block's anchor
        anchor, has = exps[0]
        fs = {"anchor": anchor, "has": has}
        for l in range(L):
            blk = Signal(signed(p.block_sum_bits), name=f"blk{l}")
            root, carry_in = parts[l][0]
            bsum = (blk + root + carry_in)[:p.block_sum_bits].as_signed()
            fs[f"bt{l}"] = bsum
            with m.If(pa.ce & s.valid):
                m.d.sync += blk.eq(Mux(s.fields["blast"], 0, bsum))
            if p.max_blocks > 1:       # the block's anchor in the lane (the column's exponent)
                fs[f"ab{l}"] = (anchor + s.fields[f"wexp{l}"])[:hn.EXP_WIDTH].as_signed()
        term_exps = [s.fields[f"oe{j}"] for j in range(K)] + [s.fields["se"]]
        for i, e in enumerate(term_exps):
            fs[f"sh{i}"] = _clamp((anchor - e).as_signed(), p.shift_max)
        s = pa.stage(**fs, drop=[k for k in pa.fields if k.startswith(("tr", "tc", "xe", "xl"))]
                     + [f"oe{j}" for j in range(K)] + ["se"])
        pa.valid = s.valid & s.fields["blast"]           # one record per block from here on

        if p.max_blocks == 1:
            m.d.comb += self.i.ready.eq(pa.ce)
            pc, rec = pa, s.fields
            lsb = [(rec["anchor"] + rec[f"wexp{l}"] - F)[:hn.EXP_WIDTH].as_signed()
                   for l in range(L)]
            shifts = [[rec[f"sh{i}"] for i in range(K + 1)] for _ in range(L)]
            bad = [rec["nan"] | rec[f"wnan{l}"] for l in range(L)]
            vec_last = None
        else:
            pc, rec, lsb, shifts, bad = self._vectors(m, pa)
            vec_last = "last"

        # ---- C: align onto the anchor (floor), add exactly -------------------------------
        lives = [rec[f"olive{j}"] for j in range(K)] + [rec["blive"]]
        fs = {}
        for l in range(L):
            terms = [rec[f"ot{l}_{j}"] for j in range(K)] + [rec[f"bt{l}"]]
            for i, t in enumerate(terms):
                wide = Cat(Const(0, F), t).as_signed() if F else t
                fs[f"al{l}_{i}"] = Mux(lives[i], wide >> shifts[l][i], 0)
            fs[f"lsb{l}"] = lsb[l]
            fs[f"bad{l}"] = bad[l]
        keep = {"last"} | {f"{k}{l}" for k in ("scale", "bias") for l in range(L)}
        s = pc.stage(**fs, drop=[k for k in pc.fields if k not in keep])
        parts = [[s.fields[f"al{l}_{i}"] for i in range(K + 1)] for l in range(L)]
        while len(parts[0]) > 1:
            parts = [_reduce(ps, lambda x, y: x + y) for ps in parts]
            s = pc.stage(**{f"su{l}_{i}": v for l in range(L) for i, v in enumerate(parts[l])},
                         drop=[k for k in pc.fields if k.startswith(("al", "su"))])
            parts = [[s.fields[f"su{l}_{i}"] for i in range(len(parts[l]))] for l in range(L)]
        acc = [parts[l][0] for l in range(L)]
        if vec_last is not None:           # sum the blocks of a vector
            fs = {}
            for l in range(L):
                run = Signal(signed(p.acc_bits), name=f"acc{l}")
                total = (run + acc[l])[:p.acc_bits].as_signed()
                fs[f"acc{l}"] = total
                with m.If(pc.ce & s.valid):
                    m.d.sync += run.eq(Mux(s.fields[vec_last], 0, total))
            s = pc.stage(**fs, drop=[k for k in pc.fields if k.startswith(("al", "su"))])
            pc.valid = s.valid & s.fields[vec_last]
            acc = [s.fields[f"acc{l}"] for l in range(L)]

        # ---- D: one rounding to bf16 per lane -------------------------------------------
        f = pc.fields
        if p.affine:
            # one pipeline per lane under the output's clock enable
            lps = [Pipeline(m, pc.valid, name=f"f{l}") for l in range(L)]
            out = []
            for l, lp in enumerate(lps):
                _, v = hn.affine_round(m, lp, acc[l], f[f"lsb{l}"], f[f"scale{l}"],
                                       f[f"bias{l}"], f[f"bad{l}"], name=f"aff{l}")
                out.append(v)
                m.d.comb += (pc if l == 0 else lp).ce.eq(lps[0].ce)
            lps[0].drive(self.o, value=Cat(*out))
            depth = pc.depth + lps[0].depth
        else:
            fs = {}
            for l in range(L):
                fs[f"mag{l}"] = hn.abs_value(m, acc[l], name=f"mag{l}")
                fs[f"neg{l}"] = acc[l] < 0
            s = pc.stage(**fs, drop=[k for k in pc.fields if k.startswith(("al", "su", "acc"))])
            s = pc.stage(**{f"lz{l}": hn.leading_zeros(m, s.fields[f"mag{l}"], name=f"lz{l}")
                            for l in range(L)})
            fs = {}
            for l in range(L):
                mag, lz = s.fields[f"mag{l}"], s.fields[f"lz{l}"]
                fs[f"norm{l}"] = hn.shift_to_top(m, mag, lz, name=f"norm{l}")
                fs[f"e{l}"] = (s.fields[f"lsb{l}"] + 126 + len(mag) - lz)[:hn.EXP_WIDTH + 1] \
                    .as_signed()
            s = pc.stage(**fs, drop=[f"{k}{l}" for l in range(L) for k in ("mag", "lz", "lsb")])
            out = [Mux(s.fields[f"bad{l}"], hn.NAN,
                       hn.round_pack(m, s.fields[f"norm{l}"], s.fields[f"e{l}"],
                                     s.fields[f"neg{l}"], name=f"rnd{l}")) for l in range(L)]
            pc.drive(self.o, value=Cat(*out))
            depth = pc.depth
        if p.max_blocks == 1:
            assert depth == latency(p), (depth, latency(p))

        # ---- counters --------------------------------------------------------------------
        fire = self.i.valid & self.i.ready
        opened = Signal()                       # a vector has begun and not ended
        inflight = Signal(range(1024))          # vectors accepted, result not yet taken
        took = self.o.valid & self.o.ready
        with m.If(fire):
            m.d.sync += opened.eq(~pin.last)
        m.d.sync += inflight.eq(inflight + (fire & pin.last) - took)
        with m.If(self.i.valid | opened | (inflight != 0)):
            m.d.sync += self.busy_cycles.eq(self.busy_cycles + 1)
        with m.If(fire):
            m.d.sync += self.mults.eq(self.mults + L * W)
            if K:
                present = sum((pin.o_val[j][:15] != 0) for j in range(K))
                with m.If(pin.blast):
                    m.d.sync += self.fp_ops.eq(self.fp_ops + present * L)
        return m

    def _vectors(self, m, pa):
        """The FIFOs between the blocks and the vectors (``max_blocks > 1``): each lane's
        anchor is the largest of its blocks' anchors, known with the vector's last block.

        Returns the pipeline that reads the block records, its fields, and per lane the LSB
        exponent, the shifts of the terms onto the vector's anchor and the NaN flag.
        """
        p = self.params
        L, K, F = p.lanes, p.outliers, p.frac_bits
        f = pa.fields
        block = {k: v for k, v in f.items() if k.startswith(("ot", "bt", "olive", "sh", "ab"))}
        block.update(blive=f["blive"], has=f["has"], last=f["last"])
        vector = {}
        for l in range(L):
            run = Signal(EXP, name=f"run{l}")
            run_has = Signal(name=f"run_has{l}")
            run_nan = Signal(name=f"run_nan{l}")
            ab = f[f"ab{l}"]
            anchor = Mux(f["has"] & (~run_has | (ab > run)), ab, run)
            nan = run_nan | f["nan"] | f[f"wnan{l}"]
            with m.If(pa.ce & pa.valid):
                m.d.sync += [run.eq(anchor), run_has.eq(~f["last"] & (run_has | f["has"])),
                             run_nan.eq(~f["last"] & nan)]
            vector[f"va{l}"] = anchor
            vector[f"vnan{l}"] = nan
            for k in ("scale", "bias"):
                if f"{k}{l}" in f:
                    vector[f"{k}{l}"] = f[f"{k}{l}"]
        blay = _layout(block)
        vlay = _layout(vector)
        rec = stream.Signature(data.StructLayout({"b": blay, "v": vlay})).create()
        pa.drive(rec, b=Cat(*block.values()), v=Cat(*vector.values()))
        bfifo = m.submodules.blocks = fifo.SyncFIFOBuffered(width=blay.size,
                                                           depth=2 * p.max_blocks + 4)
        vfifo = m.submodules.vectors = fifo.SyncFIFOBuffered(width=vlay.size, depth=4)
        is_last = blay(rec.payload.b).last
        m.d.comb += [self.i.ready.eq(pa.ce),
                     bfifo.w_data.eq(rec.payload.b), vfifo.w_data.eq(rec.payload.v),
                     bfifo.w_en.eq(rec.valid & (vfifo.w_rdy | ~is_last)),
                     vfifo.w_en.eq(rec.valid & is_last & bfifo.w_rdy),
                     rec.ready.eq(bfifo.w_rdy & (vfifo.w_rdy | ~is_last))]

        # a vector's blocks are read once its last block (and so its anchors) is in
        br, vr = blay(bfifo.r_data), vlay(vfifo.r_data)
        pc = Pipeline(m, bfifo.r_rdy & vfifo.r_rdy, name="c")
        m.d.comb += [bfifo.r_en.eq(pc.ce & vfifo.r_rdy),
                     vfifo.r_en.eq(pc.ce & bfifo.r_rdy & br.last)]
        fs = {k: getattr(br, k) for k in block if not k.startswith(("sh", "ab"))}
        for l in range(L):
            d = (getattr(vr, f"va{l}") - getattr(br, f"ab{l}")).as_signed()
            for i in range(K + 1):
                fs[f"sh{l}_{i}"] = _clamp(getattr(br, f"sh{i}") + d, p.shift_max)
            fs[f"lsb{l}"] = (getattr(vr, f"va{l}") - F)[:hn.EXP_WIDTH].as_signed()
            fs[f"vnan{l}"] = getattr(vr, f"vnan{l}")
            for k in ("scale", "bias"):
                if f"{k}{l}" in vector:
                    fs[f"{k}{l}"] = getattr(vr, f"{k}{l}")
        s = pc.stage(**fs)
        r = s.fields
        return (pc, r, [r[f"lsb{l}"] for l in range(L)],
                [[r[f"sh{l}_{i}"] for i in range(K + 1)] for l in range(L)],
                [r[f"vnan{l}"] for l in range(L)])


def _layout(fields):
    """A ``StructLayout`` holding ``fields`` (name -> Value) in order, for a FIFO entry."""
    return data.StructLayout({k: Value.cast(v).shape() for k, v in fields.items()})


def _clamp(d, hi):
    """``d`` (signed) clamped to ``0..hi``, as an unsigned value."""
    return Mux(d > hi, hi, Mux(d < 0, 0, d))[:hi.bit_length()]


def _reduce(items, combine):
    """One level of a balanced tree: ``combine`` pairs (0, 1), (2, 3), ...; an odd last item
    passes through."""
    return [combine(items[i], items[i + 1]) if i + 1 < len(items) else items[i]
            for i in range(0, len(items), 2)]


def _max_live(a, b):
    """The larger live exponent of two ``(exponent, live)`` pairs, and whether either lives."""
    (ea, la), (eb, lb) = a, b
    return Mux(la & (~lb | (ea >= eb)), ea, eb), la | lb


UNIT = Unit(name="mixed_array", params=MixedArrayParams, presets=PRESETS, component=MixedArray,
            golden=run_beats,
            summary="INT/FP mixed multiplier array: MX-OP x INT dot products, QK^T and PV")
