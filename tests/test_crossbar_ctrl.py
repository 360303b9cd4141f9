"""crossbar_ctrl: golden/counter tests, parameter validation, and the cocotb regression.

The cocotb drivers here wake only on handshakes (``RisingEdge(ready/valid)``), not on
every clock, so long regressions keep Python off the per-cycle path.
"""

import dataclasses
import os
import time

import numpy as np
import pytest

from sim import bf16, crossbar, mxop
from gen.harness import regress
from sim.crossbar_ctrl import PRESETS, CrossbarCtrlParams, counters, run, weight_rows

# ---------------------------------------------------------------- stimulus (shared) ----


def random_vectors(rng, m, k):
    """Random bf16 rows (m, k): normal values at mixed scales, sparse rows, outlier spikes."""
    scale = np.exp2(rng.integers(-12, 12, size=(m, 1))).astype(np.float32)
    x = rng.standard_normal((m, k)).astype(np.float32) * scale
    kind = rng.integers(0, 6, size=(m, 1))
    big = rng.random((m, k)) < 0.03
    x = np.where((kind == 1) & big, x * np.exp2(rng.integers(3, 12, size=(m, k))), x)
    x = np.where((kind == 2) & (rng.random((m, k)) < 0.8), 0, x)
    x = np.where(kind == 3, np.abs(x), x)
    x = np.where(kind == 4, -np.abs(x), x)
    return bf16.from_float32(x)


def random_layer(rng, p, kind="random"):
    """Weights (K, N), scale and bias (N,) bf16 for a layer of ``p``."""
    k, n, wb = p.in_features, p.out_features, p.weight_bits
    lo, hi = -(1 << (wb - 1)), (1 << (wb - 1)) - 1
    if kind == "max":
        w = np.where(rng.random((k, n)) < 0.5, lo, hi)
    elif kind == "negative":
        w = rng.integers(lo, 0, size=(k, n))
    else:
        w = rng.integers(lo, hi + 1, size=(k, n))
    scale = bf16.from_float32((rng.random(n) * 0.03 + 1e-3).astype(np.float32)
                              * np.exp2(rng.integers(-8, 8, size=n)).astype(np.float32))
    bias = bf16.from_float32((rng.standard_normal(n) * 0.5).astype(np.float32))
    return w, scale, bias


