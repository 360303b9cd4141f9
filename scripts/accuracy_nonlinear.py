"""Golden accuracy of the nonlinear units on real all-MiniLM-L6-v2 rows, against float math.

    python scripts/accuracy_nonlinear.py [--sentences N] [--layers L]

Runs the fp32 MiniLM forward (``sim.bert``) on the first N sentences of
``sim/data/lee_sentences.txt`` (padded batch, so attention masks have padding) and captures,
in every one of the first L layers, the inputs each nonlinear unit sees: attention-score rows
with their masks (softmax), ``(x, r)`` rows with the layer's gamma and beta for both add &
norm steps (layernorm), and the FFN pre-activations (gelu). Every input is rounded to bf16
(the bus format); the golden model's output is compared with float64 math on the same bf16
inputs. Also prints the GELU error over every bf16 value in [-4, 4] (I-BERT's i-GELU: 0.018,
goal < 0.01), and, as the floor any bf16-output unit has, the error of the exactly rounded
float result.
"""

import argparse
import math
import os

import numpy as np

from sim import bf16
from sim.bert import load, read_sentences
from sim.gelu import PRESETS as GELU_PRESETS, gelu
from sim.layernorm import PRESETS as LN_PRESETS, layernorm
from sim.softmax import PRESETS as SM_PRESETS, softmax

DATA = os.path.join(os.path.dirname(__file__), "..", "sim", "data", "lee_sentences.txt")


def capture(model, batch, layers):
    """Per layer: scores (N, heads, L, L) + mask, LN inputs and params, FFN pre-activations."""
    w = model.weights
    x = model.embeddings(batch)
    mask = batch.mask
    tok = mask.ravel()
    out = []
    for l in range(layers):
        p = f"encoder.layer.{l}."
        t = {}
        y = model.layer_fp32(l, x, mask, taps=t)

        def rows(a):
            return a.reshape(-1, a.shape[-1])[tok]

        g1 = w[p + "attention.output.LayerNorm.weight"]
        b1 = w[p + "attention.output.LayerNorm.bias"]
        g2, b2 = w[p + "output.LayerNorm.weight"], w[p + "output.LayerNorm.bias"]
        s = t["scores"]
        out.append(dict(scores=s, smask=np.broadcast_to(mask[:, None, None, :], s.shape),
                        ln=[(rows(t["attn_out"]), rows(x), g1, b1),
                            (rows(t["ffn_out"]), rows(t["x1"]), g2, b2)],
                        pre=rows(t["ffn_pre"])))
        x = y
    return out


def f64(a):
    return bf16.to_float32(bf16.daz(a)).astype(np.float64)


def softmax_report(rows, masks, p):
    s = bf16.from_float32(rows.astype(np.float32))
    out = f64(softmax(s, masks, p))
    x = np.where(masks, f64(s), -np.inf)
    ref = np.exp(x - x.max(axis=-1, keepdims=True))
    ref /= ref.sum(axis=-1, keepdims=True)
    # KL(float || unit), the unit's row renormalised; outputs flushed to zero count as 2**-126
    q = np.maximum(out / out.sum(axis=-1, keepdims=True), 2.0 ** -126)
    with np.errstate(divide="ignore", invalid="ignore"):
        kl = np.sum(np.where(ref > 0, ref * np.log(ref / q), 0), axis=-1)
    floor = np.abs(f64(bf16.from_float32(ref.astype(np.float32))) - ref).max()
    return dict(rows=len(rows), max_dp=np.abs(out - ref).max(), mean_kl=kl.mean(),
                max_kl=kl.max(), max_sum_err=np.abs(out.sum(axis=-1) - 1).max(),
                bf16_floor_dp=floor)


def layernorm_report(items, p):
    errs, rels, ref_all, norm = [], [], [], []
    sat = 0
    for o, r, g, b in items:
        xb, rb = bf16.from_float32(o), bf16.from_float32(r)
        gb, bb = bf16.from_float32(g), bf16.from_float32(b)
        out = f64(layernorm(xb, rb, gb, bb, p))
        h = f64(xb) + f64(rb)
        sat += int(np.sum(np.abs(h) >= 2 ** p.int_bits))
        ref = ((h - h.mean(-1, keepdims=True)) / np.sqrt(h.var(-1, keepdims=True) + p.eps)
               * f64(gb) + f64(bb))
        errs.append(np.abs(out - ref).ravel())
        rels.append((np.abs(out - ref) / np.maximum(np.abs(ref), 1e-30)).ravel())
        ref_all.append(ref.ravel())
        rms = np.sqrt(np.mean(ref * ref, axis=-1, keepdims=True))
        norm.append((np.abs(out - ref) / rms).max())
    err, rel, ref = np.concatenate(errs), np.concatenate(rels), np.concatenate(ref_all)
    big = np.abs(ref) >= 2.0 ** -4
    floor = np.abs(f64(bf16.from_float32(ref.astype(np.float32))) - ref)
    return dict(rows=sum(len(i[0]) for i in items), max_abs=err.max(),
                max_rel_ge_1_16=rel[big].max(), p999_rel=np.quantile(rel[big], 0.999),
                max_err_over_rms=max(norm),
                bf16_floor_rel_ge_1_16=(floor / np.abs(ref))[big].max(),
                saturated_h=sat)


