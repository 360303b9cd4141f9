"""Event counts of one MiniLM encoder layer from the RTL against the chip model (sim/chip.py).

Runs one real all-MiniLM-L6-v2 layer (``--layer``) on a real sentence of ``--tokens`` tokens or
more (``sim/data/lee_sentences.txt``) through the generated encoder top (``hw/encoder.py``,
preset ``minilm``, on Verilator through ``gen.encoder_run``: the build is cached in
``build/encoder-run-<tag>/``), checks its output against the golden model and prints every
counter of the encoder that the chip model predicts (``sim.chip.encoder_counters`` of
``sim.chip.events``) next to the chip model's figure; exits 1 when one differs. The run is
the layer's first since reset, so its crossbar jobs program the layer's tiles, which the
chip model (weights resident) does not count: that programming
(``sim.encoder.layer_counts(..., program=...)`` less a resident layer's) is added to the
chip model's figures (for the
counters of ``sim.encoder.BOUNDS``, which depend on the data, when the RTL's exceeds the
model's: the mixed array forms an outlier product only for a nonzero outlier).

    python scripts/chip_events_rtl.py [--layer 3] [--tokens 16]
"""

import argparse
import os
import sys

import numpy as np

from sim import bert, bf16, chip, encoder, quant

LEE = os.path.join(os.path.dirname(bf16.__file__), "data", "lee_sentences.txt")


def run_layer(layer, tokens):
    """(tokens, the encoder's counters) of ``layer`` on the first real sentence of at least
    ``tokens`` tokens; the layer's output must equal the golden model's."""
    from gen.encoder_run import prepare
    p = encoder.PRESETS["minilm"]
    m = bert.load("minilm", max_tokens=p.max_len)
    for s in bert.read_sentences(LEE):
        b = m.tokenize([s], warn=False)
        if int(b.lengths[0]) >= tokens:
            break
    else:
        raise SystemExit(f"no sentence of {tokens} tokens or more in {LEE}")
    n = int(b.lengths[0])
    hs = m.forward_quant(b, p.policy, encoder.quant_options(p), hidden_states=True)
    weights = [w if l == layer else None for l, w in enumerate(m.prepared(p.policy))]
    run = prepare(p, weights, key=["minilm", [layer]])
    ys, counters = run.run([bf16.from_float32(hs[layer][0, :n])], first=layer, count=1)
    if not np.array_equal(ys[0][0], bf16.from_float32(hs[layer + 1][0, :n])):
        raise SystemExit(f"layer {layer}: the RTL's output differs from the golden model")
    return n, counters


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layer", type=int, default=3, choices=range(6))
    ap.add_argument("--tokens", type=int, default=16, help="shortest sentence to take, tokens")
    args = ap.parse_args(argv)
    n, got = run_layer(args.layer, args.tokens)
    cfg = chip.chip_config("minilm")
    want = chip.encoder_counters(cfg, chip.events(cfg, n), args.layer)
    p = encoder.PRESETS["minilm"]
    first = encoder.layer_counts(p, n, args.layer, program=quant.LINEARS)
    steady = encoder.layer_counts(p, n, args.layer)
    prog = {k: first[k] - steady[k] for k in want if first.get(k, 0) != steady.get(k, 0)}
    for k, v in prog.items():
        want[k] += v
    print(f"MiniLM layer {args.layer}, a real sentence of {n} tokens, through the encoder top; "
          f"its first run also programs the layer's tiles, added to the chip model's "
          f"{', '.join(sorted(prog))}")
    print(f"{'counter':<20}{'RTL':>14}{'chip model':>14}")
    bad = 0
    for key, v in want.items():
        bound = key in encoder.BOUNDS
        ok = got[key] <= v if bound else got[key] == v
        bad += not ok
        note = "  MISMATCH" if not ok else f"  (upper bound; RTL {got[key] / v:.1%})" \
            if bound else ""
        print(f"{key:<20}{got[key]:>14}{v:>14}{note}")
    print(f"\n{'all counters equal (bounds kept)' if not bad else f'{bad} counters differ'}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
