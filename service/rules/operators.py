"""Comparison operators: `field: {operator: operand}`.

Each operator validates its operand when the rules load (`check` returns an error
message or None) and tests a value when an event is evaluated (`test` returns
True, False, or None for *unknown*: the field is missing or of another kind).
Only `exists` gives a definite answer about a missing field.
"""

from __future__ import annotations

import math
import operator
import re
from dataclasses import dataclass
from numbers import Real
from typing import Any, Callable

from .durations import parse_duration
from .fields import MISSING, WEEKDAYS

NUMERIC_KINDS = ("number", "duration")
STRING_KINDS = ("string", "time", "weekday")
TIME = re.compile(r"^([01][0-9]|2[0-3]):[0-5][0-9]\Z")


def _is_number(value: Any) -> bool:
    kind = type(value)  # exact types: fast, and bool (a subclass of int) is not a number here
    if kind is int:
        return True  # ints are finite, however large
    if kind is float:
        return math.isfinite(value)
    if kind is str or kind is bool or value is None:
        return False  # the usual non-numbers, without the slow check for other Reals below
    return isinstance(value, Real) and not isinstance(value, (bool, int, float)) and math.isfinite(value)


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, (str, bool)) or _is_number(value)


def _same(actual: Any, operand: Any) -> bool:
    """Equality that never confuses true with 1 or "1" with 1."""
    if type(actual) is type(operand):
        return actual == operand
    return _is_number(actual) and _is_number(operand) and actual == operand  # 1 and 1.0


def _key(value: Any) -> tuple:
    """A value's identity for `in`: numbers by value (1 and 1.0 alike), everything else by type too."""
    if type(value) is str:
        return ("str", value)  # the usual case, first
    return ("number", value) if _is_number(value) else (type(value).__name__, value)


def _member(values: tuple) -> frozenset | None:
    """`in`'s operand as a set of keys, or None if a value cannot be hashed (lists from data.)."""
    try:
        return frozenset(_key(v) for v in values)
    except TypeError:
        return None


def _in(actual: Any, members: frozenset) -> bool:
    try:
        return _key(actual) in members
    except TypeError:  # an unhashable actual (a list or an object from data.) equals no listed scalar
        return False


@dataclass(frozen=True)
class Operator:
    name: str
    doc: str
    check: Callable[[Any, str | None], str | None]  # (operand, field kind) -> error or None
    test: Callable[[Any, Any], bool | None]  # (actual or MISSING, compiled operand)
    compile: Callable[[Any], Any] = lambda operand: operand
    # What the operand is, for the JSON Schema (rules/schema.py): "value" (one of the field's
    # kind), "values" (a non-empty list of them), "ordered" (a number, duration or time),
    # "pattern" (a regular expression), "flag" (true or false).
    operand: str = "value"


def coerce(operand: Any, kind: str | None) -> tuple[Any, str | None]:
    """Bring an operand as written to the field's kind: `5m` to 300 for durations, `Mon` to
    `mon` for weekdays. Returns (operand, error); lists are coerced item by item."""
    if isinstance(operand, list):
        items = [coerce(item, kind) for item in operand]
        problem = next((p for _, p in items if p), None)
        return [value for value, _ in items], problem
    if kind == "duration" and isinstance(operand, str):
        try:
            return parse_duration(operand), None
        except ValueError as exc:
            return operand, str(exc)
    if kind == "time" and isinstance(operand, str) and not TIME.match(operand):
        return operand, f"{operand!r} is not a time; write it as HH:MM, 24-hour (\"08:30\", \"22:00\")"
    if kind == "weekday" and isinstance(operand, str):
        if operand.lower() not in WEEKDAY_NAMES:
            return operand, f"{operand!r} is not a weekday; use {', '.join(WEEKDAYS)}"
        return operand.lower()[:3], None
    return operand, None


