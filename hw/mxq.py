"""MX-OP activation quantizer (OPAL): bf16 element stream in, MX-OP element beats out."""

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from sim.mxq import LATENCY, PRESETS, MXQParams, mxq

from . import numerics as hn
from .common import BankReader, PingPong, Pipeline, Unit

__all__ = ["MXQ", "mxq_input_layout", "mxq_element_layout", "mxq_output_layout", "UNIT"]


def mxq_input_layout(params):
    """One input beat: ``x[l]``, the next bf16 element of lane ``l``; ``bits``, the block's
    inlier width (read with the block's first element); ``last``, end of block."""
    return data.StructLayout({
        "x": data.ArrayLayout(unsigned(16), params.lanes),
        "bits": unsigned(params.bits_width),
        "last": unsigned(1),
    })


def mxq_element_layout(params):
    """One quantized element of one lane.

    q : signed(bits)  inlier integer (``params.bits`` wide, the block's width sign-extended);
                      0 at outlier positions
    outlier : 1       this position is an outlier
    value : 16        the outlier's bf16 pattern (after DAZ); 0 for inliers
    exp : 8           the block's shared biased exponent E (scale ``2**(E - 127 - (n - 2))``
                      with ``n`` the beat's ``bits``)
    """
    return data.StructLayout({
        "q": signed(params.bits),
        "outlier": unsigned(1),
        "value": unsigned(16),
        "exp": unsigned(8),
    })


def mxq_output_layout(params):
    """One output beat: an element of every lane, its index in the block, end of block, and
    the block's inlier width ``bits``."""
    return data.StructLayout({
        "lane": data.ArrayLayout(mxq_element_layout(params), params.lanes),
        "index": unsigned(params.index_width),
        "last": unsigned(1),
        "bits": unsigned(params.bits_width),
    })


