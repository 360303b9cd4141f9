"""BERT golden model: loader and its errors, fp32 forward vs Hugging Face, CLI, quantized path."""

import json
import math
import os
import shutil

import numpy as np
import pytest

from sim import bert, bf16, evaluate
from sim import policy as pol

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "minilm_hf.npz")


@pytest.fixture(scope="module")
def minilm():
    return bert.load("minilm")


def make_tiny(path, *, hidden=64, heads=4, layers=2, intermediate=128, seed=0, drop=None,
              reshape=None):
    """A random BERT directory (MiniLM's tokenizer, so vocab 30522) for loader/CLI tests."""
    from safetensors.numpy import save_file
    src = bert.model_dir("minilm")
    os.makedirs(path, exist_ok=True)
    shutil.copy(os.path.join(src, "tokenizer.json"), path)
    cfg = {"hidden_size": hidden, "num_attention_heads": heads, "num_hidden_layers": layers,
           "intermediate_size": intermediate, "vocab_size": 30522,
           "max_position_embeddings": 64, "type_vocab_size": 2, "layer_norm_eps": 1e-12,
           "hidden_act": "gelu", "model_type": "bert"}
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(cfg, f)
    rng = np.random.default_rng(seed)
    shapes = bert.expected_shapes(bert.BertConfig.from_hf(cfg))
    t = {}
    for name, shape in shapes.items():
        if name.endswith("LayerNorm.weight"):
            t[name] = (1 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
        else:
            t[name] = (0.08 * rng.standard_normal(shape)).astype(np.float32)
    if drop:
        del t[drop]
    if reshape:
        t[reshape] = t[reshape][..., :-1].copy()
    save_file(t, os.path.join(path, "model.safetensors"))
    return path


# ------------------------------------------------------------------ fp32 vs transformers ----
def test_fp32_matches_transformers_fixture(minilm):
    f = np.load(FIXTURE)
    b = minilm.tokenize([str(s) for s in f["sentences"]])
    assert np.array_equal(b.ids, f["input_ids"]), "tokenizer differs from transformers'"
    assert np.array_equal(b.mask, f["attention_mask"].astype(bool))
    assert np.array_equal(b.type_ids, f["token_type_ids"])
    hs = minilm.forward_fp32(b, hidden_states=True)
    ref = f["hidden_states"]
    assert len(hs) == ref.shape[0] == 7
    assert not b.mask.all(), "fixture must contain padding"
    for l, (h, r) in enumerate(zip(hs, ref)):
        # padded positions are not outputs (masked out of attention and pooling)
        err = np.abs(h - r)[b.mask].max()
        print(f"layer {l}: max abs error {err:.2e}")
        assert err <= 1e-4, f"layer {l}: max abs error {err} > 1e-4"
    emb = bert.mean_pool(hs[-1], b.mask)
    assert np.abs(emb - f["embedding"]).max() <= 1e-5


def test_gelu_erf_against_math_erf():
    x = np.linspace(-10, 10, 4001).astype(np.float32)
    ref = np.array([0.5 * v * (1 + math.erf(v / math.sqrt(2))) for v in x.astype(np.float64)])
    assert np.abs(bert.gelu_erf(x) - ref).max() < 1e-6


def test_mean_pool_ignores_padding():
    rng = np.random.default_rng(3)
    h = rng.standard_normal((2, 5, 8)).astype(np.float32)
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], bool)
    e = bert.mean_pool(h, mask)
    m0 = h[0, :3].mean(0)
    assert np.allclose(e[0], m0 / np.linalg.norm(m0), atol=1e-6)
    h2 = h.copy()
    h2[0, 3:] = 1e6
    assert np.array_equal(bert.mean_pool(h2, mask), e)


# ------------------------------------------------------------------------ tokens ----
def test_truncation_warns_and_keeps_cls_sep(minilm):
    long = " ".join(["word"] * 400)
    with pytest.warns(bert.TruncationWarning, match="more than the model's limit of 256"):
        b = minilm.tokenize([long, "short one"])
    assert b.truncated.tolist() == [True, False]
    assert b.ids.shape[1] == 256
    assert b.ids[0, 0] == 101 and b.ids[0, 255] == 102
    assert b.mask[1].sum() == 4


