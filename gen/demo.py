"""The main job (``make demo``): every unit through generate -> lint -> RTL == golden model."""

import os
import time

from hw.common import units
from .harness import BUILD, run_cocotb

from .build import generate, lint, resolve

__all__ = ["run_demo"]


# units whose one "vector" is a whole job: the encoder's is a sentence through every layer
# (minutes on Verilator), so the demo checks a few random sentences in its plain regression
# and leaves the mid-stream reset run to the tests
DEMO_RUNS = {"encoder": {"samples": "3", "testcase": ["encoder_random", "encoder_program"]}}


def run_demo(*, quick=False):
    samples = "40" if quick else os.environ.get("NUM_SAMPLES", "300")
    table = units()
    print(f"xbarllm demo: {len(table)} units; each generated at the minilm preset and linted, "
          f"then its cocotb regression run at the tiny preset on Verilator ({samples} random "
          f"vectors per test, random stalls) against the golden model\n", flush=True)
    rows, failed = [], 0
    for i, (name, unit) in enumerate(table.items(), 1):
        t0 = time.monotonic()
        print(f"[{i}/{len(table)}] {name}: generate + lint ...", end=" ", flush=True)
        _, params = resolve(name, "minilm")
        vpath = generate(name, params, BUILD / "demo" / name)
        lines = vpath.read_text().count("\n")
        lint_ok = all(rc == 0 for _, rc, _ in lint(vpath))
        print(f"{lines} lines, lint {'ok' if lint_ok else 'FAILED'}; regression "
              f"(tiny) ...", end=" ", flush=True)
        _, demo_params = resolve(name, "tiny")
        run = DEMO_RUNS.get(name, {})
        try:
            rep = run_cocotb(name, demo_params, case="demo", testcase=run.get("testcase"),
                             env={"NUM_SAMPLES": run.get("samples", samples)})
            ok = rep["mismatches"] == 0 and lint_ok
        except AssertionError as e:
            rep = {"vectors": 0, "beats": 0, "mismatches": "-"}
            ok = False
            print(f"\n    {e}")
        failed += not ok
        dt = time.monotonic() - t0
        print(f"{'ok' if ok else 'FAILED'} ({dt:.0f} s)", flush=True)
        rows.append((name, lines, "ok" if lint_ok else "FAILED", rep["vectors"], rep["beats"],
                     rep["mismatches"], f"{dt:.0f}"))
    head = ("unit", "Verilog lines", "lint", "vectors", "beats", "mismatches", "seconds")
    widths = [max(len(str(r[c])) for r in rows + [head]) for c in range(len(head))]
    print("\nsummary")
    for r in [head] + rows:
        print("  " + "  ".join(str(v).rjust(w) for v, w in zip(r, widths)))
    total_lines = sum(r[1] for r in rows)
    total_vec = sum(r[3] for r in rows)
    print(f"\n{len(rows)} units, {total_lines} lines of Verilog, {total_vec} vectors checked, "
          f"{failed} unit(s) failed")
    return 1 if failed else 0