def gelu_report(pre, p):
    xb = bf16.from_float32(pre.ravel())
    out = f64(gelu(xb, p))
    x = f64(xb)
    ref = x * 0.5 * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))
    return dict(elements=x.size, max_abs=np.abs(out - ref).max())


def gelu_grid(p):
    allx = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    allx = allx[(allx & 0x7F80) != 0x7F80]               # finite values only
    x = f64(allx)
    sel = np.abs(x) <= 4
    xs = allx[sel]
    x = x[sel]
    ref = x * 0.5 * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))
    out = f64(gelu(xs, p))
    rb = f64(bf16.from_float32(ref.astype(np.float32)))
    return dict(values=x.size, max_abs=np.abs(out - ref).max(),
                bf16_floor=np.abs(rb - ref).max(),
                differ_from_rne=int(np.sum(out != rb)))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sentences", type=int, default=32)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--preset", default="minilm")
    args = ap.parse_args(argv)
    model = load("minilm")
    sents = read_sentences(DATA)[:args.sentences]
    batch = model.tokenize(sents, warn=False)
    caps = capture(model, batch, min(args.layers, model.config.layers))
    sp, lp, gp = SM_PRESETS[args.preset], LN_PRESETS[args.preset], GELU_PRESETS[args.preset]
    print(f"all-MiniLM-L6-v2, {len(sents)} sentences, max {batch.ids.shape[1]} tokens, "
          f"{len(caps)} layers; preset {args.preset}")

    print("\nsoftmax (attention-score rows, padding masked) vs float softmax of the bf16 scores")
    print(f"{'layer':<7}{'rows':>8}{'max |dp|':>11}{'mean KL':>11}{'max KL':>11}"
          f"{'max|sum-1|':>12}{'bf16 floor':>12}")
    allr, allm = [], []
    for l, c in enumerate(caps):
        L = c["scores"].shape[-1]
        rows, masks = c["scores"].reshape(-1, L), c["smask"].reshape(-1, L)
        nb, nh = c["scores"].shape[:2]
        keep = np.broadcast_to(batch.mask[:, None, :], (nb, nh, L)).ravel()   # real queries
        allr.append(rows[keep])
        allm.append(masks[keep])
        r = softmax_report(rows[keep], masks[keep], sp)
        print(f"{l:<7}{r['rows']:>8}{r['max_dp']:>11.5f}{r['mean_kl']:>11.2e}{r['max_kl']:>11.2e}"
              f"{r['max_sum_err']:>12.5f}{r['bf16_floor_dp']:>12.5f}")
    r = softmax_report(np.concatenate(allr), np.concatenate(allm), sp)
    print(f"{'all':<7}{r['rows']:>8}{r['max_dp']:>11.5f}{r['mean_kl']:>11.2e}{r['max_kl']:>11.2e}"
          f"{r['max_sum_err']:>12.5f}{r['bf16_floor_dp']:>12.5f}")

    print("\nlayernorm (residual add + LN, both per layer, real gamma/beta) vs float LN of the "
          "bf16 inputs")
    print(f"{'layer':<7}{'rows':>8}{'max abs':>10}{'max rel':>10}{'p99.9 rel':>11}"
          f"{'floor rel':>11}{'err/rms':>10}{'sat h':>7}")
    items = []
    for l, c in enumerate(caps):
        items += c["ln"]
        r = layernorm_report(c["ln"], lp)
        print(f"{l:<7}{r['rows']:>8}{r['max_abs']:>10.4f}{r['max_rel_ge_1_16']:>10.5f}"
              f"{r['p999_rel']:>11.5f}{r['bf16_floor_rel_ge_1_16']:>11.5f}"
              f"{r['max_err_over_rms']:>10.5f}{r['saturated_h']:>7}")
    r = layernorm_report(items, lp)
    print(f"{'all':<7}{r['rows']:>8}{r['max_abs']:>10.4f}{r['max_rel_ge_1_16']:>10.5f}"
          f"{r['p999_rel']:>11.5f}{r['bf16_floor_rel_ge_1_16']:>11.5f}"
          f"{r['max_err_over_rms']:>10.5f}{r['saturated_h']:>7}")
    print("  max rel, p99.9 rel = max and 99.9th percentile of |out - ref| / |ref| over outputs "
          "with |ref| >= 1/16\n  (smaller outputs carry the out_frac absolute error: see max "
          "abs);\n  floor rel = max rel of bf16(ref) itself; err/rms = max |out - "
          "ref| / rms(ref row);\n  sat h = elements with |x + r| >= "
          f"2**{lp.int_bits} (saturated)")

    print("\ngelu")
    g = gelu_grid(gp)
    print(f"  every bf16 x in [-4, 4] ({g['values']} values): max |gelu - GELU| = "
          f"{g['max_abs']:.5f} (goal < 0.01; I-BERT i-GELU 0.018); bf16 rounding floor "
          f"{g['bf16_floor']:.5f}; {g['differ_from_rne']} outputs differ from RNE(GELU)")
    pre = np.concatenate([c["pre"].ravel() for c in caps])
    r = gelu_report(pre, gp)
    print(f"  real FFN pre-activations ({r['elements']} values, range "
          f"[{pre.min():.2f}, {pre.max():.2f}]): max |gelu - GELU| = {r['max_abs']:.5f}")


if __name__ == "__main__":
    main()
