"""The FPGA flow: the board design simulated end to end through its UART pins, `xbarllm host`
over a pty against the simulated board, the host against a pure-Python board, board builds
(slow: they run Yosys and nextpnr) and bad input."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gen.build import resolve
from gen.cli import main
from gen.fpga import BoardCore, stream_ports, uart_divisor
from gen.harness import BUILD, run_cocotb
from gen.host import Host, HostError, pack_fields, plan_frames
from hw.common import units
from sim.gelu import gelu
from sim.hostlink import (DATA_OUT, E_CRC, HostlinkParams, LinkModel, encode_frame, pack_beats,
                          slip_encode)
from sim.params import params_from_dict
from test_gelu import random_elements

# designs built here only to read their ports are never elaborated
pytestmark = pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")

ENV_DESIGN = "XBARLLM_DESIGN"       # the simulated board's fpga.json
ENV_CLI = "XBARLLM_CLI"             # the xbarllm console script
SIM_DIVISOR = 8                     # 8 cycles of 10 ns per UART bit in simulation
EXE = str(Path(sys.executable).parent / "xbarllm")

# ---------------------------------------------------------------- stimulus (shared) ----


def gelu_vectors(rng, n):
    """Elements, ``last`` flags (a row end every 1..20 elements) and their golden results."""
    x = random_elements(rng, n)
    last = (rng.random(n) < 0.1).astype(np.int64)
    return x, last, gelu(x, resolve("gelu", "minilm")[1])


def write_design(folder):
    """The gelu board design on a simulated board, its ``fpga.json`` written into ``folder``."""
    _, params = resolve("gelu", "minilm")
    core = BoardCore("gelu", params, divisor=SIM_DIVISOR)
    folder.mkdir(parents=True, exist_ok=True)
    desc = {**core.describe(), "board": "sim", "clock_hz": 100e6,
            "baud": int(100e6 / SIM_DIVISOR)}
    (folder / "fpga.json").write_text(json.dumps(desc, indent=2) + "\n")
    return core


def sim_design(folder):
    """``write_design``, and the Verilog text of the design."""
    from amaranth.back import verilog
    return verilog.convert(write_design(folder), name="board", emit_src=False)


# ---------------------------------------------------------------- design, host, no sim ---


@pytest.mark.parametrize("unit", sorted(set(units()) - {"hostlink"}))
def test_every_unit_bridges_to_the_host_link(unit):
    """Every stream port gets a link port of its width; counters go to ``status``."""
    _, params = resolve(unit, "tiny")
    core = BoardCore(unit, params, divisor=SIM_DIVISOR)
    ins, outs, status, other = stream_ports(core.dut)
    desc = core.describe()
    assert not other and ins and outs
    assert [p["width"] for p in desc["inputs"]] == list(core.link_params.in_widths)
    assert [p["name"] for p in desc["outputs"]] == [n for n, _ in outs]
    assert core.link_params.status_width == sum(s["width"] for s in desc["status"])
    assert all(p["fields"] for p in desc["inputs"] + desc["outputs"])


def test_hostlink_cannot_be_bridged_to_itself():
    _, params = resolve("hostlink", "tiny")
    with pytest.raises(Exception, match=r"hostlink has input ports that are not streams \(rx\)"):
        BoardCore("hostlink", params, divisor=SIM_DIVISOR)


def test_design_ident_follows_the_params():
    a = BoardCore("gelu", resolve("gelu", "tiny")[1], divisor=8).ident
    b = BoardCore("gelu", resolve("gelu", "tiny", ["frac_bits=9"])[1], divisor=8).ident
    assert a != b and a == BoardCore("gelu", resolve("gelu", "tiny")[1], divisor=104).ident


@pytest.mark.parametrize("clock, baud, message", [
    (12e6, 5_000_000, "baud 5000000 is too fast for a 12 MHz clock (at most 3000000)"),
    (12e6, 1_800_000, "baud 1800000 is -4.8% off at 12 MHz (divisor 7); the limit is 2%"),
    (25e6, 0, "baud must be a positive integer, not 0"),
])
def test_uart_divisor_rejects_rates_the_clock_cannot_make(clock, baud, message):
    with pytest.raises(Exception, match=re.escape(message)):
        uart_divisor(clock, baud)


def test_uart_divisor_at_the_board_clocks():
    assert uart_divisor(12e6, 115200) == 104 and uart_divisor(25e6, 115200) == 217
    assert uart_divisor(12e6, 3_000_000) == 4


def test_plan_frames_interleaves_ports_by_progress():
    p = HostlinkParams(in_widths=(17, 32), out_widths=(17,), in_depth=16)
    frames = plan_frames(p, [list(range(64)), list(range(16))])
    assert [k for k, _ in frames] == [0, 1, 0, 0, 0]            # 16-beat frames, in step
    assert [w for k, w in frames if k == 0] == [list(range(i, i + 16)) for i in (0, 16, 32, 48)]
    seq = plan_frames(p, [list(range(64)), list(range(16))], order="sequence")
    assert [(k, len(w)) for k, w in seq] == [(0, 64), (1, 16)]
    one = plan_frames(p, [list(range(5000)), []])
    assert {k for k, _ in one} == {0} and len(one[0][1]) == (1024 - 6) // 3
    assert sum(len(w) for _, w in one) == 5000


class FakeBoard:
    """A pyserial-like port on a pure-Python board: ``LinkModel`` plus gelu's golden model.

    ``flip`` and ``drop`` damage host -> board bytes by index; ``lose_replies`` drops
    replies to the host by index (an ACK lost on the line)."""

    def __init__(self, design, *, flip=(), drop=(), lose_replies=()):
        self.params = params_from_dict(HostlinkParams, design["hostlink"])
        self.gelu = resolve("gelu", "minilm")[1]
        self.model = LinkModel(self.params)
        self.flip, self.drop, self.lose = set(flip), set(drop), set(lose_replies)
        self.n_in = self.n_reply = self.taken = self.seq = 0
        self.out = bytearray()

    def write(self, data):
        got = []
        for b in data:
            i, self.n_in = self.n_in, self.n_in + 1
            if i not in self.drop:
                got.append(b ^ 0x10 if i in self.flip else b)
        for f in self.model.feed(got):
            self.n_reply += 1
            if self.n_reply - 1 not in self.lose:
                self.out += slip_encode(encode_frame(f.type, f.seq, f.arg, f.body))
        beats = self.model.beats[0][self.taken:]
        self.taken += len(beats)
        x = np.array([w & 0xFFFF for w in beats], dtype=np.uint16)
        res = [int(y) | (w >> 16) << 16 for y, w in zip(gelu(x, self.gelu), beats)]
        for at in range(0, len(res), self.params.out_depth):
            chunk = res[at:at + self.params.out_depth]
            self.out += slip_encode(encode_frame(DATA_OUT, self.seq, len(chunk),
                                                 pack_beats(chunk, 17)))
            self.seq = (self.seq + 1) & 0xFF

    def read(self, n):
        data, self.out = bytes(self.out[:n]), self.out[n:]
        return data


def _host_case(tmp_path, n, **damage):
    write_design(tmp_path)
    design = json.loads((tmp_path / "fpga.json").read_text())
    x, last, y = gelu_vectors(np.random.default_rng(5), n)
    words = pack_fields(design["inputs"][0], {"data": x, "last": last})
    host = Host(FakeBoard(design, **damage), design, timeout=0.2)
    out = host.run([words], expect=[n])
    return host, out, pack_fields(design["outputs"][0], {"data": y, "last": last})


def test_host_against_a_python_board(tmp_path):
    host, out, want = _host_case(tmp_path, 1500)
    assert out == [want] and host.stats.retransmissions == 0 and not host.stats.naks


def test_host_goes_back_after_damaged_frames(tmp_path):
    host, out, want = _host_case(tmp_path, 1500, flip={40, 2000},
                                 drop={1000})
    assert out == [want]
    assert host.stats.naks.get(E_CRC, 0) + host.stats.naks.get(2, 0) >= 2
    assert host.stats.retransmissions >= 2


def test_host_recovers_a_lost_ack_by_query(tmp_path):
    host, out, want = _host_case(tmp_path, 1500, lose_replies={1})
    assert out == [want]


def test_host_refuses_another_design(tmp_path):
    write_design(tmp_path)
    design = json.loads((tmp_path / "fpga.json").read_text())
    other = dict(design, hostlink=dict(design["hostlink"], ident=design["hostlink"]["ident"] ^ 1))
    board = FakeBoard(design)
    with pytest.raises(Exception, match=r"the board runs another design \(ident 0x"):
        Host(board, other, timeout=0.2).query()


def test_host_gives_up_on_a_silent_port(tmp_path):
    write_design(tmp_path)
    design = json.loads((tmp_path / "fpga.json").read_text())

    class Silent:
        def write(self, data):
            pass

        def read(self, n):
            return b""

    with pytest.raises(HostError, match=r"no INFO from the board within 2 x 0.05 s"):
        Host(Silent(), design, timeout=0.05, retries=2).query()


# ---------------------------------------------------------------- CLI bad input --------


def _one_line_exit_2(argv, capsys, message, **env):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("xbarllm: error: ") and err.count("\n") == 1, err
    assert message in err, err


@pytest.mark.parametrize("argv, message", [
    (["--board", "nope"], "unknown board 'nope'; choose from icebreaker, ulx3s-12f"),
    (["--board", "orangecrab"], "board 'orangecrab' is not supported: the OrangeCrab has no "
                                "UART pins"),
    (["--board", "icebreaker", "--baud", "7000000"], "baud 7000000 is too fast for a 12 MHz"),
    (["--board", "icebreaker", "--clock-mhz", "900"], "clock must be a frequency in 1..400 MHz"),
    (["--board", "icebreaker", "--unit", "hostlink"], "hostlink has input ports that are not "
                                                      "streams"),
    (["--board", "icebreaker", "--preset", "huge"], "unknown preset 'huge' for gelu"),
])
def test_fpga_bad_input_is_one_line_exit_2(argv, message, capsys):
    base = {"--unit": "gelu", "--preset": "tiny"}
    args = ["fpga"] + argv + [a for k, v in base.items() if k not in argv for a in (k, v)]
    _one_line_exit_2(args, capsys, message)


def test_fpga_missing_programmer_is_one_line_exit_2_before_building(capsys, monkeypatch):
    monkeypatch.setenv("ICEPROG", "/nonexistent/iceprog")
    _one_line_exit_2(["fpga", "--board", "icebreaker", "--unit", "gelu", "--preset", "tiny",
                      "--program"], capsys, "--program: no programmer for the icebreaker: "
                      "/nonexistent/iceprog is not installed (install iceprog or set ICEPROG")


@pytest.mark.parametrize("argv, message", [
    (["--design", "/nonexistent"], "no design description at /nonexistent"),
    (["--design", "{design}"], "give --input (vectors to send) or --info"),
    (["--design", "{design}", "--input", "/nonexistent.npz"], "cannot read /nonexistent.npz"),
    (["--design", "{design}", "--info", "--count", "x=3"], "--count takes PORT=N with PORT one "
                                                           "of o, not 'x=3'"),
    (["--design", "{design}", "--info", "--port", "/nonexistent/tty"], "cannot open port "
                                                                       "'/nonexistent/tty'"),
])
def test_host_bad_input_is_one_line_exit_2(argv, message, capsys, tmp_path):
    write_design(tmp_path)
    args = ["host"] + [a.format(design=tmp_path) for a in argv]
    if "--port" not in args:
        args += ["--port", "/nonexistent/tty"]
    _one_line_exit_2(args, capsys, message)


def test_host_input_fields_are_checked(tmp_path, capsys):
    write_design(tmp_path)
    np.savez(tmp_path / "in.npz", **{"i.data": np.arange(4)})
    _one_line_exit_2(["host", "--design", str(tmp_path), "--port", "/nonexistent/tty",
                      "--input", str(tmp_path / "in.npz")], capsys,
                     "port i: fields last missing (it has data, last)")
    np.savez(tmp_path / "in.npz", **{"x.data": np.arange(4)})
    _one_line_exit_2(["host", "--design", str(tmp_path), "--port", "/nonexistent/tty",
                      "--input", str(tmp_path / "in.npz")], capsys, "x.data name no input port")


# ---------------------------------------------------------------- cocotb: the board -----

try:
    import cocotb
except ImportError:   # pragma: no cover - cocotb is a dependency
    cocotb = None

if cocotb is not None:
    import logging
    import time
    import tty

    from cocotb.triggers import ClockCycles, Timer
    from cocotbext.uart import UartSink, UartSource

    from gen import streamkit
    from gen.hostkit import UartHost
    from sim.hostlink import ACK, QUERY, parse_info
    from test_hostlink import corrupt

    class TB(streamkit.TB):
        """The gelu board design: clock, reset and the UART pins (no stream drivers)."""

        def __init__(self, dut):
            super().__init__(dut)
            self.design = json.loads(Path(os.environ[ENV_DESIGN]).read_text())
            self.link = params_from_dict(HostlinkParams, self.design["hostlink"])
            self.bit_ns = SIM_DIVISOR * self.period_ns

    async def run_test(tb, host, x, last, y, *, bad=0.15, max_gap_bits=40):
        """Query the board, stream ``x`` in frames of random size with random gaps, some
        sent corrupted first (then sent right), and check every output beat and reply."""
        await tb.start()
        host.expect_reply(1)
        await host.write(slip_encode(encode_frame(QUERY, 1, 0)))
        await host.wait_replies(0)
        await host.wait_for(lambda: host.replies)
        info = parse_info(host.replies[0].body)
        assert info["ident"] == tb.link.ident and info["next_seq"] == 0, info
        words = pack_fields(tb.design["inputs"][0], {"data": x, "last": last})
        want = pack_fields(tb.design["outputs"][0], {"data": y, "last": last})
        pos, seq, frames, bad_frames = 0, 0, 0, 0
        while pos < len(words):
            n = int(tb.rng.integers(1, 120))
            raw = encode_frame(0, seq, len(words[pos:pos + n]), pack_beats(words[pos:pos + n], 17))
            if tb.rng.random() < bad:
                braw, wire = corrupt(tb.rng, raw, tb.link)
                host.expect_reply(braw[1] if len(braw) >= 2 else 0)     # the seq it names
                await host.write(wire)
                bad_frames += 1
            gap = int(tb.rng.integers(0, max_gap_bits)) if tb.rng.random() < 0.5 else 0
            await host.send(slip_encode(raw), credit=len(raw), reply_seq=seq, gap_bits=gap)
            pos, seq, frames = pos + n, (seq + 1) & 0xFF, frames + 1
        await host.wait_for(lambda: len(host.replies) == 1 + frames + bad_frames)
        for _ in range(2000):
            if len(host.data[0]) >= len(want):
                break
            await ClockCycles(tb.dut.clk, 100 * SIM_DIVISOR)
        await ClockCycles(tb.dut.clk, 200 * SIM_DIVISOR)
        got = host.data[0]
        bad_at = [i for i, (a, b) in enumerate(zip(got, want)) if a != b]
        assert not bad_at and len(got) == len(want), (
            f"{len(got)} of {len(want)} beats back, {len(bad_at)} mismatches; first at "
            f"{bad_at[:1]}: expected {want[bad_at[0]] if bad_at else None:#x}, actual "
            f"{got[bad_at[0]] if bad_at else 0:#x} (seed {tb.seed})")
        assert host.data_seqs == [i % 256 for i in range(len(host.data_seqs))]
        acks = [f for f in host.replies if f.type == ACK]
        assert [f.seq for f in acks] == [i % 256 for i in range(frames)]
        assert len(host.replies) - len(acks) - 1 == bad_frames     # one NAK per bad frame
        return frames, bad_frames

    @cocotb.test()
    async def board_uart(dut):
        """The host's bytes through cocotbext-uart: every frame and beat checked against the
        golden model; corrupt frames are NAKed and the link goes on."""
        tb = TB(dut)
        host = UartHost(dut.rx, dut.tx, bit_ns=tb.bit_ns, buffer_bytes=tb.link.buffer_bytes,
                        out_widths=tb.link.out_widths)
        x, last, y = gelu_vectors(tb.rng, streamkit.samples_from_env(1500))
        frames, bad = await run_test(tb, host, x, last, y)
        tb.report(vectors=x.size, frames=frames, bad=bad)

    @cocotb.test()
    async def board_host_pty(dut):
        """`xbarllm host` in its own process on a pty bridged to the UART pins: the exact host
        code path, with a damaged and a lost byte on the way to the board."""
        tb = TB(dut)
        await tb.start()
        folder = Path(os.environ[ENV_DESIGN]).parent
        x, last, y = gelu_vectors(tb.rng, streamkit.samples_from_env(1500) // 2)
        np.savez(folder / "in.npz", **{"i.data": x, "i.last": last})
        np.savez(folder / "expect.npz", **{"o.data": y, "o.last": last})
        (folder / "out.npz").unlink(missing_ok=True)
        master, slave = os.openpty()
        tty.setraw(slave)
        os.set_blocking(master, False)
        proc = subprocess.Popen(
            [os.environ[ENV_CLI], "host", "--port", os.ttyname(slave), "--baud", "115200",
             "--design", str(folder), "--input", str(folder / "in.npz"), "--expect",
             str(folder / "expect.npz"), "--output", str(folder / "out.npz"),
             "--timeout", "20"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        baud = 1e9 / tb.bit_ns
        source, sink = UartSource(dut.rx, baud=baud), UartSink(dut.tx, baud=baud)
        for pin in (dut.rx, dut.tx):
            logging.getLogger(f"cocotb.{pin._path}").setLevel(logging.WARNING)
        damage = {300: "flip", 1700: "drop"}        # byte index -> what happens to it
        n_in, t0 = 0, time.monotonic()
        try:
            while proc.poll() is None:
                try:
                    data = os.read(master, 4096)
                except BlockingIOError:
                    data = b""
                for b in data:
                    what = damage.get(n_in)
                    n_in += 1
                    if what != "drop":
                        source.write_nowait([b ^ 0x04 if what == "flip" else b])
                if not sink.empty():
                    os.write(master, bytes(sink.read_nowait()))
                await Timer(4 * tb.bit_ns, "ns")
                assert time.monotonic() - t0 < 300, "xbarllm host did not finish in 300 s"
        finally:
            if proc.poll() is None:
                proc.kill()
            os.close(master)
            os.close(slave)
        text = proc.stdout.read()
        proc.stdout.close()
        cocotb.log.info("xbarllm host: %s", text)
        assert proc.returncode == 0, f"xbarllm host exited {proc.returncode}:\n{text}"
        assert "every beat matches" in text and "sent again" in text, text
        got = np.load(folder / "out.npz")
        assert np.array_equal(got["o.data"], y) and np.array_equal(got["o.last"], last)
        tb.report(vectors=x.size, host_bytes=n_in)


# ---------------------------------------------------------------- runner (pytest) -------


def test_board_simulated_end_to_end():
    """One build of the gelu board design; the UART regression and the pty host test."""
    folder = BUILD / "fpga-sim-gelu"
    text = sim_design(folder)
    _, params = resolve("gelu", "minilm")
    rep = run_cocotb("gelu", params, case="board-sim", test_module="test_fpga",
                     top=("board", text), env={ENV_DESIGN: str(folder / "fpga.json"),
                                               ENV_CLI: EXE, "NUM_SAMPLES": "1500"})
    assert rep["mismatches"] == 0 and rep["tests"] == 2 and rep["vectors"] >= 1500 + 750


# ---------------------------------------------------------------- bitstreams (slow) -----


def _fake_programmer(tmp_path, name):
    """A stand-in programmer: records its arguments and copies the file it was given."""
    exe = tmp_path / name
    exe.write_text(f'#!/bin/sh\necho "$@" > {tmp_path}/args\nfor last; do :; done\n'
                   f'cp "$last" {tmp_path}/programmed\n')
    exe.chmod(0o755)
    return exe


@pytest.mark.slow
@pytest.mark.parametrize("board, unit, preset, var, flags", [
    ("icebreaker", "gelu", "minilm", "ICEPROG", ""),
    ("ulx3s-85f", "layernorm", "tiny", "OPENFPGALOADER", "-b ulx3s -m"),
])
def test_bitstream_report_and_program(board, unit, preset, var, flags, tmp_path, capsys,
                                      monkeypatch):
    """A bitstream from a fresh build folder, its report, then --program (up to date, so no
    new build) hands that bitstream to the board's programmer."""
    out = tmp_path / "build"
    argv = ["fpga", "--board", board, "--unit", unit, "--preset", preset, "--out", str(out)]
    assert main(argv) == 0, capsys.readouterr().err
    text = capsys.readouterr().out
    rep = json.loads((out / "report.json").read_text())
    bit = out / rep["bitstream"]
    assert bit.stat().st_size > 50_000 and rep["timing_met"] and rep["fmax_mhz"] > rep["clock_mhz"]
    assert 0 < rep["lut"] <= rep["lut_available"] and 0 < rep["ff"] and rep["bram"] >= 1
    for key in ("LUT", "FF", "BRAM", "DSP", "Fmax", "timing met at"):
        assert key in text
    design = json.loads((out / "fpga.json").read_text())
    assert design["report"] == rep and design["unit"] == unit
    monkeypatch.setenv(var, str(_fake_programmer(tmp_path, var.lower())))
    assert main(argv + ["--program"]) == 0
    text = capsys.readouterr().out
    assert "(up to date)" in text and f"programmed the {board}" in text
    assert (tmp_path / "args").read_text().startswith(flags)
    assert (tmp_path / "programmed").read_bytes() == bit.read_bytes()


@pytest.mark.slow
def test_unit_that_does_not_fit_is_one_line_exit_2(capsys):
    """After the progress of synthesis, one line says what is over and by how much."""
    assert main(["fpga", "--board", "icebreaker", "--unit", "mixed_array", "--preset", "tiny",
                 "--out", str(BUILD / "fpga-icebreaker-mixed_array-tiny")]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("building mixed_array (tiny) for the icebreaker")
    assert re.fullmatch(r"xbarllm: error: mixed_array \(tiny\) does not fit the icebreaker "
                        r"\(iCE40UP5K-SG48\): it needs [0-9,]+ logic cells \(ICESTORM_LC\); the "
                        r"device has 5,280: [0-9,]+ too many \(\d+%\).*", lines[-1]), lines[-1]
    assert not any("Traceback" in ln or "error" in ln for ln in lines[:-1])
