"""``xbarllm host``: stream vectors to a board running a unit behind the host link, read back
the results.

The host side of the protocol in ``sim.hostlink`` (docs/fpga.md): it asks the board for its
``INFO`` and checks the design against the description ``xbarllm fpga`` wrote (``fpga.json``),
splits each input port's beats into ``DATA_IN`` frames (ports interleaved by progress, so units
that take several ports in step are fed in step), keeps as many frames in flight as the
board's buffer holds (credit), goes back to a frame the board rejected and sends it and the
later ones again (the board takes frames only in ``seq`` order), and gathers the ``DATA_OUT``
beats of every output port. Any object with pyserial's ``read``/``write`` works as the port;
``open_port`` opens a device or a pyserial URL (``socket://host:port``).
"""

import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from sim.hostlink import (ACK, DATA_IN, DATA_OUT, E_SEQ, ERRORS, INFO, NAK, OVERHEAD, QUERY,
                          FrameError, HostlinkParams, SlipDecoder, encode_frame, pack_beats,
                          parse_frame, parse_info, slip_encode, unpack_beats)
from sim.params import params_from_dict

from .build import UsageError

__all__ = ["Host", "HostError", "HostStats", "open_port", "plan_frames", "pack_fields",
           "unpack_fields", "load_inputs", "save_outputs", "compare"]


class HostError(RuntimeError):
    """The link failed (no answer, too many rejected frames, data lost on the way back)."""


def open_port(port, baud):
    """A pyserial port (device path or URL) with a short read timeout."""
    import serial
    try:
        return serial.serial_for_url(port, baudrate=baud, timeout=0.02, write_timeout=10)
    except (serial.SerialException, ValueError) as e:
        raise UsageError(f"cannot open port {port!r}: {e}") from None


# ------------------------------------------------------------------------------------------
# Payload fields <-> beats
# ------------------------------------------------------------------------------------------

def pack_fields(port, arrays):
    """Beats (payload ints) of a port description (``fpga.json``) from its field arrays."""
    fields = port["fields"]
    missing = sorted(set(fields) - set(arrays))
    if missing:
        raise UsageError(f"port {port['name']}: fields {', '.join(missing)} missing (it has "
                         f"{', '.join(fields)})")
    cols = {k: np.asarray(arrays[k]).ravel() for k in fields}
    n = {len(c) for c in cols.values()}
    if len(n) != 1:
        raise UsageError(f"port {port['name']}: its fields have different lengths "
                         f"({', '.join(f'{k}: {len(c)}' for k, c in cols.items())})")
    words = [0] * n.pop()
    for name, f in fields.items():
        mask = (1 << f["width"]) - 1
        col = cols[name]
        if col.dtype.kind not in "iuO":
            raise UsageError(f"{port['name']}.{name} must hold integers, not {col.dtype}")
        for i, v in enumerate(col.tolist()):
            words[i] |= (int(v) & mask) << f["offset"]
    return words


def unpack_fields(port, words):
    """Field arrays of a port from its beats (signed fields sign-extended)."""
    out = {}
    for name, f in port["fields"].items():
        w, off = f["width"], f["offset"]
        vals = [(x >> off) & ((1 << w) - 1) for x in words]
        if f["signed"]:
            vals = [v - (1 << w) if v >> (w - 1) else v for v in vals]
        out[name] = np.array(vals, dtype=np.int64 if w < 64 else object)
    return out


def load_inputs(design, path):
    """Beats per input port from an ``.npz`` of ``<port>.<field>`` arrays (a port without
    arrays sends nothing)."""
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise UsageError(f"cannot read {path}: {e}") from None
    names = {p["name"] for p in design["inputs"]}
    unknown = sorted(k for k in data.files if k.split(".", 1)[0] not in names)
    if unknown:
        raise UsageError(f"{path}: {', '.join(unknown)} name no input port (the design has "
                         f"{', '.join(sorted(names))}; keys are <port>.<field>)")
    beats = []
    for port in design["inputs"]:
        arrays = {k.split(".", 1)[1]: data[k] for k in data.files
                  if k.split(".", 1)[0] == port["name"] and "." in k}
        beats.append(pack_fields(port, arrays) if arrays else [])
    return beats


def save_outputs(design, beats, path, status=None):
    arrays = {}
    for port, words in zip(design["outputs"], beats):
        for name, vals in unpack_fields(port, words).items():
            arrays[f"{port['name']}.{name}"] = vals
    for name, value in (status or {}).items():
        arrays[f"status.{name}"] = np.array(value, dtype=np.int64 if value < 1 << 63 else object)
    np.savez(path, **arrays)


