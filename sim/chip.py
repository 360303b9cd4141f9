"""Chip model: latency, energy and area per inference of the accelerator, and its baselines.

Pure Python. The model is built from event counts, the same ones the units' RTL counters
report (docs/chip.md states every equation once):

- ``events(cfg, seq)``: per layer and phase of the encoder dataflow, the crossbar events of
  each linear layer (``linear_events``: the controller's cycles, ADC conversions, DAC pulses,
  cell reads, outlier row reads, FP lane operations, from ``sim.crossbar_ctrl.counters``),
  the mixed array's counters of QK^T
  and PV (``attention_events``: input beats, INT multiplies, FP outlier operations, as
  ``hw/mixed_array.py`` counts them for the encoder top's dataflow), the elements through mxq,
  softmax, layernorm and GELU, and the on-chip buffer traffic. ``encoder_counters`` sums a
  layer's events into the encoder top's counters (``hw/encoder.py``), which they equal.
- ``latency``, ``energy``, ``area``: the events times the constants of ``sim/data/chip.toml``
  (``load_constants``; every constant has a value, unit, source and node-scaling rule), and the
  synthesized standard-cell area of the digital units (``sim/data/chip_area.json``, written by
  ``scripts/synth_area.py``).
- Baselines: ``traditional`` (a traditional crossbar design, as the crossbar paper defines
  it), ``gpu`` (the measured H100), and ``memory_wall`` (bytes moved, arithmetic intensity).
- ``report``: all of it for one model, sequence length and GPU batch.
"""

import dataclasses
import json
import math
import os
import tomllib
from dataclasses import dataclass

from . import crossbar, mixed_array, mxop, softmax
from .policy import SITES, default_policy, uniform
from .bert import BertConfig

__all__ = ["MODELS", "ChipConfig", "chip_config", "load_constants", "load_area",
           "linear_events", "block_beats", "attention_events", "events", "encoder_counters",
           "ENCODER_EVENTS", "latency", "energy", "area",
           "traditional", "gpu", "memory_wall", "report", "adc_energy", "adc_area",
           "outlier_adc_energy", "OUTLIER_ADC",
           "CONSTANTS_FILE", "AREA_FILE", "PHASES", "LINEAR_SHAPES"]

_DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
CONSTANTS_FILE = os.path.join(_DATA, "chip.toml")
AREA_FILE = os.path.join(_DATA, "chip_area.json")

MODELS = {
    "tiny": dict(hidden=64, heads=4, layers=2, intermediate=128),
    "minilm": dict(hidden=384, heads=12, layers=6, intermediate=1536),
    "bert-base": dict(hidden=768, heads=12, layers=12, intermediate=3072),
    "bert-large": dict(hidden=1024, heads=16, layers=24, intermediate=4096),
}
"""Encoder shapes of the units' presets: ``tiny`` (tests), all-MiniLM-L6-v2, BERT-Base,
BERT-Large. ``report`` takes the last three (the GPU was measured on them)."""

PHASES = ("qkv", "qk", "softmax", "pv", "o", "ln1", "ffn1", "gelu", "ffn2", "ln2")
"""Phases of one encoder layer, in the sequencer's order (docs/model.md dataflow)."""

LINEAR_SHAPES = {"qkv": lambda h, i: (h, 3 * h), "o": lambda h, i: (h, h),
                 "ffn1": lambda h, i: (h, i), "ffn2": lambda h, i: (i, h)}
"""(K, N) of each crossbar linear layer from hidden size h and FFN size i."""

WORD = 16          # bits of an activation word between units (bf16)
OUTLIER_ADC = ("full", "cell")
"""Conversions of a one-hot outlier row read: the ADC's full width or ``cell_bits`` (see
``ChipConfig.outlier_adc``)."""
SCALINGS = {"none": 0, "energy": 1, "area": 2}


# ------------------------------------------------------------------------------------------
# Constants
# ------------------------------------------------------------------------------------------

class Constants(dict):
    """Constant name -> value at the chip's node (``records`` keeps the file's tables)."""

    def __init__(self, values, records):
        super().__init__(values)
        self.records = records


def load_constants(path=None, overrides=None):
    """Read the constants file and scale every value to the chip's node ``node_nm``.

    ``overrides`` maps names to values at the node the file states them for (before scaling).
    Raises ``ValueError`` naming the constant for a malformed entry or an unknown override.
    """
    path = path or CONSTANTS_FILE
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ValueError(f"constants file {path}: {e}") from None
    recs = doc.get("const")
    if not isinstance(recs, dict) or not recs:
        raise ValueError(f"constants file {path} has no [const.*] tables")
    raw = {}
    for name, r in recs.items():
        for key in ("value", "unit", "source", "scaling"):
            if key not in r:
                raise ValueError(f"constant {name} in {path} lacks {key!r}")
        if r["scaling"] not in SCALINGS:
            raise ValueError(f"constant {name}: scaling must be one of "
                             f"{', '.join(SCALINGS)}, not {r['scaling']!r}")
        if r["scaling"] != "none" and "node_nm" not in r:
            raise ValueError(f"constant {name}: scaling {r['scaling']!r} needs node_nm")
        v = r["value"]
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
            raise ValueError(f"constant {name} must be a finite number, not {v!r}")
        raw[name] = float(v)
    for name, v in (overrides or {}).items():
        if name not in raw:
            raise ValueError(f"unknown constant {name!r}; see {os.path.basename(path)}")
        frac = name.endswith("_fraction")
        if (not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v)
                or not (0 <= v <= 1 if frac else v > 0)):
            raise ValueError(f"constant {name} must be a finite number "
                             f"{'in 0..1' if frac else '> 0'}, not {v!r}")
        raw[name] = float(v)
    node = raw["node_nm"]
    if not 1 <= node <= 180:
        raise ValueError(f"node_nm must be in 1..180, not {node!r}")
    vals = {}
    for name, r in recs.items():
        k = SCALINGS[r["scaling"]]
        vals[name] = raw[name] * (node / r["node_nm"]) ** k if k else raw[name]
    return Constants(vals, recs)


