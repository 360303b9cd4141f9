"""Offline weight preparation and one quantized encoder layer from the unit golden models.

Weights (docs/model.md, "Weights"):

- Every linear layer ``y = x W^T + b`` (Hugging Face stores ``W`` as [out, in]) becomes a
  crossbar operand ``w_int`` of shape (K = in, N = out): signed ``bits``-bit integers in
  ``[-(2**(bits-1) - 1), 2**(bits-1) - 1]`` (symmetric, -2**(bits-1) unused) with one bf16
  scale per output channel. The scale is ``max|W[:, j]| / qmax`` rounded *up* to bf16, so no
  weight saturates; ``w_int = RNE(W / scale)``. A column of zeros gets scale 0.
- ``1/sqrt(d_head)`` is folded into Wq and bq (in fp32, before quantization), so the
  attention scores leave the mixed array already scaled.
- Q, K and V share the layer input, so they are one crossbar operand (K = H, N = 3H).
- Biases and layernorm gamma/beta are rounded to bf16 (RNE).

The layer (``layer``) follows the encoder dataflow of docs/model.md ("Quantized encoder"), every step a unit golden model:
``crossbar.linear`` (QKV, O, FFN1, FFN2), ``mixed_array.qk`` / ``pv`` (per sentence, all
heads at once, at the sentence's own length), ``softmax.softmax``, ``layernorm.layernorm``
(``LN(x + r)``), ``gelu.gelu``. Every matmul input activation is MX-OP quantized inside those
units with the format the policy gives for that site.
"""

import dataclasses
from dataclasses import dataclass

import numpy as np

from . import bf16, crossbar, gelu, layernorm, mixed_array, mxop, softmax

__all__ = ["SITES", "LINEARS", "KV_BITS", "QLinear", "LayerWeights", "quantize_weight",
           "prepare", "layer", "site_macs", "tile_map", "pv_length"]

SITES = ("qkv", "qk", "pv", "o", "ffn1", "ffn2")
"""Matmul input activations of a layer: x into QKV, Q into QK^T, P into PV, the attention
context into O, x1 into FFN1, GELU output into FFN2."""

LINEARS = ("qkv", "o", "ffn1", "ffn2")
"""The crossbar (weight-stationary) layers; each has its own weight bits."""

KV_BITS = mixed_array.DEFAULT.weight_bits
"""MX-INT width of K and V (the mixed array's stationary operands) unless a policy says
otherwise: the width the array is built for."""


@dataclass(frozen=True)
class QLinear:
    """A prepared linear layer: ``w`` int8 (K, N), ``scale`` and ``bias`` bf16 (N,)."""

    w: np.ndarray
    scale: np.ndarray
    bias: np.ndarray
    bits: int

    def dequantized(self):
        """float32 (K, N) weights ``w * scale`` (for reports and tests)."""
        return (self.w.astype(np.float32) * bf16.to_float32(self.scale)[None, :])


@dataclass(frozen=True)
class LayerWeights:
    qkv: QLinear
    o: QLinear
    ffn1: QLinear
    ffn2: QLinear
    ln1: tuple      # (gamma, beta) bf16 (H,)
    ln2: tuple


def _bf16_ceil(v):
    """Smallest bf16 >= v for finite v >= 0 (as uint16 patterns)."""
    v = np.asarray(v, dtype=np.float32)
    s = bf16.from_float32(v)
    below = bf16.to_float32(s) < v
    return np.where(below, s + 1, s).astype(np.uint16)


def quantize_weight(w_out_in, bits, *, multiplier=1.0):
    """Per-output-channel symmetric ``bits``-bit quantization of a [out, in] float matrix.

    Returns ``(w_int (in, out) int8, scale (out,) bf16)``; ``multiplier`` is applied in
    float32 first (the 1/sqrt(d_head) fold).
    """
    if not isinstance(bits, int) or not 2 <= bits <= 8:
        raise ValueError(f"weight bits must be an integer in 2..8, not {bits!r}")
    w = (np.asarray(w_out_in, dtype=np.float32) * np.float32(multiplier)).T     # (K, N)
    qmax = (1 << (bits - 1)) - 1
    amax = np.abs(w).max(axis=0)
    scale = _bf16_ceil(amax / np.float32(qmax))
    s = bf16.to_float32(scale)
    q = np.rint(np.divide(w, s[None, :], out=np.zeros_like(w), where=s[None, :] > 0))
    return np.clip(q, -qmax, qmax).astype(np.int8), scale


