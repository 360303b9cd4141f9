"""Crossbar controller on a real MiniLM layer: cycles per token before and after tile
parallelism, RTL beside the model, and the layer's event counts from RTL runs.

The four linear layers (QKV 384 x 1152, O 384 x 384, FFN1 384 x 1536, FFN2 1536 x 384) of one
all-MiniLM-L6-v2 encoder layer run on their own ``crossbar_ctrl`` (weights resident, the
``minilm`` tile preset, the shipped precision policy's weight and inlier bits per linear),
each fed the operands the golden quantized encoder computes for ``--tokens`` real tokens.
Every RTL output is checked against ``sim.crossbar_ctrl.run`` and every counter against
``sim.crossbar_ctrl.counters``. Cycles per token exclude the one-time programming of a job.

- before: the one-tile-at-a-time controller this schedule replaced, from its cycle formula
  (one tile request at a time, the emulated tile's R + 3 cycles per pulse, 4 cycles per output
  conversion);
- serial: one tile at a time at the macro contract's pulse time (the same periphery and
  output pipeline as now): what tile parallelism alone saves;
- after: the tile-parallel schedule, model and RTL.

    python scripts/bench_crossbar.py [--tokens 128] [--layer 0] [--model-only]
"""

import argparse
import dataclasses
import json
import sys
import time

import numpy as np

from gen.harness import BUILD, run_cocotb
from sim import bert, crossbar, policy as pol
from sim.crossbar_ctrl import COUNTERS, OUT_DEPTH, PRESETS, counters, run

LINEARS = ("qkv", "o", "ffn1", "ffn2")


def layer_operands(layer, tokens):
    """The crossbar operands of one MiniLM layer's four linears for ``tokens`` real tokens.

    Runs the golden quantized forward on sentences of ``sim/data`` (one sequence, truncated
    to ``tokens``) and records every ``sim.crossbar.linear`` call it makes: a list per linear
    of ``(x, w, scale, bias, fmt, params, y)``.
    """
    from pathlib import Path
    model = bert.load("minilm", max_tokens=tokens)
    text = " ".join(bert.read_sentences(Path(bert.__file__).parent / "data" /
                                        "lee_sentences.txt"))
    batch = model.tokenize([text], warn=False)
    policy = pol.default_policy(model.config)
    calls = []
    golden = crossbar.linear

    def record(x, w, scale, bias, fmt, params, **kw):
        y = golden(x, w, scale, bias, fmt, params, **kw)
        calls.append((x, w, scale, bias, fmt, params, y))
        return y

    crossbar.linear = record        # the layer calls it through the module
    try:
        model.forward_quant(batch, policy)
    finally:
        crossbar.linear = golden
    assert len(calls) == 4 * model.config.layers
    return dict(zip(LINEARS, calls[4 * layer:4 * layer + 4]))


def ctrl_params(x, w, fmt, params):
    """Controller params for one linear: the minilm preset, every tile resident."""
    p = dataclasses.replace(PRESETS["minilm"], in_features=w.shape[0],
                            out_features=w.shape[1], weight_bits=params.weight_bits,
                            block=fmt.block, outliers=fmt.outliers)
    return dataclasses.replace(p, tiles=p.tiles_needed)


def before_per_token(p, a):
    """Cycles per vector of the replaced controller (one tile request at a time)."""
    k, spb = p.fmt.outliers, p.fmt.block // p.seg
    per_group = (p.segments * (1 + p.pulses(a) * (p.rows + 3))
                 + p.nblocks * (k * ((spb - 1) + 3) + 1))
    return 1 + p.in_features + p.groups * per_group + 4 * p.out_features


def serial_per_token(p, a):
    """Cycles per vector, one tile at a time at the contract's pulse time."""
    ops = p.groups * (p.segments * p.pulses(a) + p.nblocks * p.fmt.outliers)
    return (1 + p.in_features + ops * p.tile.pulse_cycles + p.tail + p.out_features
            + OUT_DEPTH)


def after_per_token(p, a, vectors, total):
    """Cycles per vector of a job's ``total`` cycles, without the one-time programming."""
    job = counters(p, 0, act_bits=a)["cycles"]
    return (total - job) / vectors


