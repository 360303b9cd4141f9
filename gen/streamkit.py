"""cocotb verification kit for Amaranth stream ports (``<port>__payload/valid/ready``).

One Source, Sink and Scoreboard serve every stream of every unit (as cocotbext-axi's
``define_stream`` does for its buses), and ``TB`` is the base of every unit's testbench:
clock, reset, sources and sinks with random idle and backpressure, in-order scoreboards and
the report the harness reads. Each ``tests/test_<unit>.py`` has one shape: a ``TB``
subclass, a ``run_test`` coroutine, ``@cocotb.test`` cases and a pytest runner at the bottom.

Drivers act in the low half of the clock: they change signals on the falling edge and
sample after the design settles (``ReadOnly``), so a handshake they see is the one the next
rising edge takes; this works the same on Verilator and Icarus. Python stays off the
per-cycle path: a driver wakes once per beat, per idle run (``ClockCycles``) and when the
other side's ``valid``/``ready`` changes, never on every clock edge.
"""

import json
import os

import numpy as np

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import (ClockCycles, Event, FallingEdge, ReadOnly, RisingEdge,
                             with_timeout)
from cocotb.utils import get_sim_time

from sim.params import params_from_dict

from .harness import ENV_PARAMS, ENV_REPORT, ENV_SEED

__all__ = ["params_from_env", "seed_from_env", "samples_from_env", "Packer", "StreamSource",
           "StreamSink", "Scoreboard", "TB", "stall_runs"]


def params_from_env():
    """The params object the harness built the design for."""
    from hw.common import units
    spec = json.loads(os.environ[ENV_PARAMS])
    return params_from_dict(units()[spec["unit"]].params, spec["params"])


def seed_from_env():
    """The run's seed (chosen and printed by the harness; ``XBARLLM_SEED`` reproduces it)."""
    seed = int(os.environ.get(ENV_SEED, "1"), 0)
    cocotb.log.info("seed %d (set %s=%d to reproduce)", seed, ENV_SEED, seed)
    return seed


def samples_from_env(default):
    return int(os.environ.get("NUM_SAMPLES", default))


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


def stall_runs(rng, p, n):
    """``n`` idle-run lengths (cycles before each beat): with probability ``p`` a run of
    geometric length (mean 2), else 0. ``p = 0`` gives no stalls."""
    if p <= 0:
        return np.zeros(n, dtype=np.int64)
    return np.where(rng.random(n) < p, rng.geometric(0.5, size=n), 0)


class _Port:
    def __init__(self, tb, name, layout, rate):
        dut = tb.dut
        self.tb = tb
        self.name = name
        self.clk = dut.clk
        self.valid = getattr(dut, f"{name}__valid")
        self.ready = getattr(dut, f"{name}__ready")
        self.payload = getattr(dut, f"{name}__payload", None)
        self.packer = Packer(layout) if layout is not None else None
        self.rate = rate
        self.rng = np.random.default_rng([tb.seed, len(tb.ports)])
        self._runs = np.zeros(0, dtype=np.int64)
        self._ri = 0
        self.times = []         # cycle of every transfer
        self.count = 0

    def _next_run(self):
        if self._ri >= len(self._runs):
            self._runs = stall_runs(self.rng, self.rate, 4096)
            self._ri = 0
        self._ri += 1
        return int(self._runs[self._ri - 1])

    async def _until_high(self, sig):
        """Return in the low clock phase (after ReadOnly) with ``sig`` high: the next rising
        edge takes the handshake (the caller holds its own side high)."""
        while True:
            await ReadOnly()
            if int(sig.value):
                if not int(self.clk.value):
                    return
                await FallingEdge(self.clk)
            else:
                await RisingEdge(sig)


