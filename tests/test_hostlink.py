"""hostlink: checksum, SLIP and frames, the golden board model, parameter validation, and the
cocotb regression of the link driven through its UART pins by cocotbext-uart."""

import binascii
import dataclasses

import numpy as np
import pytest

from gen.harness import regress
from hw.hostlink import crc_step_masks
from sim.hostlink import (ACK, DATA_IN, END, ESC, E_CRC, E_LENGTH, E_LINE, E_OVERFLOW, E_SEQ,
                          E_TYPE, INFO, LINE_ERROR, NAK, OVERHEAD, PRESETS, QUERY, Frame,
                          FrameError, HostlinkParams, SlipDecoder, crc16, crc16_slow,
                          encode_frame, hostlink, info_body, pack_beats, parse_frame, parse_info,
                          slip_encode, unpack_beats)

# ---------------------------------------------------------------- stimulus (shared) ----


def random_words(rng, width, n):
    """``n`` random payload ints of ``width`` bits (any width)."""
    nb = (width + 7) // 8
    raw = rng.integers(0, 256, (n, nb), dtype=np.uint8)
    return [int.from_bytes(r.tobytes(), "little") & ((1 << width) - 1) for r in raw]


def corrupt(rng, raw, p):
    """A broken copy of the good ``DATA_IN`` frame ``raw``: a flipped bit (bad CRC), cut short,
    a wrong length with a good CRC, zero beats, an unknown port or type, a bad SLIP escape, or
    the wrong ``seq``. Returns ``(frame bytes, SLIP-encoded bytes)``."""
    ftype, seq, arg, body = raw[0], raw[1], raw[2] | raw[3] << 8, raw[4:-2]
    kind = rng.integers(0, 8)
    if kind == 0:                                   # one flipped bit
        b = bytearray(raw)
        b[rng.integers(0, len(b))] ^= 1 << rng.integers(0, 8)
        bad = bytes(b)
    elif kind == 1:                                 # cut short (a lost byte or more)
        bad = raw[:max(1, len(raw) - int(rng.integers(1, 8)))]
    elif kind == 2:                                 # one body byte too many, CRC good
        bad = encode_frame(ftype, seq, arg, body + b"\x00")
    elif kind == 3:                                 # zero beats
        bad = encode_frame(ftype, seq, 0, b"")
    elif kind == 4:                                 # a port the link does not have
        bad = encode_frame(DATA_IN | len(p.in_widths), seq, arg, body)
    elif kind == 5:                                 # an unknown type
        bad = encode_frame(0x33, seq, arg, body)
    elif kind == 6:                                 # ESC followed by a plain byte
        wire = slip_encode(raw)
        at = int(rng.integers(3, len(wire) - 1))
        return raw, wire[:at] + bytes([ESC, 0x01]) + wire[at:]
    else:                                           # out of sequence
        bad = encode_frame(ftype, (seq + int(rng.integers(1, 256))) & 0xFF, arg, body)
    return bad, slip_encode(bad)