def run_rtl(name, p, x, w, scale, bias, a):
    path = BUILD / f"crossbar_ctrl-bench-{name}.npz"
    BUILD.mkdir(parents=True, exist_ok=True)
    np.savez(path, x=x, w=w, scale=scale, bias=bias, act_bits=a)
    rep = run_cocotb("crossbar_ctrl", p, case=f"bench-{name}", testcase="ctrl_file",
                     env={"XBARLLM_XBAR_JOB": str(path)})
    assert rep["mismatches"] == 0 and rep["vectors"] == x.shape[0], rep
    return rep


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=128, help="sequence length (2..512)")
    ap.add_argument("--layer", type=int, default=0, help="encoder layer (0..5)")
    ap.add_argument("--model-only", action="store_true", help="no RTL runs")
    ap.add_argument("--json", help="write the figures to this file")
    args = ap.parse_args(argv)
    if not 2 <= args.tokens <= 512 or not 0 <= args.layer <= 5:
        ap.error("--tokens must be in 2..512 and --layer in 0..5")

    t0 = time.time()
    ops = layer_operands(args.layer, args.tokens)
    print(f"MiniLM layer {args.layer}, {args.tokens} tokens: golden operands in "
          f"{time.time() - t0:.0f} s")
    rows, totals_rtl, totals_model = [], dict.fromkeys(COUNTERS, 0), dict.fromkeys(COUNTERS, 0)
    for name, (x, w, scale, bias, fmt, params, y) in ops.items():
        p = ctrl_params(x, w, fmt, params)
        a = fmt.bits
        assert np.array_equal(run(x, w, scale, bias, p, act_bits=a), y), name
        model = counters(p, x.shape[0], act_bits=a)
        row = {"linear": name, "K": p.in_features, "N": p.out_features, "tiles": p.tiles,
               "act_bits": a, "weight_bits": p.weight_bits,
               "before": before_per_token(p, a), "serial": serial_per_token(p, a),
               "after_model": after_per_token(p, a, x.shape[0], model["cycles"]),
               "model": model}
        if not args.model_only:
            t1 = time.time()
            rep = run_rtl(name, p, x, w, scale, bias, a)
            row.update(rtl=rep["counters"], emu_stall=rep["emu_stall"],
                       emu_ahead=rep["emu_ahead"], rtl_seconds=round(time.time() - t1),
                       after_rtl=after_per_token(p, a, x.shape[0], rep["counters"]["cycles"]))
            for key in COUNTERS:
                totals_rtl[key] += rep["counters"][key]
        for key in COUNTERS:
            totals_model[key] += model[key]
        rows.append(row)

    print(f"\ncycles per token (digital clock; macro: pulse_cycles "
          f"{PRESETS['minilm'].tile.pulse_cycles}, 128 x 128 tiles, resident weights)")
    hdr = (f"{'linear':<7}{'K x N':>12}{'tiles':>6}{'bits':>5}{'before':>10}{'serial':>10}"
           f"{'after':>8}{'after RTL':>11}{'x before':>10}{'x serial':>10}{'RTL s':>7}")
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        rtl = f"{r['after_rtl']:.0f}" if "after_rtl" in r else "-"
        print(f"{r['linear']:<7}{r['K']:>5} x {r['N']:<5}{r['tiles']:>6}{r['act_bits']:>5}"
              f"{r['before']:>10}{r['serial']:>10}{r['after_model']:>8.0f}{rtl:>11}"
              f"{r['before'] / r['after_model']:>10.1f}{r['serial'] / r['after_model']:>10.1f}"
              f"{r.get('rtl_seconds', '-'):>7}")
    tot = {k: sum(r[k] for r in rows) for k in ("before", "serial", "after_model")}
    print(f"{'layer':<30}{tot['before']:>10}{tot['serial']:>10}{tot['after_model']:>8.0f}"
          f"{'':>11}{tot['before'] / tot['after_model']:>10.1f}"
          f"{tot['serial'] / tot['after_model']:>10.1f}")

    bad = 0
    print(f"\nevent counts of the layer's four linears ({args.tokens} tokens, one job each, "
          "programming included)")
    print(f"{'counter':<18}{'model':>16}{'RTL':>16}{'equal':>7}")
    for key in COUNTERS:
        if args.model_only:
            print(f"{key:<18}{totals_model[key]:>16}{'-':>16}")
            continue
        eq = totals_rtl[key] == totals_model[key]
        bad += not eq
        print(f"{key:<18}{totals_model[key]:>16}{totals_rtl[key]:>16}{'yes' if eq else 'NO':>7}")
    if not args.model_only:
        stall = sum(r["emu_stall"] for r in rows)
        ahead = sum(r["emu_ahead"] for r in rows)
        print(f"{'(emu_stall)':<18}{'':>16}{stall:>16}\n{'(emu_ahead)':<18}{'':>16}{ahead:>16}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"tokens": args.tokens, "layer": args.layer, "linears": rows,
                       "model": totals_model,
                       "rtl": None if args.model_only else totals_rtl}, f, indent=1)
    if bad:
        print(f"\n{bad} counters differ between the RTL and the model")
        return 1
    if not args.model_only:
        print("\nevery RTL output bit-exact; every counter equal to the model")
    return 0


if __name__ == "__main__":
    sys.exit(main())
