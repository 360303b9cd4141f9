"""Build board designs (a unit behind the UART host link) and print their report table.

Each row is `xbarllm fpga --board B --unit U --preset P [--clock-mhz F]`: Yosys, nextpnr and
icepack/ecppack from PyPI; LUT, FF, BRAM and DSP from Yosys (used / on the device), Fmax from
nextpnr after routing (at the board's speed grade), whether timing is met at the clock, and the
tool time. A design already built the same way is reused (`--force` builds again). Builds take
minutes each; the table in docs/fpga.md comes from this script.

    .venv/bin/python scripts/fpga_report.py                     # the default rows
    .venv/bin/python scripts/fpga_report.py --row ulx3s-85f:softmax:tiny:50
"""

import argparse
import sys
import time

from gen.build import UsageError, resolve
from gen.fpga import BuildError, build
from gen.harness import BUILD

# board:unit:preset[:clock MHz]
DEFAULT_ROWS = [
    "icebreaker:gelu:minilm",
    "icebreaker:gelu:minilm:24",
    "ulx3s-85f:gelu:minilm:100",
    "ulx3s-85f:layernorm:tiny",
    "ulx3s-85f:softmax:tiny",
    "ulx3s-85f:mixed_array:tiny",
    "icebreaker:mixed_array:tiny",      # does not fit: the table says by how much
]


def parse_row(text):
    parts = text.split(":")
    if len(parts) not in (3, 4):
        raise UsageError(f"a row is board:unit:preset[:clock_mhz], not {text!r}")
    return parts[0], parts[1], parts[2], float(parts[3]) if len(parts) == 4 else None


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--row", action="append", help="board:unit:preset[:clock_mhz]; repeatable "
                    f"(default: {' '.join(DEFAULT_ROWS)})")
    ap.add_argument("--force", action="store_true", help="build even if up to date")
    args = ap.parse_args(argv)
    head = ("board", "unit", "preset", "clock MHz", "LUT", "FF", "BRAM", "DSP", "Fmax MHz",
            "timing", "tools s")
    rows = []
    for text in args.row or DEFAULT_ROWS:
        try:
            board, unit, preset, clock = parse_row(text)
            _, params = resolve(unit, preset)
            tag = f"-{clock:g}mhz" if clock else ""
            t0 = time.monotonic()
            print(f"{text} ...", file=sys.stderr, flush=True)
            rep = build(board, unit, params, BUILD / f"fpga-{board}-{unit}-{preset}{tag}",
                        preset=preset, clock_mhz=clock, force=args.force)
        except UsageError as e:         # does not fit, or a bad row: say so in the table
            rows.append((text.split(":")[0], text.split(":")[1], text.split(":")[2], "-", "-",
                         "-", "-", "-", "-", f"error: {e}", "-"))
            continue
        except BuildError as e:
            rows.append((board, unit, preset, "-", "-", "-", "-", "-", "-", f"failed: {e}", "-"))
            continue
        secs = sum(v for k, v in rep.items() if k.startswith("seconds_"))
        use = lambda k: f"{rep[k]:,} / {rep[f'{k}_available']:,}"
        rows.append((board, unit, preset,
                     f"{rep['clock_mhz']:g}" + (" (PLL)" if rep["clock"] == "PLL" else ""),
                     use("lut"), use("ff"), use("bram"), use("dsp"), f"{rep['fmax_mhz']:.1f}",
                     "met" if rep["timing_met"] else "NOT met",
                     f"{secs:.0f}" if not rep.get("up_to_date") else f"{secs:.0f} (cached)"))
        print(f"  {time.monotonic() - t0:.0f} s", file=sys.stderr, flush=True)
    print("| " + " | ".join(head) + " |")
    print("|" + "|".join("---" for _ in head) + "|")
    for r in rows:
        print("| " + " | ".join(str(v) for v in r) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
