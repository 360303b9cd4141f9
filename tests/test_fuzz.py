"""Fuzzing of every user input (hypothesis): CLI arguments, ``--set``, model files, policies.

Each entry point gets ``FUZZ_EXAMPLES`` generated cases (default 1000; the environment
variable overrides it): every outcome is success or a clear one-line error (``ModelError``,
``PolicyError``, ``UsageError``; exit 2 with one ``xbarllm ...: error: ...`` line from the
CLI), never a traceback. Everything runs in-process: the CLI's expensive work (Verilog
generation, synthesis, proofs, model passes) is replaced by recorders, so what is fuzzed is
the parsing and validation in front of it.
"""

import json
import math
import os
import string
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from gen import build, cli
from hw.common import units
from sim import bert, params as sim_params, policy as pol
from sim.quant import LINEARS, SITES

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", 1000))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
UNITS = units()

# ------------------------------------------------------------------ shared strategies ----

NUMBERS = st.one_of(
    st.integers(-2**70, 2**70).map(str),
    st.integers(-4, 40).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["0x10", "0b101", "1_000", "nan", "-inf", "1e400", "", " ", "-0",
                     "True", "false", "3.", ".5", "1,2,3", ",", "٣", "0o7", "9" * 5000]))
TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=24)


def _param_names():
    return sorted({f for u in UNITS.values() for f in sim_params.params_to_dict(
        next(iter(u.presets.values())))})


SET_ITEMS = st.one_of(
    st.builds(lambda k, v: f"{k}={v}", st.sampled_from(_param_names()), NUMBERS),
    st.builds(lambda k, v: f"{k}={v}", TEXT, TEXT),
    TEXT)


# ------------------------------------------------------------------ --set / parse_value --

@FUZZ
@given(unit=st.one_of(st.sampled_from(sorted(UNITS)), TEXT),
       preset=st.one_of(st.sampled_from(["tiny", "minilm", "bert-base", "bert-large"]), TEXT),
       sets=st.lists(SET_ITEMS, max_size=4))
def test_fuzz_set_resolve(unit, preset, sets):
    """``gen.build.resolve`` (the ``--set`` path): params or a one-line ``UsageError``."""
    try:
        entry, params = build.resolve(unit, preset, sets)
    except build.UsageError as e:
        assert str(e) and "\n" not in str(e)
        return
    assert isinstance(params, entry.params)


@FUZZ
@given(unit=st.sampled_from(sorted(UNITS)), key=st.one_of(st.sampled_from(_param_names()), TEXT),
       text=st.one_of(NUMBERS, TEXT))
def test_fuzz_parse_value(unit, key, text):
    """``sim.params.parse_value``: a value of the field's type or a one-line ``ValueError``."""
    cls = UNITS[unit].params
    try:
        v = sim_params.parse_value(cls, key, text)
    except ValueError as e:
        assert str(e) and "\n" not in str(e)
        return
    default = {f: d for f, d in sim_params.params_to_dict(cls()).items()}[key]
    assert type(v) is type(default)


# ------------------------------------------------------------------ the CLI --------------

class _Recorded(Exception):
    """Stands for the expensive work a valid command line reaches."""


@pytest.fixture
def sandbox(tmp_path, monkeypatch):
    """A working directory with a few files, and the CLI's heavy calls replaced."""
    (tmp_path / "dir").mkdir()
    (tmp_path / "sentences.txt").write_text("a first sentence\nand a second one\n")
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "binary.bin").write_bytes(bytes(range(256)))
    pol.uniform(2, 5).save(str(tmp_path / "policy.json"))
    (tmp_path / "bad.toml").write_text("layers = [1, 2\n")
    monkeypatch.chdir(tmp_path)
    model = _tiny_model(tmp_path / "model")

    def work(*a, **k):
        raise _Recorded

    import gen.cli_model as cm
    import gen.demo
    import gen.formal
    import gen.synth
    from sim import evaluate
    monkeypatch.setattr(cli, "generate", work)
    monkeypatch.setattr(gen.synth, "synth_report", work)
    monkeypatch.setattr(gen.demo, "run_demo", work)
    monkeypatch.setattr(gen.formal, "prove", work)
    monkeypatch.setattr(evaluate, "compare", work)
    monkeypatch.setattr(pol, "measure", work)
    monkeypatch.setattr(bert.Bert, "embed", work)
    real_load = bert.load
    monkeypatch.setattr(bert, "load", lambda name, **k: real_load(
        str(model) if name == "minilm" else name, **k))
    monkeypatch.setattr(build, "verilator_env", work)
    return tmp_path