def corner_vectors(p):
    """Zero, all-negative, all-outlier blocks (only k nonzero per block), specials."""
    k, b = p.in_features, p.fmt.block
    rows = [np.zeros(k), -np.ones(k) * 3.5, np.full(k, 448.0), np.full(k, -2.0 ** -100)]
    spiky = np.zeros(k)
    for blk in range(k // b):
        spiky[blk * b:blk * b + p.fmt.outliers] = [(-1) ** i * 2.0 ** (i + 3)
                                                   for i in range(p.fmt.outliers)]
    rows.append(spiky)
    alt = np.where(np.arange(k) % 2, 1.0, -1.0) * 2.0 ** 20
    rows.append(alt)
    x = bf16.from_float32(np.array(rows, dtype=np.float32))
    nanrow = x[1].copy()
    nanrow[k // 2] = bf16.NAN
    infrow = x[2].copy()
    infrow[1] = bf16.NEG_INF
    return np.vstack([x, nanrow[None], infrow[None]])


def x_fields(x, p):
    """Element-beat fields of MX-OP rows ``x`` (M, K), flattened in stream order."""
    enc = mxop.encode(x, p.fmt)
    m, nb, b = enc.q.shape
    outl = np.zeros(enc.q.shape, dtype=bool)
    val = np.zeros(enc.q.shape, dtype=np.int64)
    if p.fmt.outliers:
        np.put_along_axis(outl, enc.out_idx.astype(np.int64), True, axis=-1)
        np.put_along_axis(val, enc.out_idx.astype(np.int64), enc.out_val.astype(np.int64),
                          axis=-1)
    exp = np.broadcast_to(enc.exp[..., None], enc.q.shape)
    return {"q": enc.q.ravel(), "outlier": outl.ravel(), "value": val.ravel(),
            "exp": exp.ravel()}


# ---------------------------------------------------------------- golden / params ------

def test_weight_rows_order():
    p = CrossbarCtrlParams(in_features=128, out_features=40, block=64, rows=64, cols=64,
                           tiles=6)
    w = np.arange(128 * 40).reshape(128, 40) % 97 - 48
    rows = weight_rows(w, p)
    assert rows.shape == (p.groups * p.row_tiles * p.rows, p.channels)
    # group 1, row tile 1, row 5 holds W[64 + 5, 16:32]
    np.testing.assert_array_equal(rows[(1 * 2 + 1) * 64 + 5], w[69, 16:32])
    np.testing.assert_array_equal(rows[(2 * 2) * 64 + 3, :8], w[3, 32:40])
    assert not rows[(2 * 2) * 64 + 3, 8:].any()


def test_run_is_crossbar_linear():
    rng = np.random.default_rng(3)
    p = CrossbarCtrlParams(in_features=128, out_features=24, block=64, rows=64, cols=64,
                           adc_bits=5, tiles=8)
    x = random_vectors(rng, 9, 128)
    w, s, b = random_layer(rng, p)
    got = run(x, w, s, b, p)
    want = crossbar.linear(x, w, s, b, mxop.MXOPFormat(block=64), p.tile)
    np.testing.assert_array_equal(got, want)


def test_counters_events():
    p = CrossbarCtrlParams(in_features=128, out_features=32, block=128, rows=64, cols=64,
                           tiles=4)
    c = counters(p, 10)
    assert p.resident and c["cell_writes"] == 4 * 64 * 64 and c["reprogram_writes"] == 0
    assert c["adc"] == 10 * 2 * 2 * 5 * 64
    q = counters(dataclasses.replace(p, tiles=1), 10)
    assert q["cell_writes"] == 0 and q["reprogram_writes"] == 10 * 4 * 64 * 64
    assert q["cycles"] - c["cycles"] == 10 * 4 * (64 * 3 + 1) - 4 * 64 * 3


@pytest.mark.parametrize("field,value,msg", [
    ("in_features", 0, "in_features must be an integer in 1..8192, not 0"),
    ("in_features", 100, "block 100 and rows 128 must divide one another"),
    ("in_features", 200, "in_features must be a multiple of block 128, not 200"),
    ("out_features", 0, "out_features must be an integer in 1..8192, not 0"),
    ("out_features", 9000, "out_features must be an integer in 1..8192"),
    ("block", 96, "block must be a power of two in 2..1024, not 96"),
    ("block", 2048, "block must be a power of two in 2..1024"),
    ("outliers", 17, "outliers must be an integer in 0..16, not 17"),
    ("outliers", -1, "outliers must be an integer in 0..16"),
    ("act_bits", 1, "act_bits must be an integer in 2..8, not 1"),
    ("act_bits", 9, "act_bits must be an integer in 2..8"),
    ("rows", 512, "rows must be a power of two in 64..256, not 512"),
    ("cols", 48, "cols must be a power of two in 64..256, not 48"),
    ("cell_bits", 8, "cell_bits must be one of 1, 2, 4, not 8"),
    ("adc_bits", 20, "adc_bits must be an integer in 1..16, not 20"),
    ("dac_bits", 0, "dac_bits must be an integer in 1..4, not 0"),
    ("weight_bits", 10, "weight_bits must be an integer in 4..8, not 10"),
    ("tiles", 0, "tiles must be an integer in 1..4096, not 0"),
])
def test_params_rejects_bad_values(field, value, msg):
    with pytest.raises(ValueError, match=msg.replace(".", r"\.")):
        CrossbarCtrlParams(**{field: value})


def test_params_rejects_block_rows_mismatch_and_positional():
    # a block of 32 with 64-row tiles is fine (tiles hold two blocks); K=64, block 64, rows 256
    CrossbarCtrlParams(in_features=64, out_features=8, block=32, rows=64)
    with pytest.raises(TypeError):
        CrossbarCtrlParams(64)                              # keyword-only


def test_presets_valid_and_resident():
    for name, p in PRESETS.items():
        assert p.resident, name


# ---------------------------------------------------------------- cocotb regression -----

try:
    import cocotb
    from cocotb.triggers import ClockCycles, FallingEdge, ReadOnly, RisingEdge
except ImportError:   # pragma: no cover - cocotb is a dependency
    cocotb = None

if cocotb is not None:
    from hw.crossbar_ctrl import layer_layout, o_layout, sb_layout, w_layout, x_layout
    from gen.streamkit_legacy import (Packer, clock_reset, params_from_env, report,
                               samples_from_env, seed_from_env)

    COUNTERS = {"cycles": "cycles", "adc": "adc_conversions", "dac": "dac_pulses",
                "cell_writes": "cell_writes", "reprogram_writes": "reprogram_writes",
                "fp_ops": "fp_lane_ops"}

    class Source:
        """Drive ``<name>__payload/valid`` from a list of ints; random idle; never waits for
        ready before raising valid; wakes only on handshakes."""

        def __init__(self, dut, name, rng, idle):
            self.clk = dut.clk
            self.valid = getattr(dut, f"{name}__valid")
            self.ready = getattr(dut, f"{name}__ready")
            self.payload = getattr(dut, f"{name}__payload")
            self.queue, self.sent, self.rng, self.idle = [], 0, rng, idle
            self.valid.value = 0
            self.task = cocotb.start_soon(self._run())

        async def _run(self):
            await FallingEdge(self.clk)
            while True:
                while self.sent >= len(self.queue):
                    await FallingEdge(self.clk)
                if self.idle and self.rng.random() < self.idle:
                    self.valid.value = 0
                    await ClockCycles(self.clk, int(self.rng.integers(1, 4)), rising=False)
                self.payload.value = self.queue[self.sent]
                self.valid.value = 1
                await ReadOnly()
                while not int(self.ready.value):
                    await RisingEdge(self.ready)
                    await ReadOnly()
                await RisingEdge(self.clk)          # the transfer
                self.sent += 1
                self.valid.value = 0
                await FallingEdge(self.clk)

    class Sink:
        """Accept ``<name>`` beats with random backpressure into ``self.got``."""

        def __init__(self, dut, name, rng, stall):
            self.clk = dut.clk
            self.valid = getattr(dut, f"{name}__valid")
            self.ready = getattr(dut, f"{name}__ready")
            self.payload = getattr(dut, f"{name}__payload")
            self.got, self.rng, self.stall = [], rng, stall
            self.ready.value = 0
            self.task = cocotb.start_soon(self._run())

        async def _run(self):
            await FallingEdge(self.clk)
            while True:
                if self.stall and self.rng.random() < self.stall:
                    self.ready.value = 0
                    await ClockCycles(self.clk, int(self.rng.integers(1, 5)), rising=False)
                self.ready.value = 1
                await ReadOnly()
                while not int(self.valid.value):
                    await RisingEdge(self.valid)
                    await ReadOnly()
                word = int(self.payload.value)
                await RisingEdge(self.clk)          # the transfer
                self.got.append(word)
                self.ready.value = 0
                await FallingEdge(self.clk)

    class TB:
        """crossbar_ctrl testbench: four sources, one sink, golden outputs and counters."""

        def __init__(self, dut, seed, idle=0.2, stall=0.3):
            self.dut = dut
            self.p = params_from_env()
            self.rng = np.random.default_rng(seed)
            self.pk = {n: Packer(f(self.p)) for n, f in (
                ("layer", layer_layout), ("sb", sb_layout), ("w", w_layout), ("x", x_layout),
                ("o", o_layout))}
            self.expected = []
            self.want = {k: 0 for k in COUNTERS}
            self.vectors = 0
            self.clipped = 0
            self.idle, self.stall = idle, stall

        async def start(self):
            await clock_reset(self.dut)
            r = self.rng
            self.src = {n: Source(self.dut, f"i_{n}", np.random.default_rng(r.integers(1 << 30)),
                                  self.idle) for n in ("layer", "sb", "w", "x")}
            self.sink = Sink(self.dut, "o", np.random.default_rng(r.integers(1 << 30)),
                             self.stall)

        def job(self, x, w, scale, bias):
            """Queue one layer job; return its expected outputs (V, N)."""
            p = self.p
            v = x.shape[0]
            self.src["layer"].queue += self.pk["layer"].pack(vectors=[v])
            self.src["sb"].queue += self.pk["sb"].pack(scale=scale, bias=bias)
            rows = weight_rows(w, p)
            wf = {f"w.{j}": rows[:, j] for j in range(p.channels)}
            wwords = self.pk["w"].pack(**wf)
            self.src["w"].queue += wwords * (1 if p.resident else v)
            if v:
                self.src["x"].queue += self.pk["x"].pack(**x_fields(x, p))
            y = run(x, w, scale, bias, p) if v else np.zeros((0, p.out_features), np.uint16)
            if v and not p.tile.adc_exact:       # evidence that the ADC really clips
                exact = run(x, w, scale, bias, dataclasses.replace(p, adc_bits=0))
                self.clipped += int(np.sum(exact != y))
            self.expected += [int(t) for t in y.ravel()]
            for key, val in counters(p, v).items():
                self.want[key] += val
            self.vectors += v
            return y

        async def finish(self, timeout_cycles):
            t0 = time.time()
            for _ in range(timeout_cycles // 1000 + 1):
                if len(self.sink.got) >= len(self.expected) and all(
                        s.sent == len(s.queue) for s in self.src.values()):
                    break
                await ClockCycles(self.dut.clk, 1000)
            await ClockCycles(self.dut.clk, 50)
            bad = 0
            for i, (e, a) in enumerate(zip(self.expected, self.sink.got)):
                if e != a:
                    bad += 1
                    if bad <= 10:
                        n = self.p.out_features
                        cocotb.log.error("output %d (vector %d, channel %d): expected %#06x, "
                                         "actual %#06x", i, i // n, i % n, e, a)
            got = {k: int(getattr(self.dut, name).value) for k, name in COUNTERS.items()}
            cocotb.log.info("counters measured %s", got)
            cocotb.log.info("counters predicted %s", self.want)
            cocotb.log.info("wall %.1f s", time.time() - t0)
            assert bad == 0, f"{bad} mismatching outputs"
            assert len(self.sink.got) == len(self.expected), \
                f"{len(self.sink.got)} outputs, expected {len(self.expected)}"
            for s in self.src.values():
                assert s.sent == len(s.queue), f"{len(s.queue) - s.sent} input beats left"
            assert int(self.dut.verify_errors.value) == 0
            assert got == self.want, f"counters {got} != predicted {self.want}"
            return got

        def report(self, got, **extra):
            report(vectors=self.vectors, beats=len(self.expected), mismatches=0,
                   cycles=got["cycles"], counters=got, predicted=self.want,
                   clipped=self.clipped, **extra)

    @cocotb.test()
    async def ctrl_random(dut):
        """NUM_SAMPLES random vectors over a few random layers, random stalls everywhere."""
        seed = seed_from_env()
        tb = TB(dut, seed)
        await tb.start()
        p = tb.p
        n = samples_from_env(200)
        jobs = 3 if p.resident else 1
        for i in range(jobs):
            w, s, b = random_layer(tb.rng, p)
            tb.job(random_vectors(tb.rng, n // jobs + (i < n % jobs), p.in_features), w, s, b)
        got = await tb.finish(200 * n * 4000)
        tb.report(got)

    @cocotb.test()
    async def ctrl_corners(dut):
        """Largest and all-negative weights, zero/negative/all-outlier inputs, specials,
        empty jobs and reprogramming between layers."""
        tb = TB(dut, 11)
        await tb.start()
        p = tb.p
        xc = corner_vectors(p)
        for kind in ("max", "negative", "random"):
            w, s, b = random_layer(tb.rng, p, kind)
            tb.job(xc, w, s, b)
        w, s, b = random_layer(tb.rng, p)
        tb.job(xc[:0], w, s, b)                       # a job with no vectors
        tb.job(random_vectors(tb.rng, 3, p.in_features), w, s, b)
        got = await tb.finish(4_000_000)
        tb.report(got)

    @cocotb.test(skip=not os.environ.get("XBARLLM_MINILM"))
    async def ctrl_minilm(dut):
        """MiniLM layer 0 Wq (from XBARLLM_MINILM, an .npz) through the RTL, no stalls."""
        d = np.load(os.environ["XBARLLM_MINILM"])
        tb = TB(dut, 0, idle=0.0, stall=0.0)
        await tb.start()
        tb.job(d["x"], d["w"], d["scale"], d["bias"])
        t0 = time.time()
        got = await tb.finish(100_000_000)
        tb.report(got, minilm=1, sim_seconds=time.time() - t0)


# ---------------------------------------------------------------- runner (pytest) -------

CASES = {
    # case: (params, random vectors in the default run)
    "k64-exact": (CrossbarCtrlParams(in_features=64, out_features=16, block=128, outliers=4,
                                     act_bits=5, rows=64, cols=64, cell_bits=2, dac_bits=1,
                                     weight_bits=8, tiles=1), 3400),
    "k128-adc4": (CrossbarCtrlParams(in_features=128, out_features=16, block=64, outliers=2,
                                     act_bits=3, rows=64, cols=64, cell_bits=1, dac_bits=2,
                                     adc_bits=4, weight_bits=6, tiles=4), 3300),
    "k64-r128-adc6": (CrossbarCtrlParams(in_features=64, out_features=40, block=32,
                                         outliers=0, act_bits=8, rows=128, cols=64,
                                         cell_bits=4, dac_bits=4, adc_bits=6, weight_bits=4,
                                         tiles=1), 3300),
    "stream-reprogram": (CrossbarCtrlParams(in_features=128, out_features=24, block=64,
                                            outliers=3, act_bits=5, rows=64, cols=64,
                                            cell_bits=2, dac_bits=2, weight_bits=7,
                                            tiles=1), 60),
}


def _merged(case):
    """Per-test records of the last run of ``case`` (counters measured and predicted)."""
    import json
    from gen.harness import BUILD
    path = BUILD / f"crossbar_ctrl-{case}" / "report.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("case", [c for c in CASES])
def test_crossbar_ctrl_verilator(case):
    params, n = CASES[case]
    regress("crossbar_ctrl", params, case=case, samples=n,
            testcase=["ctrl_random", "ctrl_corners"])
    recs = _merged(case)
    for r in recs:
        assert r["counters"] == r["predicted"]
    if not params.tile.adc_exact:
        assert sum(r["clipped"] for r in recs) > 0, "the low-bit ADC never clipped"


def minilm_wq(tokens=16):
    """Real all-MiniLM-L6-v2 layer-0 Wq (1/sqrt(d_head) folded, 8-bit per-channel symmetric
    by ``sim.quant.quantize_weight``) and the bf16 layer-0 input of ``tokens`` real tokens
    (word + position + type embeddings, layernorm in float32)."""
    from safetensors.numpy import load_file
    from tokenizers import Tokenizer
    from sim.bert import model_dir
    from sim.quant import quantize_weight
    d = model_dir("minilm")
    t = load_file(os.path.join(d, "model.safetensors"))
    pre = "" if "embeddings.word_embeddings.weight" in t else "bert."
    tok = Tokenizer.from_file(os.path.join(d, "tokenizer.json"))
    text = ("The crossbar keeps every weight of the model on chip, so nothing moves off "
            "chip during inference of this sentence.")
    ids = tok.encode(text).ids[:tokens]
    assert len(ids) == tokens
    e = (t[pre + "embeddings.word_embeddings.weight"][ids]
         + t[pre + "embeddings.position_embeddings.weight"][:tokens]
         + t[pre + "embeddings.token_type_embeddings.weight"][0])
    mu = e.mean(-1, keepdims=True)
    var = ((e - mu) ** 2).mean(-1, keepdims=True)
    h = ((e - mu) / np.sqrt(var + 1e-12) * t[pre + "embeddings.LayerNorm.weight"]
         + t[pre + "embeddings.LayerNorm.bias"]).astype(np.float32)
    mult = 1.0 / np.sqrt(32.0)
    w, scale = quantize_weight(t[pre + "encoder.layer.0.attention.self.query.weight"], 8,
                               multiplier=mult)
    bias = bf16.from_float32(t[pre + "encoder.layer.0.attention.self.query.bias"]
                             * np.float32(mult))
    return bf16.from_float32(h), w.astype(np.int64), scale, bias


def test_minilm_wq_golden_close_to_float():
    x, w, scale, bias = minilm_wq()
    p = PRESETS["minilm"]
    y = bf16.to_float32(run(x, w, scale, bias, p))
    ref = bf16.to_float32(x) @ (w * bf16.to_float32(scale)[None, :]) + bf16.to_float32(bias)
    rel = np.linalg.norm(y - ref) / np.linalg.norm(ref)
    assert rel < 0.1, rel          # 5-bit MX-OP inputs, 8-bit weights


@pytest.mark.slow
def test_crossbar_ctrl_minilm_wq_verilator(tmp_path):
    """MiniLM layer 0 Wq (384 x 384), 16 real tokens, through the RTL (minilm preset)."""
    from gen.harness import BUILD, run_cocotb
    x, w, scale, bias = minilm_wq(16)
    BUILD.mkdir(parents=True, exist_ok=True)
    path = BUILD / "crossbar_ctrl-minilm-wq.npz"
    np.savez(path, x=x, w=w, scale=scale, bias=bias)
    t0 = time.time()
    rep = run_cocotb("crossbar_ctrl", PRESETS["minilm"], case="minilm",
                     testcase="ctrl_minilm", env={"XBARLLM_MINILM": str(path)})
    assert rep["mismatches"] == 0 and rep["vectors"] == 16
    recs = _merged("minilm")
    assert recs and recs[0]["counters"] == recs[0]["predicted"]
    print(f"MiniLM Wq through the RTL: {time.time() - t0:.0f} s, {rep['cycles']} cycles")
