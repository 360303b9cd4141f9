"""What every unit shares: its registry entry, the pipeline helper, double-buffer bookkeeping.

A unit's frozen, keyword-only params dataclass, its ``PRESETS`` dict (built with
``dataclasses.replace``) and its golden model live in ``sim/<unit>.py`` (pure NumPy);
``hw/<unit>.py`` defines the ``wiring.Component`` taking the params and a module-level
``UNIT = Unit(...)``. ``gen`` discovers units by importing the ``hw`` modules. docs/units.md
says how to add one.

Units import only this module and ``hw/numerics.py`` (the exceptions: ``crossbar_ctrl``
instantiates ``crossbar``'s tile emulation, and ``encoder`` is the top that chains every
unit); ``tests/test_structure.py`` checks it.
"""

import importlib
import pkgutil
import typing
from dataclasses import dataclass

from amaranth.hdl import Cat, ClockSignal, Instance, Mux, Shape, Signal, Value
from amaranth.lib import data

__all__ = ["Unit", "units", "layout_fields", "Pipeline", "Stage", "PingPong", "BankReader",
           "SRAM", "verilog_library"]


@dataclass(frozen=True, kw_only=True)
class Unit:
    """Registry entry of one unit.

    name : str            unit name; also the Verilog top, the build folder and the test
                          module ``tests/test_<name>.py``
    params : type         frozen params dataclass (``sim.<name>``)
    presets : dict        preset name -> params instance
    component : callable  params -> ``wiring.Component``
    golden : callable     the golden model of the unit's streams (``sim.<name>``); its
                          docstring states the beats it takes and returns
    summary : str         one line for ``xbarllm list``
    """

    name: str
    params: type
    presets: dict
    component: typing.Callable
    golden: typing.Callable
    summary: str

    def build(self, params):
        return self.component(params)


def units():
    """All units, by name, found in the ``hw`` package."""
    import hw
    found = {}
    for info in pkgutil.iter_modules(hw.__path__):
        mod = importlib.import_module(f"hw.{info.name}")
        unit = getattr(mod, "UNIT", None)
        if isinstance(unit, Unit):
            found[unit.name] = unit
    return dict(sorted(found.items()))


def layout_fields(layout):
    """Leaf fields of a ``data`` layout: ``{"a.0.b": (offset, width, signed)}``.

    Nested struct fields and array elements are named with dots. Tests pack payloads with
    this (``gen.streamkit.Packer``) and ``xbarllm gen`` writes it into the manifest, so a bit
    layout is defined once, in ``hw/``.
    """
    fields = {}

    def walk(lay, prefix, base):
        if isinstance(lay, data.StructLayout):
            items = [(name, f.shape, f.offset) for name, f in lay]
        elif isinstance(lay, data.ArrayLayout):
            w = Shape.cast(lay.elem_shape).width
            items = [(str(i), lay.elem_shape, i * w) for i in range(lay.length)]
        else:
            shape = Shape.cast(lay)
            fields[prefix.rstrip(".") or "value"] = (base, shape.width, shape.signed)
            return
        for name, shape, offset in items:
            walk(shape, f"{prefix}{name}.", base + offset)

    walk(layout, "", 0)
    return fields


# ------------------------------------------------------------------------------------------
# Pipelines
# ------------------------------------------------------------------------------------------

class Stage:
    """The registers of one pipeline stage: ``valid`` and one attribute per field."""

    def __init__(self, valid, fields):
        self.valid = valid
        self.fields = fields
        for k, v in fields.items():
            setattr(self, k, v)


def _register_like(value, name):
    if isinstance(value, data.View):
        return Signal(value.shape(), name=name, reset_less=True)
    return Signal(Value.cast(value).shape(), name=name, reset_less=True)


