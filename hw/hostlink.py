"""UART host link: framed, checksummed transport of stream beats between a host and a board.

The protocol is ``sim.hostlink`` (module docstring) and docs/fpga.md, "The host link".
"""

from amaranth.hdl import Array, Cat, Const, Elaboratable, Module, Mux, Signal, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.cdc import FFSynchronizer
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from sim.hostlink import (ACK, DATA_OUT, END, ESC, ESC_END, ESC_ESC, E_CRC, E_LENGTH, E_LINE,
                          E_OVERFLOW, E_SEQ, E_TYPE, INFO, NAK, OVERHEAD, PRESETS, QUERY,
                          HostlinkParams, hostlink, info_body)

from .common import Unit

__all__ = ["Hostlink", "crc_step_masks", "crc_step", "UNIT"]

BYTE = data.StructLayout({"data": unsigned(8), "last": unsigned(1)})


def crc_step_masks():
    """CRC-16/CCITT-FALSE over one byte as XOR masks: output bit ``k`` is the XOR of the bits
    of ``Cat(crc, byte)`` (24 bits) set in ``masks[k]`` (the bit-serial CRC of
    ``sim.hostlink.crc16_slow`` evaluated symbolically over GF(2))."""
    c = [1 << i for i in range(16)]
    for i in range(7, -1, -1):
        fb = c[15] ^ (1 << (16 + i))
        c = [0] + c[:15]
        for tap in (0, 5, 12):          # polynomial 0x1021
            c[tap] ^= fb
    return c


def crc_step(crc, byte):
    """The CRC register after ``byte``: 16 XOR trees (``crc_step_masks``)."""
    ins = Cat(crc, byte)
    return Cat(*[Cat(*[ins[i] for i in range(24) if mask >> i & 1]).xor()
                 for mask in crc_step_masks()])


def _emit_slot(m, o):
    """The output register ``o`` can take a byte this cycle; a transfer empties it."""
    with m.If(o.ready):
        m.d.sync += o.valid.eq(0)
    return ~o.valid | o.ready


