"""Per-layer precision policy: inlier bits n per matmul input, weight bits per linear layer.

A policy (OPAL's mixed precision, Edge-LLM's layer-wise compression) gives, for every encoder
layer, the MX-OP inlier width ``n`` of each matmul input (``sim.quant.SITES``: ``qkv``, ``qk``,
``pv``, ``o``, ``ffn1``, ``ffn2``; n in {3, 5} when chosen by ``choose``, any 2..8 when written
by hand) and the weight width of each crossbar layer (``sim.quant.LINEARS``; 4..8), plus the
MX-OP block ``B`` and outliers ``k`` shared by all sites and the width ``kv_bits`` of the
MX-INT K and V (the stationary operands of QK^T and PV; default ``KV_BITS``).

It is chosen from measured sensitivity (``measure``): starting from the all-5-bit, 8-bit-weight
model, each site in turn is dropped to 3 bits (each linear to fewer weight bits) and the loss
``mean(1 - cos(embedding, fp32 embedding))`` over calibration sentences is recorded. ``choose``
then picks the sites to raise from 3 to 5 bits that remove the most loss (losses taken as
additive) within the activation budget (MAC-weighted mean inlier bits), an exact 0/1 knapsack,
and lowers weights where the loss per saved bit is smallest until the weight budget (parameter-
weighted mean weight bits) is met.

Files are JSON (``save``) or TOML (read by ``load`` when the name ends in ``.toml``)::

    block = 128
    outliers = 4
    kv_bits = 6
    [[layers]]
    act_bits = {qkv = 5, qk = 3, pv = 3, o = 3, ffn1 = 5, ffn2 = 5}
    weight_bits = {qkv = 8, o = 8, ffn1 = 8, ffn2 = 8}
"""

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field

import numpy as np

from .bert import mean_pool
from .quant import KV_BITS, LINEARS, SITES, site_macs

__all__ = ["LayerPolicy", "Policy", "PolicyError", "uniform", "load", "default_policy",
           "DEFAULT_POLICY_FILE", "measure", "choose", "act_cost", "weight_cost", "KV_BITS"]

DEFAULT_POLICY_FILE = os.path.join(os.path.dirname(__file__), "policies", "minilm.json")


class PolicyError(ValueError):
    """A policy that is malformed or does not fit the model."""


def _check_bits(what, v, lo, hi):
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
        raise PolicyError(f"{what} must be an integer in {lo}..{hi}, not {v!r}")


@dataclass(frozen=True, kw_only=True)
class LayerPolicy:
    """Bits of one layer: ``act`` per ``SITES`` entry, ``weights`` per ``LINEARS`` entry."""

    act: tuple
    weights: tuple

    def __post_init__(self):
        if len(self.act) != len(SITES) or len(self.weights) != len(LINEARS):
            raise PolicyError(f"a layer needs {len(SITES)} activation and {len(LINEARS)} "
                              f"weight widths, not {len(self.act)} and {len(self.weights)}")
        for s, v in zip(SITES, self.act):
            _check_bits(f"act_bits.{s}", v, 2, 8)
        for s, v in zip(LINEARS, self.weights):
            _check_bits(f"weight_bits.{s}", v, 4, 8)

    @property
    def act_bits(self):
        return dict(zip(SITES, self.act))

    @property
    def weight_bits(self):
        return dict(zip(LINEARS, self.weights))

    def with_act(self, site, bits):
        a = list(self.act)
        a[SITES.index(site)] = bits
        return dataclasses.replace(self, act=tuple(a))

    def with_weight(self, lin, bits):
        w = list(self.weights)
        w[LINEARS.index(lin)] = bits
        return dataclasses.replace(self, weights=tuple(w))