def _qlinear(w, b, bits, multiplier=1.0):
    wi, sc = quantize_weight(w, bits, multiplier=multiplier)
    bias = bf16.from_float32(np.asarray(b, dtype=np.float32) * np.float32(multiplier))
    return QLinear(wi, sc, bias, bits)


def prepare(model, policy):
    """Offline weights of every layer of ``model`` (a ``sim.bert.Bert``) for ``policy``."""
    c, W = model.config, model.weights
    fold = 1.0 / np.sqrt(c.d_head)
    out = []
    for l in range(c.layers):
        p = f"encoder.layer.{l}."
        wb = policy.layer(l).weight_bits
        a = p + "attention.self."
        wqkv = np.concatenate([W[a + "query.weight"] * np.float32(fold), W[a + "key.weight"],
                               W[a + "value.weight"]])
        bqkv = np.concatenate([W[a + "query.bias"] * np.float32(fold), W[a + "key.bias"],
                               W[a + "value.bias"]])

        def ln(name):
            return (bf16.from_float32(W[p + name + ".weight"]),
                    bf16.from_float32(W[p + name + ".bias"]))

        out.append(LayerWeights(
            qkv=_qlinear(wqkv, bqkv, wb["qkv"]),
            o=_qlinear(W[p + "attention.output.dense.weight"],
                       W[p + "attention.output.dense.bias"], wb["o"]),
            ffn1=_qlinear(W[p + "intermediate.dense.weight"], W[p + "intermediate.dense.bias"],
                          wb["ffn1"]),
            ffn2=_qlinear(W[p + "output.dense.weight"], W[p + "output.dense.bias"], wb["ffn2"]),
            ln1=ln("attention.output.LayerNorm"),
            ln2=ln("output.LayerNorm")))
    return out


def site_macs(config, length=128):
    """Multiply-accumulates per token of each site (QK^T and PV for a sequence of ``length``)."""
    h, i = config.hidden, config.intermediate
    return {"qkv": 3 * h * h, "qk": length * h, "pv": length * h, "o": h * h,
            "ffn1": h * i, "ffn2": i * h}


def tile_map(config, policy, params):
    """Crossbar mapping of every linear layer: bits, slices, (row tiles, column groups)."""
    h, i = config.hidden, config.intermediate
    shapes = {"qkv": (h, 3 * h), "o": (h, h), "ffn1": (h, i), "ffn2": (i, h)}
    rows = []
    for l in range(config.layers):
        wb = policy.layer(l).weight_bits
        for name, (k, n) in shapes.items():
            p = dataclasses.replace(params, weight_bits=wb[name])
            rt, cg = crossbar.tiles_needed(k, n, p)
            rows.append({"layer": l, "linear": name, "K": k, "N": n, "bits": wb[name],
                         "slices": p.slices, "row_tiles": rt, "col_groups": cg,
                         "tiles": rt * cg, "cells": k * n * p.slices})
    return rows


def _linear(x, ql, fmt, opts, where):
    """``crossbar.linear`` at the layer's weight bits. With conductance noise, every
    (layer, linear) array gets its own seed derived from the given one, so each programmed
    array has its own fixed variation, the same for every batch."""
    p = dataclasses.replace(opts.crossbar, weight_bits=ql.bits)
    if p.noise or p.faults is not None:
        layer_idx, name = where
        p = dataclasses.replace(p, seed=(p.seed * 1000003 + 8 * layer_idx
                                         + LINEARS.index(name)) % (1 << 32))
    w = ql.w
    if p.faults is not None:
        # stuck cells act on the stored weights (exact); only drift needs the cell-level path
        w, _ = p.faults.weights(w, p)
        if not p.faults.drift:
            p = dataclasses.replace(p, faults=None)
    return crossbar.linear(x, w, ql.scale, ql.bias, fmt, p)


