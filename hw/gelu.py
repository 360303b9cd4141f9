"""Integer GELU: bf16 element stream in, bf16 element stream out (``sim.gelu``)."""

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from sim.gelu import PRESETS, GeluParams, gelu_table

from .common import Unit

__all__ = ["Gelu", "gelu_layout", "bf16_round", "bf16_normalize", "bf16_pack", "lod",
           "UNIT"]


def gelu_layout(params):
    """One beat: a bf16 element and a ``last`` flag carried through unchanged."""
    return data.StructLayout({"data": unsigned(16), "last": unsigned(1)})


def _lod_tree(v):
    """(any bit set, position of the leading one) of ``v`` by a balanced tree of muxes."""
    w = len(v)
    if w == 1:
        return v[0], Const(0, 1)
    half = 1 << ((w - 1).bit_length() - 1)
    any_lo, pos_lo = _lod_tree(v[:half])
    any_hi, pos_hi = _lod_tree(v[half:])
    return any_lo | any_hi, Mux(any_hi, pos_hi + half, pos_lo)


def lod(m, mag):
    """Leading-one position of unsigned ``mag`` (0 when ``mag`` is 0), as a comb Signal."""
    w = len(mag)
    pos = Signal(range(max(w, 2)), name="lod")
    m.d.comb += pos.eq(_lod_tree(mag)[1])
    return pos


def bf16_normalize(m, mag, exp_lsb):
    """First half of ``bf16_round``: ``(norm, e)``, ``mag`` shifted so its leading one is the
    top bit of ``norm`` (0 stays 0) and ``e = exp_lsb + 127 + leading-one position``
    (signed). Combinational; register the pair to split the rounding over two stages."""
    w = len(mag)
    if w < 9:                                   # pad so there is always a guard bit
        pad = 9 - w
        mag = Cat(Const(0, pad), mag)
        exp_lsb = exp_lsb - pad
        w = 9
    pos = lod(m, mag)
    lz = Signal(range(max(w, 2)))
    m.d.comb += lz.eq(w - 1 - pos)
    norm = Signal(w)
    m.d.comb += norm.eq(mag << lz)
    e = Signal(signed(max(len(exp_lsb), len(pos) + 1) + 3))
    m.d.comb += e.eq(exp_lsb + 127 + pos)
    return norm, e


def bf16_pack(m, norm, e, sign):
    """Second half of ``bf16_round``: RNE of ``norm`` to 8 bits, exponent range, packing."""
    w = len(norm)
    top = norm[w - 8:w]
    guard = norm[w - 9]
    sticky = norm[:w - 9].any() if w > 9 else Const(0)
    q = Signal(9)
    m.d.comb += q.eq(top + (guard & (sticky | top[0])))
    carry = q[8]
    frac = Mux(carry, 0, q[0:7])
    # exponent tests for both outcomes of the rounding carry, in parallel with the rounding
    e1 = Signal(signed(len(e) + 1))
    m.d.comb += e1.eq(e + 1)
    exp = Mux(carry, e1[0:8], e[0:8])
    ovf = Mux(carry, e >= 254, e >= 255)
    unf = Mux(carry, e <= -1, e <= 0)
    out = Signal(16)
    with m.If(~norm[w - 1]):
        m.d.comb += out.eq(0)
    with m.Elif(ovf):
        m.d.comb += out.eq(Cat(Const(0, 7), Const(0xFF, 8), sign))
    with m.Elif(unf):
        m.d.comb += out.eq(Cat(Const(0, 15), sign))
    with m.Else():
        m.d.comb += out.eq(Cat(frac, exp, sign))
    return out


def bf16_round(m, mag, sign, exp_lsb):
    """bf16 pattern of ``(-1)**sign * mag * 2**exp_lsb``, as ``sim.bf16.round_fixed``.

    RNE to 8 significant bits, then biased exponent >= 255 -> Inf, <= 0 -> zero of the sign;
    ``mag == 0`` -> +0. ``mag`` unsigned, ``exp_lsb`` a signed Value. Combinational; shared by
    the nonlinear units (softmax, layernorm, gelu), which split it over two pipeline stages
    with ``bf16_normalize`` and ``bf16_pack``.
    """
    norm, e = bf16_normalize(m, mag, exp_lsb)
    return bf16_pack(m, norm, e, sign)


