"""Formal stream-protocol proofs of every unit (gen/formal.py), and that they catch bugs."""

import dataclasses
import types

import pytest

from gen.cli import main
from gen.formal import Proof, protocol_harness, proofs, prove, run_proof
from hw.common import units

PROOFS = proofs()


def _tasks(proof):
    """The tasks of ``proof`` that apply to it."""
    return {"bmc"} | ({"causal", "reach"} if proof.causal else set()) | (
        {"induction"} if proof.k else set())


def _check(results, proof, tasks=None):
    for r in results:
        assert r.status == "PASS", (
            f"{proof.unit} {r.task} at depth {r.depth}: {r.status}, failed {r.failed}; "
            f"trace in {r.workdir}/proof/engine_0/trace.vcd")
    assert {r.task for r in results} == (_tasks(proof) if tasks is None else tasks)


@pytest.mark.parametrize("unit", [u for u in sorted(PROOFS)
                                  if _tasks(PROOFS[u]) - set(PROOFS[u].slow)])
def test_protocol_proof(unit, tmp_path):
    """BMC of every property to the unit's depth (>= 20 cycles), k-induction where set (the
    tasks a proof marks ``slow`` are in ``test_protocol_proof_slow_tasks``)."""
    proof = PROOFS[unit]
    assert proof.depth >= 20
    tasks = _tasks(proof) - set(proof.slow)
    _check(prove(proof, tasks=tuple(tasks), build_dir=tmp_path), proof, tasks=tasks)


@pytest.mark.slow
@pytest.mark.parametrize("unit", [u for u in sorted(PROOFS) if PROOFS[u].slow])
def test_protocol_proof_slow_tasks(unit, tmp_path):
    """The tasks that take minutes: the crossbar's causality to one pulse train and its
    reachability, the encoder's BMC."""
    proof = PROOFS[unit]
    tasks = set(proof.slow)
    _check(prove(proof, tasks=tuple(tasks), build_dir=tmp_path), proof, tasks=tasks)


@pytest.mark.slow
@pytest.mark.parametrize("unit", [u for u in sorted(PROOFS) if PROOFS[u].causal
                                  and "causal" not in PROOFS[u].slow])
def test_protocol_proof_deeper_causality(unit, tmp_path):
    """The causality bound 4 cycles deeper than the default run (minutes: the SAT effort of
    counting grows steeply with depth)."""
    proof = PROOFS[unit]
    deeper = dataclasses.replace(proof, causal_depth=(proof.causal_depth or proof.depth) + 4)
    _check(prove(deeper, tasks=("causal",), build_dir=tmp_path), deeper, tasks={"causal"})


@pytest.mark.slow
def test_crossbar_ctrl_with_faults_proof(tmp_path):
    """The controller with program-verify-retry and two spare columns (the fault logic is
    only built with ``faults``): per-cycle properties by BMC to 20 cycles and k-induction."""
    from sim.faults import CellFaults
    proof = PROOFS["crossbar_ctrl"]
    proof = dataclasses.replace(proof, params=dataclasses.replace(
        proof.params, faults=CellFaults(stuck_rate=0.02, spares=2, retries=2, seed=1)))
    tasks = ("bmc", "induction")
    _check(prove(proof, tasks=tasks, build_dir=tmp_path), proof, tasks=set(tasks))


def test_every_unit_has_a_proof():
    missing = sorted(set(units()) - set(PROOFS))
    if missing:
        pytest.skip(f"no proof entry yet (waiting for the unit's rewrite): {', '.join(missing)}")


# ---------------------------------------------------------------- bugs are caught --------

def _gelu_copy(old, new):
    """A copy of hw/gelu.py with ``old`` replaced by ``new`` in its source."""
    import hw.gelu
    src = open(hw.gelu.__file__).read()
    assert src.count(old) == 1, old
    mod = types.ModuleType("gelu_mutant")
    mod.__package__ = "hw"
    exec(compile(src.replace(old, new), "gelu_mutant.py", "exec"), mod.__dict__)
    return mod.Gelu(PROOFS["gelu"].params)


DRIVE = "pipe.drive(self.o, data=res, last=s7.last)"

MUTANTS = {
    # the output register ignores backpressure: the beat changes under a stalled consumer
    "ignores_ready": (
        "m.d.comb += pipe.ce.eq(1)\n"
        "        m.d.sync += [self.o.valid.eq(s7.valid), self.o.payload.data.eq(res),\n"
        "                     self.o.payload.last.eq(s7.last)]\n"
        "        pipe.depth += 1",
        "bmc", {"o_payload_stable", "o_valid_held"}),
    # valid withdrawn while the consumer stalls (the beat may be lost or taken twice)
    "drops_valid": (
        DRIVE + "\n        m.d.comb += pipe.ce.eq(~self.o.valid | self.o.ready | s1.valid)",
        "bmc", {"o_payload_stable", "o_valid_held"}),
    # the last stage keeps its valid bit after a transfer: every beat goes out twice
    "repeats_beat": (
        DRIVE + "\n        with m.If(self.o.valid & self.o.ready & ~s7.valid):\n"
        "            m.d.sync += self.o.valid.eq(~self.o.payload.last)",
        "causal", {"o_causal"}),
}


@pytest.mark.parametrize("bug", MUTANTS)
def test_proof_catches_protocol_bug(bug, tmp_path):
    """A deliberately broken copy of gelu fails the property its bug breaks."""
    new, task, props = MUTANTS[bug]
    dut = _gelu_copy(DRIVE, new)
    if task == "bmc":
        m = protocol_harness(dut, causal=False)
    else:
        m = protocol_harness(dut, per_cycle=False, beat_width=6)
    status, failed = run_proof(m, mode="bmc", depth=20, workdir=tmp_path)
    assert status == "FAIL"
    assert failed and set(failed) <= props, failed


@pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")
def test_harness_needs_an_output_stream():
    from amaranth.lib import wiring
    from amaranth.lib.wiring import Out

    class NoStreams(wiring.Component):
        x: Out(1)

        def elaborate(self, platform):
            from amaranth.hdl import Module
            return Module()

    with pytest.raises(ValueError, match="no output stream"):
        protocol_harness(NoStreams())


@pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")
def test_bound_must_name_output_streams():
    from hw.gelu import Gelu
    with pytest.raises(ValueError, match=r"bound names \['x'\], not output streams \['o'\]"):
        protocol_harness(Gelu(PROOFS["gelu"].params), bound=lambda b: {"x": b["i"]})


# ---------------------------------------------------------------- CLI ---------------------

def test_cli_prove_reports_each_task(capsys):
    assert main(["prove", "gelu", "--preset", "tiny", "--set", "frac_bits=6", "--depth", "12",
                 "--k", "1", "--tasks", "reach,induction"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:5] == ["gelu", "reach", "depth", "12", "PASS"]
    assert out[1].split()[:6] == ["gelu", "induction", "k", "=", "1", "PASS"]


@pytest.mark.parametrize("argv, message", [
    (["prove", "nope"], "no proof set up for 'nope'; proven units: gelu, mxq"),
    (["prove", "gelu", "--tasks", "bmc,fly"], "--tasks takes bmc, causal, reach, induction"),
    (["prove", "gelu", "--depth", "0"], "--depth must be a positive integer, not 0"),
    (["prove", "gelu", "--set", "frac_bits=99"], "frac_bits must be an integer in 4..16"),
])
def test_cli_prove_bad_input_is_one_line_exit_2(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("xbarllm: error: ") and message in err and err.count("\n") == 1
