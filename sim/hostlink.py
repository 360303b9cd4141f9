"""Golden model of the ``hostlink`` unit: the framed UART link between a host and a board.

The protocol (docs/fpga.md, "The host link") in one place, used by the hardware's golden model,
its tests and the host tool (``xbarllm host``):

- **Bytes**: 8N1 UART (one start bit, 8 data bits LSB first, one stop bit, no parity).
- **Framing**: SLIP (RFC 1055). A frame is sent as ``END``, its bytes with ``END`` escaped as
  ``ESC ESC_END`` and ``ESC`` as ``ESC ESC_ESC``, then ``END``. Empty frames are ignored, so
  the leading ``END`` flushes line noise. A receiver resynchronizes at every ``END``.
- **Frame**: ``type`` (u8), ``seq`` (u8), ``arg`` (u16 LE), a body, then the CRC-16/CCITT-FALSE
  (polynomial 0x1021, initial value 0xFFFF, not reflected, no final XOR) of everything before
  it, most significant byte first, so that the CRC of a whole good frame is 0.
- **Beats**: a stream payload of ``W`` bits travels as ``ceil(W / 8)`` bytes, least
  significant byte first; the bits above ``W`` in the last byte are ignored (sent as 0).

Host -> board: ``DATA_IN | port`` (``arg`` beats for input port ``port``) and ``QUERY``
(``arg`` 0, no body). Board -> host: ``DATA_OUT | port`` (``arg`` beats from output port
``port``, ``seq`` counts the board's data frames), ``ACK`` (the host frame ``seq``, ``arg``
beats, sent once all its beats were handed on and its buffer space is free), ``NAK`` (the
host frame ``seq`` as received, 0 when shorter than 2 bytes; ``arg`` the error code) and
``INFO`` (the reply to ``QUERY``; ``arg`` is the body length). Errors, checked in this order:
``E_LINE`` (a UART stop bit was 0 or an ``ESC`` was followed by neither ``ESC_END`` nor
``ESC_ESC``), ``E_LENGTH`` (fewer than 6 bytes), ``E_CRC``, ``E_OVERFLOW`` (the frame did not
fit the free receive buffer), ``E_TYPE`` (unknown type or port), ``E_LENGTH`` (``arg`` is 0 or
the length is not ``6 + arg * bytes_per_beat``; a ``QUERY`` is 6 bytes), ``E_SEQ`` (a
``DATA_IN`` frame whose ``seq`` is not the one the board expects next).

Delivery is in order (go-back-N): the board accepts ``DATA_IN`` frames only in ``seq`` order
(0, 1, ..., 255, 0, ... from reset; ``INFO`` names the next one), so after a ``NAK`` the host
sends that frame and every later one again, and the copies of frames already accepted earn
``E_SEQ``. Flow control is by credit: the host keeps the sum of ``6 + arg * bytes_per_beat``
over its frames not yet answered by ``ACK``/``NAK`` at most ``buffer_bytes``; then no frame
overflows.
"""

import zlib
from dataclasses import dataclass, field

from .params import check_int

__all__ = ["HostlinkParams", "PRESETS", "DEFAULT", "Frame", "FrameError", "HostlinkResult",
           "END", "ESC", "ESC_END", "ESC_ESC", "LINE_ERROR", "DATA_IN", "QUERY", "DATA_OUT",
           "INFO", "ACK", "NAK", "E_CRC", "E_LENGTH", "E_TYPE", "E_OVERFLOW", "E_LINE", "E_SEQ",
           "ERRORS", "OVERHEAD", "INFO_VERSION", "crc16", "crc16_slow", "slip_encode",
           "SlipDecoder", "encode_frame", "parse_frame", "pack_beats", "unpack_beats",
           "info_body", "parse_info", "design_ident", "LinkModel", "hostlink"]

# SLIP (RFC 1055)
END, ESC, ESC_END, ESC_ESC = 0xC0, 0xDB, 0xDC, 0xDD
LINE_ERROR = 0x100          # in a received byte sequence: a byte whose stop bit was 0

# frame types
DATA_IN = 0x00              # | port, host -> board
QUERY = 0x20                # host -> board
DATA_OUT = 0x80             # | port, board -> host
INFO = 0xA0                 # board -> host, reply to QUERY
ACK = 0xC0
NAK = 0xC1

# NAK codes
E_CRC, E_LENGTH, E_TYPE, E_OVERFLOW, E_LINE, E_SEQ = 1, 2, 3, 4, 5, 6
ERRORS = {E_CRC: "bad checksum", E_LENGTH: "wrong length", E_TYPE: "unknown type or port",
          E_OVERFLOW: "receive buffer overflow", E_LINE: "UART or SLIP framing error",
          E_SEQ: "out of sequence"}

