"""Crossbar activity of real MiniLM inference: the share of DAC digits that are 1 and the mean
cell level, the two activity constants of the chip model (sim/data/chip.toml).

Runs the quantized all-MiniLM-L6-v2 (the shipped policy) on sentences, records the input of
every crossbar linear layer as the crossbar sees it (MX-OP inliers, bit-serial digits of
``sim.crossbar.pulse_digits``) and the cells of every weight (``sim.crossbar.bit_slices``),
and prints ``input_one_fraction`` (digits equal to 1 among all digits applied) and
``cell_level_fraction`` (mean cell level / top level), per linear layer and overall.

    python scripts/chip_activity.py [--sentences 16]
"""

import argparse
import dataclasses
import sys

import numpy as np

from sim import bert, crossbar, mxop, quant
from sim.policy import default_policy
from gen.cli_model import DEFAULT_SENTENCES


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sentences", type=int, default=16)
    args = ap.parse_args(argv)
    model = bert.load("minilm")
    policy = default_policy(model.config)
    tile = crossbar.PRESETS["minilm"]
    ones = {n: 0 for n in quant.LINEARS}
    digits = {n: 0 for n in quant.LINEARS}
    levels = {n: [0, 0] for n in quant.LINEARS}
    seen = set()
    linear = quant._linear

    def record(x, ql, fmt, opts, where):
        name = where[1]
        f = fmt.for_length(ql.w.shape[0])
        q = mxop.encode(x, f).q.astype(np.int64)
        d, _ = crossbar.pulse_digits(q, f.bits, tile.dac_bits)
        ones[name] += int(d.sum())
        digits[name] += d.size
        if where not in seen:
            seen.add(where)
            cells = crossbar.bit_slices(ql.w, dataclasses.replace(tile, weight_bits=ql.bits))
            levels[name][0] += int(cells.sum())
            levels[name][1] += cells.size * ((1 << tile.cell_bits) - 1)
        return linear(x, ql, fmt, opts, where)

    quant._linear = record
    try:
        sents = bert.read_sentences(DEFAULT_SENTENCES)[:args.sentences]
        model.embed(sents, precision="quant", policy=policy)
    finally:
        quant._linear = linear
    print(f"all-MiniLM-L6-v2, {len(sents)} sentences, shipped policy, 1-bit DAC, "
          f"{tile.cell_bits}-bit cells")
    print(f"{'linear':<8}{'input_one_fraction':>20}{'cell_level_fraction':>21}")
    for n in quant.LINEARS:
        print(f"{n:<8}{ones[n] / digits[n]:>20.4f}{levels[n][0] / levels[n][1]:>21.4f}")
    tot = sum(ones.values()) / sum(digits.values())
    lev = sum(v[0] for v in levels.values()) / sum(v[1] for v in levels.values())
    print(f"{'all':<8}{tot:>20.4f}{lev:>21.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
