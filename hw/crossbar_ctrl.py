"""Crossbar controller: one linear layer on crossbar tiles, MX-OP vectors in, bf16 out."""

import dataclasses

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from sim.crossbar_ctrl import FRAC_BITS, PRESETS, CrossbarCtrlParams, run

from .common import Unit
from .crossbar import Crossbar

__all__ = ["CrossbarCtrl", "layer_layout", "sb_layout", "w_layout", "x_layout", "o_layout",
           "UNIT"]

COUNTER_WIDTH = 48
EXP_W = 13               # signed width of every power-of-two exponent in the datapath


def layer_layout(params):
    """Layer-job beat: the number of input vectors the job runs with the loaded weights."""
    return data.StructLayout({"vectors": unsigned(24)})


def sb_layout(params):
    """Per-output-channel scale and bias (bf16 patterns), N beats per job, channel order."""
    return data.StructLayout({"scale": unsigned(16), "bias": unsigned(16)})


def w_layout(params):
    """One tile row of weights: ``channels`` signed ``weight_bits``-bit integers."""
    return data.StructLayout({"w": data.ArrayLayout(signed(params.weight_bits),
                                                    params.channels)})


def x_layout(params):
    """One MX-OP element (the fields of ``hw.mxq.mxq_element_layout``), K beats per vector.

    q : signed(act_bits)  inlier integer, 0 at outlier positions
    outlier : 1           this position is an outlier
    value : 16            the outlier's bf16 pattern (ignored for inliers)
    exp : 8               the block's shared biased exponent E
    """
    return data.StructLayout({
        "q": signed(params.act_bits),
        "outlier": unsigned(1),
        "value": unsigned(16),
        "exp": unsigned(8),
    })


def o_layout(params):
    """One output element: a bf16 pattern."""
    return data.StructLayout({"y": unsigned(16)})


def _bitlen(m, value, name):
    """``bit_length`` of unsigned ``value`` as a combinational signal (priority encoder)."""
    n = Signal(range(len(value) + 1), name=name)
    for i in range(len(value)):
        with m.If(value[i]):
            m.d.comb += n.eq(i + 1)
    return n


def _bf16_fixed(m, x, name):
    """``sim.bf16.to_fixed``: signed significand (0 for zero/subnormal/non-finite), exponent."""
    ex = x[7:15]
    mag = Mux((ex == 0) | (ex == 0xFF), 0, Cat(x[0:7], Const(1, 1)))
    mant = Signal(signed(10), name=f"{name}_m")
    exp = Signal(signed(EXP_W), name=f"{name}_e")
    m.d.comb += [mant.eq(Mux(x[15], -mag, mag)), exp.eq(ex - 134)]
    return mant, exp