def load_area(path=None):
    """The cached synthesis results: ``{"unit/preset": record}`` (``scripts/synth_area.py``)."""
    path = path or AREA_FILE
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)["entries"]
    except (OSError, ValueError, KeyError) as e:
        raise ValueError(f"synthesis area cache {path} is unreadable ({e}); "
                         "regenerate it with scripts/synth_area.py") from None


def adc_energy(bits, rate_hz, c):
    """Energy per conversion (J) of a ``bits``-bit ADC at ``rate_hz`` (survey fit, see file)."""
    foms = min(c["adc_foms_intercept_db"] + c["adc_foms_per_ln_hz_db"] * math.log(rate_hz),
               c["adc_foms_max_db"])
    sndr = bits * 20 * math.log10(2) + 10 * math.log10(1.5)
    return c["adc_energy_scale"] / (2.0 * 10 ** ((foms - sndr) / 10))


def adc_area(bits, rate_hz, c):
    """Area (um^2) of one such ADC at the chip's node (survey regression, see file)."""
    e_pj = adc_energy(bits, rate_hz, c) / c["adc_energy_scale"] * 1e12
    return c["adc_area_scale"] * math.exp(
        c["adc_area_intercept"] + c["adc_area_per_ln_hz"] * math.log(rate_hz)
        + c["adc_area_per_ln_nm"] * math.log(c["node_nm"]) + c["adc_area_per_bit"] * bits
        + c["adc_area_per_ln_pj"] * math.log(e_pj))


# ------------------------------------------------------------------------------------------
# Configuration
# ------------------------------------------------------------------------------------------

@dataclass(frozen=True, kw_only=True)
class ChipConfig:
    """One chip: the encoder it holds and the hardware parameters of its units.

    model : name in ``MODELS``; hidden, heads, layers, intermediate : its shape.
    max_seq : longest sequence (the softmax row buffer of the preset), 1..4096.
    tile : ``sim.crossbar.CrossbarParams`` of the crossbar tiles (weight bits per linear come
        from ``policy``).
    policy : ``sim.policy.Policy``: MX-OP block, outliers, inlier bits per site and layer.
    array : ``sim.mixed_array.MixedArrayParams`` of one mixed array (QK^T, PV).
    arrays : mixed arrays (each runs one head at a time), 1..64.
    softmax_units : softmax units, 1..64.
    lanes : instances of each of layernorm, GELU and mxq, 1..256.
    timing : the macro contract in digital-clock cycles (``macro_timing``).
    outlier_adc : how the macros convert the columns of a one-hot outlier row read
        (``OUTLIER_ADC``): ``"full"`` (every conversion takes the ADC's ``adc_width`` SAR
        cycles, the contract the RTL implements) or ``"cell"`` (an option of the contract: a
        one-hot read yields at most ``2**cell_bits - 1`` per column, so the SAR skips the
        decisions of the bits above and resolves it in ``cell_bits`` cycles; energy only,
        ``outlier_adc_energy``).
    """

    model: str
    hidden: int
    heads: int
    layers: int
    intermediate: int
    max_seq: int
    tile: crossbar.CrossbarParams
    policy: object
    array: mixed_array.MixedArrayParams
    arrays: int
    softmax_units: int
    timing: dict
    lanes: int = 16
    outlier_adc: str = "full"

    def __post_init__(self):
        if self.model not in MODELS:
            raise ValueError(f"model must be one of {', '.join(MODELS)}, not {self.model!r}")
        for name, hi in (("arrays", 64), ("softmax_units", 64), ("lanes", 256),
                         ("max_seq", 4096)):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= hi:
                raise ValueError(f"{name} must be an integer in 1..{hi}, not {v!r}")
        if self.outlier_adc not in OUTLIER_ADC:
            raise ValueError(f"outlier_adc must be one of {', '.join(OUTLIER_ADC)}, not "
                             f"{self.outlier_adc!r}")
        if len(self.policy.layers) != self.layers:
            raise ValueError(f"policy has {len(self.policy.layers)} layers, the model "
                             f"{self.layers}")

    @property
    def d_head(self):
        return self.hidden // self.heads

    def check_seq(self, seq):
        if not isinstance(seq, int) or isinstance(seq, bool) or not 1 <= seq <= self.max_seq:
            raise ValueError(f"seq must be an integer in 1..{self.max_seq} for {self.model}, "
                             f"not {seq!r}")


def chip_config(model, constants=None, **overrides):
    """The chip for ``model`` from the units' presets, with ``overrides`` of ChipConfig fields.

    Tiles: ``sim.crossbar_ctrl.PRESETS[model]`` geometry; mixed array:
    ``sim.mixed_array.PRESETS[model]``; ``max_seq``: ``sim.softmax.PRESETS[model].max_len``;
    policy: ``sim.policy.default_policy`` (the shipped MiniLM policy, else all 5-bit inliers
    and 8-bit weights); one mixed array and one softmax unit per head; macro timing from
    ``constants`` (default: ``load_constants()``).
    """
    from . import crossbar_ctrl
    if model not in MODELS:
        raise ValueError(f"model must be one of {', '.join(MODELS)}, not {model!r}")
    shape = MODELS[model]
    cp = crossbar_ctrl.PRESETS[model]
    bc = BertConfig(vocab=30522, max_position=512, type_vocab=2, **shape)
    pol = default_policy(bc) if model == "minilm" else uniform(shape["layers"], 5, 8)
    base = dict(model=model, **shape, max_seq=softmax.PRESETS[model].max_len,
                tile=dataclasses.replace(cp.tile, tiles=4096), policy=pol,
                array=mixed_array.PRESETS[model], arrays=shape["heads"],
                softmax_units=shape["heads"],
                timing=macro_timing(constants or load_constants()))
    base.update(overrides)
    return ChipConfig(**base)


