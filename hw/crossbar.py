"""Memristor crossbar tiles: the macro port, and a synthesizable digital emulation behind it."""

import collections

import numpy as np
from amaranth.hdl import Cat, Const, Module, Mux, Signal, unsigned
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from sim.crossbar import PRESETS, CrossbarParams, mvm
from sim.faults import tile_fault_map

from .common import SRAM, Unit

__all__ = ["Crossbar", "prog_layout", "read_layout", "row_layout", "pulse_layout",
           "codes_layout", "EMU_SWEEP_EXTRA", "UNIT"]

SWAR_BITS = 64
"""Widest adder of the emulation's packed column sums (a 64-bit carry chain closes 150 MHz on
the ECP5; Verilator adds 64 bits in one instruction)."""

EMU_SWEEP_EXTRA = 3
"""Emulation of a pulse train: the request cycle, ``rows`` sweep cycles, this many more
(read and accumulate pipeline, less the request cycle) before the first codes beat."""


_Port = collections.namedtuple("_Port", "addr data en")


def _tile_shape(params):
    return unsigned(max(1, (params.tiles - 1).bit_length()))


def _row_shape(params):
    return unsigned(max(1, (params.rows - 1).bit_length()))


def prog_layout(params):
    """Programming beat: write ``cells`` (one c-bit value per physical column, ``cols`` and
    then the ``spares``) into row ``addr`` of tile ``tile``."""
    return data.StructLayout({
        "tile": _tile_shape(params),
        "addr": _row_shape(params),
        "cells": data.ArrayLayout(unsigned(params.cell_bits), params.phys_cols),
    })


def read_layout(params):
    """Row-read request: row ``addr`` of tile ``tile`` (a one-hot read of that row)."""
    return data.StructLayout({"tile": _tile_shape(params), "addr": _row_shape(params)})


def row_layout(params):
    """Row-read result: the cells of the row as they read (stuck cells at their level)."""
    return data.StructLayout({"cells": data.ArrayLayout(unsigned(params.cell_bits),
                                                        params.phys_cols)})


def pulse_layout(params):
    """A pulse train to tile ``tile``: ``pulses`` pulses (1..max_pulses); pulse ``p`` drives
    every row ``r`` with the unsigned ``dac_bits``-bit digit ``digits[p][r]``."""
    return data.StructLayout({
        "tile": _tile_shape(params),
        "pulses": unsigned(params.max_pulses.bit_length()),
        "digits": data.ArrayLayout(data.ArrayLayout(unsigned(params.dac_bits), params.rows),
                                   params.max_pulses),
    })


def codes_layout(params):
    """ADC result of one pulse: an unsigned ``adc_width``-bit code for every column; ``last``
    marks the train's last pulse."""
    return data.StructLayout({"codes": data.ArrayLayout(unsigned(params.adc_width),
                                                        params.phys_cols),
                              "last": unsigned(1)})


