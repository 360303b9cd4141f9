"""Encoder: cycles per token per layer (cycle model vs RTL), unit utilisation, simulation time.

For the preset (default ``minilm``) at sequence length ``--length`` (default 128) this prints,
from the cycle model (``sim.encoder.model``), the cycles per token of every layer and phase
and the utilisation of every unit (busy cycles / layer cycles; for the mixed array also the
multiplier utilisation), with every layer's weights resident in its tiles. Unless
``--model-only``, it then runs one real all-MiniLM-L6-v2 layer (``--layer``, its first run:
it programs the layer's tiles) on Verilator on a real sentence of ``--length`` tokens (Lee-corpus
sentences joined and truncated), checks the output against the golden model, prints every
counter of the RTL next to the model, and the Verilator wall-clock time; when the run takes
longer than five minutes, a profile of where the simulated cycles and the wall-clock time
go.

    python scripts/bench_encoder.py [--preset minilm] [--length 128] [--layer 0] [--model-only]
"""

import argparse
import json
import os
import sys
import time

import numpy as np

from sim import bert, bf16, quant
from sim import encoder as enc
from sim import policy as pol

PHASES = ("load", "qkv", "enc", "att", "o", "ffn1", "ffn2", "store")
UNITS = ("crossbar", "mixed_array", "softmax", "layernorm", "gelu", "mxq")
GOAL_S = 300


def layer_table(p, length):
    print(f"cycle model, {p.hidden}x{p.heads} heads x{p.intermediate}, sequence {length}: "
          "cycles per token per layer")
    print(f"  {'layer':<6}" + "".join(f"{ph:>10}" for ph in PHASES[1:]) + f"{'total':>11}")
    for l in range(p.layers):
        c = enc.layer_counts(p, length, l)
        cyc = [c[f"cycles_{ph}"] / length for ph in PHASES[1:]]
        print(f"  {l:<6}" + "".join(f"{v:10.1f}" for v in cyc) + f"{sum(cyc):11.1f}")
    prog = programming(p)
    print("  (weights resident: every layer's tiles were programmed by its first run, "
          "which adds " + ", ".join(f"{v:,}" for v in prog) + " chip cycles per layer)")


def programming(p):
    """Chip cycles the crossbar controllers spend programming each layer's tiles, once: on
    the layer's first run after reset or after its weights were written (docs/encoder.md)."""
    out = []
    for l in range(p.layers):
        n = 0
        for lin in quant.LINEARS:
            xp = enc.xbar_params(p, lin, l)
            n += xp.tiles_needed * xp.rows * xp.row_program_cycles
        out.append(n)
    return out


def utilisation(c, total, p):
    out = {u: c[f"busy_{u}"] / total for u in UNITS}
    out["array multipliers"] = c["array_mults"] / (p.lanes * p.width * total)
    return out


def long_sentence(model, length):
    path = os.path.join(os.path.dirname(bert.__file__), "data", "lee_sentences.txt")
    text = " ".join(bert.read_sentences(path)[:12])
    b = model.tokenize([text], warn=False)
    if b.lengths[0] < length:
        raise SystemExit(f"the joined sentences have only {b.lengths[0]} tokens")
    return b


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="minilm")
    ap.add_argument("--length", type=int, default=128)
    ap.add_argument("--layer", type=int, default=0)
    ap.add_argument("--model-only", action="store_true", help="skip the RTL run")
    args = ap.parse_args(argv)
    p = enc.PRESETS[args.preset]
    L = args.length
    layer_table(p, L)
    c = enc.layer_counts(p, L, args.layer)
    total = sum(c[f"cycles_{ph}"] for ph in PHASES[1:])
    print(f"utilisation in layer {args.layer} (busy cycles / {total} layer cycles):")
    for u, v in utilisation(c, total, p).items():
        print(f"  {u:<18} {100 * v:6.2f} %")
    if args.model_only:
        return 0

    from gen.encoder_run import prepare
    model = bert.load("minilm", max_tokens=L)
    policy = p.policy
    b = long_sentence(model, L)
    hs = model.forward_quant(b, policy, enc.quant_options(p), hidden_states=True)
    x = bf16.from_float32(hs[args.layer][0])
    weights = [None] * p.layers
    weights[args.layer] = model.prepared(policy)[args.layer]
    run = prepare(p, weights, key=["minilm", args.layer], log=print)
    marks = []
    t0 = time.monotonic()
    ys, counters = run.run([x], first=args.layer, count=1, profile=True,
                           progress=lambda s, l: marks.append(time.monotonic() - t0))
    samples = counters.pop("profile")
    wall = time.monotonic() - t0
    want = bf16.from_float32(hs[args.layer + 1][0])
    equal = np.array_equal(ys[0][0], want)
    print(f"RTL layer {args.layer}, {L} tokens: output {'equal to' if equal else 'DIFFERENT from'} "
          f"the golden model; Verilator wall-clock {wall:.0f} s (goal {GOAL_S} s, incl. "
          f"loading the simulator)")
    m = enc.model(p, [(L, args.layer, 1)])
    print(f"  {'counter':<18}{'RTL':>14}{'model':>14}  equal")
    bad = 0
    for k in m:
        ok = counters.get(k) == m[k]
        bad += not ok
        print(f"  {k:<18}{counters.get(k, 0):>14}{m[k]:>14}  {'yes' if ok else 'NO'}")
    steady = enc.layer_counts(p, L, args.layer)
    print(f"cycles per token, layer {args.layer} (its first run programs its tiles; "
          "resident: every later run)")
    print(f"  {'phase':<8}{'RTL':>12}{'model':>12}{'resident':>12}")
    for ph in PHASES[1:]:
        k = f"cycles_{ph}"
        print(f"  {ph:<8}{counters[k] / L:12.1f}{m[k] / L:12.1f}{steady[k] / L:12.1f}")
    cycles = sum(counters[f"cycles_{ph}"] for ph in PHASES)
    print(f"simulated {cycles} cycles: {cycles / wall:,.0f} cycles/s")
    if wall > GOAL_S:
        # each 50,000-cycle sample interval's wall time goes to the phases that ran in it
        secs = dict.fromkeys(PHASES, 0.0)
        for (t_a, c_a), (t_b, c_b) in zip(samples, samples[1:]):
            d = {ph: c_b[f"cycles_{ph}"] - c_a[f"cycles_{ph}"] for ph in PHASES}
            n = sum(d.values())
            for ph in PHASES:
                secs[ph] += (t_b - t_a) * d[ph] / n if n else 0
        print(f"profile (over {GOAL_S} s): where the simulated cycles and the wall-clock go")
        print(f"  {'phase':<8}{'cycles':>12}{'share':>9}{'wall s':>9}{'cycles/s':>11}")
        for ph in PHASES:
            n = counters[f"cycles_{ph}"]
            rate = n / secs[ph] if secs[ph] else 0
            print(f"  {ph:<8}{n:>12}{100 * n / cycles:8.2f}%{secs[ph]:9.0f}{rate:11,.0f}")
    return 0 if equal and not bad else 1


if __name__ == "__main__":
    sys.exit(main())