class MXQ(wiring.Component):
    """Quantize bf16 blocks into MX-OP (shared exponent, n-bit inliers, k bf16 outliers).

    Consecutive input beats form one block per lane; a block ends at a beat with ``last``
    set or after ``block`` beats, whichever comes first. Numerics are ``sim.mxop``
    (docs/numerics.md, MX-OP): DAZ on input; outliers are the k largest magnitude patterns,
    ties to the lower index; the shared exponent is the largest inlier's; inliers round to
    nearest even and saturate at ``2**(n-1) - 1``. A block of ``lp < block`` elements is
    encoded exactly as the full block with zeros appended (``sim.mxq.mxq``): its outliers are
    the k largest among the real elements and the implicit zeros, so when ``lp <= k`` every
    real element is an outlier and E = 0.

    While a block streams in, each lane keeps its ``outliers + 1`` largest magnitudes in a
    sorted register list and the block is written into one bank of a two-bank buffer; the
    other bank streams out quantized, so a new block enters while the previous one leaves.

    Parameters
    ----------
    params : MXQParams

    Members
    -------
    i : In(stream.Signature(mxq_input_layout(params)))
        bf16 elements, one per lane per beat. ``bits`` (read with a block's first element)
        is that block's inlier width ``n``; values outside ``2..params.bits`` are clamped
        into it. ``last`` ends the block early. Ready is low only while both banks hold
        blocks not yet read out (the output is stalled).
    o : Out(stream.Signature(mxq_output_layout(params)))
        One beat per input element, in input order, with the block's exponent, outlier
        flags and inlier width; ``last`` on the block's final element.

    Throughput: one element per lane per cycle, input and output at once: a block of ``lp``
    elements takes ``lp`` cycles in steady state (``block`` cycles per full block). Latency
    (no stalls): the block's first beat is valid ``sim.mxq.LATENCY`` (8) cycles after its
    last element was accepted, ``lp + 7`` after its first. Backpressure: the output pipeline
    holds while ``o`` is stalled; the input keeps filling the free bank.
    """

    def __init__(self, params):
        if not isinstance(params, MXQParams):
            raise TypeError(f"params must be MXQParams, not {params!r}")
        self.params = params
        super().__init__({
            "i": In(stream.Signature(mxq_input_layout(params))),
            "o": Out(stream.Signature(mxq_output_layout(params))),
        })

    def elaborate(self, platform):
        p = self.params
        m = Module()
        iw, lanes, k = p.index_width, p.lanes, p.outliers
        meta_layout = data.StructLayout({
            "idx": data.ArrayLayout(unsigned(iw), max(k, 1)),
            "val": data.ArrayLayout(unsigned(1), max(k, 1)),
            "exp": unsigned(8),
        })

        mem = memory.Memory(shape=unsigned(16 * lanes), depth=2 << iw, init=[])
        m.submodules.buf = mem
        wp = mem.write_port()
        rp = mem.read_port(domain="sync")
        pp = PingPong(m, name="buf")
        bank_bits = [Signal(p.bits_width, name=f"bank{b}_bits") for b in range(2)]
        bank_len = [Signal(iw, name=f"bank{b}_last") for b in range(2)]       # last index
        bank_meta = [[Signal(meta_layout, name=f"l{lane}_bank{b}") for b in range(2)]
                     for lane in range(lanes)]

        # ---------------------------------------------------------- write side
        # w1: the input register (DAZ, clamped width); then the buffer write and the
        # insertion of each element into its lane's sorted list of the k + 1 largest keys
        wpipe = Pipeline(m, self.i.valid, name="w")
        m.d.comb += self.i.ready.eq(wpipe.ce)
        bits_in = self.i.payload.bits
        w1 = wpipe.stage(
            x=Cat(*(hn.daz(self.i.payload.x[lane]) for lane in range(lanes))),
            last=self.i.payload.last,
            bits=Mux(bits_in < 2, 2, Mux(bits_in > p.bits, p.bits, bits_in))[:p.bits_width])
        m.d.comb += wpipe.ce.eq(~w1.valid | pp.can_write)
        fire = w1.valid & pp.can_write
        widx = Signal(iw)
        eob = w1.last | (widx == p.block - 1)
        bits_reg = Signal(p.bits_width)
        m.d.comb += [wp.addr.eq(Cat(widx, pp.wbank)), wp.data.eq(w1.x), wp.en.eq(fire)]
        with m.If(fire):
            m.d.sync += widx.eq(Mux(eob, 0, widx + 1))
            with m.If(widx == 0):
                m.d.sync += bits_reg.eq(w1.bits)
            with m.If(eob):
                pp.write_done()
                for b in range(2):
                    with m.If(pp.wbank == b):
                        m.d.sync += [bank_bits[b].eq(Mux(widx == 0, w1.bits, bits_reg)),
                                     bank_len[b].eq(widx)]

        for lane in range(lanes):
            key = w1.x[16 * lane:16 * lane + 15]          # magnitude bits (bf16 rule 5)
            keys = [Signal(15, name=f"l{lane}_key{j}") for j in range(k + 1)]
            idxs = [Signal(iw, name=f"l{lane}_idx{j}") for j in range(k + 1)]
            vals = [Signal(name=f"l{lane}_vld{j}") for j in range(k + 1)]
            # slot j takes the new element if it beats slot j's (later indices lose ties),
            # or slot j - 1's entry if the new element beats that one too
            gt = [~vals[j] | (key > keys[j]) for j in range(k + 1)]
            new = []
            for j in range(k + 1):
                above = gt[j - 1] if j else Const(0)
                new.append([Mux(gt[j], Mux(above, r[j - 1] if j else 0, v), r[j])
                            for r, v in ((keys, key), (idxs, widx), (vals, 1))])
            with m.If(fire):
                with m.If(eob):
                    m.d.sync += [v.eq(0) for v in vals]
                    for b in range(2):
                        meta = bank_meta[lane][b]
                        with m.If(pp.wbank == b):
                            # E: the (k + 1)-th largest key's exponent field (255 for Inf
                            # and NaN); an empty slot k is an implicit zero (lp <= k)
                            m.d.sync += meta.exp.eq(Mux(new[k][2], new[k][0][7:15], 0))
                            for j in range(k):
                                m.d.sync += [meta.idx[j].eq(new[j][1]),
                                             meta.val[j].eq(new[j][2])]
                with m.Else():
                    for j in range(k + 1):
                        m.d.sync += [keys[j].eq(new[j][0]), idxs[j].eq(new[j][1]),
                                     vals[j].eq(new[j][2])]

        # ---------------------------------------------------------- read side
        # issue: address, block flags; r1: the RAM's output; r2: its register; r3: shift
        # amount, zero; r4: shifted significand and rounding bit; r5: rounded and saturated
        # magnitude; then ``o``
        rpipe = Pipeline(m, pp.can_read, name="r")
        rd = BankReader(m, pp, rp, go=pp.can_read, ce=rpipe.ce, last_index=bank_len)
        ridx = rd.index

        n = Signal(p.bits_width)
        m.d.comb += n.eq(Mux(pp.rbank, bank_bits[1], bank_bits[0]))
        qmax = Array(Const((1 << (min(max(b, 2), p.bits) - 1)) - 1, unsigned(p.bits - 1))
                     for b in range(1 << p.bits_width))[n]
        fields = {"index": ridx, "last": rd.is_last, "bits": n, "qmax": qmax}
        for lane in range(lanes):
            meta = Mux(pp.rbank, bank_meta[lane][1].as_value(),
                       bank_meta[lane][0].as_value())
            meta = meta_layout(meta)
            hit = Const(0)
            for j in range(k):
                hit = hit | (meta.val[j] & (meta.idx[j] == ridx))
            fields.update({f"out{lane}": hit, f"exp{lane}": meta.exp,
                           f"eb{lane}": meta.exp + 9 - n,
                           f"ez{lane}": (meta.exp == 0) | (meta.exp == 0xFF)})
        rpipe.stage(**fields)
        # the block RAM's output goes straight into a register (its clock-to-out is long)
        s1 = rpipe.stage(word=rp.data)

        # r3: sh = E - Ex + 9 - n; an inlier has 1 <= sh; sh >= 9 rounds to 0; outliers,
        # zeros and blocks with E = 0 or 255 give q = 0 (sim.mxop.quantize_inliers)
        fields = {}
        for lane in range(lanes):
            x = hn.unpack(s1.word[16 * lane:16 * lane + 16])
            sh = Signal(signed(11), name=f"l{lane}_sh")
            m.d.comb += sh.eq(getattr(s1, f"eb{lane}") - x.exp)
            fields.update({
                f"x{lane}": x.bits, f"sh{lane}": sh[:4],
                f"zero{lane}": (x.zero | getattr(s1, f"ez{lane}") | getattr(s1, f"out{lane}")
                                | (sh < 1) | (sh > 8)),
            })
        s2 = rpipe.stage(**fields, drop=["word"] + [f"{f}{lane}" for lane in range(lanes)
                                                    for f in ("eb", "ez")])

        # r4: |q| before rounding and the RNE increment
        fields = {}
        for lane in range(lanes):
            x = hn.unpack(getattr(s2, f"x{lane}"))
            sh = getattr(s2, f"sh{lane}")
            shifted = Signal(8, name=f"l{lane}_shifted")
            m.d.comb += shifted.eq(x.mant >> sh)
            # sh is 1..8 where it matters (else ``zero``)
            below = Array(Const(((1 << (s - 1)) - 1) & 0xFF if s else 0, 8)
                          for s in range(16))[sh]
            half = Array(Const((1 << (s - 1)) & 0xFF if s else 0, 8) for s in range(16))[sh]
            rnd = (x.mant & half) != 0
            sticky = (x.mant & below) != 0
            fields.update({f"shifted{lane}": shifted,
                           f"up{lane}": rnd & (sticky | shifted[0])})
        s3 = rpipe.stage(**fields, drop=[f"sh{lane}" for lane in range(lanes)])

        # r5: saturate (|q| reaches 2**(n-1) only by rounding up from qmax)
        fields = {}
        for lane in range(lanes):
            shifted = getattr(s3, f"shifted{lane}")
            up = getattr(s3, f"up{lane}") & (shifted != s3.qmax)
            fields[f"mag{lane}"] = (shifted + up)[:p.bits - 1]
        s4 = rpipe.stage(**fields, drop=[f"{f}{lane}" for lane in range(lanes)
                                         for f in ("shifted", "up")])

        # output register: sign, outlier value
        lane_out = Signal(data.ArrayLayout(mxq_element_layout(p), lanes))
        for lane, el in enumerate(lane_out):
            x = hn.unpack(getattr(s4, f"x{lane}"))
            mag = getattr(s4, f"mag{lane}")
            out = getattr(s4, f"out{lane}")
            m.d.comb += [el.q.eq(Mux(getattr(s4, f"zero{lane}"), 0, Mux(x.sign, -mag, mag))),
                         el.outlier.eq(out), el.value.eq(Mux(out, x.bits, 0)),
                         el.exp.eq(getattr(s4, f"exp{lane}"))]
        rpipe.drive(self.o, lane=lane_out, index=s4.index, last=s4.last, bits=s4.bits)
        assert rpipe.depth == LATENCY - 2      # w1 and the bank switch come first
        return m


UNIT = Unit(name="mxq", params=MXQParams, presets=PRESETS, component=MXQ, golden=mxq,
            summary="bf16 blocks -> MX-OP (shared exponent, n-bit inliers, k bf16 outliers)")