def _commands():
    ap = cli._parser()
    sub = next(a for a in ap._actions if a.dest == "cmd")
    return {name: sorted(o for a in p._actions for o in a.option_strings)
            for name, p in sub.choices.items()}


COMMANDS = _commands()
PATHS = st.sampled_from(["dir", "sentences.txt", "empty.txt", "binary.bin", "policy.json",
                         "bad.toml", "missing.json", "missing/x.npy", "/dev/null", ".", "",
                         "out.npy", "model", "model/config.json"])
UNIT_NAMES = st.sampled_from(sorted(UNITS) + ["nope", ""])


@st.composite
def argvs(draw):
    cmd = draw(st.one_of(st.sampled_from(sorted(COMMANDS)), TEXT))
    argv = [cmd]
    opts = COMMANDS.get(cmd, ["--help"])
    for _ in range(draw(st.integers(0, 6))):
        kind = draw(st.integers(0, 9))
        if kind < 5:
            argv.append(draw(st.sampled_from(opts)))
            argv.append(draw(st.one_of(NUMBERS, PATHS, UNIT_NAMES, SET_ITEMS)))
        elif kind < 7:
            argv.append(draw(st.one_of(UNIT_NAMES, PATHS)))
        elif kind < 8:
            argv.append(draw(st.sampled_from(opts)))
        else:
            argv.append(draw(st.one_of(TEXT, NUMBERS)))
    return argv


def test_fuzz_cli(sandbox, capsys):
    """``xbarllm`` with generated argument lists: exit 0/1/2, a failure is one line."""
    seen = {0: 0, 1: 0, 2: 0, "work": 0}

    @FUZZ
    @given(argv=argvs())
    def run(argv):
        try:
            code = cli.main(argv)
        except SystemExit as e:       # argparse: --help (0) or a usage error (2)
            code = e.code
        except _Recorded:
            seen["work"] += 1
            capsys.readouterr()
            return
        out, err = capsys.readouterr()
        assert "Traceback" not in err + out
        assert code in (0, 1, 2), (argv, code)
        seen[code] += 1
        if code == 2:
            lines = err.strip("\n").splitlines()
            assert len(lines) == 1 and lines[0].startswith("xbarllm") and ": error: " in lines[0], (
                argv, err)

    run()
    # the generator reaches both sides: valid command lines and rejected ones
    assert seen["work"] > 0 and seen[2] > 0, seen


# ------------------------------------------------------------------ model files ----------

def _tiny_model(path, *, vocab=40, hidden=8, heads=2, layers=1, intermediate=16):
    """A BERT directory small enough to load a thousand times: word-piece tokenizer with
    ``vocab`` tokens, random weights."""
    from safetensors.numpy import save_file
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    path.mkdir(parents=True, exist_ok=True)
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"] + list(string.ascii_lowercase)
    words += [f"##{c}" for c in "aeiost"][:vocab - len(words)]
    tok = Tokenizer(models.WordPiece({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer()
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.save(str(path / "tokenizer.json"))
    cfg = {"hidden_size": hidden, "num_attention_heads": heads, "num_hidden_layers": layers,
           "intermediate_size": intermediate, "vocab_size": len(words),
           "max_position_embeddings": 32, "type_vocab_size": 2, "hidden_act": "gelu"}
    (path / "config.json").write_text(json.dumps(cfg))
    rng = np.random.default_rng(0)
    save_file({k: (0.1 * rng.standard_normal(s)).astype(np.float32)
               for k, s in bert.expected_shapes(bert.BertConfig.from_hf(cfg)).items()},
              str(path / "model.safetensors"))
    return path


@pytest.fixture(scope="module")
def model_files(tmp_path_factory):
    path = _tiny_model(tmp_path_factory.mktemp("fuzz") / "model")
    return path, {f: (path / f).read_bytes() for f in
                  ("config.json", "model.safetensors", "tokenizer.json")}


def _load_or_model_error(path):
    try:
        bert.load(str(path))
    except bert.ModelError as e:
        assert str(e) and "\n" not in str(e).strip(), str(e)


def _restore(path, files):
    for f, data in files.items():
        (path / f).write_bytes(data)
    (path / "sentence_bert_config.json").unlink(missing_ok=True)


JSON_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-2**66, 2**66),
              st.floats(allow_nan=True, allow_infinity=True), TEXT),
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(TEXT, inner, max_size=3)), max_leaves=8)
CONFIG_KEYS = ["hidden_size", "num_attention_heads", "num_hidden_layers", "intermediate_size",
               "vocab_size", "max_position_embeddings", "type_vocab_size", "layer_norm_eps",
               "hidden_act", "position_embedding_type"]