WEEKDAY_NAMES = set(WEEKDAYS) | {"monday", "tuesday", "wednesday", "thursday", "friday", "saturday",
                                  "sunday"}


def _check_scalar(operand, kind):
    if not _is_scalar(operand):
        return "needs a single value (a string, number, true, false or null)"
    if kind in NUMERIC_KINDS and not _is_number(operand):
        return "needs a number for this field" + (" or a duration such as 5m" if kind == "duration" else "")
    if kind in STRING_KINDS and not isinstance(operand, str):
        return "needs a string for this field; quote it"
    return None


def _check_list(operand, kind):
    if not isinstance(operand, list) or not operand:
        return "needs a non-empty list of values"
    for item in operand:
        problem = _check_scalar(item, kind)
        if problem:
            return f"list item {item!r} {problem}"
    return None


def _check_ordered(operand, kind):
    if kind == "time":
        return None if isinstance(operand, str) else "needs a time such as \"22:00\""
    if kind in ("string", "weekday"):
        return f"compares numbers, durations or times, but this field is a {kind}"
    if not _is_number(operand):
        return "needs a number" + (" or a duration such as 5m" if kind == "duration" else "")
    return None


def _check_regex(operand, kind):
    if not isinstance(operand, str):
        return "needs a regular expression as a string"
    if kind in NUMERIC_KINDS:
        return f"matches strings, but this field is a {kind}"
    try:
        re.compile(operand)
    except (re.error, OverflowError, RecursionError) as exc:  # a{4294967296} overflows
        return f"bad regular expression: {exc}"
    return None


def _check_bool(operand, kind):
    return None if isinstance(operand, bool) else "needs true or false"


# The tests are plain functions of (actual, operand), one call each: every condition of
# every rule that applies to an event calls one.

def _eq(actual, operand):
    return None if actual is MISSING else _same(actual, operand)


def _ne(actual, operand):
    return None if actual is MISSING else not _same(actual, operand)


def _in_list(actual, members):
    return None if actual is MISSING else _in(actual, members)


def _not_in_list(actual, members):
    return None if actual is MISSING else not _in(actual, members)


def _ordered(compare):
    # Numbers compare with numbers; times ("HH:MM") compare as strings, which orders them.
    def test(actual, operand):
        if type(actual) is str:
            return compare(actual, operand) if type(operand) is str else None
        if _is_number(actual) and _is_number(operand):
            return compare(actual, operand)
        return None
    return test


def _exists(actual, flag):
    return (actual is not MISSING and actual is not None) == flag


def _matches(actual, pattern):
    if actual is MISSING or not isinstance(actual, str):
        return None
    return pattern.search(actual) is not None


OPERATORS: dict[str, Operator] = {op.name: op for op in (
    Operator("eq", "equal to the operand (also written `field: value`)", _check_scalar, _eq),
    Operator("ne", "not equal to the operand", _check_scalar, _ne),
    Operator("in", "equal to one of the listed values", _check_list, _in_list, compile=_member,
             operand="values"),
    Operator("not_in", "equal to none of the listed values", _check_list, _not_in_list, compile=_member,
             operand="values"),
    Operator("gt", "a number, duration or time after the operand", _check_ordered, _ordered(operator.gt),
             operand="ordered"),
    Operator("gte", "a number, duration or time equal to or after the operand", _check_ordered,
             _ordered(operator.ge), operand="ordered"),
    Operator("lt", "a number, duration or time before the operand", _check_ordered, _ordered(operator.lt),
             operand="ordered"),
    Operator("lte", "a number, duration or time equal to or before the operand", _check_ordered,
             _ordered(operator.le), operand="ordered"),
    Operator("matches", "a string in which the regular expression finds a match (Python `re.search`)",
             _check_regex, _matches, compile=re.compile, operand="pattern"),
    Operator("exists", "`true`: the field is present and not null; `false`: it is absent or null",
             _check_bool, _exists, operand="flag"),
)}
