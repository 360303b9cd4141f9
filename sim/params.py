"""Parameter validation and (de)serialisation shared by every unit's params dataclass.

Pure Python: the golden models (``sim``) and the components (``hw``) both use it.
"""

import dataclasses

__all__ = ["check_int", "check_choice", "params_from_dict", "params_to_dict", "parse_value"]


def check_int(name, value, lo, hi, *, pow2=False):
    """Raise ``ValueError`` unless ``value`` is an int in ``lo..hi`` (a power of two if asked)."""
    what = "a power of two" if pow2 else "an integer"
    if (not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi
            or (pow2 and value & (value - 1))):
        raise ValueError(f"{name} must be {what} in {lo}..{hi}, not {value!r}")


def check_float(name, value, lo, hi, *, open_hi=False):
    """Raise ``ValueError`` unless ``value`` is a real number (not bool) in ``lo..hi``, or in
    ``[lo, hi)`` with ``open_hi``; NaN is never in range."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and (
        lo <= value < hi if open_hi else lo <= value <= hi)
    if not ok:
        span = f"[{lo}, {hi})" if open_hi else f"{lo}..{hi}"
        raise ValueError(f"{name} must be a float in {span}, not {value!r}")


def check_choice(name, value, choices):
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, not {value!r}")


def params_to_dict(params):
    """Fields of ``params`` as JSON-ready values; a nested params object (such as
    ``sim.faults.CellFaults``) becomes a dict with its class under ``"class"``."""
    out = {}
    for f in dataclasses.fields(params):
        v = getattr(params, f.name)
        if dataclasses.is_dataclass(v):
            v = {"class": f"{type(v).__module__}.{type(v).__qualname__}", **params_to_dict(v)}
        out[f.name] = v
    return out


def params_from_dict(cls, d):
    """Build ``cls(**d)``, turning lists back into tuples and naming unknown keys."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ValueError(f"unknown parameter {unknown[0]!r}; allowed: {', '.join(sorted(names))}")
    return cls(**{k: _value_from_dict(v) for k, v in d.items()})


def _value_from_dict(v):
    if isinstance(v, list):
        return tuple(v)
    if isinstance(v, dict) and str(v.get("class", "")).startswith("sim."):
        import importlib
        module, _, name = v["class"].rpartition(".")
        sub = importlib.import_module(module)
        return params_from_dict(getattr(sub, name), {k: x for k, x in v.items() if k != "class"})
    return v


def parse_value(cls, key, text):
    """Parse ``--set key=text`` for field ``key`` of params class ``cls`` by the field's type."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    if key not in fields:
        raise ValueError(f"unknown parameter {key!r}; allowed: {', '.join(sorted(fields))}")
    default = fields[key].default
    if not isinstance(default, (bool, int, float, tuple, str)):
        raise ValueError(f"{key} cannot be set with --set (it takes a Python object)")
    try:
        if isinstance(default, bool):
            if text.lower() not in ("0", "1", "true", "false"):
                raise ValueError
            return text.lower() in ("1", "true")
        if isinstance(default, int):
            return int(text, 0)
        if isinstance(default, float):
            return float(text)
        if isinstance(default, tuple):
            return tuple(int(t, 0) for t in text.split(",") if t)
    except ValueError:
        kind = type(default).__name__
        raise ValueError(f"{key} must be {'a comma-separated list of int' if kind == 'tuple' else kind}, "
                         f"not {text!r}") from None
    return text
