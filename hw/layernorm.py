"""Residual add + layernorm: bf16 (x, r) rows in, bf16 LN(x + r) * gamma + beta rows out."""

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from sim.bf16 import EXP_BIAS, MANT_BITS
from sim.layernorm import (PRESETS, LayerNormParams, back_stages, eps_const, front_stages,
                           layernorm, rsqrt_table, rsqrt_width)

from . import numerics as hn
from .common import BankReader, PingPong, Pipeline, Unit

__all__ = ["LayerNorm", "layernorm_input_layout", "layernorm_param_layout",
           "layernorm_output_layout", "UNIT"]


def layernorm_input_layout(params):
    """One input beat: element ``x`` and residual ``r`` (bf16) of the same position."""
    return data.StructLayout({"x": unsigned(16), "r": unsigned(16)})


def layernorm_param_layout(params):
    """One parameter beat: ``gamma`` and ``beta`` (bf16) of the next position."""
    return data.StructLayout({"gamma": unsigned(16), "beta": unsigned(16)})


def layernorm_output_layout(params):
    """One output beat: a bf16 result and end of row."""
    return data.StructLayout({"data": unsigned(16), "last": unsigned(1)})


class _Banks:
    """State of the two-bank row buffer shared by the three parts: the ``PingPong``
    bookkeeping, the write index, a reciprocal-square-root-ready bit per bank, and per bank
    the row's sums (written when its last element enters) and ``y``, ``k``."""

    def __init__(self, m, p, iw):
        self.pp = PingPong(m, name="bank")
        self.widx = Signal(iw, name="widx")
        self.done = Signal(2, name="bank_done")
        self.set_done = Signal(2, name="bank_set_done")
        m.d.sync += self.done.eq((self.done | self.set_done) & ~self.pp.clearing)
        pair = lambda name, shape: Array(Signal(shape, name=f"bank{b}_{name}") for b in range(2))
        self.s1 = pair("s1", signed(p.s1_width))
        self.s2 = pair("s2", p.w_width - 1)
        self.bad = pair("bad", 1)
        self.y = pair("y", p.y_width)
        self.k = pair("k", range(p.w_width))

    @staticmethod
    def read(regs, sel):
        """``regs[sel]`` by a 2:1 multiplexer (a continuous assignment in Verilog, which
        every simulator evaluates at time 0)."""
        return Mux(sel, regs[1], regs[0])


_LSB_BIAS = EXP_BIAS + MANT_BITS     # exponent field - exponent of a significand's LSB


def _clamp(v, lim):
    """``v`` saturated to ``[-lim, lim]``."""
    return Mux(v > lim, lim, Mux(v < -lim, -lim, v))