class Pipeline:
    """Stages of registers that advance together under one clock enable.

    In the spirit of LiteX's ``PipelinedActor``: every stage register, valid bits included,
    loads when ``ce`` is high, and ``ce = ~o.valid | o.ready`` once ``drive`` connects the
    output stream, so the pipeline holds as a whole while the output is stalled and accepts
    one beat per cycle otherwise (drive the input's ``ready`` from ``ce``). Each ``stage``
    registers the fields given to it *and every field carried so far* (``drop`` ends a
    field), so side-band fields (``last``, flags) ride along without being named again;
    synthesis removes registers nothing reads. Where the output is not a stream, drive ``ce``
    yourself instead of calling ``drive`` (``m.d.comb += pipe.ce.eq(1)`` gives a free-running
    pipeline; any hold condition works the same way). Read a field from the stage the latest
    ``stage`` call returned (or ``pipe.fields``): the same name on an earlier ``Stage`` is
    that earlier register, one or more cycles behind the values of the current stage.

    Parameters
    ----------
    m : Module
    valid : Value
        Valid of the values the first ``stage`` registers (usually ``i.valid``).
    name : str
        Prefix of the register names (``<name><stage>_<field>``).
    fields : dict
        Fields to carry from the start (e.g. the input's ``last``).

    Example::

        pipe = Pipeline(m, self.i.valid, name="g")
        m.d.comb += self.i.ready.eq(pipe.ce)
        s1 = pipe.stage(x=f(self.i.payload.data), last=self.i.payload.last)
        s2 = pipe.stage(y=g(s1.x), drop=("x",))        # s2.last is carried
        pipe.drive(self.o, data=s2.y, last=s2.last)
    """

    def __init__(self, m, valid, *, name="p", fields=None):
        self.m = m
        self.name = name
        self.ce = Signal(name=f"{name}_ce")
        self.valid = Value.cast(valid)
        self.depth = 0
        self.fields = dict(fields or {})

    def stage(self, *, drop=(), **values):
        """Register ``values`` and the carried fields into the next stage; return it."""
        self.depth += 1
        prefix = f"{self.name}{self.depth}"
        unknown = set(drop) - set(self.fields)
        if unknown:
            raise KeyError(f"cannot drop {sorted(unknown)}: not carried by {self.name}")
        carried = {k: v for k, v in self.fields.items() if k not in drop}
        carried.update(values)
        valid = Signal(name=f"{prefix}_valid")
        regs = {k: _register_like(v, f"{prefix}_{k}") for k, v in carried.items()}
        with self.m.If(self.ce):
            self.m.d.sync += valid.eq(self.valid)
            self.m.d.sync += [regs[k].eq(v) for k, v in carried.items()]
        self.valid = valid
        self.fields = regs
        return Stage(valid, regs)

    def drive(self, o, payload=None, **fields):
        """Make stream ``o`` the output register: ``o.valid`` and its payload (a whole
        ``payload`` value, or top-level ``fields`` by name) load under ``ce``, and
        ``ce = ~o.valid | o.ready``."""
        m = self.m
        m.d.comb += self.ce.eq(~o.valid | o.ready)
        with m.If(self.ce):
            m.d.sync += o.valid.eq(self.valid)
            if payload is not None:
                m.d.sync += o.payload.eq(payload)
            for k, v in fields.items():
                m.d.sync += getattr(o.payload, k).eq(v)
        self.depth += 1
        return self.depth


class PingPong:
    """Bookkeeping of a two-bank buffer: the writer fills one bank while the reader drains
    the other.

    ``wbank`` and ``rbank`` are the banks being written and read, ``full`` has a bit per
    bank holding data not yet read out; ``can_write`` and ``can_read`` follow from them.
    Call ``write_done()`` in the cycle (and under the conditions) the writer finishes its
    bank, ``read_done()`` when the reader finishes; both may happen in the same cycle.
    """

    def __init__(self, m, *, name="pp"):
        self.m = m
        self.wbank = Signal(name=f"{name}_wbank")
        self.rbank = Signal(name=f"{name}_rbank")
        self.full = Signal(2, name=f"{name}_full")
        self._set = Signal(2, name=f"{name}_set")
        self._clr = Signal(2, name=f"{name}_clr")
        m.d.sync += self.full.eq((self.full | self._set) & ~self._clr)
        self.can_write = ~self.full.bit_select(self.wbank, 1)
        self.can_read = self.full.bit_select(self.rbank, 1)

    def write_done(self):
        self.m.d.comb += self._set.eq(Mux(self.wbank, 0b10, 0b01))
        self.m.d.sync += self.wbank.eq(~self.wbank)

    def read_done(self):
        self.m.d.comb += self._clr.eq(Mux(self.rbank, 0b10, 0b01))
        self.m.d.sync += self.rbank.eq(~self.rbank)

    @property
    def clearing(self):
        """The bank bits ``read_done`` clears this cycle (for per-bank flags kept beside)."""
        return self._clr


class BankReader:
    """The read side of a ``PingPong`` buffer kept in one ``lib.memory``: bank ``b`` holds
    a row at addresses ``Cat(index, b)``, ``last_index[b]`` is the index of its last entry.

    ``issue = go & ce`` reads entry ``index`` of bank ``pp.rbank`` through the synchronous
    read ``port`` and steps ``index``; the port is enabled by ``ce``, so its data lines up
    with the first stage of a ``Pipeline`` whose clock enable is ``ce``. ``is_last`` marks
    the row's last entry: issuing it restarts ``index`` at 0 and releases the bank
    (``pp.read_done()``). ``go`` says a row may be read (``pp.can_read`` and the caller's
    own conditions).
    """

    def __init__(self, m, pp, port, *, go, ce, last_index, name="rd"):
        self.index = Signal(len(last_index[0]), name=f"{name}_index")
        self.issue = go & ce
        self.is_last = self.index == Mux(pp.rbank, last_index[1], last_index[0])
        with m.If(self.issue):
            m.d.sync += self.index.eq(Mux(self.is_last, 0, self.index + 1))
            with m.If(self.is_last):
                pp.read_done()
        m.d.comb += [port.addr.eq(Cat(self.index, pp.rbank)), port.en.eq(ce)]


