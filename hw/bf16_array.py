"""bf16 x bf16 dot-product array: the baseline the mixed array's area is compared against."""

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from sim.bf16_array import PRESETS, BF16ArrayParams, dot

from . import numerics as hn
from .common import Pipeline, Unit

__all__ = ["BF16Array", "bf16_array_input_layout", "bf16_array_output_layout", "MUL_STAGES",
           "ADD_STAGES", "latency", "UNIT"]

MUL_STAGES = 4      # product | leading zeros | normalize | round + pack
ADD_STAGES = 6      # compare | align | add | leading zeros | normalize | round + pack


def bf16_array_input_layout(params):
    """One input beat: ``width`` bf16 elements of x (broadcast), ``width`` of each lane's w.

    x : 16 x width          bf16 patterns of the vector chunk
    w : (16 x width) x lanes bf16 patterns of each lane's column chunk
    last : 1                last beat of this slot's vector
    """
    return data.StructLayout({
        "x": data.ArrayLayout(unsigned(16), params.width),
        "w": data.ArrayLayout(data.ArrayLayout(unsigned(16), params.width), params.lanes),
        "last": unsigned(1),
    })


def bf16_array_output_layout(params):
    """One output beat: the bf16 dot product of every lane."""
    return data.StructLayout({"value": data.ArrayLayout(unsigned(16), params.lanes)})


def latency(params):
    """Cycles from a vector's last accepted beat to its result on ``o`` (no stalls)."""
    levels = (params.width - 1).bit_length()
    return MUL_STAGES + levels * ADD_STAGES + 1 + ADD_STAGES + 1


def _mul(m, pipe, ops, tag):
    """Add ``MUL_STAGES`` stages to ``pipe`` forming the bf16 product of each ``(a, b)`` in
    ``ops`` (``sim.bf16_array.mul``: DAZ, exact significand product, one RNE rounding, FTZ,
    overflow to Inf; NaN for NaN operands and 0 x Inf). Returns the result field names."""
    f1 = {}
    for i, (a, b) in enumerate(ops):
        fa, fb = hn.unpack(a), hn.unpack(b)
        inf = fa.inf | fb.inf
        f1[f"{tag}{i}_pm"] = fa.mant * fb.mant
        f1[f"{tag}{i}_es"] = fa.exp + fb.exp
        f1[f"{tag}{i}_sign"] = fa.sign ^ fb.sign
        f1[f"{tag}{i}_nan"] = fa.nan | fb.nan | (inf & (fa.zero | fb.zero))
        f1[f"{tag}{i}_inf"] = inf
    pipe.stage(**f1)
    n = len(ops)
    # biased exponent of the leading one: (Ea - 134) + (Eb - 134) + 126 + 16 - lz
    s = _normalize(m, pipe, n, tag, "pm", "es", lambda es: es - 126)
    f4 = {}
    for i in range(n):
        g = {k: s.fields[f"{tag}{i}_{k}"] for k in ("norm", "e", "sign", "nan", "inf")}
        r = hn.round_pack(m, g["norm"], g["e"], g["sign"], name=f"{tag}{i}_rnd")
        f4[f"{tag}{i}"] = Mux(g["nan"], hn.NAN,
                              Mux(g["inf"], Cat(Const(hn.POS_INF, 15), g["sign"]), r))
    s = pipe.stage(**f4, drop=[f"{tag}{i}_{k}" for i in range(n)
                               for k in ("norm", "e", "sign", "nan", "inf")])
    return [f"{tag}{i}" for i in range(n)]


