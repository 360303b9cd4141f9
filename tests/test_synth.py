"""Synthesis report flow (Yosys iCE40/ECP5, nextpnr through the I/O wrapper)."""

import pytest

from gen.synth import synth_report
from sim.mxq import MXQParams


@pytest.mark.slow
def test_synth_report_small_mxq(tmp_path):
    rep = synth_report("mxq", MXQParams(block=8, outliers=1, bits=4), build_dir=tmp_path,
                       progress=False)
    assert rep["ice40_lut4"] > 50 and rep["ice40_ff"] > 20 and rep["ecp5_lut"] > 50
    assert rep["ice40_fmax_mhz"] and rep["ice40_fmax_mhz"] > 5, rep
    assert rep["ecp5_fmax_mhz"] and rep["ecp5_fmax_mhz"] > 20, rep
    assert (tmp_path / "io_wrap.v").exists() and (tmp_path / "synth.json").exists()
