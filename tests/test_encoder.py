"""encoder: golden model, parameters, programmed state, and the cocotb regressions.

The regressions run the whole accelerator on Verilator: random weights and sentences at
``tiny`` (random stalls on every stream, lengths 1..max_len, several sentences back to back),
and real all-MiniLM-L6-v2 layers on real sentences. Every output token is compared with
``sim.encoder.encoder`` (``sim.quant.layer``, the golden model of ``xbarllm embed --precision
quant``); the counters are compared with ``sim.encoder.model``.
"""

import dataclasses
import os

import numpy as np
import pytest

from sim import bf16, quant
from sim.encoder import (BOUNDS, PRESETS, EncoderParams, encoder, from_policy, hex_words,
                         memory_image, model, program_beats, program_memories, quant_options,
                         random_weights)

# ---------------------------------------------------------------- stimulus (shared) ----


def random_tokens(rng, n, hidden):
    """bf16 hidden vectors like an embedding layernorm's output: N(0, 1) times a spread of
    per-token scales, with a few large components."""
    x = rng.standard_normal((n, hidden)).astype(np.float32)
    x *= np.exp2(rng.uniform(-1, 1, (n, 1))).astype(np.float32)
    spikes = rng.random((n, hidden)) < 0.02
    x = np.where(spikes, x * 8, x)
    return bf16.from_float32(x)


def random_sentences(rng, p, n):
    """``n`` sentence jobs: (tokens, first layer, layer count), lengths 1..max_len."""
    out = []
    for s in range(n):
        length = int(rng.integers(1, p.max_len + 1)) if s else p.max_len
        first = int(rng.integers(0, p.layers))
        count = int(rng.integers(1, p.layers - first + 1))
        out.append((random_tokens(rng, length, p.hidden), first, count))
    return out


# ---------------------------------------------------------------- golden / params -------


def test_golden_is_quant_layer_per_layer():
    """``encoder`` runs ``sim.quant.layer`` (the golden of ``xbarllm embed --precision quant``)
    layer after layer, from any first layer, on the sentence alone."""
    p = PRESETS["tiny"]
    rng = np.random.default_rng(0)
    w = random_weights(p, rng)
    x = random_tokens(rng, 7, p.hidden)
    y = encoder(w, x, p)
    opts = quant_options(p)
    h = x[None]
    for l in range(p.layers):
        h = quant.layer(w[l], h, np.ones((1, 7), bool), p.policy.layer(l), opts, p,
                        block=p.block, outliers=p.outliers, index=l)
        assert np.array_equal(y[l], h[0])
    assert np.array_equal(encoder(w, y[0], p, first=1, count=1)[0], y[1])


def test_golden_minilm_preset_is_the_shipped_policy():
    from sim import policy
    p = PRESETS["minilm"]
    pol = policy.load(policy.DEFAULT_POLICY_FILE)
    assert p.policy.layers == pol.layers and (p.block, p.outliers) == (pol.block, pol.outliers)
    assert from_policy(dataclasses.replace(p, act_bits=(3,) * 36), pol) == p


@pytest.mark.parametrize("field, value, message", [
    ("hidden", 66, r"hidden must be a multiple of heads=4, not 66"),
    ("heads", 0, r"heads must be an integer in 1\.\.64, not 0"),
    ("max_len", 0, r"max_len must be an integer in 1\.\.1024, not 0"),
    ("block", 12, r"block must be a power of two in 4\.\.1024, not 12"),
    ("lanes", 3, r"lanes must be a power of two in 1\.\.8, not 3"),
    ("lanes", 32, r"lanes must be a power of two in 1\.\.8, not 32"),
    ("width", 3, r"width must be a power of two in 1\.\.64, not 3"),
    ("act_bits", (5,) * 11, r"act_bits must be a tuple of layers \* 6 = 12 integers"),
    ("act_bits", (5,) * 11 + (9,), r"act_bits\[11\] must be an integer in 2\.\.8, not 9"),
    ("weight_bits", (8,) * 7 + (3,), r"weight_bits\[7\] must be an integer in 4\.\.8, not 3"),
    ("rows", 32, r"rows must be a power of two in 64\.\.256, not 32"),
    ("eps", -1.0, r"eps must be a float in \[0, 1\), not -1\.0"),
    ("outliers", 8, r"outliers must be below min\(block, d_head\) = 8, not 8"),
])
def test_params_rejects_bad_values(field, value, message):
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(PRESETS["tiny"], **{field: value})