@dataclass(frozen=True, kw_only=True)
class Policy:
    """A precision policy: one ``LayerPolicy`` per encoder layer, MX-OP ``block``/``outliers``,
    and ``kv_bits``, the MX-INT width of K and V."""

    layers: tuple
    block: int = 128
    outliers: int = 4
    kv_bits: int = KV_BITS
    meta: dict = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self):
        if not self.layers:
            raise PolicyError("a policy needs at least one layer")
        _check_bits("block", self.block, 2, 1024)
        _check_bits("outliers", self.outliers, 0, 16)
        _check_bits("kv_bits", self.kv_bits, 2, 8)

    @property
    def weight_bits(self):
        """Weight widths of all layers (a hashable key for prepared weights)."""
        return tuple(lp.weights for lp in self.layers)

    def layer(self, l):
        return self.layers[l]

    def check(self, config):
        if len(self.layers) != config.layers:
            raise PolicyError(f"policy has {len(self.layers)} layers, the model has "
                              f"{config.layers}")

    def replace_layer(self, l, lp):
        layers = list(self.layers)
        layers[l] = lp
        return dataclasses.replace(self, layers=tuple(layers), meta={})

    def with_format(self, *, block=None, outliers=None, kv_bits=None):
        return dataclasses.replace(self, block=self.block if block is None else block,
                                   outliers=self.outliers if outliers is None else outliers,
                                   kv_bits=self.kv_bits if kv_bits is None else kv_bits)

    def to_dict(self):
        d = {"block": self.block, "outliers": self.outliers, "kv_bits": self.kv_bits,
             "layers": [{"act_bits": lp.act_bits, "weight_bits": lp.weight_bits}
                        for lp in self.layers]}
        if self.meta:
            d["meta"] = self.meta
        return d

    @classmethod
    def from_dict(cls, d):
        if not isinstance(d, dict) or "layers" not in d or not isinstance(d["layers"], list):
            raise PolicyError("a policy needs a 'layers' list")
        unknown = set(d) - {"block", "outliers", "kv_bits", "layers", "meta"}
        if unknown:
            raise PolicyError(f"unknown policy key {sorted(unknown)[0]!r}")
        layers = []
        for i, ld in enumerate(d["layers"]):
            try:
                a, w = ld["act_bits"], ld["weight_bits"]
                extra = (set(a) - set(SITES)) | (set(w) - set(LINEARS))
                if extra:
                    raise PolicyError(f"layer {i}: unknown site {sorted(extra)[0]!r}")
                layers.append(LayerPolicy(act=tuple(a[s] for s in SITES),
                                          weights=tuple(w[s] for s in LINEARS)))
            except (KeyError, TypeError) as e:
                raise PolicyError(f"layer {i} needs act_bits {{{', '.join(SITES)}}} and "
                                  f"weight_bits {{{', '.join(LINEARS)}}} ({e!r} missing)") from None
        return cls(layers=tuple(layers), block=d.get("block", 128),
                   outliers=d.get("outliers", 4), kv_bits=d.get("kv_bits", KV_BITS),
                   meta=d.get("meta", {}))

    def save(self, path):
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, indent=1)
            f.write("\n")

    def summary(self):
        """Mean inlier bits per site and weight bits per linear, as short text."""
        lines = []
        for l, lp in enumerate(self.layers):
            a = " ".join(f"{s}={b}" for s, b in lp.act_bits.items())
            w = " ".join(f"{s}={b}" for s, b in lp.weight_bits.items())
            lines.append(f"layer {l}: n[{a}]  w[{w}]")
        return "\n".join(lines)


def uniform(n_layers, act_bits, weight_bits=8, *, block=128, outliers=4, kv_bits=KV_BITS):
    """Every site at ``act_bits`` inlier bits and every linear at ``weight_bits``."""
    lp = LayerPolicy(act=(act_bits,) * len(SITES), weights=(weight_bits,) * len(LINEARS))
    return Policy(layers=(lp,) * n_layers, block=block, outliers=outliers, kv_bits=kv_bits)


