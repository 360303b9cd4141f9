"""Sensitivity of the chip model to its three least certain constants (tornado plot).

For each constant, the energy per inference (and the ratios against the H100 at batch 1 and
32) when it takes a low and a high published alternative instead of the value of
sim/data/chip.toml; prints the table and writes docs/chip_sensitivity.png (or --out).

    python scripts/chip_sensitivity.py [--model minilm] [--seq 128] [--out FILE]
"""

import argparse
import math
import sys

from sim import chip


def _neurosim_sar_j(bits):
    """NeuroSim V1.4 SarADC.cpp, 22 nm LP: (0.538 log2(levels) + 4.3753) uW x (bits + 1) ns
    (lines 215, 242; the column-current term left out)."""
    return (0.538 * bits + 4.3753) * 1e-6 * (bits + 1) * 1e-9


def alternatives(cfg, c):
    """{constant label: [(case label, overrides), ...]}: the low and high alternatives."""
    bits = cfg.tile.adc_width
    fit = chip.adc_energy(bits, c["adc_rate_hz"], c)
    survey_median = c["adc_survey_median_fomw_j"] * 2 ** bits       # Walden: FOMW x 2^ENOB
    return {
        f"ADC energy per conversion ({bits} bits; fit {fit * 1e12:.2f} pJ)": [
            ("NeuroSim V1.4 SAR model, 22 nm", {"adc_energy_scale": _neurosim_sar_j(bits) / fit}),
            ("survey median, 0.2-2 GS/s SAR", {"adc_energy_scale": survey_median / fit}),
        ],
        "cell read (device; NeuroSim 0.55 V, 100 kohm)": [
            ("MNSIM-2.0 device: 0.15 V, 10 kohm / 1 Mohm",
             {"read_voltage_v": 0.15, "r_on_ohm": 1e4, "r_off_ohm": 1e6}),
            ("NeuroSim earlier default: 6 kohm", {"r_on_ohm": 6e3, "r_off_ohm": 6e3 * 17}),
        ],
        "input activity (1 digits; 0.546 measured on MiniLM)": [
            ("0.45 (QKV, O, FFN1 inputs)", {"input_one_fraction": 0.45}),
            ("1.0 (every row driven)", {"input_one_fraction": 1.0}),
        ],
    }


def _energy(model, seq, overrides, entries):
    c = chip.load_constants(overrides=overrides)
    cfg = chip.chip_config(model, c)
    r = chip.report(model, seq, 1, cfg=cfg, constants=c, entries=entries)
    return r["energy_j"], r["vs_gpu_batch1_energy"], r["vs_gpu_batch32_energy"]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="minilm", choices=sorted(chip.GPU_KEYS))
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--out", default="docs/chip_sensitivity.png")
    args = ap.parse_args(argv)
    entries = chip.load_area()
    c = chip.load_constants()
    cfg = chip.chip_config(args.model, c)
    base, b1, b32 = _energy(args.model, args.seq, {}, entries)
    print(f"{args.model}, seq {args.seq}: {base * 1e3:.3f} mJ per inference, "
          f"{b1:.0f}x vs H100 batch 1, {b32:.1f}x vs batch 32")
    rows = []
    for what, cases in alternatives(cfg, c).items():
        res = [(label, *_energy(args.model, args.seq, ov, entries)) for label, ov in cases]
        rows.append((what, res))
        print(f"  {what}")
        for label, e, r1, r32 in res:
            print(f"    {label:<44} {e * 1e3:8.3f} mJ  {r1:7.0f}x (b1)  {r32:6.1f}x (b32)")

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(10, 3.6))
    for y, (what, res) in enumerate(reversed(rows)):
        for label, e, r1, r32 in res:
            col = "tab:green" if e < base else "tab:red"
            ax.barh(y, math.log10(e / base), color=col, alpha=0.8)
            ax.text(math.log10(e / base), y + 0.28, f"{label}: {e * 1e3:.2f} mJ, {r32:.1f}x b32",
                    fontsize=6.5, ha="right" if e < base else "left", va="center")
    ax.axvline(0, color="k", lw=0.8)
    ax.set_yticks(range(len(rows)), [w for w, _ in reversed(rows)], fontsize=7)
    lo = min(math.log10(e / base) for _, res in rows for _, e, _, _ in res)
    hi = max(math.log10(e / base) for _, res in rows for _, e, _, _ in res)
    ax.set_xlim(lo - 1.3, hi + 1.3)
    ax.set_xlabel("log10(energy / model value)")
    ax.set_title(f"{args.model}, seq {args.seq}: {base * 1e3:.2f} mJ per inference "
                 f"({b1:.0f}x vs H100 b1, {b32:.1f}x vs b32)", fontsize=9)
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
