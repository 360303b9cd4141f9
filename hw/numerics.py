"""Arithmetic primitives of the RTL: the twin of ``sim/bf16.py`` and ``sim/fixed.py``.

Every unit builds its datapath from these, so each rounding rule of docs/numerics.md exists
once in ``hw/`` as it exists once in ``sim/``; ``tests/test_hw_numerics.py`` checks each one
against its ``sim`` twin in Amaranth's simulator (exhaustively over the 65,536 bf16 patterns
where the input is one pattern).

The functions add combinational logic to a ``Module`` and return values; none registers
anything. Long operations come in parts a unit puts in separate pipeline stages
(``leading_zeros`` | ``shift_to_top`` | ``round_pack``); ``affine_round`` and ``multiply``
(an exact product of any width from DSP-sized pieces, checked against Python's ``*``) are
the multi-stage operations and take a ``hw.common.Pipeline``.
"""

from amaranth.hdl import Cat, Const, Mux, Shape, Signal, Value, signed, unsigned

__all__ = ["EXP_WIDTH", "NAN", "POS_INF", "BF16", "unpack", "daz", "to_fixed", "bit_length",
           "leading_one", "leading_zeros", "shift_to_top", "normalize", "round_pack",
           "round_fixed", "fix_trunc", "abs_value", "affine_round", "AFFINE_STAGES",
           "LIMB_BITS", "multiply", "multiply_stages"]

EXP_WIDTH = 12      # signed width of every power-of-two exponent in a datapath (|e| < 2048)
NAN = 0x7FC0        # the canonical quiet NaN (bf16 rule 4)
POS_INF = 0x7F80


class BF16:
    """Fields of a bf16 pattern (``unpack``): all combinational ``Value``s.

    sign, exp (biased, 8 bits), frac (7 bits); zero: exponent field 0 (zero or subnormal,
    read as zero: DAZ); inf, nan, finite; mant: the 8-bit significand ``1.frac`` (0 when
    zero, DAZ), ``magnitude``: ``x & 0x7FFF`` (orders |x|, bf16 rule 5).
    """

    def __init__(self, x):
        x = Value.cast(x)
        self.bits = x
        self.sign = x[15]
        self.exp = x[7:15]
        self.frac = x[0:7]
        self.magnitude = x[0:15]
        self.zero = self.exp == 0
        self.inf = (self.exp == 0xFF) & (self.frac == 0)
        self.nan = (self.exp == 0xFF) & (self.frac != 0)
        self.finite = self.exp != 0xFF
        self.mant = Mux(self.zero, 0, Cat(self.frac, Const(1, 1)))


def unpack(x):
    """The fields of bf16 pattern ``x`` (a 16-bit value), as ``BF16``."""
    return BF16(x)


def daz(x):
    """``sim.bf16.daz``: a subnormal pattern reads as zero of the same sign."""
    x = Value.cast(x)
    return Mux(x[7:15] == 0, x & 0x8000, x)


def to_fixed(m, x, *, name="fx"):
    """``sim.bf16.to_fixed``: ``(mant, exp, finite)`` with value ``mant * 2**exp``.

    ``mant`` is signed 9 bits, |mant| in 128..255, 0 for zero, subnormal (DAZ) and non-finite
    patterns; ``exp = E - 134`` (``EXP_WIDTH`` bits, signed); ``finite`` is 0 for Inf and NaN.
    """
    f = unpack(x)
    mag = Mux(f.finite, f.mant, 0)
    mant = Signal(signed(9), name=f"{name}_m")
    exp = Signal(signed(EXP_WIDTH), name=f"{name}_e")
    m.d.comb += [mant.eq(Mux(f.sign, -mag, mag)), exp.eq(f.exp - 134)]
    return mant, exp, f.finite


def _lod_tree(v):
    """(any bit set, index of the leading one) of ``v`` by a balanced tree of muxes."""
    w = len(v)
    if w == 1:
        return v[0], Const(0, 1)
    half = 1 << ((w - 1).bit_length() - 1)
    any_lo, pos_lo = _lod_tree(v[:half])
    any_hi, pos_hi = _lod_tree(v[half:])
    width = max(len(pos_lo), (w - 1).bit_length())
    return any_lo | any_hi, Mux(any_hi, pos_hi + half, pos_lo)[:width]


