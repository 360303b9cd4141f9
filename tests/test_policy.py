"""Precision policy: files, validation, budgets, the knapsack choice, the shipped MiniLM policy."""

import json
import os

import pytest

from sim import bert, quant
from sim import policy as pol

CFG = bert.BertConfig(hidden=384, heads=12, layers=6, intermediate=1536, vocab=30522,
                      max_position=512, type_vocab=2)


def fake_sens(layers=6, hot=()):
    """Synthetic sensitivity: small everywhere, large at the (layer, site) pairs in ``hot``."""
    act = [{s: 1e-3 + (0.05 if (l, s) in hot else 1e-4 * l) for s in quant.SITES}
           for l in range(layers)]
    w = [{lin: {"6": 1e-3 + 1e-5 * l, "4": 1e-3 + (0.2 if lin == "ffn2" else 0.01)}
          for lin in quant.LINEARS} for l in range(layers)]
    return {"base": 1e-3, "high": 5, "low": 3, "act": act, "weights": w}


def test_json_and_toml_roundtrip(tmp_path):
    p = pol.uniform(6, 3, 8)
    p = p.replace_layer(2, p.layer(2).with_act("ffn2", 5).with_weight("o", 6))
    f = tmp_path / "p.json"
    p.save(str(f))
    q = pol.load(str(f))
    assert q == p and q.layer(2).act_bits["ffn2"] == 5 and q.layer(2).weight_bits["o"] == 6
    toml = ["block = 64", "outliers = 2"]
    for lp in p.layers:
        a = ", ".join(f"{k} = {v}" for k, v in lp.act_bits.items())
        w = ", ".join(f"{k} = {v}" for k, v in lp.weight_bits.items())
        toml += ["[[layers]]", f"act_bits = {{{a}}}", f"weight_bits = {{{w}}}"]
    t = tmp_path / "p.toml"
    t.write_text("\n".join(toml) + "\n")
    r = pol.load(str(t))
    assert r.layers == p.layers and (r.block, r.outliers) == (64, 2)


@pytest.mark.parametrize("doc, msg", [
    ({"block": 128}, "needs a 'layers' list"),
    ({"layers": [{"act_bits": {}}]}, "layer 0 needs act_bits"),
    ({"layers": [{"act_bits": dict.fromkeys(quant.SITES, 9),
                  "weight_bits": dict.fromkeys(quant.LINEARS, 8)}]},
     "act_bits.qkv must be an integer in 2..8, not 9"),
    ({"layers": [{"act_bits": dict.fromkeys(quant.SITES, 5),
                  "weight_bits": dict.fromkeys(quant.LINEARS, 3)}]},
     "weight_bits.qkv must be an integer in 4..8, not 3"),
    ({"layers": [{"act_bits": {**dict.fromkeys(quant.SITES, 5), "attn": 3},
                  "weight_bits": dict.fromkeys(quant.LINEARS, 8)}]}, "unknown site 'attn'"),
    ({"layers": []}, "at least one layer"),
    ({"layers": [], "bogus": 1}, "unknown policy key 'bogus'"),
])
def test_bad_policy_files(tmp_path, doc, msg):
    f = tmp_path / "bad.json"
    f.write_text(json.dumps(doc))
    with pytest.raises(pol.PolicyError, match=msg):
        pol.load(str(f))


def test_unreadable_policy_files(tmp_path):
    with pytest.raises(pol.PolicyError, match="does not exist"):
        pol.load(str(tmp_path / "none.json"))
    f = tmp_path / "x.toml"
    f.write_text("layers = [")
    with pytest.raises(pol.PolicyError, match="is not valid TOML"):
        pol.load(str(f))


def test_layer_count_checked():
    with pytest.raises(pol.PolicyError, match="policy has 4 layers, the model has 6"):
        pol.uniform(4, 5).check(CFG)


def test_costs():
    assert pol.act_cost(pol.uniform(6, 3), CFG) == pytest.approx(3.0)
    assert pol.act_cost(pol.uniform(6, 5), CFG) == pytest.approx(5.0)
    assert pol.weight_cost(pol.uniform(6, 5, 6), CFG) == pytest.approx(6.0)
    p = pol.uniform(6, 3)
    p = p.replace_layer(0, p.layer(0).with_act("ffn1", 5))
    macs = quant.site_macs(CFG, 128)
    assert pol.act_cost(p, CFG) == pytest.approx(3 + 2 * macs["ffn1"] / (6 * sum(macs.values())))


