"""cocotb side of the encoder: its testbench class, and the run behind ``xbarllm embed
--engine rtl``.

``EncoderTB`` drives the encoder's streams (programming beats, sentence jobs, tokens) and
checks or collects its output tokens; ``tests/test_encoder.py`` builds its regressions on it.
``encoder_embed`` is the cocotb test that ``gen.encoder_run`` starts: the weights are
preloaded, the sentences' layer inputs come from an ``.npz`` file, every layer's output goes
to another, and a line per finished layer goes to a progress file.
"""

import json
import os

import numpy as np

import cocotb
from cocotb.triggers import ClockCycles

from hw.encoder import counter_layout, out_layout, prog_layout, seq_layout, token_layout
from sim.encoder import encoder, program_beats

from . import streamkit

__all__ = ["EncoderTB", "ENV_RUN"]

ENV_RUN = "XBARLLM_ENCODER_RUN"
"""JSON: {"inputs": npz, "outputs": npz, "progress": file[, "profile": file]}."""


class EncoderTB(streamkit.TB):
    """encoder: sources ``i_w``, ``i_seq``, ``i``; sink ``o`` with its scoreboard."""

    def __init__(self, dut, **stalls):
        super().__init__(dut, **stalls)
        p = self.params
        self.prog = self.source("i_w", prog_layout(p))
        self.seq = self.source("i_seq", seq_layout(p))
        self.tok = self.source("i", token_layout(p))
        self.out = self.sink("o", out_layout(p), show=self.show)

    def show(self, word):
        f = self.out.sink.packer.unpack(word)
        y = [f"{f[f'y.{e}']:04x}" for e in range(min(self.params.hidden, 6))]
        return f"(layer {f['layer']}, last {f['last']}, y[:6] {' '.join(y)})"

    @staticmethod
    def vectors(name, arr):
        """Packer fields ``name.e`` of the rows of ``arr`` (n, hidden)."""
        return {f"{name}.{e}": arr[:, e] for e in range(arr.shape[1])}

    def program(self, weights):
        """Queue the programming beats of ``weights``; return their number."""
        sel, addr, dat = program_beats(weights, self.params)
        words = self.prog.packer.pack(sel=np.array(sel), addr=np.array(addr))
        off = self.prog.packer.fields["data"][0]
        self.prog.send([w | d << off for w, d in zip(words, dat)])
        return len(sel)

    async def programmed(self):
        """Wait until every programming beat was taken (before sentences are sent)."""
        while not self.prog.empty:
            await ClockCycles(self.dut.clk, 64)

    def send(self, x, first, count):
        """Queue one sentence job: tokens ``x`` (L, hidden) bf16, layers ``first`` ..
        ``first + count - 1``."""
        self.seq.send(length=np.array([x.shape[0]]), first=np.array([first]),
                      count=np.array([count]))
        self.tok.send(**self.vectors("x", x))

    def expect(self, y, first):
        """Queue the expected output tokens ``y`` (count, L, hidden) of layers ``first``..."""
        count, length = y.shape[:2]
        last = (np.arange(length) == length - 1).astype(np.int64)
        for c in range(count):
            self.out.expect(layer=np.full(length, first + c), last=last,
                            **self.vectors("y", y[c]))

    def sentence(self, weights, x, first, count):
        """Queue a sentence job and its expected outputs (``sim.encoder.encoder``)."""
        self.expect(encoder(weights, x, self.params, first=first, count=count), first)
        self.send(x, first, count)
        return count * x.shape[0]

    def counters(self):
        """The counter port, by name."""
        return streamkit.Packer(counter_layout(self.params)).unpack(
            int(self.dut.counters.value))

    async def progress(self, every=500_000):
        """Log the output tokens received and the phase counters every ``every`` cycles."""
        while True:
            await ClockCycles(self.dut.clk, every)
            c = self.counters()
            cocotb.log.info("cycle %d: %d output tokens; %s", self.cycle, self.out.index,
                            " ".join(f"{k[7:]}={v}" for k, v in c.items()
                                     if k.startswith("cycles_")))


async def profile(tb, path, every=50_000):
    """Append the wall-clock time and the counters to ``path`` every ``every`` cycles."""
    import time
    with open(path, "w", encoding="utf-8") as f:
        while True:
            f.write(json.dumps({"wall": time.monotonic(), "counters": tb.counters()}) + "\n")
            f.flush()
            await ClockCycles(tb.dut.clk, every)


@cocotb.test()
async def encoder_embed(dut):
    """Run the sentences of ``ENV_RUN``'s inputs through every layer; save the outputs."""
    run = json.loads(os.environ[ENV_RUN])
    tb = EncoderTB(dut, idle=0.0, backpressure=0.0)
    p = tb.params
    inp = np.load(run["inputs"])
    xs = [inp[f"x{i}"] for i in range(int(inp["n"]))]
    first, count = int(inp["first"]), int(inp["count"])
    got = []
    pk = tb.out.sink.packer
    tb.out.sink.callback = got.append           # collect instead of comparing
    await tb.start()
    if run.get("profile"):
        cocotb.start_soon(profile(tb, run["profile"]))
    done = 0
    with open(run["progress"], "a", encoding="utf-8") as prog:
        for i, x in enumerate(xs):
            tb.send(x, first, count)
            for c in range(count):
                done += x.shape[0]
                while len(got) < done:
                    await ClockCycles(dut.clk, 256)
                prog.write(json.dumps({"sentence": i, "layer": first + c,
                                       "cycle": tb.cycle}) + "\n")
                prog.flush()
    out = {}
    n = 0
    for i, x in enumerate(xs):
        ys = np.zeros((count, x.shape[0], p.hidden), dtype=np.uint16)
        for c in range(count):
            for t in range(x.shape[0]):
                f = pk.unpack(got[n])
                n += 1
                ys[c, t] = [f[f"y.{e}"] for e in range(p.hidden)]
        out[f"y{i}"] = ys
    np.savez(run["outputs"], counters=json.dumps(tb.counters()), **out)
    tb.report(vectors=n)
