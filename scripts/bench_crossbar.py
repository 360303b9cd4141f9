"""Crossbar controller: cycles measured in RTL simulation vs the analytic model, per config.

For every configuration the cocotb regression tests (``tests/test_crossbar_ctrl.py`` CASES,
and with ``--minilm`` the real MiniLM layer-0 Wq on the ``minilm`` preset) this runs the
random and corner tests on Verilator and prints, per test, the counters the RTL reports
(``cycles``, ADC conversions, DAC pulses, cell writes, reprogram writes, FP lane ops) next to
``sim.crossbar_ctrl.counters``. Then it prints the model's figures for every preset.

    python scripts/bench_crossbar.py [--samples 50] [--minilm]
"""

import argparse
import importlib.util
import json
import sys
import time

import numpy as np

from sim.crossbar_ctrl import PRESETS, counters
from gen.harness import BUILD, ROOT, run_cocotb


def _regression():
    """The regression module (its CASES and MiniLM stimulus), loaded from tests/."""
    spec = importlib.util.spec_from_file_location("test_crossbar_ctrl",
                                                  ROOT / "tests" / "test_crossbar_ctrl.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def records(case):
    path = BUILD / f"crossbar_ctrl-{case}" / "report.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=50, help="random vectors per config")
    ap.add_argument("--minilm", action="store_true", help="also run MiniLM Wq (~1.5 min)")
    args = ap.parse_args(argv)
    T = _regression()

    runs = [(case, params, dict(testcase=["ctrl_random", "ctrl_corners"],
                                env={"NUM_SAMPLES": str(args.samples)}))
            for case, (params, _) in T.CASES.items()]
    if args.minilm:
        x, w, s, b = T.minilm_wq(16)
        path = BUILD / "crossbar_ctrl-minilm-wq.npz"
        BUILD.mkdir(parents=True, exist_ok=True)
        np.savez(path, x=x, w=w, scale=s, bias=b)
        runs.append(("minilm", PRESETS["minilm"],
                     dict(testcase="ctrl_minilm", env={"XBARLLM_MINILM": str(path)})))

    hdr = (f"{'config':<18}{'vectors':>8}{'cycles (RTL)':>14}{'cycles (model)':>16}{'equal':>7}"
           f"{'ADC conv':>11}{'DAC pulses':>12}{'cell wr':>10}{'reprog wr':>11}{'FP ops':>9}")
    print(hdr)
    print("-" * len(hdr))
    bad = 0
    for case, params, kw in runs:
        t0 = time.time()
        run_cocotb("crossbar_ctrl", params, case=case, **kw)
        for r in records(case):
            got, want = r["counters"], r["predicted"]
            eq = got == want
            bad += not eq
            print(f"{case:<18}{r['vectors']:>8}{got['cycles']:>14}{want['cycles']:>16}"
                  f"{'yes' if eq else 'NO':>7}{got['adc']:>11}{got['dac']:>12}"
                  f"{got['cell_writes']:>10}{got['reprogram_writes']:>11}{got['fp_ops']:>9}")
        print(f"{'':<18}({time.time() - t0:.0f} s incl. build)")

    print("\nmodel per preset (one job of 128 vectors; cycles at the emulation timing):")
    print(f"{'preset':<12}{'K x N':>12}{'tiles':>7}{'cycles/vector':>15}{'ADC/vector':>12}"
          f"{'cell writes':>13}")
    for name, p in PRESETS.items():
        c = counters(p, 128)
        print(f"{name:<12}{f'{p.in_features} x {p.out_features}':>12}{p.tiles_needed:>7}"
              f"{c['cycles'] / 128:>15.0f}{c['adc'] // 128:>12}{c['cell_writes']:>13}")
    if bad:
        print(f"\n{bad} tests with counters different from the model")
        return 1
    print("\nevery measured counter equals the model")
    return 0


if __name__ == "__main__":
    sys.exit(main())