def test_max_tokens_option(tmp_path):
    m = bert.load("minilm", max_tokens=8)
    with pytest.warns(bert.TruncationWarning):
        b = m.tokenize(["one two three four five six seven eight nine"])
    assert b.ids.shape == (1, 8)
    with pytest.raises(bert.ModelError, match="max_tokens must be an integer in 2..512"):
        bert.load("minilm", max_tokens=1000)


# ------------------------------------------------------------------ loader errors ----
def test_load_any_hf_directory(tmp_path):
    d = make_tiny(str(tmp_path / "tiny"))
    m = bert.load(d)
    assert (m.config.hidden, m.config.heads, m.config.layers) == (64, 4, 2)
    assert m.max_tokens == 64
    e = m.embed(["a first sentence", "and another"])
    assert e.shape == (2, 64)
    assert np.allclose(np.linalg.norm(e, axis=1), 1, atol=1e-5)


def test_load_bert_prefixed_checkpoint(tmp_path):
    from safetensors.numpy import load_file, save_file
    d = make_tiny(str(tmp_path / "tiny"))
    p = os.path.join(d, "model.safetensors")
    t = load_file(p)
    save_file({"bert." + k: v for k, v in t.items()}, p)
    assert bert.load(d).config.layers == 2


def test_error_missing_safetensors(tmp_path):
    d = make_tiny(str(tmp_path / "tiny"))
    os.remove(os.path.join(d, "model.safetensors"))
    with pytest.raises(bert.ModelError, match=r"weight file .*model.safetensors is missing"):
        bert.load(d)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "header"])