def test_params_keyword_only_and_presets():
    with pytest.raises(TypeError):
        EncoderParams(64)
    assert set(PRESETS) == {"tiny", "minilm", "bert-base", "bert-large"}
    assert (PRESETS["minilm"].hidden, PRESETS["minilm"].heads, PRESETS["minilm"].layers) == \
        (384, 12, 6)


def test_program_beats_rebuild_the_memory_image():
    """Writing every programming beat into empty memories gives ``memory_image``."""
    p = PRESETS["tiny"]
    w = random_weights(p, np.random.default_rng(1))
    img = memory_image(w, p)
    mems = program_memories(p)
    got = {name: {} for name in mems}
    from sim.encoder import PROGRAM
    for sel, addr, data in zip(*program_beats(w, p)):
        got[PROGRAM[sel]][addr] = data
    for name, m in mems.items():
        assert len(got[name]) == m["depth"]
        for a in range(m["depth"]):
            assert got[name][a] == int.from_bytes(img[name][a].tobytes(), "little")
    text = hex_words(img["ln"], 32)
    assert text.splitlines()[0] == f"{int.from_bytes(img['ln'][0].tobytes(), 'little'):08x}"


def test_model_uses_the_units_own_figures():
    """The cycle model's crossbar figures are the controllers' own, the mixed array's
    latency the array's."""
    from sim import crossbar_ctrl
    from sim.encoder import xbar_params
    p = PRESETS["tiny"]
    m = model(p, [(5, 0, 2)])
    xb = [crossbar_ctrl.counters(xbar_params(p, lin, l), 5, act_bits=p.bits(l, lin))
          for l in range(2) for lin in quant.LINEARS]
    assert m["busy_crossbar"] == sum(c["cycles"] for c in xb)
    for name in crossbar_ctrl.COUNTERS[1:]:
        assert m[name] == sum(c[name] for c in xb), name
    assert m["tokens"] == 10 and m["sentences"] == 1
    from hw.mixed_array import latency
    from sim.encoder import array_latency
    for name in PRESETS:
        ap = PRESETS[name].mixed_array
        for blocks in range(1, ap.max_blocks + 1):
            assert array_latency(ap, blocks) == latency(ap, blocks), name
    assert m["softmax_elems"] == 2 * p.heads * 5 * 6          # rows of 6 keys (3 lane pairs)


def test_model_programs_each_layer_once():
    """A layer's first run programs its bank of tiles; later runs keep the weights."""
    from sim.encoder import xbar_params
    p = PRESETS["tiny"]
    one = model(p, [(5, 0, 2)])
    two = model(p, [(5, 0, 2), (7, 0, 2)])
    again = {k: two[k] - one[k] for k in two}
    assert again == model(p, [(7, 0, 2)], loaded=True)
    assert again["cell_writes"] == again["verify_reads"] == 0
    rows = sum(xbar_params(p, lin, l).tiles_needed * p.rows
               for l in range(2) for lin in quant.LINEARS)
    assert one["verify_reads"] == rows and one["cell_writes"] == rows * p.cols
    assert model(p, [(5, 1, 1), (5, 0, 2)])["verify_reads"] == rows
    assert {xbar_params(p, lin, 0).banks for lin in quant.LINEARS} == {2}


