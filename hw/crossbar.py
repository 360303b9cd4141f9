"""Memristor crossbar tile: the macro port, and a synthesizable digital emulation behind it."""

from amaranth.hdl import Cat, Module, Mux, Signal, unsigned
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from sim.crossbar import PRESETS, CrossbarParams, mvm

from .common import Unit

__all__ = ["Crossbar", "prog_layout", "read_layout", "row_layout", "pulse_layout",
           "codes_layout", "UNIT"]


def _tile_shape(params):
    return unsigned(max(1, (params.tiles - 1).bit_length()))


def _row_shape(params):
    return unsigned(max(1, (params.rows - 1).bit_length()))


def prog_layout(params):
    """Programming beat: write ``cells`` (one c-bit value per column) into row ``addr`` of
    tile ``tile``."""
    return data.StructLayout({
        "tile": _tile_shape(params),
        "addr": _row_shape(params),
        "cells": data.ArrayLayout(unsigned(params.cell_bits), params.cols),
    })


def read_layout(params):
    """Row-read request: row ``addr`` of tile ``tile`` (a one-hot read of that row)."""
    return data.StructLayout({"tile": _tile_shape(params), "addr": _row_shape(params)})


def row_layout(params):
    """Row-read result: the stored cells of the row, exactly."""
    return data.StructLayout({"cells": data.ArrayLayout(unsigned(params.cell_bits),
                                                        params.cols)})


def pulse_layout(params):
    """One input pulse to tile ``tile``: an unsigned ``dac_bits``-bit digit for every row."""
    return data.StructLayout({"tile": _tile_shape(params),
                              "digits": data.ArrayLayout(unsigned(params.dac_bits),
                                                         params.rows)})


def codes_layout(params):
    """ADC result of one pulse: an unsigned ``adc_width``-bit code for every column."""
    return data.StructLayout({"codes": data.ArrayLayout(unsigned(params.adc_width),
                                                        params.cols)})