def test_error_corrupt_safetensors(tmp_path, damage):
    d = make_tiny(str(tmp_path / "tiny"))
    p = os.path.join(d, "model.safetensors")
    data = open(p, "rb").read()
    if damage == "truncate":
        data = data[:len(data) // 2]
    elif damage == "garbage":
        data = b"\x00" * 64
    else:
        data = data[:8] + b"{not json" + data[17:]
    open(p, "wb").write(data)
    with pytest.raises(bert.ModelError, match="is not a readable safetensors file"):
        bert.load(d)


def test_error_shape_mismatch(tmp_path):
    d = make_tiny(str(tmp_path / "tiny"), reshape="encoder.layer.1.intermediate.dense.weight")
    with pytest.raises(bert.ModelError, match=r"'encoder.layer.1.intermediate.dense.weight' in "
                                              r".* has shape \(128, 63\), but config.json "
                                              r"implies \(128, 64\)"):
        bert.load(d)


def test_error_config_says_more_layers(tmp_path):
    d = make_tiny(str(tmp_path / "tiny"))
    cp = os.path.join(d, "config.json")
    cfg = json.load(open(cp))
    cfg["num_hidden_layers"] = 3
    json.dump(cfg, open(cp, "w"))
    with pytest.raises(bert.ModelError, match="lacks tensor 'encoder.layer.2."):
        bert.load(d)


def test_error_missing_config_and_tokenizer(tmp_path):
    d = make_tiny(str(tmp_path / "tiny"))
    os.remove(os.path.join(d, "tokenizer.json"))
    with pytest.raises(bert.ModelError, match="has no tokenizer.json"):
        bert.load(d)
    os.remove(os.path.join(d, "config.json"))
    with pytest.raises(bert.ModelError, match="has no config.json"):
        bert.load(d)
    with pytest.raises(bert.ModelError, match="neither 'minilm' nor a directory"):
        bert.load(str(tmp_path / "nowhere"))


def test_error_bad_config(tmp_path):
    d = make_tiny(str(tmp_path / "tiny"))
    cp = os.path.join(d, "config.json")
    cfg = json.load(open(cp))
    cfg["num_attention_heads"] = 5
    json.dump(cfg, open(cp, "w"))
    with pytest.raises(bert.ModelError, match="hidden_size 64 is not a multiple of "
                                              "num_attention_heads 5"):
        bert.load(d)
    open(cp, "w").write("{")
    with pytest.raises(bert.ModelError, match="is not valid JSON"):
        bert.load(d)


def test_error_empty_input(tmp_path):
    p = tmp_path / "empty.txt"
    p.write_text("\n  \n")
    with pytest.raises(bert.ModelError, match="has no sentences"):
        bert.read_sentences(str(p))
    with pytest.raises(bert.ModelError, match="does not exist"):
        bert.read_sentences(str(tmp_path / "missing.txt"))


# ---------------------------------------------------------------------------- CLI ----
def test_cli_embed_fp32_and_errors(tmp_path, capsys, minilm):
    from gen.cli import main
    inp = tmp_path / "in.txt"
    inp.write_text("The cat sat on the mat.\n\nA dog barked at the postman.\n")
    out = tmp_path / "e.npy"
    assert main(["embed", "--model", "minilm", "--precision", "fp32", "--input", str(inp),
                 "--output", str(out)]) == 0
    e = np.load(out)
    assert e.shape == (2, 384) and e.dtype == np.float32
    assert np.allclose(e, minilm.embed(["The cat sat on the mat.",
                                        "A dog barked at the postman."]))
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    assert main(["embed", "--input", str(empty), "--output", str(out)]) == 2
    assert "has no sentences" in capsys.readouterr().err
    d = make_tiny(str(tmp_path / "tiny"))
    os.remove(os.path.join(d, "model.safetensors"))
    assert main(["embed", "--model", d, "--input", str(inp), "--output", str(out)]) == 2
    assert "model.safetensors is missing" in capsys.readouterr().err


def test_cli_embed_truncation_warning(tmp_path, capsys):
    from gen.cli import main
    inp = tmp_path / "in.txt"
    inp.write_text("one two three four five six seven eight nine ten\n")
    out = tmp_path / "e.npy"
    assert main(["embed", "--max-tokens", "6", "--input", str(inp), "--output", str(out)]) == 0
    err = capsys.readouterr().err
    assert "xbarllm: warning:" in err and "truncated" in err


# ---------------------------------------------------------------------- quantized ----
SENT = ["The cuts will take effect this financial year.",
        "Several such videos are now being reviewed.",
        "Life expectancy has been reduced to 40 years.",
        "Police said the man was arrested at his home in the city's north overnight.",
        "Hi."]


def test_quant_batch_invariant_and_close(minilm):
    """A sentence's quantized output is the same alone or in a padded batch, bit for bit."""
    p = pol.default_policy(minilm.config)
    b = minilm.tokenize(SENT)
    hs = minilm.forward_quant(b, p, hidden_states=True)
    for i in (1, 4):
        bi = minilm.tokenize([SENT[i]])
        hi = minilm.forward_quant(bi, p)
        n = bi.mask.sum()
        assert np.array_equal(hi[0, :n], hs[-1][i, :n])
    assert np.all(hs[-1][~b.mask] == 0)
    # every value is an exact bf16
    v = hs[-1][b.mask]
    assert np.array_equal(bf16.to_float32(bf16.from_float32(v)), v)
    ref = minilm.forward_fp32(b, hidden_states=True)
    lm = evaluate.layer_metrics(hs, ref, b.mask)
    assert lm[0]["snr_db"] > 45          # the embedding output is only rounded to bf16
    for l, m in enumerate(lm[1:], 1):
        assert m["cosine"] > 0.97, (l, m)
    e = bert.mean_pool(hs[-1], b.mask)
    c = evaluate.cosine_rows(e, bert.mean_pool(ref[-1], b.mask))
    assert c.mean() > 0.985 and c.min() > 0.97, c


def test_quant_layer_is_the_unit_chain(minilm):
    """Layer 0 of the quantized forward equals the unit golden models chained by hand."""
    import dataclasses
    from sim import crossbar, gelu, layernorm, mixed_array, mxop, quant, softmax
    p = pol.default_policy(minilm.config)
    b = minilm.tokenize([SENT[0]])
    hs = minilm.forward_quant(b, p, hidden_states=True)
    lw = minilm.prepared(p)[0]
    lp = p.layer(0)
    cfg = minilm.config
    f = {s: mxop.MXOPFormat(block=p.block, outliers=p.outliers, bits=lp.act_bits[s])
         for s in quant.SITES}
    x = bf16.from_float32(hs[0][0])
    L, H, nh, dh = x.shape[0], cfg.hidden, cfg.heads, cfg.d_head

    def lin(t, ql, fmt):
        xp = dataclasses.replace(crossbar.DEFAULT, weight_bits=ql.bits)
        return crossbar.linear(t, ql.w, ql.scale, ql.bias, fmt, xp)

    qkv = lin(x, lw.qkv, f["qkv"])
    ctx = np.zeros((L, H), np.uint16)
    lp = -(-L // p.block) * p.block  # P encoded in blocks of B: PV padded with zeros to B
    for h in range(nh):
        sl = slice(h * dh, (h + 1) * dh)
        s = mixed_array.qk(qkv[:, sl], qkv[:, H:][:, sl], f["qk"], mixed_array.DEFAULT)
        pr = np.zeros((L, lp), np.uint16)
        pr[:, :L] = softmax.softmax(s, None, softmax.DEFAULT)
        v = np.zeros((lp, dh), np.uint16)
        v[:L] = qkv[:, 2 * H:][:, sl]
        ctx[:, sl] = mixed_array.pv(pr, v, f["pv"], mixed_array.DEFAULT)
    lnp = dataclasses.replace(layernorm.DEFAULT, dim=H, eps=cfg.eps)
    x1 = layernorm.layernorm(lin(ctx, lw.o, f["o"]), x, lw.ln1[0], lw.ln1[1], lnp)
    g = gelu.gelu(lin(x1, lw.ffn1, f["ffn1"]), gelu.DEFAULT)
    y = layernorm.layernorm(lin(g, lw.ffn2, f["ffn2"]), x1, lw.ln2[0], lw.ln2[1], lnp)
    assert np.array_equal(bf16.to_float32(y), hs[1][0])


def test_quant_noise_is_seeded_and_off_by_default(tmp_path):
    """Conductance noise passes through to the crossbar: seeded, and off unless asked for."""
    import dataclasses
    from sim import crossbar
    m = bert.load(make_tiny(str(tmp_path / "tiny")))      # small: the noisy path emulates
    p = pol.uniform(2, 5, 8)                              # every pulse, slice and ADC read
    b = m.tokenize(SENT[:2])
    base = m.forward_quant(b, p)
    quiet = m.forward_quant(b, p, bert.QuantOptions(crossbar=crossbar.DEFAULT))
    assert np.array_equal(base, quiet)
    noisy = [m.forward_quant(b, p, bert.QuantOptions(
        crossbar=dataclasses.replace(crossbar.DEFAULT, noise=0.2, seed=s))) for s in (1, 1, 2)]
    assert np.array_equal(noisy[0], noisy[1])
    assert not np.array_equal(noisy[0], noisy[2])
    assert not np.array_equal(noisy[0], base)


def test_cli_embed_quant(tmp_path, minilm):
    from gen.cli import main
    inp = tmp_path / "in.txt"
    inp.write_text("\n".join(SENT[:3]) + "\n")
    out = tmp_path / "q.npy"
    assert main(["embed", "--precision", "quant", "--input", str(inp), "--output", str(out)]) == 0
    e = np.load(out)
    assert e.shape == (3, 384) and e.dtype == np.float32
    assert np.allclose(np.linalg.norm(e, axis=1), 1, atol=1e-5)
    assert evaluate.cosine_rows(e, minilm.embed(SENT[:3])).min() > 0.98


def test_cli_eval_and_policy_on_tiny_model(tmp_path, capsys):
    from gen.cli import main
    d = make_tiny(str(tmp_path / "tiny"))
    inp = tmp_path / "in.txt"
    inp.write_text("\n".join(SENT) + "\n")
    js = tmp_path / "r.json"
    assert main(["eval", "--model", d, "--input", str(inp), "--json", str(js)]) == 0
    out = capsys.readouterr().out
    assert "Spearman" in out and "all-3-bit" in out and "policy, k=0" in out
    r = json.load(open(js))["runs"]
    assert set(r) == {"policy", "all-5-bit", "all-3-bit", "policy, k=0"}
    assert len(r["policy"]["layers"]) == 3
    # a model that is not MiniLM-shaped gets the all-5-bit policy
    assert r["policy"]["cos_mean"] == r["all-5-bit"]["cos_mean"]
    assert r["all-3-bit"]["cos_mean"] < r["all-5-bit"]["cos_mean"] <= 1
    pf = tmp_path / "p.json"
    assert main(["policy", "--model", d, "--calibration", str(inp), "--act-budget", "4",
                 "--output", str(pf)]) == 0
    p = pol.load(str(pf))
    assert len(p.layers) == 2 and pol.act_cost(p, bert.load(d).config) <= 4
    assert main(["eval", "--model", d, "--input", str(inp), "--policy", str(pf),
                 "--no-baselines"]) == 0
    assert main(["eval", "--model", "minilm", "--input", str(inp), "--policy", str(pf)]) == 2
    assert "policy has 2 layers, the model has 6" in capsys.readouterr().err


# ----------------------------------------------------------------------- metrics ----
def test_metrics_against_direct_definitions():
    x = np.array([3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0, 6.0])
    assert evaluate.rankdata(x).tolist() == [4, 1.5, 5, 1.5, 6, 8, 3, 7]
    y = np.array([2.0, 7.0, 1.0, 8.0, 2.0, 8.0, 1.0, 8.0])
    rx, ry = evaluate.rankdata(x), evaluate.rankdata(y)
    assert evaluate.spearman(x, y) == pytest.approx(np.corrcoef(rx, ry)[0, 1])
    assert evaluate.spearman(x, x ** 3) == pytest.approx(1.0)
    assert evaluate.spearman(x, -x) == pytest.approx(-1.0)
    rng = np.random.default_rng(0)
    e = rng.standard_normal((6, 5))
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    assert evaluate.top1_agreement(e, e) == 1.0
    assert evaluate.similarity_spearman(e, e) == pytest.approx(1.0)
    swapped = e[[1, 0, 2, 3, 4, 5]]
    nn = [int(np.argmax(np.where(np.eye(6, dtype=bool), -9, e @ e.T)[i])) for i in range(6)]
    nn2 = [int(np.argmax(np.where(np.eye(6, dtype=bool), -9, swapped @ swapped.T)[i]))
           for i in range(6)]
    assert evaluate.top1_agreement(swapped, e) == np.mean(np.array(nn) == np.array(nn2))
    assert evaluate.snr_db(np.array([1.0, 2.0]), np.array([1.0, 2.0])) == float("inf")
    assert evaluate.snr_db(np.array([1.1, 2.0]), np.array([1.0, 2.0])) == pytest.approx(
        10 * np.log10(5 / 0.01))


def test_compare_with_workers_matches_serial(tmp_path):
    m = bert.load(make_tiny(str(tmp_path / "tiny")))
    p = pol.uniform(2, 3, 8)
    a = evaluate.compare(m, SENT, p, batch_size=2)
    b = evaluate.compare(m, SENT, p, workers=2)
    assert np.array_equal(a["embedding"], b["embedding"])
    for la, lb in zip(a["layers"], b["layers"]):
        assert la["cosine"] == pytest.approx(lb["cosine"])
        assert la["snr_db"] == pytest.approx(lb["snr_db"])
    assert a["spearman"] == b["spearman"] and a["cos_min"] == b["cos_min"]


def test_quant_sentence_longer_than_block():
    """L > B: the PV reduction spans two blocks (padded with zeros to 256)."""
    m = bert.load("minilm", max_tokens=132)
    text = " ".join(bert.read_sentences(os.path.join(os.path.dirname(bert.__file__), "data",
                                                     "lee_sentences.txt"))[:6])
    with pytest.warns(bert.TruncationWarning):
        b = m.tokenize([text])
    assert b.mask.sum() == 132
    p = pol.default_policy(m.config)
    e = bert.mean_pool(m.forward_quant(b, p), b.mask)
    ref = bert.mean_pool(m.forward_fp32(b), b.mask)
    assert evaluate.cosine_rows(e, ref)[0] > 0.98


def test_default_policy_accuracy_on_lee_sentences(minilm):
    """The issue's accuracy bar: all shipped Lee sentences, default policy vs fp32."""
    sents = bert.read_sentences(os.path.join(os.path.dirname(bert.__file__), "data",
                                             "lee_sentences.txt"))
    assert len(sents) >= 100
    r = evaluate.compare(minilm, sents, pol.default_policy(minilm.config), workers=2)
    print(f"{len(sents)} sentences: cosine mean {r['cos_mean']:.5f} min {r['cos_min']:.5f}, "
          f"Spearman {r['spearman']:.5f}")
    assert r["cos_mean"] >= 0.99 and r["spearman"] >= 0.98
