"""MX-OP activation quantizer (OPAL): bf16 element stream in, MX-OP element beats out."""

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from sim.mxq import PRESETS, MXQParams, mxq

from .common import Unit

__all__ = ["MXQ", "mxq_input_layout", "mxq_element_layout", "mxq_output_layout", "UNIT"]


def mxq_input_layout(params):
    """One input beat: ``x[l]``, the next bf16 element of lane ``l``."""
    return data.StructLayout({"x": data.ArrayLayout(unsigned(16), params.lanes)})


def mxq_element_layout(params):
    """One quantized element of one lane.

    q : signed(bits)  inlier integer; 0 at outlier positions
    outlier : 1       this position is an outlier
    value : 16        the outlier's bf16 pattern (after DAZ); 0 for inliers
    exp : 8           the block's shared biased exponent E (scale ``2**(E - 127 - (bits - 2))``)
    """
    return data.StructLayout({
        "q": signed(params.bits),
        "outlier": unsigned(1),
        "value": unsigned(16),
        "exp": unsigned(8),
    })


def mxq_output_layout(params):
    """One output beat: an element of every lane, its index in the block, end of block."""
    return data.StructLayout({
        "lane": data.ArrayLayout(mxq_element_layout(params), params.lanes),
        "index": unsigned(params.index_width),
        "last": unsigned(1),
    })


