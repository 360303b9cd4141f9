"""TEMPORARY: the stream kit before gen.streamkit.TB; removed once every test module uses TB.

Every driver acts on the falling clock edge and samples after the design settles
(``ReadOnly``) on the same edge, so a handshake it sees is the one the rising edge will take;
this works the same on Verilator and Icarus. Idle and backpressure come from seeded random
patterns. The ``Scoreboard`` compares beats in order and reports index, expected and actual.
"""

import json
import os

import numpy as np

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, FallingEdge, ReadOnly, RisingEdge

from .harness import ENV_PARAMS, ENV_REPORT
from sim.params import params_from_dict

__all__ = ["params_from_env", "seed_from_env", "samples_from_env", "clock_reset", "Packer",
           "StreamSource", "StreamSink", "Scoreboard", "stall_patterns", "report",
           "count_cycles"]


def params_from_env():
    """The params object the harness built the design for."""
    from hw.common import units
    spec = json.loads(os.environ[ENV_PARAMS])
    return params_from_dict(units()[spec["unit"]].params, spec["params"])


def seed_from_env(default=1):
    seed = int(os.environ.get("XBARLLM_SEED", default))
    cocotb.log.info("seed %d (set XBARLLM_SEED to change)", seed)
    return seed


def samples_from_env(default):
    return int(os.environ.get("NUM_SAMPLES", default))


async def clock_reset(dut, period_ns=10):
    """Start ``dut.clk`` and hold ``dut.rst`` for two cycles."""
    cocotb.start_soon(Clock(dut.clk, period_ns, unit="ns").start())
    dut.rst.value = 1
    await ClockCycles(dut.clk, 2)
    await FallingEdge(dut.clk)
    dut.rst.value = 0


class Packer:
    """Pack numpy field arrays into payload integers and back, by an Amaranth layout.

    Field offsets and widths come from the layout defined in ``hw/``, so a bit layout is
    defined once. Nested fields are named with dots (``"lane.0.q"``); signed fields unpack
    to signed values.
    """

    def __init__(self, layout):
        from amaranth.hdl import Shape
        from hw.common import layout_fields
        self.layout = layout
        self.width = Shape.cast(layout).width
        self.fields = layout_fields(layout)

    def pack(self, **fields):
        """Payload ints (a list) from equally shaped arrays, one per field (others are 0)."""
        unknown = set(fields) - set(self.fields)
        if unknown:
            raise KeyError(f"unknown fields {sorted(unknown)}; layout has {sorted(self.fields)}")
        n = None
        words = None
        for name, arr in fields.items():
            off, width, _ = self.fields[name]
            a = np.asarray(arr).astype(np.int64).ravel()
            n = a.size if n is None else n
            if a.size != n:
                raise ValueError(f"field {name} has {a.size} values, expected {n}")
            vals = (a & ((1 << width) - 1)).astype(object) if width < 63 else a.astype(object)
            part = [int(v) << off for v in vals]
            words = part if words is None else [w | v for w, v in zip(words, part)]
        return words or []

    def unpack(self, word):
        """Dict field -> int of one payload integer."""
        out = {}
        for name, (off, width, signed) in self.fields.items():
            v = (word >> off) & ((1 << width) - 1)
            if signed and v >> (width - 1):
                v -= 1 << width
            out[name] = v
        return out


def stall_patterns(rng, p, n):
    """``n`` booleans, True meaning idle/stall, in bursts: probability ``p`` per cycle."""
    if p <= 0:
        return np.zeros(n, dtype=bool)
    runs = rng.geometric(0.5, size=n)
    draw = rng.random(n) < p
    return np.repeat(draw, runs)[:n]


class _Port:
    def __init__(self, dut, name):
        self.dut = dut
        self.valid = getattr(dut, f"{name}__valid")
        self.ready = getattr(dut, f"{name}__ready")
        self.payload = getattr(dut, f"{name}__payload", None)
        self.name = name
        self.clk = dut.clk