def test_model_events_equal_the_chip_model():
    """Where the encoder's counters and the chip model's events (``sim.chip.events``) count
    the same thing, they agree: every crossbar controller event of every linear, the
    layernorm and GELU elements, the softmax elements and the mixed array's outlier products
    (at lengths that fill the lane groups)."""
    from sim import chip
    from sim.encoder import layer_counts, xbar_counters
    p = PRESETS["minilm"]
    cfg = chip.chip_config("minilm")
    for length in (32, 128):
        ev = chip.events(cfg, length)["layers"]
        for layer in range(p.layers):
            c, e = layer_counts(p, length, layer), ev[layer]
            for lin in quant.LINEARS:
                x = xbar_counters(p, lin, layer, length)
                for mine, theirs in chip.CTRL_EVENTS.items():
                    if mine != "cycles":
                        assert x[mine] == e[lin][theirs], (length, layer, lin, mine)
            assert c["layernorm_elems"] == (e["ln1"]["layernorm_elems"]
                                            + e["ln2"]["layernorm_elems"])
            assert c["gelu_elems"] == e["gelu"]["gelu_elems"]
            assert c["softmax_elems"] == e["softmax"]["softmax_elems"]
            assert c["array_fp_ops"] == e["qk"]["fp_ops"] + e["pv"]["fp_ops"]


# ---------------------------------------------------------------- cocotb regression -----

try:
    import cocotb
except ImportError:   # pragma: no cover - cocotb is a dependency
    cocotb = None

