"""Log2-domain softmax (OPAL-style): bf16 score rows in, bf16 probability rows out."""

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from sim.softmax import (LATENCY, PRESETS, ROW_GAP, SoftmaxParams, log2e_const, pwl_table,
                         softmax)

from . import numerics as hn
from .common import BankReader, PingPong, Pipeline, Unit

__all__ = ["Softmax", "softmax_input_layout", "softmax_output_layout", "UNIT"]


def softmax_input_layout(params):
    """One input beat: a bf16 score, its mask bit (1 = keep, 0 = padding), end of row."""
    return data.StructLayout({"data": unsigned(16), "mask": unsigned(1), "last": unsigned(1)})


def softmax_output_layout(params):
    """One output beat: a bf16 probability and end of row."""
    return data.StructLayout({"data": unsigned(16), "last": unsigned(1)})


class _Pwl:
    """A piecewise-linear table (``sim.softmax.pwl_table``) evaluated over two stages, as
    ``sim.softmax.pwl_eval``: ``select`` gives the fields of the first (the segment's
    intercept and its shifted copies of the in-segment offset, each negative copy stored
    complemented with its +1 folded into the intercept), ``total`` those of the second (their
    sum); ``clamp`` is the table's range applied to that sum (combinational). No multiplier.
    """

    def __init__(self, table, in_bits, out_bits, name):
        self.A, self.T, self.lo, self.hi = table
        self.in_bits, self.out_bits, self.name = in_bits, out_bits, name
        self.width = out_bits + 5          # signed; holds every intercept and partial sum
        self.terms = max(len(t) for t in self.T)

    def select(self, u):
        n, w, ib, ob = self.name, self.width, self.in_bits, self.out_bits
        sb = len(self.A).bit_length() - 1
        r = u[:ib - sb]
        r = Cat(Const(0, ob - ib), r) if ob >= ib else r[ib - ob:]
        j = u[ib - sb:ib] if sb else Const(0, 1)
        r = Cat(r, Const(0, w - len(r))).as_signed()
        fields = {f"{n}_a": Array(Const(a + sum(s < 0 for s, _ in t), signed(w))
                                  for a, t in zip(self.A, self.T))[j]}
        for i in range(self.terms):
            options = []
            for t in self.T:
                if i >= len(t):
                    options.append(Const(0, signed(w)))
                    continue
                s, sh = t[i]
                v = ((r << 1) if sh < 0 else (r >> sh))[:w].as_signed()
                options.append(v if s > 0 else ~v)
            fields[f"{n}_t{i}"] = Array(options)[j]
        return fields

    def total(self, stage):
        n = self.name
        parts = [getattr(stage, f"{n}_a")] + [getattr(stage, f"{n}_t{i}")
                                              for i in range(self.terms)]
        while len(parts) > 1:
            parts = [(a + b)[:self.width].as_signed() if b is not None else a
                     for a, b in zip(parts[::2], parts[1::2] + [None])]
        return {f"{n}_sum": parts[0]}, [f"{n}_a"] + [f"{n}_t{i}" for i in range(self.terms)]

    def clamp(self, stage):
        v = getattr(stage, f"{self.name}_sum")
        return Mux(v < self.lo, self.lo, Mux(v > self.hi, self.hi, v))[:self.hi.bit_length()]


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
    written into one bank of a two-bank buffer while its maximum and sum accumulate; then the
    log2 of its sum is computed and the row streams out of that bank while the next row
    enters the other bank, and the row after that may refill a bank behind its read pointer.

    Parameters
    ----------
    params : SoftmaxParams

    Members
    -------
    i : In(stream.Signature(softmax_input_layout(params)))
        Scores with mask bits; ``last`` marks a row's final element. Ready is low while the
        bank to be filled still holds an unread row at or ahead of the write position (the
        output is stalled), and while a row's final score waits for the row two ahead of it
        to leave.
    o : Out(stream.Signature(softmax_output_layout(params)))
        One probability per input element, same order, ``last`` on the row's final element.

    Throughput: one element per cycle, input and output at once. In steady state (no stalls,
    rows of equal length ``L``) a row takes ``sim.softmax.row_cycles(L) = max(L, (L +
    ROW_GAP) / 2)`` cycles (``ROW_GAP`` = 7): ``L`` cycles once ``L >= 7``. Latency (no
    stalls): a row's first probability is valid ``sim.softmax.LATENCY`` (22) cycles after
    its last score was accepted. Backpressure: the output pipeline holds while ``o`` is
    stalled; the input keeps filling the free bank.
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
        lw, yw, sw = p.len_width, p.y_width, p.sum_width
        mw = yw - F + 1                          # signed width of integer parts
        s_max = (1 << sw.bit_length()) - 1       # a shift of S by this much gives 0
        e_max = (1 << (W + 1).bit_length()) - 1  # likewise for e (W + 1 bits)
        pow2 = _Pwl(pwl_table("pow2", F, W, p.pwl_segments, p.pwl_terms), F, W, "pw")
        log2 = _Pwl(pwl_table("log2p1", W, F, p.pwl_segments, p.pwl_terms), W, F, "lg")

        mem = memory.Memory(shape=unsigned(yw + 2), depth=2 << lw, init=[])
        m.submodules.buf = mem
        wp = mem.write_port()
        rp = mem.read_port(domain="sync")
        pp = PingPong(m, name="buf")
        lsdone = Signal(2)                         # the bank's log2(sum) is ready
        set_ls = Signal(2)
        m.d.sync += lsdone.eq((lsdone | set_ls) & ~pp.clearing)
        bank_c = [Signal(signed(mw + 2 + F), name=f"bank{b}_c") for b in range(2)]
        bank_bad = [Signal(name=f"bank{b}_bad") for b in range(2)]
        bank_len = [Signal(lw, name=f"bank{b}_last") for b in range(2)]     # last index

        # ---------------------------------------------------------- front: pass 1
        fpipe = Pipeline(m, self.i.valid, name="f")
        m.d.comb += self.i.ready.eq(fpipe.ce)
        x = hn.unpack(self.i.payload.data)
        msk = self.i.payload.mask
        pos_in = Signal(lw)                        # position of the input in its row
        eor_in = self.i.payload.last | (pos_in == p.max_len - 1)
        with m.If(self.i.valid & fpipe.ce):
            m.d.sync += pos_in.eq(Mux(eor_in, 0, pos_in + 1))

        # f1: fixed point, classification
        s = fpipe.stage(x=hn.fix_trunc(m, x.bits, XI, F), mask=msk,
                        bad=msk & (x.nan | (x.inf & ~x.sign)), keep=msk & x.finite,
                        idx=pos_in, eor=eor_in)
        # f2, f3: y = (x * C) >> log2e_frac, C's set bits as shifted copies, three per add
        c = log2e_const(p.log2e_frac)
        parts = [s.x << b for b in range(c.bit_length()) if c >> b & 1]
        assert len(parts) <= 9, "two levels of three-input adds"
        parts = [sum(parts[i + 1:i + 3], parts[i]) for i in range(0, len(parts), 3)]
        s = fpipe.stage(**{f"xc{i}": v for i, v in enumerate(parts)}, drop=["x"])
        names = [f"xc{i}" for i in range(len(parts))]
        s = fpipe.stage(xs=sum((getattr(s, n) for n in names[1:]), getattr(s, names[0])),
                        drop=names)
        y = Signal(signed(yw), name="y")
        m.d.comb += y.eq(s.xs >> p.log2e_frac)
        ym = y >> F                                # integer part (floor)

        # f4: online maximum M (the loop here), the shifts the sum loop will apply, and the
        # pow2 segment of frac(y). S = (S >> sa) + (e >> ea) covers every case: first kept
        # element (sa >= sw: S = e), a new maximum (sa = m - M), otherwise (ea = M - m);
        # elements not kept add 0.
        run_m = Signal(signed(mw))
        started = Signal()
        run_bad = Signal()
        d_up = Signal(signed(mw + 1))
        d_dn = Signal(signed(mw + 1))
        m.d.comb += [d_up.eq(ym - run_m), d_dn.eq(run_m - ym)]
        first = s.keep & ~started
        up = s.keep & started & (ym > run_m)
        ka, kb = sw.bit_length(), (W + 1).bit_length()
        sa = Mux(first, s_max, Mux(up, Mux(d_up[ka:] != 0, s_max, d_up[:ka]), 0))
        ea = Mux(first | up, 0, Mux(d_dn[kb:] != 0, e_max, d_dn[:kb]))
        m_after = Mux(first | up, ym, run_m)
        with m.If(fpipe.ce & s.valid):
            with m.If(s.eor):
                m.d.sync += [started.eq(0), run_bad.eq(0)]
            with m.Else():
                m.d.sync += [started.eq(started | s.keep), run_bad.eq(run_bad | s.bad),
                             run_m.eq(m_after)]
        s = fpipe.stage(y=y, sa=sa[:ka], ea=ea[:kb], row_m=m_after, any=started | s.keep,
                        row_bad=run_bad | s.bad, **pow2.select(y[:F]),
                        drop=["xs", "bad"])

        # The sum loop would be a barrel shift and an add; instead S = X >> D (floor) with X
        # and D < 16 in registers: S' = (S >> sa) + b is X' = X + (b << k), D' = k = D + sa
        # (floor(floor(X / 2**D) / 2**sa) + b = floor((X + b * 2**k) / 2**k)), then
        # X' >> 16 * (k >> 4), D' = k mod 16 keeps D' < 16 (bits below 2**D are never read).
        # D depends only on the shifts, so it is found here, ahead of X: the loop on X is an
        # add and a choice among a few fixed shifts.
        run_d = Signal(4)
        zap = s.sa >= sw                           # S >> sa = 0: S' = b, D' = 0
        k = Signal(6)                              # k <= 15 + sw - 1 < 64
        m.d.comb += k.eq(run_d + s.sa)
        with m.If(fpipe.ce & s.valid):
            m.d.sync += run_d.eq(Mux(zap, 0, k[:4]))
        # f5: pow2 sum, the placement of the addend; f6: e = pow2(frac(y)), clamped; f7: the
        # addend b = e >> ea (0 if not kept); f8: b << k
        fields, done = pow2.total(s)
        n_renorm = ((15 + sw - 1) >> 4) + 1        # choices of X' >> 16 * (k >> 4)
        s = fpipe.stage(**fields, k=Mux(zap, 0, k), renorm=Mux(zap, n_renorm, k[4:]),
                        d=Mux(zap, 0, k[:4]), drop=done + ["sa"])
        s = fpipe.stage(e=pow2.clamp(s), drop=["pw_sum"])
        prev = s = fpipe.stage(add=Mux(s.keep, s.e >> s.ea, 0), drop=["e", "ea"])
        xw = 14 + 2 * sw                           # X < 2**(k + sw) <= 2**(15 + sw - 1 + sw)
        s = fpipe.stage(b=(s.add << s.k)[:xw], drop=["add", "k"])

        # write: buffer, running sum (the loop here). A row's final element waits until its
        # bank is free; the others may enter a bank behind its read pointer (``lt``: the
        # element's index is below the read pointer, a register, see below).
        lt = Signal()
        behind = pp.can_read & (pp.rbank == pp.wbank) & lt & ~s.eor
        can_write = pp.can_write | behind
        m.d.comb += fpipe.ce.eq(~s.valid | can_write)
        fire = s.valid & can_write
        run_x = Signal(xw)
        x_sum = Signal(xw + 1)
        m.d.comb += x_sum.eq(run_x + s.b)
        x_next = Array([x_sum >> 16 * j for j in range(n_renorm)] + [s.b])[s.renorm][:xw]
        m.d.comb += [wp.addr.eq(Cat(s.idx, pp.wbank)), wp.data.eq(Cat(s.y, s.keep, s.mask)),
                     wp.en.eq(fire)]
        with m.If(fire):
            m.d.sync += run_x.eq(x_next)
            with m.If(s.eor):
                pp.write_done()

        # ---------------------------------------------------------- log2 of each row's sum
        # free-running (one row per cycle at most): l1 the row's totals; l2 S = X >> D; l3
        # its leading zeros; l4 the W bits below the leading one; l5, l6 log2p1; then the
        # bank's constant c = M * 2**F + log2(S) is stored and the bank marked ready.
        lpipe = Pipeline(m, fire & s.eor, name="l")
        m.d.comb += lpipe.ce.eq(1)
        t = lpipe.stage(x=x_next, d=s.d, m=s.row_m, any=s.any, bad=s.row_bad, last=s.idx,
                        bank=pp.wbank)
        # a row with nothing kept: S = 2**W (log2 0, its outputs are all 0 anyway)
        t = lpipe.stage(s=Mux(t.any, (t.x >> t.d)[:sw], 1 << W), drop=["x", "d", "any"])
        t = lpipe.stage(lz=hn.leading_zeros(m, t.s, name="l_lz"))
        norm = Signal(sw, name="l_norm")
        m.d.comb += norm.eq(t.s << t.lz)
        # log2(S) = (p - W) + log2p1(mant), p = sw - 1 - lz the leading one's position
        ci = Signal(signed(mw + 2), name="l_ci")
        m.d.comb += ci.eq(t.m + (sw - 1 - W) - t.lz)
        t = lpipe.stage(mant=norm[sw - 1 - W:sw - 1], ci=ci, drop=["s", "lz", "m"])
        t = lpipe.stage(**log2.select(t.mant), drop=["mant"])
        fields, done = log2.total(t)
        t = lpipe.stage(**fields, drop=done)
        lg = log2.clamp(t)                         # in [0, 2**F): the fraction of c
        for b in range(2):
            with m.If(t.valid & (t.bank == b)):
                m.d.sync += [bank_c[b].eq(Cat(lg[:F], t.ci)), bank_bad[b].eq(t.bad),
                             bank_len[b].eq(t.last)]
        m.d.comb += set_ls.eq(Mux(t.valid, Mux(t.bank, 0b10, 0b01), 0))

        # ---------------------------------------------------------- back: pass 2
        go = pp.can_read & lsdone.bit_select(pp.rbank, 1)
        rpipe = Pipeline(m, go, name="r")
        rd = BankReader(m, pp, rp, go=go, ce=rpipe.ce, last_index=bank_len)
        issue, ridx = rd.issue, rd.index
        # lt = (s.idx < ridx) for the next cycle, from both cases of each side's move (the
        # last stage loads f7's index or holds; ridx steps, restarts at 0 or holds), so the
        # comparisons stay off the path of the front pipeline's clock enable
        m.d.sync += lt.eq(Mux(issue & rd.is_last, 0,
                              Mux(issue, Mux(fpipe.ce, prev.idx <= ridx, s.idx <= ridx),
                                  Mux(fpipe.ce, prev.idx < ridx, lt))))
        rpipe.stage(last=rd.is_last, c=Mux(pp.rbank, bank_c[1], bank_c[0]),
                    bad=Mux(pp.rbank, bank_bad[1], bank_bad[0]))
        # r1: the RAM's output; r2: its register (the block RAM's clock-to-out is long)
        r = rpipe.stage(word=rp.data)
        ry = r.word[:yw].as_signed()
        # r3: z = min(y - c, 0)
        r = rpipe.stage(z=Mux(ry > r.c, 0, ry - r.c)[:yw + 3].as_signed(), keep=r.word[yw],
                        mask=r.word[yw + 1], drop=["word", "c"])
        # r4: pow2 segment of frac(z); r5: its sum; r6: p = pow2(frac(z)) * 2**(z >> F - W)
        # normalized (its leading one is always bit W); r7 rounded (RNE, FTZ) into ``o``
        r = rpipe.stage(zi=r.z >> F, **pow2.select(r.z[:F]), drop=["z"])
        fields, done = pow2.total(r)
        r = rpipe.stage(**fields, drop=done)
        pm = pow2.clamp(r)
        r = rpipe.stage(norm=hn.shift_to_top(m, pm, Const(0, 1), name="r_norm"),
                        e=r.zi + 127, drop=["pw_sum", "zi"])
        rounded = hn.round_pack(m, r.norm, r.e, Const(0, 1), name="r_rnd")
        res = Mux(r.bad, Mux(r.mask, hn.NAN, 0), Mux(r.keep, rounded, 0))
        rpipe.drive(self.o, data=res, last=r.last)
        # the last score's path: front, log2 pipeline, bank flag, back (sim.softmax)
        assert fpipe.depth + lpipe.depth + 1 + rpipe.depth == LATENCY
        assert lpipe.depth + 1 == ROW_GAP
        return m


UNIT = Unit(name="softmax", params=SoftmaxParams, presets=PRESETS, component=Softmax,
            golden=softmax,
            summary="log2 shift-and-subtract softmax with mask, bf16 rows in/out, 1 element/cycle")
