"""Crossbar controller: one linear layer on crossbar tiles, MX-OP vectors in, bf16 out."""

import dataclasses

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from sim.crossbar_ctrl import (COUNTERS, FAULT_COUNTERS, FRAC_BITS, OUT_DEPTH, PRESETS,
                               CrossbarCtrlParams, run, slot_fault_map)

from . import numerics as hn
from .common import Pipeline, Unit
from .crossbar import Crossbar

__all__ = ["CrossbarCtrl", "layer_layout", "sb_layout", "w_layout", "x_layout", "o_layout",
           "COUNTER_WIDTH", "UNIT"]

COUNTER_WIDTH = 48
E = hn.EXP_WIDTH


def layer_layout(params):
    """Layer-job beat: the vectors the job runs with the loaded weights, the job's inlier
    width (2..``params.act_bits``; other values run as ``params.act_bits``), the bank of
    tiles it runs on (0..``params.banks - 1``; other values run on bank 0) and ``keep``: the
    bank already holds the job's weights, so the job takes no weight rows and programs
    nothing (resident layers only; ignored otherwise)."""
    return data.StructLayout({"vectors": unsigned(24), "act_bits": unsigned(4),
                              "bank": unsigned(max(1, (params.banks - 1).bit_length())),
                              "keep": unsigned(1)})


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


