"""What every unit shares: its registry entry and parameter helpers.

A unit's frozen, keyword-only params dataclass and its ``PRESETS`` dict (built with
``dataclasses.replace``) live in ``sim/<unit>.py`` so the pure-NumPy golden model can use them;
``hw/<unit>.py`` defines the ``wiring.Component`` taking the params and a module-level
``UNIT = Unit(...)``. ``gen`` discovers units by importing ``hw`` modules.
"""

import importlib
import pkgutil
import typing
from dataclasses import dataclass

__all__ = ["Unit", "units", "PRESET_NAMES", "layout_fields"]

PRESET_NAMES = ("tiny", "minilm", "bert-base", "bert-large")


@dataclass(frozen=True, kw_only=True)
class Unit:
    """Registry entry of one unit.

    name : str            unit name; also the Verilog top, the build folder and the test name
    params : type         frozen params dataclass
    presets : dict        preset name -> params instance
    component : callable  params -> ``wiring.Component``
    summary : str         one line for ``xbarllm list``
    demo_preset : str     preset the demo (``make demo``) verifies; its regression module
                          ``tests/test_<name>.py`` must run with those params
    """

    name: str
    params: type
    presets: dict
    component: typing.Callable
    summary: str
    demo_preset: str = "tiny"

    def build(self, params):
        return self.component(params)


def units():
    """All units, by name, found in the ``hw`` package."""
    import hw
    found = {}
    for info in pkgutil.iter_modules(hw.__path__):
        mod = importlib.import_module(f"hw.{info.name}")
        unit = getattr(mod, "UNIT", None)
        if isinstance(unit, Unit):
            found[unit.name] = unit
    return dict(sorted(found.items()))


def layout_fields(layout):
    """Leaf fields of a ``data`` layout: ``{"a.0.b": (offset, width, signed)}``.

    Nested struct fields and array elements are named with dots. Tests pack payloads with
    this (``sim.streamkit.Packer``) and ``xbarllm gen`` writes it into the manifest, so a bit
    layout is defined once, in ``hw/``.
    """
    from amaranth.hdl import Shape
    from amaranth.lib import data

    fields = {}

    def walk(lay, prefix, base):
        if isinstance(lay, data.StructLayout):
            items = [(name, f.shape, f.offset) for name, f in lay]
        elif isinstance(lay, data.ArrayLayout):
            w = Shape.cast(lay.elem_shape).width
            items = [(str(i), lay.elem_shape, i * w) for i in range(lay.length)]
        else:
            shape = Shape.cast(lay)
            fields[prefix.rstrip(".") or "value"] = (base, shape.width, shape.signed)
            return
        for name, shape, offset in items:
            walk(shape, f"{prefix}{name}.", base + offset)

    walk(layout, "", 0)
    return fields
