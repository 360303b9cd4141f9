"""Measure softmax, layernorm and gelu throughput and latency in RTL simulation (Verilator).

    python scripts/bench_nonlinear.py [preset ...]        (default: every preset)

Runs each unit's ``<unit>_throughput`` cocotb test (back-to-back full-length rows or 512
elements, no idle, no backpressure, outputs checked against the golden model) and prints the
measured cycles per row (between the last beats of consecutive rows) against the target
(softmax: ``sim.softmax.row_cycles``, the row length; layernorm:
``sim.layernorm.row_cycles``, the row length at every preset), and the measured latency
(softmax: accept of a row's last score to its first probability; layernorm: accept of a
row's first element to its first valid output).
"""

import sys

from hw.common import units
from gen.harness import run_cocotb
from sim import layernorm, softmax


def main(argv):
    all_units = units()
    presets = argv or list(all_units["softmax"].presets)
    print(f"{'unit':<11}{'preset':<12}{'row len':>8}{'cycles/row':>12}{'target':>8}"
          f"{'latency':>9}")
    worst = 0.0
    for unit, length, target in (
            ("softmax", lambda p: p.max_len, lambda p: softmax.row_cycles(p.max_len)),
            ("layernorm", lambda p: p.dim, layernorm.row_cycles)):
        for name in presets:
            p = all_units[unit].presets[name]
            rep = run_cocotb(unit, p, case=f"bench-{name}", testcase=f"{unit}_throughput")
            L = length(p)
            cpr = rep["cycles_per_row"]
            worst = max(worst, cpr - L)
            print(f"{unit:<11}{name:<12}{L:>8}{cpr:>12.2f}{target(p):>8g}{rep['latency']:>9}",
                  flush=True)
    p = all_units["gelu"].presets["minilm"]        # gelu presets are identical
    rep = run_cocotb("gelu", p, case="bench-minilm", testcase="gelu_throughput")
    print(f"{'gelu':<11}{'all':<12}{'-':>8}{rep['cycles_per_element']:>12.3f}{'1/el':>8}"
          f"{rep['latency']:>9}  (cycles per element)")
    print(f"worst row overhead: {worst:.2f} cycles per row beyond the row length")


if __name__ == "__main__":
    main(sys.argv[1:])
