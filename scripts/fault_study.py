"""Accuracy of the quantized MiniLM against crossbar cell faults: stuck-at rate and drift.

Held-out sentences (the first ``--sentences`` of sim/data/lee_sentences.txt, tokens capped at
128) through the quantized golden model with the shipped policy, exact ADC, 1-bit DAC, 2-bit
cells, 128 x 128 tiles, compared with the fp32 forward (``sim.evaluate``: sentence-embedding
cosine, Spearman of the pairwise similarities). Faults (``sim.faults``):

- ``stuck``: stuck-at cells at a total rate, MNSIM 2.0's 9 : 1 split between the high- and
  low-resistance state, with 0 and with ``--spares`` spare columns per tile; the last point
  is MNSIM's default rate (10%);
- ``drift``: mean relative conductance loss (per-cell spread 50%), no stuck cells.

Writes docs/faults.json, docs/fault_stuck.png, docs/fault_drift.png and prints one line per
point.
"""

import argparse
import dataclasses
import json
import os
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RATES = (0.0, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 0.1)
SPARE_RATES = (1e-4, 1e-3, 3e-3, 1e-2)      # with spares (0: as without; 10%: saturated)
DRIFTS = (0.001, 0.003, 0.01, 0.02)


def plot(rows, key, xlabel, path, title):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    for spares in sorted({r["spares"] for r in rows}):
        # with spares, rate 0 is the clean point of the run without
        sel = [r for r in rows if r["spares"] == spares or (r["rate"] == 0 and spares)]
        xs = [max(r[key], 1e-5) if key == "rate" else r[key] * 100 for r in sel]
        tag = f", {spares} spare columns" if key == "rate" else ""
        ax.plot(xs, [r["cos_mean"] for r in sel], "o-", label=f"cosine{tag}")
        ax.plot(xs, [r["spearman"] for r in sel], "s--", label=f"Spearman{tag}")
    if key == "rate":
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("vs fp32")
    ax.axhline(0.99, color="grey", lw=0.5)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sentences", type=int, default=16)
    ap.add_argument("--spares", type=int, default=8)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--out", default=os.path.join(ROOT, "docs"))
    ap.add_argument("--sweeps", default="stuck,drift",
                    help="sweeps to run; the others keep their rows from OUT/faults.json")
    ap.add_argument("--plot-only", action="store_true",
                    help="only redraw the plots from OUT/faults.json")
    args = ap.parse_args()
    if args.plot_only:
        with open(os.path.join(args.out, "faults.json")) as f:
            return plots(json.load(f), args.out)
    from sim import bert, crossbar, evaluate, policy as pol
    from sim.faults import CellFaults
    model = bert.load("minilm", max_tokens=128)
    sentences = bert.read_sentences(os.path.join(ROOT, "sim", "data",
                                                 "lee_sentences.txt"))[:args.sentences]
    policy = pol.default_policy(model.config)
    run = args.sweeps.split(",")
    points = [("stuck", dict(stuck_rate=r)) for r in RATES]
    points += [("stuck", dict(stuck_rate=r, spares=args.spares)) for r in SPARE_RATES]
    points += [("drift", dict(drift=d)) for d in DRIFTS]
    points = [pt for pt in points if pt[0] in run]
    rows = []
    prev = os.path.join(args.out, "faults.json")
    if os.path.isfile(prev):
        with open(prev) as f:
            rows = [r for r in json.load(f) if r["sweep"] not in run]
    ref = None
    for sweep, kw in points:
        faults = CellFaults(**kw)
        xb = dataclasses.replace(crossbar.DEFAULT, faults=faults)
        t = time.perf_counter()
        r = evaluate.compare(model, sentences, policy, bert.QuantOptions(crossbar=xb), ref=ref,
                             workers=args.workers)
        ref = r.pop("_ref")
        row = {"sweep": sweep, "rate": faults.stuck_rate, "spares": faults.spares,
               "drift": faults.drift, "n": r["n"], "cos_mean": r["cos_mean"],
               "cos_min": r["cos_min"], "spearman": r["spearman"], "top1": r["top1"],
               "seconds": round(time.perf_counter() - t, 1)}
        rows.append(row)
        print(f"{sweep:5} rate {row['rate']:<7g} spares {row['spares']:<2} drift "
              f"{row['drift']:<5g} cos {row['cos_mean']:.5f} min {row['cos_min']:.5f} "
              f"rho {row['spearman']:.5f} top1 {row['top1']:.3f} ({row['seconds']} s)",
              flush=True)
        with open(os.path.join(args.out, "faults.json"), "w") as f:
            json.dump(rows, f, indent=1)
    plots(rows, args.out)


def plots(rows, out):
    stuck = [r for r in rows if r["sweep"] == "stuck"]
    drift = [r for r in rows if r["sweep"] == "drift" or (r["sweep"] == "stuck"
                                                          and r["rate"] == 0 and not r["spares"])]
    n = rows[0]["n"]
    plot(stuck, "rate", "stuck-at cell rate (HRS : LRS = 9 : 1; 0 drawn at 1e-5)",
         os.path.join(out, "fault_stuck.png"), f"MiniLM, stuck-at cells ({n} sentences)")
    plot(drift, "drift", "mean conductance loss (%)", os.path.join(out, "fault_drift.png"),
         f"MiniLM, conductance drift ({n} sentences)")


if __name__ == "__main__":
    main()