# ------------------------------------------------------------------------------------------
# Events
# ------------------------------------------------------------------------------------------

# counter names of sim.crossbar_ctrl.counters -> the names of this model's events
CTRL_EVENTS = {"adc_conversions": "adc", "dac_pulses": "dac", "cell_reads": "cell_reads",
               "outlier_reads": "row_reads", "fp_lane_ops": "fp_ops",
               "out_conversions": "outputs", "tile_pulses": "tile_pulses", "cycles": "cycles"}


def macro_timing(c):
    """The macro contract in digital-clock cycles from the constants: ``cols_per_adc``,
    ``t_read`` (read pulse) and ``t_adc`` (one conversion), rounded up to whole cycles."""
    clk = c["clock_hz"]
    return {"cols_per_adc": int(c["cols_per_adc"]),
            "t_read": max(1, math.ceil(c["read_pulse_s"] * clk - 1e-9)),
            "t_adc": max(1, math.ceil(clk / c["adc_rate_hz"] - 1e-9))}


def ctrl_params(k, n, fmt, tile, timing):
    """``sim.crossbar_ctrl.CrossbarCtrlParams`` of a resident K x N layer on ``tile``s."""
    from . import crossbar_ctrl
    fields = {f.name for f in dataclasses.fields(crossbar_ctrl.CrossbarCtrlParams)}
    kw = dict(in_features=k, out_features=n, block=fmt.block,
              outliers=fmt.for_length(k).outliers,
              act_bits=fmt.bits, rows=tile.rows, cols=tile.cols, cell_bits=tile.cell_bits,
              adc_bits=tile.adc_bits, dac_bits=tile.dac_bits, weight_bits=tile.weight_bits,
              tiles=math.prod(crossbar.tiles_needed(k, n, tile)))
    kw.update({key: v for key, v in timing.items() if key in fields})
    return crossbar_ctrl.CrossbarCtrlParams(**kw)


def linear_events(k, n, fmt, tile, vectors, timing):
    """Events of one resident K x N crossbar linear layer for ``vectors`` input vectors.

    The counters of ``hw/crossbar_ctrl.py`` as ``sim.crossbar_ctrl.counters`` predicts them
    (renamed by ``CTRL_EVENTS``: ``adc``, ``dac``, ``cell_reads``, ``row_reads``, ``fp_ops``,
    ``outputs``, ``tile_pulses``, ``cycles``), for one controller holding the layer in
    ``row_tiles x groups`` tiles with the macro ``timing`` (``macro_timing``). ``cycles``
    counts the vectors' work only: ``counters(V) - counters(0)`` (the one-time programming and
    the job's scale/bias beats left out).
    """
    from . import crossbar_ctrl
    p = ctrl_params(k, n, fmt, tile, timing)
    run, idle = crossbar_ctrl.counters(p, vectors), crossbar_ctrl.counters(p, 0)
    out = {mine: run[theirs] for theirs, mine in CTRL_EVENTS.items()}
    out["cycles"] -= idle["cycles"]
    return out


