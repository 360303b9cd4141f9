"""Area of the INT/FP mixed array against a bf16 x bf16 array of the same lanes and throughput.

Synthesizes ``mixed_array`` and ``bf16_array`` (same ``lanes`` and ``width``: the same number
of multiplies per cycle) with YoWASP Yosys via ``gen.synth.synth_report`` and prints iCE40 LUT4
and ECP5 LUT (``synth_ecp5 -nodsp``) counts and the bf16 / mixed ratio. OPAL reports 2.4-3.1x.

    python scripts/area_mixed_array.py [--preset minilm] [--set width=8 ...] [--fmax]
"""

import argparse
import json

from gen.build import UsageError, resolve, sets_tag
from gen.synth import synth_report
from sim.bf16_array import BF16ArrayParams
from sim.mixed_array import PRESETS


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="minilm", choices=sorted(PRESETS))
    ap.add_argument("--set", action="append", default=[], metavar="K=V",
                    help="override a mixed_array parameter")
    ap.add_argument("--fmax", action="store_true", help="also place and route (slow)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    try:
        _, mp = resolve("mixed_array", args.preset, args.set)
    except UsageError as e:
        ap.error(str(e))
    bp = BF16ArrayParams(lanes=mp.lanes, width=mp.width)
    mixed = synth_report("mixed_array", mp, case=f"area-{args.preset}{sets_tag(args.set)}",
                         fmax=args.fmax, nodsp=True)
    base = synth_report("bf16_array", bp, case=f"area-l{bp.lanes}-w{bp.width}", fmax=args.fmax,
                        nodsp=True)
    for r in (mixed, base):
        r["ecp5_lut"] = r["ecp5_lut_nodsp"]
    ratio = {k: base[k] / mixed[k] for k in ("ice40_lut4", "ecp5_lut") if mixed[k]}
    if args.json:
        print(json.dumps({"mixed": mixed, "bf16": base, "ratio": ratio}, indent=2))
        return
    mults = mp.lanes * mp.width
    print(f"preset {args.preset}: lanes={mp.lanes} width={mp.width} ({mults} multipliers, "
          f"{mults} MACs/cycle each); mixed: n={mp.bits} x w={mp.weight_bits}, "
          f"k={mp.outliers} outliers/block, frac_bits={mp.frac_bits}")
    print(f"{'':24}{'iCE40 LUT4':>12}{'iCE40 FF':>10}{'iCE40 RAM':>10}{'ECP5 LUT':>10}"
          f"{'ECP5 FF':>9}")
    for name, r in (("mixed_array", mixed), ("bf16_array", base)):
        print(f"{name:24}{r['ice40_lut4']:>12}{r['ice40_ff']:>10}{r['ice40_ram']:>10}"
              f"{r['ecp5_lut']:>10}{r['ecp5_ff']:>9}")
    print(f"{'per multiplier':24}{mixed['ice40_lut4'] / mults:>12.1f}{'':>20}"
          f"{mixed['ecp5_lut'] / mults:>10.1f}   (mixed)")
    print(f"{'':24}{base['ice40_lut4'] / mults:>12.1f}{'':>20}{base['ecp5_lut'] / mults:>10.1f}"
          f"   (bf16)")
    for k, v in ratio.items():
        print(f"area ratio bf16 / mixed ({k}): {v:.2f}x   (OPAL 2.4-3.1x, goal >= 3.5x)")
    if args.fmax:
        print(f"Fmax iCE40 UP5K: mixed {mixed.get('ice40_fmax_mhz')} MHz, bf16 {base.get('ice40_fmax_mhz')} MHz")


if __name__ == "__main__":
    main()