class Gelu(wiring.Component):
    """Apply GELU(x) = x * Phi(x) to a bf16 stream, one element per cycle.

    Numerics are ``sim.gelu`` (docs/numerics.md, gelu): DAZ; ``|x|`` truncated to fixed point
    with ``frac_bits`` fraction bits indexes a ``segments``-entry piecewise-linear table of
    Phi (slope product floored, saturated at 1); ``q = Phi`` or ``1 - Phi`` by sign, 1 or 0 beyond
    ``2**clip_log2``; the output ``x * q`` is an exact 8 x (``coef_bits`` + 1)-bit product
    rounded once to bf16 (RNE, FTZ, exact zero -> +0). NaN -> 0x7FC0, +Inf -> +Inf,
    -Inf -> +0.

    Parameters
    ----------
    params : GeluParams

    Members
    -------
    i : In(stream.Signature(gelu_layout(params)))
        bf16 elements; ``last`` is passed through (framing for the consumer).
    o : Out(stream.Signature(gelu_layout(params)))
        GELU of each element, in order.

    Throughput: one element per cycle. Latency: the result is valid 5 cycles after the input
    was accepted. Backpressure: a pipeline that holds while ``o`` is stalled
    (``i.ready = ~o.valid | o.ready``).
    """

    def __init__(self, params):
        if not isinstance(params, GeluParams):
            raise TypeError(f"params must be GeluParams, not {params!r}")
        self.params = params
        super().__init__({
            "i": In(stream.Signature(gelu_layout(params))),
            "o": Out(stream.Signature(gelu_layout(params))),
        })

    def elaborate(self, platform):
        p = self.params
        m = Module()
        Q, F = p.coef_bits, p.frac_bits
        one = 1 << Q
        adv = Signal()
        m.d.comb += [adv.eq(~self.o.valid | self.o.ready), self.i.ready.eq(adv)]

        # stage 1: decode, DAZ, fixed-point |x|
        x = self.i.payload.data
        ex, fr, sg = x[7:15], x[0:7], x[15]
        v1 = Signal()
        last1, neg1, big1 = Signal(), Signal(), Signal()
        spec1 = Signal(2)                       # 0 normal, 1 NaN, 2 +Inf, 3 zero out
        mag1 = Signal(8)
        ex1 = Signal(8)
        a1 = Signal(p.a_width)
        rs = Signal(9)
        m.d.comb += rs.eq(126 + p.clip_log2 - ex + 8)
        full = Cat(Const(0, p.a_width), fr, Const(1, 1))
        with m.If(adv):
            m.d.sync += [
                v1.eq(self.i.valid), last1.eq(self.i.payload.last), neg1.eq(sg),
                ex1.eq(ex),
                mag1.eq(Mux(ex == 0, 0, Cat(fr, Const(1, 1)))),
                big1.eq(ex >= 127 + p.clip_log2),
                a1.eq(full >> rs),
                spec1.eq(Mux(ex == 0xFF, Mux(fr != 0, 1, Mux(sg, 3, 2)), 0)),
            ]

        # stage 2: Phi from the table, q
        C, D = gelu_table(p)
        j = a1[p.r_width:]
        r = a1[:p.r_width]
        c_rom = Array([Const(c, unsigned(Q + 1)) for c in C])
        d_rom = Array([Const(d, unsigned(max(max(D).bit_length(), 1))) for d in D])
        v2a, last2a, neg2a, big2a = Signal(), Signal(), Signal(), Signal()
        spec2a = Signal(2)
        mag2a, ex2a = Signal(8), Signal(8)
        c2a = Signal(Q + 1)
        dr2a = Signal(len(d_rom[0]) + p.r_width)
        with m.If(adv):
            m.d.sync += [v2a.eq(v1), last2a.eq(last1), neg2a.eq(neg1), big2a.eq(big1),
                         spec2a.eq(spec1), mag2a.eq(mag1), ex2a.eq(ex1)]
            if p.seg_bits:
                m.d.sync += [c2a.eq(c_rom[j]), dr2a.eq(d_rom[j] * r)]
            else:
                m.d.sync += [c2a.eq(c_rom[0]), dr2a.eq(d_rom[0] * r)]
        phi_raw = Signal(Q + 2)
        m.d.comb += phi_raw.eq(c2a + (dr2a >> F))
        phi = Mux(phi_raw > one, one, phi_raw)                      # saturate at 1
        v2, last2, neg2 = Signal(), Signal(), Signal()
        spec2 = Signal(2)
        mag2, ex2 = Signal(8), Signal(8)
        q2 = Signal(Q + 1)
        with m.If(adv):
            m.d.sync += [
                v2.eq(v2a), last2.eq(last2a), neg2.eq(neg2a), spec2.eq(spec2a), mag2.eq(mag2a),
                ex2.eq(ex2a),
                q2.eq(Mux(big2a, Mux(neg2a, 0, one), Mux(neg2a, one - phi, phi))),
            ]

        # stage 3: exact product
        v3, last3, neg3 = Signal(), Signal(), Signal()
        spec3 = Signal(2)
        ex3 = Signal(8)
        prod3 = Signal(Q + 9)
        with m.If(adv):
            m.d.sync += [v3.eq(v2), last3.eq(last2), neg3.eq(neg2), spec3.eq(spec2),
                         ex3.eq(ex2), prod3.eq(mag2 * q2)]

        # stage 4: normalise (leading one to the top)
        e_lsb = Signal(signed(11))
        m.d.comb += e_lsb.eq(ex3 - 134 - Q)
        norm, e_n = bf16_normalize(m, prod3, e_lsb)
        v4, last4, neg4 = Signal(), Signal(), Signal()
        spec4 = Signal(2)
        norm4 = Signal(len(norm))
        e4 = Signal(signed(len(e_n)))
        with m.If(adv):
            m.d.sync += [v4.eq(v3), last4.eq(last3), neg4.eq(neg3), spec4.eq(spec3),
                         norm4.eq(norm), e4.eq(e_n)]

        # stage 5: round to nearest even, pack, output register
        rounded = bf16_pack(m, norm4, e4, neg4)
        res = Mux(spec4 == 1, 0x7FC0, Mux(spec4 == 2, 0x7F80, Mux(spec4 == 3, 0, rounded)))
        with m.If(adv):
            m.d.sync += [self.o.valid.eq(v4), self.o.payload.last.eq(last4),
                         self.o.payload.data.eq(res)]
        return m


UNIT = Unit(name="gelu", params=GeluParams, presets=PRESETS, component=Gelu,
            summary="integer GELU, bf16 in/out, piecewise-linear Phi, 1 element/cycle")