def bit_length(m, v, *, name="bitlen"):
    """``sim.bf16.bit_length`` of unsigned ``v``: leading-one index plus one, 0 for 0.

    A balanced tree of ``log2(len(v))`` mux levels. Returns a Signal of ``range(len(v) + 1)``.
    """
    v = Value.cast(v)
    out = Signal(range(len(v) + 1), name=name)
    found, pos = _lod_tree(v)
    m.d.comb += out.eq(Mux(found, pos + 1, 0))
    return out


def leading_one(m, v, *, name="lod"):
    """Index of the leading one of unsigned ``v`` (0 when ``v`` is 0): ``bit_length - 1``."""
    v = Value.cast(v)
    out = Signal(range(max(len(v), 2)), name=name)
    m.d.comb += out.eq(_lod_tree(v)[1])
    return out


def leading_zeros(m, v, *, name="lz"):
    """Leading zeros of unsigned ``v`` (``len(v)`` when ``v`` is 0): ``len(v) - bit_length``.

    ``v`` is padded below to a power-of-two width, where the count is the complement of the
    leading-one index (no subtractor). Returns a Signal of ``range(len(v) + 1)``.
    """
    v = Value.cast(v)
    w = len(v)
    k = max((w - 1).bit_length(), 1)
    padded = Cat(Const(0, (1 << k) - w), v)
    found, pos = _lod_tree(padded)
    out = Signal(range(w + 1), name=name)
    m.d.comb += out.eq(Mux(found, ~pos[:k], w))
    return out


def shift_to_top(m, mag, lz, *, name="norm"):
    """The rounding input of ``mag`` given its leading zeros ``lz``: ``Cat(sticky, 9 bits)``.

    The 9 bits are ``mag`` shifted left by ``lz`` (its leading one at the top: the 8
    significant bits and the guard bit); ``sticky`` is the OR of the bits below them,
    computed beside the barrel shifter. 0 stays 0. Put ``leading_zeros`` in the stage before
    it; ``round_pack`` takes the 10-bit result.
    """
    mag = Value.cast(mag)
    w = len(mag)
    if w <= 9:
        return (Cat(Const(0, 10 - w), mag) << lz)[:10]
    top = Signal(9, name=f"{name}_top")
    m.d.comb += top.eq((mag << lz)[w - 9:w])
    below = Cat(*(lz < w - 9 - i for i in range(w - 9)))     # bits under the guard bit
    sticky = Signal(name=f"{name}_sticky")
    m.d.comb += sticky.eq((mag[:w - 9] & below).any())
    return Cat(sticky, top)


def normalize(m, mag, exp_lsb, *, name="norm"):
    """``(norm, e)`` of ``mag * 2**exp_lsb`` (``mag`` unsigned): the 10-bit rounding input
    ``shift_to_top`` gives, and the biased exponent ``e = exp_lsb + 127 + leading-one
    index`` (signed). Feed both to ``round_pack``; the pair may be registered in between.
    One combinational step: split it as ``leading_zeros`` | ``shift_to_top`` where it is
    long (``e = exp_lsb + 126 + len(mag) - lz``)."""
    mag = Value.cast(mag)
    exp_lsb = Value.cast(exp_lsb)
    lz = leading_zeros(m, mag, name=f"{name}_lz")
    norm = shift_to_top(m, mag, lz, name=name)
    e = Signal(signed(max(len(exp_lsb), len(lz) + 1) + 3), name=f"{name}_e")
    m.d.comb += e.eq(exp_lsb + 126 + len(mag) - lz)
    return norm, e


def round_pack(m, norm, e, sign, *, name="rnd"):
    """bf16 pattern of a normalized magnitude: ``sim.bf16.round_fixed``'s rounding.

    ``norm`` is ``shift_to_top``'s ``Cat(sticky, guard, 8 significant bits)`` (leading one
    at the top, or 0), ``e`` the biased exponent of that leading one (``normalize``). RNE to
    8 significant bits; a biased exponent >= 255 after rounding gives Inf of ``sign``, <= 0
    gives zero of ``sign`` (FTZ); ``norm == 0`` gives +0.
    """
    norm = Value.cast(norm)
    assert len(norm) == 10, "round_pack takes shift_to_top's 10-bit result"
    sticky, guard, top = norm[0], norm[1], norm[2:10]
    q = Signal(9, name=f"{name}_q")
    m.d.comb += q.eq(top + (guard & (sticky | top[0])))
    carry = q[8]
    frac = Mux(carry, 0, q[0:7])
    # the exponent range tests for both outcomes of the rounding carry, beside the increment
    e1 = Signal(signed(len(e) + 1), name=f"{name}_e1")
    m.d.comb += e1.eq(e + 1)
    exp = Mux(carry, e1[0:8], e[0:8])
    ovf = Mux(carry, e >= 254, e >= 255)
    unf = Mux(carry, e <= -1, e <= 0)
    out = Signal(16, name=name)
    with m.If(~top[7]):
        m.d.comb += out.eq(0)
    with m.Elif(ovf):
        m.d.comb += out.eq(Cat(Const(0, 7), Const(0xFF, 8), sign))
    with m.Elif(unf):
        m.d.comb += out.eq(Cat(Const(0, 15), sign))
    with m.Else():
        m.d.comb += out.eq(Cat(frac, exp, sign))
    return out


