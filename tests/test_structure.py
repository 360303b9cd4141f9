"""The package structure: unit imports, an acyclic import graph, no references outside.

- A unit (``hw/<unit>.py`` with a ``UNIT``) imports only ``hw/common.py`` and
  ``hw/numerics.py``; the exceptions are ``crossbar_ctrl``, which instantiates the tile
  emulation of ``crossbar``, and ``encoder``, the top that chains every unit.
- ``sim`` is pure NumPy (no Amaranth, cocotb, ``hw`` or ``gen``); ``hw`` does not import
  ``gen``; the modules of ``hw``, ``sim`` and ``gen`` import one another without a cycle.
- Nothing in code or docs points at files outside the repository.
"""

import ast
from pathlib import Path

import pytest

from hw.common import units

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("hw", "sim", "gen")
ALLOWED_UNIT_IMPORTS = {"hw.common", "hw.numerics"}
# crossbar_ctrl instantiates the tile emulation; the encoder is the top that chains the
# units, so it may import every one of them
EXCEPTIONS = {("crossbar_ctrl", "hw.crossbar")} | {
    ("encoder", f"hw.{u}") for u in units() if u != "encoder"}


def _module_name(path):
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path):
    """Absolute names of every module ``path`` imports (top level or inside functions)."""
    mod = _module_name(path)
    pkg = mod.rsplit(".", 1)[0] if path.name != "__init__.py" else mod
    tree = ast.parse(path.read_text(), filename=str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")[:len(pkg.split(".")) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module
            found.add(name)
            for a in node.names:            # "from . import bf16" imports a module
                found.add(f"{name}.{a.name}")
    return found


def _project_modules():
    mods = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            mods[_module_name(path)] = path
    return mods


MODULES = _project_modules()
GRAPH = {name: {i for i in _imports(path) if i in MODULES and i != name}
         for name, path in MODULES.items()}


@pytest.mark.parametrize("unit", sorted(units()))
def test_unit_imports_no_other_unit(unit):
    path = ROOT / "hw" / f"{unit}.py"
    own = {i for i in _imports(path) if i.startswith("hw.") and i in MODULES}
    bad = sorted(i for i in own if i not in ALLOWED_UNIT_IMPORTS and (unit, i) not in EXCEPTIONS)
    assert not bad, f"hw/{unit}.py imports {bad}; units import only hw.common and hw.numerics"


def test_sim_is_pure_numpy():
    for name, path in MODULES.items():
        if not name.startswith("sim"):
            continue
        bad = sorted(i for i in _imports(path)
                     if i.split(".")[0] in ("amaranth", "cocotb", "cocotb_tools", "hw", "gen"))
        assert not bad, f"{name} imports {bad}"


def test_hw_does_not_import_gen():
    for name, path in MODULES.items():
        if name.startswith("hw"):
            bad = sorted(i for i in _imports(path) if i.split(".")[0] == "gen")
            assert not bad, f"{name} imports {bad}"


def test_import_graph_is_acyclic():
    state = {}

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(GRAPH[node]):
            if state.get(nxt) == "open":
                cycle = stack[stack.index(nxt):] + [nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for node in sorted(GRAPH):
        if node not in state:
            visit(node, [node])


def test_no_references_outside_the_repository():
    bad = []
    texts = [p for p in ROOT.rglob("*") if p.suffix in (".py", ".md", ".toml", ".txt")
             or p.name in ("Makefile", "run")]
    for p in texts:
        if any(part in (".venv", "build", ".git") for part in p.relative_to(ROOT).parts):
            continue
        text = p.read_text(errors="ignore")
        for needle in ("../shared", "DESIGN.md", "TOOLCHAIN.md", "STYLE.md"):
            if needle in text and p.name != "test_structure.py":
                bad.append(f"{p.relative_to(ROOT)}: {needle}")
    assert not bad, bad