class StreamSource(_Port):
    """Drive an input stream port from a queue of payload ints with random idle cycles.

    Holds valid and payload until the transfer (lib.stream rules); never waits for ready.
    """

    def __init__(self, dut, name, *, idle=0.0, seed=0):
        super().__init__(dut, name)
        self.queue = []
        self.pos = 0
        self.sent = 0
        self.idle = idle
        self.rng = np.random.default_rng(seed)
        self._pattern = np.zeros(0, dtype=bool)
        self._pi = 0
        self.valid.value = 0
        self._task = cocotb.start_soon(self._run())

    def send(self, words):
        self.queue.extend(words)

    @property
    def empty(self):
        return self.pos >= len(self.queue)

    def _stall(self):
        if self._pi >= len(self._pattern):
            self._pattern = stall_patterns(self.rng, self.idle, 4096)
            self._pi = 0
        self._pi += 1
        return self._pattern[self._pi - 1]

    async def _run(self):
        driving = False
        while True:
            await FallingEdge(self.clk)
            if not driving and self.pos < len(self.queue) and not self._stall():
                if self.payload is not None:
                    self.payload.value = self.queue[self.pos]
                self.valid.value = 1
                driving = True
            elif not driving:
                self.valid.value = 0
            await ReadOnly()
            if driving and int(self.ready.value):
                self.pos += 1
                self.sent += 1
                driving = False
                # valid drops at the next falling edge unless another beat follows


class StreamSink(_Port):
    """Accept an output stream with random backpressure; hand each beat to ``callback``."""

    def __init__(self, dut, name, *, backpressure=0.0, seed=0, callback=None):
        super().__init__(dut, name)
        self.received = 0
        self.backpressure = backpressure
        self.rng = np.random.default_rng(seed + 7919)
        self.callback = callback
        self._pattern = np.zeros(0, dtype=bool)
        self._pi = 0
        self.ready.value = 0
        self._task = cocotb.start_soon(self._run())

    def _stall(self):
        if self._pi >= len(self._pattern):
            self._pattern = stall_patterns(self.rng, self.backpressure, 4096)
            self._pi = 0
        self._pi += 1
        return self._pattern[self._pi - 1]

    async def _run(self):
        while True:
            await FallingEdge(self.clk)
            self.ready.value = 0 if self._stall() else 1
            await ReadOnly()
            if int(self.valid.value) and int(self.ready.value):
                self.received += 1
                word = int(self.payload.value) if self.payload is not None else 0
                if self.callback:
                    self.callback(word)


class Scoreboard:
    """In-order comparison of sink beats against expected payload ints.

    ``show`` turns a payload int into something readable for messages (e.g.
    ``Packer.unpack``). ``check()`` asserts no mismatch, no missing and no extra beat.
    """

    def __init__(self, sink, expected, *, show=None, name="o", max_report=10):
        self.expected = list(expected)
        self.show = show or hex
        self.name = name
        self.index = 0
        self.mismatches = 0
        self.extra = 0
        self.max_report = max_report
        self.log = cocotb.log
        sink.callback = self._on_beat
        self.sink = sink

    def _on_beat(self, word):
        i = self.index
        self.index += 1
        if i >= len(self.expected):
            self.extra += 1
            if self.extra <= self.max_report:
                self.log.error("%s beat %d: unexpected extra beat %s", self.name, i,
                               self.show(word))
            return
        exp = self.expected[i]
        if word != exp:
            self.mismatches += 1
            if self.mismatches <= self.max_report:
                self.log.error("%s beat %d: expected %s, actual %s", self.name, i,
                               self.show(exp), self.show(word))

    @property
    def done(self):
        return self.index >= len(self.expected)

    async def wait(self, clk, timeout_cycles):
        """Wait until every expected beat arrived (or time out), then a few idle cycles."""
        for _ in range(timeout_cycles):
            if self.done:
                break
            await RisingEdge(clk)
        await ClockCycles(clk, 16)   # anything arriving now is an extra beat

    def check(self):
        missing = len(self.expected) - min(self.index, len(self.expected))
        assert self.mismatches == 0, f"{self.name}: {self.mismatches} mismatching beats"
        assert missing == 0, f"{self.name}: {missing} of {len(self.expected)} beats missing"
        assert self.extra == 0, f"{self.name}: {self.extra} extra beats"


def report(*, vectors, beats, mismatches, cycles, **extra):
    """Append one test's figures to the harness report file."""
    path = os.environ.get(ENV_REPORT)
    rec = dict(vectors=vectors, beats=beats, mismatches=mismatches, cycles=cycles, **extra)
    cocotb.log.info("report: %s", rec)
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(rec) + "\n")


async def count_cycles(clk, counter):
    """Count rising edges into ``counter[0]`` (for throughput figures)."""
    while True:
        await RisingEdge(clk)
        counter[0] += 1