def load(path):
    """Read a policy file: JSON, or TOML when ``path`` ends in ``.toml``."""
    if not os.path.isfile(path):
        raise PolicyError(f"policy file {path} does not exist")
    try:
        if path.endswith(".toml"):
            import tomllib
            with open(path, "rb") as f:
                d = tomllib.load(f)
        else:
            with open(path, encoding="utf-8") as f:
                d = json.load(f)
    except (ValueError, UnicodeDecodeError) as e:
        raise PolicyError(f"policy file {path} is not valid "
                          f"{'TOML' if path.endswith('.toml') else 'JSON'}: {e}") from None
    try:
        return Policy.from_dict(d)
    except PolicyError as e:
        raise PolicyError(f"policy file {path}: {e}") from None


def default_policy(config):
    """The shipped MiniLM policy when ``config`` is MiniLM-shaped, else all-5-bit, 8-bit weights."""
    p = load(DEFAULT_POLICY_FILE)
    if len(p.layers) == config.layers and p.meta.get("hidden") == config.hidden:
        return p
    return uniform(config.layers, 5, 8)


# -- cost ---------------------------------------------------------------------------------
def act_cost(policy, config, length=128):
    """MAC-weighted mean inlier bits (QK^T and PV counted at sequence ``length``)."""
    macs = site_macs(config, length)
    tot = sum(macs.values()) * len(policy.layers)
    return sum(macs[s] * b for lp in policy.layers for s, b in lp.act_bits.items()) / tot


def weight_cost(policy, config):
    """Parameter-weighted mean weight bits."""
    h, i = config.hidden, config.intermediate
    size = {"qkv": 3 * h * h, "o": h * h, "ffn1": h * i, "ffn2": i * h}
    tot = sum(size.values()) * len(policy.layers)
    return sum(size[s] * b for lp in policy.layers for s, b in lp.weight_bits.items()) / tot


# -- sensitivity and choice ------------------------------------------------------------------
def _loss(model, batch, ref, policy, options, start=0, x=None):
    e = mean_pool(model.forward_quant(batch, policy, options, start=start, x=x), batch.mask)
    return float(np.mean(1.0 - np.sum(e * ref, axis=1)))


def measure(model, sentences, *, options=None, high=5, low=3, weight_steps=(),
            block=128, outliers=4, progress=None):
    """Sensitivity of every site (and linear, for each of ``weight_steps``), end to end.

    Returns a dict: ``base`` (loss of all-``high`` with 8-bit weights), ``act[l][site]`` (loss
    with that one site at ``low`` bits), ``weights[l][lin][str(bits)]`` (loss with that one
    linear at ``bits``). Loss is ``mean(1 - cos)`` of the embeddings against fp32. Layers
    before the changed one are shared with the base run, so each measurement resumes from
    the base run's input of that layer.
    """
    batch = model.tokenize(sentences, warn=False)
    ref = mean_pool(model.forward_fp32(batch), batch.mask)
    cfg = model.config
    base_pol = uniform(cfg.layers, high, 8, block=block, outliers=outliers)
    hs = model.forward_quant(batch, base_pol, options, hidden_states=True)
    base = float(np.mean(1.0 - np.sum(mean_pool(hs[-1], batch.mask) * ref, axis=1)))
    out = {"base": base, "high": high, "low": low, "act": [], "weights": []}
    for l in range(cfg.layers):
        lp = base_pol.layer(l)
        a = {}
        for s in SITES:
            a[s] = _loss(model, batch, ref, base_pol.replace_layer(l, lp.with_act(s, low)),
                         options, l, hs[l])
            if progress:
                progress(f"layer {l} {s}@{low}: loss {a[s]:.3e}")
        w = {}
        for lin in LINEARS:
            w[lin] = {}
            for b in weight_steps:
                w[lin][str(b)] = _loss(model, batch, ref,
                                       base_pol.replace_layer(l, lp.with_weight(lin, b)),
                                       options, l, hs[l])
                if progress:
                    progress(f"layer {l} w_{lin}@{b}: loss {w[lin][str(b)]:.3e}")
        out["act"].append(a)
        out["weights"].append(w)
    return out


