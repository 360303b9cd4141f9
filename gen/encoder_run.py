"""Run sentences through the generated encoder on Verilator (``xbarllm embed --engine rtl``).

``prepare`` builds the encoder for a model, a policy and a preset (generation and the
Verilator build are cached in ``build/encoder-run-<tag>/``, keyed by the parameters; the
Verilog is generated again only when they or the generator's sources change) and writes
the model's weights as preload files (the fast load path: ``$readmemh`` of every programmed
memory, ``sim.encoder.memory_image``; cached per model, policy and preset). ``run`` sends the
sentences' layer inputs through every layer in one simulation and returns every layer's
output. The embedding lookup before the first layer and the pooling after the last stay on
the host.
"""

import dataclasses
import hashlib
import json
import os
import threading
import time

import numpy as np

from sim import encoder as enc
from sim.params import params_to_dict

from .build import UsageError
from .harness import BUILD, ROOT, run_cocotb, verilog

__all__ = ["EncoderRun", "prepare", "check_model"]


def check_model(params, config, preset):
    """Raise ``UsageError`` unless the model's shape is the encoder's."""
    for name, want in (("hidden", params.hidden), ("heads", params.heads),
                       ("intermediate", params.intermediate), ("layers", params.layers)):
        got = getattr(config, name)
        if got != want:
            raise UsageError(f"the model's {name} is {got}, but the encoder preset {preset!r} "
                             f"has {name} {want}; choose a matching --preset")


def _tag(obj):
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:10]


def _sources_digest():
    """A digest of the generator's sources (``hw/``, ``sim/``, ``gen/``): the cached Verilog
    is valid while it is unchanged."""
    h = hashlib.sha1()
    for d in ("hw", "sim", "gen"):
        for f in sorted((ROOT / d).glob("*.py")):
            h.update(f.name.encode() + f.read_bytes())
    return h.hexdigest()


def _cached_verilog(params, bdir, log=None):
    """The encoder's Verilog for ``params``: ``bdir/encoder.v`` when its key (parameters and
    sources) matches, else generated (minutes at MiniLM) and the key written."""
    key = _tag([params_to_dict(params), _sources_digest()])
    src, stamp = bdir / "encoder.v", bdir / "encoder.v.key"
    if src.exists() and stamp.exists() and stamp.read_text() == key:
        return src.read_text()
    if log:
        log("generating the encoder's Verilog (minutes for a model's preset; cached after)")
    text = verilog("encoder", params)
    bdir.mkdir(parents=True, exist_ok=True)
    stamp.unlink(missing_ok=True)
    src.write_text(text)
    stamp.write_text(key)
    return text


@dataclasses.dataclass
class EncoderRun:
    """A built encoder with a model's weights ready to preload."""

    params: object
    build_dir: object
    plusargs: list
    log: object = None

    def run(self, xs, *, first=0, count=None, progress=None, profile=False):
        """Every layer's output for sentences ``xs`` (list of (L, hidden) bf16 layer inputs):
        a list of (count, L, hidden) bf16 arrays, and the counters. ``progress(sentence,
        layer)`` is called as each layer of each sentence comes out. With ``profile``, the
        counters also hold ``"profile"``: (wall-clock seconds, counters) samples every 50,000
        cycles."""
        p = self.params
        count = p.layers - first if count is None else count
        for i, x in enumerate(xs):
            if not 1 <= x.shape[0] <= p.max_len:
                raise UsageError(f"sentence {i + 1} has {x.shape[0]} tokens; the encoder takes "
                                 f"1..{p.max_len} (max_len of the preset)")
        work = self.build_dir / f"run-{os.getpid()}"
        work.mkdir(parents=True, exist_ok=True)
        files = {k: str(work / f"{k}{ext}") for k, ext in (("inputs", ".npz"),
                                                           ("outputs", ".npz"),
                                                           ("progress", ".jsonl"),
                                                           ("profile", ".jsonl"))}
        if not profile:
            del files["profile"]
        np.savez(files["inputs"], n=len(xs), first=first, count=count,
                 **{f"x{i}": x for i, x in enumerate(xs)})
        open(files["progress"], "w").close()
        stop = threading.Event()

        def watch():
            seen = 0
            while not stop.is_set():
                time.sleep(0.5)
                with open(files["progress"], encoding="utf-8") as f:
                    lines = f.read().splitlines()
                for line in lines[seen:]:
                    rec = json.loads(line)
                    if progress:
                        progress(rec["sentence"], rec["layer"])
                seen = len(lines)

        t = threading.Thread(target=watch, daemon=True)
        t.start()
        try:
            text = _cached_verilog(p, self.build_dir, self.log)
            run_cocotb("encoder", p, case=self.build_dir.name[len("encoder-"):],
                       test_module="gen.encoder_tb", testcase="encoder_embed",
                       build_dir=self.build_dir, plusargs=self.plusargs,
                       top=("encoder", text),
                       env={"XBARLLM_ENCODER_RUN": json.dumps(files)})
        finally:
            stop.set()
            t.join()
        out = np.load(files["outputs"])
        ys = [out[f"y{i}"] for i in range(len(xs))]
        counters = json.loads(str(out["counters"]))
        if profile:
            with open(files["profile"], encoding="utf-8") as f:
                samples = [json.loads(line) for line in f]
            counters["profile"] = [(s["wall"] - samples[0]["wall"], s["counters"])
                                   for s in samples]
        return ys, counters


def prepare(params, weights, *, key, log=None):
    """Build (or reuse) the encoder for ``params`` and its preload files for ``weights``
    (``sim.quant.LayerWeights`` per layer); ``key`` names the weights (model path, policy)
    for the cache. Returns an ``EncoderRun``."""
    tag = _tag(params_to_dict(params))
    bdir = (BUILD / f"encoder-run-{tag}").resolve()
    wdir = bdir / f"preload-{_tag([key, tag])}"
    if not (wdir / "done").exists():
        if log:
            log(f"writing the preload image to {wdir}")
        wdir.mkdir(parents=True, exist_ok=True)
        mems = enc.program_memories(params)
        for name, words in enc.memory_image(weights, params).items():
            (wdir / f"{name}.hex").write_text(enc.hex_words(words, mems[name]["width"]))
        (wdir / "done").write_text("")
    plusargs = [f"+xbarllm_preload_{name}={wdir / f'{name}.hex'}" for name in enc.PROGRAM]
    return EncoderRun(params, bdir, plusargs, log)
