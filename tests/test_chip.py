"""The chip model (sim/chip.py), its constants file and ``xbarllm report``.

- A tiny layer's events, energy, latency and area equal figures computed by hand here.
- Crossbar events are the controller's counters; mixed-array events are the beats the unit
  is fed; a layer's events summed as the encoder top counts them equal sim.encoder's counter
  model (proven equal to the RTL by the encoder's regression), and (slow) the RTL's counters
  of a real MiniLM layer.
- Every constant carries a value, unit, source and scaling rule.
- Bad input gets a one-line error and exit status 2.
"""

import dataclasses
import json
import math
import tomllib

import numpy as np
import pytest

from gen.cli import main
from sim import chip, crossbar_ctrl, encoder, mixed_array, mxop
from sim.policy import uniform

C = chip.load_constants()


def tiny():
    return chip.chip_config("tiny", C, layers=1, policy=uniform(1, 5, 8))


# ---------------------------------------------------------------- hand-computed tiny layer ---

def test_tiny_layer_attention_and_nonlinear_events_by_hand():
    # tiny: hidden 64, 4 heads (d_head 16), FFN 128; mixed array lanes 2, width 8; seq 4
    ev = chip.events(tiny(), 4)["layers"][0]
    # QK^T per head: 4 query rows, the 4 keys in 2 groups of 2 lanes, each fed the row's Q
    # (d_head 16, one block of 16, k = 4 outliers): 16 / 8 = 2 beats; 4 heads
    assert ev["qk"]["beats"] == 4 * 4 * 2 * 2 == 64
    assert ev["qk"]["mults"] == 64 * 2 * 8
    assert ev["qk"]["fp_ops"] == 4 * 4 * 2 * 4 * 2            # outliers per block x lanes
    # PV per head: 4 rows, d_head 16 in 8 groups of 2 lanes, each fed the P row (4 scores, one
    # block of B = 128 ending after its one beat, k = 4)
    assert ev["pv"]["beats"] == 4 * 4 * 8 * 1 == 128
    assert ev["pv"]["fp_ops"] == 4 * 4 * 8 * 4 * 2
    assert ev["softmax"]["softmax_elems"] == 4 * 4 * 4
    assert ev["ln1"]["layernorm_elems"] == ev["ln2"]["layernorm_elems"] == 4 * 64
    assert ev["gelu"]["gelu_elems"] == 4 * 128
    # buffers: QKV reads X (4 x 64) and writes Q, K, V; 16-bit words
    assert ev["qkv"]["sram_read_bits"] == 4 * 64 * 16
    assert ev["qkv"]["sram_write_bits"] == 3 * 4 * 64 * 16
    assert ev["qkv"]["io_bits"] == ev["ln2"]["io_bits"] == 4 * 64 * 16   # the only layer


def test_tiny_layer_crossbar_events_by_hand():
    # QKV: K = 64, N = 192 on 64 x 64 tiles of 2-bit cells, 8-bit weights -> 4 slices,
    # 16 channels per tile: 1 row tile x 12 column groups; block min(128, 64) = 64, k = 4,
    # 5-bit inliers with a 1-bit DAC -> 4 + 1 pulses; 4 vectors
    ev = chip.events(tiny(), 4)["layers"][0]["qkv"]
    pulses = 4 * 12 * 1 * 5
    assert ev["tile_pulses"] == pulses == 240
    reads = 4 * 12 * 1 * 4                                     # outlier row reads
    assert ev["row_reads"] == reads
    assert ev["fp_ops"] == 16 * reads                          # channels per outlier read
    assert ev["outputs"] == 4 * 192
    assert ev["adc"] in (64 * (pulses + reads), 64 * pulses)   # with / without read-outs


