"""``xbarllm``: list units and presets, generate Verilog, lint it, synthesize, run the demo."""

import argparse
import importlib
import json
import sys

from .build import UsageError, generate, lint, resolve, write_fusesoc

__all__ = ["main"]

# further subcommands, each module's add_commands(subparsers) adds its own
COMMAND_MODULES = ("gen.cli_model", "gen.cli_fpga", "gen.cli_chip", "gen.formal")


def _cmd_list(args):
    from hw.common import units
    table = units()
    width = max(map(len, table))
    print("units:")
    for name, u in table.items():
        print(f"  {name:<{width}}  {u.summary}")
        print(f"  {'':<{width}}  presets: {', '.join(u.presets)}")
    return 0


def _cmd_gen(args):
    entry, params = resolve(args.unit, args.preset, args.set or [])
    path = generate(entry.name, params, args.out)
    print(f"wrote {path} and {path.with_suffix('.json')}")
    if args.fusesoc:
        vlnv = write_fusesoc(entry.name, params, args.out, preset=args.preset,
                             sets=args.set or [])
        print(f"wrote {path.with_suffix('.core')} ({vlnv}) and {path.with_suffix('.f')}")
    return 0


def _cmd_lint(args):
    bad = 0
    for f, rc, msgs in lint(args.dir):
        status = "ok" if rc == 0 else "FAILED"
        print(f"{f}: {status}")
        if rc:
            bad += 1
            print(msgs)
    return 1 if bad else 0


def _cmd_synth(args):
    from .synth import SynthError, synth_report
    entry, params = resolve(args.unit, args.preset, args.set or [])
    print(f"synthesizing {entry.name} ({args.preset}); the first Yosys call compiles "
          "itself (~35 s, cached)", file=sys.stderr, flush=True)
    try:
        targets = ("ice40", "ecp5") if args.target == "all" else (args.target,)
        rep = synth_report(entry.name, params, case=f"synth-{args.preset}", targets=targets,
                           fmax=not args.no_fmax, nodsp=args.nodsp)
    except SynthError as e:
        print(f"xbarllm: error: {e}", file=sys.stderr)
        return 1
    print(json.dumps(rep, indent=2))
    return 0


def _cmd_demo(args):
    from .demo import run_demo
    return run_demo(quick=args.quick)


class _Parser(argparse.ArgumentParser):
    """Usage errors on one line (``xbarllm gen: error: ...``), exit 2; ``-h`` shows usage."""

    def error(self, message):
        # arguments are quoted back: escape control characters to keep the message one line
        message = "".join(c if c.isprintable() else repr(c)[1:-1] for c in message)
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} -h)\n")


def _parser():
    ap = _Parser(prog="xbarllm", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)

    sub.add_parser("list", help="list units and presets").set_defaults(func=_cmd_list)

    def unit_args(p):
        p.add_argument("unit", help="unit name (see `xbarllm list`)")
        p.add_argument("--preset", default="minilm", help="named preset (default: minilm)")
        p.add_argument("--set", action="append", metavar="KEY=VALUE",
                       help="override one parameter; repeatable")

    p = sub.add_parser("gen", help="write <unit>.v and <unit>.json")
    unit_args(p)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--fusesoc", action="store_true",
                   help="also write a FuseSoC CAPI2 core (<unit>.core) and a filelist (<unit>.f)")
    p.set_defaults(func=_cmd_gen)

    p = sub.add_parser("lint", help="Verilator --lint-only -Wall on every .v in a folder")
    p.add_argument("dir")
    p.set_defaults(func=_cmd_lint)

    p = sub.add_parser("synth", help="Yosys iCE40/ECP5 resources and nextpnr Fmax")
    unit_args(p)
    p.add_argument("--target", choices=("all", "ice40", "ecp5"), default="all",
                   help="FPGA families (default: all)")
    p.add_argument("--no-fmax", action="store_true", help="skip place and route")
    p.add_argument("--nodsp", action="store_true",
                   help="also synthesize ECP5 without DSPs (multipliers in LUTs)")
    p.set_defaults(func=_cmd_synth)

    p = sub.add_parser("demo", help="generate, lint and verify every unit; print a summary")
    p.add_argument("--quick", action="store_true", help="fewer random vectors per unit")
    p.set_defaults(func=_cmd_demo)

    for name in COMMAND_MODULES:
        importlib.import_module(name).add_commands(sub)
    return ap


def main(argv=None):
    ap = _parser()
    try:
        args = ap.parse_args(argv)
        return args.func(args)
    except UsageError as e:
        print(f"xbarllm: error: {e}", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError) as e:
        print(f"xbarllm: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
