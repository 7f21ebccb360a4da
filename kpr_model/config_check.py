"""The one check of configuration values (parsed JSON or YAML) against a dataclass's annotated fields.

Every config of the project (model, training, synthetic world) loads plain values through
``checked_values``, so an unknown key, a missing setting or a value of the wrong type reads the
same everywhere: one line, raised as the caller's own error type. Value ranges stay with each config.
"""
from __future__ import annotations

import math
from dataclasses import MISSING, fields
from typing import Any


def checked_values(cls: type, values: Any, what: str, error: type[Exception]) -> dict[str, Any]:
    """A copy of ``values`` fit to be the keyword arguments of the dataclass ``cls``, else ``error`` with one line.

    Refuses a non-mapping, unknown keys, missing required fields and values that do not fit their
    annotation (``str``, ``bool``, ``int``, ``float``, ``X | None``, ``tuple[...]``, ``dict[...]``; a bool is
    not a number and numbers must be finite). A field of any other annotation (a nested config) is left to
    the caller. ``what`` names the config in the messages ("KPRConfig", "training config", ...).
    """
    if not isinstance(values, dict):
        raise error(f"a {what} is a mapping of settings, got {type(values).__name__}")
    annotations = {f.name: f.type for f in fields(cls)}
    unknown = sorted(map(str, set(values) - set(annotations)))
    if unknown:
        raise error(f"unknown {what} keys {', '.join(unknown)}; known keys: {', '.join(annotations)}")
    missing = [f.name for f in fields(cls)
               if f.default is MISSING and f.default_factory is MISSING and f.name not in values]
    if missing:
        raise error(f"the {what} needs {', '.join(missing)}")
    for key, value in values.items():
        if not _fits(value, annotations[key]):
            finite = not isinstance(value, float) or math.isfinite(value)
            raise error(f"{what} key {key} must be {annotations[key].replace(' | ', ' or ')}, got {value!r:.80}"
                        + ("" if finite else " (numbers must be finite)"))
    return dict(values)


def _fits(value: Any, annotation: str) -> bool:
    """Whether a plain value fits a field annotation written as text (see ``checked_values``)."""
    options = [option.strip() for option in annotation.split("|")]
    if len(options) > 1:
        return any(_fits(value, option) for option in options)
    if annotation == "None":
        return value is None
    if annotation.startswith("tuple["):
        inner = [part.strip() for part in annotation[len("tuple["):-1].split(",")]
        if not isinstance(value, (list, tuple)):
            return False
        if inner[-1] == "...":
            return all(_fits(v, inner[0]) for v in value)
        return len(value) == len(inner) and all(_fits(v, a) for v, a in zip(value, inner))
    if annotation.startswith("dict["):
        return isinstance(value, dict)
    if annotation in ("str", "bool"):
        return isinstance(value, str if annotation == "str" else bool)
    if annotation not in ("int", "float"):
        return True
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    if annotation == "int":
        return isinstance(value, int)
    try:
        return math.isfinite(value)
    except OverflowError:  # an int beyond the float range
        return False