def test_tiny_layer_energy_latency_area_by_hand():
    cfg = tiny()
    ev = chip.events(cfg, 4)
    t = ev["total"]
    en = chip.energy(ev, cfg, C)["parts"]
    node = 22.0
    # ADC: exact width for 64 rows x 3 (2-bit cells) x 1 (1-bit digits) = 192: 8 bits, 1.28 GS/s
    bits = cfg.tile.adc_width
    assert bits == (64 * 3).bit_length() == 8
    foms = min(302.7387019052544 - 6.460790934271676 * math.log(1.28e9), 180.14159078904734)
    sndr = 6.020599913279624 * bits + 1.7609125905568124
    e_adc = 1 / (2 * 10 ** ((foms - sndr) / 10))
    assert en["adc"] == pytest.approx(t["adc"] * e_adc, rel=1e-12)
    # DAC: 3.9 uW at 32 nm, energy scaled by 22/32, for a 10 ns pulse
    assert en["dac"] == pytest.approx(t["dac"] * 3.9e-6 * node / 32 * 10e-9, rel=1e-12)
    # a cell read: 0.55 V^2 x (1/1.7 Mohm + 0.5004 (1/100 kohm - 1/1.7 Mohm)) x 10 ns; a
    # share 0.5461 of the driven rows carries a 1 digit (both measured on MiniLM)
    g = 1 / 1.7e6 + 0.5004 * (1 / 1e5 - 1 / 1.7e6)
    assert en["cells"] == pytest.approx(t["cell_reads"] * 0.5461 * 0.55 ** 2 * g * 10e-9,
                                        rel=1e-12)
    # Horowitz 45 nm ops scaled by 22/45: INT MAC = 8-bit multiply + 32-bit add
    s = node / 45
    assert en["int_macs"] == pytest.approx(t["mults"] * (0.2e-12 + 0.1e-12) * s, rel=1e-12)
    assert en["layernorm"] == pytest.approx(
        t["layernorm_elems"] * (2 * 0.4e-12 + 3 * 1.1e-12 + 2 * 0.1e-12) * s, rel=1e-12)
    bits_moved = t["sram_read_bits"] + t["sram_write_bits"]
    assert en["sram"] == pytest.approx(bits_moved * 10e-12 / 64 * s, rel=1e-12)
    assert en["offchip"] == pytest.approx(2 * 4 * 64 * 16 * 20.3e-12, rel=1e-12)
    # latency: every phase group in turn at 1 GHz; attention heads on 4 arrays, softmax on 4
    lat = chip.latency(ev, cfg, C)
    ph = ev["layers"][0]
    want = (ph["qkv"]["cycles"] + ph["qk"]["beats"] / 4 + ph["softmax"]["softmax_elems"] / 4
            + ph["pv"]["beats"] / 4 + max(ph["o"]["cycles"], 256 / 16)
            + max(ph["ffn1"]["cycles"], 512 / 16) + max(ph["ffn2"]["cycles"], 256 / 16)) / 1e9
    assert lat["total"] == pytest.approx(want, rel=1e-12)
    # area: tiles (3 + 1 + 2 + 2) x 64 x 64 cells of 48 F^2; one ADC per 8 columns
    a = chip.area(cfg, C, chip.load_area())
    n_tiles = 12 + 4 + 8 + 8
    assert a["tiles"] == n_tiles
    assert a["parts"]["cells"] == pytest.approx(n_tiles * 64 * 64 * 48 * 0.022 ** 2 * 1e-6)
    assert a["adcs"] == n_tiles * 8
    assert a["parts"]["dac"] == pytest.approx(n_tiles * 64 * 0.166 * (node / 32) ** 2 * 1e-6)


def test_tiny_layer_outlier_adc_option_by_hand():
    # "cell": the 64 columns of each one-hot outlier row read take (2 + 1) of the 8-bit SAR's
    # (8 + 1) cycles (NeuroSim: energy = power x (bits + 1) cycles); other conversions as before
    cfg = tiny()
    ev = chip.events(cfg, 4)
    t = ev["total"]
    full = chip.energy(ev, cfg, C)["parts"]["adc"]
    short = chip.energy(ev, dataclasses.replace(cfg, outlier_adc="cell"), C)["parts"]["adc"]
    e_adc = full / t["adc"]
    n_out = 64 * t["row_reads"]
    assert 0 < n_out < t["adc"]
    assert short == pytest.approx((t["adc"] - n_out) * e_adc + n_out * e_adc * 3 / 9, rel=1e-12)
    r = chip.report("minilm", 128, 1)
    assert r["outlier_adc"]["full"]["energy_j"] == r["energy_j"]
    assert r["outlier_adc"]["cell"]["energy_j"] < r["energy_j"]
    with pytest.raises(ValueError, match="outlier_adc must be one of full, cell, not 'x'"):
        dataclasses.replace(cfg, outlier_adc="x")


def test_tiny_layer_traditional_design_by_hand():
    cfg = tiny()
    tr = chip.traditional(cfg, 4, C, chip.load_area())
    # weights from DRAM every inference: (64 x 192 + 64 x 64 + 64 x 128 + 128 x 64) x 8 bits;
    # softmax (4 heads x 4 x 4), layernorm (2 x 4 x 64) and GELU (4 x 128) elements out and
    # back as bf16; the sentence in and out
    link = 8 * (64 * 192 + 64 * 64 + 64 * 128 + 128 * 64) + 2 * 16 * (64 + 512 + 512) \
        + 2 * 4 * 64 * 16
    assert tr["offchip_bits"] == link
    assert tr["energy"]["parts"]["offchip"] == pytest.approx(link * 20.3e-12)
    # programmed cells: the layer's 32 tiles, and per head one tile for K^T (16 x 4) and one
    # for V (4 x 16), 64 x 64 cells each
    assert tr["cell_writes"] == (32 + 4 * 2) * 64 * 64
    assert tr["energy"]["parts"]["int_macs"] == 0.0