HEADER = 4
OVERHEAD = 6                # header + CRC
MAX_PORTS = 16
INFO_VERSION = 1


@dataclass(frozen=True, kw_only=True)
class HostlinkParams:
    """Parameters of the host link.

    in_widths : payload width in bits of each stream the link drives (host -> unit), 1..4096;
        1..16 ports.
    out_widths : payload width of each stream the link takes (unit -> host), 1..4096;
        0..16 ports.
    divisor : clock cycles per UART bit (clock frequency / baud rate), 4..65535.
    buffer_bytes : receive buffer; a frame waits there until its checksum is checked, power of
        two 64..65536.
    in_depth : beats buffered per input port between the receive buffer and the unit, power of
        two 2..4096.
    out_depth : beats buffered per output port; also the most beats in one ``DATA_OUT`` frame,
        power of two 2..4096.
    status_width : bits of the ``status`` input returned in ``INFO`` (the unit's counters),
        0..8192 (the INFO frame carries it in whole bytes).
    ident : 32-bit design identifier returned in ``INFO``, 0..2**32 - 1.
    """

    in_widths: tuple = (17,)
    out_widths: tuple = (17,)
    divisor: int = 8
    buffer_bytes: int = 2048
    in_depth: int = 16
    out_depth: int = 16
    status_width: int = 0
    ident: int = 0

    def __post_init__(self):
        for name, ws, lo in (("in_widths", self.in_widths, 1), ("out_widths", self.out_widths, 0)):
            if not isinstance(ws, tuple) or not lo <= len(ws) <= MAX_PORTS:
                raise ValueError(f"{name} must be a tuple of {lo}..{MAX_PORTS} widths, not {ws!r}")
            for i, w in enumerate(ws):
                check_int(f"{name}[{i}]", w, 1, 4096)
        check_int("divisor", self.divisor, 4, 65535)
        check_int("buffer_bytes", self.buffer_bytes, 64, 65536, pow2=True)
        check_int("in_depth", self.in_depth, 2, 4096, pow2=True)
        check_int("out_depth", self.out_depth, 2, 4096, pow2=True)
        check_int("status_width", self.status_width, 0, 8192)
        check_int("ident", self.ident, 0, (1 << 32) - 1)

    @property
    def in_bytes(self):
        """Bytes per beat of each input port."""
        return tuple((w + 7) // 8 for w in self.in_widths)

    @property
    def out_bytes(self):
        return tuple((w + 7) // 8 for w in self.out_widths)

    @property
    def info_length(self):
        """Bytes in the body of an ``INFO`` frame."""
        return 26 + 2 * (len(self.in_widths) + len(self.out_widths)) + (self.status_width + 7) // 8

    def max_beats(self, port):
        """The most beats one ``DATA_IN`` frame for ``port`` can carry (it fits the buffer)."""
        return min((self.buffer_bytes - OVERHEAD) // self.in_bytes[port], 0xFFFF)


DEFAULT = HostlinkParams()
PRESETS = {name: DEFAULT for name in ("tiny", "minilm", "bert-base", "bert-large")}


# ------------------------------------------------------------------------------------------
# Checksum and SLIP
# ------------------------------------------------------------------------------------------

def _crc_table():
    table = []
    for b in range(256):
        c = b << 8
        for _ in range(8):
            c = ((c << 1) ^ 0x1021) if c & 0x8000 else c << 1
        table.append(c & 0xFFFF)
    return tuple(table)


_CRC_TABLE = _crc_table()


def crc16(data, crc=0xFFFF):
    """CRC-16/CCITT-FALSE of ``data`` (bytes or ints 0..255), continuing from ``crc``."""
    for b in data:
        crc = ((crc << 8) & 0xFFFF) ^ _CRC_TABLE[(crc >> 8) ^ b]
    return crc


def crc16_slow(data, crc=0xFFFF):
    """The same CRC, bit by bit (the reference for ``crc16`` and the RTL's byte step)."""
    for b in data:
        for i in range(7, -1, -1):
            fb = ((crc >> 15) ^ (b >> i)) & 1
            crc = ((crc << 1) & 0xFFFF) ^ (0x1021 if fb else 0)
    return crc


def slip_encode(frame):
    """``END``, ``frame`` with ``END``/``ESC`` escaped, ``END``."""
    out = bytearray([END])
    for b in frame:
        if b == END:
            out += bytes([ESC, ESC_END])
        elif b == ESC:
            out += bytes([ESC, ESC_ESC])
        else:
            out.append(b)
    out.append(END)
    return bytes(out)


class SlipDecoder:
    """Incremental SLIP decoder: ``feed`` bytes, get back the completed frames.

    Each frame is ``(bytes, line_error)``; ``line_error`` is set when a byte of the frame came
    with a UART framing error (``LINE_ERROR``) or an ``ESC`` was followed by a byte other than
    ``ESC_END``/``ESC_ESC`` (that byte is dropped). Empty frames without an error are skipped.
    """

    def __init__(self):
        self.buf = bytearray()
        self.escaped = False
        self.error = False

    def feed(self, data):
        frames = []
        for b in data:
            if b == LINE_ERROR:
                self.error = True
                self.escaped = False
            elif b == END:
                if self.escaped:
                    self.error = True
                if self.buf or self.error:
                    frames.append((bytes(self.buf), self.error))
                self.buf = bytearray()
                self.escaped = self.error = False
            elif self.escaped:
                self.escaped = False
                if b == ESC_END:
                    self.buf.append(END)
                elif b == ESC_ESC:
                    self.buf.append(ESC)
                else:
                    self.error = True
            elif b == ESC:
                self.escaped = True
            else:
                self.buf.append(b)
        return frames


# ------------------------------------------------------------------------------------------
# Frames and beats
# ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Frame:
    """A decoded frame: ``type``, ``seq``, ``arg`` and the body bytes."""

    type: int
    seq: int
    arg: int
    body: bytes = b""

    @property
    def kind(self):
        for name, t in (("ACK", ACK), ("NAK", NAK), ("INFO", INFO), ("QUERY", QUERY)):
            if self.type == t:
                return name
        return "DATA_OUT" if self.type & DATA_OUT else "DATA_IN"

    @property
    def port(self):
        return self.type & 0x1F


class FrameError(ValueError):
    """A frame that is not well formed; ``code`` is the NAK code it earns."""

    def __init__(self, code, message):
        super().__init__(message)
        self.code = code


def encode_frame(ftype, seq, arg, body=b""):
    """The bytes of a frame before SLIP: header, body, CRC (most significant byte first)."""
    for name, v, hi in (("type", ftype, 0xFF), ("seq", seq, 0xFF), ("arg", arg, 0xFFFF)):
        check_int(name, v, 0, hi)
    raw = bytes([ftype, seq, arg & 0xFF, arg >> 8]) + bytes(body)
    crc = crc16(raw)
    return raw + bytes([crc >> 8, crc & 0xFF])


def parse_frame(raw):
    """Check length and CRC of a frame's bytes; return a ``Frame`` or raise ``FrameError``."""
    if len(raw) < OVERHEAD:
        raise FrameError(E_LENGTH, f"frame of {len(raw)} bytes; at least {OVERHEAD}")
    if crc16(raw) != 0:
        raise FrameError(E_CRC, "bad checksum")
    return Frame(raw[0], raw[1], raw[2] | raw[3] << 8, bytes(raw[HEADER:-2]))


def pack_beats(words, width):
    """Payload ints of ``width`` bits -> bytes (each beat ``ceil(width / 8)`` bytes, LE)."""
    nb = (width + 7) // 8
    mask = (1 << width) - 1
    return b"".join((int(w) & mask).to_bytes(nb, "little") for w in words)


def unpack_beats(body, width, n=None):
    """Bytes -> ``n`` payload ints of ``width`` bits (bits above ``width`` ignored)."""
    nb = (width + 7) // 8
    if n is None:
        n = len(body) // nb
    if len(body) != n * nb:
        raise FrameError(E_LENGTH, f"{len(body)} body bytes for {n} beats of {nb} bytes")
    mask = (1 << width) - 1
    return [int.from_bytes(body[i * nb:(i + 1) * nb], "little") & mask for i in range(n)]


def info_body(params, *, accepted, rejected, next_seq, status=0):
    """The body of the ``INFO`` frame (layout in docs/fpga.md)."""
    p = params
    out = bytearray([INFO_VERSION, len(p.in_widths), len(p.out_widths), next_seq])
    for v in (p.ident, p.buffer_bytes, p.divisor, accepted & 0xFFFFFFFF, rejected & 0xFFFFFFFF):
        out += v.to_bytes(4, "little")
    out += p.status_width.to_bytes(2, "little")
    for w in p.in_widths + p.out_widths:
        out += w.to_bytes(2, "little")
    out += (status & ((1 << p.status_width) - 1)).to_bytes((p.status_width + 7) // 8, "little")
    assert len(out) == p.info_length
    return bytes(out)


def parse_info(body):
    """Decode an ``INFO`` body into a dict (raises ``FrameError`` when malformed)."""
    if len(body) < 26 or body[0] != INFO_VERSION:
        raise FrameError(E_LENGTH, f"INFO body of {len(body)} bytes, version "
                                   f"{body[0] if body else None}; expected version {INFO_VERSION}")
    n_in, n_out = body[1], body[2]
    u32 = [int.from_bytes(body[4 + 4 * i:8 + 4 * i], "little") for i in range(5)]
    sw = int.from_bytes(body[24:26], "little")
    need = 26 + 2 * (n_in + n_out) + (sw + 7) // 8
    if len(body) != need:
        raise FrameError(E_LENGTH, f"INFO body of {len(body)} bytes; expected {need}")
    widths = [int.from_bytes(body[26 + 2 * i:28 + 2 * i], "little") for i in range(n_in + n_out)]
    at = 26 + 2 * (n_in + n_out)
    return {"version": body[0], "next_seq": body[3], "ident": u32[0], "buffer_bytes": u32[1],
            "divisor": u32[2],
            "accepted": u32[3], "rejected": u32[4], "status_width": sw,
            "in_widths": tuple(widths[:n_in]), "out_widths": tuple(widths[n_in:]),
            "status": int.from_bytes(body[at:], "little")}


def design_ident(text):
    """32-bit identifier of a design description (CRC-32 of its text)."""
    return zlib.crc32(text.encode())


# ------------------------------------------------------------------------------------------
# The board side
# ------------------------------------------------------------------------------------------

@dataclass
class HostlinkResult:
    """What the board does with a received byte sequence.

    beats : one list of payload ints per input port, in the order handed to the unit
    replies : the ``ACK``/``NAK``/``INFO`` frames, one per host frame, in host-frame order
    """

    beats: list
    replies: list = field(default_factory=list)


def _check_frame(raw, line_error, p, next_seq):
    """The NAK code a received frame earns (0: accepted), in the RTL's order."""
    if line_error:
        return E_LINE
    if len(raw) < OVERHEAD:
        return E_LENGTH
    if crc16(raw) != 0:
        return E_CRC
    if len(raw) > p.buffer_bytes:
        return E_OVERFLOW
    ftype, arg = raw[0], raw[2] | raw[3] << 8
    if ftype == QUERY:
        return 0 if len(raw) == OVERHEAD else E_LENGTH
    if ftype >= QUERY or ftype >= len(p.in_widths):
        return E_TYPE
    if arg == 0 or len(raw) != OVERHEAD + arg * p.in_bytes[ftype]:
        return E_LENGTH
    if raw[1] != next_seq:
        return E_SEQ
    return 0


class LinkModel:
    """The board side of the link, fed incrementally (the golden model ``hostlink`` runs it
    over a whole byte sequence). ``feed(rx)`` returns the replies to the frames completed by
    those bytes; ``beats`` collects what each input port was handed. The receive buffer is
    taken as empty at the start of each frame."""

    def __init__(self, params, *, status=0):
        self.params = params
        self.status = status
        self.beats = [[] for _ in params.in_widths]
        self.accepted = self.rejected = self.next_seq = 0
        self._slip = SlipDecoder()

    def feed(self, rx):
        p = self.params
        replies = []
        for raw, line_error in self._slip.feed(rx):
            seq = raw[1] if len(raw) >= 2 else 0
            code = _check_frame(raw, line_error, p, self.next_seq)
            if code:
                self.rejected += 1
                replies.append(Frame(NAK, seq, code))
                continue
            self.accepted += 1
            ftype, arg = raw[0], raw[2] | raw[3] << 8
            if ftype == QUERY:
                body = info_body(p, accepted=self.accepted, rejected=self.rejected,
                                 next_seq=self.next_seq, status=self.status)
                replies.append(Frame(INFO, seq, len(body), body))
            else:
                self.beats[ftype] += unpack_beats(raw[HEADER:-2], p.in_widths[ftype], arg)
                replies.append(Frame(ACK, seq, arg))
                self.next_seq = (self.next_seq + 1) & 0xFF
        return replies


def hostlink(rx, params, *, status=0):
    """Golden model of the board side: the received bytes -> beats per port and replies.

    ``rx`` is the byte sequence the UART receiver delivers (ints 0..255; ``LINE_ERROR`` for a
    byte whose stop bit was 0). Each frame is checked (module docstring, order of errors);
    a good ``DATA_IN`` frame (``seq`` 0, 1, ... from reset) hands its beats to its port (masked
    to the port's width) and is answered by ``ACK``, a ``QUERY`` by ``INFO`` (``accepted``
    counts it, ``status`` is the ``status`` input), a bad frame by ``NAK``. The model takes the
    receive buffer as empty at the start of each frame (the unit takes every beat before the
    next frame ends), so ``E_OVERFLOW`` means a frame longer than ``buffer_bytes``. The
    ``DATA_OUT`` direction carries the output ports' beats in order; its frame boundaries
    depend on timing, and ``parse_frame`` with ``unpack_beats`` decodes it.
    """
    model = LinkModel(params, status=status)
    replies = model.feed(rx)
    return HostlinkResult(beats=model.beats, replies=replies)