class Crossbar(wiring.Component):
    """Hold ``tiles`` R x C arrays of c-bit cells; apply input pulses; return ADC codes.

    This is the **macro port**: an ASIC flow replaces this component by analog crossbar
    macros (one per tile, selected by the ``tile`` field of each request) with the same ports
    and behaviour (docs/crossbar.md). Every transfer is an ``amaranth.lib.stream``
    handshake, so a macro may take any number of cycles. The controller issues one operation
    at a time (it waits for the result of a read or pulse before the next request); requests
    are accepted only while idle. The emulation keeps every tile's cells in one memory and
    serves requests with one shared datapath (only one tile is ever busy).

    Parameters
    ----------
    params : sim.crossbar.CrossbarParams
        Uses ``rows`` R, ``cols`` C, ``cell_bits`` c, ``dac_bits`` d, ``adc_bits``, and
        ``tiles`` (the number of tile arrays held).

    Members
    -------
    i_prog : In(stream.Signature(prog_layout(params)))
        Write the c-bit ``cells`` of row ``addr`` (unsigned conductance levels
        0..2**c - 1). Accepted while idle; the write is complete one cycle later.
    i_read : In(stream.Signature(read_layout(params)))
        Read row ``addr`` (verify after programming, and the one-hot outlier read).
    o_read : Out(stream.Signature(row_layout(params)))
        The cells of the requested row, exactly as written (emulation: one cycle after the
        request; held until taken).
    i_pulse : In(stream.Signature(pulse_layout(params)))
        One input pulse: row ``r`` is driven with the unsigned ``digits[r]`` (0..2**d - 1).
    o_codes : Out(stream.Signature(codes_layout(params)))
        For every column ``j``: ``min(sum_r digits[r] * cells[r][j], 2**adc_width - 1)``
        (column current digitized by the ADC; saturates; exact when ``adc_bits`` is 0 or
        wide enough). Emulation latency: R + 2 cycles from the pulse transfer (one row per
        cycle); held until taken.
    """

    def __init__(self, params):
        if not isinstance(params, CrossbarParams):
            raise TypeError(f"params must be CrossbarParams, not {params!r}")
        self.params = params
        super().__init__({
            "i_prog": In(stream.Signature(prog_layout(params))),
            "i_read": In(stream.Signature(read_layout(params))),
            "o_read": Out(stream.Signature(row_layout(params))),
            "i_pulse": In(stream.Signature(pulse_layout(params))),
            "o_codes": Out(stream.Signature(codes_layout(params))),
        })

    def elaborate(self, platform):
        m = Module()
        self.build(m)
        return m

    def build(self, m):
        """Add the emulation's logic to module ``m`` (driving this component's ports).

        The controller uses this to inline the tiles into its own module, so the generated
        Verilog is one module per unit.
        """
        self._MustUse__used = True     # inlined rather than added as a submodule
        p = self.params
        rw = p.cols * p.cell_bits
        m.submodules.cells = mem = memory.Memory(shape=unsigned(rw), depth=p.rows * p.tiles,
                                                 init=[])
        rsh = _row_shape(p).width
        wp = mem.write_port()
        rp = mem.read_port(domain="sync")

        sum_w = p.exact_adc_bits
        acc = [Signal(sum_w, name=f"colsum{j}") for j in range(p.cols)]
        digits = Signal(p.rows * p.dac_bits)
        row = Signal(range(p.rows + 1))
        tile = Signal(_tile_shape(p))
        live = Signal()          # rp.data holds a row to accumulate this cycle

        m.d.comb += [wp.addr.eq(Cat(self.i_prog.payload.addr[:rsh], self.i_prog.payload.tile)),
                     wp.data.eq(self.i_prog.payload.cells.as_value())]

        # accumulate the row read in the previous cycle: digit (low d bits of the shift
        # register) times every cell of the row
        with m.If(live):
            dig = digits[:p.dac_bits]
            for j in range(p.cols):
                cell = rp.data[j * p.cell_bits:(j + 1) * p.cell_bits]
                m.d.sync += acc[j].eq(acc[j] + dig * cell)
            m.d.sync += digits.eq(digits >> p.dac_bits)
        m.d.sync += live.eq(0)

        for j in range(p.cols):
            code = self.o_codes.payload.codes[j]
            if p.adc_exact:
                m.d.comb += code.eq(acc[j])
            else:
                m.d.comb += code.eq(Mux(acc[j] > p.adc_max, p.adc_max, acc[j]))
        m.d.comb += self.o_read.payload.cells.eq(rp.data)
        m.d.comb += rp.en.eq(0)          # hold the read data unless a state reads (init is 1)

        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += [self.i_prog.ready.eq(1), self.i_read.ready.eq(~self.i_prog.valid),
                             self.i_pulse.ready.eq(~self.i_prog.valid & ~self.i_read.valid)]
                m.d.comb += wp.en.eq(self.i_prog.valid)
                with m.If(self.i_prog.valid):
                    pass
                with m.Elif(self.i_read.valid):
                    m.d.comb += [rp.addr.eq(Cat(self.i_read.payload.addr[:rsh],
                                                self.i_read.payload.tile)), rp.en.eq(1)]
                    m.next = "READ"
                with m.Elif(self.i_pulse.valid):
                    m.d.sync += [digits.eq(self.i_pulse.payload.digits.as_value()),
                                 row.eq(0), tile.eq(self.i_pulse.payload.tile)]
                    m.d.sync += [a.eq(0) for a in acc]
                    m.next = "SWEEP"
            with m.State("READ"):
                m.d.comb += self.o_read.valid.eq(1)
                with m.If(self.o_read.ready):
                    m.next = "IDLE"
            with m.State("SWEEP"):
                # rows 0..R-1 addressed in R cycles; the last one accumulates one cycle later
                m.d.comb += [rp.addr.eq(Cat(row[:rsh], tile)), rp.en.eq(1)]
                m.d.sync += [row.eq(row + 1), live.eq(1)]
                with m.If(row == p.rows - 1):
                    m.next = "LAST"
            with m.State("LAST"):
                m.next = "CODES"
            with m.State("CODES"):
                m.d.comb += self.o_codes.valid.eq(1)
                with m.If(self.o_codes.ready):
                    m.next = "IDLE"


UNIT = Unit(name="crossbar", params=CrossbarParams, presets=PRESETS, component=Crossbar, golden=mvm,
            summary="crossbar tile emulation: program/verify rows, bit-serial pulses, ADC")