def test_crossbar_events_are_the_controller_counters():
    cfg = chip.chip_config("minilm", C)
    f = mxop.MXOPFormat(block=128, outliers=4, bits=5)
    tile = cfg.tile
    ev = chip.linear_events(384, 1536, f, tile, 7, cfg.timing)
    p = chip.ctrl_params(384, 1536, f, tile, cfg.timing)
    assert p.resident and p.tiles == p.tiles_needed == 3 * 48
    want = crossbar_ctrl.counters(p, 7)
    for theirs, mine in chip.CTRL_EVENTS.items():
        if theirs in want:
            got = ev[mine] + (crossbar_ctrl.counters(p, 0)["cycles"] if mine == "cycles" else 0)
            assert got == want[theirs], theirs


@pytest.mark.parametrize("k,block,outliers,length", [(32, 32, 4, 32), (16, 8, 3, 11),
                                                     (32, 16, 0, 1)])
def test_block_beats_are_the_beats_fed(k, block, outliers, length):
    p = dataclasses.replace(mixed_array.PRESETS["tiny"], lanes=2, width=4, max_blocks=4)
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((3, k)).astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)
    x[:, length:] = 0
    w = rng.integers(-p.wmax, p.wmax + 1, (k, 2))
    fmt = mxop.MXOPFormat(block=block, outliers=outliers, bits=5)
    bt = mixed_array.beats(x, w, None, None, 0x3F80, 0, fmt, p, length=length)
    ends = np.clip(length - np.arange(k // block) * block, 0, block)
    assert len(bt["last"]) == 3 * sum(chip.block_beats(int(n), p) for n in ends)


def encoder_params(cfg, seq):
    """The encoder top (sim.encoder) holding the chip's encoder, tiles, policy and array."""
    t, a, pol = cfg.tile, cfg.array, cfg.policy
    return encoder.EncoderParams(
        hidden=cfg.hidden, heads=cfg.heads, intermediate=cfg.intermediate, layers=cfg.layers,
        max_len=seq, rows=t.rows, cols=t.cols, cell_bits=t.cell_bits, adc_bits=t.adc_bits,
        dac_bits=t.dac_bits, lanes=a.lanes, width=a.width, block=pol.block,
        outliers=pol.outliers, act_bits=tuple(b for lp in pol.layers for b in lp.act),
        weight_bits=tuple(b for lp in pol.layers for b in lp.weights))


@pytest.mark.parametrize("model,seqs", [("tiny", (1, 3, 16)), ("minilm", (1, 7, 100, 128)),
                                        ("bert-base", (130, 512))])
def test_events_are_the_encoder_counter_model(model, seqs):
    """Every layer's events, summed as the encoder top counts them, equal sim.encoder's
    counter model (which tests/test_encoder.py proves equal to the RTL's counters)."""
    cfg = tiny() if model == "tiny" else chip.chip_config(model, C)
    for seq in seqs:
        ep = encoder_params(cfg, seq)
        ev = chip.events(cfg, seq)
        for layer in range(cfg.layers):
            want = encoder.layer_counts(ep, seq, layer)
            got = chip.encoder_counters(cfg, ev, layer)
            assert got == {k: want[k] for k in got}, (seq, layer)
            assert set(encoder.XBAR_EVENTS) <= set(got)


# ---------------------------------------------------------------- constants ---

def test_every_constant_has_a_source():
    with open(chip.CONSTANTS_FILE, "rb") as f:
        doc = tomllib.load(f)
    sources = doc["sources"]
    assert doc["const"]
    for name, r in doc["const"].items():
        assert isinstance(r.get("value"), (int, float)), name
        for key in ("unit", "source", "scaling"):
            assert isinstance(r.get(key), str) and r[key].strip(), f"{name}: {key}"
        assert r["scaling"] in chip.SCALINGS, name
        if r["scaling"] != "none":
            assert isinstance(r.get("node_nm"), (int, float)), f"{name}: node_nm"
        ref = r["source"].split(":")[0].split(";")[0]
        if ref.isidentifier() and ref != "measured":
            assert ref in sources, f"{name} cites {ref!r}, not in [sources]"


def test_constants_scale_to_the_node_and_reject_bad_overrides():
    assert C["sram_bit_j"] == pytest.approx(10e-12 / 64 * 22 / 45)
    assert C["dac_area_um2"] == pytest.approx(0.166 * (22 / 32) ** 2)
    c45 = chip.load_constants(overrides={"node_nm": 45})
    assert c45["sram_bit_j"] == pytest.approx(10e-12 / 64)
    with pytest.raises(ValueError, match="unknown constant 'adc_magic'"):
        chip.load_constants(overrides={"adc_magic": 1})
    with pytest.raises(ValueError, match="read_pulse_s must be a finite number > 0, not nan"):
        chip.load_constants(overrides={"read_pulse_s": float("nan")})
    with pytest.raises(ValueError, match="clock_hz must be a finite number > 0, not 0"):
        chip.load_constants(overrides={"clock_hz": 0})
    with pytest.raises(ValueError, match="input_one_fraction must be a finite number in 0..1"):
        chip.load_constants(overrides={"input_one_fraction": 1.5})


def test_constants_file_errors(tmp_path):
    bad = tmp_path / "c.toml"
    bad.write_text('[const.x]\nvalue = 1\nunit = "J"\nscaling = "none"\n')
    with pytest.raises(ValueError, match="constant x .* lacks 'source'"):
        chip.load_constants(bad)
    bad.write_text("not toml [")
    with pytest.raises(ValueError, match="constants file"):
        chip.load_constants(bad)


# ---------------------------------------------------------------- report ---

KEYS = ("energy_j", "latency_s", "area_mm2", "vs_gpu_batch1_energy", "vs_gpu_batch32_energy",
        "vs_traditional_energy", "vs_traditional_area", "vs_gpu_area_delay")


def test_report_keys_and_gpu_ratios():
    r = chip.report("minilm", 128, 1)
    for k in KEYS:
        assert math.isfinite(r[k]) and r[k] > 0, k
    assert r["vs_gpu_batch1_energy"] == pytest.approx(0.311625 / r["energy_j"])
    assert r["vs_gpu_batch32_energy"] == pytest.approx(0.3785 / 32 / r["energy_j"])
    assert r["energy_j"] == pytest.approx(sum(r["energy"]["parts"].values()))
    tr = r["traditional"]
    assert tr["energy"]["parts"]["cell_writes"] > 0 and tr["offchip_bits"] > 0
    longer = chip.report("minilm", 256, 1)
    assert longer["energy_j"] > r["energy_j"] and longer["latency_s"] > r["latency_s"]


def test_cli_report_table_json_and_plots(tmp_path, capsys):
    out = tmp_path / "r.json"
    assert main(["report", "--model", "minilm", "--seq", "64", "--json", str(out),
                 "--plots", str(tmp_path / "plots")]) == 0
    text = capsys.readouterr().out
    assert "energy per inference" in text and "vs H100" in text and "traditional" in text
    d = json.loads(out.read_text())
    for k in KEYS:
        assert k in d
    pngs = sorted(p.name for p in (tmp_path / "plots").iterdir())
    assert pngs == [f"minilm-seq64-{n}.png" for n in
                    ("area", "compare", "energy", "opal", "roofline")]


@pytest.mark.parametrize("argv,msg", [
    (["--model", "gpt2"], "model must be one of minilm, bert-base, bert-large, not 'gpt2'"),
    (["--seq", "0"], "seq must be an integer in 1..256 for minilm, not 0"),
    (["--seq", "257"], "seq must be an integer in 1..256 for minilm, not 257"),
    (["--model", "bert-large", "--seq", "513"], "seq must be an integer in 1..512"),
    (["--seq", "ten"], "seq must be an integer, not 'ten'"),
    (["--batch", "8"], "batch must be 1 or 32"),
    (["--set", "adc_magic=1"], "unknown constant 'adc_magic'"),
    (["--set", "read_pulse_s"], "--set takes NAME=VALUE"),
    (["--set", "clock_hz=0"], "clock_hz must be a finite number > 0"),
    (["--set", "clock_hz=inf"], "clock_hz must be a finite number > 0"),
    (["--outlier-adc", "half"], "--outlier-adc must be one of full, cell, not 'half'"),
])
def test_cli_report_bad_input(argv, msg, capsys):
    assert main(["report", "--no-plots", *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("xbarllm: error: ") and msg in err


@pytest.mark.slow
@pytest.mark.xdist_group("encoder-minilm")     # the encoder tests' build folder
def test_minilm_layer_event_counts_rtl_equal_the_model():
    """A real MiniLM layer through the encoder top's RTL (scripts/chip_events_rtl.py): every
    counter the chip model predicts is equal."""
    import importlib.util
    from gen.harness import ROOT
    spec = importlib.util.spec_from_file_location("chip_events_rtl",
                                                  ROOT / "scripts" / "chip_events_rtl.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main(["--layer", "3", "--tokens", "16"]) == 0


def test_stale_area_records_are_named():
    from gen.cli_chip import stale_areas
    entries = chip.load_area()
    rec = dict(entries["gelu/minilm"], params={"segments": 1})
    assert "gelu/minilm" in stale_areas({"gelu/minilm": rec})
    assert stale_areas({"gelu/minilm": entries["gelu/minilm"]}) == []
    assert stale_areas({"nosuchunit/minilm": rec}) == ["nosuchunit/minilm"]