def test_choose_spends_budget_on_sensitive_sites():
    hot = {(0, "ffn2"), (5, "qk"), (3, "o")}
    p = pol.choose(fake_sens(hot=hot), CFG, act_budget=3.4)
    for l, s in hot:
        assert p.layer(l).act_bits[s] == 5
    assert pol.act_cost(p, CFG) <= 3.4 + 1e-9
    assert p.meta["act_cost"] <= 3.4
    # no site with a measured gain is left out while it would still fit the budget
    sens = fake_sens(hot=hot)
    for l in range(6):
        for s in quant.SITES:
            if p.layer(l).act_bits[s] == 3 and sens["act"][l][s] > sens["base"]:
                trial = p.replace_layer(l, p.layer(l).with_act(s, 5))
                assert pol.act_cost(trial, CFG) > 3.4, (l, s)


def test_choose_max_loss_picks_cheapest_meeting_target():
    hot = {(0, "ffn2"), (5, "qk"), (3, "o")}
    sens = fake_sens(hot=hot)
    p = pol.choose(sens, CFG, act_budget=5, max_loss=0.02)
    for l, s in hot:
        assert p.layer(l).act_bits[s] == 5
    assert p.meta["predicted_loss"] <= 0.02
    # the three hot sites alone meet the target; nothing else is upgraded
    assert sum(b == 5 for lp in p.layers for b in lp.act) == 3
    full = pol.choose(sens, CFG, act_budget=5)
    assert all(full.layer(l).act_bits[s] == 5 for l in range(6) for s in quant.SITES
               if sens["act"][l][s] > sens["base"])
    assert all(b == 8 for lp in p.layers for b in lp.weights)


def test_choose_lowers_least_sensitive_weights():
    p = pol.choose(fake_sens(), CFG, act_budget=3.0, weight_budget=6.5)
    assert pol.weight_cost(p, CFG) <= 6.5
    # ffn2 at 4 bits is very lossy in the synthetic data: never chosen
    assert all(lp.weight_bits["ffn2"] >= 6 for lp in p.layers)
    assert any(b < 8 for lp in p.layers for b in lp.weights)


def test_choose_rejects_bad_budgets():
    with pytest.raises(pol.PolicyError, match="act_budget must be in 3..5"):
        pol.choose(fake_sens(), CFG, act_budget=6)
    with pytest.raises(pol.PolicyError, match="weight_budget must be in 4..8"):
        pol.choose(fake_sens(), CFG, act_budget=4, weight_budget=3)


def test_shipped_default_policy():
    assert os.path.isfile(pol.DEFAULT_POLICY_FILE)
    p = pol.default_policy(CFG)
    p.check(CFG)
    assert p.meta["hidden"] == 384
    assert set(b for lp in p.layers for b in lp.act) <= {3, 5}
    assert 3 < pol.act_cost(p, CFG) < 5
    # another model shape gets the uniform fallback
    other = bert.BertConfig(hidden=64, heads=4, layers=2, intermediate=128, vocab=10,
                            max_position=16, type_vocab=2)
    assert pol.default_policy(other) == pol.uniform(2, 5, 8)


def test_measure_and_choose_on_tiny_model(tmp_path):
    from test_bert import make_tiny
    m = bert.load(make_tiny(str(tmp_path / "tiny"), layers=2))
    sens = pol.measure(m, ["a short sentence here", "the second one is a bit longer",
                           "third"], weight_steps=(4,))
    assert len(sens["act"]) == 2 and set(sens["act"][0]) == set(quant.SITES)
    assert all(v >= 0 for a in sens["act"] for v in a.values())
    # dropping a site to 3 bits never beats all-5 by much, and some site is sensitive
    assert max(v for a in sens["act"] for v in a.values()) > sens["base"]
    p = pol.choose(sens, m.config, act_budget=4.0)
    p.check(m.config)
    assert pol.act_cost(p, m.config) <= 4.0