def choose(sens, config, *, act_budget, weight_budget=8.0, max_loss=None, block=128,
           outliers=4, length=128):
    """Policy from measured sensitivity under the two budgets (see module docstring).

    ``act_budget``: largest MAC-weighted mean inlier bits (between ``low`` and ``high``);
    ``weight_budget``: largest parameter-weighted mean weight bits (4..8); ``max_loss``: if
    given, the cheapest activation choice within the budget whose predicted loss (``base`` plus
    the losses of the sites left at ``low``) is at most ``max_loss``.
    """
    high, low = sens["high"], sens["low"]
    if not low <= act_budget <= high:
        raise PolicyError(f"act_budget must be in {low}..{high}, not {act_budget!r}")
    if not 4 <= weight_budget <= 8:
        raise PolicyError(f"weight_budget must be in 4..8, not {weight_budget!r}")
    n = config.layers
    pol = uniform(n, low, 8, block=block, outliers=outliers)
    macs = site_macs(config, length)
    # 0/1 knapsack over (layer, site) upgrades: maximise the loss removed (additive model)
    # with MAC-weighted extra bits within the budget; costs in units of the MACs' gcd
    items = [(l, s) for l in range(n) for s in SITES]
    unit = math.gcd(*macs.values())
    total = sum(macs.values()) * n
    if total // unit > 20000:
        unit = -(-total // 20000)
    cost = [-(-macs[s] // unit) for _, s in items]
    cap = int(math.floor((act_budget - low) / (high - low) * total / unit + 1e-9))
    gain = [max(sens["act"][l][s] - sens["base"], 0.0) for l, s in items]
    best = np.full(cap + 1, 0.0)
    take = np.zeros((len(items), cap + 1), dtype=bool)
    for i, (c, g) in enumerate(zip(cost, gain)):
        if c <= cap:
            cand = np.full(cap + 1, -1.0)
            cand[c:] = best[:cap + 1 - c] + g
            take[i] = cand > best
            best = np.maximum(best, cand)
    c = cap
    if max_loss is not None:
        pred = sens["base"] + sum(gain) - best
        ok = np.nonzero(pred <= max_loss)[0]
        c = int(ok[0]) if len(ok) else cap
    for i in range(len(items) - 1, -1, -1):
        if take[i, c]:
            l, s = items[i]
            pol = pol.replace_layer(l, pol.layer(l).with_act(s, high))
            c -= cost[i]
    # weight reductions: cheapest loss per saved parameter-bit first, one step at a time
    h, i = config.hidden, config.intermediate
    size = {"qkv": 3 * h * h, "o": h * h, "ffn1": h * i, "ffn2": i * h}
    while weight_cost(pol, config) > weight_budget + 1e-9:
        best = None
        for l in range(n):
            for lin in LINEARS:
                cur = pol.layer(l).weight_bits[lin]
                steps = sorted((int(b) for b in sens["weights"][l][lin] if int(b) < cur),
                               reverse=True)
                if not steps:
                    continue
                b = steps[0]
                prev = sens["base"] if cur == 8 else sens["weights"][l][lin][str(cur)]
                cost = max(sens["weights"][l][lin][str(b)] - prev, 0.0) / (size[lin] * (cur - b))
                if best is None or cost < best[0]:
                    best = (cost, l, lin, b)
        if best is None:
            raise PolicyError(f"weight_budget {weight_budget} cannot be met with the measured "
                              f"weight widths")
        _, l, lin, b = best
        pol = pol.replace_layer(l, pol.layer(l).with_weight(lin, b))
    meta = {"act_budget": act_budget, "weight_budget": weight_budget, "max_loss": max_loss,
            "predicted_loss": sens["base"] + sum(
                sens["act"][l][s] - sens["base"] for l, lp in enumerate(pol.layers)
                for s, b in lp.act_bits.items() if b == low),
            "act_cost": round(act_cost(pol, config, length), 4),
            "weight_cost": round(weight_cost(pol, config), 4), "hidden": config.hidden,
            "sensitivity": sens}
    return dataclasses.replace(pol, meta=meta)
