"""bf16 x bf16 dot-product array: the baseline the mixed array's area is compared against."""

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from sim.bf16_array import PRESETS, BF16ArrayParams, dot

from .common import Unit
from .numerics import round_fixed as round_fixed_bf16

__all__ = ["BF16Array", "bf16_array_input_layout", "bf16_array_output_layout", "bf16_mul",
           "bf16_add", "UNIT"]

NAN = 0x7FC0


def bf16_array_input_layout(params):
    """One input beat: ``width`` bf16 elements of x (broadcast), ``width`` of each lane's w.

    x : 16 x width          bf16 patterns of the vector chunk
    w : (16 x width) x lanes bf16 patterns of each lane's column chunk
    last : 1                last beat of the vector
    """
    return data.StructLayout({
        "x": data.ArrayLayout(unsigned(16), params.width),
        "w": data.ArrayLayout(data.ArrayLayout(unsigned(16), params.width), params.lanes),
        "last": unsigned(1),
    })


def bf16_array_output_layout(params):
    """One output beat: the bf16 dot product of every lane."""
    return data.StructLayout({"value": data.ArrayLayout(unsigned(16), params.lanes)})


def _unpack(m, x):
    e = x[7:15]
    zero = e == 0                                   # DAZ
    inf = (e == 255) & (x[:7] == 0)
    nan = (e == 255) & (x[:7] != 0)
    mant = Signal(8)
    m.d.comb += mant.eq(Mux(zero, 0, Cat(x[:7], Const(1, 1))))
    return x[15], e, mant, zero, inf, nan


def bf16_mul(m, a, b):
    """bf16 product of 16-bit values ``a``, ``b``: one RNE rounding (sim.bf16_array.mul)."""
    sa, ea, ma, za, ia, na = _unpack(m, a)
    sb, eb, mb, zb, ib, nb = _unpack(m, b)
    neg = sa ^ sb
    prod = Signal(16)
    m.d.comb += prod.eq(ma * mb)
    e = Signal(signed(11))
    m.d.comb += e.eq(ea + eb - 268)
    res = round_fixed_bf16(m, prod, neg, e)
    out = Signal(16)
    inf = ia | ib
    with m.If(na | nb | (inf & (za | zb))):
        m.d.comb += out.eq(NAN)
    with m.Elif(inf):
        m.d.comb += out.eq(Cat(Const(0x7F80, 15), neg))
    with m.Else():
        m.d.comb += out.eq(res)
    return out


def bf16_add(m, a, b):
    """bf16 sum of ``a``, ``b``: three guard bits and a sticky bit, one RNE rounding."""
    sa, ea, ma, za, ia, na = _unpack(m, a)
    sb, eb, mb, zb, ib, nb = _unpack(m, b)
    big_a = a[:15] >= b[:15]
    s1 = Mux(big_a, sa, sb)
    e1 = Signal(8)
    e2 = Signal(8)
    m1 = Signal(8)
    m2 = Signal(8)
    m.d.comb += [e1.eq(Mux(big_a, ea, eb)), e2.eq(Mux(big_a, eb, ea)),
                 m1.eq(Mux(big_a, ma, mb)), m2.eq(Mux(big_a, mb, ma))]
    d = Signal(4)
    diff = Signal(9)
    m.d.comb += diff.eq(e1 - e2)
    m.d.comb += d.eq(Mux(diff > 15, 15, diff[:4]))
    g2 = Signal(11)
    m.d.comb += g2.eq(m2 << 3)
    sh = Signal(11)
    m.d.comb += sh.eq(g2 >> d)
    lost = Signal()
    m.d.comb += lost.eq((g2 & ((Const(1, 16) << d) - 1)[:11]) != 0)
    sub = sa ^ sb
    s = Signal(12)
    m.d.comb += s.eq(Mux(sub, (m1 << 3) - (sh | lost), (m1 << 3) + (sh | lost)))
    e = Signal(signed(11))
    m.d.comb += e.eq(e1 - 137)
    res = round_fixed_bf16(m, s, s1, e)
    out = Signal(16)
    with m.If(na | nb | (ia & ib & sub)):
        m.d.comb += out.eq(NAN)
    with m.Elif(ia):
        m.d.comb += out.eq(a)
    with m.Elif(ib):
        m.d.comb += out.eq(b)
    with m.Else():
        m.d.comb += out.eq(res)
    return out


class BF16Array(wiring.Component):
    """Compute ``lanes`` bf16 dot products at a time with ``width`` bf16 multipliers per lane.

    Numerics are ``sim.bf16_array`` (docs/numerics.md): DAZ inputs; each product rounded to
    bf16 (RNE, FTZ, overflow to Inf); each beat's products summed by a balanced tree of bf16
    adders, then accumulated in beat order, every addition rounded once (RNE); exact zero is
    +0; NaN is ``0x7FC0``.

    Parameters
    ----------
    params : BF16ArrayParams

    Members
    -------
    i : In(stream.Signature(bf16_array_input_layout(params)))
        Chunks of ``width`` elements; ``last`` ends a vector. Ready follows the output: low
        only while a finished result waits for the output.
    o : Out(stream.Signature(bf16_array_output_layout(params)))
        One beat per vector with every lane's result.

    Throughput: one beat (``lanes * width`` multiplies) per cycle. Latency: the result of a
    vector is valid the cycle after its last beat is accepted.
    """

    def __init__(self, params):
        if not isinstance(params, BF16ArrayParams):
            raise TypeError(f"params must be BF16ArrayParams, not {params!r}")
        self.params = params
        super().__init__({
            "i": In(stream.Signature(bf16_array_input_layout(params))),
            "o": Out(stream.Signature(bf16_array_output_layout(params))),
        })

    def elaborate(self, platform):
        p = self.params
        m = Module()
        pin = self.i.payload
        m.d.comb += self.i.ready.eq(~self.o.valid | self.o.ready)
        fire = self.i.valid & self.i.ready
        first = Signal(init=1)
        with m.If(fire):
            m.d.sync += first.eq(pin.last)
        with m.If(self.o.ready):
            m.d.sync += self.o.valid.eq(0)
        with m.If(fire & pin.last):
            m.d.sync += self.o.valid.eq(1)
        for l in range(p.lanes):
            level = [bf16_mul(m, pin.x[j], pin.w[l][j]) for j in range(p.width)]
            while len(level) > 1:
                level = [bf16_add(m, level[j], level[j + 1]) for j in range(0, len(level), 2)]
            acc = Signal(16, name=f"acc{l}")
            nxt = Mux(first, level[0], bf16_add(m, acc, level[0]))
            with m.If(fire):
                m.d.sync += acc.eq(nxt)
                with m.If(pin.last):
                    m.d.sync += self.o.payload.value[l].eq(nxt)
        return m


UNIT = Unit(name="bf16_array", params=BF16ArrayParams, presets=PRESETS, component=BF16Array, golden=dot,
            summary="bf16 x bf16 dot-product array (area baseline for mixed_array)")