def _array_params(params, fmts, length, kv_bits):
    """Mixed-array params: the given ones, or DEFAULT widened to what the formats need."""
    if params is not None:
        return params
    d = mixed_array.DEFAULT
    block = max(d.block, max(f.block for f in fmts))
    return dataclasses.replace(
        d, block=block, outliers=max(d.outliers, max(f.outliers for f in fmts)),
        bits=max(d.bits, max(f.bits for f in fmts)), weight_bits=max(d.weight_bits, kv_bits),
        max_blocks=max(d.max_blocks, -(-length // min(f.block for f in fmts))))


def pv_length(length, block):
    """Length of P's rows and V's columns in PV: ``length`` padded with zeros to a multiple
    of the MX-OP block ``block`` (P is encoded in blocks of B, docs/model.md)."""
    return -(-int(length) // block) * block


def _attention(q, k, v, lengths, fmt, opts, config, kv_bits):
    """Context of every token: q, k, v (N, L, H) bf16 -> (N, L, H) bf16 (0 at padding).

    Each sentence runs at its own length L, one ``qk``/``pv`` per head (what the hardware
    sees); the softmax rows of all heads go through ``softmax`` in one call (rows are
    independent). P is MX-OP encoded in blocks of B whatever L is: P's columns and V's rows
    are padded with zeros to a multiple of B (``pv_length``), so P's format does not depend
    on the sentence length, which the hardware learns only at run time. Zero probabilities
    and zero values change no sum and no shared exponent, and become outliers only when a
    block holds fewer than k nonzero elements (ties go to the lower index, so real elements
    come first); the hardware ends a block at its last real element.
    """
    n, L, h = q.shape
    nh, dh = config.heads, config.d_head
    ctx = np.zeros_like(q)
    for i in range(n):
        ln = int(lengths[i])
        lp = pv_length(ln, fmt["pv"].block)
        ap = _array_params(opts.mixed_array, (fmt["qk"], fmt["pv"]), lp, kv_bits)
        heads = [slice(hd * dh, (hd + 1) * dh) for hd in range(nh)]
        s = np.stack([mixed_array.qk(q[i, :ln, sl], k[i, :ln, sl], fmt["qk"], ap,
                                     kv_bits=kv_bits) for sl in heads])
        pr = np.zeros((nh, ln, lp), dtype=np.uint16)
        pr[..., :ln] = softmax.softmax(s, None, opts.softmax)       # all heads' rows at once
        vp = np.zeros((lp, h), dtype=np.uint16)
        vp[:ln] = v[i, :ln]
        for hd, sl in enumerate(heads):
            ctx[i, :ln, sl] = mixed_array.pv(pr[hd], vp[:, sl], fmt["pv"], ap, kv_bits=kv_bits)
    return ctx


def layer(lw, x, mask, lp, opts, config, *, block, outliers, kv_bits=KV_BITS, index=0):
    """One quantized encoder layer: x (N, L, H) bf16 patterns -> (N, L, H) bf16 (0 at pads).

    ``lp`` is the layer's ``sim.policy.LayerPolicy`` (inlier bits per site, weight bits per
    linear); ``block`` and ``outliers`` the MX-OP B and k; ``kv_bits`` the MX-INT width of K
    and V; ``opts`` resolved ``QuantOptions``; ``index`` the layer's number (seeds its
    crossbar noise).
    """
    n, L, h = x.shape
    fmt = {s: mxop.MXOPFormat(block=block, outliers=outliers, bits=lp.act_bits[s])
           for s in SITES}
    sel = np.asarray(mask, dtype=bool)
    lengths = sel.sum(axis=1)
    xv = x[sel]                                                    # (M, H) real tokens
    qkv = _linear(xv, lw.qkv, fmt["qkv"], opts, (index, "qkv"))
    full = np.zeros((n, L, 3 * h), dtype=np.uint16)
    full[sel] = qkv
    ctx = _attention(full[..., :h], full[..., h:2 * h], full[..., 2 * h:], lengths, fmt,
                     opts, config, kv_bits)[sel]
    lnp = dataclasses.replace(opts.layernorm, dim=h, eps=config.eps)
    o = _linear(ctx, lw.o, fmt["o"], opts, (index, "o"))
    x1 = layernorm.layernorm(o, xv, lw.ln1[0], lw.ln1[1], lnp)
    hmid = gelu.gelu(_linear(x1, lw.ffn1, fmt["ffn1"], opts, (index, "ffn1")), opts.gelu)
    f = _linear(hmid, lw.ffn2, fmt["ffn2"], opts, (index, "ffn2"))
    y = layernorm.layernorm(f, x1, lw.ln2[0], lw.ln2[1], lnp)
    out = np.zeros_like(x)
    out[sel] = y
    return out