def block_beats(elems, params):
    """Beats of one MX-OP block holding ``elems`` elements on the mixed array: its ``width``
    chunks, at least one (the elements not sent count as zeros; the block's outliers ride on
    its last beat, to ``outliers`` FP units per lane: ``sim.mixed_array.beats``)."""
    return max(1, -(-elems // params.width))


def attention_events(cfg, seq, fq, fp):
    """QK^T and PV of every head of one layer, as the encoder top streams them.

    Per query row (``heads * seq`` rows): the keys in ``g = ceil(seq / lanes)`` groups of
    ``lanes`` columns, each fed the row's ``d_head / B_q`` Q blocks (``fq``: the format of Q
    along d_head); the row's scores padded to whole groups (``lg = g * lanes`` elements, masked)
    through softmax; P into mxq (``lg``, or whole blocks of B when longer than one) and into
    PV in ``d_head / lanes`` groups, each fed the P row's blocks (``fp``, block B; the last one
    ends after its elements). Returns ``(qk, pv, row)``: the mixed array's counters of the two
    phases (``beats``, ``mults`` = beats x lanes x width, ``fp_ops`` = k x lanes per block,
    ``outputs``) and the row's padded lengths ``lg`` and ``lp``. ``fp_ops`` counts every
    outlier slot; the RTL forms products for nonzero outliers only, at most this many.
    """
    a = cfg.array
    rows = cfg.heads * seq
    g = -(-seq // a.lanes)
    lg = g * a.lanes
    nbk = cfg.d_head // fq.block
    nbp = -(-lg // fp.block)
    p_blocks = [fp.block] * (nbp - 1) + [lg - (nbp - 1) * fp.block]
    gpv = -(-cfg.d_head // a.lanes)

    def phase(beats, fp_ops, outputs):
        return {"beats": beats, "mults": beats * a.lanes * a.width, "fp_ops": fp_ops * a.lanes,
                "outputs": outputs}
    qk = phase(rows * g * nbk * block_beats(fq.block, a), rows * g * nbk * fq.outliers,
               rows * lg)
    pv = phase(rows * gpv * sum(block_beats(n, a) for n in p_blocks),
               rows * gpv * nbp * fp.outliers, rows * cfg.d_head)
    return qk, pv, {"lg": lg, "lp": lg if nbp == 1 else nbp * fp.block}


def events(cfg, seq):
    """Event counts of one inference (one sequence of ``seq`` tokens) through every layer.

    Returns ``{"model", "seq", "layers": [{phase: {counter: int}}], "total": {counter: int}}``
    with the phases of ``PHASES``. Counters: crossbar phases as ``linear_events``; ``qk``/``pv``
    as ``attention_events`` (all heads); ``softmax_elems``, ``layernorm_elems``,
    ``gelu_elems``; ``mxq_elems`` (elements MX-OP-encoded for the phase's matmul input);
    ``sram_read_bits`` and ``sram_write_bits`` (on-chip buffers); ``io_bits`` (off chip: the
    layer input of the first layer in, the last layer's output out). Weights are resident:
    no weight traffic, and cell programming is not per inference.
    """
    cfg.check_seq(seq)
    L, h, i, nh, dh = seq, cfg.hidden, cfg.intermediate, cfg.heads, cfg.d_head
    pol = cfg.policy
    layers = []
    for l in range(cfg.layers):
        lp = pol.layers[l]
        fmt = {s: mxop.MXOPFormat(block=pol.block, outliers=pol.outliers, bits=lp.act_bits[s])
               for s in SITES}
        ph = {}
        for name, shape in LINEAR_SHAPES.items():
            k, n = shape(h, i)
            tile = dataclasses.replace(cfg.tile, weight_bits=lp.weight_bits[name])
            ph[name] = linear_events(k, n, fmt[name], tile, L, cfg.timing)
            ph[name]["mxq_elems"] = L * k
        qk, pv, row = attention_events(cfg, L, fmt["qk"].for_length(dh), fmt["pv"])
        ph["qk"] = dict(qk, mxq_elems=2 * L * h)                   # Q (MX-OP) and K (MX-INT)
        lv = L if L <= pol.block else -(-L // pol.block) * pol.block
        ph["pv"] = dict(pv, mxq_elems=nh * L * row["lp"] + h * lv)  # P rows, V columns
        ph["softmax"] = {"softmax_elems": nh * L * row["lg"]}
        ph["ln1"] = {"layernorm_elems": L * h}
        ph["ln2"] = {"layernorm_elems": L * h}
        ph["gelu"] = {"gelu_elems": L * i}
        # buffer traffic in words: (reads, writes) per phase
        traffic = {
            "qkv": (L * h, 3 * L * h),                    # X in; Q, K, V out
            "qk": (qk["beats"] * cfg.array.width + L * h, nh * L * row["lg"]),  # Q per group, K
            "softmax": (nh * L * row["lg"], nh * L * row["lg"]),
            "pv": (pv["beats"] * cfg.array.width + L * h, L * h),           # P per group, V
            "o": (L * h, L * h),
            "ln1": (2 * L * h, L * h),                    # O and X in; X1 out
            "ffn1": (L * h, 0),
            "gelu": (0, L * i),                           # GELU(FFN1) into the hidden buffer
            "ffn2": (L * i, L * h),
            "ln2": (2 * L * h, L * h),                    # F and X1 in; Y out
        }
        for name, (r, w) in traffic.items():
            ph[name]["sram_read_bits"] = r * WORD
            ph[name]["sram_write_bits"] = w * WORD
        ph["qkv"]["io_bits"] = L * h * WORD if l == 0 else 0
        ph["ln2"]["io_bits"] = L * h * WORD if l == cfg.layers - 1 else 0
        layers.append({name: ph[name] for name in PHASES})
    total = {}
    for lay in layers:
        for counters in lay.values():
            for key, v in counters.items():
                total[key] = total.get(key, 0) + v
    return {"model": cfg.model, "seq": seq, "layers": layers, "total": total}


ENCODER_EVENTS = {
    **{theirs: (mine, tuple(LINEAR_SHAPES)) for theirs, mine in CTRL_EVENTS.items()
       if theirs != "cycles"},
    "busy_crossbar": ("cycles", tuple(LINEAR_SHAPES)),
    "array_mults": ("mults", ("qk", "pv")), "array_fp_ops": ("fp_ops", ("qk", "pv")),
    "softmax_elems": ("softmax_elems", PHASES), "layernorm_elems": ("layernorm_elems", PHASES),
    "gelu_elems": ("gelu_elems", PHASES), "mxq_elems": ("mxq_elems", PHASES),
}
"""Counters of the encoder top (``hw/encoder.py``) -> (this model's event, the phases summed).
The controllers' ``cell_writes``, ``reprogram_writes`` and ``verify_reads`` count the one-time
programming of a layer's tiles, which neither this model nor a resident-weights encoder job
has."""


def encoder_counters(cfg, ev, layer):
    """The encoder top's counters of one layer job on ``events(cfg, seq)`` (``ev``): the
    layer's events summed as ``ENCODER_EVENTS`` says, plus what each crossbar controller counts
    for the job itself whatever its vectors (``sim.crossbar_ctrl.counters`` of 0 vectors on
    weights its tiles hold: the job beat and the scale/bias beats). Names are those of
    ``hw.encoder.counter_layout``."""
    ph = ev["layers"][layer]
    out = {name: sum(ph[p].get(mine, 0) for p in phases)
           for name, (mine, phases) in ENCODER_EVENTS.items()}
    from . import crossbar_ctrl
    lp = cfg.policy.layers[layer]
    for name, shape in LINEAR_SHAPES.items():
        k, n = shape(cfg.hidden, cfg.intermediate)
        fmt = mxop.MXOPFormat(block=cfg.policy.block, outliers=cfg.policy.outliers,
                              bits=lp.act_bits[name])
        tile = dataclasses.replace(cfg.tile, weight_bits=lp.weight_bits[name])
        job = crossbar_ctrl.counters(ctrl_params(k, n, fmt, tile, cfg.timing), 0, keep=True)
        for theirs, v in job.items():
            key = "busy_crossbar" if theirs == "cycles" else theirs
            out[key] = out.get(key, 0) + v
    return out


# ------------------------------------------------------------------------------------------
# Latency, energy, area
# ------------------------------------------------------------------------------------------

# phases that stream into one another run together; a group takes its slowest member's time
GROUPS = (("qkv",), ("qk",), ("softmax",), ("pv",), ("o", "ln1"), ("ffn1", "gelu"),
          ("ffn2", "ln2"))


def phase_times(ph, cfg, c):
    """Seconds of each phase of one layer (``events(...)["layers"][l]``)."""
    clk = c["clock_hz"]
    t = {}
    for name, ev in ph.items():
        if "cycles" in ev:                                   # crossbar controller
            t[name] = ev["cycles"] / clk
        elif "beats" in ev:                      # mixed arrays, one head at a time each
            t[name] = -(-cfg.heads // cfg.arrays) * ev["beats"] / cfg.heads / clk
        elif "softmax_elems" in ev:
            t[name] = ev["softmax_elems"] / cfg.softmax_units / clk
        else:
            n = ev.get("layernorm_elems", 0) + ev.get("gelu_elems", 0)
            t[name] = n / cfg.lanes / clk
    return t


def latency(ev, cfg, c):
    """Seconds per inference: ``{"total", "per_phase": {phase: s summed over layers}}``.

    Layers and phase groups (``GROUPS``) run one after another; the phases of a group stream
    (GELU on FFN1's outputs, add+layernorm on O's and FFN2's) and take the slowest one's time.
    """
    per = {p: 0.0 for p in PHASES}
    total = 0.0
    for ph in ev["layers"]:
        t = phase_times(ph, cfg, c)
        for p in PHASES:
            per[p] += t[p]
        total += sum(max(t[p] for p in g) for g in GROUPS)
    return {"total": total, "per_phase": per}


def op_energies(c):
    """Joules per digital event (docs/chip.md, "Energy"): operation counts x Horowitz's."""
    return {
        "int_mac": c["int8_mult_j"] + c["int32_add_j"],            # multiply, adder tree
        "fp_op": c["fp16_mult_j"] + c["int32_add_j"],              # outlier x weight, align+add
        "convert": c["fp16_mult_j"] + c["fp16_add_j"],             # x scale + bias, round
        "shift_add": c["int32_add_j"],                             # per ADC code
        "softmax": c["fp16_add_j"] + 6 * c["int32_add_j"],         # max, x-max, 2^x, sum, /sum
        "layernorm": 2 * c["fp16_add_j"] + 3 * c["fp16_mult_j"] + 2 * c["int32_add_j"],
        "gelu": c["fp16_mult_j"] + c["fp16_add_j"] + WORD * c["sram_bit_j"],   # table + lerp
        "mxq": 4 * c["int8_add_j"] + c["int32_add_j"],             # max, outlier pick, shift
    }


def cell_read_energy(c):
    """Joules of one cell read: ``V^2 * G * t`` at the mean conductance."""
    g_on, g_off = 1.0 / c["r_on_ohm"], 1.0 / c["r_off_ohm"]
    g = g_off + c["cell_level_fraction"] * (g_on - g_off)
    return c["read_voltage_v"] ** 2 * g * c["read_pulse_s"]


def outlier_adc_energy(cfg, c):
    """Joules of one conversion of a one-hot outlier row read's column.

    ``"full"``: ``E_adc`` of the ADC's width b. ``"cell"``: the same SAR ADC resolving only the
    ``cell_bits`` c low bits (the read yields at most ``2**c - 1``); SAR energy per conversion
    is power x (bits + 1) cycles (NeuroSim V1.4 ``SarADC.cpp`` line 242, ``Column_Energy =
    Column_Power * (log2(levelOutput)+1) * 1 ns``), so ``E_adc * (c + 1) / (b + 1)`` at the same
    power (conservative: the skipped MSB decisions also switch the largest capacitors)."""
    b = cfg.tile.adc_width
    e = adc_energy(b, c["adc_rate_hz"], c)
    return e * (cfg.tile.cell_bits + 1) / (b + 1) if cfg.outlier_adc == "cell" else e


def adc_part(adc, row_reads, cfg, c):
    """Joules of ``adc`` conversions of which ``row_reads * cols`` convert one-hot outlier
    row reads (``outlier_adc_energy``)."""
    n_out = row_reads * cfg.tile.cols
    return ((adc - n_out) * adc_energy(cfg.tile.adc_width, c["adc_rate_hz"], c)
            + n_out * outlier_adc_energy(cfg, c))


def energy(ev, cfg, c):
    """Joules per inference by component: ``{"total", "parts": {component: J}}``."""
    t = ev["total"]
    e = op_energies(c)
    parts = {
        "adc": adc_part(t["adc"], t["row_reads"], cfg, c),
        "dac": t["dac"] * c["dac_power_w"] * c["read_pulse_s"],
        "cells": t["cell_reads"] * c["input_one_fraction"] * cell_read_energy(c),
        "shift_add": t["adc"] * e["shift_add"],
        "int_macs": t["mults"] * e["int_mac"],
        "fp_ops": t["fp_ops"] * e["fp_op"],
        "convert": t["outputs"] * e["convert"],
        "softmax": t["softmax_elems"] * e["softmax"],
        "layernorm": t["layernorm_elems"] * e["layernorm"],
        "gelu": t["gelu_elems"] * e["gelu"],
        "mxq": t["mxq_elems"] * e["mxq"],
        "sram": (t["sram_read_bits"] + t["sram_write_bits"]) * c["sram_bit_j"],
        "offchip": t["io_bits"] * c["dram_bit_j"],
    }
    return {"total": sum(parts.values()), "parts": parts}


def tiles(cfg):
    """Crossbar tiles holding every layer's weights (each layer in its own tiles)."""
    n = 0
    for lp in cfg.policy.layers:
        for name, shape in LINEAR_SHAPES.items():
            tile = dataclasses.replace(cfg.tile, weight_bits=lp.weight_bits[name])
            rt, cg = crossbar.tiles_needed(*shape(cfg.hidden, cfg.intermediate), tile)
            n += rt * cg
    return n


def buffer_bits(cfg):
    """On-chip activation buffers at ``max_seq`` (bf16 words): X, Q, K, V, the context, the
    attention output, X1, the FFN hidden vector and the FFN output, and one head's S/P per
    mixed array."""
    L, h = cfg.max_seq, cfg.hidden
    return WORD * (L * (8 * h + cfg.intermediate) + cfg.arrays * L * L)


def _unit_area(entries, unit, model, c):
    """(logic um^2 at the chip's node, memory bits) of one instance of a synthesized unit."""
    rec = entries.get(f"{unit}/{model}") or entries.get(f"{unit}/minilm")
    if rec is None:
        raise ValueError(f"no synthesis area for {unit}; run scripts/synth_area.py "
                         f"--unit {unit}")
    scale = (c["node_nm"] / c["stdcell_node_nm"]) ** 2
    return rec["cell_area_um2"] * scale, rec["memory_bits"]


def digital_instances(cfg, *, nonlinear=True):
    """Instances of each synthesized digital unit on the chip."""
    n = {"mixed_array": cfg.arrays, "mxq": cfg.lanes,
         "crossbar_ctrl": len(LINEAR_SHAPES) * cfg.layers}        # one per linear layer
    if nonlinear:
        n.update(softmax=cfg.softmax_units, layernorm=cfg.lanes, gelu=cfg.lanes)
    return n


def area(cfg, c, entries, *, n_tiles=None, nonlinear=True):
    """Chip area in mm^2 by component: ``{"total", "parts": {component: mm^2}}``.

    Crossbar cells (``cell_f2`` F^2 each), one ADC per ``cols_per_adc`` columns and one DAC
    per row of every tile, the synthesized digital units (``entries`` from ``load_area``,
    scaled from the standard-cell node) and SRAM for their memories and the buffers.
    """
    t = tiles(cfg) if n_tiles is None else n_tiles
    f2 = (c["node_nm"] * 1e-3) ** 2                        # um^2 per F^2
    tp = cfg.tile
    n_adc = t * -(-tp.cols // int(c["cols_per_adc"]))
    parts = {
        "cells": t * tp.rows * tp.cols * c["cell_f2"] * f2,
        "adc": n_adc * adc_area(tp.adc_width, c["adc_rate_hz"], c),
        "dac": t * tp.rows * c["dac_area_um2"],
    }
    mem = buffer_bits(cfg)
    for unit, n in digital_instances(cfg, nonlinear=nonlinear).items():
        logic, bits = _unit_area(entries, unit, cfg.model, c)
        parts[unit] = n * logic
        mem += n * bits
    parts["sram"] = mem * c["sram_cell_f2"] * f2
    parts = {k: v * 1e-6 for k, v in parts.items()}
    return {"total": sum(parts.values()), "parts": parts, "tiles": t, "adcs": n_adc,
            "sram_bits": mem}


# ------------------------------------------------------------------------------------------
# Baselines
# ------------------------------------------------------------------------------------------

def _kv_products(cfg, lp, seq):
    """QK^T and PV of one head as crossbar layers: [(K, N, fmt)], K padded with zero rows to
    a power of two (at least 2) below the tile's rows, else to a multiple of them."""
    out = []
    rows = cfg.tile.rows
    for site, k, n in (("qk", cfg.d_head, seq), ("pv", seq, cfg.d_head)):
        f = mxop.MXOPFormat(block=cfg.policy.block, outliers=cfg.policy.outliers,
                            bits=lp.act_bits[site])
        k = max(2, 1 << (k - 1).bit_length()) if k < rows else -(-k // rows) * rows
        out.append((k, n, f))
    return out


def traditional(cfg, seq, c, entries):
    """A traditional crossbar design running the same encoder (docs/chip.md defines it).

    Same tiles, ADCs, DACs, clock, buffers and digital periphery as this chip, but:
    (1) crossbars for one layer only: every layer's weights come from off-chip DRAM and are
    programmed (write + verify read, row by row, all tiles in parallel) for every inference;
    (2) QK^T and PV on crossbars: K^T and V are written into tiles (``policy.kv_bits`` bits, as
    the stationary MX-INT operand of the mixed array) for every head of every layer, then Q
    and P are applied as inputs;
    (3) softmax, layernorm and GELU off the arrays: every element leaves the chip and comes
    back over a DRAM-class link, and is computed at the chip's per-element energy.
    Returns ``{"energy", "latency", "area", "offchip_bits", "cell_writes"}``.
    """
    ev = events(cfg, seq)
    t = ev["total"]
    tile_kv = dataclasses.replace(cfg.tile, weight_bits=cfg.policy.kv_bits)
    cells_per_tile = cfg.tile.rows * cfg.tile.cols
    wbits = wcells = 0
    kv = {"adc": 0, "row_reads": 0, "dac": 0, "cell_reads": 0, "fp_ops": 0, "cycles": 0}
    kv_cells = kv_rows = 0
    for lp in cfg.policy.layers:
        for name, shape in LINEAR_SHAPES.items():
            k, n = shape(cfg.hidden, cfg.intermediate)
            tile = dataclasses.replace(cfg.tile, weight_bits=lp.weight_bits[name])
            wbits += k * n * tile.weight_bits
            rt, cg = crossbar.tiles_needed(k, n, tile)
            wcells += rt * cg * cells_per_tile
        for k, n, f in _kv_products(cfg, lp, seq):
            e = linear_events(k, n, f, tile_kv, seq, cfg.timing)
            for key in kv:
                kv[key] += cfg.heads * e[key]
            rt, cg = crossbar.tiles_needed(k, n, tile_kv)
            kv_cells += cfg.heads * rt * cg * cells_per_tile
            kv_rows += min(cfg.tile.rows, k)
    link_bits = 2 * WORD * (t["softmax_elems"] + t["layernorm_elems"] + t["gelu_elems"]) \
        + wbits + t["io_bits"]
    # energy: this chip's, the mixed array replaced by crossbar reads, writes and the link
    e = dict(energy(ev, cfg, c)["parts"])
    ops = op_energies(c)
    mixed_fp = sum(ph["qk"]["fp_ops"] + ph["pv"]["fp_ops"] for ph in ev["layers"])
    e["int_macs"] = 0.0
    e["fp_ops"] += (kv["fp_ops"] - mixed_fp) * ops["fp_op"]
    e["adc"] += adc_part(kv["adc"], kv["row_reads"], cfg, c)
    e["dac"] += kv["dac"] * c["dac_power_w"] * c["read_pulse_s"]
    e["cells"] += kv["cell_reads"] * c["input_one_fraction"] * cell_read_energy(c)
    e["shift_add"] += kv["adc"] * ops["shift_add"]
    e["cell_writes"] = (wcells + kv_cells) * (c["cell_write_j"] + cell_read_energy(c))
    e["offchip"] = link_bits * c["dram_bit_j"]
    # latency: the mixed-array phases replaced by crossbar attention (heads in parallel);
    # programming (row by row, tiles in parallel) and the link transfers added
    lat = latency(ev, cfg, c)
    per = dict(lat["per_phase"])
    mixed = per["qk"] + per["pv"]
    per["qk"] = per["pv"] = 0.0
    per["attention_xbar"] = kv["cycles"] / cfg.heads / c["clock_hz"]
    per["programming"] = (cfg.layers * cfg.tile.rows + kv_rows) \
        * (c["write_pulse_s"] + c["read_pulse_s"])
    per["offchip"] = link_bits / 8 / c["dram_bytes_s"]
    total = lat["total"] - mixed + per["attention_xbar"] + per["programming"] + per["offchip"]
    # area: one layer's tiles and the K^T / V tiles of one layer at max_seq; no nonlinear units
    one = dataclasses.replace(cfg, layers=1, policy=dataclasses.replace(
        cfg.policy, layers=cfg.policy.layers[:1]))
    kv_tiles = sum(cfg.heads * math.prod(crossbar.tiles_needed(k, n, tile_kv))
                   for k, n, _ in _kv_products(cfg, cfg.policy.layers[0], cfg.max_seq))
    a = area(one, c, entries, n_tiles=tiles(one) + kv_tiles, nonlinear=False)
    a["total"] -= a["parts"].pop("mixed_array")
    return {"energy": {"total": sum(e.values()), "parts": e},
            "latency": {"total": total, "per_phase": per}, "area": a,
            "offchip_bits": link_bits, "cell_writes": wcells + kv_cells}


GPU_KEYS = {"minilm": "minilm", "bert-base": "bert_base", "bert-large": "bert_large"}


def gpu(model, batch, c):
    """The measured H100 at ``batch`` 1 or 32: seconds per batch, joules per sequence."""
    if batch not in (1, 32):
        raise ValueError(f"the GPU was measured at batch 1 and 32, not {batch!r}")
    k = f"gpu_{GPU_KEYS[model]}_b{batch}"
    return {"latency_s": c[k + "_s"], "energy_j": c[k + "_j"] / batch,
            "area_mm2": c["gpu_die_mm2"]}


def macs(cfg, seq):
    """Multiply-accumulates of one sequence: the linears and QK^T + PV, all layers."""
    h, i = cfg.hidden, cfg.intermediate
    return cfg.layers * (seq * (4 * h * h + 2 * h * i) + 2 * seq * seq * h)


def memory_wall(cfg, seq, c, ev, chip_latency):
    """Bytes moved and arithmetic intensity per inference, GPU (batch 1 and 32) and chip.

    GPU (eager PyTorch, fp16, no fusion): every weight read from HBM once per batch, every
    activation tensor written once and read once. Chip: off-chip bytes are the sentence in
    and out; on-chip bytes are the buffer traffic.
    """
    h, i, L, nh = cfg.hidden, cfg.intermediate, seq, cfg.heads
    params = cfg.layers * (4 * h * h + 2 * h * i)
    wbits = sum(LINEAR_SHAPES[n](h, i)[0] * LINEAR_SHAPES[n](h, i)[1] * lp.weight_bits[n]
                for lp in cfg.policy.layers for n in LINEAR_SHAPES)
    act = cfg.layers * (L * (3 * h + h + h + h + i + h + h) + 2 * nh * L * L) * 2
    flops = 2 * macs(cfg, seq)
    out = {"params": params, "flops": flops, "activation_bytes": act,
           "weight_bytes_fp16": 2 * params, "weight_bytes_chip": wbits / 8}
    for b in (1, 32):
        hbm = 2 * params / b + 2 * act
        g = gpu(cfg.model, b, c)
        out[f"gpu_b{b}"] = {"hbm_bytes": hbm, "intensity": flops / hbm,
                            "flops_s": flops * b / g["latency_s"]}
    off = ev["total"]["io_bits"] / 8
    sram = (ev["total"]["sram_read_bits"] + ev["total"]["sram_write_bits"]) / 8
    out["chip"] = {"offchip_bytes": off, "sram_bytes": sram, "intensity": flops / off,
                   "intensity_sram": flops / sram, "flops_s": flops / chip_latency}
    out["h100_peak_flops"] = c["gpu_peak_fp16_flops"]
    out["h100_hbm_bytes_s"] = c["gpu_hbm_bytes_s"]
    return out


def opal(cfg, c, entries):
    """OPAL's comparison: the mixed array against the bf16 array, energy per MAC and area."""
    e = op_energies(c)
    fmt = mxop.MXOPFormat(block=cfg.policy.block, outliers=cfg.policy.outliers, bits=5)
    mixed = e["int_mac"] + fmt.outliers / fmt.block * e["fp_op"]
    bf16 = c["fp16_mult_j"] + c["fp32_add_j"]
    am = _unit_area(entries, "mixed_array", cfg.model, c)
    ab = _unit_area(entries, "bf16_array", cfg.model, c)
    f2 = (c["node_nm"] * 1e-3) ** 2 * c["sram_cell_f2"]
    return {"mixed_j_per_mac": mixed, "bf16_j_per_mac": bf16,
            "mixed_area_mm2": (am[0] + am[1] * f2) * 1e-6,
            "bf16_area_mm2": (ab[0] + ab[1] * f2) * 1e-6,
            "energy_ratio": bf16 / mixed, "area_ratio": (ab[0] + ab[1] * f2)
            / (am[0] + am[1] * f2)}


def report(model, seq=128, batch=1, *, overrides=None, cfg=None, constants=None,
           entries=None):
    """Everything for one model and sequence length: a JSON-ready dict.

    ``batch`` picks the GPU figure the headline ``vs_gpu_energy`` uses (1 or 32); both are
    always reported (``vs_gpu_batch1_energy``, ``vs_gpu_batch32_energy``). The chip runs one
    sequence at a time: its energy per sequence does not depend on the batch. ``outlier_adc``
    holds the energy under each ``OUTLIER_ADC`` choice (``cfg.outlier_adc`` is the headline's).
    """
    if model not in GPU_KEYS:
        raise ValueError(f"model must be one of {', '.join(GPU_KEYS)}, not {model!r}")
    if batch not in (1, 32):
        raise ValueError(f"batch must be 1 or 32 (the measured GPU batches), not {batch!r}")
    c = constants or load_constants(overrides=overrides)
    cfg = cfg or chip_config(model, c)
    entries = entries or load_area()
    ev = events(cfg, seq)
    lat = latency(ev, cfg, c)
    en = energy(ev, cfg, c)
    ar = area(cfg, c, entries)
    trad = traditional(cfg, seq, c, entries)
    g1, g32 = gpu(model, 1, c), gpu(model, 32, c)
    chip_ad = ar["total"] * lat["total"]
    by_adc = {}
    for mode in OUTLIER_ADC:
        e = energy(ev, dataclasses.replace(cfg, outlier_adc=mode), c)
        by_adc[mode] = {"energy_j": e["total"], "adc_share": e["parts"]["adc"] / e["total"],
                        "vs_gpu_batch1_energy": g1["energy_j"] / e["total"],
                        "vs_gpu_batch32_energy": g32["energy_j"] / e["total"]}
    return {
        "model": model, "seq": seq, "batch": batch,
        "energy_j": en["total"], "latency_s": lat["total"], "area_mm2": ar["total"],
        "vs_gpu_batch1_energy": g1["energy_j"] / en["total"],
        "vs_gpu_batch32_energy": g32["energy_j"] / en["total"],
        "vs_gpu_energy": gpu(model, batch, c)["energy_j"] / en["total"],
        "vs_gpu_latency": gpu(model, batch, c)["latency_s"] / lat["total"],
        "vs_traditional_energy": trad["energy"]["total"] / en["total"],
        "vs_traditional_area": trad["area"]["total"] / ar["total"],
        "vs_traditional_latency": trad["latency"]["total"] / lat["total"],
        "vs_gpu_area_delay": g1["area_mm2"] * g1["latency_s"] / chip_ad,
        "vs_traditional_area_delay": trad["area"]["total"] * trad["latency"]["total"] / chip_ad,
        "energy": en, "latency": lat, "area": ar,
        "traditional": {k: trad[k] for k in ("energy", "latency", "area", "offchip_bits",
                                             "cell_writes")},
        "gpu": {"batch1": g1, "batch32": g32},
        "outlier_adc": by_adc,
        "opal": opal(cfg, c, entries),
        "memory_wall": memory_wall(cfg, seq, c, ev, lat["total"]),
        "events": ev["total"],
        "config": {"tile": dataclasses.asdict(cfg.tile), "array": dataclasses.asdict(cfg.array),
                   "arrays": cfg.arrays, "softmax_units": cfg.softmax_units,
                   "lanes": cfg.lanes, "max_seq": cfg.max_seq, "node_nm": c["node_nm"],
                   "clock_hz": c["clock_hz"], "timing": cfg.timing,
                   "adc_bits": cfg.tile.adc_width,
                   "adc_j": adc_energy(cfg.tile.adc_width, c["adc_rate_hz"], c),
                   "outlier_adc": cfg.outlier_adc,
                   "outlier_adc_j": outlier_adc_energy(cfg, c)},
    }
