"""Time the quantized MiniLM golden model on 100 real sentences, all 6 layers.

    python scripts/bench_bert.py [--sentences 100] [--max-tokens 128] [--workers 2]

Sentences come from sim/data/lee_sentences.txt (Lee news corpus, see scripts/make_sentences.py),
truncated to ``--max-tokens`` (with a warning if any is longer). The quantized forward (default
policy, exact ADC) runs in ``--workers`` processes, each on a share of the sentences balanced
by token count; the wall time of the whole quantized pass is printed, with the fp32 pass and
the embedding cosine to it for reference. Target: <= 60 s on 2 cores.
"""

import argparse
import multiprocessing
import os
import sys
import time

# one BLAS thread per worker process: the workers already use the cores, and spinning BLAS
# threads on a shared machine slow everything down
for _v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import numpy as np  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_MODEL = None


def _run(args):
    sentences, policy = args
    t = time.perf_counter()
    b = _MODEL.tokenize(sentences, warn=False)
    from sim.bert import mean_pool
    e = mean_pool(_MODEL.forward_quant(b, policy), b.mask)
    return e, time.perf_counter() - t


def split(sentences, lengths, parts):
    """Split into `parts` shares of about equal token count (sentence order kept in each)."""
    load = [0] * parts
    idx = [[] for _ in range(parts)]
    for i in np.argsort(-np.asarray(lengths), kind="stable"):
        j = int(np.argmin(load))
        idx[j].append(int(i))
        load[j] += int(lengths[i])
    return [sorted(x) for x in idx if x]


def main():
    global _MODEL
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--input", default=os.path.join(ROOT, "sim", "data", "lee_sentences.txt"))
    ap.add_argument("--sentences", type=int, default=100)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--policy", help="policy file (default: the shipped MiniLM policy)")
    args = ap.parse_args()

    from sim import bert, policy as pol
    _MODEL = bert.load("minilm", max_tokens=args.max_tokens)
    sentences = bert.read_sentences(args.input)[:args.sentences]
    b = _MODEL.tokenize(sentences)
    lengths = b.mask.sum(axis=1)
    p = pol.load(args.policy) if args.policy else pol.default_policy(_MODEL.config)
    _MODEL.prepared(p)                                   # offline weight preparation
    print(f"{len(sentences)} sentences, {int(lengths.sum())} tokens, "
          f"{int(lengths.min())}..{int(lengths.max())} per sentence (limit {args.max_tokens}); "
          f"{_MODEL.config.layers} layers; {os.cpu_count()} CPUs, {args.workers} workers")

    t = time.perf_counter()
    ref = bert.mean_pool(_MODEL.forward_fp32(b), b.mask)
    t_fp32 = time.perf_counter() - t

    parts = split(sentences, lengths, max(1, args.workers))
    jobs = [([sentences[i] for i in part], p) for part in parts]
    t = time.perf_counter()
    if len(jobs) > 1:
        with multiprocessing.get_context("fork").Pool(len(jobs)) as pool:
            res = pool.map(_run, jobs)
    else:
        res = [_run(jobs[0])]
    wall = time.perf_counter() - t
    emb = np.zeros_like(ref)
    for part, (e, _) in zip(parts, res):
        emb[part] = e
    cos = np.sum(emb * ref, axis=1)
    print(f"fp32 forward:      {t_fp32:7.2f} s")
    print(f"quantized forward: {wall:7.2f} s wall "
          f"(worker times {', '.join(f'{dt:.1f}' for _, dt in res)} s); "
          f"{1000 * wall / len(sentences):.0f} ms/sentence")
    print(f"embedding cosine vs fp32: mean {cos.mean():.5f}, min {cos.min():.5f}")
    print(f"target <= 60 s: {'met' if wall <= 60 else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
