"""``xbarllm fpga`` (a unit behind the UART host link, built for a board) and ``xbarllm host``
(vectors to and from that board). docs/fpga.md describes both.

``gen.cli`` calls ``add_commands(subparsers)`` once; everything else is here.
"""

import json
import sys
from pathlib import Path

from .build import UsageError, resolve, sets_tag
from .harness import BUILD

__all__ = ["add_commands", "load_design"]


def _err(message):
    print(f"xbarllm: error: {message}", file=sys.stderr)


def _cmd_fpga(args):
    from .fpga import BuildError, board, build, format_report
    b = board(args.board)
    entry, params = resolve(args.unit, args.preset, args.set or [])
    out = Path(args.out or BUILD / f"fpga-{b.name}-{entry.name}-{args.preset}"
               f"{sets_tag(args.set or [])}")
    try:
        rep = build(b.name, entry.name, params, out, preset=args.preset,
                    clock_mhz=args.clock_mhz, baud=args.baud, seed=args.seed,
                    program_board=args.program, force=args.force)
    except BuildError as e:
        _err(e)
        return 1
    print("\n".join(format_report(rep)))
    print(f"design: {out / 'fpga.json'} (xbarllm host --design {out} --port ...)")
    if rep.get("programmed"):
        print(f"programmed the {b.name}")
    if not rep["timing_met"]:
        _err(f"timing not met: Fmax {rep['fmax_mhz']:.1f} MHz is below the "
             f"{rep['clock_mhz']:.2f} MHz clock (try --clock-mhz {int(rep['fmax_mhz'] * 0.9)})")
        return 1
    return 0


def load_design(path):
    """The design description written by ``xbarllm fpga``: a folder with ``fpga.json``, or
    the file."""
    p = Path(path)
    f = p / "fpga.json" if p.is_dir() else p
    if not f.exists():
        raise UsageError(f"no design description at {path} (run xbarllm fpga first; it "
                         "writes <out>/fpga.json)")
    try:
        design = json.loads(f.read_text())
        design["hostlink"], design["inputs"], design["outputs"]
    except (ValueError, KeyError, TypeError) as e:
        raise UsageError(f"{f} is not a design description ({e})") from None
    return design


def _counts(design, items):
    names = [p["name"] for p in design["outputs"]]
    counts = [0] * len(names)
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or key not in names or not text.isdigit():
            raise UsageError(f"--count takes PORT=N with PORT one of {', '.join(names)}, "
                             f"not {item!r}")
        counts[names.index(key)] = int(text)
    return counts


def _cmd_host(args):
    from sim.hostlink import ERRORS
    from .host import (Host, HostError, compare, expected_counts, load_inputs, open_port,
                       save_outputs)
    design = load_design(args.design)
    if not args.info and not args.input:
        raise UsageError("give --input (vectors to send) or --info")
    beats = load_inputs(design, args.input) if args.input else None
    expect = (expected_counts(design, args.expect) if args.expect
              else _counts(design, args.count) if args.count else None)
    port = open_port(args.port, args.baud or design.get("baud", 115200))
    host = Host(port, design, timeout=args.timeout)
    try:
        info = host.query()
        if args.info:
            fields = {k: v for k, v in info.items() if k not in ("status", "status_fields")}
            print(json.dumps({**fields, "status": info["status_fields"]}, indent=2))
            return 0
        out = host.run(beats, expect=expect, idle=args.idle, order=args.order)
        status = host.query()["status_fields"]
    except HostError as e:
        _err(e)
        return 1
    finally:
        port.close()
    st = host.stats
    sent = ", ".join(f"{len(b)} beats to {p['name']}"
                     for b, p in zip(beats, design["inputs"]) if b)
    got = ", ".join(f"{len(b)} beats from {p['name']}" for b, p in zip(out, design["outputs"]))
    naks = ", ".join(f"{n} {ERRORS.get(c, c)}" for c, n in sorted(st.naks.items())) or "none"
    rate = (st.bytes_sent + st.bytes_received) / max(st.seconds, 1e-9)
    print(f"sent {sent} in {st.frames_sent} frames ({st.retransmissions} sent again; "
          f"NAKs: {naks}); received {got} in {st.frames_received} frames; "
          f"{st.seconds:.1f} s, {rate / 1000:.1f} kB/s on the line")
    if status:
        print("status: " + ", ".join(f"{k}={v}" for k, v in status.items()))
    if args.output:
        save_outputs(design, out, args.output, status)
        print(f"wrote {args.output}")
    if args.expect:
        diff = compare(design, out, args.expect)
        if diff:
            print("\n".join(diff))
            _err(f"the board's output differs from {args.expect}")
            return 1
        print(f"every beat matches {args.expect}")
    return 0


def add_commands(sub):
    from .fpga import BOARDS, DEFAULT_BAUD
    p = sub.add_parser("fpga", help="build a unit behind the UART host link for an FPGA board")
    p.add_argument("--board", required=True, help=f"board: {', '.join(BOARDS)}")
    p.add_argument("--unit", required=True, help="unit name (see `xbarllm list`)")
    p.add_argument("--preset", required=True, help="named preset of the unit")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override one parameter; repeatable")
    p.add_argument("--out", help="output folder (default: build/fpga-<board>-<unit>-<preset>)")
    p.add_argument("--clock-mhz", type=float,
                   help="run from a PLL at this frequency (default: the board's oscillator)")
    p.add_argument("--baud", type=int, default=DEFAULT_BAUD,
                   help=f"UART baud rate (default {DEFAULT_BAUD})")
    p.add_argument("--seed", type=int, default=1, help="nextpnr placement seed (default 1)")
    p.add_argument("--program", action="store_true",
                   help="load the bitstream with the board's programmer")
    p.add_argument("--force", action="store_true", help="build even if up to date")
    p.set_defaults(func=_cmd_fpga)

    p = sub.add_parser("host", help="send vectors to a board built by `xbarllm fpga`, read "
                                    "the results")
    p.add_argument("--port", required=True,
                   help="serial device (/dev/ttyUSB1) or pyserial URL (socket://host:port)")
    p.add_argument("--design", required=True, help="the `xbarllm fpga` output folder")
    p.add_argument("--input", help=".npz of <port>.<field> arrays to send")
    p.add_argument("--output", help=".npz to write the output fields (and status) to")
    p.add_argument("--expect", help=".npz of expected output fields: wait for that many beats, "
                                    "compare, exit 1 on a difference")
    p.add_argument("--count", action="append", metavar="PORT=N",
                   help="wait for N beats on output PORT; repeatable")
    p.add_argument("--order", choices=("interleave", "sequence"), default="interleave",
                   help="input ports in step (default) or one after another in port order")
    p.add_argument("--baud", type=int, help="default: the design's")
    p.add_argument("--timeout", type=float, default=2.0,
                   help="seconds without a reply before frames are sent again (default 2)")
    p.add_argument("--idle", type=float, default=1.0,
                   help="without --expect/--count: stop after this many seconds without "
                        "output (default 1)")
    p.add_argument("--info", action="store_true", help="print the board's INFO and exit")
    p.set_defaults(func=_cmd_host)