def round_fixed(m, mag, sign, exp_lsb, *, name="rnd"):
    """bf16 of ``(-1)**sign * mag * 2**exp_lsb`` in one combinational step:
    ``sim.bf16.round_fixed`` (RNE, FTZ, overflow to Inf, exact zero is +0)."""
    norm, e = normalize(m, mag, exp_lsb, name=f"{name}_n")
    return round_pack(m, norm, e, sign, name=name)


def abs_value(m, v, *, name="abs"):
    """|v| of signed ``v`` as an unsigned Signal of the same width."""
    v = Value.cast(v)
    out = Signal(len(v), name=name)
    m.d.comb += out.eq(Mux(v < 0, -v, v))
    return out


def fix_trunc(m, x, int_bits, frac_bits, *, magnitude=False, name="fix"):
    """``sim.fixed.fix_trunc``: signed fixed point of bf16 ``x`` with ``frac_bits`` fraction
    bits. DAZ; the magnitude is truncated toward zero and saturates at
    ``2**(int_bits + frac_bits) - 1`` (Inf saturates too; NaN is the caller's to flag).
    Returns a signed Signal of ``int_bits + frac_bits + 1`` bits, or with ``magnitude`` the
    unsigned ``int_bits + frac_bits``-bit magnitude alone."""
    f = unpack(x)
    lim = (1 << (int_bits + frac_bits)) - 1
    rs = Signal(9, name=f"{name}_rs")
    m.d.comb += rs.eq(126 + int_bits + 8 - f.exp)
    v_abs = Signal(int_bits + frac_bits, name=f"{name}_abs")
    m.d.comb += v_abs.eq(Mux(f.exp >= 127 + int_bits, lim,
                             Mux(f.zero, 0, Cat(Const(0, int_bits + frac_bits),
                                                f.mant[:8]) >> rs)))
    if magnitude:
        return v_abs
    out = Signal(signed(int_bits + frac_bits + 1), name=name)
    m.d.comb += out.eq(Mux(f.sign, -v_abs, v_abs))
    return out


# ------------------------------------------------------------------------------------------
# affine_round: bf16(acc * 2**lsb * scale + bias), as sim.fixed.affine_round
# ------------------------------------------------------------------------------------------

AFFINE_STAGES = 7       # pipeline stages ``affine_round`` adds


def _clamp(m, v, lo, hi, width, name):
    out = Signal(range(lo, hi + 1) if lo < 0 else unsigned(width), name=name)
    m.d.comb += out.eq(Mux(v > hi, hi, Mux(v < lo, lo, v)))
    return out