class _UartRx(Elaboratable):
    """8N1 receiver: a two-flop synchronizer, the start bit checked at its middle, each bit
    sampled at its middle. ``strobe`` (a register) pulses with ``data`` for a byte whose stop
    bit is 1, ``error`` for one whose stop bit is 0 (then the line must go high before a new
    start)."""

    def __init__(self, divisor):
        self.divisor = divisor
        self.rx = Signal(init=1)
        self.data = Signal(8)
        self.strobe = Signal()
        self.error = Signal()

    def elaborate(self, platform):
        m = Module()
        d = self.divisor
        rx = Signal(init=1)
        m.submodules.sync = FFSynchronizer(self.rx, rx, init=1)
        cnt = Signal(range(d))
        bit = Signal(range(8))
        sh = Signal(8)
        m.d.comb += self.data.eq(sh)
        m.d.sync += [self.strobe.eq(0), self.error.eq(0)]
        with m.FSM(name="uart_rx"):
            with m.State("IDLE"):
                with m.If(~rx):
                    m.d.sync += cnt.eq(d // 2 - 1)
                    m.next = "START"
            with m.State("START"):
                with m.If(cnt != 0):
                    m.d.sync += cnt.eq(cnt - 1)
                with m.Elif(~rx):
                    m.d.sync += [cnt.eq(d - 1), bit.eq(0)]
                    m.next = "DATA"
                with m.Else():
                    m.next = "IDLE"         # a glitch, not a start bit
            with m.State("DATA"):
                with m.If(cnt != 0):
                    m.d.sync += cnt.eq(cnt - 1)
                with m.Else():
                    m.d.sync += [sh.eq(Cat(sh[1:], rx)), cnt.eq(d - 1), bit.eq(bit + 1)]
                    with m.If(bit == 7):
                        m.next = "STOP"
            with m.State("STOP"):
                with m.If(cnt != 0):
                    m.d.sync += cnt.eq(cnt - 1)
                with m.Elif(rx):
                    m.d.sync += self.strobe.eq(1)
                    m.next = "IDLE"
                with m.Else():
                    m.d.sync += self.error.eq(1)
                    m.next = "BREAK"
            with m.State("BREAK"):
                with m.If(rx):
                    m.next = "IDLE"
        return m


class _UartTx(wiring.Component):
    """8N1 transmitter of a byte stream; ``tx`` is a register, high when idle."""

    i: In(stream.Signature(8))
    tx: Out(1, init=1)

    def __init__(self, divisor):
        self.divisor = divisor
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        d = self.divisor
        sh = Signal(9)                  # data bits, then the stop bit
        cnt = Signal(range(d))
        slots = Signal(range(11))       # bit slots left, the current one included
        m.d.comb += self.i.ready.eq(slots == 0)
        with m.If(self.i.valid & (slots == 0)):
            m.d.sync += [self.tx.eq(0), sh.eq(Cat(self.i.payload, 1)), cnt.eq(d - 1),
                         slots.eq(10)]
        with m.Elif(slots != 0):
            with m.If(cnt != 0):
                m.d.sync += cnt.eq(cnt - 1)
            with m.Else():
                m.d.sync += [cnt.eq(d - 1), slots.eq(slots - 1)]
                with m.If(slots != 1):
                    m.d.sync += [self.tx.eq(sh[0]), sh.eq(Cat(sh[1:], 1))]
        return m


class _CrcAppender(wiring.Component):
    """Pass a frame's bytes through and append their CRC, most significant byte first; the
    frame's ``last`` moves to the CRC's low byte."""

    i: In(stream.Signature(BYTE))
    o: Out(stream.Signature(BYTE))

    def elaborate(self, platform):
        m = Module()
        crc = Signal(16, init=0xFFFF)
        slot = _emit_slot(m, self.o)
        with m.FSM(name="crc"):
            with m.State("PASS"):
                m.d.comb += self.i.ready.eq(slot)
                with m.If(self.i.valid & slot):
                    m.d.sync += [self.o.valid.eq(1), self.o.payload.data.eq(self.i.payload.data),
                                 self.o.payload.last.eq(0),
                                 crc.eq(crc_step(crc, self.i.payload.data))]
                    with m.If(self.i.payload.last):
                        m.next = "HIGH"
            with m.State("HIGH"):
                with m.If(slot):
                    m.d.sync += [self.o.valid.eq(1), self.o.payload.data.eq(crc[8:]),
                                 self.o.payload.last.eq(0)]
                    m.next = "LOW"
            with m.State("LOW"):
                with m.If(slot):
                    m.d.sync += [self.o.valid.eq(1), self.o.payload.data.eq(crc[:8]),
                                 self.o.payload.last.eq(1), crc.eq(0xFFFF)]
                    m.next = "PASS"
        return m


class _SlipEncoder(wiring.Component):
    """Frame bytes (``last`` ends a frame) -> ``END``, escaped bytes, ``END`` (RFC 1055)."""

    i: In(stream.Signature(BYTE))
    o: Out(stream.Signature(8))

    def elaborate(self, platform):
        m = Module()
        held = Signal(8)
        held_last = Signal()
        slot = _emit_slot(m, self.o)

        def emit(value):
            m.d.sync += [self.o.valid.eq(1), self.o.payload.eq(value)]

        b, last = self.i.payload.data, self.i.payload.last
        with m.FSM(name="slip"):
            with m.State("IDLE"):
                with m.If(self.i.valid & slot):
                    emit(END)
                    m.next = "BODY"
            with m.State("BODY"):
                m.d.comb += self.i.ready.eq(slot)
                with m.If(self.i.valid & slot):
                    with m.If((b == END) | (b == ESC)):
                        emit(ESC)
                        m.d.sync += [held.eq(Mux(b == END, ESC_END, ESC_ESC)),
                                     held_last.eq(last)]
                        m.next = "ESCAPED"
                    with m.Else():
                        emit(b)
                        with m.If(last):
                            m.next = "TAIL"
            with m.State("ESCAPED"):
                with m.If(slot):
                    emit(held)
                    m.next = "BODY"
                    with m.If(held_last):
                        m.next = "TAIL"
            with m.State("TAIL"):
                with m.If(slot):
                    emit(END)
                    m.next = "IDLE"
        return m


class Hostlink(wiring.Component):
    """Bridge a UART to stream ports with the framed, checksummed protocol of ``sim.hostlink``.

    Received frames are decoded (SLIP), checked (CRC, length, type, buffer space, sequence)
    and held in a ``buffer_bytes`` receive buffer until their checksum is known; a bad frame
    is dropped and answered by ``NAK`` with its error code, a good one is released in order:
    its beats go through a per-port FIFO to ``o_<port>`` and it is answered by ``ACK`` once
    its last beat is in that FIFO (its buffer space is then free). ``QUERY`` is answered by
    ``INFO``. Beats arriving on ``i_<port>`` wait in a per-port FIFO and leave in ``DATA_OUT``
    frames of all the beats waiting when the frame starts. Transmit priority: ``NAK``, then
    ``ACK``/``INFO``, then data frames of the output ports in turn.

    Parameters
    ----------
    params : HostlinkParams

    Members
    -------
    rx : In(1)
        UART receive line (8N1, ``params.divisor`` clock cycles per bit; synchronized here).
    tx : Out(1)
        UART transmit line (a register, high when idle).
    o_<k> : Out(stream.Signature(in_widths[k]))
        Beats of input port ``k`` (host -> unit), in the order received. Follows lib.stream:
        a FIFO of ``in_depth`` beats; the link never drops a beat it acknowledged.
    i_<k> : In(stream.Signature(out_widths[k]))
        Beats of output port ``k`` (unit -> host); backpressure when its FIFO of
        ``out_depth`` beats is full (the UART is slower than the unit).
    status : In(status_width)
        Returned in ``INFO`` (present when ``status_width`` > 0).

    Throughput: the UART's, one byte per ``10 * divisor`` cycles each way; the receive side
    never stalls the line (a frame that does not fit the free buffer earns ``E_OVERFLOW``).
    """

    def __init__(self, params):
        if not isinstance(params, HostlinkParams):
            raise TypeError(f"params must be HostlinkParams, not {params!r}")
        self.params = params
        members = {"rx": In(1, init=1), "tx": Out(1, init=1)}
        for k, w in enumerate(params.in_widths):
            members[f"o_{k}"] = Out(stream.Signature(w))
        for k, w in enumerate(params.out_widths):
            members[f"i_{k}"] = In(stream.Signature(w))
        if params.status_width:
            members["status"] = In(params.status_width)
        super().__init__(members)

    def elaborate(self, platform):
        p = self.params
        m = Module()
        n_in, n_out = len(p.in_widths), len(p.out_widths)
        N = p.buffer_bytes
        aw = N.bit_length() - 1

        mem = m.submodules.buffer = Memory(shape=8, depth=N, init=[])
        wport = mem.write_port()
        rport = mem.read_port()
        wp = Signal(aw + 1)         # next byte of the frame being received
        wc = Signal(aw + 1)         # end of the committed frames
        rp = Signal(aw + 1)         # next byte to release
        accepted = Signal(32)
        rejected = Signal(32)
        next_seq = Signal(8)        # the seq the next DATA_IN frame must carry

        # ---- receive: UART, SLIP, frame check, buffer -----------------------------------
        m.submodules.uart_rx = urx = _UartRx(p.divisor)
        m.d.comb += urx.rx.eq(self.rx)
        # SLIP decoding into registered events: a byte, the end of a frame, a line error
        escaped = Signal()
        byte_ev, byte, end_ev, line_ev = Signal(), Signal(8), Signal(), Signal()
        m.d.sync += [byte_ev.eq(0), end_ev.eq(0), line_ev.eq(0)]
        with m.If(urx.error):
            m.d.sync += [line_ev.eq(1), escaped.eq(0)]
        with m.Elif(urx.strobe):
            with m.If(urx.data == END):
                m.d.sync += [end_ev.eq(1), line_ev.eq(escaped), escaped.eq(0)]
            with m.Elif(escaped):
                m.d.sync += escaped.eq(0)
                with m.If(urx.data == ESC_END):
                    m.d.sync += [byte_ev.eq(1), byte.eq(END)]
                with m.Elif(urx.data == ESC_ESC):
                    m.d.sync += [byte_ev.eq(1), byte.eq(ESC)]
                with m.Else():
                    m.d.sync += line_ev.eq(1)
            with m.Elif(urx.data == ESC):
                m.d.sync += escaped.eq(1)
            with m.Else():
                m.d.sync += [byte_ev.eq(1), byte.eq(urx.data)]

        count = Signal(range(N + 2))        # bytes of this frame, saturating above N
        crc = Signal(16, init=0xFFFF)
        hdr = [Signal(8, name=f"hdr{i}") for i in range(4)]
        line_err = Signal()
        overflow = Signal()
        # registered: wp moves once per UART byte, and rp only frees space
        full = Signal()
        m.d.sync += full.eq((wp - rp)[:aw + 1] == N)
        with m.If(byte_ev):
            m.d.sync += [crc.eq(crc_step(crc, byte)), count.eq(Mux(count > N, count, count + 1))]
            with m.Switch(count):
                for i in range(4):
                    with m.Case(i):
                        m.d.sync += hdr[i].eq(byte)
            with m.If(overflow | full):
                m.d.sync += overflow.eq(1)
            with m.Else():
                m.d.comb += [wport.addr.eq(wp[:aw]), wport.data.eq(byte), wport.en.eq(1)]
                m.d.sync += wp.eq(wp + 1)

        # the length a DATA_IN frame of this header must have (registered: the header is
        # complete several bytes before the frame ends)
        ftype, arg = hdr[0], Cat(hdr[2], hdr[3])
        exp_len = Signal(16 + max(p.in_bytes).bit_length() + 1)
        times = [sum(arg << i for i in range(b.bit_length()) if b >> i & 1) for b in p.in_bytes]
        m.d.sync += exp_len.eq(Array(t + OVERHEAD for t in times)[ftype[:4]])   # shift-adds
        # the NAK code of the frame so far, registered: the END byte comes at least a UART
        # byte time after the last byte (only an ESC before END is judged at END itself)
        code, code_q = Signal(3), Signal(3)
        m.d.sync += code_q.eq(code)
        with m.If(line_err):
            m.d.comb += code.eq(E_LINE)
        with m.Elif(count < OVERHEAD):
            m.d.comb += code.eq(E_LENGTH)
        with m.Elif(crc != 0):
            m.d.comb += code.eq(E_CRC)
        with m.Elif(overflow):
            m.d.comb += code.eq(E_OVERFLOW)
        with m.Elif(ftype == QUERY):
            m.d.comb += code.eq(Mux(count == OVERHEAD, 0, E_LENGTH))
        with m.Elif(ftype >= n_in):
            m.d.comb += code.eq(E_TYPE)
        with m.Elif((arg == 0) | (count != exp_len)):
            m.d.comb += code.eq(E_LENGTH)
        with m.Elif(hdr[1] != next_seq):
            m.d.comb += code.eq(E_SEQ)

        m.submodules.naks = naks = SyncFIFOBuffered(width=16, depth=4)
        end_code = Mux(line_ev, E_LINE, code_q)
        with m.If(end_ev):
            with m.If((count != 0) | line_err | line_ev):
                with m.If(end_code != 0):
                    m.d.comb += [naks.w_en.eq(1),
                                 naks.w_data.eq(Cat(Mux(count >= 2, hdr[1], 0), end_code))]
                    m.d.sync += [wp.eq(wc), rejected.eq(rejected + 1)]
                with m.Else():      # commit the header and body; the CRC bytes are dropped
                    m.d.sync += [wc.eq(wp - 2), wp.eq(wp - 2), accepted.eq(accepted + 1)]
                    with m.If(ftype != QUERY):
                        m.d.sync += next_seq.eq(next_seq + 1)
            m.d.sync += [count.eq(0), crc.eq(0xFFFF), line_err.eq(0), overflow.eq(0)]
        with m.Elif(line_ev):
            m.d.sync += line_err.eq(1)

        # ---- release: committed frames -> input FIFOs, replies --------------------------
        fifos_in = []
        for k, w in enumerate(p.in_widths):
            f = SyncFIFOBuffered(width=w, depth=p.in_depth)
            m.submodules[f"in_fifo{k}"] = f
            wiring.connect(m, f.r_stream, wiring.flipped(getattr(self, f"o_{k}")))
            fifos_in.append(f)
        reply_valid = Signal()
        reply_type, reply_seq, reply_arg = Signal(8), Signal(8), Signal(16)

        # the byte at rp, registered after the block RAM (its clock-to-out is most of a cycle)
        m.d.comb += rport.addr.eq(rp[:aw])
        rbyte = Signal(8)
        data_valid, rd_valid = Signal(), Signal()   # rport.data / rbyte hold the byte at rp
        take = Signal()
        m.d.sync += [rbyte.eq(rport.data), data_valid.eq(~take),
                     rd_valid.eq(data_valid & ~take)]
        avail = Signal()                # a committed byte at rp (registered: wc only grows)
        m.d.sync += avail.eq(wc != rp)
        with m.If(take):
            m.d.sync += rp.eq(rp + 1)
        r_type, r_seq, r_arg = Signal(8), Signal(8), Signal(16)
        left = Signal(16)
        j = Signal(range(max(*p.in_bytes, 2)))
        beat = Signal(8 * max(p.in_bytes))
        port = r_type[:4]
        last_byte = Array(Const(b - 1, j.shape()) for b in p.in_bytes)[port]
        with m.FSM(name="release"):
            for i, (state, reg) in enumerate((("TYPE", r_type), ("SEQ", r_seq),
                                              ("ARG_LO", r_arg[:8]), ("ARG_HI", r_arg[8:]))):
                with m.State(state):
                    with m.If(rd_valid & avail):
                        m.d.comb += take.eq(1)
                        m.d.sync += reg.eq(rbyte)
                        if i < 3:
                            m.next = ("SEQ", "ARG_LO", "ARG_HI")[i]
                        else:
                            m.d.sync += [left.eq(Cat(r_arg[:8], rbyte)), j.eq(0)]
                            m.next = "BEAT"
                            with m.If(r_type == QUERY):
                                m.next = "REPLY"
            with m.State("BEAT"):
                with m.If(rd_valid):
                    m.d.comb += take.eq(1)
                    with m.Switch(j):
                        for b in range(max(p.in_bytes)):
                            with m.Case(b):
                                m.d.sync += beat[8 * b:8 * b + 8].eq(rbyte)
                    m.d.sync += j.eq(j + 1)
                    with m.If(j == last_byte):
                        m.next = "PUSH"
            with m.State("PUSH"):
                for k, f in enumerate(fifos_in):
                    m.d.comb += [f.w_data.eq(beat[:p.in_widths[k]]), f.w_en.eq(port == k)]
                with m.If(Array(f.w_rdy for f in fifos_in)[port]):
                    m.d.sync += [left.eq(left - 1), j.eq(0)]
                    m.next = "BEAT"
                    with m.If(left == 1):
                        m.next = "REPLY"
            with m.State("REPLY"):
                with m.If(~reply_valid):
                    query = r_type == QUERY
                    m.d.sync += [reply_valid.eq(1), reply_type.eq(Mux(query, INFO, ACK)),
                                 reply_seq.eq(r_seq),
                                 reply_arg.eq(Mux(query, p.info_length, r_arg))]
                    m.next = "TYPE"

        # ---- transmit: frames -> CRC -> SLIP -> UART ------------------------------------
        m.submodules.crc_append = crc_app = _CrcAppender()
        m.submodules.slip = slip = _SlipEncoder()
        m.submodules.uart_tx = utx = _UartTx(p.divisor)
        wiring.connect(m, crc_app.o, slip.i)
        wiring.connect(m, slip.o, utx.i)
        m.d.comb += self.tx.eq(utx.tx)
        raw = crc_app.i
        slot = _emit_slot(m, raw)

        def emit(value, last):
            m.d.sync += [raw.valid.eq(1), raw.payload.data.eq(value), raw.payload.last.eq(last)]

        fifos_out = []
        for k, w in enumerate(p.out_widths):
            f = SyncFIFOBuffered(width=w, depth=p.out_depth)
            m.submodules[f"out_fifo{k}"] = f
            wiring.connect(m, wiring.flipped(getattr(self, f"i_{k}")), f.w_stream)
            fifos_out.append(f)

        t_type, t_seq, t_arg = Signal(8), Signal(8), Signal(16)
        t_body = Signal(range(3))           # 0: none, 1: INFO, 2: data beats
        idx = Signal(range(max(p.info_length, 4)))
        info = Array(self._info_bytes(accepted, rejected, next_seq))
        if n_out:
            rr = Signal(range(max(n_out, 2)))   # the output port looked at next
            t_port = Signal(range(max(n_out, 2)))
            t_left = Signal(range(p.out_depth + 1))
            tx_seq = Signal(8)
            level = Array(f.level for f in fifos_out)
            sreg = Signal(8 * max(p.out_bytes))
            tj = Signal(range(max(*p.out_bytes, 2)))
            t_last_byte = Array(Const(b - 1, tj.shape()) for b in p.out_bytes)[t_port]
        with m.FSM(name="tx"):
            with m.State("IDLE"):
                m.d.sync += idx.eq(0)
                with m.If(naks.r_rdy):
                    m.d.comb += naks.r_en.eq(1)
                    m.d.sync += [t_type.eq(NAK), t_seq.eq(naks.r_data[:8]),
                                 t_arg.eq(naks.r_data[8:]), t_body.eq(0)]
                    m.next = "HEADER"
                with m.Elif(reply_valid):
                    m.d.sync += [reply_valid.eq(0), t_type.eq(reply_type), t_seq.eq(reply_seq),
                                 t_arg.eq(reply_arg), t_body.eq(reply_type == INFO)]
                    m.next = "HEADER"
                if n_out:
                    with m.Elif(level[rr] != 0):
                        m.d.sync += [t_type.eq(DATA_OUT | rr), t_seq.eq(tx_seq),
                                     tx_seq.eq(tx_seq + 1), t_arg.eq(level[rr]),
                                     t_left.eq(level[rr]), t_port.eq(rr), t_body.eq(2)]
                        m.next = "HEADER"
                    m.d.sync += rr.eq(Mux(rr == n_out - 1, 0, rr + 1))
            with m.State("HEADER"):
                hbytes = Array([t_type, t_seq, t_arg[:8], t_arg[8:]])
                with m.If(slot):
                    emit(hbytes[idx[:2]], (idx == 3) & (t_body == 0))
                    m.d.sync += idx.eq(idx + 1)
                    with m.If(idx == 3):
                        m.d.sync += idx.eq(0)
                        m.next = "IDLE"
                        with m.If(t_body == 1):
                            m.next = "INFO"
                        if n_out:
                            with m.If(t_body == 2):
                                m.next = "POP"
            with m.State("INFO"):
                with m.If(slot):
                    emit(info[idx], idx == p.info_length - 1)
                    m.d.sync += idx.eq(idx + 1)
                    with m.If(idx == p.info_length - 1):
                        m.next = "IDLE"
            if n_out:
                with m.State("POP"):
                    for k, f in enumerate(fifos_out):
                        m.d.comb += f.r_en.eq(t_port == k)
                    with m.If(Array(f.r_rdy for f in fifos_out)[t_port]):
                        m.d.sync += [sreg.eq(Array(f.r_data for f in fifos_out)[t_port]),
                                     tj.eq(0), t_left.eq(t_left - 1)]
                        m.next = "EMIT"
                with m.State("EMIT"):
                    with m.If(slot):
                        emit(sreg[:8], (tj == t_last_byte) & (t_left == 0))
                        m.d.sync += [sreg.eq(sreg >> 8), tj.eq(tj + 1)]
                        with m.If(tj == t_last_byte):
                            m.next = "IDLE"
                            with m.If(t_left != 0):
                                m.next = "POP"
        return m

    def _info_bytes(self, accepted, rejected, next_seq):
        """The ``INFO`` body as byte values (``sim.hostlink.info_body``): constants, the next
        expected seq, the frame counters and ``status``."""
        p = self.params
        const = info_body(p, accepted=0, rejected=0, next_seq=0, status=0)
        out = [Const(b, 8) for b in const]
        out[3] = next_seq
        for base, counter in ((16, accepted), (20, rejected)):
            for i in range(4):
                out[base + i] = counter[8 * i:8 * i + 8]
        if p.status_width:
            at = 26 + 2 * (len(p.in_widths) + len(p.out_widths))
            status = Cat(self.status, Const(0, 8 * ((p.status_width + 7) // 8) - p.status_width))
            for i in range((p.status_width + 7) // 8):
                out[at + i] = status[8 * i:8 * i + 8]
        return out


UNIT = Unit(name="hostlink", params=HostlinkParams, presets=PRESETS, component=Hostlink,
            golden=hostlink,
            summary="UART host link: SLIP frames with CRC-16, credit flow control, any streams")