if cocotb is not None:
    from cocotb.triggers import ClockCycles

    from gen import streamkit
    from gen.encoder_tb import EncoderTB as TB

    async def run_test(tb, weights, sentences, *, program=True, timeout=20_000_000):
        """Program ``weights`` (unless preloaded), run ``sentences`` back to back (tokens,
        first layer, layer count) and check every output token; return their number."""
        await tb.start()
        cocotb.start_soon(tb.progress())
        if program:
            tb.program(weights)
            await tb.programmed()
        n = sum(tb.sentence(weights, x, first, count) for x, first, count in sentences)
        await tb.drain(timeout)
        return n

    def check_counters(tb, sentences):
        """Every counter equals ``sim.encoder.model`` of the sentence jobs."""
        got = tb.counters()
        want = model(tb.params, [(x.shape[0], first, count) for x, first, count in sentences])
        bad = {k: (want.get(k, 0), v) for k, v in got.items()
               if (v > want.get(k, 0) if k in BOUNDS else v != want.get(k, 0))}
        assert not bad, f"counters differ from the model (model, RTL): {bad}"

    @cocotb.test()
    async def encoder_random(dut):
        """Random weights, random sentences (lengths 1..max_len, random layers), random
        stalls on every stream; outputs equal the golden model, counters the cycle model."""
        tb = TB(dut)
        p = tb.params
        w = random_weights(p, tb.rng)
        sentences = random_sentences(tb.rng, p, streamkit.samples_from_env(4))
        tokens = await run_test(tb, w, sentences)
        check_counters(tb, sentences)
        tb.report(vectors=tokens, counters=tb.counters())

    @cocotb.test()
    async def encoder_reset_midstream(dut):
        """Weights programmed once; 8 short sentence jobs (1 to 4 tokens, one layer) each cut
        by a reset at a random cycle of the job under random stalls (the weight memories
        keep their words); then a job runs to the end: its outputs equal the golden model
        and the counters, restarted by the reset, the cycle model."""
        tb = TB(dut)
        p = tb.params
        w = random_weights(p, tb.rng)
        await tb.start()
        tb.program(w)
        await tb.programmed()

        def job():
            n = int(tb.rng.integers(1, 5))
            first = int(tb.rng.integers(0, p.layers))
            return random_tokens(tb.rng, n, p.hidden), first, 1

        for _ in range(8):
            x, first, count = job()
            tb.sentence(w, x, first, count)
            span = sum(v for k, v in model(p, [(len(x), first, count)]).items()
                       if k.startswith("cycles_"))
            await tb.reset_after(0, span)
        sentences = [job()]
        n = sum(tb.sentence(w, x, first, count) for x, first, count in sentences)
        await tb.drain(tb.cycle + 20_000_000)
        assert tb.resets == 8
        check_counters(tb, sentences)
        tb.report(vectors=n)

    @cocotb.test()
    async def encoder_reprogram(dut):
        """Weights A, a sentence through every layer (each layer's first run programs its
        tiles), the same layers again (kept), then weights B through the programming port
        and a sentence: its outputs are B's (writing a linear's weights drops its kept
        tiles), and the counters are the cycle model's, B's first runs programming again."""
        tb = TB(dut)
        p = tb.params
        wa, wb = random_weights(p, tb.rng), random_weights(p, tb.rng)
        await tb.start()
        tb.program(wa)
        await tb.programmed()
        jobs = [(random_tokens(tb.rng, int(tb.rng.integers(1, p.max_len + 1)), p.hidden), 0,
                 p.layers) for _ in range(3)]
        n = sum(tb.sentence(wa, *j) for j in jobs[:2])
        await tb.drain(tb.cycle + 20_000_000)
        tb.program(wb)
        await tb.programmed()
        n += tb.sentence(wb, *jobs[2])
        await tb.drain(tb.cycle + 20_000_000)
        got = tb.counters()
        sizes = [(x.shape[0], first, count) for x, first, count in jobs]
        want = {k: v + model(p, sizes[2:]).get(k, 0) for k, v in model(p, sizes[:2]).items()}
        bad = {k: (want.get(k, 0), v) for k, v in got.items()
               if (v > want.get(k, 0) if k in BOUNDS else v != want.get(k, 0))}
        assert not bad, f"counters differ from the model (model, RTL): {bad}"
        assert got["cell_writes"] == 2 * model(p, sizes[2:])["cell_writes"] > 0
        tb.report(vectors=n)

    def read_memory(dut, name, depth):
        """Words 0..depth-1 of the SRAM instance ``name`` (through VPI)."""
        mem = getattr(dut, name).mem
        return [int(mem[i].value) for i in range(depth)]

    @cocotb.test()
    async def encoder_program(dut):
        """The programming port reaches the state the fast load path preloads: every
        programmed memory read back equals ``sim.encoder.memory_image``; then a sentence."""
        tb = TB(dut)
        p = tb.params
        w = random_weights(p, tb.rng)
        await tb.start()
        beats = tb.program(w)
        await tb.programmed()
        await ClockCycles(dut.clk, 4)
        img = memory_image(w, p)
        for name, m in program_memories(p).items():
            want = [int.from_bytes(img[name][a].tobytes(), "little") for a in range(m["depth"])]
            got = read_memory(dut, name, m["depth"])
            bad = [a for a in range(m["depth"]) if got[a] != want[a]]
            assert not bad, f"{name}: {len(bad)} words differ, first at {bad[0]}"
        sentences = random_sentences(tb.rng, p, 1)
        n = sum(tb.sentence(w, x, first, count) for x, first, count in sentences)
        await tb.drain(20_000_000)
        tb.report(vectors=n + beats)

    @cocotb.test()
    async def encoder_preloaded(dut):
        """Weights preloaded by ``$readmemh`` (the fast load path, no programming beats):
        random sentences, outputs equal the golden model."""
        seed = os.environ.get("XBARLLM_WEIGHTS_SEED")
        if seed is None:
            return                                   # run only with preload files
        tb = TB(dut)
        p = tb.params
        w = random_weights(p, np.random.default_rng(int(seed)))
        sentences = random_sentences(tb.rng, p, streamkit.samples_from_env(2))
        tokens = await run_test(tb, w, sentences, program=False)
        check_counters(tb, sentences)
        tb.report(vectors=tokens)


# ---------------------------------------------------------------- runner (pytest) -------

from gen.harness import regress  # noqa: E402


