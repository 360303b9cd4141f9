"""INT/FP mixed multiplier array (OPAL): MX-OP x INT dot products with bf16 outlier lanes."""

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from sim.mixed_array import PRESETS, MixedArrayParams, run_beats

from .common import Unit

__all__ = ["MixedArray", "mixed_array_input_layout", "mixed_array_lane_layout",
           "mixed_array_output_layout", "affine_round", "bit_length", "round_fixed_bf16",
           "UNIT"]

EXP = signed(12)     # term exponents (-265..248), anchors and LSB exponents with headroom


def mixed_array_lane_layout(params):
    """The stationary-operand part of an input beat for one lane.

    w : signed(weight_bits) x width   integers of this lane's column for the beat's chunk
    o_w : signed(weight_bits)         the column's integer at the beat's outlier position
    wexp : signed(10)                 power-of-two exponent of the column block (0: static)
    wnan : 1                          the column holds Inf/NaN: every result is NaN
    scale, bias : 16                  bf16 output scale and bias of the column (read on ``last``)
    """
    return data.StructLayout({
        "w": data.ArrayLayout(signed(params.weight_bits), params.width),
        "o_w": signed(params.weight_bits),
        "wexp": signed(10),
        "wnan": unsigned(1),
        "scale": unsigned(16),
        "bias": unsigned(16),
    })


def mixed_array_input_layout(params):
    """One input beat: a chunk of ``width`` elements of an MX-OP vector, broadcast to lanes.

    q : signed(bits) x width   inliers of the chunk (0 at outlier positions)
    exp : 8                    biased shared exponent E of the chunk's block
    bits : 4                   inlier width n of the format (scale ``2**(E - 127 - (n - 2))``)
    o_valid : 1                the beat carries one outlier of the block
    o_val : 16                 that outlier's bf16 pattern
    blast : 1                  last beat of a block
    last : 1                   last beat of the vector (implies ``blast``)
    lane : mixed_array_lane_layout x lanes
    """
    return data.StructLayout({
        "q": data.ArrayLayout(signed(params.bits), params.width),
        "exp": unsigned(8),
        "bits": unsigned(4),
        "o_valid": unsigned(1),
        "o_val": unsigned(16),
        "blast": unsigned(1),
        "last": unsigned(1),
        "lane": data.ArrayLayout(mixed_array_lane_layout(params), params.lanes),
    })


def mixed_array_output_layout(params):
    """One output beat: the bf16 result of one lane; ``last`` on the vector's last lane."""
    return data.StructLayout({
        "value": unsigned(16),
        "lane": unsigned(max(1, (params.lanes - 1).bit_length())),
        "last": unsigned(1),
    })


def _term_layout(params):
    lane = data.StructLayout({
        "ot": signed(params.out_prod_bits), "oe": EXP, "olive": unsigned(1),
        "bt": signed(params.block_sum_bits), "be": EXP, "blive": unsigned(1),
    })
    return data.StructLayout({"lane": data.ArrayLayout(lane, params.lanes),
                              "vlast": unsigned(1)})


def _vec_layout(params):
    lane = data.StructLayout({"anchor": EXP, "has": unsigned(1), "nan": unsigned(1),
                              "scale": unsigned(16), "bias": unsigned(16)})
    return data.ArrayLayout(lane, params.lanes)


class _FIFO:
    """A first-word-fall-through FIFO on a block RAM (sync read port) plus its output register.

    ``w_data/w_en/w_rdy`` and ``r_data/r_en/r_rdy`` as ``amaranth.lib.fifo``; holds
    ``depth + 1`` entries. Built inline (one Verilog module per unit).
    """

    def __init__(self, m, name, width, depth):
        mem = memory.Memory(shape=unsigned(width), depth=depth, init=[])
        m.submodules[name] = mem
        wp = mem.write_port()
        rp = mem.read_port()
        self.w_data, self.w_en, self.w_rdy = wp.data, Signal(name=f"{name}_w_en"), \
            Signal(name=f"{name}_w_rdy")
        self.r_data, self.r_en, self.r_rdy = rp.data, Signal(name=f"{name}_r_en"), \
            Signal(name=f"{name}_r_rdy")
        level = Signal(range(depth + 1), name=f"{name}_level")
        wptr = Signal(range(depth), name=f"{name}_wptr")
        rptr = Signal(range(depth), name=f"{name}_rptr")
        write = self.w_en & self.w_rdy
        fetch = (level != 0) & (~self.r_rdy | self.r_en)
        m.d.comb += [self.w_rdy.eq(level != depth), wp.en.eq(write), wp.addr.eq(wptr),
                     rp.en.eq(fetch), rp.addr.eq(rptr)]
        with m.If(write):
            m.d.sync += wptr.eq(Mux(wptr == depth - 1, 0, wptr + 1))
        with m.If(fetch):
            m.d.sync += [rptr.eq(Mux(rptr == depth - 1, 0, rptr + 1)), self.r_rdy.eq(1)]
        with m.Elif(self.r_en):
            m.d.sync += self.r_rdy.eq(0)
        m.d.sync += level.eq(level + write - fetch)


