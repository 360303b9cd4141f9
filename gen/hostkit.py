"""cocotb side of the host link: a host on a design's UART pins.

``UartHost`` drives the receive pin with cocotbext-uart's ``UartSource`` and listens on the
transmit pin with its ``UartSink``; it sends frames under the link's credit rule, keeps every
byte it sent (for the golden model, ``sim.hostlink.hostlink``) and decodes every frame the
board sends, failing on a bad checksum or SLIP error. Replies (``ACK``/``NAK``/``INFO``) are
matched to the frames awaiting them by ``seq``; ``DATA_OUT`` beats are collected per port.
"""

import logging

import cocotb
from cocotb.triggers import Event, Timer, with_timeout
from cocotbext.uart import UartSink, UartSource

from sim.hostlink import (ACK, DATA_OUT, INFO, LINE_ERROR, NAK, SlipDecoder, parse_frame,
                          unpack_beats)

__all__ = ["UartHost"]


class UartHost:
    """A host on the UART pins ``rx`` (board input) and ``tx`` (board output).

    Parameters
    ----------
    rx, tx : cocotb handles of the pins
    bit_ns : int
        UART bit time in ns (``divisor`` times the clock period; an integer, as
        cocotbext-uart times bits in whole ns).
    buffer_bytes : int
        The board's receive buffer (the credit).
    out_widths : sequence of int
        Payload widths of the board's output ports (to unpack ``DATA_OUT`` beats).
    """

    def __init__(self, rx, tx, *, bit_ns, buffer_bytes, out_widths):
        self.rx, self.bit_ns = rx, bit_ns
        self.buffer_bytes = buffer_bytes
        self.out_widths = tuple(out_widths)
        self.source = UartSource(rx, baud=1e9 / bit_ns)
        self.sink = UartSink(tx, baud=1e9 / bit_ns)
        for pin in (rx, tx):                    # one log line per byte otherwise
            logging.getLogger(f"cocotb.{pin._path}").setLevel(logging.WARNING)
        self.wire = []              # every byte sent (LINE_ERROR for a broken one)
        self.replies = []           # ACK / NAK / INFO frames, in arrival order
        self.data = [[] for _ in self.out_widths]
        self.data_seqs = []         # seq of every DATA_OUT frame
        self.credit = {}            # reply seq -> credits of the frames awaiting it
        self.outstanding = 0
        self._reply = Event()
        cocotb.start_soon(self._receive())

    async def _receive(self):
        dec = SlipDecoder()
        while True:
            for raw, err in dec.feed(await self.sink.read()):
                assert not err, f"SLIP error in a frame from the board: {raw.hex()}"
                f = parse_frame(raw)
                if DATA_OUT <= f.type < DATA_OUT + 16:
                    assert f.port < len(self.out_widths), f"DATA_OUT of unknown port {f.port}"
                    self.data[f.port] += unpack_beats(f.body, self.out_widths[f.port], f.arg)
                    self.data_seqs.append(f.seq)
                    continue
                assert f.type in (ACK, NAK, INFO), f"unknown frame type {f.type:#x}"
                self.replies.append(f)
                credits = self.credit.get(f.seq)
                assert credits, f"reply {f} to no frame awaiting one"
                self.outstanding -= credits.pop(0)
                self._reply.set()

    async def wait_for(self, done, *, timeout_bits=20000):
        """Until ``done()`` holds, woken by each reply; fails when no reply comes for
        ``timeout_bits`` bit times."""
        while not done():
            self._reply.clear()
            await with_timeout(self._reply.wait(), timeout_bits * self.bit_ns, "ns")

    async def wait_replies(self, upto):
        """Until at most ``upto`` bytes of frames await their reply."""
        await self.wait_for(lambda: self.outstanding <= upto)

    async def send(self, wire, *, credit, reply_seq, gap_bits=0):
        """Send one SLIP-encoded frame once the board has room for ``credit`` bytes, then
        keep the line idle ``gap_bits`` bit times. Its reply will carry ``reply_seq``."""
        await self.wait_replies(self.buffer_bytes - credit)
        self.credit.setdefault(reply_seq, []).append(credit)
        self.outstanding += credit
        await self.write(wire)
        if gap_bits:
            await Timer(gap_bits * self.bit_ns, "ns")

    async def write(self, data):
        """Send bytes as they are (no credit, no reply expected) and wait until sent."""
        self.wire += list(data)
        await self.source.write(data)
        await self.source.wait()

    async def line_error_byte(self, value):
        """Send ``value`` with a stop bit of 0 (a UART framing error), bit by bit."""
        await self.source.wait()
        for b in [0] + [(value >> i) & 1 for i in range(8)] + [0]:
            self.rx.value = b
            await Timer(self.bit_ns, "ns")
        self.rx.value = 1
        await Timer(2 * self.bit_ns, "ns")
        self.wire.append(LINE_ERROR)

    def expect_reply(self, reply_seq, credit=0):
        """Register a reply for bytes sent with ``write``."""
        self.credit.setdefault(reply_seq, []).append(credit)
        self.outstanding += credit