@pytest.mark.xdist_group("encoder-tiny")
def test_encoder_tiny_random():
    """Random regression (4 sentences), the programming port's state, reprogramming between
    sentences, at tiny."""
    regress("encoder", PRESETS["tiny"], case="tiny", samples=4,
            testcase=["encoder_random", "encoder_program", "encoder_reprogram"])


@pytest.mark.slow
@pytest.mark.xdist_group("encoder-tiny")
def test_encoder_tiny_reset_midstream():
    """8 sentence jobs cut by resets, then one checked to the end, at tiny (the same build as
    ``test_encoder_tiny_random``; about a million cycles)."""
    regress("encoder", PRESETS["tiny"], case="tiny", samples=1,
            testcase=["encoder_reset_midstream"])


@pytest.mark.xdist_group("encoder-tiny")
def test_encoder_tiny_preloaded(tmp_path):
    """The fast load path: weights preloaded from ``$readmemh`` files, no programming."""
    from gen.harness import run_seed
    p = PRESETS["tiny"]
    seed = run_seed()
    w = random_weights(p, np.random.default_rng(seed))
    mems = program_memories(p)
    plus = []
    for name, words in memory_image(w, p).items():
        f = tmp_path / f"{name}.hex"
        f.write_text(hex_words(words, mems[name]["width"]))
        plus.append(f"+xbarllm_preload_{name}={f}")
    regress("encoder", p, case="tiny", samples=2, testcase="encoder_preloaded", plusargs=plus,
            env={"XBARLLM_WEIGHTS_SEED": str(seed)})


# ---------------------------------------------------------------- CLI ----------------------


def _tiny_model(tmp_path):
    from test_bert import make_tiny               # a random BERT of the tiny preset's shape
    return make_tiny(str(tmp_path / "tiny"))


@pytest.mark.parametrize("case, message", [
    ("long", "sentence 2 has 20 tokens, more than the encoder's max_len of 16 (--preset tiny)"),
    ("shape", "the model's hidden is 64, but the encoder preset 'minilm' has hidden 384"),
    ("empty", "has no sentences"),
    ("fp32", "--engine rtl runs the quantized model: use --precision quant"),
    ("noise", "--noise is a golden-model study"),
])
def test_cli_embed_rtl_bad_input_is_one_line_exit_2(case, message, tmp_path, capsys):
    from gen.cli import main
    model = _tiny_model(tmp_path)
    inp = tmp_path / "in.txt"
    second = " ".join(["word"] * 18) if case == "long" else "Another one."  # 20 tokens
    inp.write_text("" if case == "empty" else f"A short one.\n{second}\n")
    argv = ["embed", "--engine", "rtl", "--model", model,
            "--preset", "minilm" if case == "shape" else "tiny",
            "--input", str(inp), "--output", str(tmp_path / "e.npy")]
    argv += {"fp32": ["--precision", "fp32"], "noise": ["--noise", "0.1"]}.get(case, [])
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("xbarllm: error: ") and message in err, err
    assert err.count("\n") == 1


# ---------------------------------------------------------------- real MiniLM layers -------

LEE = os.path.join(os.path.dirname(bf16.__file__), "data", "lee_sentences.txt")
SHORT = os.path.join(os.path.dirname(bf16.__file__), "data", "short_sentences.txt")


def _minilm_inputs(sentences, max_tokens=None):
    """MiniLM, the golden hidden states of every layer, and the layer inputs per sentence."""
    from sim import bert
    m = bert.load("minilm", max_tokens=max_tokens)
    p = PRESETS["minilm"]
    b = m.tokenize(sentences, warn=False)
    hs = m.forward_quant(b, p.policy, quant_options(p), hidden_states=True)
    return m, b, hs