class Crossbar(wiring.Component):
    """Hold ``tiles`` R x C arrays of c-bit cells; apply pulse trains; return ADC codes.

    This is the **macro port** (docs/crossbar.md, "Macro contract"): an ASIC flow puts one
    analog crossbar macro per tile behind it, selected by each request's ``tile`` field. Every
    transfer is an ``amaranth.lib.stream`` handshake, so the port is latency-insensitive: the
    controller's results never depend on how long a request takes. Its *chip time* comes from
    the contract instead, in cycles of the digital clock: a pulse, and a row read, take
    ``pulse_cycles = t_read + cols_per_adc * t_adc`` (the read pulse, then each of the
    ``cols / cols_per_adc`` ADCs converts its columns in turn); a train of P pulses takes P
    such pulses back to back; a row write takes ``t_write``. The tiles of a layer work at the
    same time, each on its own request.

    The emulation here stands in for the macros on FPGA and in simulation: one memory holds
    every tile's cells and one datapath serves the requests one at a time, so it is slower
    than the contract for a whole layer (``crossbar_ctrl`` counts the difference as
    ``emu_stall``).

    **Faults** (``params.faults``, a ``sim.faults.CellFaults`` without drift): every tile
    has ``spares`` more columns (``params.phys_cols`` on every port), and its stuck cells
    read as their stuck level (0 or ``2**c - 1``) in row reads and pulse trains, whatever was
    written. The fault map is a ROM beside the cells, read with them; without ``faults``
    none of this logic exists.

    Parameters
    ----------
    params : sim.crossbar.CrossbarParams
        Uses ``rows`` R, ``cols`` C, ``cell_bits`` c, ``dac_bits`` d, ``adc_bits``,
        ``act_bits`` (sets ``max_pulses``), ``tiles``, ``faults``; the timing fields are the
        contract.
    fault_map : numpy int8 array (tiles, R, C + spares), optional
        The stuck level of every cell, -1 where good (default, with ``faults``:
        ``sim.faults.tile_fault_map(params)``).

    Members
    -------
    i_prog : In(stream.Signature(prog_layout(params)))
        Write the c-bit ``cells`` of row ``addr`` (unsigned conductance levels
        0..2**c - 1). Emulation: the write is done in the transfer cycle.
    i_read : In(stream.Signature(read_layout(params)))
        Read row ``addr`` (verify after programming, and the one-hot outlier read).
    o_read : Out(stream.Signature(row_layout(params)))
        The cells of the requested row, exactly as written (emulation: valid the cycle after
        the request; held until taken).
    i_pulse : In(stream.Signature(pulse_layout(params)))
        A pulse train: ``pulses`` pulses in order (1..``max_pulses``; other values run as
        ``max_pulses``); pulse ``p`` drives row ``r`` with the unsigned digit
        ``digits[p][r]`` (0..2**d - 1; 0 leaves the row undriven).
    o_codes : Out(stream.Signature(codes_layout(params)))
        ``pulses`` beats per train, in pulse order: for every column ``j``,
        ``min(sum_r digits[p][r] * cells[r][j], 2**adc_width - 1)`` (the column current
        digitized by the ADC; saturates; exact when ``adc_bits`` is 0 or wide enough).
        Emulation: one row per cycle, so the first beat is valid ``rows + EMU_SWEEP_EXTRA``
        cycles after the request, then one beat per cycle as taken.

    Requests are accepted one at a time, when the previous one is finished (priority:
    ``i_prog``, ``i_read``, ``i_pulse``).
    """

    def __init__(self, params, fault_map=None):
        if not isinstance(params, CrossbarParams):
            raise TypeError(f"params must be CrossbarParams, not {params!r}")
        self.params = params
        self.fault_map = None
        if params.faults is not None:
            if params.faults.drift:
                raise ValueError(f"faults.drift must be 0 in the tile emulation (drift is "
                                 f"modelled in the golden model only), not "
                                 f"{params.faults.drift!r}")
            fm = tile_fault_map(params) if fault_map is None else np.asarray(fault_map)
            shape = (params.tiles, params.rows, params.phys_cols)
            if fm.shape != shape:
                raise ValueError(f"fault_map must have shape {shape}, not {fm.shape}")
            self.fault_map = fm
        super().__init__({
            "i_prog": In(stream.Signature(prog_layout(params))),
            "i_read": In(stream.Signature(read_layout(params))),
            "o_read": Out(stream.Signature(row_layout(params))),
            "i_pulse": In(stream.Signature(pulse_layout(params))),
            "o_codes": Out(stream.Signature(codes_layout(params))),
        })

    def elaborate(self, platform):
        p = self.params
        m = Module()
        R, C, c, d, P = p.rows, p.phys_cols, p.cell_bits, p.dac_bits, p.max_pulses
        rsh = _row_shape(p).width
        # the cells: an SRAM (no initial value in the Verilog: at MiniLM the tiles of all
        # layers are tens of megabits); a read returns the old word while the row is written
        mem = SRAM(m, "cells", width=C * c, depth=R * p.tiles)
        wp = _Port(mem.waddr, mem.wdata, mem.wen)
        rp = _Port(mem.raddr[0], mem.rdata[0], mem.ren[0])
        m.d.comb += [wp.addr.eq(Cat(self.i_prog.payload.addr[:rsh], self.i_prog.payload.tile)),
                     wp.data.eq(self.i_prog.payload.cells.as_value()),
                     rp.en.eq(0)]        # hold the read data unless a state reads
        cells = rp.data
        if self.fault_map is not None:
            cells = self._stuck_cells(m, rp)
        m.d.comb += self.o_read.payload.cells.eq(cells)

        # pulse train: digit shift registers (the low d bits of plane p drive the row being
        # addressed), the row read one cycle later and registered, then accumulated
        dig = [Signal(R * d, name=f"dig{pp}", reset_less=True) for pp in range(P)]
        npulse = Signal(range(P + 1))
        row = Signal(range(R))
        tile = Signal(_tile_shape(p))
        live1, live2 = Signal(), Signal()
        dig1 = [Signal(d, name=f"dig1_{pp}", reset_less=True) for pp in range(P)]
        dig2 = [Signal(d, name=f"dig2_{pp}", reset_less=True) for pp in range(P)]
        rowq = Signal(C * c, reset_less=True)
        m.d.sync += [live1.eq(0), live2.eq(live1), rowq.eq(cells)]
        m.d.sync += [b.eq(a) for a, b in zip(dig1, dig2)]

        # column sums of every pulse; beats shift them down, plane 0 is the one on o_codes.
        # A plane packs its C sums as ew-bit fields, several per adder: a field holds the
        # largest sum exactly, so no carry crosses into the next field. Adders stay within
        # SWAR_BITS for short carry chains.
        ew = p.exact_adc_bits
        per = max(1, SWAR_BITS // ew)
        chunks = [range(j0, min(j0 + per, C)) for j0 in range(0, C, per)]
        cs = [[Signal(ew * len(ch), name=f"colsum{pp}_{i}", reset_less=True)
               for i, ch in enumerate(chunks)] for pp in range(P)]
        clear = Signal()
        shift = Signal()
        for pp in range(P):
            for i, ch in enumerate(chunks):
                # digit x cell has d + c bits, fewer than a field (ew >= d + c + 6); a 1-bit
                # digit masks the cells of the whole chunk at once
                if d == 1:
                    spread = Cat(*(Cat(rowq[j * c:(j + 1) * c], Const(0, ew - c)) for j in ch))
                    addend = spread & dig2[pp].replicate(len(spread))
                else:
                    addend = Cat(*(Cat(dig2[pp] * rowq[j * c:(j + 1) * c],
                                       Const(0, ew - d - c)) for j in ch))
                with m.If(clear):
                    m.d.sync += cs[pp][i].eq(0)
                with m.Elif(shift):
                    m.d.sync += cs[pp][i].eq(cs[pp + 1][i] if pp + 1 < P else 0)
                with m.Elif(live2):
                    m.d.sync += cs[pp][i].eq(cs[pp][i] + addend)
        for i, ch in enumerate(chunks):
            for n, j in enumerate(ch):
                colsum = cs[0][i][n * ew:(n + 1) * ew]
                code = self.o_codes.payload.codes[j]
                if p.adc_exact:
                    m.d.comb += code.eq(colsum)
                else:
                    m.d.comb += code.eq(Mux(colsum > p.adc_max, p.adc_max, colsum))
        beat = Signal(range(P))
        m.d.comb += self.o_codes.payload.last.eq(beat == npulse - 1)
        flush = Signal(range(EMU_SWEEP_EXTRA))

        with m.FSM() as fsm:
            with m.State("IDLE"):
                m.d.comb += wp.en.eq(self.i_prog.valid)
                with m.If(self.i_prog.valid):
                    pass
                with m.Elif(self.i_read.valid):
                    m.d.comb += [rp.addr.eq(Cat(self.i_read.payload.addr[:rsh],
                                                self.i_read.payload.tile)), rp.en.eq(1)]
                    m.next = "READ"
                with m.Elif(self.i_pulse.valid):
                    pl = self.i_pulse.payload
                    # a train of 0 or more than P pulses runs as P (it would never end);
                    # no comparison when the field cannot exceed P (lint: constant result)
                    bad = pl.pulses == 0
                    if P < (1 << len(pl.pulses)) - 1:
                        bad = bad | (pl.pulses > P)
                    m.d.sync += [row.eq(0), tile.eq(pl.tile), beat.eq(0),
                                 npulse.eq(Mux(bad, P, pl.pulses))]
                    m.d.sync += [dg.eq(pl.digits[pp].as_value()) for pp, dg in enumerate(dig)]
                    m.d.comb += clear.eq(1)
                    m.next = "SWEEP"
            with m.State("READ"):
                with m.If(self.o_read.ready):
                    m.next = "IDLE"
            with m.State("SWEEP"):
                # rows 0..R-1 addressed in R cycles; each accumulates two cycles later
                m.d.comb += [rp.addr.eq(Cat(row[:rsh], tile)), rp.en.eq(1)]
                m.d.sync += [row.eq(row + 1), live1.eq(1)]
                m.d.sync += [a.eq(dg[:d]) for a, dg in zip(dig1, dig)]
                m.d.sync += [dg.eq(dg >> d) for dg in dig]
                with m.If(row == R - 1):
                    m.d.sync += flush.eq(0)
                    m.next = "FLUSH"
            with m.State("FLUSH"):
                m.d.sync += flush.eq(flush + 1)
                with m.If(flush == EMU_SWEEP_EXTRA - 2):
                    m.next = "CODES"
            with m.State("CODES"):
                with m.If(self.o_codes.ready):
                    m.d.comb += shift.eq(1)
                    m.d.sync += beat.eq(beat + 1)
                    with m.If(self.o_codes.payload.last):
                        m.next = "IDLE"
        # (plain expressions of the state: simulators see them from time 0; a valid that is
        # the state itself cannot disagree with it, which lets k-induction close)
        idle = fsm.ongoing("IDLE")
        m.d.comb += [self.o_read.valid.eq(fsm.ongoing("READ")),
                     self.o_codes.valid.eq(fsm.ongoing("CODES")),
                     self.i_prog.ready.eq(idle),
                     self.i_read.ready.eq(idle & ~self.i_prog.valid),
                     self.i_pulse.ready.eq(idle & ~self.i_prog.valid & ~self.i_read.valid)]
        return m

    def _stuck_cells(self, m, rp):
        """The cells ``rp`` reads, with every stuck cell at its level: a ROM of keep and
        force masks per row, read at the same address and cycle as the cells."""
        p = self.params
        c, width = p.cell_bits, p.phys_cols * p.cell_bits
        fm = self.fault_map.reshape(-1, p.phys_cols).astype(np.int64)
        top = (1 << c) - 1
        weights = np.array([1 << (j * c) for j in range(p.phys_cols)], dtype=object)
        keep = [int(np.dot(np.where(r < 0, top, 0).astype(object), weights)) for r in fm]
        force = [int(np.dot(np.where(r > 0, r, 0).astype(object), weights)) for r in fm]
        layout = data.StructLayout({"keep": unsigned(width), "force": unsigned(width)})
        m.submodules.faults = rom = memory.Memory(
            shape=layout, depth=len(fm), init=[{"keep": k, "force": f}
                                               for k, f in zip(keep, force)])
        rf = rom.read_port(domain="sync")
        m.d.comb += [rf.addr.eq(rp.addr), rf.en.eq(rp.en)]
        out = Signal(width)
        m.d.comb += out.eq((rp.data & rf.data.keep) | rf.data.force)
        return out


UNIT = Unit(name="crossbar", params=CrossbarParams, presets=PRESETS, component=Crossbar,
            golden=mvm,
            summary="crossbar tiles behind the macro port: program/verify rows, pulse trains, "
                    "ADC")
