"""Accuracy of a quantized forward against the fp32 reference.

Metrics (docs/model.md, "Evaluation"):

- per layer (embedding output and every encoder layer, real tokens only): mean cosine of the
  token vectors, and SNR ``10 log10(sum ref**2 / sum (x - ref)**2)`` in dB;
- sentence embeddings (masked mean pooling + L2 norm): cosine to the fp32 embedding, mean
  and minimum;
- Spearman rank correlation between the upper triangles of the two pairwise cosine-
  similarity matrices (average ranks for ties);
- retrieval top-1 agreement: the fraction of sentences whose nearest other sentence is the
  same under both.
"""

import numpy as np

from .bert import mean_pool

__all__ = ["cosine_rows", "snr_db", "rankdata", "spearman", "similarity_spearman",
           "top1_agreement", "layer_metrics", "embedding_metrics", "compare"]


def cosine_rows(a, b):
    """Cosine of corresponding rows of ``a`` and ``b`` (…, H) -> (…)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    na = np.linalg.norm(a, axis=-1)
    nb = np.linalg.norm(b, axis=-1)
    return np.sum(a * b, axis=-1) / np.maximum(na * nb, 1e-300)


def snr_db(x, ref):
    """``10 log10(sum ref**2 / sum (x - ref)**2)``; +inf when identical."""
    ref = np.asarray(ref, dtype=np.float64)
    err = np.sum((np.asarray(x, dtype=np.float64) - ref) ** 2)
    sig = np.sum(ref ** 2)
    return float("inf") if err == 0 else float(10 * np.log10(sig / err))


def rankdata(x):
    """Ranks 1..n of a 1-D array, ties given their average rank."""
    x = np.asarray(x)
    order = np.argsort(x, kind="stable")
    xs = x[order]
    # boundaries of runs of equal values
    starts = np.r_[0, np.nonzero(xs[1:] != xs[:-1])[0] + 1]
    ends = np.r_[starts[1:], len(xs)]
    avg = (starts + ends + 1) / 2.0              # mean of 1-based ranks start+1 .. end
    ranks = np.empty(len(x))
    ranks[order] = np.repeat(avg, ends - starts)
    return ranks


def spearman(a, b):
    """Spearman rank correlation of two 1-D arrays."""
    ra, rb = rankdata(a), rankdata(b)
    ra -= ra.mean()
    rb -= rb.mean()
    den = np.sqrt(np.sum(ra * ra) * np.sum(rb * rb))
    return float(np.sum(ra * rb) / den) if den else float("nan")


def similarity_spearman(e, ref):
    """Spearman of the upper triangles of ``e e^T`` and ``ref ref^T`` (embeddings L2-normed)."""
    iu = np.triu_indices(len(e), k=1)
    return spearman((e @ e.T)[iu], (ref @ ref.T)[iu])


def _nearest(e):
    s = np.asarray(e, dtype=np.float64) @ np.asarray(e, dtype=np.float64).T
    np.fill_diagonal(s, -np.inf)
    return np.argmax(s, axis=1)


def top1_agreement(e, ref):
    """Fraction of sentences whose nearest neighbour (by cosine) is the same under both."""
    return float(np.mean(_nearest(e) == _nearest(ref)))


def layer_metrics(hs, hs_ref, mask):
    """Per-layer ``(cosine mean, SNR dB)`` over real tokens; lists of (N, L, H) arrays."""
    sel = np.asarray(mask, dtype=bool)
    out = []
    for h, r in zip(hs, hs_ref):
        out.append({"cosine": float(np.mean(cosine_rows(h[sel], r[sel]))),
                    "snr_db": snr_db(h[sel], r[sel])})
    return out


def embedding_metrics(e, ref):
    """Embedding cosine mean/min, similarity Spearman and top-1 agreement."""
    c = cosine_rows(e, ref)
    return {"cos_mean": float(np.mean(c)), "cos_min": float(np.min(c)),
            "spearman": similarity_spearman(e, ref) if len(e) > 2 else float("nan"),
            "top1": top1_agreement(e, ref) if len(e) > 1 else float("nan")}


_WORK = {}


def _quant_batch(i):
    w = _WORK
    b = w["model"].tokenize(w["sentences"][i:i + w["batch_size"]], warn=False)
    return w["model"].forward_quant(b, w["policy"], w["options"], hidden_states=True)


def compare(model, sentences, policy, options=None, *, batch_size=64, ref=None, workers=1):
    """Run fp32 and the quantized forward on ``sentences``; return all metrics.

    ``ref`` may carry a previous result's ``"_ref"`` entry to skip the fp32 pass (same
    sentences and ``batch_size``). ``workers > 1`` runs the quantized batches in that many
    forked processes (``batch_size`` is then lowered so every worker gets work).
    Returns ``{"layers": [...], **embedding_metrics, "n": N, "_ref": ..., "embedding": ...}``.
    """
    if workers > 1:
        batch_size = min(batch_size, -(-len(sentences) // (2 * workers)))
    starts = list(range(0, len(sentences), batch_size))
    if ref is None or ref.get("batch_size") != batch_size:
        ref = {"hs": [], "emb": [], "batch_size": batch_size}
        for i in starts:
            b = model.tokenize(sentences[i:i + batch_size], warn=False)
            hs = model.forward_fp32(b, hidden_states=True)
            ref["hs"].append((hs, b.mask))
            ref["emb"].append(mean_pool(hs[-1], b.mask))
    _WORK.update(model=model, sentences=sentences, batch_size=batch_size, policy=policy,
                 options=options)
    try:
        if workers > 1:
            import multiprocessing
            with multiprocessing.get_context("fork").Pool(workers) as pool:
                outs = pool.map(_quant_batch, starts)
        else:
            outs = [_quant_batch(i) for i in starts]
    finally:
        _WORK.clear()
    sums = None
    embs = []
    for hs, (hs_ref, mask) in zip(outs, ref["hs"]):
        embs.append(mean_pool(hs[-1], mask))
        part = [(np.sum(cosine_rows(h[mask], r[mask])), int(mask.sum()),
                 np.sum((h[mask].astype(np.float64) - r[mask]) ** 2),
                 np.sum(r[mask].astype(np.float64) ** 2)) for h, r in zip(hs, hs_ref)]
        sums = part if sums is None else [tuple(x + y for x, y in zip(s, p))
                                          for s, p in zip(sums, part)]
    layers = [{"cosine": c / n, "snr_db": float("inf") if err == 0 else
               float(10 * np.log10(sig / err))} for c, n, err, sig in sums]
    e = np.concatenate(embs)
    r = np.concatenate(ref["emb"])
    return {"layers": layers, **embedding_metrics(e, r), "n": len(e), "_ref": ref,
            "embedding": e}