# ------------------------------------------------------------------------------------------
# Large memories
# ------------------------------------------------------------------------------------------

_SRAM_VERILOG = """\
// Single-clock SRAM: one write port with write enables per GRAN bits, two read ports with a
// registered output (the value before a write to the same address in the same cycle).
// Under Verilator, +xbarllm_preload_<NAME>=<file> fills it with $readmemh at time 0.
module xbarllm_sram #(parameter WIDTH = 16, parameter DEPTH = 2, parameter AW = 1,
                      parameter GRAN = 16, parameter NAME = "mem") (
  input clk,
  input [AW-1:0] waddr, input [WIDTH-1:0] wdata, input [WIDTH/GRAN-1:0] wen,
  input [AW-1:0] raddr0, input ren0, output reg [WIDTH-1:0] rdata0,
  input [AW-1:0] raddr1, input ren1, output reg [WIDTH-1:0] rdata1);
  reg [WIDTH-1:0] mem [0:DEPTH-1];
  integer i;
  always @(posedge clk) begin
    for (i = 0; i < WIDTH / GRAN; i = i + 1)
      if (wen[i]) mem[waddr][i*GRAN +: GRAN] <= wdata[i*GRAN +: GRAN];
    if (ren0) rdata0 <= mem[raddr0];
    if (ren1) rdata1 <= mem[raddr1];
  end
`ifdef VERILATOR
  reg [8*1024-1:0] file;
  initial if ($value$plusargs({"xbarllm_preload_", NAME, "=%s"}, file)) $readmemh(file, mem);
`endif
endmodule
"""


class SRAM:
    """A large single-clock memory as an instance of the ``xbarllm_sram`` Verilog module.

    Amaranth writes the initial value of every word of a ``lib.memory.Memory`` into the
    Verilog, which takes minutes and megabytes for memories of millions of bits; this module
    has no initial value (reads of unwritten words are undefined) and is described once in
    Verilog (``verilog_library`` appends it to the design), which Yosys maps to block RAM
    like any inferred memory. Under Verilator the plusarg ``+xbarllm_preload_<name>=<file>``
    fills it with ``$readmemh`` before the first clock (the fast load path of simulations).

    Ports (Signals, driven by the user): ``waddr``, ``wdata``, ``wen`` (one bit per
    ``granularity`` bits of the word) and two read ports ``raddr[i]``, ``ren[i]``, ``rdata[i]``
    (the word at ``raddr`` one cycle after ``ren``; held while ``ren`` is low). A read of the
    address written in the same cycle returns the old word.
    """

    def __init__(self, m, name, *, width, depth, granularity=None):
        g = granularity or width
        if width % g:
            raise ValueError(f"width {width} must be a multiple of granularity {g}")
        self.name, self.width, self.depth = name, width, depth
        aw = max(1, (depth - 1).bit_length())
        self.waddr = Signal(aw, name=f"{name}_waddr")
        self.wdata = Signal(width, name=f"{name}_wdata")
        self.wen = Signal(width // g, name=f"{name}_wen")
        self.raddr = [Signal(aw, name=f"{name}_raddr{i}") for i in range(2)]
        self.ren = [Signal(name=f"{name}_ren{i}") for i in range(2)]
        self.rdata = [Signal(width, name=f"{name}_rdata{i}") for i in range(2)]
        m.submodules[name] = Instance(
            "xbarllm_sram", p_WIDTH=width, p_DEPTH=depth, p_AW=aw, p_GRAN=g, p_NAME=name,
            i_clk=ClockSignal(), i_waddr=self.waddr, i_wdata=self.wdata, i_wen=self.wen,
            i_raddr0=self.raddr[0], i_ren0=self.ren[0], o_rdata0=self.rdata[0],
            i_raddr1=self.raddr[1], i_ren1=self.ren[1], o_rdata1=self.rdata[1])


def verilog_library(text):
    """Verilog modules that the design ``text`` instantiates but Amaranth does not write
    (``SRAM``); ``gen`` appends them to every generated file."""
    return _SRAM_VERILOG if "xbarllm_sram" in text else ""