@st.composite
def config_texts(draw, original):
    """config.json: the real one with keys changed, dropped or retyped; or any JSON; or bytes."""
    kind = draw(st.integers(0, 9))
    if kind < 7:
        d = json.loads(original)
        for _ in range(draw(st.integers(1, 3))):
            key = draw(st.sampled_from(CONFIG_KEYS))
            if draw(st.booleans()):
                d[key] = draw(JSON_VALUES)
            else:
                d.pop(key, None)
        return json.dumps(d).encode()
    if kind < 9:
        return json.dumps(draw(JSON_VALUES)).encode()
    return draw(st.binary(max_size=64))


@st.composite
def sentence_bert_texts(draw):
    return json.dumps(draw(st.one_of(
        st.fixed_dictionaries({"max_seq_length": JSON_VALUES}), JSON_VALUES))).encode()


def test_fuzz_config_json(model_files):
    path, files = model_files

    @FUZZ
    @given(data=st.data())
    def run(data):
        _restore(path, files)
        (path / "config.json").write_bytes(data.draw(config_texts(files["config.json"])))
        if data.draw(st.booleans()):
            (path / "sentence_bert_config.json").write_bytes(data.draw(sentence_bert_texts()))
        _load_or_model_error(path)

    run()


@st.composite
def safetensors_bytes(draw, original):
    """The real file with its header edited, bytes flipped, cut or extended; or junk."""
    kind = draw(st.integers(0, 5))
    data = bytearray(original)
    n = struct.unpack("<Q", original[:8])[0]
    if kind == 0:                           # header JSON edited
        header = json.loads(original[8:8 + n])
        name = draw(st.sampled_from(sorted(header)))
        if name != "__metadata__":
            field = draw(st.sampled_from(["dtype", "shape", "data_offsets"]))
            header[name][field] = draw(st.one_of(
                JSON_VALUES, st.sampled_from(["F16", "BF16", "F64", "I32", "U8", "BOOL"]),
                st.lists(st.integers(-3, 2**40), max_size=3)))
        text = json.dumps(header).encode()
        return struct.pack("<Q", len(text)) + text + bytes(original[8 + n:])
    if kind == 1:                           # header length word
        return struct.pack("<Q", draw(st.integers(0, 2**64 - 1))) + bytes(original[8:])
    if kind == 2:                           # random byte flips anywhere
        for _ in range(draw(st.integers(1, 8))):
            i = draw(st.integers(0, len(data) - 1))
            data[i] = draw(st.integers(0, 255))
        return bytes(data)
    if kind == 3:                           # cut short
        return bytes(data[:draw(st.integers(0, len(data) - 1))])
    if kind == 4:                           # trailing junk
        return bytes(data) + draw(st.binary(min_size=1, max_size=32))
    return draw(st.binary(max_size=64))


def test_fuzz_safetensors(model_files):
    path, files = model_files

    @FUZZ
    @given(data=st.data())
    def run(data):
        _restore(path, files)
        (path / "model.safetensors").write_bytes(
            data.draw(safetensors_bytes(files["model.safetensors"])))
        _load_or_model_error(path)

    run()


@st.composite
def tokenizer_texts(draw, original):
    """tokenizer.json with a part replaced by other JSON, cut short, or junk."""
    kind = draw(st.integers(0, 3))
    if kind < 2:
        d = json.loads(original)
        part = draw(st.sampled_from(["model", "normalizer", "pre_tokenizer", "post_processor",
                                     "decoder", "added_tokens", "truncation", "padding",
                                     "version"]))
        if kind == 0:
            d[part] = draw(JSON_VALUES)
        elif isinstance(d.get("model"), dict):
            key = draw(st.sampled_from(["type", "vocab", "unk_token",
                                        "continuing_subword_prefix", "max_input_chars_per_word"]))
            d["model"][key] = draw(JSON_VALUES)
        return json.dumps(d).encode()
    if kind == 2:
        return original[:draw(st.integers(0, len(original) - 1))]
    return draw(st.binary(max_size=64))


