"""Measure mxq throughput in RTL simulation: cycles per block with no stalls (target: block).

    python scripts/bench_mxq.py [preset ...]

Runs the `mxq_throughput` cocotb test (16 back-to-back blocks, no idle, no backpressure) on
Verilator for each preset and prints measured cycles per block against the target.
"""

import sys

from hw.common import units
from gen.harness import run_cocotb


def main(argv):
    unit = units()["mxq"]
    presets = argv or list(unit.presets)
    print(f"{'preset':<12}{'block':>7}{'lanes':>7}{'cycles/block':>14}{'target':>8}")
    worst = 0.0
    for name in presets:
        p = unit.presets[name]
        rep = run_cocotb("mxq", p, case=f"bench-{name}", testcase="mxq_throughput")
        cpb = rep["cycles_per_block"]
        worst = max(worst, cpb / p.block)
        print(f"{name:<12}{p.block:>7}{p.lanes:>7}{cpb:>14.2f}{p.block:>8}", flush=True)
    print(f"worst: {worst:.3f} cycles per element per lane (1.000 = one element per cycle)")


if __name__ == "__main__":
    main(sys.argv[1:])
