"""Event counts of one MiniLM encoder layer from the RTL against the chip model (sim/chip.py).

The four crossbar linear layers of a MiniLM layer (QKV 384 x 1152, O, FFN1, FFN2) run on
Verilator through their own ``crossbar_ctrl`` (every tile resident) with the operands the
golden quantized encoder computes for ``--tokens`` real tokens (scripts/bench_crossbar.py's
``layer_operands`` and ``run_rtl``); one attention head's QK^T and PV run through
``mixed_array`` (``--head-tokens`` real tokens, as scripts/bench_mixed_array.py). Prints every
counter of the RTL next to the chip model's event (``sim.chip.events``, renamed by
``sim.chip.CTRL_EVENTS``) and fails when one differs. The heads of a layer have one shape, so a
layer's attention events are ``heads`` times the head's.

    python scripts/chip_events_rtl.py [--layer 0] [--tokens 4] [--head-tokens 32]
"""

import argparse
import importlib.util
import sys

from gen.harness import ROOT, run_cocotb
from sim import chip, crossbar_ctrl, mxop


def _bench_crossbar():
    spec = importlib.util.spec_from_file_location("bench_crossbar",
                                                  ROOT / "scripts" / "bench_crossbar.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def crossbar_layer(cfg, layer, tokens):
    """[(linear, RTL counters, chip-model events, controller params)] of ``layer``."""
    bench = _bench_crossbar()
    ev = chip.events(cfg, tokens)["layers"][layer]
    out = []
    for name, (x, w, scale, bias, fmt, params, _) in bench.layer_operands(layer,
                                                                         tokens).items():
        p = chip.ctrl_params(w.shape[0], w.shape[1], fmt, params, cfg.timing)
        rep = bench.run_rtl(f"chip-{name}", p, x, w, scale, bias, fmt.bits)
        out.append((name, rep["counters"], ev[name], p))
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
    return rep, {k: qk[k] + pv[k] for k in ("mults", "fp_ops", "beats")}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layer", type=int, default=0, choices=range(6))
    ap.add_argument("--tokens", type=int, default=4, help="tokens through the linear layers")
    ap.add_argument("--head-tokens", type=int, default=32,
                    help="tokens of the attention head (a multiple of 32)")
    args = ap.parse_args(argv)
    cfg = chip.chip_config("minilm")
    bad = 0
    rows = []
    for name, got, ev, p in crossbar_layer(cfg, args.layer, args.tokens):
        job = crossbar_ctrl.counters(p, 0, act_bits=p.act_bits)["cycles"]
        for theirs, mine in chip.CTRL_EVENTS.items():
            want = ev[mine] + (job if mine == "cycles" else 0)
            bad += got[theirs] != want
            rows.append((name, theirs, got[theirs], want))
    rep, model = attention_head(cfg, args.head_tokens)
    print(f"MiniLM layer {args.layer}: the linears at {args.tokens} tokens (cycles include "
          f"the job's one-time programming), one head at {args.head_tokens} tokens")
    print(f"{'unit':<14}{'counter':<18}{'RTL':>14}{'model':>14}")
    for name, key, got, want in rows:
        print(f"{name:<14}{key:<18}{got:>14}{want:>14}{'' if got == want else '  MISMATCH'}")
    for theirs, mine in (("issued_mults", "mults"), ("fp_ops", "fp_ops"), ("beats", "beats")):
        bad += rep[theirs] != model[mine]
        print(f"{'head':<14}{theirs:<18}{rep[theirs]:>14}{model[mine]:>14}"
              f"{'' if rep[theirs] == model[mine] else '  MISMATCH'}")
    print(f"\n{'all counters equal' if not bad else f'{bad} counters differ'}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