class StreamSource(_Port):
    """Drive an input stream from a queue of payload ints with random idle cycles.

    Raises valid without waiting for ready and holds valid and payload until the transfer
    (lib.stream rules). ``idle`` is the probability of an idle run before a beat.
    """

    def __init__(self, tb, name, layout=None, *, idle=0.0):
        super().__init__(tb, name, layout, idle)
        self.queue = []
        self.pos = 0
        self._more = Event()
        self.valid.value = 0
        self._task = cocotb.start_soon(self._run())

    def send(self, words=None, **fields):
        """Queue payload ints, or field arrays packed by the port's layout."""
        if fields:
            words = self.packer.pack(**fields)
        self.queue.extend(words)
        self._more.set()

    @property
    def empty(self):
        return self.pos >= len(self.queue)

    def clear(self):
        """Drop every beat not yet transferred (after a reset)."""
        del self.queue[self.pos:]

    async def _run(self):
        await FallingEdge(self.clk)
        while True:
            if self.pos >= len(self.queue):
                self.valid.value = 0
                self._more.clear()
                await self._more.wait()
                await FallingEdge(self.clk)
                continue
            idle = self._next_run()
            if idle:
                self.valid.value = 0
                await ClockCycles(self.clk, idle, rising=False)
                if self.pos >= len(self.queue):
                    continue
            if self.payload is not None:
                self.payload.value = self.queue[self.pos]
            self.valid.value = 1
            await self._until_high(self.ready)
            self.pos += 1
            self.count += 1
            self.times.append(self.tb.cycle + 1)
            await FallingEdge(self.clk)


class StreamSink(_Port):
    """Accept an output stream with random backpressure; hand each beat to ``callback``.

    ``backpressure`` is the probability of a run of cycles with ready low before a beat.
    """

    def __init__(self, tb, name, layout=None, *, backpressure=0.0, callback=None):
        super().__init__(tb, name, layout, backpressure)
        self.callback = callback
        self.ready.value = 0
        self._task = cocotb.start_soon(self._run())

    async def _run(self):
        await FallingEdge(self.clk)
        while True:
            stall = self._next_run()
            if stall:
                self.ready.value = 0
                await ClockCycles(self.clk, stall, rising=False)
            self.ready.value = 1
            await self._until_high(self.valid)
            word = int(self.payload.value) if self.payload is not None else 0
            self.count += 1
            self.times.append(self.tb.cycle + 1)
            if self.callback:
                self.callback(word)
            await FallingEdge(self.clk)


class Scoreboard:
    """In-order comparison of a sink's beats against expected payload ints.

    ``show`` turns a payload int into something readable for messages (default: the sink's
    ``Packer.unpack``). ``check()`` asserts no mismatch, no missing and no extra beat.
    """

    def __init__(self, sink, *, show=None, max_report=10):
        self.sink = sink
        self.name = sink.name
        self.expected = []
        self.show = show or (sink.packer.unpack if sink.packer else hex)
        self.index = 0
        self.mismatches = 0
        self.extra = 0
        self.max_report = max_report
        self.log = cocotb.log
        self._done = Event()
        self._done.set()
        sink.callback = self._on_beat

    def expect(self, words=None, **fields):
        """Queue expected payload ints, or field arrays packed by the sink's layout."""
        if fields:
            words = self.sink.packer.pack(**fields)
        self.expected.extend(words)
        if not self.done:
            self._done.clear()

    def _on_beat(self, word):
        i = self.index
        self.index += 1
        if self.done:
            self._done.set()
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

    def clear(self):
        """Forget expected beats not yet received (after a reset)."""
        del self.expected[self.index:]
        self._done.set()

    def check(self):
        missing = len(self.expected) - min(self.index, len(self.expected))
        assert self.mismatches == 0, f"{self.name}: {self.mismatches} mismatching beats"
        assert missing == 0, f"{self.name}: {missing} of {len(self.expected)} beats missing"
        assert self.extra == 0, f"{self.name}: {self.extra} extra beats"