def bit_length(m, v):
    """Drive ``v`` with the bit length of unsigned value ``v`` (0 for 0): a priority encoder."""
    out = Const(0, len(v))
    for i in range(len(m)):
        out = Mux(m[i], i + 1, out)
    return v.eq(out)


def round_fixed_bf16(m, mag, neg, exp):
    """bf16 of ``(-1)**neg * mag * 2**exp`` (RNE, FTZ, overflow to Inf) as in sim.bf16.

    ``mag`` unsigned, ``exp`` signed. Returns a 16-bit Value.
    """
    w = len(mag)
    lz = Signal(range(w + 1))
    m.d.comb += bit_length(mag, lz)
    p = Signal(signed(8))
    m.d.comb += p.eq(lz - 1)
    shift = Signal(range(w + 1))
    m.d.comb += shift.eq(Mux(p > 7, p - 7, 0))
    q = Signal(w)
    m.d.comb += q.eq(mag >> shift)
    lowmask = Signal(w)
    m.d.comb += lowmask.eq((Const(1, w + 1) << shift) - 1)
    rem = Signal(w)
    m.d.comb += rem.eq(mag & lowmask)
    half = Signal(w)
    m.d.comb += half.eq(Mux(shift > 0, Const(1, w) << (shift - 1)[:len(shift)], 0))
    up = Signal()
    m.d.comb += up.eq((shift > 0) & ((rem > half) | ((rem == half) & q[0])))
    qr = Signal(10)
    m.d.comb += qr.eq(q[:9] + up)
    carry = Signal()
    m.d.comb += carry.eq(qr[8])
    qn = Signal(8)
    m.d.comb += qn.eq(Mux(p < 7, (mag[:8] << (7 - p)[:3])[:8], Mux(carry, qr[1:9], qr[:8])))
    e = Signal(signed(14))
    m.d.comb += e.eq(exp + p + carry + 127)
    res = Signal(16)
    with m.If(mag == 0):
        m.d.comb += res.eq(0)
    with m.Elif(e >= 255):
        m.d.comb += res.eq(Cat(Const(0x7F80, 15), neg))
    with m.Elif(e <= 0):
        m.d.comb += res.eq(Cat(Const(0, 15), neg))
    with m.Else():
        m.d.comb += res.eq(Cat(qn[:7], e[:8], neg))
    return res


def _to_fixed(m, x):
    """(signed 9-bit significand, signed exponent, finite) of bf16 ``x`` after DAZ."""
    e = x[7:15]
    mag = Signal(8)
    m.d.comb += mag.eq(Mux((e == 0) | (e == 255), 0, Cat(x[:7], Const(1, 1))))
    sm = Signal(signed(9))
    m.d.comb += sm.eq(Mux(x[15], -mag, mag))
    se = Signal(EXP)
    m.d.comb += se.eq(e - 134)
    return sm, se, e != 255