def affine_round(m, pipe, acc, lsb, scale, bias, nan, *, name="aff"):
    """Add ``AFFINE_STAGES`` stages to ``pipe`` computing ``sim.fixed.affine_round``.

    ``acc`` signed (``|acc| < 2**46``), ``lsb`` signed exponent of its LSB, ``scale`` and
    ``bias`` bf16 patterns, ``nan`` forces NaN. The product ``acc * scale`` is exact; both
    terms are aligned onto a common LSB at most 58 bits below the top of the larger one, the
    bits shifted out of the smaller term jammed into a sticky bit below three guard bits;
    then one RNE rounding to bf16 (``round_pack``). NaN (0x7FC0) when ``nan`` or a non-finite
    scale or bias. Returns the stage whose field ``<name>`` is the bf16 result; every field
    carried by ``pipe`` rides along.

    Stages: (1) significands, exact product; (2) magnitudes, bit lengths; (3) common LSB;
    (4) jam both terms onto it; (5) signed sum; (6) magnitude and leading zeros of the sum;
    (7) normalize; the caller's next stage may round (``round_pack``) — this function adds
    that rounding itself and returns the stage holding the result.
    """
    E = EXP_WIDTH
    sm, se, sfin = to_fixed(m, scale, name=f"{name}_s")
    bm, be, bfin = to_fixed(m, bias, name=f"{name}_b")
    pw = len(acc) + 9
    s1 = pipe.stage(**{f"{name}_pm": (acc * sm)[:pw].as_signed(),
                       f"{name}_pe": (lsb + se)[:E].as_signed(),
                       f"{name}_bm": bm, f"{name}_be": be,
                       f"{name}_bad": nan | ~sfin | ~bfin})
    pm, pe, bm1, be1 = (getattr(s1, f"{name}_{k}") for k in ("pm", "pe", "bm", "be"))

    pmag = abs_value(m, pm, name=f"{name}_pmag")
    bmag = abs_value(m, bm1, name=f"{name}_bmag")[:8]
    plen = bit_length(m, pmag, name=f"{name}_plen")
    s2 = pipe.stage(**{f"{name}_pmag": pmag, f"{name}_bmag": bmag,
                       f"{name}_pneg": pm < 0, f"{name}_bneg": bm1 < 0,
                       f"{name}_ptop": (pe + plen)[:E].as_signed(),
                       f"{name}_btop": (be1 + 8)[:E].as_signed()},
                    drop=(f"{name}_pm", f"{name}_bm"))
    pmag, bmag = getattr(s2, f"{name}_pmag"), getattr(s2, f"{name}_bmag")
    ptop, btop = getattr(s2, f"{name}_ptop"), getattr(s2, f"{name}_btop")
    pe, be1 = getattr(s2, f"{name}_pe"), getattr(s2, f"{name}_be")

    top = Signal(signed(E), name=f"{name}_top")
    pz, bz = pmag == 0, bmag == 0
    m.d.comb += top.eq(Mux(pz, btop, Mux(bz, ptop, Mux(ptop > btop, ptop, btop))))
    lo = Mux(pe < be1, pe, be1)
    lsb2 = Signal(signed(E), name=f"{name}_lsb2")
    m.d.comb += lsb2.eq(Mux((~pz | ~bz) & (top - 58 > lo), top - 58, lo))
    s3 = pipe.stage(**{f"{name}_L": lsb2,
                       f"{name}_dp": (lsb2 - pe)[:E + 1].as_signed(),
                       f"{name}_db": (lsb2 - be1)[:E + 1].as_signed()})

    jams = {}
    for t in ("p", "b"):
        mag = getattr(s3, f"{name}_{t}mag")
        d = getattr(s3, f"{name}_d{t}")
        rs = _clamp(m, d, 0, 63, 6, f"{name}_{t}rs")
        ls = _clamp(m, -d, 0, 62, 6, f"{name}_{t}ls")
        wide = Signal(64, name=f"{name}_{t}wide")
        m.d.comb += wide.eq(mag)
        lost = Signal(name=f"{name}_{t}lost")
        m.d.comb += lost.eq((d > 0) & ((wide & ((Const(1, 65) << rs) - 1)[:64]) != 0))
        sh = Signal(62, name=f"{name}_{t}sh")
        m.d.comb += sh.eq(Mux(d > 0, wide >> rs, wide << ls))
        jams[f"{name}_{t}jam"] = Cat(lost, Const(0, 2), sh[:61])
    s4 = pipe.stage(**jams, drop=(f"{name}_pmag", f"{name}_bmag"))

    pj, bj = getattr(s4, f"{name}_pjam"), getattr(s4, f"{name}_bjam")
    pv = Mux(getattr(s4, f"{name}_pneg"), -pj, pj)
    bv = Mux(getattr(s4, f"{name}_bneg"), -bj, bj)
    s5 = pipe.stage(**{f"{name}_sum": (pv.as_signed() + bv.as_signed())[:66].as_signed()},
                    drop=(f"{name}_pjam", f"{name}_bjam"))

    total = getattr(s5, f"{name}_sum")
    omag = abs_value(m, total, name=f"{name}_omag")[:65]
    olz = leading_zeros(m, omag, name=f"{name}_olz")
    s6 = pipe.stage(**{f"{name}_omag": omag, f"{name}_olz": olz,
                       f"{name}_oneg": total < 0}, drop=(f"{name}_sum",))

    lz = getattr(s6, f"{name}_olz")
    norm = shift_to_top(m, getattr(s6, f"{name}_omag"), lz, name=f"{name}_norm")
    e = Signal(signed(E + 1), name=f"{name}_e")
    m.d.comb += e.eq(getattr(s6, f"{name}_L") - 3 + 126 + 65 - lz)
    s7 = pipe.stage(**{f"{name}_norm": norm, f"{name}_e": e}, drop=(f"{name}_omag",))

    res = round_pack(m, getattr(s7, f"{name}_norm"), getattr(s7, f"{name}_e"),
                     getattr(s7, f"{name}_oneg"), name=f"{name}_rnd")
    out = Mux(getattr(s7, f"{name}_bad"), NAN, res)
    return s7, out