def _normalize(m, pipe, n, tag, mag, exp, lead):
    """Add two stages to ``pipe``: the leading zeros of each field ``<tag><i>_<mag>``, then
    its normalized form (``<tag><i>_norm``, for ``round_pack``) and biased exponent
    ``<tag><i>_e = lead(<tag><i>_<exp>) - lz``. Returns the second stage."""
    s = pipe.stage(**{f"{tag}{i}_lz": hn.leading_zeros(m, pipe.fields[f"{tag}{i}_{mag}"],
                                                         name=f"{tag}{i}_lz")
                      for i in range(n)})
    f = {}
    for i in range(n):
        v, lz = s.fields[f"{tag}{i}_{mag}"], s.fields[f"{tag}{i}_lz"]
        f[f"{tag}{i}_norm"] = hn.shift_to_top(m, v, lz, name=f"{tag}{i}_norm")
        f[f"{tag}{i}_e"] = (lead(s.fields[f"{tag}{i}_{exp}"]) - lz).as_signed()
    return pipe.stage(**f, drop=[f"{tag}{i}_{k}" for i in range(n) for k in (mag, "lz", exp)])


def _add(m, pipe, ops, tag, drop=()):
    """Add ``ADD_STAGES`` stages to ``pipe`` forming the bf16 sum of each ``(a, b)`` in
    ``ops`` (``sim.bf16_array.add``: the smaller operand aligned under three guard bits with
    a sticky bit, one RNE rounding; exact zero is +0). ``drop`` ends the operand fields.
    Returns the result field names."""
    n = len(ops)
    f1 = {}
    for i, (a, b) in enumerate(ops):
        fa, fb = hn.unpack(a), hn.unpack(b)
        big_a = fa.magnitude >= fb.magnitude
        dab = (fa.exp - fb.exp).as_signed()
        dba = (fb.exp - fa.exp).as_signed()
        d = Mux(big_a, Mux(dab > 15, 15, dab), Mux(dba > 15, 15, dba))[:4]
        nan = fa.nan | fb.nan | (fa.inf & fb.inf & (fa.sign != fb.sign))
        f1.update({f"{tag}{i}_m1": Mux(big_a, fa.mant, fb.mant),
                   f"{tag}{i}_m2": Mux(big_a, fb.mant, fa.mant),
                   f"{tag}{i}_e1": Mux(big_a, fa.exp, fb.exp),
                   f"{tag}{i}_d": d,
                   f"{tag}{i}_sign": Mux(big_a, fa.sign, fb.sign),
                   f"{tag}{i}_sub": fa.sign ^ fb.sign,
                   f"{tag}{i}_spec": nan | fa.inf | fb.inf,
                   f"{tag}{i}_sval": Mux(nan, hn.NAN, Mux(fa.inf, a, b))})
    s = pipe.stage(**f1, drop=drop)
    f2 = {}
    for i in range(n):
        g2 = Cat(Const(0, 3), s.fields[f"{tag}{i}_m2"])                # 11 bits
        d = s.fields[f"{tag}{i}_d"]
        lost = (g2 & ((Const(1, 16) << d) - 1)[:11]).any()
        f2[f"{tag}{i}_sh"] = (g2 >> d) | lost
    s = pipe.stage(**f2, drop=[f"{tag}{i}_{k}" for i in range(n) for k in ("m2", "d")])
    f3 = {}
    for i in range(n):
        big = Cat(Const(0, 3), s.fields[f"{tag}{i}_m1"])
        sh = s.fields[f"{tag}{i}_sh"]
        f3[f"{tag}{i}_s"] = Mux(s.fields[f"{tag}{i}_sub"], big - sh, big + sh)[:12]
    pipe.stage(**f3, drop=[f"{tag}{i}_{k}" for i in range(n) for k in ("m1", "sh", "sub")])
    # biased exponent of the leading one: (E1 - 137) + 126 + 12 - lz
    s = _normalize(m, pipe, n, tag, "s", "e1", lambda e1: e1 + 1)
    f6 = {}
    for i in range(n):
        g = {k: s.fields[f"{tag}{i}_{k}"] for k in ("norm", "e", "sign", "spec", "sval")}
        r = hn.round_pack(m, g["norm"], g["e"], g["sign"], name=f"{tag}{i}_rnd")
        f6[f"{tag}{i}"] = Mux(g["spec"], g["sval"], r)
    pipe.stage(**f6, drop=[f"{tag}{i}_{k}" for i in range(n)
                           for k in ("norm", "e", "sign", "spec", "sval")])
    return [f"{tag}{i}" for i in range(n)]


