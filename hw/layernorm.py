"""Residual add + layernorm: bf16 (x, r) rows in, bf16 LN(x + r) * gamma + beta rows out."""

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from sim.layernorm import PRESETS, LayerNormParams, eps_const, layernorm, rsqrt_table

from .common import Unit
from .numerics import leading_one as lod, normalize as bf16_normalize, round_pack as bf16_pack
from .numerics import fix_trunc as to_fix

__all__ = ["LayerNorm", "layernorm_input_layout", "layernorm_param_layout",
           "layernorm_output_layout", "rsqrt_cycles", "MUL_DIGIT", "UNIT"]

MUL_DIGIT = 6   # second-operand bits per cycle of the reciprocal square root's multiplier


def _mul_geometry(params):
    mw = max(params.s1_width - 1, params.rsqrt_bits + 3)
    return mw, -(-mw // MUL_DIGIT)


def rsqrt_cycles(params):
    """Cycles the reciprocal-square-root unit spends per row (``nd`` = multiplier digits)."""
    _, nd = _mul_geometry(params)
    return nd + 4 + params.newton_steps * (3 * nd + 4)


def layernorm_input_layout(params):
    """One input beat: element ``x`` and residual ``r`` (bf16) of the same position."""
    return data.StructLayout({"x": unsigned(16), "r": unsigned(16)})


def layernorm_param_layout(params):
    """One parameter beat: ``gamma`` and ``beta`` (bf16) of the next position."""
    return data.StructLayout({"gamma": unsigned(16), "beta": unsigned(16)})


def layernorm_output_layout(params):
    """One output beat: a bf16 result and end of row."""
    return data.StructLayout({"data": unsigned(16), "last": unsigned(1)})


def _bf16_fields(v):
    """(signed 9-bit significand after DAZ, unbiased LSB exponent + 134, non-finite)."""
    ex, fr, sg = v[7:15], v[0:7], v[15]
    mag = Mux(ex == 0, 0, Cat(fr, Const(1, 1)))
    return Mux(sg, -mag, mag), ex, ex == 0xFF


class LayerNorm(wiring.Component):
    """Normalise rows of ``x + r`` and apply ``gamma``, ``beta`` (BERT's add & norm).

    Numerics are ``sim.layernorm`` (docs/numerics.md, layernorm): DAZ; ``x``, ``r`` and
    ``h = x + r`` in saturating fixed point (truncate); exact integer sums of ``h`` and
    ``h*h``; ``dim**2`` times the variance plus a constant for ``eps`` exactly; reciprocal
    square root by leading-one normalisation, a ``2**guess_bits``-entry table and
    ``newton_steps`` Newton steps (floors); ``t = (dim*h - sum) * rsqrt`` (floor); ``t*gamma``
    and ``beta`` aligned to ``out_frac`` fraction bits (floor, saturate), added and rounded
    once to bf16 (RNE, FTZ). NaN/Inf in a row's ``x`` or ``r`` -> the whole row 0x7FC0;
    NaN/Inf in ``gamma[i]`` or ``beta[i]`` -> output ``i`` 0x7FC0.

    Rows are exactly ``dim`` beats (counted; there is no ``last`` input). A row is written
    into one half of a double buffer while its sums accumulate; a sequential unit (one
    digit-serial multiplier) computes the row's reciprocal square root in
    ``rsqrt_cycles(params)`` cycles (47 at the minilm preset);
    then the row streams out of that half while the next row enters the other half (and
    the row after it may refill a half behind its read pointer).

    Parameters
    ----------
    params : LayerNormParams

    Members
    -------
    i : In(stream.Signature(layernorm_input_layout(params)))
        ``x`` and the residual ``r``, one position per beat, ``dim`` beats per row. Ready is
        low only while both buffer halves hold rows not yet read out.
    i_param : In(stream.Signature(layernorm_param_layout(params)))
        ``(gamma, beta)`` pairs written into a ``dim``-entry table, position 0 first,
        wrapping after ``dim`` beats. Always ready. Load the table before the rows that use
        it (a write takes effect for elements read out after it).
    o : Out(stream.Signature(layernorm_output_layout(params)))
        One bf16 result per input position, ``last`` on each row's final element.

    Throughput: one element per cycle; ``max(dim + 1, rsqrt_cycles(params))`` cycles per row
    in steady state (the reciprocal square root unit limits only very short rows).
    Latency: a row's first result is valid ``dim + 11 + rsqrt_cycles(params)`` cycles after its
    first element was accepted (no stalls).
    """

    def __init__(self, params):
        if not isinstance(params, LayerNormParams):
            raise TypeError(f"params must be LayerNormParams, not {params!r}")
        self.params = params
        super().__init__({
            "i": In(stream.Signature(layernorm_input_layout(params))),
            "i_param": In(stream.Signature(layernorm_param_layout(params))),
            "o": Out(stream.Signature(layernorm_output_layout(params))),
        })

    def elaborate(self, platform):
        p = self.params
        m = Module()
        XI, F, R = p.int_bits, p.frac_bits, p.rsqrt_bits
        FT, FO, YI = p.norm_frac, p.out_frac, p.out_int
        d = p.dim
        iw = max(1, (d - 1).bit_length())
        hw_ = p.h_width
        lim = (1 << (XI + F)) - 1

        # ---------------------------------------------------------- gamma/beta table
        ptab = memory.Memory(shape=unsigned(32), depth=1 << iw, init=[])
        m.submodules.ptab = ptab
        pwp = ptab.write_port()
        prp = ptab.read_port(domain="sync")
        pidx = Signal(iw)
        m.d.comb += [self.i_param.ready.eq(1), pwp.addr.eq(pidx),
                     pwp.data.eq(Cat(self.i_param.payload.gamma, self.i_param.payload.beta)),
                     pwp.en.eq(self.i_param.valid)]
        with m.If(self.i_param.valid):
            m.d.sync += pidx.eq(Mux(pidx == d - 1, 0, pidx + 1))

        # ---------------------------------------------------------- row buffer
        mem = memory.Memory(shape=signed(hw_), depth=2 << iw, init=[])
        m.submodules.buf = mem
        wp = mem.write_port()
        rp = mem.read_port(domain="sync")
        full = Signal(2)
        done = Signal(2)
        set_full, clr_full, set_done = Signal(2), Signal(2), Signal(2)
        m.d.sync += [full.eq((full | set_full) & ~clr_full),
                     done.eq((done | set_done) & ~clr_full)]

        # ---------------------------------------------------------- front (pass 1)
        wbank = Signal()
        widx = Signal(iw)
        v1, v2, v3 = Signal(), Signal(), Signal()
        fadv = Signal()
        rbank = Signal()
        ridx = Signal(iw)
        streaming = Signal()
        # a bank being read out may be rewritten behind the read pointer
        can_write = ~full.bit_select(wbank, 1) | (streaming & (rbank == wbank) & (widx < ridx))
        m.d.comb += [fadv.eq(~v3 | can_write), self.i.ready.eq(fadv)]
        xa, ra = self.i.payload.x, self.i.payload.r
        xf = to_fix(m, xa, XI, F)
        rf = to_fix(m, ra, XI, F)
        x1 = Signal(signed(hw_))
        r1 = Signal(signed(hw_))
        bad1 = Signal()
        with m.If(fadv):
            m.d.sync += [v1.eq(self.i.valid), x1.eq(xf), r1.eq(rf),
                         bad1.eq((xa[7:15] == 0xFF) | (ra[7:15] == 0xFF))]
        s = Signal(signed(hw_ + 1))
        m.d.comb += s.eq(x1 + r1)
        h2 = Signal(signed(hw_))
        bad2 = Signal()
        with m.If(fadv):
            m.d.sync += [v2.eq(v1), bad2.eq(bad1),
                         h2.eq(Mux(s > lim, lim, Mux(s < -lim, -lim, s)))]
        h3 = Signal(signed(hw_))
        sq3 = Signal(2 * (hw_ - 1))
        bad3 = Signal()
        habs = Signal(hw_ - 1)
        m.d.comb += habs.eq(Mux(h2 < 0, -h2, h2))
        with m.If(fadv):
            m.d.sync += [v3.eq(v2), bad3.eq(bad2), h3.eq(h2), sq3.eq(habs * habs)]

        run_s1 = Signal(signed(p.s1_width))
        run_s2 = Signal(p.s2_width)
        run_bad = Signal()
        bank_s1 = [Signal(signed(p.s1_width), name=f"bank{b}_s1") for b in range(2)]
        bank_s2 = [Signal(p.s2_width, name=f"bank{b}_s2") for b in range(2)]
        bank_bad = [Signal(name=f"bank{b}_bad") for b in range(2)]
        consume = v3 & fadv
        m.d.comb += [wp.addr.eq(Cat(widx, wbank)), wp.data.eq(h3), wp.en.eq(consume)]
        with m.If(consume):
            with m.If(widx == d - 1):
                m.d.sync += [widx.eq(0), wbank.eq(~wbank), run_s1.eq(0), run_s2.eq(0),
                             run_bad.eq(0)]
                for b in range(2):
                    with m.If(wbank == b):
                        m.d.sync += [bank_s1[b].eq(run_s1 + h3), bank_s2[b].eq(run_s2 + sq3),
                                     bank_bad[b].eq(run_bad | bad3)]
                m.d.comb += set_full.eq(Mux(wbank, 0b10, 0b01))
            with m.Else():
                m.d.sync += [widx.eq(widx + 1), run_s1.eq(run_s1 + h3),
                             run_s2.eq(run_s2 + sq3), run_bad.eq(run_bad | bad3)]

        # ---------------------------------------------------------- reciprocal square root
        # one digit-serial multiplier (mw x MUL_DIGIT bits per cycle, most significant digit
        # of the second operand first) serves S1**2 and the Newton steps
        mw, nd = _mul_geometry(p)
        mbw = nd * MUL_DIGIT
        m_a = Signal(mw)
        m_b = Signal(mbw)
        m_cnt = Signal(range(nd + 1))
        m_busy = Signal()
        prod = Signal(mw + mbw)
        with m.If(m_busy):
            m.d.sync += [prod.eq((prod << MUL_DIGIT) + m_a * m_b[mbw - MUL_DIGIT:]),
                         m_b.eq(m_b << MUL_DIGIT), m_cnt.eq(m_cnt - 1)]
            with m.If(m_cnt == 1):
                m.d.sync += m_busy.eq(0)

        def start(x, y_):
            m.d.sync += [m_a.eq(x), m_b.eq(y_), prod.eq(0), m_cnt.eq(nd), m_busy.eq(1)]
        nbank = Signal()
        W = Signal(p.w_width)
        a = Signal(R + 2)
        k = Signal(range(p.w_width))
        y = Signal(R + 2)
        y2 = Signal(R + 3)
        t = Signal(R + 3)
        step = Signal(range(p.newton_steps + 1))
        bank_y = [Signal(R + 2, name=f"bank{b}_y") for b in range(2)]
        bank_k = [Signal(range(p.w_width), name=f"bank{b}_k") for b in range(2)]
        cur_s1 = Mux(nbank, bank_s1[1], bank_s1[0])
        cur_s2 = Mux(nbank, bank_s2[1], bank_s2[0])
        s1abs = Signal(p.s1_width - 1)
        m.d.comb += s1abs.eq(Mux(cur_s1 < 0, -cur_s1, cur_s1))
        wpos = lod(m, W)
        kk = Signal(range(p.w_width))
        m.d.comb += kk.eq(wpos >> 1)
        a_new = Signal(R + 2)
        m.d.comb += a_new.eq(Cat(Const(0, R), W) >> (kk << 1))
        table = Array([Const(v, unsigned(R + 2)) for v in rsqrt_table(p.guess_bits, R)])
        with m.FSM():
            with m.State("IDLE"):
                with m.If(full.bit_select(nbank, 1) & ~done.bit_select(nbank, 1)):
                    start(s1abs, s1abs)
                    m.next = "SQUARE"
            with m.State("SQUARE"):
                with m.If(~m_busy):
                    m.d.sync += W.eq(cur_s2 * d - prod + eps_const(p))
                    m.next = "NORM"
            with m.State("NORM"):
                m.d.sync += [a.eq(a_new), k.eq(kk),
                             y.eq(table[a_new >> (R + 2 - p.guess_bits)]), step.eq(0)]
                m.next = "NEWTON"
            with m.State("NEWTON"):
                with m.If(step == p.newton_steps):
                    for b in range(2):
                        with m.If(nbank == b):
                            m.d.sync += [bank_y[b].eq(Mux(W == 0, 0, y)), bank_k[b].eq(k)]
                    m.d.comb += set_done.eq(Mux(nbank, 0b10, 0b01))
                    m.d.sync += nbank.eq(~nbank)
                    m.next = "IDLE"
                with m.Else():
                    start(y, y)
                    m.next = "N1"
            with m.State("N1"):
                with m.If(~m_busy):
                    m.d.sync += y2.eq(prod >> R)
                    start(a, prod >> R)
                    m.next = "N2"
            with m.State("N2"):
                with m.If(~m_busy):
                    m.d.sync += t.eq(prod >> R)
                    start(y, (3 << R) - (prod >> R))
                    m.next = "N3"
            with m.State("N3"):
                with m.If(~m_busy):
                    m.d.sync += [y.eq(prod >> (R + 1)), step.eq(step + 1)]
                    m.next = "NEWTON"

        # ---------------------------------------------------------- back (pass 2)
        adv = Signal()
        m.d.comb += adv.eq(~self.o.valid | self.o.ready)
        row_s1 = Signal(signed(p.s1_width))
        row_y = Signal(R + 2)
        row_k = Signal(range(p.w_width))
        row_bad = Signal()
        r_last = ridx == d - 1
        issue = streaming & adv
        m.d.comb += [rp.addr.eq(Cat(ridx, rbank)), rp.en.eq(adv),
                     prp.addr.eq(ridx), prp.en.eq(adv)]
        q1v, q1last = Signal(), Signal()
        with m.If(adv):
            m.d.sync += [q1v.eq(issue), q1last.eq(r_last)]
            with m.If(~streaming & done.bit_select(rbank, 1)):
                m.d.sync += [streaming.eq(1), ridx.eq(0),
                             row_s1.eq(Mux(rbank, bank_s1[1], bank_s1[0])),
                             row_y.eq(Mux(rbank, bank_y[1], bank_y[0])),
                             row_k.eq(Mux(rbank, bank_k[1], bank_k[0])),
                             row_bad.eq(Mux(rbank, bank_bad[1], bank_bad[0]))]
            with m.Elif(streaming):
                with m.If(r_last):
                    m.d.sync += [streaming.eq(0), rbank.eq(~rbank)]
                    m.d.comb += clr_full.eq(Mux(rbank, 0b10, 0b01))
                with m.Else():
                    m.d.sync += ridx.eq(ridx + 1)

        # Q1: c = dim * h - S1
        gm, ge, gbad = _bf16_fields(prp.data[0:16])
        bm, be, bbad = _bf16_fields(prp.data[16:32])
        q2v, q2last, q2bad = Signal(), Signal(), Signal()
        c2 = Signal(signed(p.c_width))
        y2r = Signal(R + 2)
        k2 = Signal(range(p.w_width))
        g2m, b2m = Signal(signed(9)), Signal(signed(9))
        g2e, b2e = Signal(8), Signal(8)
        with m.If(adv):
            m.d.sync += [q2v.eq(q1v), q2last.eq(q1last), q2bad.eq(row_bad | gbad | bbad),
                         c2.eq(rp.data * d - row_s1), y2r.eq(row_y), k2.eq(row_k),
                         g2m.eq(gm), b2m.eq(bm), g2e.eq(ge), b2e.eq(be)]

        # Q2: c * y
        q3v, q3last, q3bad = Signal(), Signal(), Signal()
        cy3 = Signal(signed(p.c_width + R + 3))
        k3 = Signal(range(p.w_width))
        g3m, b3m = Signal(signed(9)), Signal(signed(9))
        g3e, b3e = Signal(8), Signal(8)
        with m.If(adv):
            m.d.sync += [q3v.eq(q2v), q3last.eq(q2last), q3bad.eq(q2bad),
                         cy3.eq(c2 * y2r),
                         k3.eq(k2), g3m.eq(g2m), b3m.eq(b2m), g3e.eq(g2e), b3e.eq(b2e)]

        # Q3: t = c * y >> (k + R - norm_frac)
        q4v, q4last, q4bad = Signal(), Signal(), Signal()
        t4 = Signal(signed(p.t_width))
        g4m, b4m = Signal(signed(9)), Signal(signed(9))
        g4e, b4e = Signal(8), Signal(8)
        tsh = Signal(range(p.w_width + R + 1))
        m.d.comb += tsh.eq(k3 + (R - FT))
        with m.If(adv):
            m.d.sync += [q4v.eq(q3v), q4last.eq(q3last), q4bad.eq(q3bad), t4.eq(cy3 >> tsh),
                         g4m.eq(g3m), b4m.eq(b3m), g4e.eq(g3e), b4e.eq(b3e)]

        # Q4: t * gamma (exact)
        q5v, q5last, q5bad = Signal(), Signal(), Signal()
        pg5 = Signal(signed(p.t_width + 9))
        b5m = Signal(signed(9))
        g5e, b5e = Signal(8), Signal(8)
        with m.If(adv):
            m.d.sync += [q5v.eq(q4v), q5last.eq(q4last), q5bad.eq(q4bad), pg5.eq(t4 * g4m),
                         b5m.eq(b4m), g5e.eq(g4e), b5e.eq(b4e)]

        # Q5: align both terms to out_frac (floor, saturate) and add
        olim = (1 << (YI + FO)) - 1

        def align_sat(v, sh):
            """``v * 2**sh`` on the output grid, floor, saturated to +-olim."""
            wv = len(v)
            vabs = Signal(wv, name="al_abs")
            m.d.comb += vabs.eq(Mux(v < 0, -v, v))
            nb = Signal(range(wv + 2), name="al_bits")
            pos = lod(m, vabs)
            m.d.comb += nb.eq(Mux(vabs == 0, 0, pos + 1))
            ow = YI + FO + 2
            lsh = Signal(range(ow + 1), name="al_lsh")
            rsh = Signal(range(wv + 1), name="al_rsh")
            m.d.comb += [lsh.eq(Mux(sh > ow, ow, sh[:len(lsh)])),
                         rsh.eq(Mux(-sh > wv, wv, (-sh)[:len(rsh)]))]
            over = (vabs != 0) & (sh >= 0) & (nb + sh > YI + FO)
            shifted = Signal(signed(ow + 1), name="al_val")
            m.d.comb += shifted.eq(Mux(sh >= 0, v << lsh, v >> rsh))
            out = Signal(signed(ow + 1), name="al_out")
            sat = Mux(v < 0, -olim, olim)
            m.d.comb += out.eq(Mux(over, sat, Mux(shifted > olim, olim,
                                                  Mux(shifted < -olim, -olim, shifted))))
            return out

        shp = Signal(signed(10))
        shb = Signal(signed(10))
        m.d.comb += [shp.eq(g5e - 134 - FT + FO), shb.eq(b5e - 134 + FO)]
        pa = align_sat(pg5, shp)
        ba = align_sat(b5m, shb)
        q6v, q6last, q6bad = Signal(), Signal(), Signal()
        sum6 = Signal(signed(YI + FO + 3))
        with m.If(adv):
            m.d.sync += [q6v.eq(q5v), q6last.eq(q5last), q6bad.eq(q5bad), sum6.eq(pa + ba)]

        # Q6: normalise
        mag6 = Signal(YI + FO + 2)
        m.d.comb += mag6.eq(Mux(sum6 < 0, -sum6, sum6))
        norm, e_n = bf16_normalize(m, mag6, Const(-FO, signed(8)))
        q7v, q7last, q7bad, q7neg = Signal(), Signal(), Signal(), Signal()
        norm7 = Signal(len(norm))
        e7 = Signal(signed(len(e_n)))
        with m.If(adv):
            m.d.sync += [q7v.eq(q6v), q7last.eq(q6last), q7bad.eq(q6bad), q7neg.eq(sum6 < 0),
                         norm7.eq(norm), e7.eq(e_n)]

        # Q7: round to nearest even, pack, output register
        rounded = bf16_pack(m, norm7, e7, q7neg)
        with m.If(adv):
            m.d.sync += [self.o.valid.eq(q7v), self.o.payload.last.eq(q7last),
                         self.o.payload.data.eq(Mux(q7bad, 0x7FC0, rounded))]
        return m


UNIT = Unit(name="layernorm", params=LayerNormParams, presets=PRESETS, component=LayerNorm, golden=layernorm,
            summary="residual add + layernorm (exact sums, LOD + Newton rsqrt), bf16 rows, "
                    "1 element/cycle")
