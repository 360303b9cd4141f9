"""Design-space sweeps of the quantized MiniLM golden model -> docs/sweeps.md and PNG plots.

    python scripts/sweeps.py [--sentences 32] [--out docs] [--only adc,outliers,...]

Each point runs the quantized forward on the first ``--sentences`` sentences of
sim/data/lee_sentences.txt and reports, against fp32: mean/min embedding cosine, Spearman of
the pairwise-similarity matrices, retrieval top-1 agreement, and the last layer's SNR.
Sweeps (everything else at the default: shipped policy, B = 128, k = 4, exact ADC, 1-bit
DAC, 2-bit cells, 8-bit weights, no noise):

- ``adc``: crossbar ADC bits (exact = 9 for 128 rows x 2-bit cells x 1-bit DAC) down to 5;
- ``outliers``: k in {0, 2, 4, 8} with the policy's bits;
- ``block``: B in {32, 64, 128} (d_head = 32 caps the attention blocks at 32);
- ``bits``: uniform inlier bits n in {3, 4, 5, 6};
- ``precision``: all-3-bit vs all-5-bit vs the policy, and the policy with k = 0;
- ``noise``: conductance sigma (cell LSBs) in {0, 0.005, 0.01, 0.02, 0.05}, seed 0 (golden-only
  non-ideality study).
"""

import argparse
import dataclasses
import json
import os
import sys
import time

for _v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")       # small matmuls: BLAS threads only spin

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SWEEPS = ("precision", "outliers", "block", "bits", "adc", "noise")


def points(name, base, n_layers):
    from sim import crossbar, policy as pol
    xb = crossbar.DEFAULT
    if name == "adc":
        return [(f"ADC {a or 'exact'}", "ADC bits", a or xb.exact_adc_bits, base,
                 dataclasses.replace(xb, adc_bits=a)) for a in (0, 8, 7, 6, 5)]
    if name == "outliers":
        return [(f"k={k}", "outliers k", k, base.with_format(outliers=k), xb)
                for k in (0, 2, 4, 8)]
    if name == "block":
        return [(f"B={b}", "block B", b, base.with_format(block=b), xb) for b in (32, 64, 128)]
    if name == "bits":
        return [(f"all n={n}", "inlier bits n", n,
                 pol.uniform(n_layers, n, 8, block=base.block, outliers=base.outliers), xb)
                for n in (3, 4, 5, 6)]
    if name == "precision":
        return [("all-3-bit", "run", 0, pol.uniform(n_layers, 3, 8), xb),
                ("policy", "run", 1, base, xb),
                ("all-5-bit", "run", 2, pol.uniform(n_layers, 5, 8), xb),
                ("policy, k=0", "run", 3, base.with_format(outliers=0), xb)]
    if name == "noise":
        return [(f"sigma={s}", "conductance sigma (cell LSB)", s, base,
                 dataclasses.replace(xb, noise=s, seed=0)) for s in (0.0, 0.005, 0.01, 0.02, 0.05)]
    raise ValueError(f"unknown sweep {name!r}; choose from {', '.join(SWEEPS)}")


def plot(name, rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    xs = [r["x"] for r in rows]
    labels = [r["label"] for r in rows]
    for key, style in (("cos_mean", "o-"), ("spearman", "s--"), ("top1", "^:")):
        ax.plot(range(len(xs)), [r[key] for r in rows], style, label=key)
    ax.set_xticks(range(len(xs)), labels, rotation=20, fontsize=8)
    ax.set_xlabel(rows[0]["axis"])
    ax.set_ylabel("vs fp32")
    ax.axhline(0.99, color="grey", lw=0.5)
    ax.set_title(f"MiniLM quantized: {name} sweep ({rows[0]['n']} sentences)", fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sentences", type=int, default=32)
    ap.add_argument("--out", default=os.path.join(ROOT, "docs"))
    ap.add_argument("--only", default=",".join(SWEEPS),
                    help="comma-separated sweeps to run; others keep their results in "
                         "OUT/sweeps.json")
    args = ap.parse_args()
    from sim import bert, evaluate, policy as pol
    model = bert.load("minilm", max_tokens=128)
    sentences = bert.read_sentences(os.path.join(ROOT, "sim", "data",
                                                 "lee_sentences.txt"))[:args.sentences]
    base = pol.default_policy(model.config)
    ref = None
    # --only re-runs some sweeps and keeps the others' previous results
    prev = os.path.join(args.out, "sweeps.json")
    results = {}
    if os.path.isfile(prev):
        with open(prev) as f:
            results = {k: v for k, v in json.load(f).items() if k in SWEEPS}
    for name in args.only.split(","):
        rows = []
        for label, axis, x, p, xb in points(name, base, model.config.layers):
            t = time.perf_counter()
            r = evaluate.compare(model, sentences, p, bert.QuantOptions(crossbar=xb), ref=ref)
            ref = r.pop("_ref")
            r.pop("embedding")
            row = {"label": label, "axis": axis, "x": x, "n": r["n"],
                   "act_bits": round(pol.act_cost(p, model.config), 3),
                   "cos_mean": r["cos_mean"], "cos_min": r["cos_min"],
                   "spearman": r["spearman"], "top1": r["top1"],
                   "snr_last_db": r["layers"][-1]["snr_db"],
                   "seconds": round(time.perf_counter() - t, 1)}
            rows.append(row)
            print(f"{name:9} {label:14} cos {row['cos_mean']:.5f} min {row['cos_min']:.5f} "
                  f"rho {row['spearman']:.5f} top1 {row['top1']:.3f} "
                  f"SNR {row['snr_last_db']:.1f} dB ({row['seconds']} s)", flush=True)
        results[name] = rows
        plot(name, rows, os.path.join(args.out, f"sweep_{name}.png"))
    with open(os.path.join(args.out, "sweeps.json"), "w") as f:
        json.dump(results, f, indent=1)
    lines = ["# Sweeps of the quantized MiniLM golden model", "",
             f"Made by `python scripts/sweeps.py --sentences {args.sentences}`: the first "
             f"{len(sentences)} sentences of `sim/data/lee_sentences.txt`, tokens capped at 128, "
             "compared with the fp32 forward. Defaults: shipped policy "
             "(`sim/policies/minilm.json`), B = 128, k = 4, exact ADC, 1-bit DAC, 2-bit cells, "
             "8-bit weights, no noise. `act bits` is the MAC-weighted mean inlier width; "
             "`SNR` is the last layer's hidden-state SNR.", ""]
    for name in [s for s in SWEEPS if s in results]:
        rows = results[name]
        lines += [f"## {name}", "", f"![{name}](sweep_{name}.png)", "",
                  "| point | act bits | cos mean | cos min | Spearman | top-1 | SNR dB |",
                  "|---|---|---|---|---|---|---|"]
        for r in rows:
            lines.append(f"| {r['label']} | {r['act_bits']:.2f} | {r['cos_mean']:.5f} | "
                         f"{r['cos_min']:.5f} | {r['spearman']:.5f} | {r['top1']:.3f} | "
                         f"{r['snr_last_db']:.1f} |")
        lines.append("")
    with open(os.path.join(args.out, "sweeps.md"), "w") as f:
        f.write("\n".join(lines))
    print(f"wrote {args.out}/sweeps.md, sweeps.json and sweep_*.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
