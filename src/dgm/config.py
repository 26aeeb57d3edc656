"""Helpers for frozen-dataclass configs: dotted overrides and validation messages."""

import dataclasses
import inspect
import json
import math
import numbers
import typing
from collections.abc import Iterable
from typing import Any


def _coerce(value: str, current: Any, field: str, annotation: Any = None) -> Any:
    if isinstance(current, bool):
        if value.lower() in ("1", "true", "yes", "on"):
            return True
        if value.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"`{field}` expects true or false; got {value!r}")
    if isinstance(current, int | float) and not isinstance(current, bool):
        kind = type(current).__name__
        try:
            parsed = json.loads(value)
        except ValueError:
            parsed = None
        # no silent truncation (2.5 -> 2) and no booleans as numbers (true -> 1)
        integral = isinstance(parsed, int) or (isinstance(parsed, float) and parsed.is_integer())
        ok = isinstance(parsed, int | float) and not isinstance(parsed, bool)
        try:  # an int beyond float's range is no finite float either
            finite = not ok or kind == "int" or math.isfinite(parsed)
        except OverflowError:
            finite = False
        if not ok or (kind == "int" and not integral) or not finite:
            raise ValueError(
                f"`{field}` expects a{'n' if kind == 'int' else ' finite'} {kind}; got {value!r}"
            )
        return type(current)(parsed)
    if isinstance(current, tuple | list):
        parsed = _list(value)
        if parsed is None:
            raise ValueError(f"`{field}` expects a list: JSON, [a,b] or a,b; got {value!r}")
        return type(current)(_typed_items(parsed, annotation, field, value))
    if current is None:
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def _typed_items(items: list, annotation: Any, field: str, value: str) -> list:
    """``items`` read as the field's annotation says (``tuple[int, int]``: two ints,
    ``tuple[float, ...]``: floats, ``tuple[str, ...]``: strings); unchanged for another
    annotation or none. Raises ``ValueError`` naming the field otherwise."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) is not tuple or not args:
        return items
    kind, size = args[0], None if args[-1] is Ellipsis else len(args)
    if kind not in (int, float, str) or any(a not in (kind, Ellipsis) for a in args):
        return items
    out = []
    for item in items:
        if kind is int and isinstance(item, float) and item.is_integer():
            item = int(item)
        if kind is float and is_int(item):
            item = float(item)
        out.append(item)
    wrong = any(not isinstance(x, kind) or isinstance(x, bool) for x in out)
    if wrong or (size is not None and len(out) != size):
        count = "" if size is None else f"{size} "
        raise ValueError(f"`{field}` expects a list of {count}{kind.__name__}s; got {value!r}")
    return out


def _list(value: str) -> list | None:
    """A JSON list, or ``[a,b]`` / ``a,b`` (``--set m=["a","b"]`` typed without single quotes
    reaches the program as ``m=[a,b]``): items that are not JSON stay strings. A single item
    is a list of one. ``None`` when it is none of these."""
    try:
        parsed = json.loads(value)
    except ValueError:
        inner = value.strip()
        if inner.startswith("[") and inner.endswith("]"):
            inner = inner[1:-1]
        items = [s.strip() for s in inner.split(",")] if inner.strip() else []
        if any(not s or any(c in s for c in "[]{}\"'") for s in items):
            return None
        return [_json_or_str(s) for s in items]
    if isinstance(parsed, list):
        return parsed
    return [parsed] if isinstance(parsed, str | int | float) else None


def _json_or_str(item: str) -> Any:
    try:
        return json.loads(item)
    except ValueError:
        return item


def override(config: Any, assignments: list[str]) -> Any:
    """Apply ``a.b=value`` assignments to a (nested) frozen dataclass.

    Raises:
        ValueError: for a malformed assignment or an unknown field, naming it.
    """
    for item in assignments:
        if "=" not in item:
            raise ValueError(f"`--set` expects FIELD=VALUE; got {item!r}")
        dotted, value = item.split("=", 1)
        config = _set(config, dotted.strip().split("."), value, dotted)
    return config


def _set(obj: Any, parts: list[str], value: str, dotted: str) -> Any:
    names = [f.name for f in dataclasses.fields(obj)]
    head = parts[0]
    if head not in names:
        raise ValueError(f"unknown config field {dotted!r}; fields here: {', '.join(names)}")
    current = getattr(obj, head)
    if len(parts) == 1 and dataclasses.is_dataclass(current):
        subs = ", ".join(f.name for f in dataclasses.fields(current))
        raise ValueError(
            f"config field {dotted!r} has sub-fields ({subs}): set {dotted}.FIELD=VALUE"
        )
    if len(parts) > 1:
        if not dataclasses.is_dataclass(current):
            raise ValueError(f"config field {head!r} has no sub-fields (in {dotted!r})")
        new = _set(current, parts[1:], value, dotted)
    else:
        new = _coerce(value, current, dotted, _annotation(type(obj), head))
    return dataclasses.replace(obj, **{head: new})


def _annotation(cls: type, name: str) -> Any:
    try:
        return typing.get_type_hints(cls).get(name)
    except (NameError, TypeError):  # an annotation that cannot be evaluated: no item check
        return None


def is_int(value: Any) -> bool:
    """An integer, Python's or NumPy's (``np.int64(4)``), but not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_real(value: Any) -> bool:
    """A real number, Python's or NumPy's (``np.float32(0.1)``), but not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def as_python_number(value: Any) -> Any:
    """A NumPy integer or real as the Python ``int`` or ``float`` it equals (once it passed
    :func:`is_int` or :func:`is_real`); anything else unchanged."""
    if is_int(value):
        return int(value)
    return float(value) if is_real(value) else value


def _is_number(value: Any, integer: bool) -> bool:
    return is_int(value) if integer else is_real(value)


def check_positive(name: str, value: Any, *, integer: bool = False) -> None:
    """Raise ``ValueError`` naming ``name`` unless ``value`` is a positive number/int."""
    if not (_is_number(value, integer) and value > 0):
        raise ValueError(
            f"`{name}` must be a positive {'int' if integer else 'number'}; got {value!r}"
        )


def check_nonnegative(name: str, value: Any, *, integer: bool = False) -> None:
    """Raise ``ValueError`` naming ``name`` unless ``value`` is a number/int >= 0."""
    if not (_is_number(value, integer) and value >= 0):
        raise ValueError(
            f"`{name}` must be {'an int' if integer else 'a number'} >= 0; got {value!r}"
        )


def check_choice(name: str, value: Any, choices: Iterable[Any]) -> None:
    """Raise ``ValueError`` naming ``name`` unless ``value`` is one of ``choices``."""
    choices = list(choices)
    if value not in choices:
        raise ValueError(f"`{name}` must be one of {choices}; got {value!r}")


def check_positive_or_none(name: str, value: Any, *, integer: bool = False) -> None:
    """Like :func:`check_positive`, but ``None`` passes too (an optional setting)."""
    if value is not None and not (_is_number(value, integer) and value > 0):
        raise ValueError(
            f"`{name}` must be a positive {'int' if integer else 'number'} or None; got {value!r}"
        )


def check_positive_values(name: str, value: Any, *, allow_none: bool = False) -> None:
    """Raise ``ValueError`` naming ``name`` unless every entry of ``value`` (a number or
    an array, NumPy or JAX) is > 0; NaN fails. With ``allow_none``, ``None`` passes."""
    if allow_none and value is None:
        return
    import numpy as np

    try:
        ok = bool(np.all(np.asarray(value, dtype=float) > 0))
    except (TypeError, ValueError):
        ok = False
    if not ok:
        extra = " or None" if allow_none else ""
        raise ValueError(f"`{name}` must be positive{extra}; got {value!r}")


def check_range(name: str, value: Any, low: float | int, high: float | int) -> None:
    """Raise ``ValueError`` naming ``name`` unless ``low <= value < high``."""
    try:
        ok = low <= float(value) < high
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"`{name}` must lie in [{low}, {high}); got {value!r}")


def check_positive_scalar(name: str, value: Any) -> None:
    """Raise ``ValueError`` naming ``name`` unless ``value`` is a positive finite scalar
    (a Python number or a 0-d array: tunables such as a tolerance may arrive as arrays)."""
    import numpy as np

    try:
        arr = np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        arr = np.asarray(np.nan)
    if isinstance(value, bool) or arr.ndim != 0 or not np.isfinite(arr) or not arr > 0:
        raise ValueError(f"`{name}` must be a positive finite scalar; got {value!r}")


def all_finite(x: Any) -> bool:
    """Whether every value of ``x`` (an array, JAX or NumPy) is finite, checked on the host:
    as a JAX operation outside ``jit`` the check would compile a program per shape."""
    import numpy as np

    return bool(np.all(np.isfinite(np.asarray(x))))


def num_positional(fn) -> int:
    """How many positional arguments ``fn`` takes (2 for ``init_fn(key, y_obs)``; 1 when its
    signature cannot be read; 2 for ``*args``)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return 1
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    if any(p.kind == inspect.Parameter.VAR_POSITIONAL for p in params):
        return 2
    return sum(p.kind in kinds for p in params)