class BF16Array(wiring.Component):
    """Compute ``lanes`` bf16 dot products at a time with ``width`` bf16 multipliers per lane.

    Numerics are ``sim.bf16_array`` (docs/numerics.md): DAZ inputs; each product rounded to
    bf16 (RNE, FTZ, overflow to Inf); each beat's products summed by a balanced tree of bf16
    adders, then accumulated in beat order, every addition rounded once (RNE); exact zero is
    +0; NaN is ``0x7FC0``. Every multiply and add is pipelined (``MUL_STAGES``,
    ``ADD_STAGES``); the accumulation adder therefore serves ``slots`` (``SLOTS``) vectors
    in turn, each with its own accumulator.

    Parameters
    ----------
    params : BF16ArrayParams

    Members
    -------
    i : In(stream.Signature(bf16_array_input_layout(params)))
        Chunks of ``width`` elements. Beats visit ``slots`` vectors round-robin: the ``j``-th
        accepted beat belongs to slot ``j mod slots`` (counted from reset); each slot's beats
        form its vectors in order, ``last`` on a vector's final beat
        (``sim.bf16_array.beats`` builds the stream).
    o : Out(stream.Signature(bf16_array_output_layout(params)))
        One beat per vector with every lane's result, in the order of the vectors' last beats.

    Throughput: one beat (``lanes * width`` multiplies) per cycle. Latency: ``latency(params)``
    cycles from a vector's last beat to its result. Backpressure: the pipeline holds as a
    whole while ``o`` is stalled (``i.ready = ~o.valid | o.ready``).
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
        fire = self.i.valid & self.i.ready

        # slot of the beat, and whether it starts its slot's vector
        slot = Signal(range(p.slots))
        open_ = Signal(p.slots)
        with m.If(fire):
            m.d.sync += [slot.eq(Mux(slot == p.slots - 1, 0, slot + 1)),
                         open_.bit_select(slot, 1).eq(~pin.last)]
        pipe = Pipeline(m, self.i.valid, name="b",
                        fields={"last": pin.last, "slot": slot,
                                "first": ~open_.bit_select(slot, 1)})
        m.d.comb += self.i.ready.eq(pipe.ce)

        level = _mul(m, pipe, [(pin.x[j], pin.w[l][j]) for l in range(p.lanes)
                               for j in range(p.width)], "p")
        depth = 0
        while len(level) > p.lanes:        # balanced tree per lane: pairs (0,1), (2,3), ...
            depth += 1
            f = pipe.fields
            level = _add(m, pipe, [(f[level[i]], f[level[i + 1]])
                                   for i in range(0, len(level), 2)], f"t{depth}_", drop=level)
        # accumulation: read the slot's accumulator, add, write back
        acc = [Array(Signal(16, name=f"acc{l}_{s}") for s in range(p.slots))
               for l in range(p.lanes)]
        f = pipe.fields
        sr = pipe.stage(**{f"r{l}": acc[l][f["slot"]] for l in range(p.lanes)},
                        **{f"sum{l}": f[level[l]] for l in range(p.lanes)}, drop=level)
        total = _add(m, pipe, [(sr.fields[f"r{l}"], sr.fields[f"sum{l}"])
                               for l in range(p.lanes)], "a",
                     drop=[f"r{l}" for l in range(p.lanes)])
        f = pipe.fields
        res = [Mux(f["first"], f[f"sum{l}"], f[total[l]]) for l in range(p.lanes)]
        with m.If(pipe.ce & pipe.valid):
            with m.Switch(f["slot"]):
                for s in range(p.slots):
                    with m.Case(s):
                        m.d.sync += [acc[l][s].eq(res[l]) for l in range(p.lanes)]
        pipe.valid = pipe.valid & f["last"]            # only a vector's last beat is output
        pipe.drive(self.o, value=Cat(*res))
        assert pipe.depth == latency(p)
        return m


UNIT = Unit(name="bf16_array", params=BF16ArrayParams, presets=PRESETS, component=BF16Array,
            golden=dot, summary="bf16 x bf16 dot-product array (area baseline for mixed_array)")