class CrossbarCtrl(wiring.Component):
    """Run a K x N linear layer on crossbar tiles: ``bf16(x @ W * scale + bias)`` per vector.

    Maps the signed ``weight_bits``-bit K x N weights onto ``row_tiles x groups`` tiles
    (``hw.crossbar.Crossbar``, offset scheme, ``slices`` cells per weight), programs and
    verifies them, then runs every MX-OP input vector on **all tiles at once**: for each
    segment phase, every tile applies the job's input digits as one pulse train (bit-serial,
    ``dac_bits`` per pulse, sign pulse last), then one-hot reads its outlier rows (the FP lane
    multiplies the exact weight row by the outlier's bf16 significand). The digital periphery
    shift-adds the ADC codes over pulses and slices, subtracts the offset, aligns every term
    to the vector's anchor (floor), reduces across row tiles exactly, and converts each
    channel once (``acc * 2**lsb * scale + bias``, RNE to bf16, ``sim.fixed.affine_round``).
    Bit-exact with ``sim.crossbar_ctrl.run``; counters exact with
    ``sim.crossbar_ctrl.counters``.

    Parameters
    ----------
    params : sim.crossbar_ctrl.CrossbarCtrlParams

    Members
    -------
    i_layer : In(stream.Signature(layer_layout(params)))
        Starts a layer job of ``vectors`` vectors with ``act_bits``-bit inliers on tile bank
        ``bank``, programming it unless ``keep`` (accepted when the previous job is done).
    i_sb : In(stream.Signature(sb_layout(params)))
        N beats per job: scale and bias of output channels 0..N-1.
    i_w : In(stream.Signature(w_layout(params)))
        Weight rows (``sim.crossbar_ctrl.weight_rows`` order). Resident layers: once per
        job, after the scales (none for a ``keep`` job). Otherwise the whole sequence once
        per vector; each wave of ``tiles`` tiles is programmed just before it runs.
    i_x : In(stream.Signature(x_layout(params)))
        K MX-OP element beats per vector (block ``min(block, K)``, exactly ``outliers``
        outliers per block, ``act_bits`` of the job, as ``sim.mxop.encode`` gives).
    o : Out(stream.Signature(o_layout(params)))
        N bf16 results per vector, channel order, after the vector's core.
    cycles, tile_pulses, adc_conversions, dac_pulses, cell_reads, outlier_reads, fp_lane_ops,
    out_conversions, cell_writes, reprogram_writes, verify_reads : Out(48)
        Counters since reset, equal to ``sim.crossbar_ctrl.counters`` (a cycle's events
        show one cycle later). ``cycles`` is chip time per the macro contract
        (docs/crossbar.md, "Counting chip time"): a tile operation counts the contract's
        cycles however long the emulation takes.
    emu_stall, emu_ahead : Out(48)
        Cycles the emulated tiles took beyond the contract, and contract cycles credited
        because they finished sooner: the run took ``cycles + emu_stall - emu_ahead`` clock
        cycles besides those waiting on a stream handshake.
    verify_errors : Out(16)
        Rows whose read-back after programming differed from the written cells (with
        ``faults``: after the last retry).
    stuck_detected, faulty_columns, repaired_columns : Out(48)
        Only with ``params.faults``: cells that failed verify after ``retries`` attempts
        (spares included), columns with such a cell, columns rebuilt in a spare column; equal
        to ``sim.faults.program``'s counts (``sim.crossbar_ctrl.counters``).

    Faults (``params.faults``; without them none of this logic exists): the tiles have
    stuck cells and ``spares`` spare columns (``hw.crossbar.Crossbar``). Programming writes
    a row, reads it back, and writes the cells that differ again, up to ``retries``
    attempts in all; a cell still wrong is counted and marks its column faulty. After a
    tile's rows, each faulty column (lowest first) is rebuilt in the next unused spare: the
    column's target cells (kept in a buffer of the tile's rows) are programmed into the spare
    over every row with the same verify-retry; a spare with a cell that fails is given up and
    the next one tried. The remap table (per tile, one column per spare) steers a verified
    spare's ADC codes and row-read cells into the faulty column's place, so the layer is
    bit-exact while every faulty column found a spare (``sim.faults.program`` is the model).

    Timing (chip cycles, docs/crossbar.md): per vector ``1 + K`` (input), ``core_cycles``
    per wave (tile-parallel pulse trains and outlier reads at the contract's
    ``pulse_cycles``), ``N + OUT_DEPTH`` (output conversion, one channel per cycle). Phases
    do not overlap. Backpressure on ``o`` holds the conversion pipeline; no beat is dropped
    or reordered.
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
        faults = FAULT_COUNTERS if params.faults is not None else ()
        for name in COUNTERS + ("emu_stall", "emu_ahead") + faults:
            ports[name] = Out(COUNTER_WIDTH)
        super().__init__(ports)

    # widths -----------------------------------------------------------------------------
    @property
    def term_width(self):
        """Signed width of a block's inlier term (part sums before the offset correction)."""
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
        K, N, R, C = p.in_features, p.out_features, p.rows, p.cols
        A, d, c, wb = p.act_bits, p.dac_bits, p.cell_bits, p.weight_bits
        S, NG, G, RT = tp.slices, p.channels, p.groups, p.row_tiles
        B, k = p.fmt.block, p.fmt.outliers
        seg, nseg, nb = p.seg, p.segments, p.nblocks
        spb, spt = B // seg, R // seg
        PM = tp.max_pulses
        Tn, nphys = p.tiles_needed, p.physical
        L = tp.pulse_cycles
        TW, AW = self.term_width, self.acc_width
        TWM = max(TW + 1, 9 + wb)                    # widest term into the aligner
        aw = tp.adc_width
        iw = max(1, (B - 1).bit_length())

        # -- the tiles: the macro port, emulated -------------------------------------------
        F, SP = p.faults is not None, tp.spares
        NB = p.banks
        m.submodules.xbar = xbar = Crossbar(dataclasses.replace(tp, tiles=nphys * NB),
                                            fault_map=slot_fault_map(p) if F else None)
        slot = Signal(range(max(nphys, 2)))
        # the physical tile of ``slot`` in the job's bank (bank b: tiles b * nphys on)
        bank_base = Signal(range(max(nphys * NB, 2)))
        tsel = Signal(range(max(nphys * NB, 2)))
        keep = Signal()
        m.d.comb += tsel.eq(bank_base + slot)
        cells_of = data.ArrayLayout(unsigned(c), C)

        # -- job state ---------------------------------------------------------------------
        a_vals = range(A + 1)
        core_m1 = [p.core_cycles(max(a, 2)) - 1 for a in a_vals]
        timer = Signal(range(max(max(core_m1), L) + 1))

        # -- counters and chip time: each cycle's increments are registered, then added ----
        most = {"cycles": max(max(core_m1), L, p.t_write) + 1,
                "tile_pulses": PM, "adc_conversions": PM * C, "dac_pulses": PM * seg,
                "cell_reads": PM * seg * C, "outlier_reads": 1, "fp_lane_ops": NG,
                "out_conversions": 1, "cell_writes": C, "reprogram_writes": C,
                "verify_reads": 1, "emu_stall": 1, "emu_ahead": max(max(core_m1), L, p.t_write)}
        if F:
            most.update(stuck_detected=C, faulty_columns=C, repaired_columns=1)
        inc = {name: Signal(range(v + 1), name=f"inc_{name}") for name, v in most.items()}
        for name, amount in inc.items():
            counter = getattr(self, name)
            amount_q = Signal.like(amount, name=f"{name}_q")
            m.d.sync += [amount_q.eq(amount), counter.eq(counter + amount_q)]
        chip, stall, ahead = inc["cycles"], inc["emu_stall"], inc["emu_ahead"]
        m.d.comb += chip.eq(1)
        vec_left = Signal(24)
        a_job = Signal(range(A + 1))
        p_job = Signal(range(PM + 1))
        core_budget = Signal(range(max(core_m1) + 1))

        # -- scale/bias and accumulator memories -------------------------------------------
        ch = Signal(range(max(N, 2)))
        m.submodules.sb = sbmem = memory.Memory(shape=unsigned(32), depth=max(N, 2), init=[])
        sb_w = sbmem.write_port()
        sb_r = sbmem.read_port(domain="sync")
        m.d.comb += [sb_w.addr.eq(ch), sb_w.data.eq(self.i_sb.payload.as_value())]
        acc_row = data.ArrayLayout(signed(AW), NG)
        m.submodules.accs = accmem = memory.Memory(shape=acc_row, depth=max(G, 2), init=[])
        acc_w = accmem.write_port()
        acc_r = accmem.read_port(domain="sync")

        # -- input buffers (written while the vector streams in) ---------------------------
        x = self.i_x.payload
        elem = Signal(range(K + 1))
        m.submodules.qbuf = qmem = memory.Memory(shape=unsigned(seg * A), depth=max(nseg, 2),
                                                 init=[])
        q_w = qmem.write_port()
        q_r = qmem.read_port(domain="sync")
        sr = Signal(seg * A, reset_less=True)
        shifted = Cat(sr[A:], x.q) if seg > 1 else x.q.as_unsigned()
        m.d.comb += [q_w.addr.eq(elem // seg), q_w.data.eq(shifted)]

        sq_w = A + iw + 1                                   # per-block sum of inliers
        blk_layout = data.StructLayout({"exp": unsigned(8), "sumq": signed(sq_w)})
        m.submodules.bbuf = bmem = memory.Memory(shape=blk_layout, depth=max(nb, 2), init=[])
        b_w = bmem.write_port()
        b_r = bmem.read_port(domain="comb")
        sumq = Signal(signed(sq_w))
        sumq_next = Signal(signed(sq_w))
        m.d.comb += [sumq_next.eq(sumq + x.q), b_w.addr.eq(elem // B),
                     b_w.data.exp.eq(x.exp), b_w.data.sumq.eq(sumq_next)]

        outl_layout = data.StructLayout({"idx": unsigned(iw), "value": unsigned(16)})
        if k:
            m.submodules.obuf = omem = memory.Memory(shape=outl_layout, depth=max(nb * k, 2),
                                                     init=[])
            o_w = omem.write_port()
            o_r = omem.read_port(domain="comb")
            oslot = Signal(range(k + 1))
            m.d.comb += [o_w.addr.eq((elem // B) * k + oslot), o_w.data.idx.eq(elem % B),
                         o_w.data.value.eq(x.value)]

        # the anchor: the largest live block scale exponent E - 127 - (n - 2) or outlier
        # exponent Eo - 134, kept as the largest raw E and Eo (one 8-bit compare per beat);
        # lsb and the aligner's shift bases are registers, settled long before their use
        bmax, omax = Signal(8), Signal(8)
        bhas, ohas = Signal(), Signal()
        nan = Signal()
        anchor_b = Signal(signed(E))
        m.d.comb += anchor_b.eq(bmax - (125 + a_job))
        anchor = Mux(bhas & (~ohas | (anchor_b >= omax - 134)), anchor_b, omax - 134)
        lsb = Signal(signed(E))
        base_b, base_o = Signal(signed(E + 1)), Signal(signed(E + 1))
        m.d.sync += [lsb.eq(Mux(bhas | ohas, anchor - FRAC_BITS, 0)),
                     base_b.eq(FRAC_BITS + 125 + a_job + lsb), base_o.eq(FRAC_BITS + 134 + lsb)]

        # -- engine state ------------------------------------------------------------------
        g = Signal(range(max(G, 2)))
        t = Signal(range(max(RT, 2)))
        o = Signal(range(max(spt, 2)))                      # segment within the tile
        si = Signal(range(max(nseg, 2)))                    # segment within the vector
        lt = Signal(range(Tn + 1))                          # logical tile (g, t)
        blk = Signal(range(max(nb, 2)))
        m.d.comb += blk.eq(si // spb)
        pb = Signal(range(PM + 1))                          # codes beat within the train
        oi = Signal(range(max(k, 1) + 1))                   # outlier slot of the block

        # -- weights -> cells (offset scheme: U = W + 2**(w-1), flip the sign bit) ----------
        prow = Signal(range(R))
        wave_last = Signal(range(max(nphys, 2)))
        prog_cells = Signal(cells_of)
        for jj in range(NG):
            wv_in = self.i_w.payload.w[jj]
            u = Cat(wv_in[:wb - 1], ~wv_in[wb - 1], Const(0, S * c - wb))
            for s in range(S):
                m.d.comb += prog_cells[jj * S + s].eq(u[s * c:(s + 1) * c])
        expect = Signal(C * c, reset_less=True)
        m.d.comb += [xbar.i_prog.payload.tile.eq(tsel), xbar.i_prog.payload.addr.eq(prow)]
        if F:
            rp = _Repair(m, p, xbar, slot, prow, prog_cells, expect)
        else:
            m.d.comb += xbar.i_prog.payload.cells.eq(prog_cells)

        # -- pulse-train digits of segment si, at its rows of the tile ---------------------
        # digit j of magnitude pulse pp is bit pp*d + j of q mod 2**(a-1); the sign pulse is
        # q's sign bit; each plane is built for all seg elements at once
        lowmask = Signal(A - 1 + d * PM)
        m.d.comb += lowmask.eq(Array([Const((1 << (max(a, 2) - 1)) - 1, A - 1)
                                      for a in a_vals])[a_job])
        elems = [q_r.data[e * A:(e + 1) * A] for e in range(seg)]
        sign_plane = Cat(*(Cat(qe[A - 1], Const(0, d - 1)) for qe in elems))
        planes = []
        for pp in range(PM):
            bits = range(pp * d, (pp + 1) * d)
            mag_plane = Cat(*(Cat(*(qe[b] if b < A - 1 else Const(0, 1) for b in bits))
                              for qe in elems))
            mask = Cat(*([lowmask[pp * d:(pp + 1) * d]] * seg))
            digs = Signal(seg * d, name=f"digits{pp}")
            mag = Mux(p_job > pp + 1, mag_plane & mask, 0) if pp + 1 < PM else 0
            m.d.comb += digs.eq(Mux(p_job == pp + 1, sign_plane, mag))
            plane = Signal(R * d, name=f"plane{pp}")
            if spt == 1:
                m.d.comb += plane.eq(digs)
            else:
                m.d.comb += plane.eq(digs << (o * (seg * d)))
            planes.append(plane)
        req_dig = Signal(PM * R * d, reset_less=True)
        m.d.comb += [xbar.i_pulse.payload.tile.eq(tsel), xbar.i_pulse.payload.pulses.eq(p_job),
                     xbar.i_pulse.payload.digits.eq(req_dig)]

        # -- periphery 1: shift-add of the codes over slices and pulses into part ----------
        # (the periphery's pipelines never stall: a constant clock enable)
        beat_take = Signal()
        sa = Pipeline(m, beat_take, name="sa")
        m.d.comb += sa.ce.eq(1)
        last_pulse = pb == p_job - 1
        s1 = sa.stage(codes=rp.remap(xbar.o_codes.payload.codes) if F and SP
                      else xbar.o_codes.payload.codes, neg=last_pulse,
                      sh=Mux(last_pulse, a_job - 1, pb * d)[:(A - 1).bit_length()])
        s2 = sa.stage(**{f"colv{jj}": sum(s1.codes[jj * S + s] << (s * c) for s in range(S))
                         for jj in range(NG)}, drop=("codes",))
        s3 = sa.stage(**{f"sv{jj}": Mux(s2.neg, -(s2.fields[f"colv{jj}"] << s2.sh),
                                        s2.fields[f"colv{jj}"] << s2.sh)
                         for jj in range(NG)},
                      drop=tuple(f"colv{jj}" for jj in range(NG)))
        periph_busy = s1.valid | s2.valid | s3.valid
        part = [Signal(signed(TW), name=f"part{jj}", reset_less=True) for jj in range(NG)]
        clear_part = Signal()
        for jj in range(NG):
            with m.If(clear_part):
                m.d.sync += part[jj].eq(0)
            with m.Elif(s3.valid):
                m.d.sync += part[jj].eq(part[jj] + s3.fields[f"sv{jj}"])

        # -- periphery 2: align one term per channel to the anchor (floor), accumulate -----
        # inject: term and shift; then coarse (multiples of 8) and fine right shifts of
        # term * 2**16 by 16 - (term exponent - lsb) = base - E (the raw biased exponent);
        # then the accumulator
        inject = Signal()
        inj_term = [Signal(signed(TWM), name=f"inj_term{jj}") for jj in range(NG)]
        inj_base = Signal(signed(E + 1))
        inj_e = Signal(8)
        al = Pipeline(m, inject, name="al")
        m.d.comb += al.ce.eq(1)
        a0 = al.stage(base=inj_base, e=inj_e, **{f"t{jj}": t for jj, t in enumerate(inj_term)})
        dsh = Signal(signed(E + 2))
        m.d.comb += dsh.eq(a0.base - a0.e)
        amt_max = TWM + FRAC_BITS
        amt = Mux(dsh < 0, 0, Mux(dsh > amt_max, amt_max, dsh))[:amt_max.bit_length()]
        a1 = al.stage(amt=amt, drop=("base", "e"))
        a2 = al.stage(**{f"c{jj}": (a1.fields[f"t{jj}"] << FRAC_BITS)
                         >> Cat(Const(0, 3), a1.amt[3:]) for jj in range(NG)},
                      drop=tuple(f"t{jj}" for jj in range(NG)))
        a3 = al.stage(**{f"f{jj}": a2.fields[f"c{jj}"] >> a2.amt[:3] for jj in range(NG)},
                      drop=tuple(f"c{jj}" for jj in range(NG)))
        align_busy = a0.valid | a1.valid | a2.valid | a3.valid
        acc = [Signal(signed(AW), name=f"acc{jj}", reset_less=True) for jj in range(NG)]
        clear_acc = Signal()
        for jj in range(NG):
            with m.If(clear_acc):
                m.d.sync += acc[jj].eq(0)
            with m.Elif(a3.valid):
                m.d.sync += acc[jj].eq(acc[jj] + a3.fields[f"f{jj}"])
        m.d.comb += [acc_w.addr.eq(g), acc_w.data.eq(Cat(*acc))]

        # block term: part - 2**(w-1) * sum(q) at the block's scale exponent
        bdata = b_r.data
        m.d.comb += b_r.addr.eq(blk)
        bterm = [part[jj] - (bdata.sumq << (wb - 1)) for jj in range(NG)]

        # outlier: one-hot row read -> exact weights; FP lane: significand x weight
        if k:
            m.d.comb += o_r.addr.eq(blk * k + oi)
            o_idx = o_r.data.idx
            om_in, _, _ = hn.to_fixed(m, o_r.data.value, name="outl")
            om = Signal(signed(9))
            oe = Signal(8)
            orow = Signal(range(R))
            wrow = [Signal(signed(wb), name=f"wrow{jj}", reset_less=True) for jj in range(NG)]
            m.d.comb += [xbar.i_read.payload.tile.eq(tsel)]
            row_cells = xbar.o_read.payload.cells
            if F and SP:
                row_cells = rp.remap(row_cells)

        # -- output conversion: one channel per cycle through affine_round -----------------
        feeding = Signal()
        og = Signal(range(max(G, 2)))
        oj = Signal(range(max(NG, 2)))
        sent = Signal(range(max(N, 2)))
        pipe = Pipeline(m, feeding, name="cv")
        m.d.comb += [acc_r.addr.eq(og), acc_r.en.eq(pipe.ce), sb_r.addr.eq(ch),
                     sb_r.en.eq(pipe.ce)]
        c1 = pipe.stage(j=oj)
        c2 = pipe.stage(acc=acc_r.data[c1.j], sb=sb_r.data, drop=("j",))
        acc_in = c2.acc if AW <= 47 else c2.acc[:47].as_signed()
        _, y = hn.affine_round(m, pipe, acc_in, lsb, c2.sb[:16], c2.sb[16:], nan, name="cv")
        pipe.drive(self.o, y=y)
        assert pipe.depth == OUT_DEPTH
        with m.If(feeding & pipe.ce):
            m.d.sync += [ch.eq(ch + 1), oj.eq(oj + 1)]
            with m.If(oj == NG - 1):
                m.d.sync += [oj.eq(0), og.eq(og + 1)]
            with m.If(ch == N - 1):
                m.d.sync += feeding.eq(0)
        out_fire = self.o.valid & self.o.ready
        m.d.comb += inc["out_conversions"].eq(out_fire)

        # -- control -----------------------------------------------------------------------
        # A tile operation issued with ``timer = contract cycles - 1`` counts one chip cycle
        # per cycle while the timer runs, an emu_stall cycle per cycle after; the cycle it
        # is done counts itself and the rest of the timer (emu_ahead: credited, not spent).
        def finished():
            m.d.comb += [chip.eq(timer + 1), ahead.eq(timer)]

        def running():
            with m.If(timer != 0):
                m.d.sync += timer.eq(timer - 1)
            with m.Else():
                m.d.comb += [chip.eq(0), stall.eq(1)]

        def settle(done):
            with m.If(done):
                finished()
            with m.Else():
                running()

        core = Signal()          # in the core, before its end: the core's timer runs
        with m.If(core):
            running()

        def wait_for(handshake):
            """A cycle spent waiting on a stream of the environment is no chip time."""
            m.d.comb += chip.eq(handshake)

        def start_core():
            m.d.sync += [timer.eq(core_budget), slot.eq(0)]

        def start_prog(last):
            m.d.sync += [prow.eq(0), slot.eq(0), wave_last.eq(last)]

        def advance_tile(nxt):
            """Move to logical tile ``lt + 1``; a new wave is programmed first."""
            m.d.sync += lt.eq(lt + 1)
            if p.resident:
                m.d.sync += slot.eq(slot + 1)
                m.next = nxt
            else:
                with m.If(slot == nphys - 1):
                    m.next = "WAVE_END"
                with m.Else():
                    m.d.sync += slot.eq(slot + 1)
                    m.next = nxt

        with m.FSM() as fsm:
            with m.State("IDLE"):
                wait_for(self.i_layer.valid)
                with m.If(self.i_layer.valid):
                    a_in = self.i_layer.payload.act_bits
                    a = Mux((a_in >= 2) & (a_in <= A), a_in, A)
                    if NB > 1:
                        b_in = self.i_layer.payload.bank
                        m.d.sync += bank_base.eq(Mux(b_in < NB, b_in, 0) * nphys)
                    if p.resident:
                        m.d.sync += keep.eq(self.i_layer.payload.keep)
                    m.d.sync += [vec_left.eq(self.i_layer.payload.vectors), ch.eq(0),
                                 a_job.eq(a),
                                 p_job.eq(Array([Const(p.pulses(max(v, 2)), range(PM + 1))
                                                 for v in a_vals])[a]),
                                 core_budget.eq(Array([Const(v, core_budget.shape())
                                                       for v in core_m1])[a])]
                    m.next = "SB"
            with m.State("SB"):
                wait_for(self.i_sb.valid)
                m.d.comb += sb_w.en.eq(self.i_sb.valid)
                with m.If(self.i_sb.valid):
                    m.d.sync += ch.eq(ch + 1)
                    with m.If(ch == N - 1):
                        if p.resident:
                            start_prog(nphys - 1)
                            with m.If(keep):
                                m.next = "VEC"
                            with m.Else():
                                m.next = "PROG_W"
                        else:
                            m.next = "VEC"

            # program and verify one row: write beat, rest of the write pulse, read-back
            with m.State("PROG_W"):
                # the emulation writes in the transfer cycle: the write pulse's t_write cycles
                # are credited at once. With faults, retries and spare columns write without
                # an i_w beat (``rp.internal``)
                want = Mux(rp.internal, 1, self.i_w.valid) if F else self.i_w.valid
                fire = want & xbar.i_prog.ready
                m.d.comb += [chip.eq(Mux(fire, p.t_write, 0)),
                             ahead.eq(Mux(fire, p.t_write - 1, 0)),
                             stall.eq(want & ~xbar.i_prog.ready),
                             xbar.i_prog.valid.eq(want)]
                with m.If(fire):
                    if F:
                        rp.wrote(inc)
                    else:
                        m.d.sync += expect.eq(prog_cells.as_value())
                        m.d.comb += inc["cell_writes" if p.resident else "reprogram_writes"].eq(C)
                    m.next = "PROG_R"
            with m.State("PROG_R"):
                m.d.comb += [xbar.i_read.valid.eq(1), xbar.i_read.payload.addr.eq(prow),
                             xbar.i_read.payload.tile.eq(tsel),
                             chip.eq(xbar.i_read.ready), stall.eq(~xbar.i_read.ready)]
                with m.If(xbar.i_read.ready):
                    m.d.comb += inc["verify_reads"].eq(1)
                    m.d.sync += timer.eq(L - 1)
                    m.next = "PROG_V"
            def tile_done():
                m.d.sync += slot.eq(slot + 1)
                with m.If(slot == wave_last):
                    if p.resident:
                        m.next = "VEC"
                    else:
                        start_core()
                        m.next = "SEG"

            with m.State("PROG_V"):
                # the read-back is due pulse_cycles after the request; compare, next row
                m.d.comb += xbar.o_read.ready.eq(1)
                settle(xbar.o_read.valid)
                with m.If(xbar.o_read.valid):
                    if F:
                        rp.verified(inc, self.verify_errors, tile_done)
                    else:
                        with m.If(xbar.o_read.payload.cells.as_value() != expect):
                            m.d.sync += self.verify_errors.eq(self.verify_errors + 1)
                        m.d.sync += prow.eq(prow + 1)
                        m.next = "PROG_W"
                        with m.If(prow == R - 1):
                            tile_done()
            if F and SP:
                with m.State("SPARE_NEXT"):
                    rp.next_spare(tile_done)

            with m.State("VEC"):
                m.d.sync += [elem.eq(0), sumq.eq(0), bhas.eq(0), ohas.eq(0), nan.eq(0),
                             g.eq(0), t.eq(0), o.eq(0), si.eq(0), lt.eq(0), ch.eq(0),
                             og.eq(0), oj.eq(0), sent.eq(0)]
                m.d.comb += clear_acc.eq(1)
                if k:
                    m.d.sync += oslot.eq(0)
                with m.If(vec_left == 0):
                    m.next = "IDLE"
                with m.Else():
                    m.d.sync += vec_left.eq(vec_left - 1)
                    m.next = "IN"
            with m.State("IN"):
                wait_for(self.i_x.valid)
                with m.If(self.i_x.valid):
                    m.d.sync += [elem.eq(elem + 1), sr.eq(shifted)]
                    m.d.comb += q_w.en.eq(elem % seg == seg - 1)
                    end_blk = elem % B == B - 1
                    m.d.comb += b_w.en.eq(end_blk)
                    m.d.sync += sumq.eq(Mux(end_blk, 0, sumq_next))
                    with m.If((x.exp != 0) & (x.exp != 0xFF) & (~bhas | (x.exp > bmax))):
                        m.d.sync += [bmax.eq(x.exp), bhas.eq(1)]
                    if k:
                        vex = x.value[7:15]
                        with m.If(x.outlier):
                            m.d.comb += o_w.en.eq(1)
                            m.d.sync += oslot.eq(oslot + 1)
                            with m.If(vex == 0xFF):
                                m.d.sync += nan.eq(1)
                        with m.If(end_blk):
                            m.d.sync += oslot.eq(0)
                        with m.If(x.outlier & (vex != 0) & (vex != 0xFF)
                                  & (~ohas | (vex > omax))):
                            m.d.sync += [omax.eq(vex), ohas.eq(1)]
                    with m.If(x.exp == 0xFF):
                        m.d.sync += nan.eq(1)
                    with m.If(elem == K - 1):
                        if p.resident:
                            start_core()
                            m.next = "SEG"
                        else:
                            start_prog(nphys - 1)
                            m.next = "PROG_W"

            # -- the core: the emulated tiles, one request at a time ------------------------
            with m.State("SEG"):
                m.d.comb += [core.eq(1), q_r.addr.eq(si), q_r.en.eq(1)]
                with m.If(si % spb == 0):
                    m.d.comb += clear_part.eq(1)
                m.next = "PREP"
            with m.State("PREP"):
                m.d.comb += core.eq(1)
                m.d.sync += req_dig.eq(Cat(*planes))
                m.next = "REQ"
            with m.State("REQ"):
                m.d.comb += [core.eq(1), xbar.i_pulse.valid.eq(1)]
                with m.If(xbar.i_pulse.ready):
                    m.d.comb += [inc["tile_pulses"].eq(p_job),
                                 inc["adc_conversions"].eq(p_job * C),
                                 inc["dac_pulses"].eq(p_job * seg),
                                 inc["cell_reads"].eq(p_job * (seg * C))]
                    m.d.sync += pb.eq(0)
                    m.next = "BEATS"
            with m.State("BEATS"):
                m.d.comb += [core.eq(1), xbar.o_codes.ready.eq(1),
                             beat_take.eq(xbar.o_codes.valid)]
                with m.If(xbar.o_codes.valid):
                    m.d.sync += pb.eq(pb + 1)
                    with m.If(pb == p_job - 1):
                        if k:
                            m.d.sync += oi.eq(0)
                            m.next = "OSEL"
                        else:
                            m.next = "DRAIN"
            if k:
                with m.State("OSEL"):
                    m.d.comb += core.eq(1)
                    with m.If(o_idx // seg == si % spb):
                        m.d.sync += [orow.eq((o * seg if spt > 1 else 0) + o_idx % seg),
                                     om.eq(om_in), oe.eq(o_r.data.value[7:15])]
                        m.next = "OREQ"
                    with m.Else():
                        m.d.sync += oi.eq(oi + 1)
                        with m.If(oi == k - 1):
                            m.next = "DRAIN"
                with m.State("OREQ"):
                    m.d.comb += [core.eq(1), xbar.i_read.valid.eq(1),
                                 xbar.i_read.payload.addr.eq(orow)]
                    with m.If(xbar.i_read.ready):
                        m.d.comb += [inc["outlier_reads"].eq(1), inc["adc_conversions"].eq(C),
                                     inc["dac_pulses"].eq(1), inc["cell_reads"].eq(C),
                                     inc["fp_lane_ops"].eq(NG)]
                        m.next = "ORESP"
                with m.State("ORESP"):
                    m.d.comb += [core.eq(1), xbar.o_read.ready.eq(1)]
                    with m.If(xbar.o_read.valid):
                        for jj in range(NG):
                            u = Cat(*(row_cells[jj * S + s] for s in range(S)))[:wb]
                            m.d.sync += wrow[jj].eq(Cat(u[:wb - 1], ~u[wb - 1]).as_signed())
                        m.next = "OMUL"
                with m.State("OMUL"):
                    m.d.comb += [core.eq(1), inject.eq(1), inj_base.eq(base_o), inj_e.eq(oe)]
                    m.d.comb += [it.eq(om * w) for it, w in zip(inj_term, wrow)]
                    m.d.sync += oi.eq(oi + 1)
                    m.next = "OSEL"
                    with m.If(oi == k - 1):
                        m.next = "DRAIN"
            with m.State("DRAIN"):
                m.d.comb += core.eq(1)
                with m.If(~periph_busy):
                    m.next = "BTERM" if spb == 1 else "NEXT"
                    if spb > 1:
                        with m.If(si % spb == spb - 1):
                            m.next = "BTERM"
            with m.State("BTERM"):
                m.d.comb += [core.eq(1), inject.eq(1), inj_base.eq(base_b),
                             inj_e.eq(bdata.exp)]
                m.d.comb += [it.eq(bt) for it, bt in zip(inj_term, bterm)]
                m.next = "NEXT"
            with m.State("NEXT"):
                m.d.comb += core.eq(1)
                last_seg = (o == spt - 1) | (si == nseg - 1) if spt > 1 else Const(1)
                with m.If(~last_seg):
                    m.d.sync += [o.eq(o + 1), si.eq(si + 1)]
                    m.next = "SEG"
                with m.Elif(t != RT - 1):
                    m.d.sync += [t.eq(t + 1), o.eq(0), si.eq(si + 1)]
                    advance_tile("SEG")
                with m.Else():
                    m.next = "GROUP_END"
            with m.State("GROUP_END"):
                m.d.comb += core.eq(1)
                with m.If(~align_busy):
                    m.d.comb += [acc_w.en.eq(1), clear_acc.eq(1)]
                    with m.If(g == G - 1):
                        m.next = "DONE"
                    with m.Else():
                        m.d.sync += [g.eq(g + 1), t.eq(0), o.eq(0), si.eq(0)]
                        advance_tile("SEG")
            if not p.resident:
                with m.State("WAVE_END"):
                    finished()
                    start_prog(Mux(Tn - lt > nphys, nphys - 1, Tn - lt - 1))
                    m.next = "PROG_W"
            with m.State("DONE"):
                finished()
                m.d.sync += [feeding.eq(1), ch.eq(0)]
                m.next = "OUT"

            # -- output conversion ----------------------------------------------------------
            with m.State("OUT"):
                m.d.comb += chip.eq(pipe.ce)
                with m.If(out_fire):
                    m.d.sync += sent.eq(sent + 1)
                    with m.If(sent == N - 1):
                        m.next = "VEC"
        # the input streams' ready: plain expressions of the state (defined from time 0)
        w_ready = fsm.ongoing("PROG_W") & xbar.i_prog.ready
        m.d.comb += [self.i_layer.ready.eq(fsm.ongoing("IDLE")),
                     self.i_sb.ready.eq(fsm.ongoing("SB")),
                     self.i_w.ready.eq(w_ready & ~rp.internal if F else w_ready),
                     self.i_x.ready.eq(fsm.ongoing("IN"))]
        return m


def _popcount(v):
    """Number of set bits of ``v``: a balanced adder tree."""
    terms = [v[i] for i in range(len(v))]
    while len(terms) > 1:
        terms = [a + b for a, b in zip(terms[::2], terms[1::2])] + terms[len(terms) & ~1:]
    return terms[0]


class _Repair:
    """Program-verify-retry and spare-column repair of the controller (``params.faults``).

    Drives the cells of ``xbar.i_prog`` and holds the state of one tile's programming: the
    attempt of the current row, the cells that failed it (``miss``), the faulty columns not
    yet repaired (``pending``), the spare being tried, and the remap table of every tile.
    The controller's PROG_W, PROG_V and SPARE_NEXT states call ``wrote``, ``verified`` and
    ``next_spare``; ``remap`` gives the codes and cells of a read with the spares steered in.
    """

    def __init__(self, m, p, xbar, slot, prow, prog_cells, expect):
        self.m, self.p, self.xbar, self.slot, self.prow = m, p, xbar, slot, prow
        tp = p.tile
        C, c, SP = p.cols, p.cell_bits, tp.spares
        nphys = p.physical
        self.C, self.c, self.SP = C, c, SP
        self.prog_cells, self.expect = prog_cells, expect
        self.attempt = Signal(range(max(p.faults.retries, 2)))
        self.again = Signal()                 # writing the cells of ``miss`` again
        self.miss = Signal(C)
        self.pass2 = Signal()                 # programming spare ``sp`` with column ``col``
        self.pending = Signal(C)
        self.sp = Signal(range(SP + 1))
        self.col = Signal(range(C))
        self.sp_fail = Signal()
        self.internal = self.again | self.pass2
        self.valid = [Signal(SP, name=f"remap_valid{t}") for t in range(nphys)]
        self.cols = [[Signal(range(C), name=f"remap_col{t}_{s}") for s in range(SP)]
                     for t in range(nphys)]
        main = Mux(self.again, expect, prog_cells.as_value())
        spares = [Const(0, c)] * SP
        if SP:
            # the tile's target rows, for the spare columns; read in the cycle they are used
            m.submodules.targets = tmem = memory.Memory(shape=unsigned(C * c), depth=p.rows,
                                                        init=[])
            self.tw = tmem.write_port()
            tr = tmem.read_port(domain="comb")
            m.d.comb += [self.tw.addr.eq(prow), self.tw.data.eq(prog_cells.as_value()),
                         tr.addr.eq(prow)]
            self.target = tr.data
            main = Mux(self.pass2, tr.data, main)
            cur_valid, cur_cols = self._current()
            spares = [Mux(self.pass2 & (self.sp == s), self._target_cell(self.col),
                          Mux(self.pass2 & cur_valid[s], self._target_cell(cur_cols[s]), 0))
                      for s in range(SP)]
        m.d.comb += xbar.i_prog.payload.cells.eq(Cat(main, *spares))

    def _current(self):
        """The remap table of the current tile: (valid bits, the column of every spare)."""
        valid = Array(self.valid)[self.slot]
        cols = [Array([t[s] for t in self.cols])[self.slot] for s in range(self.SP)]
        return valid, cols

    def _target_cell(self, col):
        return self.target.word_select(col, self.c)

    def remap(self, cells):
        """``cells`` (a read's ``phys_cols`` codes or cells) with every remapped column
        replaced by its spare's: a view of ``cols`` elements."""
        valid, cols = self._current()
        elem = cells.shape().elem_shape
        out = Signal(data.ArrayLayout(elem, self.C), name="remapped")
        for j in range(self.C):
            v = cells[j]
            for s in range(self.SP):
                v = Mux(valid[s] & (cols[s] == j), cells[self.C + s], v)
            self.m.d.comb += out[j].eq(v)
        return out

    def wrote(self, inc):
        """A row write transferred: count its cells; keep a new row's targets."""
        m = self.m
        with m.If(self.again):
            m.d.comb += inc["cell_writes"].eq(_popcount(self.miss))
        with m.Elif(self.pass2):
            m.d.comb += inc["cell_writes"].eq(1)
        with m.Else():
            m.d.sync += self.expect.eq(self.prog_cells.as_value())
            m.d.comb += inc["cell_writes"].eq(self.C)
            if self.SP:
                m.d.comb += self.tw.en.eq(1)
                with m.If(self.prow == 0):          # the tile is programmed anew
                    m.d.sync += Array(self.valid)[self.slot].eq(0)

    def verified(self, inc, errors, tile_done):
        """The read-back is here: retry the cells that differ, or count them and go on."""
        m, p, C, c = self.m, self.p, self.C, self.c
        got = self.xbar.o_read.payload.cells
        want = self.expect
        miss_main = Cat(*(got[j] != want[j * c:(j + 1) * c] for j in range(C)))
        miss = miss_main
        if self.SP:
            miss = Mux(self.pass2, Array(got[C + s] for s in range(self.SP))[self.sp]
                       != self._target_cell(self.col), miss_main)
        with m.If((miss != 0) & (self.attempt != p.faults.retries - 1)):
            m.d.sync += [self.attempt.eq(self.attempt + 1), self.again.eq(1),
                         self.miss.eq(miss)]
            m.next = "PROG_W"
        with m.Else():
            m.d.sync += [self.attempt.eq(0), self.again.eq(0)]
            with m.If(miss != 0):
                m.d.sync += errors.eq(errors + 1)
                m.d.comb += inc["stuck_detected"].eq(_popcount(miss))
                with m.If(self.pass2):
                    m.d.sync += self.sp_fail.eq(1)
                with m.Else():
                    m.d.sync += self.pending.eq(self.pending | miss_main)
                    m.d.comb += inc["faulty_columns"].eq(_popcount(miss_main & ~self.pending))
            m.d.sync += self.prow.eq(self.prow + 1)
            m.next = "PROG_W"
            with m.If(self.prow == p.rows - 1):
                if not self.SP:
                    tile_done()
                else:
                    with m.If(self.pass2):
                        with m.If(~self.sp_fail & (miss == 0)):     # the spare verified
                            m.d.sync += [
                                Array(self.valid)[self.slot].bit_select(self.sp, 1).eq(1),
                                Array(Array(t) for t in self.cols)[self.slot][self.sp]
                                .eq(self.col),
                                self.pending.bit_select(self.col, 1).eq(0)]
                            m.d.comb += inc["repaired_columns"].eq(1)
                        m.d.sync += [self.sp.eq(self.sp + 1), self.sp_fail.eq(0)]
                    m.next = "SPARE_NEXT"

    def next_spare(self, tile_done):
        """Rebuild the lowest faulty column in the next spare, or finish the tile."""
        m = self.m
        m.d.sync += self.prow.eq(0)
        with m.If((self.pending != 0) & (self.sp != self.SP)):
            for j in reversed(range(self.C)):           # the lowest pending column wins
                with m.If(self.pending[j]):
                    m.d.sync += self.col.eq(j)
            m.d.sync += self.pass2.eq(1)
            m.next = "PROG_W"
        with m.Else():
            m.d.sync += [self.pass2.eq(0), self.sp.eq(0), self.pending.eq(0)]
            m.next = "PROG_W"
            tile_done()


UNIT = Unit(name="crossbar_ctrl", params=CrossbarCtrlParams, presets=PRESETS,
            component=CrossbarCtrl, golden=run,
            summary="crossbar controller: program/verify, tile-parallel pulse trains, outliers, "
                    "bf16")