class LayerNorm(wiring.Component):
    """Normalise rows of ``x + r`` and apply ``gamma``, ``beta`` (BERT's add & norm).

    Numerics are ``sim.layernorm`` (docs/numerics.md, layernorm): DAZ; ``x``, ``r`` and
    ``h = x + r`` in saturating fixed point (truncate); exact integer sums of ``h`` and
    ``dim * h * h``; ``dim**2`` times the variance plus a constant for ``eps`` exactly;
    reciprocal square root by leading-zero normalisation, a ``2**guess_bits``-entry table and
    ``newton_steps`` Newton steps (floors); ``t = (dim*h - sum) * rsqrt`` (floor);
    ``t*gamma`` and ``beta`` aligned to ``out_frac`` fraction bits (floor, saturate), added
    and rounded once to bf16 (RNE, FTZ). NaN/Inf in a row's ``x`` or ``r`` -> the whole row
    0x7FC0; NaN/Inf in ``gamma[i]`` or ``beta[i]`` -> output ``i`` 0x7FC0.

    Rows are exactly ``dim`` beats (counted; there is no ``last`` input). A row is written
    into one bank of a two-bank row buffer while its sums accumulate; a sequencer with one
    pipelined multiplier then computes its reciprocal square root in
    ``sim.layernorm.rsqrt_cycles(params)`` cycles (32 at every preset), and the row streams
    out of its bank while the next row fills the other bank; the row after that may refill a
    bank behind its read pointer.

    Parameters
    ----------
    params : LayerNormParams

    Members
    -------
    i : In(stream.Signature(layernorm_input_layout(params)))
        ``x`` and the residual ``r``, one position per beat, ``dim`` beats per row. Ready is
        low only while the element about to be written waits for its bank: the bank holds a
        row not yet read out, and that row's read-out is not far enough ahead of it.
    i_param : In(stream.Signature(layernorm_param_layout(params)))
        ``(gamma, beta)`` pairs written into a ``dim``-entry table, position 0 first,
        wrapping after ``dim`` beats. Always ready. Load the table before the rows that use
        it (a write takes effect for elements read out after it).
    o : Out(stream.Signature(layernorm_output_layout(params)))
        One bf16 result per input position, ``last`` on each row's final element.

    Throughput: one element per cycle on ``i`` and ``o``; ``sim.layernorm.row_cycles(params)``
    cycles per row in steady state, ``dim`` unless ``dim`` is below ``rsqrt_cycles``, which
    then limits. Latency: a row's first result is valid ``sim.layernorm.latency(params)`` =
    ``dim + front_stages + rsqrt_cycles + back_stages`` cycles after its first element was
    accepted (``dim + 57`` at every preset; no stalls, the unit idle before). Backpressure on
    ``o`` holds the output pipeline and the reads; rows keep entering until both banks are
    full.
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
        d = p.dim
        iw = max(1, (d - 1).bit_length())

        # ---------------------------------------------------------- gamma/beta table
        ptab = memory.Memory(shape=unsigned(32), depth=1 << iw, init=[])
        m.submodules.ptab = ptab
        pwp = ptab.write_port()
        prp = ptab.read_port(domain="sync")
        pidx = Signal(iw)
        m.d.comb += [self.i_param.ready.eq(1), pwp.addr.eq(pidx), pwp.en.eq(self.i_param.valid),
                     pwp.data.eq(Cat(self.i_param.payload.gamma, self.i_param.payload.beta))]
        with m.If(self.i_param.valid):
            m.d.sync += pidx.eq(Mux(pidx == d - 1, 0, pidx + 1))

        # ---------------------------------------------------------- row buffer (dim * h)
        buf = memory.Memory(shape=signed(p.s1_width), depth=2 << iw, init=[])
        m.submodules.buf = buf
        banks = _Banks(m, p, iw)
        reader = self._back(m, p, buf.read_port(domain="sync"), prp, banks)
        self._front(m, p, buf.write_port(), banks, reader.index)
        self._rsqrt(m, p, banks)
        return m

    def _front(self, m, p, wp, banks, ridx):
        """Pass 1: ``h = x + r`` into the write bank (as ``dim * h``), sums of ``h`` and
        ``dim * h * h``. The pipeline holds when its last element may not be written yet."""
        d = p.dim
        pp, widx = banks.pp, banks.widx
        lim = (1 << (p.int_bits + p.frac_bits)) - 1
        pipe = Pipeline(m, self.i.valid, name="f")
        m.d.comb += self.i.ready.eq(pipe.ce)
        x, r = hn.unpack(self.i.payload.x), hn.unpack(self.i.payload.r)
        # 1: magnitudes in fixed point; 2: signed; 3: x + r; 4: saturated
        s1 = pipe.stage(xa=hn.fix_trunc(m, x.bits, p.int_bits, p.frac_bits, magnitude=True,
                                        name="fx"),
                        ra=hn.fix_trunc(m, r.bits, p.int_bits, p.frac_bits, magnitude=True,
                                        name="fr"),
                        xn=x.sign, rn=r.sign, bad=~x.finite | ~r.finite)
        s2 = pipe.stage(xv=Mux(s1.xn, -s1.xa, s1.xa), rv=Mux(s1.rn, -s1.ra, s1.ra),
                        drop=("xa", "ra", "xn", "rn"))
        s3 = pipe.stage(s=s2.xv + s2.rv, drop=("xv", "rv"))
        s4 = pipe.stage(h=_clamp(s3.s, lim)[:p.h_width].as_signed(), drop=("s",))
        # dim * h, then dim * h * h (>= 0)
        s5, dh = hn.multiply(m, pipe, s4.h, Const(d, unsigned(p.dim_bits)), name="dh")
        last, sq = hn.multiply(m, pipe, dh[:p.s1_width].as_signed(), s5.h, name="sq")
        assert pipe.depth == front_stages(p)

        # the last stage writes into the buffer and the sums; behind the read pointer it may
        # enter a bank whose previous row is still being read out. The test is registered, so
        # it looks one cycle ahead: in the same bank widx + 1 < ridx now gives widx < ridx
        # next; the writer at its bank's last element may next be at element 0 of the
        # reader's bank, behind it if ridx > 0 now. Either holds too when the reader leaves
        # the bank meanwhile, which frees it.
        behind = Signal()
        m.d.sync += behind.eq(Mux(widx == d - 1, (pp.rbank != pp.wbank) & (ridx != 0),
                                  (pp.rbank == pp.wbank) & (widx + 1 < ridx)))
        m.d.comb += pipe.ce.eq(~last.valid | pp.can_write | behind)
        commit = last.valid & pipe.ce
        run_s1 = Signal(signed(p.s1_width))
        run_s2 = Signal(p.w_width - 1)
        run_bad = Signal()
        nxt_s1, nxt_s2, nxt_bad = run_s1 + last.h, run_s2 + sq[:p.w_width - 1], run_bad | last.bad
        m.d.comb += [wp.addr.eq(Cat(widx, pp.wbank)), wp.data.eq(last.dh[:p.s1_width]),
                     wp.en.eq(commit)]
        with m.If(commit):
            with m.If(widx == d - 1):
                m.d.sync += [widx.eq(0), run_s1.eq(0), run_s2.eq(0), run_bad.eq(0),
                             banks.s1[pp.wbank].eq(nxt_s1), banks.s2[pp.wbank].eq(nxt_s2),
                             banks.bad[pp.wbank].eq(nxt_bad)]
                pp.write_done()
            with m.Else():
                m.d.sync += [widx.eq(widx + 1), run_s1.eq(nxt_s1), run_s2.eq(nxt_s2),
                             run_bad.eq(nxt_bad)]

    def _rsqrt(self, m, p, banks):
        """The reciprocal square root of each written bank, in bank order, by a sequencer
        around one pipelined multiplier: ``W = dim * S2 - S1**2 + E``, ``k``, ``a``, the table
        guess ``y`` and ``newton_steps`` Newton steps (``sim.layernorm`` step 4)."""
        R = p.rsqrt_bits
        mw = rsqrt_width(p)
        nbank = Signal()
        go = Signal()
        mul_a, mul_b = Signal(mw), Signal(mw)
        mpipe = Pipeline(m, go, name="rm")
        m.d.comb += mpipe.ce.eq(1)
        mres, prod = hn.multiply(m, mpipe, mul_a, mul_b, name="rm")
        m.d.sync += go.eq(0)

        def start(a_, b_):
            m.d.sync += [mul_a.eq(a_), mul_b.eq(b_), go.eq(1)]

        # W zero-extended to an even width of at least R + 2 bits: shifting it left by its
        # leading zeros rounded down to even puts a = W * 2**(R - 2k) in the top R + 2 bits
        nw = max(p.w_width, R + 2)
        nw += nw & 1
        wacc = Signal(p.w_width)
        W = Signal(nw)
        lz = Signal(range(nw + 1))
        a = Signal(R + 2)
        k = Signal(range(p.w_width))
        y = Signal(p.y_width)
        zero = Signal()
        step = Signal(range(max(p.newton_steps, 2)))       # never 0 bits wide
        m.submodules.guess = table = memory.Memory(
            shape=p.y_width, depth=1 << p.guess_bits, init=rsqrt_table(p.guess_bits, R))
        lookup = table.read_port(domain="comb")
        m.d.comb += lookup.addr.eq(a[R + 2 - p.guess_bits:])
        guess = lookup.data
        even = Cat(Const(0, 1), lz[1:])

        def finish(y_):
            m.d.sync += [banks.y[nbank].eq(Mux(zero, 0, y_)), banks.k[nbank].eq(k),
                         nbank.eq(~nbank)]
            m.d.comb += banks.set_done.eq(Mux(nbank, 0b10, 0b01))
            m.next = "IDLE"

        with m.FSM(name="rsqrt"):
            with m.State("IDLE"):
                s1 = banks.read(banks.s1, nbank)
                with m.If(banks.pp.full.bit_select(nbank, 1)
                          & ~banks.done.bit_select(nbank, 1)):
                    s1abs = Mux(s1 < 0, -s1, s1)
                    start(s1abs, s1abs)
                    m.d.sync += wacc.eq(banks.read(banks.s2, nbank) + eps_const(p))
                    m.next = "SQUARE"
            with m.State("SQUARE"):
                with m.If(mres.valid):
                    m.d.sync += W.eq(wacc - prod)
                    m.next = "LZ"
            with m.State("LZ"):
                m.d.sync += [lz.eq(hn.leading_zeros(m, W, name="w_lz")), zero.eq(W == 0)]
                m.next = "NORM"
            with m.State("NORM"):
                m.d.sync += [a.eq((W << even)[nw - R - 2:]), k.eq((nw - 2 - even) >> 1)]
                m.next = "TABLE"
            with m.State("TABLE"):
                if p.newton_steps:
                    m.d.sync += [y.eq(guess), step.eq(0)]
                    start(guess, guess)
                    m.next = "Y2"
                else:
                    finish(guess)
            # a Newton step: y2 = y*y >> R; t = a*y2 >> R; y = y*(3 * 2**R - t) >> (R + 1)
            with m.State("Y2"):
                with m.If(mres.valid):
                    start(a, prod >> R)
                    m.next = "T"
            with m.State("T"):
                with m.If(mres.valid):
                    start(y, (3 << R) - (prod >> R))
                    m.next = "Y"
            with m.State("Y"):
                with m.If(mres.valid):
                    y_new = (prod >> (R + 1))[:p.y_width]
                    with m.If(step == p.newton_steps - 1):
                        finish(y_new)
                    with m.Else():
                        m.d.sync += [y.eq(y_new), step.eq(step + 1)]
                        start(y_new, y_new)
                        m.next = "Y2"

    def _back(self, m, p, rp, prp, banks):
        """Pass 2: read the row out of its bank with gamma and beta, one element per cycle,
        through the output pipeline (``sim.layernorm`` steps 5 and 6). Returns the
        ``BankReader``."""
        d = p.dim
        pp = banks.pp
        R, FT, FO, YI = p.rsqrt_bits, p.norm_frac, p.out_frac, p.out_int
        olim = (1 << (YI + FO)) - 1
        go = banks.done.bit_select(pp.rbank, 1)
        pipe = Pipeline(m, go, name="b")
        last_index = Const(d - 1, len(banks.widx))
        rd = BankReader(m, pp, rp, go=go, ce=pipe.ce, last_index=(last_index, last_index))
        m.d.comb += [prp.addr.eq(rd.index), prp.en.eq(pipe.ce)]

        # 1: the buffer and the table are read, the row's constants ride along; 2: the
        # block RAM outputs (slow: 4.3 ns clock to output on the ECP5) go straight to registers
        pipe.stage(last=rd.is_last, **{k: banks.read(getattr(banks, k), pp.rbank)
                                       for k in ("s1", "y", "k", "bad")})
        s1 = pipe.stage(dh=rp.data, gb=prp.data)
        # 3: c = dim * h - S1; gamma, beta as significand and exponent; the alignment shifts
        # of sim.layernorm._align_sat: floor(v * 2**sh) is (v * 2**P) >> (P - sh), where
        # P = out_int + out_frac + 1 is a left shift that saturates any nonzero v
        P = YI + FO + 1
        gw = p.t_width + 9
        g, bt = hn.unpack(s1.gb[:16]), hn.unpack(s1.gb[16:])
        gm, _, gfin = hn.to_fixed(m, g.bits, name="gm")
        bm, _, bfin = hn.to_fixed(m, bt.bits, name="bm")

        def shift(exp_field, offset, width):
            # P - sh for sh = exp + offset, clamped to 0..P + width, where to_fixed's exponent
            # is exp = exp_field - _LSB_BIAS: one subtraction from the field
            v = (P - offset + _LSB_BIAS) - exp_field
            return Mux(v < 0, 0, Mux(v > P + width, P + width, v))[:(P + width).bit_length()]
        s2 = pipe.stage(c=(s1.dh - s1.s1)[:p.c_width].as_signed(), gm=gm, bm=bm,
                        tsh=s1.k + (R - FT), gsh=shift(g.exp, FO - FT, gw),
                        bsh=shift(bt.exp, FO, 9), bad=s1.bad | ~gfin | ~bfin,
                        drop=("s1", "k", "dh", "gb"))
        # c * y; t = c * y >> (k + R - norm_frac); t * gamma
        sm, cy = hn.multiply(m, pipe, s2.c, s2.y, name="cy", drop=("c", "y"))
        st = pipe.stage(t=(cy >> sm.tsh)[:p.t_width].as_signed(), drop=("cy", "tsh"))
        sm, tg = hn.multiply(m, pipe, st.t, st.gm, name="tg", drop=("t", "gm"))
        # aligned (floor), saturated, added; magnitude, leading zeros, normalised, rounded
        sa = pipe.stage(pa=Cat(Const(0, P), tg).as_signed() >> sm.gsh,
                        ba=Cat(Const(0, P), sm.bm).as_signed() >> sm.bsh,
                        drop=("tg", "bm", "gsh", "bsh"))
        sb = pipe.stage(pa=_clamp(sa.pa, olim)[:YI + FO + 1].as_signed(),
                        ba=_clamp(sa.ba, olim)[:YI + FO + 1].as_signed())
        sc = pipe.stage(sum=sb.pa + sb.ba, drop=("pa", "ba"))
        sd = pipe.stage(mag=hn.abs_value(m, sc.sum, name="mag")[:YI + FO + 1], neg=sc.sum < 0,
                        drop=("sum",))
        se = pipe.stage(lz=hn.leading_zeros(m, sd.mag, name="o_lz"))
        sf = pipe.stage(norm=hn.shift_to_top(m, se.mag, se.lz, name="o_norm"),
                        e=(126 + YI + FO + 1 - FO) - se.lz, drop=("mag", "lz"))
        res = hn.round_pack(m, sf.norm, sf.e, sf.neg, name="o_rnd")
        pipe.drive(self.o, data=Mux(sf.bad, hn.NAN, res), last=sf.last)
        assert pipe.depth == back_stages(p)
        return rd


UNIT = Unit(name="layernorm", params=LayerNormParams, presets=PRESETS, component=LayerNorm,
            golden=layernorm,
            summary="residual add + layernorm (exact sums, Newton rsqrt), bf16 rows, "
                    "1 element/cycle")