def affine_round(m, acc, lsb, scale, bias, nan):
    """bf16 of ``acc * 2**lsb * scale + bias``, exactly as ``sim.fixed.affine_round``.

    The product ``acc * scale`` is exact; the bias is aligned to a common LSB at most 58 bits
    below the top of the larger term, the bits shifted out of the smaller term jammed into a
    sticky bit below three guard bits; one RNE rounding (``sim.bf16.round_fixed``). NaN when
    ``nan`` or a non-finite scale or bias. Returns a 16-bit Value (combinational).
    """
    sm, se, sfin = _to_fixed(m, scale)
    bm, be, bfin = _to_fixed(m, bias)
    pw = len(acc) + 9
    pm = Signal(signed(pw))
    m.d.comb += pm.eq(acc * sm)
    pe = Signal(signed(14))
    m.d.comb += pe.eq(lsb + se)
    pmag = Signal(pw)
    m.d.comb += pmag.eq(Mux(pm < 0, -pm, pm))
    bmag = Signal(8)
    m.d.comb += bmag.eq(Mux(bm < 0, -bm, bm))
    plen = Signal(range(pw + 1))
    m.d.comb += bit_length(pmag, plen)
    ptop = Signal(signed(14))
    btop = Signal(signed(14))
    m.d.comb += [ptop.eq(pe + plen), btop.eq(be + 8)]
    top = Signal(signed(14))
    with m.If((pmag != 0) & (bmag != 0)):
        m.d.comb += top.eq(Mux(ptop > btop, ptop, btop))
    with m.Elif(pmag != 0):
        m.d.comb += top.eq(ptop)
    with m.Else():
        m.d.comb += top.eq(btop)
    lo = Signal(signed(14))
    m.d.comb += lo.eq(Mux(pe < be, pe, be))
    lsb2 = Signal(signed(14))
    m.d.comb += lsb2.eq(Mux(((pmag != 0) | (bmag != 0)) & (top - 58 > lo), top - 58, lo))
    out = Signal(signed(66))
    parts = []
    for mag, e, neg in ((pmag, pe, pm < 0), (bmag, be, bm < 0)):
        d = Signal(signed(15))
        m.d.comb += d.eq(lsb2 - e)
        rs = Signal(range(64))
        m.d.comb += rs.eq(Mux(d > 63, 63, Mux(d > 0, d, 0)))
        ls = Signal(range(64))
        m.d.comb += ls.eq(Mux(d < -62, 62, Mux(d < 0, -d, 0)))
        wide = Signal(64)
        m.d.comb += wide.eq(mag)
        mask = Signal(64)
        m.d.comb += mask.eq((Const(1, 65) << rs) - 1)
        lost = Signal()
        m.d.comb += lost.eq((d > 0) & ((wide & mask) != 0))
        sh = Signal(62)
        m.d.comb += sh.eq(Mux(d > 0, wide >> rs, wide << ls))
        g = Signal(64)
        m.d.comb += g.eq(Cat(lost, Const(0, 2), sh[:61]))
        v = Signal(signed(66))
        m.d.comb += v.eq(Mux(neg, -g, g))
        parts.append(v)
    m.d.comb += out.eq(parts[0] + parts[1])
    omag = Signal(65)
    m.d.comb += omag.eq(Mux(out < 0, -out, out))
    res = round_fixed_bf16(m, omag, out < 0, lsb2 - 3)
    return Mux(nan | ~sfin | ~bfin, 0x7FC0, res)


