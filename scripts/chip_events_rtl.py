"""Event counts of one MiniLM encoder layer from the RTL against the chip model (sim/chip.py).

Runs, on Verilator, the four crossbar linear layers of a MiniLM layer (QKV 384 x 1152, O,
FFN1, FFN2: the real all-MiniLM-L6-v2 weights of the layer, every layer resident in its own
tiles) through ``crossbar_ctrl`` with ``--tokens`` input vectors, and one attention head's
QK^T and PV through ``mixed_array`` (``--head-tokens`` real tokens, as
scripts/bench_mixed_array.py). Prints every counter of the RTL next to the chip model's event
and fails when one differs. The heads of a layer have one shape, so a layer's attention
events are ``heads`` times the head's.

    python scripts/chip_events_rtl.py [--layer 0] [--tokens 4] [--head-tokens 32]
"""

import argparse
import dataclasses
import json
import sys

import numpy as np

from gen.harness import BUILD, run_cocotb
from sim import bf16, chip, crossbar_ctrl, mxop, quant
from sim.bert import load


def _records(case, unit):
    path = BUILD / f"{unit}-{case}" / "report.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def crossbar_layer(cfg, layer, tokens, rng):
    """(name, RTL counters, model events) of the four linears of ``layer``."""
    model = load("minilm")
    lw = quant.prepare(model, cfg.policy)[layer]
    lp = cfg.policy.layers[layer]
    ev = chip.events(cfg, tokens)["layers"][layer]
    out = []
    for name, shape in chip.LINEAR_SHAPES.items():
        k, n = shape(cfg.hidden, cfg.intermediate)
        ql = getattr(lw, name)
        fmt = mxop.MXOPFormat(block=cfg.policy.block, outliers=cfg.policy.outliers,
                              bits=lp.act_bits[name])
        tile = dataclasses.replace(cfg.tile, weight_bits=ql.bits)
        p = chip.ctrl_params(k, n, fmt, tile, cfg.timing)
        x = bf16.from_float32(rng.standard_normal((tokens, k)).astype(np.float32))
        BUILD.mkdir(parents=True, exist_ok=True)
        path = BUILD / f"chip-events-{name}.npz"
        np.savez(path, x=x, w=ql.w.astype(np.int64), scale=ql.scale, bias=ql.bias)
        case = f"chip-{name}"
        rep = run_cocotb("crossbar_ctrl", p, case=case, testcase="ctrl_minilm",
                         env={"XBARLLM_MINILM": str(path)})
        assert rep["mismatches"] == 0, rep
        got = _records(case, "crossbar_ctrl")[0]["counters"]
        out.append((name, got, ev[name], p))
    return out


def attention_head(cfg, tokens):
    """(RTL report, model events) of one head's QK^T and PV on the mixed array."""
    p = cfg.array
    rep = run_cocotb("mixed_array", p, case=f"chip-head{tokens}", testcase="mixed_utilization",
                     env={"MIXED_BENCH": "1", "HEAD_TOKENS": str(tokens)})
    assert rep["mismatches"] == 0, rep
    # the formats of the bench (tests/test_mixed_array.py mixed_utilization)
    fq = mxop.MXOPFormat(block=min(p.block, 128), outliers=min(4, p.outliers),
                         bits=min(5, p.bits)).for_length(cfg.d_head)
    fp = fq.for_length(tokens)
    qk = chip.array_events(tokens, cfg.d_head, tokens, fq, p)
    pv = chip.array_events(tokens, tokens, cfg.d_head, fp, p)
    model = {k: qk[k] + pv[k] for k in ("mults", "fp_ops", "beats")}
    return rep, model


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layer", type=int, default=0, choices=range(6))
    ap.add_argument("--tokens", type=int, default=4, help="input vectors per linear layer")
    ap.add_argument("--head-tokens", type=int, default=32,
                    help="tokens of the attention head (a multiple of 32)")
    args = ap.parse_args(argv)
    cfg = chip.chip_config("minilm")
    rng = np.random.default_rng(0)
    bad = 0
    print(f"MiniLM layer {args.layer}, {args.tokens} vectors per linear layer")
    print(f"{'linear':<7}{'counter':<18}{'RTL':>14}{'model':>14}")
    for name, got, ev, p in crossbar_layer(cfg, args.layer, args.tokens, rng):
        idle = crossbar_ctrl.counters(p, 0)["cycles"]
        for theirs, mine in chip.CTRL_EVENTS.items():
            if theirs not in got:
                continue
            want = ev[mine] + (idle if mine == "cycles" else 0)
            bad += got[theirs] != want
            print(f"{name:<7}{theirs:<18}{got[theirs]:>14}{want:>14}"
                  f"{'' if got[theirs] == want else '  MISMATCH'}")
    rep, model = attention_head(cfg, args.head_tokens)
    print(f"\nattention head, {args.head_tokens} tokens (QK^T and PV on the mixed array)")
    for theirs, mine in (("issued_mults", "mults"), ("fp_ops", "fp_ops"), ("beats", "beats")):
        bad += rep[theirs] != model[mine]
        print(f"{'':<7}{theirs:<18}{rep[theirs]:>14}{model[mine]:>14}"
              f"{'' if rep[theirs] == model[mine] else '  MISMATCH'}")
    print(f"\n{'all counters equal' if not bad else f'{bad} counters differ'}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
