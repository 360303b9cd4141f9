"""Log2-domain softmax (OPAL-style): bf16 score rows in, bf16 probability rows out."""

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from sim.softmax import PRESETS, SoftmaxParams, log2e_const, pwl_table, softmax

from .common import Unit
from .numerics import leading_one as lod, normalize as bf16_normalize, round_pack as bf16_pack

__all__ = ["Softmax", "softmax_input_layout", "softmax_output_layout", "pwl", "to_fix", "UNIT"]


def to_fix(m, x, int_bits, frac_bits):
    """Signed fixed point of bf16 ``x`` as ``sim.softmax.to_fix``: DAZ, magnitude truncated
    toward zero, saturated to ``2**(int_bits + frac_bits) - 1`` (Inf saturates too).
    Combinational; returns a signed Signal of ``int_bits + frac_bits + 1`` bits."""
    ex, fr, sg = x[7:15], x[0:7], x[15]
    mag = Cat(fr, Const(1, 1))
    lim = (1 << (int_bits + frac_bits)) - 1
    rs = Signal(9)
    m.d.comb += rs.eq(126 + int_bits + 8 - ex)
    v_abs = Signal(int_bits + frac_bits)
    m.d.comb += v_abs.eq(Mux(ex >= 127 + int_bits, lim,
                             Mux(ex == 0, 0, Cat(Const(0, int_bits + frac_bits), mag) >> rs)))
    out = Signal(signed(int_bits + frac_bits + 1))
    m.d.comb += out.eq(Mux(sg, -v_abs, v_abs))
    return out


def softmax_input_layout(params):
    """One input beat: a bf16 score, its mask bit (1 = keep, 0 = padding), end of row."""
    return data.StructLayout({"data": unsigned(16), "mask": unsigned(1), "last": unsigned(1)})


def softmax_output_layout(params):
    """One output beat: a bf16 probability and end of row."""
    return data.StructLayout({"data": unsigned(16), "last": unsigned(1)})


def pwl(m, u, in_bits, out_bits, table):
    """Piecewise-linear function of unsigned ``u`` (``in_bits`` wide), as ``sim.softmax.pwl_eval``.

    Each segment is its intercept plus shifted copies of the in-segment offset (no
    multiplier); the result is clamped to the table's range. Combinational.
    """
    A, T, lo, hi = table
    sb = len(A).bit_length() - 1
    r = u[:in_bits - sb]
    if out_bits >= in_bits:
        r_al = Cat(Const(0, out_bits - in_bits), r)
    else:
        r_al = r[in_bits - out_bits:]
    raw = Signal(signed(out_bits + 5))
    if sb:
        with m.Switch(u[in_bits - sb:in_bits]):
            for k in range(len(A)):
                with m.Case(k):
                    v = Const(A[k], signed(out_bits + 5))
                    for s, sh in T[k]:
                        t = Cat(Const(0, 1), r_al) if sh < 0 else (r_al >> sh)
                        v = v + t if s > 0 else v - t
                    m.d.comb += raw.eq(v)
    else:
        v = Const(A[0], signed(out_bits + 5))
        for s, sh in T[0]:
            t = Cat(Const(0, 1), r_al) if sh < 0 else (r_al >> sh)
            v = v + t if s > 0 else v - t
        m.d.comb += raw.eq(v)
    out = Signal(unsigned(hi.bit_length()))
    m.d.comb += out.eq(Mux(raw < lo, lo, Mux(raw > hi, hi, raw)))
    return out