def compare(design, beats, path, *, show=10):
    """Lines describing every difference between the beats and an ``.npz`` of expected
    output fields (empty when equal)."""
    data = np.load(path, allow_pickle=False)
    lines = []
    for port, words in zip(design["outputs"], beats):
        keys = [k for k in data.files if k.startswith(port["name"] + ".")]
        if not keys:
            continue
        want = pack_fields(port, {k.split(".", 1)[1]: data[k] for k in keys})
        if len(words) != len(want):
            lines.append(f"{port['name']}: {len(words)} beats, expected {len(want)}")
        bad = [i for i, (a, b) in enumerate(zip(words, want)) if a != b]
        for i in bad[:show]:
            got = unpack_fields(port, [words[i]])
            exp = unpack_fields(port, [want[i]])
            lines.append(f"{port['name']} beat {i}: expected "
                         f"{ {k: int(v[0]) for k, v in exp.items()} }, actual "
                         f"{ {k: int(v[0]) for k, v in got.items()} }")
        if len(bad) > show:
            lines.append(f"{port['name']}: {len(bad) - show} more mismatching beats")
    return lines


def expected_counts(design, path):
    data = np.load(path, allow_pickle=False)
    counts = []
    for port in design["outputs"]:
        keys = [k for k in data.files if k.startswith(port["name"] + ".")]
        counts.append(len(np.asarray(data[keys[0]]).ravel()) if keys else 0)
    return counts


# ------------------------------------------------------------------------------------------
# The link
# ------------------------------------------------------------------------------------------