# ------------------------------------------------------------------------------------------
# multiply: an exact product in DSP-sized partial products, one adder level per stage
# ------------------------------------------------------------------------------------------

LIMB_BITS = 17      # unsigned limb width: a limb product fits an 18 x 18 signed multiplier


def _limbs(v):
    """``(limb, offset)`` pairs of ``v``: unsigned ``LIMB_BITS``-bit limbs from the bottom, the
    top limb taking the rest (signed when ``v`` is, then up to ``LIMB_BITS + 1`` bits)."""
    v = Value.cast(v)
    sgn = v.shape().signed
    n = max(1, -(-(len(v) - sgn) // LIMB_BITS))
    out = []
    for i in range(n):
        lo = i * LIMB_BITS
        part = v[lo:] if i == n - 1 else v[lo:lo + LIMB_BITS]
        out.append((part.as_signed() if sgn and i == n - 1 else part, lo))
    return out


def multiply_stages(a_shape, b_shape):
    """Pipeline stages ``multiply`` adds for operands of these shapes: one for the partial
    products, one per level of the adder tree."""
    def count(s):
        s = Shape.cast(s)
        return max(1, -(-(s.width - s.signed) // LIMB_BITS))
    n = count(a_shape) * count(b_shape)
    return 1 + (n - 1).bit_length()


def multiply(m, pipe, a, b, *, name="mul", drop=()):
    """Add ``multiply_stages`` stages to ``pipe`` computing the exact product ``a * b``.

    ``a`` and ``b`` (unsigned or signed) are cut into ``LIMB_BITS``-bit limbs; the first stage
    registers every limb product (each fits one 18 x 18 signed multiplier, an ECP5
    MULT18X18D, with nothing else on its path when ``a`` and ``b`` are registers); each later
    stage adds the terms in pairs, bits below the higher term's offset passing by the adder.
    The product, ``len(a) + len(b)`` bits, signed if either operand is, is the field ``name``
    of the last stage and is carried on like any field. Every field carried by ``pipe`` rides
    along but those in ``drop`` (the operands, say), which end at the first stage. Returns
    ``(stage, product)``: the last stage and its field ``name``.
    """
    a, b = Value.cast(a), Value.cast(b)
    sgn = a.shape().signed or b.shape().signed
    width = len(a) + len(b)

    def exact(v):
        v = v[:width]
        return v.as_signed() if sgn else v

    terms = sorted(((pa * pb, oa + ob) for pa, oa in _limbs(a) for pb, ob in _limbs(b)),
                   key=lambda t: t[1])
    level, names = 0, tuple(drop)
    while True:
        final = len(terms) == 1
        keys = [name] if final else [f"{name}_{level}_{i}" for i in range(len(terms))]
        values = [exact(terms[0][0])] if final else [v for v, _ in terms]
        st = pipe.stage(**dict(zip(keys, values)), drop=names)
        if final:
            assert terms[0][1] == 0
            return st, getattr(st, name)
        terms = [(getattr(st, k), o) for k, (_, o) in zip(keys, terms)]
        names, level = tuple(keys), level + 1
        new = []
        for i in range(0, len(terms) - 1, 2):
            (lo, olo), (hi, ohi) = terms[i], terms[i + 1]
            d = ohi - olo
            if 0 < d < len(lo):         # the low d bits of the lower term pass by the adder
                high = hi + (lo[d:].as_signed() if lo.shape().signed else lo[d:])
                s = Cat(lo[:d], high)
                new.append((s.as_signed() if high.shape().signed else s, olo))
            else:
                new.append(((hi << d) + lo, olo))
        terms = new + terms[len(terms) - len(terms) % 2:]