class MixedArray(wiring.Component):
    """Compute ``lanes`` MX-OP x INT dot products at a time, bit-exact with sim.mixed_array.

    Each input beat carries ``width`` elements of one MX-OP vector (broadcast to every lane)
    and, per lane, the matching ``width`` integers of that lane's column (static weights, or
    the MX-INT operand with a per-block exponent). Each lane multiplies them in ``width``
    INT multipliers (``bits`` x ``weight_bits``) and an adder tree into an exact block sum;
    its FP lane multiplies the beat's bf16 outlier (significand, exactly) by the column's
    integer at the outlier position. Block sums and outlier products are terms with an
    exponent; while a vector streams in, each lane keeps the running maximum of its live term
    exponents, so the anchor is known when the vector's last beat has been accepted. Terms
    wait in a buffer (two vectors deep); a second stage aligns them to ``anchor - frac_bits``
    (left shifts exact, right shifts floor) and sums them exactly; an output stage shared by
    the lanes converts each sum (x scale + bias, one RNE rounding to bf16, as
    ``sim.fixed.affine_round``). Inf/NaN anywhere in a lane's operands gives ``0x7FC0``.

    Parameters
    ----------
    params : MixedArrayParams

    Members
    -------
    i : In(stream.Signature(mixed_array_input_layout(params)))
        Vector chunks (``sim.mixed_array.beats`` builds them). A block of ``B`` elements is
        ``max(B / width, k)`` beats, the block's ``j``-th outlier on its ``j``-th beat; a vector
        has at most ``max_blocks`` blocks and at most ``outliers`` outlier beats per block
        (more can deadlock the term buffer). Ready is low only while the term buffer
        (``2 * max_terms + 1`` entries: one per beat carrying an outlier or ending a block) or
        the vector buffer (5 vectors' anchors) is full.
    o : Out(stream.Signature(mixed_array_output_layout(params)))
        One bf16 result per lane per vector, lanes in order, ``last`` on lane ``lanes - 1``.
    busy_cycles : Out(48)
        Cycles in which the unit holds or receives work.
    mults : Out(48)
        INT multiplies issued (``lanes * width`` per accepted beat).
    fp_ops : Out(48)
        FP outlier-lane multiplies (``lanes`` per accepted beat with an outlier).

    Throughput: one beat per cycle (one MAC per INT multiplier per cycle) while the output
    keeps up: ``lanes`` output cycles per vector. Latency: the first result of a vector
    leaves about ``terms + 3`` cycles after its last beat.
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
        L, W, F = p.lanes, p.width, p.frac_bits
        tl, vl = _term_layout(p), _vec_layout(p)
        tfifo = _FIFO(m, "terms", tl.size, 2 * p.max_terms)
        vfifo = _FIFO(m, "vectors", vl.size, 4)
        pin = self.i.payload
        fire = self.i.valid & self.i.ready
        m.d.comb += self.i.ready.eq(tfifo.w_rdy & vfifo.w_rdy)

        # ---- stage A: multiply, block sums, outlier products, running anchor -------------
        tw = tl(tfifo.w_data)
        vw = vl(vfifo.w_data)
        om, oe, ofin = _to_fixed(m, pin.o_val)
        se = Signal(EXP)
        m.d.comb += se.eq(pin.exp - 125 - pin.bits)
        blive = (pin.exp != 0) & (pin.exp != 255)
        m.d.comb += [tfifo.w_en.eq(fire & (pin.o_valid | pin.blast)), tw.vlast.eq(pin.last),
                     vfifo.w_en.eq(fire & pin.last)]
        for l in range(L):
            lane = pin.lane[l]
            prods = [pin.q[j] * lane.w[j] for j in range(W)]
            while len(prods) > 1:          # balanced adder tree
                prods = [prods[k] + prods[k + 1] if k + 1 < len(prods) else prods[k]
                         for k in range(0, len(prods), 2)]
            chunk = Signal(signed(p.block_sum_bits))
            m.d.comb += chunk.eq(prods[0])
            blk = Signal(signed(p.block_sum_bits))
            bsum = Signal(signed(p.block_sum_bits))
            m.d.comb += bsum.eq(blk + chunk)
            ot = Signal(signed(p.out_prod_bits))
            m.d.comb += ot.eq(om * lane.o_w)
            t = tw.lane[l]
            olive = pin.o_valid & (om != 0)
            m.d.comb += [t.ot.eq(ot), t.oe.eq(oe + lane.wexp), t.olive.eq(olive),
                         t.bt.eq(bsum), t.be.eq(se + lane.wexp), t.blive.eq(pin.blast & blive)]
            run = Signal(EXP)
            run_has = Signal()
            run_nan = Signal()
            c1 = Signal(EXP)
            c1_has = Signal()
            m.d.comb += [c1.eq(Mux(t.olive & (~run_has | (t.oe > run)), t.oe, run)),
                         c1_has.eq(run_has | t.olive)]
            c2 = Signal(EXP)
            m.d.comb += c2.eq(Mux(t.blive & (~c1_has | (t.be > c1)), t.be, c1))
            nan = (run_nan | (pin.o_valid & ~ofin) | (pin.blast & (pin.exp == 255))
                   | lane.wnan)
            v = vw[l]
            m.d.comb += [v.anchor.eq(c2), v.has.eq(c1_has | t.blive), v.nan.eq(nan),
                         v.scale.eq(lane.scale), v.bias.eq(lane.bias)]
            with m.If(fire):
                m.d.sync += blk.eq(Mux(pin.blast, 0, bsum))
                with m.If(pin.last):
                    m.d.sync += [run_has.eq(0), run_nan.eq(0)]
                with m.Else():
                    m.d.sync += [run.eq(c2), run_has.eq(c1_has | t.blive), run_nan.eq(nan)]

        # ---- stage C: align to the anchor (floor) and sum exactly ------------------------
        tr = tl(tfifo.r_data)
        vr = vl(vfifo.r_data)
        res_full = Signal()
        res_acc = [Signal(signed(p.acc_bits), name=f"res_acc{l}") for l in range(L)]
        res_lsb = [Signal(EXP, name=f"res_lsb{l}") for l in range(L)]
        res_nan = Signal(L)
        res_scale = [Signal(16, name=f"res_scale{l}") for l in range(L)]
        res_bias = [Signal(16, name=f"res_bias{l}") for l in range(L)]
        res_take = Signal()
        can = tfifo.r_rdy & vfifo.r_rdy & (~tr.vlast | ~res_full | res_take)
        m.d.comb += [tfifo.r_en.eq(can), vfifo.r_en.eq(can & tr.vlast)]
        smax = p.term_bits + F
        for l in range(L):
            t = tr.lane[l]
            v = vr[l]
            acc = Signal(signed(p.acc_bits), name=f"acc{l}")
            al = []
            for term, e, live, tb in ((t.ot, t.oe, t.olive, p.out_prod_bits),
                                      (t.bt, t.be, t.blive, p.block_sum_bits)):
                s = Signal(signed(13))
                m.d.comb += s.eq(v.anchor - e)
                sc = Signal(range(smax + 1))
                m.d.comb += sc.eq(Mux(s > smax, smax, Mux(s < 0, 0, s)))
                a = Signal(signed(tb + F))
                m.d.comb += a.eq((term << F) >> sc)
                al.append(Mux(live, a, 0))
            nxt = Signal(signed(p.acc_bits))
            m.d.comb += nxt.eq(acc + al[0] + al[1])
            with m.If(can):
                m.d.sync += acc.eq(Mux(tr.vlast, 0, nxt))
                with m.If(tr.vlast):
                    m.d.sync += [res_acc[l].eq(nxt),
                                 res_lsb[l].eq(Mux(v.has, v.anchor - F, 0)),
                                 res_nan[l].eq(v.nan), res_scale[l].eq(v.scale),
                                 res_bias[l].eq(v.bias)]

        # ---- stage D: output conversion shared by the lanes -----------------------------
        idx = Signal(range(max(L, 2)))
        advance = ~self.o.valid | self.o.ready
        m.d.comb += res_take.eq(res_full & advance & (idx == L - 1))
        sel_acc = Signal(signed(p.acc_bits))
        sel_lsb = Signal(EXP)
        sel_scale = Signal(16)
        sel_bias = Signal(16)
        with m.Switch(idx):
            for l in range(L):
                with m.Case(l):
                    m.d.comb += [sel_acc.eq(res_acc[l]), sel_lsb.eq(res_lsb[l]),
                                 sel_scale.eq(res_scale[l]), sel_bias.eq(res_bias[l])]
        value = affine_round(m, sel_acc, sel_lsb, sel_scale, sel_bias, res_nan.bit_select(idx, 1))
        with m.If(self.o.ready):
            m.d.sync += self.o.valid.eq(0)
        with m.If(res_full & advance):
            m.d.sync += [self.o.valid.eq(1), self.o.payload.value.eq(value),
                         self.o.payload.lane.eq(idx), self.o.payload.last.eq(idx == L - 1),
                         idx.eq(Mux(idx == L - 1, 0, idx + 1))]
        with m.If(can & tr.vlast):
            m.d.sync += res_full.eq(1)
        with m.Elif(res_take):
            m.d.sync += res_full.eq(0)

        # ---- counters --------------------------------------------------------------------
        busy = self.i.valid | tfifo.r_rdy | res_full | self.o.valid
        with m.If(busy):
            m.d.sync += self.busy_cycles.eq(self.busy_cycles + 1)
        with m.If(fire):
            m.d.sync += self.mults.eq(self.mults + L * W)
            with m.If(pin.o_valid):
                m.d.sync += self.fp_ops.eq(self.fp_ops + L)
        return m


UNIT = Unit(name="mixed_array", params=MixedArrayParams, presets=PRESETS, component=MixedArray, golden=run_beats,
            summary="INT/FP mixed multiplier array: MX-OP x INT dot products, QK^T and PV")