def random_frames(rng, p, n, *, bad=0.2, query=0.05):
    """``n`` host frames ``(kind, frame bytes, wire bytes)`` as a host sends them: good
    ``DATA_IN`` frames of random ports and beat counts (up to 64 beats or a quarter of the
    buffer) in ``seq`` order from 0, ``QUERY`` frames, and corrupted frames (``corrupt``), each
    followed by its good frame."""
    frames = []
    seq = 0
    while len(frames) < n:
        if rng.random() < query:
            raw = encode_frame(QUERY, seq, 0)
            frames.append(("query", raw, slip_encode(raw)))
            continue
        port = int(rng.integers(0, len(p.in_widths)))
        most = max(1, min(64, (p.buffer_bytes // 4) // p.in_bytes[port]))
        beats = random_words(rng, p.in_widths[port], int(rng.integers(1, most + 1)))
        raw = encode_frame(DATA_IN | port, seq, len(beats), pack_beats(beats, p.in_widths[port]))
        if rng.random() < bad:
            frames.append(("bad", *corrupt(rng, raw, p)))
        frames.append(("data", raw, slip_encode(raw)))
        seq = (seq + 1) & 0xFF
    return frames[:n]


# ---------------------------------------------------------------- checksum, SLIP, frames --


def test_crc16_matches_binascii_and_the_bitwise_model():
    rng = np.random.default_rng(0)
    for n in (0, 1, 2, 9, 100, 1000):
        data = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        assert crc16(data) == binascii.crc_hqx(data, 0xFFFF) == crc16_slow(data)
    assert crc16(b"123456789") == 0x29B1            # the CRC-16/CCITT-FALSE check value


def test_crc_step_masks_are_the_byte_step():
    """The RTL's XOR masks, evaluated, give crc16 of one byte from any state."""
    masks = crc_step_masks()
    rng = np.random.default_rng(1)
    for crc, byte in zip(rng.integers(0, 1 << 16, 500), rng.integers(0, 256, 500)):
        ins = int(crc) | int(byte) << 16
        out = sum((bin(ins & mk).count("1") & 1) << k for k, mk in enumerate(masks))
        assert out == crc16([int(byte)], int(crc))


def test_good_frame_crc_residue_is_zero():
    raw = encode_frame(DATA_IN, 7, 2, b"\x01\x02\x03\x04")
    assert crc16(raw) == 0
    assert parse_frame(raw) == Frame(DATA_IN, 7, 2, b"\x01\x02\x03\x04")


def test_slip_round_trip_with_every_special_byte():
    rng = np.random.default_rng(2)
    for n in (1, 2, 50, 600):
        data = bytes(rng.choice([END, ESC, 0xDC, 0xDD, 0, 0xFF, 0x41], n))
        wire = slip_encode(data)
        assert wire[0] == END and wire[-1] == END and END not in wire[1:-1]
        assert SlipDecoder().feed(wire) == [(data, False)]


def test_slip_decoder_errors_and_resynchronization():
    dec = SlipDecoder()
    assert dec.feed(bytes([END, END, 1, ESC, 5, 2, END])) == [(bytes([1, 2]), True)]
    assert dec.feed([3, LINE_ERROR, 4, END, 9, END]) == [(bytes([3, 4]), True), (b"\x09", False)]
    assert dec.feed(bytes([ESC, END, END])) == [(b"", True)]      # ESC then END: an error
    assert dec.feed(bytes([7])) == [] and dec.feed(bytes([END])) == [(b"\x07", False)]


def test_parse_frame_rejects_short_and_corrupt_frames():
    with pytest.raises(FrameError, match="frame of 5 bytes; at least 6") as e:
        parse_frame(b"\x00" * 5)
    assert e.value.code == E_LENGTH
    raw = bytearray(encode_frame(ACK, 1, 3))
    raw[2] ^= 4
    with pytest.raises(FrameError, match="bad checksum"):
        parse_frame(bytes(raw))


def test_beats_pack_little_endian_and_mask_the_top_byte():
    assert pack_beats([0x1ABCD, 1], 17) == bytes([0xCD, 0xAB, 1, 1, 0, 0])
    assert unpack_beats(bytes([0xFF, 0xFF, 0xFF]), 17) == [0x1FFFF]
    assert unpack_beats(pack_beats([5, 6, 7], 3), 3, 3) == [5, 6, 7]
    with pytest.raises(FrameError, match="5 body bytes for 2 beats of 3 bytes"):
        unpack_beats(b"\x00" * 5, 17, 2)


def test_info_body_round_trip():
    p = HostlinkParams(in_widths=(17, 300), out_widths=(5,), status_width=12, ident=0xDEADBEEF)
    body = info_body(p, accepted=3, rejected=1 << 33, next_seq=200, status=0xABC)
    assert len(body) == p.info_length
    assert parse_info(body) == {
        "version": 1, "next_seq": 200, "ident": 0xDEADBEEF, "buffer_bytes": 2048, "divisor": 8,
        "accepted": 3,
        "rejected": 0, "status_width": 12, "in_widths": (17, 300), "out_widths": (5,),
        "status": 0xABC}
    with pytest.raises(FrameError, match="INFO body of 33 bytes; expected 34"):
        parse_info(body[:-1])


# ---------------------------------------------------------------- golden board model ----


def test_golden_good_frames_ack_and_hand_on_beats():
    p = HostlinkParams(in_widths=(17, 3), out_widths=(17,))
    f0 = encode_frame(DATA_IN | 0, 0, 2, pack_beats([0x1FFFF, 5], 17))
    f1 = encode_frame(DATA_IN | 1, 1, 3, bytes([7, 0xFF, 2]))       # bits above 3 ignored
    res = hostlink(slip_encode(f0) + slip_encode(f1), p)
    assert res.beats == [[0x1FFFF, 5], [7, 7, 2]]
    assert res.replies == [Frame(ACK, 0, 2), Frame(ACK, 1, 3)]


@pytest.mark.parametrize("wire, code, seq", [
    (slip_encode(encode_frame(0, 9, 1, b"\x01\x02\x03"))[:-3] + b"\x00" + bytes([END]), E_CRC, 9),
    (slip_encode(encode_frame(0, 9, 2, b"\x01\x02\x03")), E_LENGTH, 9),
    (slip_encode(encode_frame(0, 9, 0, b"")), E_LENGTH, 9),
    (slip_encode(encode_frame(1, 9, 1, b"\x01\x02\x03")), E_TYPE, 9),
    (slip_encode(encode_frame(0x40, 9, 1, b"\x01\x02\x03")), E_TYPE, 9),
    (slip_encode(encode_frame(QUERY, 9, 0, b"\x00")), E_LENGTH, 9),
    (slip_encode(encode_frame(0, 9, 700, bytes(2100))), E_OVERFLOW, 9),
    (bytes([END, 0, 9, 1, END]), E_LENGTH, 9),
    (bytes([END, 5, END]), E_LENGTH, 0),
    ([END, 0, 9, LINE_ERROR, 1, 0, 1, 2, 3, END], E_LINE, 9),
    (bytes([END, 0, 9, ESC, 7, END]), E_LINE, 9),
    (slip_encode(encode_frame(0, 9, 1, b"\x01\x02\x03")), E_SEQ, 9),
])
def test_golden_bad_frames_nak_with_their_code(wire, code, seq):
    good = encode_frame(0, 0, 1, b"\x05\x00\x00")
    res = hostlink(list(wire) + list(slip_encode(good)), PRESETS["tiny"])
    assert res.replies == [Frame(NAK, seq, code), Frame(ACK, 0, 1)]      # and it recovers
    assert res.beats == [[5]]


def test_golden_go_back_n():
    """After a NAK, the later frames are out of sequence until the NAKed one comes again."""
    f = [encode_frame(0, s, 1, bytes([s, 0, 0])) for s in range(4)]
    broken = bytearray(f[1])
    broken[5] ^= 1
    wire = b"".join(map(slip_encode, [f[0], bytes(broken), f[2], f[3], f[1], f[2], f[3]]))
    res = hostlink(wire, PRESETS["tiny"])
    assert res.replies == [Frame(ACK, 0, 1), Frame(NAK, 1, E_CRC), Frame(NAK, 2, E_SEQ),
                           Frame(NAK, 3, E_SEQ), Frame(ACK, 1, 1), Frame(ACK, 2, 1),
                           Frame(ACK, 3, 1)]
    assert res.beats == [[0, 1, 2, 3]]


def test_golden_query_counts_frames_and_reports_status():
    p = HostlinkParams(status_width=9)
    wire = (slip_encode(encode_frame(0, 0, 1, b"\x01\x00\x00")) + bytes([END, 1, END])
            + slip_encode(encode_frame(QUERY, 3, 0)))
    res = hostlink(wire, p, status=0x1F5)
    info = res.replies[-1]
    assert info.type == INFO and info.seq == 3 and info.arg == p.info_length
    fields = parse_info(info.body)
    assert (fields["accepted"], fields["rejected"], fields["status"], fields["next_seq"]) == (
        2, 1, 0x1F5, 1)


def test_golden_random_frames_against_a_second_reading():
    """Every good frame's beats arrive in order; every frame gets exactly one reply."""
    p = HostlinkParams(in_widths=(17, 40, 3), out_widths=(1,), buffer_bytes=256)
    rng = np.random.default_rng(4)
    frames = random_frames(rng, p, 300)
    res = hostlink(b"".join(f[2] for f in frames), p)
    assert len(res.replies) == len(frames)
    want = [[] for _ in p.in_widths]
    for (kind, raw, _), rep in zip(frames, res.replies):
        if kind == "data":
            assert rep == Frame(ACK, raw[1], raw[2] | raw[3] << 8)
            want[raw[0]] += unpack_beats(raw[4:-2], p.in_widths[raw[0]])
        elif kind == "bad":
            assert rep.type == NAK
        else:
            assert rep.type == INFO
    assert res.beats == want
    assert {r.arg for r in res.replies if r.type == NAK} == {E_CRC, E_LENGTH, E_TYPE, E_LINE,
                                                             E_SEQ}


# ---------------------------------------------------------------- parameters ------------


@pytest.mark.parametrize("field, value, message", [
    ("in_widths", (), r"in_widths must be a tuple of 1\.\.16 widths, not \(\)"),
    ("in_widths", [17], r"in_widths must be a tuple of 1\.\.16 widths, not \[17\]"),
    ("in_widths", (17, 0), r"in_widths\[1\] must be an integer in 1\.\.4096, not 0"),
    ("out_widths", (5000,), r"out_widths\[0\] must be an integer in 1\.\.4096, not 5000"),
    ("out_widths", (1,) * 17, r"out_widths must be a tuple of 0\.\.16 widths"),
    ("divisor", 3, r"divisor must be an integer in 4\.\.65535, not 3"),
    ("buffer_bytes", 1000, r"buffer_bytes must be a power of two in 64\.\.65536, not 1000"),
    ("in_depth", 1, r"in_depth must be a power of two in 2\.\.4096, not 1"),
    ("out_depth", 8192, r"out_depth must be a power of two in 2\.\.4096, not 8192"),
    ("status_width", -1, r"status_width must be an integer in 0\.\.8192, not -1"),
    ("ident", 1 << 32, r"ident must be an integer in 0\.\.4294967295, not 4294967296"),
])
def test_params_rejects_out_of_range(field, value, message):
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(HostlinkParams(), **{field: value})


def test_params_keyword_only():
    with pytest.raises(TypeError):
        HostlinkParams((17,))


def test_presets_cover_every_name():
    assert set(PRESETS) == {"tiny", "minilm", "bert-base", "bert-large"}


# ---------------------------------------------------------------- cocotb regression -----

try:
    import cocotb
except ImportError:   # pragma: no cover - cocotb is a dependency
    cocotb = None

if cocotb is not None:
    from amaranth.hdl import unsigned
    from cocotb.triggers import ClockCycles

    from gen import streamkit
    from gen.hostkit import UartHost

    class TB(streamkit.TB):
        """hostlink: a host on ``rx``/``tx`` (``gen.hostkit.UartHost``, cocotbext-uart), a
        stream source on every ``i_<k>`` and a sink with its scoreboard on every ``o_<k>``."""

        def __init__(self, dut, *, sinks=True, **stalls):
            super().__init__(dut, **stalls)
            p = self.params
            self.host = UartHost(dut.rx, dut.tx, bit_ns=p.divisor * self.period_ns,
                                 buffer_bytes=p.buffer_bytes, out_widths=p.out_widths)
            self.srcs = [self.source(f"i_{k}", unsigned(w)) for k, w in enumerate(p.out_widths)]
            self.outs = []
            if sinks:
                self.add_sinks()
            self.status = 0
            if p.status_width:
                self.status = int(self.rng.integers(0, 1 << min(p.status_width, 62)))
                dut.status.value = self.status

        def add_sinks(self):
            self.outs = [self.sink(f"o_{k}", unsigned(w))
                         for k, w in enumerate(self.params.in_widths)]

        def expect_golden(self, wire):
            res = hostlink(wire, self.params, status=self.status)
            for k, out in enumerate(self.outs):
                out.expect(res.beats[k])
            return res

        async def finish(self, res, sent_words):
            """Every reply, every output beat in its frames, every scoreboard; then compare
            the replies with the golden model's and the returned beats with those sent."""
            host, p = self.host, self.params
            await host.wait_for(lambda: len(host.replies) >= len(res.replies))
            total = sum(map(len, sent_words))
            for _ in range(1000):
                if sum(map(len, host.data)) >= total:
                    break
                await ClockCycles(self.dut.clk, 50 * p.divisor)
            await self.drain(self.cycle + 400 * p.divisor)
            key = lambda f: (f.seq, f.type, f.arg, f.body)
            assert sorted(host.replies, key=key) == sorted(res.replies, key=key), (
                f"replies differ from the golden model (seed {self.seed}):\n"
                f"  actual   {host.replies}\n  expected {res.replies}")
            for k, words in enumerate(sent_words):
                assert host.data[k] == words, (f"i_{k}: {len(host.data[k])} beats came back "
                                               f"of {len(words)} sent, or in another order")
            seqs = host.data_seqs
            assert seqs == [i % 256 for i in range(len(seqs))], f"data frames lost: {seqs}"

    async def run_test(tb, frames, out_words, *, max_gap_bits=30):
        """Send ``frames`` (``random_frames``) with random idle gaps while the output ports
        stream ``out_words`` back; ``QUERY`` frames go alone (their counters are exact)."""
        await tb.start()
        res = tb.expect_golden(b"".join(f[2] for f in frames))
        for k, words in enumerate(out_words):
            tb.srcs[k].send(words)
        for (kind, raw, wire), reply in zip(frames, res.replies):
            if kind == "query":
                await tb.host.wait_replies(0)
            gap = int(tb.rng.integers(0, max_gap_bits + 1)) if tb.rng.random() < 0.5 else 0
            await tb.host.send(wire, credit=len(raw), reply_seq=reply.seq, gap_bits=gap)
            if kind == "query":
                await tb.host.wait_replies(0)
        await tb.finish(res, out_words)

    @cocotb.test()
    async def hostlink_random(dut):
        """Random good, corrupt and query frames both ways at once, random gaps and stalls."""
        tb = TB(dut)
        n = streamkit.samples_from_env(150)
        frames = random_frames(tb.rng, tb.params, n)
        out = [random_words(tb.rng, w, 3 * n) for w in tb.params.out_widths]
        await run_test(tb, frames, out)
        tb.report(vectors=n, frames=n, bad=sum(f[0] == "bad" for f in frames))

    @cocotb.test()
    async def hostlink_overflow_and_line_errors(dut):
        """While the unit takes nothing, a frame beyond the free buffer earns E_OVERFLOW and
        is dropped (the buffer rolls back); a UART framing error inside a frame earns E_LINE;
        once the unit takes beats again, the held frame is released and both are resent."""
        tb = TB(dut, sinks=False)
        p, host = tb.params, tb.host
        await tb.start()
        for k in range(len(p.in_widths)):
            getattr(dut, f"o_{k}__ready").value = 0
        w, nb = p.in_widths[0], p.in_bytes[0]
        # frame A fits; with A held (all but in_depth + 1 beats), frame B does not
        beats = (p.buffer_bytes + p.in_depth * nb) // 2 // nb + 2
        a, b, c = (encode_frame(0, seq, n, pack_beats(random_words(tb.rng, w, n), w))
                   for seq, n in ((0, beats), (1, beats), (2, 1)))
        assert OVERHEAD + beats * nb <= p.buffer_bytes
        # credit 0: break the credit rule on purpose
        await host.send(slip_encode(a), credit=0, reply_seq=0)
        await ClockCycles(dut.clk, 4 * nb * beats)
        await host.send(slip_encode(b), credit=0, reply_seq=1)
        await host.wait_for(lambda: len(host.replies) == 1)
        assert host.replies == [Frame(NAK, 1, E_OVERFLOW)], host.replies
        wire_c = slip_encode(c)
        host.expect_reply(2)
        await host.write(wire_c[:3])            # END, type, seq
        await host.line_error_byte(0x55)
        await host.write(wire_c[3:])
        await host.wait_for(lambda: len(host.replies) == 2)
        line = hostlink(list(wire_c[:3]) + [LINE_ERROR] + list(wire_c[3:]), p)
        assert host.replies[1] == line.replies[0] == Frame(NAK, 2, E_LINE), host.replies
        tb.add_sinks()                          # the unit takes beats again
        res = tb.expect_golden(slip_encode(a) + slip_encode(b) + slip_encode(c))
        res.replies += [Frame(NAK, 1, E_OVERFLOW), Frame(NAK, 2, E_LINE)]
        await host.send(slip_encode(b), credit=0, reply_seq=1)
        await host.send(slip_encode(c), credit=0, reply_seq=2)
        await tb.finish(res, [[] for _ in p.out_widths])
        tb.report(vectors=2 * beats + 1, frames=5, bad=2)


# ---------------------------------------------------------------- runner (pytest) -------

CASES = {
    # case: (params, random frames, slow)
    "ports-3x2": (HostlinkParams(in_widths=(17, 40, 3), out_widths=(17, 70), divisor=5,
                                 buffer_bytes=256, in_depth=4, out_depth=8, status_width=20,
                                 ident=0x12345678), 150, False),
    "tiny": (PRESETS["tiny"], 300, True),
}


@pytest.mark.parametrize("case", [pytest.param(c, marks=[pytest.mark.slow] if CASES[c][2] else [])
                                  for c in CASES])
def test_hostlink_verilator(case):
    params, n, _ = CASES[case]
    regress("hostlink", params, case=case, samples=n)