class CrossbarCtrl(wiring.Component):
    """Run a K x N linear layer on crossbar tiles: ``bf16(x @ W * scale + bias)`` per vector.

    Maps the signed ``weight_bits``-bit K x N weights onto ``row_tiles x groups`` tiles
    (``hw.crossbar.Crossbar``, offset scheme, ``slices`` cells per weight), programs and
    verifies them, then for every MX-OP input vector runs, per column group and segment (one
    tile's rows inside one block): one tile pulse per input digit (bit-serial, ``dac_bits``
    per pulse, sign pulse last), shift-add of the ADC codes over pulses and slices, one
    one-hot row read per outlier (the FP lane multiplies the exact weight row by the outlier's
    bf16 significand), alignment of every term to the vector's anchor (floor), exact
    reduction across tiles, and the output conversion ``acc * 2**lsb * scale + bias`` rounded
    once to bf16 (RNE, ``sim.fixed.affine_round``). Bit-exact with
    ``sim.crossbar_ctrl.run``; counters exact with ``sim.crossbar_ctrl.counters``.

    Parameters
    ----------
    params : sim.crossbar_ctrl.CrossbarCtrlParams

    Members
    -------
    i_layer : In(stream.Signature(layer_layout(params)))
        Starts a layer job of ``vectors`` vectors (accepted when the previous job is done).
    i_sb : In(stream.Signature(sb_layout(params)))
        N beats per job: scale and bias of output channels 0..N-1.
    i_w : In(stream.Signature(w_layout(params)))
        Weight rows (``sim.crossbar_ctrl.weight_rows`` order). Resident layers: once per
        job, after the scales. Otherwise the whole sequence once per vector; each tile is
        programmed just before its first use.
    i_x : In(stream.Signature(x_layout(params)))
        K MX-OP element beats per vector (block ``min(block, K)``, exactly ``outliers``
        outliers per block, as ``sim.mxop.encode`` gives).
    o : Out(stream.Signature(o_layout(params)))
        N bf16 results per vector, channel order, after the vector's last input beat.
    cycles, adc_conversions, dac_pulses, cell_writes, reprogram_writes, fp_lane_ops : Out(48)
        Event counters since reset (``sim.crossbar_ctrl.counters``). ``cycles`` excludes
        cycles spent waiting for a stream handshake. Cell writes: C per programmed tile row;
        ``reprogram_writes`` those done during vectors (non-resident layers).
    verify_errors : Out(16)
        Rows whose read-back after programming differed from the written cells.

    Latency and throughput: one vector at a time; per column group ``K/seg * (1 + pulses *
    (rows + 3))`` cycles of dense passes (the emulated tile sweeps one row per cycle), 3 per
    outlier read, 1 per block, then 4 per output channel; exact formula in
    ``sim.crossbar_ctrl.counters`` and docs/crossbar.md. Backpressure on ``o`` stalls the
    controller; it never drops or reorders beats.
    """

    def __init__(self, params):
        if not isinstance(params, CrossbarCtrlParams):
            raise TypeError(f"params must be CrossbarCtrlParams, not {params!r}")
        self.params = params
        ports = {
            "i_layer": In(stream.Signature(layer_layout(params))),
            "i_sb": In(stream.Signature(sb_layout(params))),
            "i_w": In(stream.Signature(w_layout(params))),
            "i_x": In(stream.Signature(x_layout(params))),
            "o": Out(stream.Signature(o_layout(params))),
            "verify_errors": Out(16),
        }
        for name in ("cycles", "adc_conversions", "dac_pulses", "cell_writes",
                     "reprogram_writes", "fp_lane_ops"):
            ports[name] = Out(COUNTER_WIDTH)
        super().__init__(ports)

    # widths -----------------------------------------------------------------------------
    @property
    def term_width(self):
        p = self.params
        return p.act_bits + p.weight_bits + (p.fmt.block - 1).bit_length() + 3

    @property
    def acc_width(self):
        p = self.params
        return (max(self.term_width, 10 + p.weight_bits) + FRAC_BITS
                + (p.nblocks * (p.fmt.outliers + 1)).bit_length() + 1)

    def elaborate(self, platform):
        p = self.params
        tp = p.tile
        m = Module()
        K, N, R = p.in_features, p.out_features, p.rows
        n, d, c, wb = p.act_bits, p.dac_bits, p.cell_bits, p.weight_bits
        S, NG, G = tp.slices, tp.channels, p.groups
        B, k, seg, nseg, nb, P = p.fmt.block, p.fmt.outliers, p.seg, K // p.seg, p.nblocks, \
            p.pulses
        spb = B // seg                       # segments per block
        spt = R // seg                       # segments per tile
        TW, AW = self.term_width, self.acc_width
        nphys = min(p.tiles, p.tiles_needed)
        iw = max(1, (B - 1).bit_length())

        # -- tiles (one emulation component holding the physical tiles) --------------------
        xbar = Crossbar(dataclasses.replace(tp, tiles=nphys))
        xbar.build(m)            # inlined: its ports become internal signals of this module
        slot = Signal(range(max(nphys, 2)))
        prog_valid, read_valid, pulse_valid = Signal(), Signal(), Signal()
        read_ready, codes_ready = Signal(), Signal()
        prog_cells = Signal(data.ArrayLayout(unsigned(c), p.cols))
        prog_addr = Signal(range(R))
        read_addr = Signal(range(R))
        digits = Signal(R * d)
        m.d.comb += [
            xbar.i_prog.valid.eq(prog_valid), xbar.i_prog.payload.addr.eq(prog_addr),
            xbar.i_prog.payload.cells.eq(prog_cells), xbar.i_prog.payload.tile.eq(slot),
            xbar.i_read.valid.eq(read_valid), xbar.i_read.payload.addr.eq(read_addr),
            xbar.i_read.payload.tile.eq(slot), xbar.o_read.ready.eq(read_ready),
            xbar.i_pulse.valid.eq(pulse_valid), xbar.i_pulse.payload.digits.eq(digits),
            xbar.i_pulse.payload.tile.eq(slot), xbar.o_codes.ready.eq(codes_ready),
        ]
        row_flat = xbar.o_read.payload.cells.as_value()
        codes_flat = xbar.o_codes.payload.codes.as_value()
        codes_valid = xbar.o_codes.valid
        row_cells = data.ArrayLayout(unsigned(c), p.cols)(row_flat)
        codes = data.ArrayLayout(unsigned(tp.adc_width), p.cols)(codes_flat)

        # -- counters ----------------------------------------------------------------------
        waiting = Signal()       # in a state that waits for an external stream handshake
        fire = Signal()          # ... and the handshake happens this cycle
        with m.If(~waiting | fire):
            m.d.sync += self.cycles.eq(self.cycles + 1)

        # -- job / loop state --------------------------------------------------------------
        vec_left = Signal(24)
        ch = Signal(range(max(N, 2)))
        lt = Signal(range(p.tiles_needed + 1))     # logical tile being programmed (resident)
        prow = Signal(range(R + 1))
        loaded = Signal()
        g = Signal(range(G + 1))
        si = Signal(range(nseg + 1))
        pi = Signal(range(P + 1))
        oi = Signal(range(k + 1))
        j = Signal(range(NG + 1))
        elem = Signal(range(K + 1))

        # scale/bias memory (combinational read)
        m.submodules.sb = sbmem = memory.Memory(shape=unsigned(32), depth=max(N, 2), init=[])
        sb_w = sbmem.write_port()
        sb_r = sbmem.read_port(domain="comb")
        m.d.comb += [sb_w.addr.eq(ch), sb_w.data.eq(self.i_sb.payload.as_value())]

        # -- input buffers -----------------------------------------------------------------
        m.submodules.qbuf = qmem = memory.Memory(shape=unsigned(seg * n), depth=max(nseg, 2),
                                                 init=[])
        q_w = qmem.write_port()
        q_r = qmem.read_port(domain="comb")
        sr = Signal(seg * n)
        x = self.i_x.payload
        shifted = Cat(sr[n:], x.q) if seg > 1 else x.q.as_unsigned()
        m.d.comb += [q_w.addr.eq(elem // seg), q_w.data.eq(shifted), q_r.addr.eq(si)]

        sq_w = n + iw + 1                                   # per-block sum of inliers
        m.submodules.bbuf = bmem = memory.Memory(shape=unsigned(8 + sq_w), depth=max(nb, 2),
                                                 init=[])
        b_w = bmem.write_port()
        b_r = bmem.read_port(domain="comb")
        sumq = Signal(signed(sq_w))
        blk_cur = Signal(range(max(nb, 2)))                 # block of segment si
        m.d.comb += blk_cur.eq(si // spb)
        m.d.comb += [b_w.addr.eq(elem // B), b_r.addr.eq(blk_cur)]
        sumq_next = Signal(signed(sq_w))
        m.d.comb += [sumq_next.eq(sumq + x.q), b_w.data.eq(Cat(x.exp, sumq_next))]

        if k:
            m.submodules.obuf = omem = memory.Memory(shape=unsigned(iw + 16), depth=max(nb * k, 2),
                                                     init=[])
            o_w = omem.write_port()
            o_r = omem.read_port(domain="comb")
            oslot = Signal(range(k + 1))
            eidx = Signal(iw)
            m.d.comb += eidx.eq(elem % B)
            m.d.comb += [o_w.addr.eq((elem // B) * k + oslot),
                         o_w.data.eq(Cat(eidx, x.value)),
                         o_r.addr.eq(blk_cur * k + oi)]

        anchor = Signal(signed(EXP_W))
        has = Signal()
        nan = Signal()
        lsb = Signal(signed(EXP_W))
        m.d.comb += lsb.eq(Mux(has, anchor - FRAC_BITS, 0))

        # -- weights -> cells (offset scheme: U = W + 2**(w-1), flip the sign bit) -----------
        for jj in range(NG):
            wv_in = self.i_w.payload.w[jj]
            u = Cat(wv_in[:wb - 1], ~wv_in[wb - 1])
            upad = Cat(u, Const(0, S * c - wb))
            for s in range(S):
                m.d.comb += prog_cells[jj * S + s].eq(upad[s * c:(s + 1) * c])
        expect = Signal(p.cols * c)
        m.d.comb += [prog_addr.eq(prow), read_addr.eq(prow)]

        # -- pulse digits: element digits of the segment, placed at its rows in the tile ---
        word = q_r.data
        dseg = Signal(seg * d)
        with m.Switch(pi):
            for pp in range(P):
                with m.Case(pp):
                    parts = []
                    for e in range(seg):
                        qe = word[e * n:(e + 1) * n]
                        if pp == P - 1:
                            parts.append(Cat(qe[n - 1], Const(0, d - 1)) if d > 1 else qe[n - 1])
                        else:
                            low = Cat(qe[:n - 1], Const(0, d * (P - 1) - (n - 1)))
                            parts.append(low[pp * d:(pp + 1) * d])
                    m.d.comb += dseg.eq(Cat(*parts))
        if spt == 1:
            m.d.comb += digits.eq(dseg)
        else:
            with m.Switch(si % spt):
                for o in range(spt):
                    with m.Case(o):
                        m.d.comb += digits.eq(dseg << (o * seg * d))

        # -- datapath per channel: part (block inlier sum), acc (aligned) -------------------
        part = [Signal(signed(TW), name=f"part{jj}") for jj in range(NG)]
        acc = [Signal(signed(AW), name=f"acc{jj}") for jj in range(NG)]
        last_pulse = pi == P - 1
        part_next_l = []
        for jj in range(NG):
            colv = Signal(S * c + tp.adc_width, name=f"colv{jj}")
            m.d.comb += colv.eq(sum(codes[jj * S + s] << (s * c) for s in range(S)))
            sh = Signal(TW, name=f"shv{jj}")
            with m.Switch(pi):
                for pp in range(P):
                    with m.Case(pp):
                        m.d.comb += sh.eq(colv << ((n - 1) if pp == P - 1 else pp * d))
            part_next = Signal(signed(TW), name=f"part_next{jj}")
            m.d.comb += part_next.eq(Mux(last_pulse, part[jj] - sh, part[jj] + sh))
            part_next_l.append(part_next)

        # outlier: FP lane (M x weight row) and its exponent
        if k:
            o_idx = o_r.data[:iw]
            o_val = o_r.data[iw:]
            om, oe = _bf16_fixed(m, o_val, "outl")
        # align: one shifter per channel, fed by the block term or the outlier term
        src_outl = Signal()      # 1: outlier term register, 0: block term
        oterm = [Signal(signed(10 + wb), name=f"oterm{jj}") for jj in range(NG)]
        oexp = Signal(signed(EXP_W))
        bexp = Signal(signed(EXP_W))
        E_b = b_r.data[:8]
        sumq_b = b_r.data[8:].as_signed()
        m.d.comb += bexp.eq(E_b - 127 - (n - 2))
        dsh = Signal(signed(EXP_W + 1))
        m.d.comb += dsh.eq(Mux(src_outl, oexp, bexp) - lsb)
        lsh = Signal(range(FRAC_BITS + 1))
        rsh = Signal(range(AW + 1))
        m.d.comb += [lsh.eq(Mux(dsh > FRAC_BITS, FRAC_BITS, Mux(dsh < 0, 0, dsh))),
                     rsh.eq(Mux(dsh >= 0, 0, Mux(-dsh > AW, AW, -dsh)))]
        aligned = []
        for jj in range(NG):
            term = Signal(signed(max(TW, 10 + wb) + 1), name=f"term{jj}")
            bterm = part[jj] - (sumq_b << (wb - 1))
            m.d.comb += term.eq(Mux(src_outl, oterm[jj], bterm))
            al = Signal(signed(AW), name=f"aligned{jj}")
            m.d.comb += al.eq(Mux(dsh >= 0, term << lsh, term >> rsh))
            aligned.append(al)

        # -- output conversion (sim.fixed.affine_round), stages C1..C4 ----------------------
        acc_sel = Array(acc)[j]
        sc, bi = sb_r.data[:16], sb_r.data[16:]
        sm, se = _bf16_fixed(m, sc, "scale")
        bm, be = _bf16_fixed(m, bi, "bias")
        PW = AW + 9
        c_pm = Signal(signed(PW))
        c_pe = Signal(signed(EXP_W))
        c_bm = Signal(signed(10))
        c_be = Signal(signed(EXP_W))
        c_bad = Signal()
        # C2
        apm = Signal(PW)
        m.d.comb += apm.eq(Mux(c_pm < 0, -c_pm, c_pm))
        abm = Signal(9)
        m.d.comb += abm.eq(Mux(c_bm < 0, -c_bm, c_bm))
        blp = _bitlen(m, apm, "bl_pm")
        top_p = Signal(signed(EXP_W))
        top_b = Signal(signed(EXP_W))
        m.d.comb += [top_p.eq(c_pe + blp), top_b.eq(c_be + 8)]
        top = Signal(signed(EXP_W))
        m.d.comb += top.eq(Mux(apm == 0, top_b, Mux(abm == 0, top_p,
                                                    Mux(top_p > top_b, top_p, top_b))))
        lo = Mux(c_pe < c_be, c_pe, c_be)
        L_next = Signal(signed(EXP_W))
        m.d.comb += L_next.eq(Mux((apm != 0) | (abm != 0),
                                  Mux(top - 58 > lo, top - 58, lo), lo))
        c_L = Signal(signed(EXP_W))
        # C3: jam both terms onto LSB L (3 guard bits, sticky) and add
        jams = []
        for name, mag, e, neg in (("p", apm, c_pe, c_pm < 0), ("b", abm, c_be, c_bm < 0)):
            dd = Signal(signed(EXP_W + 1), name=f"jd_{name}")
            m.d.comb += dd.eq(c_L - e)
            rs = Signal(range(64), name=f"jrs_{name}")
            ls = Signal(range(64), name=f"jls_{name}")
            m.d.comb += [rs.eq(Mux(dd > 63, 63, Mux(dd > 0, dd, 0))),
                         ls.eq(Mux(-dd > 63, 63, Mux(dd < 0, -dd, 0)))]
            lost = Signal(name=f"jlost_{name}")
            mask = Signal(64, name=f"jmask_{name}")
            m.d.comb += mask.eq((Const(1, 65) << rs) - 1)
            m.d.comb += lost.eq(Mux(dd > 0, ((mag & mask) != 0) | ((dd > 62) & (mag != 0)), 0))
            mg = Signal(62, name=f"jmag_{name}")
            m.d.comb += mg.eq(Mux(dd > 62, 0, Mux(dd > 0, mag >> rs, mag << ls)))
            jam = Signal(signed(65), name=f"jam_{name}")
            jm = Cat(lost, Const(0, 2), mg)
            m.d.comb += jam.eq(Mux(neg, -jm, jm))
            jams.append(jam)
        c_out = Signal(signed(66))
        # C4: round_fixed(out, L - 3)
        mo = Signal(65)
        m.d.comb += mo.eq(Mux(c_out < 0, -c_out, c_out))
        blo = _bitlen(m, mo, "bl_out")
        pp_ = Signal(signed(8))
        m.d.comb += pp_.eq(blo - 1)
        shift = Signal(range(66))
        m.d.comb += shift.eq(Mux(pp_ > 7, pp_ - 7, 0))
        qv = Signal(66)
        m.d.comb += qv.eq(mo >> shift)
        rnd = Signal()
        sticky = Signal()
        sh1 = Signal(range(66))
        m.d.comb += sh1.eq(Mux(shift > 0, shift - 1, 0))
        m.d.comb += [rnd.eq(Mux(shift > 0, (mo >> sh1)[0], 0)),
                     sticky.eq(Mux(shift > 1, (mo & ((Const(1, 67) << sh1) - 1)) != 0, 0))]
        up = rnd & (sticky | qv[0])
        q1 = Signal(10)
        m.d.comb += q1.eq(qv[:9] + up)
        carry = q1[8]
        q2 = Signal(9)
        m.d.comb += q2.eq(Mux(carry, q1 >> 1, q1))
        q3 = Signal(9)
        shl = Signal(range(8))
        m.d.comb += shl.eq(Mux(pp_ < 7, 7 - pp_, 0))
        m.d.comb += q3.eq(Mux(pp_ < 7, (mo << shl)[:9], q2))
        ebiased = Signal(signed(EXP_W + 2))
        m.d.comb += ebiased.eq(c_L - 3 + pp_ + carry + 127)
        res = Signal(16)
        neg_o = c_out < 0
        with m.If(mo == 0):
            m.d.comb += res.eq(0)
        with m.Elif(ebiased >= 0xFF):
            m.d.comb += res.eq(Mux(neg_o, 0xFF80, 0x7F80))
        with m.Elif(ebiased <= 0):
            m.d.comb += res.eq(Mux(neg_o, 0x8000, 0))
        with m.Else():
            m.d.comb += res.eq(Cat(q3[:7], ebiased[:8], neg_o))
        m.d.comb += self.o.payload.y.eq(Mux(c_bad, 0x7FC0, res))

        # -- control -----------------------------------------------------------------------
        def count(sig, amount):
            m.d.sync += sig.eq(sig + amount)

        def next_segment():
            """Leave segment ``si``: next segment, or the group's output conversion."""
            last_of_tile = ((si + 1) % spt == 0) | (si == nseg - 1)
            with m.If(last_of_tile):
                m.d.sync += slot.eq(Mux(slot == nphys - 1, 0, slot + 1))
            with m.If(si == nseg - 1):
                m.d.sync += j.eq(0)
                m.next = "C1"
            with m.Else():
                m.d.sync += si.eq(si + 1)
                m.next = "SEG"

        last_ch = (j == NG - 1) | (g * NG + j == N - 1)

        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += [waiting.eq(1), fire.eq(self.i_layer.valid),
                             self.i_layer.ready.eq(1)]
                with m.If(self.i_layer.valid):
                    m.d.sync += [vec_left.eq(self.i_layer.payload.vectors), ch.eq(0)]
                    m.next = "SB"
            with m.State("SB"):
                m.d.comb += [waiting.eq(1), fire.eq(self.i_sb.valid), self.i_sb.ready.eq(1),
                             sb_w.en.eq(self.i_sb.valid)]
                with m.If(self.i_sb.valid):
                    m.d.sync += ch.eq(ch + 1)
                    with m.If(ch == N - 1):
                        m.d.sync += [lt.eq(0), prow.eq(0), slot.eq(0)]
                        m.next = "PROG_W" if p.resident else "VEC"
            with m.State("PROG_W"):
                m.d.comb += [waiting.eq(1), fire.eq(self.i_w.valid), self.i_w.ready.eq(1),
                             prog_valid.eq(self.i_w.valid)]
                with m.If(self.i_w.valid):
                    m.d.sync += expect.eq(prog_cells.as_value())
                    count(self.reprogram_writes if not p.resident else self.cell_writes,
                          p.cols)
                    m.next = "PROG_R"
            with m.State("PROG_R"):
                m.d.comb += read_valid.eq(1)
                m.next = "PROG_C"
            with m.State("PROG_C"):
                m.d.comb += read_ready.eq(1)
                with m.If(row_cells.as_value() != expect):
                    count(self.verify_errors, 1)
                m.d.sync += prow.eq(prow + 1)
                m.next = "PROG_W"
                with m.If(prow == R - 1):
                    m.d.sync += prow.eq(0)
                    if p.resident:
                        m.d.sync += [lt.eq(lt + 1), slot.eq(slot + 1)]
                        with m.If(lt == p.tiles_needed - 1):
                            m.d.sync += slot.eq(0)
                            m.next = "VEC"
                    else:
                        m.d.sync += loaded.eq(1)
                        m.next = "SEG"
            with m.State("VEC"):
                m.d.sync += [elem.eq(0), sumq.eq(0), anchor.eq(0), has.eq(0), nan.eq(0),
                             g.eq(0), si.eq(0), slot.eq(0), loaded.eq(0)]
                if k:
                    m.d.sync += oslot.eq(0)
                with m.If(vec_left == 0):
                    m.next = "IDLE"
                with m.Else():
                    m.d.sync += vec_left.eq(vec_left - 1)
                    m.next = "IN"
            with m.State("IN"):
                m.d.comb += [waiting.eq(1), fire.eq(self.i_x.valid), self.i_x.ready.eq(1)]
                with m.If(self.i_x.valid):
                    m.d.sync += [elem.eq(elem + 1), sr.eq(shifted)]
                    m.d.comb += q_w.en.eq(elem % seg == seg - 1)
                    end_blk = elem % B == B - 1
                    m.d.comb += b_w.en.eq(end_blk)
                    m.d.sync += sumq.eq(Mux(end_blk, 0, sumq_next))
                    cands = [(x.exp != 0) & (x.exp != 0xFF), x.exp - 127 - (n - 2)]
                    cand_live = Signal()
                    cand = Signal(signed(EXP_W))
                    m.d.comb += [cand_live.eq(cands[0]), cand.eq(cands[1])]
                    if k:
                        vex = x.value[7:15]
                        with m.If(x.outlier):
                            m.d.comb += o_w.en.eq(1)
                            m.d.sync += oslot.eq(oslot + 1)
                            with m.If(vex == 0xFF):
                                m.d.sync += nan.eq(1)
                        with m.If(end_blk):
                            m.d.sync += oslot.eq(0)
                        olive = x.outlier & (vex != 0) & (vex != 0xFF)
                        ocand = vex - 134
                        # take the larger of the block and outlier candidates
                        both = Signal(signed(EXP_W))
                        blive = Signal()
                        m.d.comb += [blive.eq(cand_live | olive),
                                     both.eq(Mux(cand_live & (~olive | (cand >= ocand)),
                                                 cand, ocand))]
                        cand_live, cand = blive, both
                    with m.If(x.exp == 0xFF):
                        m.d.sync += nan.eq(1)
                    with m.If(cand_live & (~has | (cand > anchor))):
                        m.d.sync += [anchor.eq(cand), has.eq(1)]
                    with m.If(elem == K - 1):
                        m.next = "SEG"
            with m.State("SEG"):
                first_of_tile = si % spt == 0
                need_prog = first_of_tile & ~loaded if not p.resident else Const(0)
                with m.If(si == 0):
                    m.d.sync += [a.eq(0) for a in acc]
                with m.If(need_prog):
                    m.d.sync += prow.eq(0)
                    m.next = "PROG_W"
                with m.Else():
                    m.d.sync += loaded.eq(0)
                    with m.If(si % spb == 0):
                        m.d.sync += [pt.eq(0) for pt in part]
                    m.d.sync += [pi.eq(0), oi.eq(0)]
                    m.next = "PULSE"
            with m.State("PULSE"):
                m.d.comb += pulse_valid.eq(1)
                count(self.adc_conversions, p.cols)
                count(self.dac_pulses, R)
                m.next = "PWAIT"
            with m.State("PWAIT"):
                m.d.comb += codes_ready.eq(1)
                with m.If(codes_valid):
                    m.d.sync += [pt.eq(pn) for pt, pn in zip(part, part_next_l)]
                    m.d.sync += pi.eq(pi + 1)
                    with m.If(~last_pulse):
                        m.next = "PULSE"
                    with m.Else():
                        if k:
                            m.next = "OB"
                        else:
                            m.next = "FIN"
                            with m.If((si + 1) % spb != 0):
                                next_segment()
            if k:
                with m.State("OB"):
                    in_seg = (o_idx // seg) == (si % spb)
                    m.d.comb += read_addr.eq((si % spt) * seg + o_idx % seg)
                    with m.If(in_seg):
                        m.d.comb += read_valid.eq(1)
                        m.next = "OC"
                    with m.Else():
                        m.d.sync += oi.eq(oi + 1)
                        with m.If(oi == k - 1):
                            m.next = "FIN"
                            with m.If((si + 1) % spb != 0):
                                next_segment()
                with m.State("OC"):
                    m.d.comb += read_ready.eq(1)
                    count(self.fp_lane_ops, NG)
                    m.d.sync += oexp.eq(oe)
                    for jj in range(NG):
                        cells = [row_cells[jj * S + s] for s in range(S)]
                        u = Cat(*cells)[:wb]
                        wv = Cat(u[:wb - 1], ~u[wb - 1]).as_signed()
                        m.d.sync += oterm[jj].eq(om * wv)
                    m.next = "OD"
                with m.State("OD"):
                    m.d.comb += src_outl.eq(1)
                    m.d.sync += [a.eq(a + al) for a, al in zip(acc, aligned)]
                    m.d.sync += oi.eq(oi + 1)
                    m.next = "OB"
                    with m.If(oi == k - 1):
                        m.next = "FIN"
                        with m.If((si + 1) % spb != 0):
                            next_segment()
            with m.State("FIN"):
                m.d.sync += [a.eq(a + al) for a, al in zip(acc, aligned)]
                next_segment()
            with m.State("C1"):
                m.d.comb += sb_r.addr.eq(g * NG + j)
                m.d.sync += [c_pm.eq(acc_sel * sm), c_pe.eq(lsb + se), c_bm.eq(bm),
                             c_be.eq(be),
                             c_bad.eq(nan | (sc[7:15] == 0xFF) | (bi[7:15] == 0xFF))]
                m.next = "C2"
            with m.State("C2"):
                m.d.sync += c_L.eq(L_next)
                m.next = "C3"
            with m.State("C3"):
                m.d.sync += c_out.eq(jams[0] + jams[1])
                m.next = "C4"
            with m.State("C4"):
                m.d.comb += [waiting.eq(1), fire.eq(self.o.ready), self.o.valid.eq(1)]
                with m.If(self.o.ready):
                    m.d.sync += j.eq(j + 1)
                    m.next = "C1"
                    with m.If(last_ch):
                        m.d.sync += [g.eq(g + 1), si.eq(0)]
                        m.next = "SEG"
                        with m.If(g == G - 1):
                            m.next = "VEC"
        return m


UNIT = Unit(name="crossbar_ctrl", params=CrossbarCtrlParams, presets=PRESETS,
            component=CrossbarCtrl, golden=run,
            summary="crossbar controller: program/verify tiles, bit-serial MVM, outliers, bf16")
