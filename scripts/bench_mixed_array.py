"""Utilization of the mixed array on one MiniLM attention head (RTL, Verilator).

Streams S = Q K^T and then C = P V for one all-MiniLM-L6-v2 head (layer 0, real weights and
tokens, P from the softmax golden model, padded to a whole block and its blocks ended at the
sentence length) through ``mixed_array`` with no stalls, checks every result against the
golden model, and prints useful multiplies / (INT multipliers x cycles) in steady state
(first to last accepted input beat) and over the whole run, plus the counters.

    python scripts/bench_mixed_array.py [--preset minilm] [--set width=8 ...] [--tokens 128]
"""

import argparse

from gen.build import UsageError, resolve, sets_tag
from gen.harness import run_cocotb
from sim.mixed_array import PRESETS


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="minilm", choices=sorted(PRESETS))
    ap.add_argument("--set", action="append", default=[], metavar="K=V",
                    help="override a mixed_array parameter")
    ap.add_argument("--tokens", type=int, default=128)
    args = ap.parse_args(argv)
    try:
        _, p = resolve("mixed_array", args.preset, args.set)
    except UsageError as e:
        ap.error(str(e))
    rep = run_cocotb("mixed_array", p, case=f"bench-{args.preset}{sets_tag(args.set)}",
                     testcase="mixed_utilization",
                     env={"MIXED_BENCH": "1", "HEAD_TOKENS": str(args.tokens)})
    assert rep["mismatches"] == 0, rep
    print(f"mixed_array preset {args.preset}: lanes={p.lanes} width={p.width} "
          f"({rep['multipliers']} INT multipliers), MiniLM head, {rep['tokens']} tokens, "
          f"d_head 32")
    print(f"results checked: {rep['vectors']} (S and C), mismatches {rep['mismatches']}")
    print(f"useful multiplies (S and C): {rep['useful_mults']}")
    print(f"input beats {rep['in_beats']}, steady-state cycles {rep['steady_cycles']}, "
          f"total cycles {rep['total_cycles']}, busy cycles {rep['busy_cycles']}")
    print(f"INT multiplies issued {rep['issued_mults']}, FP outlier-lane operations "
          f"{rep['fp_ops']}")
    print(f"utilization steady state: {100 * rep['util_steady']:.1f}%  (goal >= 90%)")
    print(f"utilization whole run:    {100 * rep['util_total']:.1f}%")


if __name__ == "__main__":
    main()