class Softmax(wiring.Component):
    """Softmax over rows of bf16 scores by shifts, adds, compares and leading-one detection.

    Numerics are ``sim.softmax`` (docs/numerics.md, softmax): DAZ; scores to fixed point
    (truncate, saturate at ``2**int_bits``); ``y = x * log2(e)`` by shift-add (floor); an
    online integer maximum and sum of piecewise-linear ``2**frac(y)`` aligned by shifts
    (floor); ``log2`` of the sum by leading-one detection and a piecewise-linear mantissa;
    output ``2**(y - max - log2(sum))`` rounded once to bf16 (RNE, FTZ). Padding (mask 0)
    and -Inf give +0; a kept NaN or +Inf gives 0x7FC0 at every mask-1 position of its row; a
    row with nothing kept gives all +0.

    Rows end at ``last`` or after ``max_len`` elements, whichever comes first. A row is
    written into one half of a double buffer while its maximum and sum accumulate, then
    streamed out of that half while the next row enters the other half (and the row after it
    may refill a half behind its read pointer).

    Parameters
    ----------
    params : SoftmaxParams

    Members
    -------
    i : In(stream.Signature(softmax_input_layout(params)))
        Scores with mask bits; ``last`` marks a row's final element. Ready is low only while
        both buffer halves hold rows not yet read out.
    o : Out(stream.Signature(softmax_output_layout(params)))
        One probability per input element, same order, ``last`` on the row's final element.

    Throughput: one element per cycle; ``L + 1`` cycles per row of ``L`` in steady state.
    Latency: a row's first probability is valid ``L + 11`` cycles after its first score was
    accepted (no stalls).
    """

    def __init__(self, params):
        if not isinstance(params, SoftmaxParams):
            raise TypeError(f"params must be SoftmaxParams, not {params!r}")
        self.params = params
        super().__init__({
            "i": In(stream.Signature(softmax_input_layout(params))),
            "o": Out(stream.Signature(softmax_output_layout(params))),
        })

    def elaborate(self, platform):
        p = self.params
        m = Module()
        F, W, XI = p.frac_bits, p.exp_bits, p.int_bits
        lw = p.len_width
        yw = p.y_width
        mw = yw - F + 1                          # signed width of integer parts
        sw = p.sum_width
        t_pow = pwl_table("pow2", F, W, p.pwl_segments, p.pwl_terms)
        t_log = pwl_table("log2p1", W, F, p.pwl_segments, p.pwl_terms)

        mem = memory.Memory(shape=unsigned(yw + 2), depth=2 << lw, init=[])
        m.submodules.buf = mem
        wp = mem.write_port()
        rp = mem.read_port(domain="sync")

        full = Signal(2)
        set_full = Signal(2)
        clr_full = Signal(2)
        m.d.sync += full.eq((full | set_full) & ~clr_full)

        # ---------------------------------------------------------- front (pass 1)
        wbank = Signal()
        widx = Signal(lw)
        v1, v2, v3, v4 = Signal(), Signal(), Signal(), Signal()
        fadv = Signal()
        rbank = Signal()
        ridx = Signal(lw)
        streaming = Signal()
        # a half being read out may be rewritten behind its read pointer; a row's final
        # element waits until the half is released
        eor = Signal()
        can_write = ~full.bit_select(wbank, 1) | (streaming & (rbank == wbank) & (widx < ridx)
                                                  & ~eor)
        m.d.comb += [fadv.eq(~v4 | can_write), self.i.ready.eq(fadv)]

        # F1: decode, classify, fixed point
        x = self.i.payload.data
        ex, fr, sg = x[7:15], x[0:7], x[15]
        x_fix = to_fix(m, x, XI, F)
        x1 = Signal(signed(XI + F + 1))
        keep1, mask1, bad1, last1 = Signal(), Signal(), Signal(), Signal()
        msk = self.i.payload.mask
        is_nan = (ex == 0xFF) & (fr != 0)
        pos_inf = (ex == 0xFF) & (fr == 0) & ~sg
        neg_inf = (ex == 0xFF) & (fr == 0) & sg
        with m.If(fadv):
            m.d.sync += [
                v1.eq(self.i.valid),
                x1.eq(x_fix),
                mask1.eq(msk),
                bad1.eq(msk & (is_nan | pos_inf)),
                keep1.eq(msk & ~is_nan & ~pos_inf & ~neg_inf),
                last1.eq(self.i.payload.last),
            ]

        # F2: y = x * log2(e) by shift-add, floor
        c = log2e_const(p.log2e_frac)
        acc = None
        for b in range(c.bit_length()):
            if c >> b & 1:
                acc = (x1 << b) if acc is None else acc + (x1 << b)
        y2 = Signal(signed(yw))
        keep2, mask2, bad2, last2 = Signal(), Signal(), Signal(), Signal()
        with m.If(fadv):
            m.d.sync += [v2.eq(v1), y2.eq(acc >> p.log2e_frac), keep2.eq(keep1),
                         mask2.eq(mask1), bad2.eq(bad1), last2.eq(last1)]

        # F3: integer part, 2**fraction
        e_fr = pwl(m, y2[:F], F, W, t_pow)
        y3 = Signal(signed(yw))
        m3 = Signal(signed(mw))
        e3 = Signal(W + 1)
        keep3, mask3, bad3, last3 = Signal(), Signal(), Signal(), Signal()
        with m.If(fadv):
            m.d.sync += [v3.eq(v2), y3.eq(y2), m3.eq(y2 >> F), e3.eq(e_fr), keep3.eq(keep2),
                         mask3.eq(mask2), bad3.eq(bad2), last3.eq(last2)]

        # F4: store, online max and sum
        y4 = Signal(signed(yw))
        m4 = Signal(signed(mw))
        e4 = Signal(W + 1)
        keep4, mask4, bad4, last4 = Signal(), Signal(), Signal(), Signal()
        with m.If(fadv):
            m.d.sync += [v4.eq(v3), y4.eq(y3), m4.eq(m3), e4.eq(e3), keep4.eq(keep3),
                         mask4.eq(mask3), bad4.eq(bad3), last4.eq(last3)]

        run_M = Signal(signed(mw))
        run_S = Signal(sw)
        started = Signal()
        run_bad = Signal()
        # m4 - run_M and run_M - m4 are registered one stage early (forwarding the running
        # maximum the F4 element leaves behind), so the loop-carried path is only
        # shift, add, select. Shift amounts saturate by their high bits (a shift by sw or
        # more gives 0, as the model's clip does).
        d_up = Signal(signed(mw + 1))
        d_dn = Signal(signed(mw + 1))
        kb = sw.bit_length()
        up = d_dn[-1]                                        # m4 > run_M
        s_up = Mux(d_up[kb:] != 0, 0, run_S >> d_up[:kb])
        e_dn = Mux(d_dn[kb:] != 0, 0, e4 >> d_dn[:kb])
        new_S = Signal(sw)
        new_M = Signal(signed(mw))
        with m.If(keep4 & ~started):
            m.d.comb += [new_S.eq(e4), new_M.eq(m4)]
        with m.Elif(keep4 & up):
            m.d.comb += [new_S.eq(s_up + e4), new_M.eq(m4)]
        with m.Elif(keep4):
            m.d.comb += [new_S.eq(run_S + e_dn), new_M.eq(run_M)]
        with m.Else():
            m.d.comb += [new_S.eq(run_S), new_M.eq(run_M)]

        bank_M = [Signal(signed(mw), name=f"bank{b}_M") for b in range(2)]
        bank_S = [Signal(sw, name=f"bank{b}_S") for b in range(2)]
        bank_bad = [Signal(name=f"bank{b}_bad") for b in range(2)]
        bank_len = [Signal(lw, name=f"bank{b}_len") for b in range(2)]

        consume = v4 & fadv
        m.d.comb += eor.eq(last4 | (widx == p.max_len - 1))
        take_m4 = consume & ~eor & keep4 & (~started | up)        # run_M becomes m4
        restart = consume & eor                                   # run_M becomes 0
        with m.If(fadv):
            m.d.sync += [
                d_up.eq(Mux(take_m4, m3 - m4, Mux(restart, m3, m3 - run_M))),
                d_dn.eq(Mux(take_m4, m4 - m3, Mux(restart, -m3, run_M - m3))),
            ]
        m.d.comb += [wp.addr.eq(Cat(widx, wbank)), wp.data.eq(Cat(y4, keep4, mask4)),
                     wp.en.eq(consume)]
        with m.If(consume):
            with m.If(eor):
                m.d.sync += [widx.eq(0), wbank.eq(~wbank), started.eq(0), run_bad.eq(0),
                             run_S.eq(0), run_M.eq(0)]
                for b in range(2):
                    with m.If(wbank == b):
                        m.d.sync += [bank_M[b].eq(new_M), bank_S[b].eq(new_S),
                                     bank_bad[b].eq(run_bad | bad4), bank_len[b].eq(widx)]
                m.d.comb += set_full.eq(Mux(wbank, 0b10, 0b01))
            with m.Else():
                m.d.sync += [widx.eq(widx + 1), started.eq(started | keep4),
                             run_bad.eq(run_bad | bad4), run_S.eq(new_S), run_M.eq(new_M)]

        # ---------------------------------------------------------- back (pass 2)
        adv = Signal()
        m.d.comb += adv.eq(~self.o.valid | self.o.ready)
        row_M = Signal(signed(mw))
        row_lS = Signal(unsigned(sw.bit_length() + F + 1))
        row_bad = Signal()
        row_len = Signal(lw)

        # log2 of each finished row's sum, in two steps, while the other half streams out
        lbank = Signal()
        lsdone = Signal(2)
        set_ls = Signal(2)
        m.d.sync += lsdone.eq((lsdone | set_ls) & ~clr_full)
        bank_lS = [Signal(unsigned(len(row_lS)), name=f"bank{b}_lS") for b in range(2)]
        cur_S = Mux(lbank, bank_S[1], bank_S[0])
        pos = lod(m, cur_S)
        sh = Signal(range(sw + 1))
        m.d.comb += sh.eq(sw - 1 - pos)
        l_norm = Signal(sw)
        l_pos = Signal(len(pos))
        l_busy = Signal()
        lg = pwl(m, l_norm[sw - 1 - W:sw - 1], W, F, t_log)
        lS = Signal(unsigned(len(row_lS)))
        m.d.comb += lS.eq(Cat(Const(0, F), l_pos - W) + lg)
        with m.If(~l_busy):
            with m.If(full.bit_select(lbank, 1) & ~lsdone.bit_select(lbank, 1)):
                m.d.sync += [l_norm.eq(cur_S << sh), l_pos.eq(pos), l_busy.eq(1)]
        with m.Else():
            for b in range(2):
                with m.If(lbank == b):
                    m.d.sync += bank_lS[b].eq(lS)
            m.d.comb += set_ls.eq(Mux(lbank, 0b10, 0b01))
            m.d.sync += [l_busy.eq(0), lbank.eq(~lbank)]

        r_last = ridx == row_len
        issue = streaming & adv
        m.d.comb += [rp.addr.eq(Cat(ridx, rbank)), rp.en.eq(adv)]
        r1v, r1last = Signal(), Signal()
        with m.If(adv):
            m.d.sync += [r1v.eq(issue), r1last.eq(r_last)]
            with m.If(~streaming & lsdone.bit_select(rbank, 1)):
                m.d.sync += [streaming.eq(1), ridx.eq(0),
                             row_M.eq(Mux(rbank, bank_M[1], bank_M[0])),
                             row_lS.eq(Mux(rbank, bank_lS[1], bank_lS[0])),
                             row_bad.eq(Mux(rbank, bank_bad[1], bank_bad[0])),
                             row_len.eq(Mux(rbank, bank_len[1], bank_len[0]))]
            with m.Elif(streaming):
                with m.If(r_last):
                    m.d.sync += [streaming.eq(0), rbank.eq(~rbank)]
                    m.d.comb += clr_full.eq(Mux(rbank, 0b10, 0b01))
                with m.Else():
                    m.d.sync += ridx.eq(ridx + 1)

        # R1: memory word available; z = y - M - log2(sum), clamped to <= 0
        word = rp.data
        y_r = word[:yw].as_signed()
        keep_r, mask_r = word[yw], word[yw + 1]
        z = Signal(signed(yw + len(row_lS) + 2))
        m.d.comb += z.eq(y_r - (row_M << F) - row_lS)
        zc = Signal(signed(len(z)))
        m.d.comb += zc.eq(Mux(z > 0, 0, z))
        r2v, r2last, r2keep, r2mask, r2bad = Signal(), Signal(), Signal(), Signal(), Signal()
        r2z = Signal(signed(len(z)))
        with m.If(adv):
            m.d.sync += [r2v.eq(r1v), r2last.eq(r1last), r2keep.eq(keep_r), r2mask.eq(mask_r),
                         r2bad.eq(row_bad), r2z.eq(zc)]

        # R2: 2**fraction
        pm = pwl(m, r2z[:F], F, W, t_pow)
        r3v, r3last, r3keep, r3mask, r3bad = Signal(), Signal(), Signal(), Signal(), Signal()
        r3m = Signal(W + 1)
        r3e = Signal(signed(len(z) - F + 2))
        with m.If(adv):
            m.d.sync += [r3v.eq(r2v), r3last.eq(r2last), r3keep.eq(r2keep), r3mask.eq(r2mask),
                         r3bad.eq(r2bad), r3m.eq(pm), r3e.eq((r2z >> F) - W)]

        # R3: normalise
        norm, e_n = bf16_normalize(m, r3m, r3e)
        r4v, r4last, r4keep, r4mask, r4bad = Signal(), Signal(), Signal(), Signal(), Signal()
        r4norm = Signal(len(norm))
        r4e = Signal(signed(len(e_n)))
        with m.If(adv):
            m.d.sync += [r4v.eq(r3v), r4last.eq(r3last), r4keep.eq(r3keep), r4mask.eq(r3mask),
                         r4bad.eq(r3bad), r4norm.eq(norm), r4e.eq(e_n)]

        # R4: round to nearest even, pack, output register
        rounded = bf16_pack(m, r4norm, r4e, Const(0, 1))
        res = Mux(r4bad, Mux(r4mask, 0x7FC0, 0), Mux(r4keep, rounded, 0))
        with m.If(adv):
            m.d.sync += [self.o.valid.eq(r4v), self.o.payload.data.eq(res),
                         self.o.payload.last.eq(r4last)]
        return m


UNIT = Unit(name="softmax", params=SoftmaxParams, presets=PRESETS, component=Softmax, golden=softmax,
            summary="log2 shift-and-subtract softmax with mask, bf16 rows in/out, 1 element/cycle")