def test_fuzz_tokenizer_json(model_files):
    path, files = model_files

    @FUZZ
    @given(data=st.data())
    def run(data):
        _restore(path, files)
        (path / "tokenizer.json").write_bytes(
            data.draw(tokenizer_texts(files["tokenizer.json"])))
        _load_or_model_error(path)

    run()


# ------------------------------------------------------------------ policy files ---------

BITS = st.one_of(st.integers(-2, 10), JSON_VALUES)


@st.composite
def policy_dicts(draw):
    """A policy dict near the valid shape: layers of act/weight bits, some keys off."""
    def layer():
        act = {s: draw(BITS) for s in SITES if draw(st.integers(0, 9))}
        wts = {s: draw(BITS) for s in LINEARS if draw(st.integers(0, 9))}
        if not draw(st.integers(0, 5)):
            act[draw(TEXT)] = draw(BITS)
        d = {"act_bits": act, "weight_bits": wts}
        if not draw(st.integers(0, 5)):
            d = draw(st.one_of(JSON_VALUES, st.just({"act_bits": act})))
        return d

    d = {"layers": [layer() for _ in range(draw(st.integers(0, 3)))]}
    for key in ("block", "outliers", "meta"):
        if draw(st.booleans()):
            d[key] = draw(st.one_of(st.integers(-4, 2000), JSON_VALUES))
    if not draw(st.integers(0, 7)):
        d[draw(TEXT)] = draw(JSON_VALUES)
    if not draw(st.integers(0, 7)):
        return draw(JSON_VALUES)
    return d


def _toml(v, key=None):
    """A small TOML writer for the generated dicts (tomllib reads, never writes)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return repr(v) if math.isfinite(v) else ("nan" if v != v else ("inf" if v > 0 else "-inf"))
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {_toml(x)}" for k, x in v.items()) + "}"
    return '""'


def test_fuzz_policy(tmp_path):
    @FUZZ
    @given(d=policy_dicts(), fmt=st.sampled_from(["json", "toml", "raw"]),
           raw=st.binary(max_size=48))
    def run(d, fmt, raw):
        path = tmp_path / f"p.{'toml' if fmt == 'toml' else 'json'}"
        if fmt == "json":
            path.write_text(json.dumps(d))
        elif fmt == "toml":
            body = d if isinstance(d, dict) else {"layers": d}
            path.write_text("\n".join(f"{json.dumps(k)} = {_toml(v)}" for k, v in body.items()
                                      if v is not None))
        else:
            path.write_bytes(raw)
        try:
            p = pol.load(str(path))
        except pol.PolicyError as e:
            assert str(e) and "\n" not in str(e).strip()
            return
        assert p.layers and all(2 <= b <= 8 for lp in p.layers for b in lp.act)

    run()


# ------------------------------------------------------------------ found by fuzzing ------

@pytest.mark.parametrize("text, message", [
    ("null", "must hold a JSON object, not NoneType"),
    ('{"max_seq_length": "128"}', "max_seq_length must be an integer >= 2, not '128'"),
    ("[1]", "must hold a JSON object, not list"),
    ("{", "is not valid JSON"),
])
def test_sentence_bert_config_errors(model_files, text, message):
    path, files = model_files
    _restore(path, files)
    (path / "sentence_bert_config.json").write_text(text)
    with pytest.raises(bert.ModelError, match=message):
        bert.load(str(path))
    _restore(path, files)


def test_config_eps_error(model_files):
    path, files = model_files
    d = json.loads(files["config.json"])
    (path / "config.json").write_text(json.dumps({**d, "layer_norm_eps": "x"}))
    with pytest.raises(bert.ModelError, match=r"layer_norm_eps must be a number in \(0, 1\)"):
        bert.load(str(path))
    _restore(path, files)


def test_lint_of_a_missing_path_is_one_line(capsys):
    assert cli.main(["lint", "no/such/folder"]) == 2
    assert capsys.readouterr().err == (
        "xbarllm: error: no/such/folder does not exist (give a folder of .v files or a .v "
        "file)\n")


def test_set_of_an_object_field_is_one_line(capsys):
    assert cli.main(["gen", "crossbar", "--set", "faults=0", "--out", "x"]) == 2
    assert capsys.readouterr().err == (
        "xbarllm: error: faults cannot be set with --set (it takes a Python object)\n")


def test_control_characters_in_arguments_stay_on_one_line(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["list", "a\r\nb"])
    assert e.value.code == 2 and capsys.readouterr().err == (
        "xbarllm: error: unrecognized arguments: a\\r\\nb (see xbarllm -h)\n")