class MXQ(wiring.Component):
    """Quantize bf16 blocks into MX-OP (shared exponent, n-bit inliers, k bf16 outliers).

    Every ``block`` consecutive input beats form one block per lane. The unit keeps a running
    list of the ``outliers + 1`` largest magnitudes while a block streams in, writes the block
    into one half of a double buffer, and streams the other half out quantized, so a new block
    enters while the previous one leaves. Numerics are ``sim.mxop`` (docs/numerics.md, MX-OP):
    DAZ on input; outliers are the k largest magnitude patterns, ties to the lower index; the
    shared exponent is the largest inlier's; inliers round to nearest even and saturate.

    Parameters
    ----------
    params : MXQParams

    Members
    -------
    i : In(stream.Signature(mxq_input_layout(params)))
        bf16 elements, one per lane per beat. Ready is low only while both buffer halves are
        full (the output is stalled).
    o : Out(stream.Signature(mxq_output_layout(params)))
        One beat per element, in input order, with the block's exponent and outlier flags.

    Throughput: one element per lane per cycle when the output is not stalled (``block``
    cycles per block). Latency: an element leaves ``block + 2`` cycles after the first
    element of its block entered, at the earliest.
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
        iw = p.index_width
        slots = p.outliers + 1

        wbank = Signal()
        widx = Signal(iw)
        rbank = Signal()
        ridx = Signal(iw)
        full = Signal(2)
        w_fire = self.i.valid & self.i.ready
        w_last = widx == p.block - 1

        advance = ~self.o.valid | self.o.ready
        issue = full.bit_select(rbank, 1) & advance
        r_last = ridx == p.block - 1

        m.d.comb += self.i.ready.eq(~full.bit_select(wbank, 1))

        with m.If(w_fire):
            m.d.sync += widx.eq(Mux(w_last, 0, widx + 1))
            with m.If(w_last):
                m.d.sync += wbank.eq(~wbank)
        with m.If(issue):
            m.d.sync += ridx.eq(Mux(r_last, 0, ridx + 1))
            with m.If(r_last):
                m.d.sync += rbank.eq(~rbank)
        set_full = Cat(w_fire & w_last & (wbank == 0), w_fire & w_last & (wbank == 1))
        clr_full = Cat(issue & r_last & (rbank == 0), issue & r_last & (rbank == 1))
        m.d.sync += full.eq((full | set_full) & ~clr_full)

        # stage 1: memory read issued; stage 2: the output register
        s1_valid = Signal()
        s1_idx = Signal(iw)
        with m.If(advance):
            m.d.sync += [s1_valid.eq(issue), s1_idx.eq(ridx)]
            m.d.sync += self.o.valid.eq(s1_valid)
            m.d.sync += [self.o.payload.index.eq(s1_idx),
                         self.o.payload.last.eq(s1_idx == p.block - 1)]

        meta_layout = data.StructLayout({
            "idx": data.ArrayLayout(unsigned(iw), max(p.outliers, 1)),
            "exp": unsigned(8),
        })
        for lane in range(p.lanes):
            mem = memory.Memory(shape=unsigned(16), depth=2 << iw, init=[])
            m.submodules[f"buf{lane}"] = mem
            wp = mem.write_port()
            rp = mem.read_port(domain="sync")

            # write side: DAZ, store, keep the (outliers + 1) largest magnitudes in order
            x = self.i.payload.x[lane]
            x_daz = Mux(x[7:15] == 0, x & 0x8000, x)
            key_new = x_daz[0:15]
            m.d.comb += [wp.addr.eq(Cat(widx, wbank)), wp.data.eq(x_daz), wp.en.eq(w_fire)]

            keys = [Signal(15, name=f"l{lane}_key{j}") for j in range(slots)]
            idxs = [Signal(iw, name=f"l{lane}_idx{j}") for j in range(slots)]
            vals = [Signal(name=f"l{lane}_vld{j}") for j in range(slots)]
            gt = [~vals[j] | (key_new > keys[j]) for j in range(slots)]
            n_keys, n_idxs, n_vals = [], [], []
            for j in range(slots):
                above = gt[j - 1] if j else Const(0)    # slot j takes slot j-1's entry
                n_keys.append(Mux(gt[j], Mux(above, keys[j - 1] if j else 0, key_new), keys[j]))
                n_idxs.append(Mux(gt[j], Mux(above, idxs[j - 1] if j else 0, widx), idxs[j]))
                n_vals.append(Mux(gt[j], Mux(above, vals[j - 1] if j else 0, 1), vals[j]))
            k_max = n_keys[p.outliers]
            e_new = Mux(k_max >= 0x7F80, 0xFF, k_max[7:15])

            meta = [Signal(meta_layout, name=f"l{lane}_meta{b}") for b in range(2)]
            with m.If(w_fire):
                with m.If(w_last):
                    m.d.sync += [v.eq(0) for v in vals]
                    for b in range(2):
                        with m.If(wbank == b):
                            m.d.sync += meta[b].exp.eq(e_new)
                            for j in range(p.outliers):
                                m.d.sync += meta[b].idx[j].eq(n_idxs[j])
                with m.Else():
                    m.d.sync += [keys[j].eq(n_keys[j]) for j in range(slots)]
                    m.d.sync += [idxs[j].eq(n_idxs[j]) for j in range(slots)]
                    m.d.sync += [vals[j].eq(n_vals[j]) for j in range(slots)]

            # read side
            s1_meta = Signal(meta_layout, name=f"l{lane}_s1_meta")
            m.d.comb += [rp.addr.eq(Cat(ridx, rbank)), rp.en.eq(advance)]
            with m.If(advance):
                m.d.sync += s1_meta.eq(Mux(rbank, meta[1], meta[0]))
            self._quantize(m, p, rp.data, s1_meta, s1_idx, advance,
                           self.o.payload.lane[lane])
        return m

    @staticmethod
    def _quantize(m, p, x, meta, idx, advance, out):
        """``sim.mxop.quantize_inliers`` for one element, registered into ``out``."""
        e = meta.exp
        is_out = Const(0)
        for j in range(p.outliers):
            is_out = is_out | (meta.idx[j] == idx)
        ex = x[7:15]
        mant = Cat(x[0:7], Const(1, 1))
        sh_raw = Signal(signed(11))
        m.d.comb += sh_raw.eq(e - ex + (9 - p.bits))
        sh = Signal(range(11))
        m.d.comb += sh.eq(Mux(sh_raw < 1, 1, Mux(sh_raw > 10, 10, sh_raw)))
        sh1 = Signal(range(10))
        m.d.comb += sh1.eq(sh - 1)
        shifted = Signal(8)
        m.d.comb += shifted.eq(mant >> sh)
        rnd = (mant >> sh1)[0]
        sticky = (mant & ((Const(1, 11) << sh1) - 1)) != 0
        qm = Signal(9)
        m.d.comb += qm.eq(shifted + (rnd & (sticky | shifted[0])))
        qmax = (1 << (p.bits - 1)) - 1
        qs = Mux(qm > qmax, qmax, qm)[:p.bits]
        zero = (x[0:15] == 0) | (e == 0) | (e == 0xFF) | is_out
        q = Mux(zero, 0, Mux(x[15], -qs, qs))
        with m.If(advance):
            m.d.sync += [
                out.q.eq(q),
                out.outlier.eq(is_out),
                out.value.eq(Mux(is_out, x, 0)),
                out.exp.eq(e),
            ]


UNIT = Unit(name="mxq", params=MXQParams, presets=PRESETS, component=MXQ, golden=mxq,
            summary="bf16 blocks -> MX-OP (shared exponent, n-bit inliers, k bf16 outliers)")