class TB:
    """Base of every unit's testbench.

    Builds nothing itself: a unit's ``TB`` subclass declares its ports with ``source`` and
    ``sink`` (each sink gets a ``Scoreboard``), queues stimulus and expected beats, awaits
    ``drain``, and calls ``report``. The seed, the params and ``NUM_SAMPLES`` come from the
    harness; ``idle`` and ``backpressure`` are the default stall probabilities of the ports.
    """

    period_ns = 10

    def __init__(self, dut, *, idle=0.25, backpressure=0.3):
        self.dut = dut
        self.params = params_from_env()
        self.seed = seed_from_env()
        self.rng = np.random.default_rng(self.seed)
        self.idle = idle
        self.backpressure = backpressure
        self.ports = []
        self.sources = {}
        self.sinks = {}
        self.scoreboards = {}
        self._t0 = 0

    @property
    def cycle(self):
        """Clock cycles since the end of the last ``start`` (from the simulation time)."""
        return int(get_sim_time("ns") // self.period_ns) - self._t0

    def source(self, name, layout=None, *, idle=None):
        src = StreamSource(self, name, layout, idle=self.idle if idle is None else idle)
        self.ports.append(src)
        self.sources[name] = src
        return src

    def sink(self, name, layout=None, *, backpressure=None, show=None):
        """A sink on port ``name`` with its scoreboard (``tb.scoreboards[name]``)."""
        bp = self.backpressure if backpressure is None else backpressure
        snk = StreamSink(self, name, layout, backpressure=bp)
        self.ports.append(snk)
        self.sinks[name] = snk
        self.scoreboards[name] = Scoreboard(snk, show=show)
        return self.scoreboards[name]

    async def start(self):
        """Start the clock and reset the design (two cycles)."""
        cocotb.start_soon(Clock(self.dut.clk, self.period_ns, unit="ns").start())
        await self.reset()
        self._t0 = int(get_sim_time("ns") // self.period_ns)

    async def reset(self, cycles=2):
        self.dut.rst.value = 1
        await ClockCycles(self.dut.clk, cycles)
        await FallingEdge(self.dut.clk)
        self.dut.rst.value = 0

    async def drain(self, timeout_cycles, *, settle=16):
        """Wait until every scoreboard has all its beats (failing after ``timeout_cycles``),
        then ``settle`` more cycles (anything arriving then is an extra beat); check that
        every source was taken and every scoreboard matched."""
        for name, sb in self.scoreboards.items():
            left = max(timeout_cycles - self.cycle, 1)
            try:
                await with_timeout(sb._done.wait(), left * self.period_ns, "ns")
            except cocotb.triggers.SimTimeoutError:
                raise AssertionError(
                    f"{name}: timed out after {timeout_cycles} cycles with "
                    f"{len(sb.expected) - sb.index} of {len(sb.expected)} beats missing "
                    f"(seed {self.seed})") from None
        await ClockCycles(self.dut.clk, settle)
        self.check()

    def check(self):
        for name, src in self.sources.items():
            assert src.empty, f"{name}: {len(src.queue) - src.pos} beats not accepted"
        for sb in self.scoreboards.values():
            sb.check()

    def report(self, *, vectors, **extra):
        """Append this test's figures to the harness report file (beats and mismatches
        summed over the scoreboards, cycles since ``start``, mid-stream resets)."""
        rec = dict(vectors=vectors,
                   beats=sum(sb.index for sb in self.scoreboards.values()),
                   mismatches=sum(sb.mismatches for sb in self.scoreboards.values()),
                   cycles=self.cycle, resets=self.resets, seed=self.seed, **extra)
        cocotb.log.info("report: %s", rec)
        path = os.environ.get(ENV_REPORT)
        if path:
            with open(path, "a") as f:
                f.write(json.dumps(rec) + "\n")


    # ---------------------------------------------------------------- reset in mid-stream

    resets = 0      # mid-stream resets done (``report`` adds it)

    async def reset_midstream(self, cycles=2):
        """Assert ``rst`` now, in the middle of traffic, and drop what it destroys.

        At the next falling edge every driver stops (sources drop ``valid``, sinks
        ``ready``), each source forgets the beats it has not transferred and each scoreboard
        the beats it still expected (the ones in flight are gone with the reset); ``rst``
        stays high for ``cycles`` cycles, then the drivers start again. Beats received before
        the reset were checked as they came; after it the unit must run bit-exact with no
        stale beat: queue new stimulus and expected beats, and ``drain`` fails on anything
        old or extra. Returns the number of expected beats dropped.
        """
        await FallingEdge(self.dut.clk)
        for port in self.ports:
            port._task.cancel()
            (port.valid if isinstance(port, StreamSource) else port.ready).value = 0
        dropped = 0
        for src in self.sources.values():
            src.clear()
        for sb in self.scoreboards.values():
            dropped += len(sb.expected) - min(sb.index, len(sb.expected))
            sb.clear()
        self.dut.rst.value = 1
        await ClockCycles(self.dut.clk, cycles, rising=False)
        self.dut.rst.value = 0
        for port in self.ports:
            port._task = cocotb.start_soon(port._run())
        self.resets += 1
        return dropped

    async def reset_after(self, lo, hi, cycles=2):
        """Wait a random number of cycles in ``lo..hi`` (the TB's rng), then
        ``reset_midstream``; returns what it returns."""
        await ClockCycles(self.dut.clk, int(self.rng.integers(lo, hi + 1)))
        return await self.reset_midstream(cycles)
