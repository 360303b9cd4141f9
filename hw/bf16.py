"""bf16 building blocks for the RTL, mirroring ``sim/bf16.py`` rule for rule.

Combinational helpers that add their logic to a ``Module`` and return a value; the rules are
in docs/numerics.md ("bf16").
"""

from amaranth.hdl import Cat, Const, Mux, Signal, signed, unsigned

__all__ = ["daz", "leading_one", "round_to_bf16", "NAN"]

NAN = 0x7FC0


def daz(x):
    """Subnormal bf16 patterns read as zero of the same sign (bf16 rule 1)."""
    return Mux(x[7:15] == 0, x & 0x8000, x)


def leading_one(m, value, width, name="lod"):
    """Position of the leading one of unsigned ``value`` (0 when ``value`` is 0)."""
    pos = Signal(range(max(width, 2)), name=name)
    for i in range(width):
        with m.If(value[i]):
            m.d.comb += pos.eq(i)
    return pos


def round_to_bf16(m, mant, exp, *, name="rnd"):
    """bf16 pattern of ``mant * 2**exp``: RNE, FTZ, overflow to Inf, exact zero is +0.

    The hardware twin of ``sim.bf16.round_fixed``. ``mant`` is a signed value, ``exp`` a signed
    value; the result is a 16-bit ``Signal``. Purely combinational.
    """
    w = len(mant)
    neg = mant[-1]
    mag = Signal(unsigned(w), name=f"{name}_mag")
    m.d.comb += mag.eq(Mux(neg, -mant, mant))
    p = leading_one(m, mag, w, name=f"{name}_p")
    lead = w - 1                                  # normalised leading-one position
    sh = Signal(range(max(w, 2)), name=f"{name}_sh")
    m.d.comb += sh.eq(lead - p)
    norm = Signal(unsigned(max(w, 9)), name=f"{name}_norm")
    m.d.comb += norm.eq((mag << sh) << max(9 - w, 0))
    nw = len(norm)
    top = norm[nw - 8:nw]
    rnd = norm[nw - 9]
    sticky = norm[:nw - 9] != 0 if nw > 9 else Const(0)
    up = rnd & (sticky | top[0])
    q = Signal(9, name=f"{name}_q")
    m.d.comb += q.eq(top + up)
    carry = q[8]
    ew = max(len(exp), (w + 1).bit_length()) + 3
    biased = Signal(signed(ew), name=f"{name}_exp")
    m.d.comb += biased.eq(exp + p + carry + 127)
    frac = Mux(carry, 0, q[0:7])
    out = Signal(16, name=name)
    with m.If(mag == 0):
        m.d.comb += out.eq(0)
    with m.Elif(biased >= 255):
        m.d.comb += out.eq(Cat(Const(0x7F80, 15), neg))
    with m.Elif(biased <= 0):
        m.d.comb += out.eq(Cat(Const(0, 15), neg))
    with m.Else():
        m.d.comb += out.eq(Cat(frac, biased[:8], neg))
    return out