def _minilm_run(layers, sentences, *, max_tokens=None):
    """Run ``sentences`` through MiniLM ``layers`` on the RTL (weights of those layers
    preloaded); assert every layer's output equals the golden model."""
    from gen.encoder_run import prepare
    p = PRESETS["minilm"]
    m, b, hs = _minilm_inputs(sentences, max_tokens)
    first, count = layers[0], len(layers)
    weights = [w if l in layers else None for l, w in enumerate(m.prepared(p.policy))]
    run = prepare(p, weights, key=["minilm", layers])
    lens = [int(n) for n in b.lengths]
    xs = [bf16.from_float32(hs[first][i, :n]) for i, n in enumerate(lens)]
    ys, counters = run.run(xs, first=first, count=count)
    for i, (n, y) in enumerate(zip(lens, ys)):
        for c in range(count):
            want = bf16.from_float32(hs[first + c + 1][i, :n])
            bad = np.nonzero(np.any(y[c] != want, axis=1))[0]
            assert not len(bad), (f"sentence {i} ({n} tokens), layer {first + c}: tokens "
                                  f"{bad.tolist()[:8]} differ")
    want = model(p, [(n, first, count) for n in lens])
    assert {k: counters[k] for k in want} == want
    return lens


@pytest.mark.xdist_group("encoder-minilm")     # one build folder: one worker
def test_encoder_minilm_layer():
    """One real all-MiniLM-L6-v2 layer (layer 3) on a real sentence of 16 tokens (the first
    Lee sentence, truncated as ``--max-tokens 16`` truncates it).

    The one MiniLM run of the default test run: about 2 minutes of Verilog generation,
    6 of Verilator build and 3 of simulation on one core (docs/encoder.md, "Tests and their
    cost"); the build is shared with the slow MiniLM tests."""
    from sim import bert
    lens = _minilm_run([3], bert.read_sentences(LEE)[:1], max_tokens=16)
    assert lens == [16]


@pytest.mark.slow
@pytest.mark.xdist_group("encoder-minilm")     # one build folder: one worker
def test_encoder_minilm_all_layers():
    """All six layers on four real sentences: two short ones, the shortest Lee sentence of
    16 tokens or more, and Lee sentences joined to the preset's max_len (128 tokens).

    About 3 hours on one core: a MiniLM layer simulates at roughly 12 s per token
    (docs/encoder.md, "Tests and their cost"), and the long sentence is most of it."""
    from sim import bert
    m = bert.load("minilm")
    sents = bert.read_sentences(LEE)
    n = [int(k) for k in m.tokenize(sents, warn=False).lengths]
    mid = sents[min((k, i) for i, k in enumerate(n) if k >= 16)[1]]
    short = bert.read_sentences(SHORT)
    picked = [short[0], mid, short[1], " ".join(sents[:10])]
    lens = _minilm_run(list(range(6)), picked, max_tokens=PRESETS["minilm"].max_len)
    assert lens[-1] == PRESETS["minilm"].max_len and 16 <= lens[1] < 32 and lens[0] < 16


@pytest.mark.slow
@pytest.mark.xdist_group("encoder-minilm")     # one build folder: one worker
def test_cli_embed_rtl_equals_golden(tmp_path, capsys):
    """``xbarllm embed --engine rtl`` on 8 real sentences (``sim/data/short_sentences.txt``,
    7 or 8 tokens each: six layers of a Lee sentence of 45 tokens take the MiniLM simulation
    about an hour): the array equals the golden engine's bit for bit."""
    from gen.cli import main
    inp = SHORT
    rtl, gold = tmp_path / "rtl.npy", tmp_path / "golden.npy"
    assert main(["embed", "--engine", "rtl", "--input", inp, "--output", str(rtl)]) == 0
    out = capsys.readouterr()
    assert "equal to the golden model: 48/48" in out.out
    assert "sentence 8/8" in out.err and "layer 6/6 done" in out.err
    assert main(["embed", "--precision", "quant", "--input", inp, "--output", str(gold)]) == 0
    assert np.array_equal(np.load(rtl), np.load(gold))
