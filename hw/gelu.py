"""Integer GELU: bf16 element stream in, bf16 element stream out (``sim.gelu``)."""

from amaranth.hdl import Array, Const, Module, Mux, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from sim.gelu import PRESETS, GeluParams, gelu, gelu_table

from . import numerics as hn
from .common import Pipeline, Unit

__all__ = ["Gelu", "gelu_layout", "LATENCY", "UNIT"]

LATENCY = 8     # cycles from an accepted input to its result on ``o`` (no stalls)


def gelu_layout(params):
    """One beat: a bf16 element and a ``last`` flag carried through unchanged."""
    return data.StructLayout({"data": unsigned(16), "last": unsigned(1)})


class Gelu(wiring.Component):
    """Apply GELU(x) = x * Phi(x) to a bf16 stream, one element per cycle.

    Numerics are ``sim.gelu`` (docs/numerics.md, gelu): DAZ; ``|x|`` truncated to fixed point
    with ``frac_bits`` fraction bits indexes a ``segments``-entry piecewise-linear table of
    Phi (slope product floored, saturated at 1); ``q = Phi`` or ``1 - Phi`` by sign, 1 or 0
    beyond ``2**clip_log2``; the output ``x * q`` is an exact 8 x (``coef_bits`` + 1)-bit
    product rounded once to bf16 (RNE, FTZ, exact zero -> +0). NaN -> 0x7FC0, +Inf -> +Inf,
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

    Throughput: one element per cycle. Latency: ``LATENCY`` cycles from an accepted input to
    its valid result. Backpressure: the pipeline holds as a whole while ``o`` is stalled
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
        pipe = Pipeline(m, self.i.valid, name="g", fields={"last": self.i.payload.last})
        m.d.comb += self.i.ready.eq(pipe.ce)

        # 1: decode; |x| in fixed point (the table argument); specials
        x = hn.unpack(self.i.payload.data)
        s1 = pipe.stage(neg=x.sign, ex=x.exp, mant=x.mant,
                        big=x.exp >= 127 + p.clip_log2,
                        a=hn.fix_trunc(m, x.bits, p.clip_log2, F, magnitude=True),
                        spec=Mux(x.finite, 0, Mux(x.nan, 1, Mux(x.sign, 3, 2))))

        # 2: table lookup; 3: the slope product
        C, D = gelu_table(p)
        j = s1.a[p.r_width:] if p.seg_bits else Const(0, 1)
        r = s1.a[:p.r_width]
        c_rom = Array([Const(c, unsigned(Q + 1)) for c in C])
        d_rom = Array([Const(d, unsigned(max(max(D).bit_length(), 1))) for d in D])
        s2 = pipe.stage(c=c_rom[j], d=d_rom[j], r=r, drop=("a",))
        s3 = pipe.stage(dr=s2.d * s2.r, drop=("d", "r"))

        # 4: Phi (saturated at 1), q by sign and range
        phi_raw = s3.c + (s3.dr >> F)
        phi = Mux(phi_raw > one, one, phi_raw)
        s4 = pipe.stage(q=Mux(s3.big, Mux(s3.neg, 0, one), Mux(s3.neg, one - phi, phi))[:Q + 1],
                        drop=("c", "dr", "big"))

        # 5: exact product; 6: its leading zeros; 7: normalized
        s5 = pipe.stage(prod=s4.mant * s4.q, drop=("q", "mant"))
        s6 = pipe.stage(lz=hn.leading_zeros(m, s5.prod))
        w = len(s6.prod)
        s7 = pipe.stage(norm=hn.shift_to_top(m, s6.prod, s6.lz),
                        e=s6.ex - 134 - Q + 126 + w - s6.lz, drop=("prod", "lz"))

        # 8: round to nearest even, pack, output register
        rounded = hn.round_pack(m, s7.norm, s7.e, s7.neg)
        res = Mux(s7.spec == 1, hn.NAN, Mux(s7.spec == 2, hn.POS_INF,
                                             Mux(s7.spec == 3, 0, rounded)))
        pipe.drive(self.o, data=res, last=s7.last)
        assert pipe.depth == LATENCY
        return m


UNIT = Unit(name="gelu", params=GeluParams, presets=PRESETS, component=Gelu, golden=gelu,
            summary="integer GELU, bf16 in/out, piecewise-linear Phi, 1 element/cycle")
