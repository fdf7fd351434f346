"""Settings declared, not parsed: one validator for every settings dataclass of the lab.

A field's annotation says its kind (``int``, ``float``, ``bool``, ``str``, ``Literal[...]`` for
a few fixed values, ``X | None`` when None is accepted); its metadata, written with
:func:`number` or :func:`choice`, adds bounds or choices known only at run time. The comment after
a field is its help text (:func:`field_comments`). :func:`check_fields` refuses a bad value with
one line that names the field; the Meta-Train form and the CLI read the same declarations.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import re
import typing
from dataclasses import dataclass


def number(default, *, low=None, high=None, low_open: bool = False, high_open: bool = False) -> dataclasses.Field:
    """A numeric field with bounds: ``low`` ≤ value (< with ``low_open``), value ≤ ``high`` (<)."""
    meta = {"low": low, "high": high, "low_open": low_open, "high_open": high_open}
    return dataclasses.field(default=default, metadata=meta)


def positive(default) -> dataclasses.Field:
    """A whole number of at least 1, or a number above 0 (by the annotation)."""
    return number(default, low=0, low_open=True)


def choice(default, choices) -> dataclasses.Field:
    """A field whose value is one of ``choices``: a sequence, or a mapping whose keys are the choices,
    read each time a value is checked (so a registry that grows is followed)."""
    return dataclasses.field(default=default, metadata={"choices": choices})


@dataclass(frozen=True)
class Declared:
    """What a field accepts, read from its annotation and metadata."""

    name: str
    kind: str  # 'int', 'float', 'bool', 'str', or 'json' for anything else
    optional: bool
    choices: tuple
    low: float | None
    high: float | None
    low_open: bool
    high_open: bool


def declared(cls) -> list[Declared]:
    """The fields of the dataclass ``cls`` as declarations."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        hint, optional = hints.get(f.name, object), False
        args = typing.get_args(hint)
        if type(None) in args:
            optional = True
            rest = [a for a in args if a is not type(None)]
            hint = rest[0] if len(rest) == 1 else object
        choices = tuple(f.metadata.get("choices", ()))
        if typing.get_origin(hint) is typing.Literal:
            choices = choices or typing.get_args(hint)
            hint = type(choices[0])
        kind = {bool: "bool", int: "int", float: "float", str: "str"}.get(hint, "json")
        out.append(Declared(f.name, kind, optional, choices, f.metadata.get("low"), f.metadata.get("high"),
                            bool(f.metadata.get("low_open")), bool(f.metadata.get("high_open"))))
    return out


def _bounds(d: Declared) -> str:
    if d.kind == "int" and d.high is None and d.low is not None:
        least = math.floor(d.low) + 1 if d.low_open else math.ceil(d.low)
        return "a positive whole number" if least == 1 else f"a whole number of at least {least}"
    what = "a whole number" if d.kind == "int" else "a number"
    if d.low == 0 and d.low_open and d.high is None:
        return "a positive number"
    if d.low is not None and d.high is not None:
        return f"{what} in {'(' if d.low_open else '['}{d.low:g}, {d.high:g}{')' if d.high_open else ']'}"
    if d.low is not None:
        return f"{what} {'above' if d.low_open else 'of at least'} {d.low:g}"
    if d.high is not None:
        return f"{what} {'below' if d.high_open else 'of at most'} {d.high:g}"
    return what


def problem(d: Declared, value) -> str | None:
    """Why ``value`` does not fit declaration ``d`` (one line naming the field), or None when it does."""
    if value is None:
        return None if d.optional else f"{d.name}: must be given, not null"
    null = " or null" if d.optional else ""
    if d.choices:
        if value in d.choices and isinstance(value, bool) == (d.kind == "bool"):
            return None
        listed = ", ".join(str(c) for c in d.choices)
        return f"{d.name}: must be one of {listed}{null}, not {value!r}"
    if d.kind == "bool":
        return None if isinstance(value, bool) else f"{d.name}: must be true or false{null}, not {value!r}"
    if d.kind in ("int", "float"):
        whole = isinstance(value, int) and not isinstance(value, bool)
        fits_kind = whole if d.kind == "int" else (whole or isinstance(value, float)) and math.isfinite(value)
        low_ok = d.low is None or (fits_kind and (value > d.low if d.low_open else value >= d.low))
        high_ok = d.high is None or (fits_kind and (value < d.high if d.high_open else value <= d.high))
        return None if fits_kind and low_ok and high_ok else f"{d.name}: must be {_bounds(d)}{null}, not {value!r}"
    if d.kind == "str":
        return None if isinstance(value, str) else f"{d.name}: must be text{null}, not {value!r}"
    return None


def check_fields(instance) -> None:
    """Raise ``ValueError`` for the first field of the dataclass ``instance`` whose value does not fit."""
    for d in declared(type(instance)):
        message = problem(d, getattr(instance, d.name))
        if message:
            raise ValueError(message)


def field_comments(cls) -> dict[str, str]:
    """``name: type = default  # comment`` lines of a dataclass and its bases, as {name: comment}."""
    out = {}
    for klass in reversed(inspect.getmro(cls)):
        try:
            source = inspect.getsource(klass)
        except (OSError, TypeError):
            continue
        out.update({m[1]: m[2].strip() for m in re.finditer(r"^\s+(\w+)\s*:[^#\n]*#\s*(.+)$", source, re.M)})
    return out
