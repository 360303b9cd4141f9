"""Area of the INT/FP mixed array against a bf16 x bf16 array with the same multiplies per cycle.

Synthesizes ``mixed_array`` fresh with YoWASP Yosys (``gen.synth.synth_report``: iCE40 LUT4
with ``synth_ice40``, ECP5 LUT with ``synth_ecp5 -nodsp``) and compares it with the
``bf16_array`` of the same ``lanes`` and ``width`` (the same number of multiplies per cycle),
whose figures come from the cache docs/bf16_array_area.json (``scripts/bf16_baseline.py``
regenerates it; the flat bf16 array takes hours). Prints both and the bf16 / mixed ratio.
OPAL reports 2.4-3.1x.

    python scripts/area_mixed_array.py [--preset minilm] [--set lanes=1 ...] [--fmax] [--json]
    python scripts/area_mixed_array.py --opal [--limit N]

``--opal`` reproduces OPAL's table: for inlier widths n = 3 and 5 and outliers k = 0 and 4,
the array built for that format (iCE40 area and ratio) and the accuracy of MiniLM with every
matmul input in that format (sentence-embedding cosine and Spearman against fp32 on the Lee
evaluation sentences, ``xbarllm eval``'s metrics), then the shipped policy at the preset.
"""

import argparse
import dataclasses
import json
import sys

import bf16_baseline        # beside this script (Python puts a script's folder on sys.path)
from gen.build import UsageError, resolve, sets_tag
from gen.synth import synth_report
from sim.bf16_array import BF16ArrayParams
from sim.mixed_array import PRESETS

KEYS = ("ice40_lut4", "ecp5_lut_nodsp")


def area(mp, case, *, fmax=False, targets=("ice40", "ecp5")):
    """Synthesize the mixed array ``mp``; return (mixed figures, bf16 figures, ratios)."""
    bp = BF16ArrayParams(lanes=mp.lanes, width=mp.width)
    entry = bf16_baseline.lookup(bp)
    base = dict(entry["figures"], extrapolated=entry.get("extrapolated"))
    mixed = synth_report("mixed_array", mp, case=case, fmax=fmax, nodsp=True, targets=targets)
    ratio = {k: base[k] / mixed[k] for k in KEYS if mixed.get(k)}
    return mixed, base, ratio


def accuracy(policy, mp, limit=None):
    """Sentence-embedding metrics of MiniLM with ``policy`` on the Lee evaluation sentences."""
    from gen.cli_model import DEFAULT_SENTENCES
    from sim import bert, evaluate
    model = bert.load("minilm")
    sentences = bert.read_sentences(DEFAULT_SENTENCES)[:limit]
    opts = bert.QuantOptions(mixed_array=dataclasses.replace(
        mp, block=max(mp.block, policy.block), max_blocks=8))
    r = evaluate.compare(model, sentences, policy, opts, workers=2)
    return {k: r[k] for k in ("cos_mean", "cos_min", "spearman", "top1")}


def _print_area(name, mp, mixed, base, ratio):
    mults = mp.lanes * mp.width
    print(f"{name}: lanes={mp.lanes} width={mp.width} ({mults} multipliers, {mults} MACs/cycle "
          f"each); mixed: n={mp.bits} x w={mp.weight_bits}, k={mp.outliers} FP units/lane, "
          f"frac_bits={mp.frac_bits}, max_blocks={mp.max_blocks}")
    print(f"{'':16}{'iCE40 LUT4':>12}{'iCE40 FF':>10}{'iCE40 RAM':>10}{'ECP5 LUT':>10}"
          f"{'ECP5 FF':>9}{'ECP5 MHz':>10}")
    for label, r in (("mixed_array", mixed), ("bf16_array", base)):
        print(f"{label:16}{r['ice40_lut4']:>12}{r['ice40_ff']:>10}{r['ice40_ram']:>10}"
              f"{r['ecp5_lut_nodsp']:>10}{r['ecp5_ff']:>9}{str(r.get('ecp5_fmax_mhz', '')):>10}")
    print(f"{'per multiplier':16}{mixed['ice40_lut4'] / mults:>12.1f}{'':>20}"
          f"{mixed['ecp5_lut_nodsp'] / mults:>10.1f}   (mixed)")
    print(f"{'':16}{base['ice40_lut4'] / mults:>12.1f}{'':>20}"
          f"{base['ecp5_lut_nodsp'] / mults:>10.1f}   (bf16)")
    ext = base.get("extrapolated")
    if ext:
        print(f"bf16 figures EXTRAPOLATED ({ext['factor']} x {ext['from']}, the lanes are "
              f"independent copies): {', '.join(ext['figures'])}")
    for k, v in ratio.items():
        label = "iCE40 LUT4" if k == "ice40_lut4" else "ECP5 LUT (no DSP)"
        mark = " (bf16 extrapolated)" if ext and k in ext["figures"] else ""
        print(f"area ratio bf16 / mixed, {label}: {v:.2f}x{mark}   (OPAL 2.4-3.1x, goal >= "
              f"3.5x)")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="minilm", choices=sorted(PRESETS))
    ap.add_argument("--set", action="append", default=[], metavar="K=V",
                    help="override a mixed_array parameter")
    ap.add_argument("--fmax", action="store_true", help="also place and route (slow)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--opal", action="store_true", help="OPAL's table (4 syntheses, 5 evals)")
    ap.add_argument("--limit", type=int, default=None, help="--opal: first N sentences")
    args = ap.parse_args(argv)
    try:
        _, mp = resolve("mixed_array", args.preset, args.set)
    except UsageError as e:
        ap.error(str(e))
    try:
        if args.opal:
            return opal(args, mp)
        mixed, base, ratio = area(mp, f"area-{args.preset}{sets_tag(args.set)}",
                                  fmax=args.fmax)
    except bf16_baseline.StaleBaseline as e:
        print(f"area_mixed_array: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"mixed": mixed, "bf16": base, "ratio": ratio}, indent=2))
    else:
        _print_area(f"preset {args.preset}{sets_tag(args.set)}", mp, mixed, base, ratio)
    return 0


def opal(args, mp):
    from sim import policy as pol
    from sim.bert import load
    layers = load("minilm").config.layers
    shipped = pol.default_policy(load("minilm").config)
    rows = []
    for n in (3, 5):
        for k in (0, 4):
            p = dataclasses.replace(mp, bits=n, outliers=k)
            _, _, ratio = area(p, f"opal-{args.preset}-n{n}-k{k}", targets=("ice40",))
            acc = accuracy(pol.uniform(layers, n, 8, block=shipped.block, outliers=k,
                                       kv_bits=shipped.kv_bits), p, args.limit)
            rows.append((f"n={n}, k={k}", ratio, acc))
            print(rows[-1], file=sys.stderr, flush=True)
    _, _, ratio = area(mp, f"opal-{args.preset}", targets=("ice40",))
    rows.append((f"policy (preset {args.preset})", ratio, accuracy(shipped, mp, args.limit)))
    print(f"OPAL's table at lanes={mp.lanes} width={mp.width} ({mp.lanes * mp.width} "
          f"multipliers), K/V MX-INT{shipped.kv_bits}, B={shipped.block}")
    print(f"{'format':28}{'iCE40 ratio':>12}{'cos mean':>10}{'cos min':>9}{'Spearman':>10}")
    for name, ratio, acc in rows:
        print(f"{name:28}{ratio['ice40_lut4']:>11.2f}x{acc['cos_mean']:>10.5f}"
              f"{acc['cos_min']:>9.5f}{acc['spearman']:>10.5f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