def plan_frames(params, beats, *, chunk=None, order="interleave"):
    """``[(port, words)]``: each port's beats in frames of at most ``chunk`` beats (default:
    half the board's buffer).

    ``order="interleave"`` sends the least advanced port next, in frames of at most
    ``in_depth`` beats when several ports are fed (for units that take their ports in step: a
    frame never waits long behind another port's); ``"sequence"`` sends port 0's beats, then
    port 1's, ... (for units that take one port fully before the next, e.g. weights first).
    """
    if order not in ("interleave", "sequence"):
        raise ValueError(f"order must be 'interleave' or 'sequence', not {order!r}")
    ports = [k for k, words in enumerate(beats) if words]
    sizes = {}
    for k in ports:
        most = min(params.max_beats(k), (params.buffer_bytes // 2 - OVERHEAD) // params.in_bytes[k])
        if len(ports) > 1 and order == "interleave":
            most = min(most, params.in_depth)
        sizes[k] = max(1, min(most, chunk or most))
    if order == "sequence":
        return [(k, beats[k][at:at + sizes[k]]) for k in ports
                for at in range(0, len(beats[k]), sizes[k])]
    pos = {k: 0 for k in ports}
    frames = []
    while ports:
        k = min(ports, key=lambda q: (pos[q] / len(beats[q]), q))
        frames.append((k, beats[k][pos[k]:pos[k] + sizes[k]]))
        pos[k] += sizes[k]
        if pos[k] >= len(beats[k]):
            ports.remove(k)
    return frames


@dataclass
class HostStats:
    frames_sent: int = 0
    retransmissions: int = 0
    naks: dict = field(default_factory=dict)        # code -> count
    frames_received: int = 0
    bad_frames: int = 0                             # from the board, failed CRC or SLIP
    lost_frames: int = 0                            # gaps in the board's DATA_OUT seq
    seconds: float = 0.0
    bytes_sent: int = 0
    bytes_received: int = 0


class Host:
    """The host end of the link on ``port`` for the design ``design`` (``fpga.json``).

    Parameters
    ----------
    port
        pyserial-like: ``write(bytes)``, ``read(n)`` returning what arrived within its
        timeout.
    design : dict
        The design description (``BoardCore.describe()``, ``fpga.json``).
    timeout : float
        Seconds without any reply before frames in flight are sent again.
    retries : int
        Times one frame may be rejected or time out before ``HostError``.
    """

    def __init__(self, port, design, *, timeout=2.0, retries=8):
        self.port = port
        self.design = design
        self.params = params_from_dict(HostlinkParams, design["hostlink"])
        self.timeout = timeout
        self.retries = retries
        self.stats = HostStats()
        self._slip = SlipDecoder()
        self._backlog = deque()         # frames read while waiting for another
        self._query_seq = 0

    # -- bytes ---------------------------------------------------------------------------
    def _write(self, frame):
        wire = slip_encode(frame)
        self.port.write(wire)
        self.stats.bytes_sent += len(wire)

    def _frames(self):
        """Frames that arrived (each checked; a bad one is counted and dropped)."""
        good = list(self._backlog)
        self._backlog.clear()
        data = self.port.read(4096)
        self.stats.bytes_received += len(data)
        for raw, err in self._slip.feed(data):
            try:
                if err:
                    raise FrameError(0, "SLIP error")
                good.append(parse_frame(raw))
                self.stats.frames_received += 1
            except FrameError:
                self.stats.bad_frames += 1
        return good

    # -- requests ------------------------------------------------------------------------
    def query(self):
        """The board's ``INFO`` as a dict, checked against the design."""
        self._query_seq = (self._query_seq + 1) & 0xFF
        for _ in range(self.retries):
            self._write(encode_frame(QUERY, self._query_seq, 0))
            deadline = time.monotonic() + self.timeout
            while time.monotonic() < deadline:
                frames = self._frames()
                for i, f in enumerate(frames):
                    if f.type == INFO and f.seq == self._query_seq:
                        self._backlog.extend(frames[i + 1:])
                        return self._check_info(parse_info(f.body))
                    self._backlog.append(f)
        raise HostError(f"no INFO from the board within {self.retries} x {self.timeout:g} s: "
                        "is it programmed, and are the port and baud rate right?")

    def _check_info(self, info):
        p, d = self.params, self.design
        want = (p.ident, p.in_widths, p.out_widths)
        got = (info["ident"], info["in_widths"], info["out_widths"])
        if got != want:
            raise UsageError(f"the board runs another design (ident {info['ident']:#010x}, "
                             f"ports {info['in_widths']} -> {info['out_widths']}), not "
                             f"{d['unit']} (ident {p.ident:#010x}, ports {p.in_widths} -> "
                             f"{p.out_widths}); build and program it with xbarllm fpga")
        status, value = {}, info["status"]
        for s in d.get("status", []):
            status[s["name"]] = (value >> s["offset"]) & ((1 << s["width"]) - 1)
        info["status_fields"] = status
        return info

    def run(self, beats, *, expect=None, idle=1.0, chunk=None, order="interleave"):
        """Send ``beats`` (a list per input port; ``plan_frames`` for ``chunk`` and ``order``)
        and return the beats of every output port.

        The run ends when every frame is acknowledged and each output port has ``expect[k]``
        beats (when given), or no beat came for ``idle`` seconds.
        """
        p = self.params
        if len(beats) != len(p.in_widths):
            raise ValueError(f"{len(beats)} input ports given, the design has "
                             f"{len(p.in_widths)}")
        info = self.query()
        seq0 = info["next_seq"]
        frames = plan_frames(p, beats, chunk=chunk, order=order)
        wires = [encode_frame(DATA_IN | k, (seq0 + i) & 0xFF, len(w),
                              pack_beats(w, p.in_widths[k])) for i, (k, w) in enumerate(frames)]
        out = [[] for _ in p.out_widths]
        base = nxt = 0                  # first frame not acknowledged, next frame to send
        sent = set()
        pending = {}                    # seq -> deque of credits in flight
        outstanding = 0
        tries = [0] * len(frames)
        data_seq = None
        t0 = last = time.monotonic()
        last_data = t0
        while True:
            while (nxt < len(frames) and nxt - base < 128
                   and outstanding + len(wires[nxt]) <= p.buffer_bytes):
                seq = (seq0 + nxt) & 0xFF
                self._write(wires[nxt])
                pending.setdefault(seq, deque()).append(len(wires[nxt]))
                outstanding += len(wires[nxt])
                self.stats.frames_sent += 1
                self.stats.retransmissions += nxt in sent
                sent.add(nxt)
                nxt += 1
            now = time.monotonic()
            for f in self._frames():
                now = last = time.monotonic()
                if DATA_OUT <= f.type < DATA_OUT + 16:
                    if f.port >= len(out):
                        raise HostError(f"DATA_OUT for port {f.port}; the design has {len(out)}")
                    if data_seq is not None and f.seq != (data_seq + 1) & 0xFF:
                        self.stats.lost_frames += (f.seq - data_seq - 1) & 0xFF
                    data_seq = f.seq
                    out[f.port] += unpack_beats(f.body, p.out_widths[f.port], f.arg)
                    last_data = now
                    continue
                if f.type not in (ACK, NAK):
                    continue
                if pending.get(f.seq):
                    outstanding -= pending[f.seq].popleft()
                if f.type == ACK:
                    if base < len(frames) and f.seq == (seq0 + base) & 0xFF:
                        base += 1
                    continue
                self.stats.naks[f.arg] = self.stats.naks.get(f.arg, 0) + 1
                idx = base + ((f.seq - seq0 - base) & 0xFF)
                if f.arg == E_SEQ or not base <= idx < nxt:
                    continue                # a copy sent after an earlier NAK, or stale
                tries[idx] += 1
                if tries[idx] > self.retries:
                    raise HostError(f"frame {idx} (port {frames[idx][0]}) rejected "
                                    f"{tries[idx]} times, last: {ERRORS.get(f.arg, f.arg)}")
                nxt = min(nxt, idx)         # go back: send it and every later frame again
            if base == len(frames):
                if not expect and now - last_data >= idle:
                    break
                if expect and all(len(o) >= n for o, n in zip(out, expect)):
                    break
                if expect and now - last > self.timeout:
                    raise HostError(f"no output for {self.timeout:g} s: output beats "
                                    f"{[len(o) for o in out]} of {list(expect)} expected")
            elif now - last > self.timeout:
                # no reply: ask the board which frame it expects (an ACK may have been lost),
                # then send from there again
                tries[base] += 1
                if tries[base] > self.retries:
                    raise HostError(f"no reply from the board for {self.timeout:g} s, "
                                    f"{self.retries} times")
                ahead = (self.query()["next_seq"] - seq0 - base) & 0xFF
                if base + ahead <= nxt:
                    base += ahead
                nxt, pending, outstanding, last = base, {}, 0, time.monotonic()
        self.stats.seconds = time.monotonic() - t0
        if self.stats.lost_frames:
            raise HostError(f"{self.stats.lost_frames} data frames from the board are missing "
                            f"({self.stats.bad_frames} frames failed their checksum): output "
                            "beats were lost")
        return out
