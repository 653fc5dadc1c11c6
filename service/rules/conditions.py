"""The condition tree of a rule's `when:`: data, as the loader builds it from the file.

`Compare` (a field, an operator, an operand), `All`, `Any_` and `Not` say what a condition
is; `compiled.py` is the one evaluator (three-valued: True, False, or None for *unknown*, when
a field it needed was missing or of the wrong kind; unknown propagates the way SQL's NULL
does, and a rule fires only on True, so an event the service could not fully read never
deactivates a room). A `Trace` is what an evaluation says and how it got there, stored with
each decision and shown by `explain`. The tests check the compiled evaluator against a plain
walk of the tree (tests/condition_oracle.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, NamedTuple

from .fields import MISSING


class Trace(NamedTuple):  # a tuple, not a frozen dataclass: thousands are made per second
    node: str  # "all", "any", "not" or an operator name
    result: bool | None
    children: tuple["Trace", ...] = ()
    field: str | None = None
    operand: Any = None
    actual: Any = None

    def to_dict(self) -> dict:
        if self.field is None:
            return {"node": self.node, "result": self.result,
                    "children": [c.to_dict() for c in self.children]}
        return {"node": self.node, "result": self.result, "field": self.field,
                "operand": self.operand,
                "actual": None if self.actual is MISSING else _kept(self.actual),
                "missing": self.actual is MISSING}

    @classmethod
    def from_dict(cls, data: dict) -> "Trace":
        """A trace as `to_dict` stored it (for `explain`)."""
        if "field" not in data:
            return cls(data["node"], data["result"], tuple(cls.from_dict(c) for c in data.get("children", ())))
        return cls(data["node"], data["result"], field=data["field"], operand=data.get("operand"),
                   actual=MISSING if data.get("missing") else data.get("actual"))

    def walk(self, depth: int = 0) -> list[tuple[int, "Trace"]]:
        """(depth, node) for every node, in pre-order: the order `lines` prints them."""
        out = [(depth, self)]
        for child in self.children:
            out.extend(child.walk(depth + 1))
        return out

    def line(self) -> str:
        """This node alone as text: its verdict, and its comparison with the actual value."""
        mark = {True: "yes", False: "no ", None: "?  "}[self.result]
        if self.field is None:
            return f"{mark} {self.node}"
        actual = "missing" if self.actual is MISSING else _show(self.actual)
        return f"{mark} {self.field} {self.node} {_show(self.operand)}  (actual: {actual})"

    def lines(self, depth: int = 0) -> list[str]:
        """The trace as indented text, one condition a line."""
        return ["  " * (depth + level) + node.line() for level, node in self.walk()]


def _show(value: Any) -> str:
    """A value as it would be written in rules.yaml or JSON."""
    value = _kept(value)
    try:
        return json.dumps(list(value) if isinstance(value, tuple) else value, ensure_ascii=False)
    except (TypeError, ValueError):
        return repr(value)


KEPT_DEPTH = 32  # a `data.` value nested deeper than this is summed up in a trace, not copied


def _kept(value: Any) -> Any:
    """The value as a trace keeps it: itself, or a note for a list or object nested deeper than
    KEPT_DEPTH (a body may nest up to the parser's limit, past what json.dumps can write back)."""
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (list, tuple, dict)):
            if depth >= KEPT_DEPTH:
                kind = "an object" if isinstance(value, dict) else "a list"
                return f"({kind} nested deeper than {KEPT_DEPTH} levels, not copied here)"
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return value


@dataclass(frozen=True)
class Compare:
    field: str
    op: str
    operand: Any  # as written, for traces and docs
    compiled: Any  # what the operator tests against (a compiled regex for `matches`)


@dataclass(frozen=True)
class All:
    children: tuple


@dataclass(frozen=True)
class Any_:
    children: tuple


@dataclass(frozen=True)
class Not:
    child: Any


Condition = Compare | All | Any_ | Not


def text(condition: Condition | None) -> str:
    """A `when:` as one line of text: `room.participants eq 0 and not (...)`."""
    if condition is None:
        return "(no conditions)"
    if isinstance(condition, Compare):
        return f"{condition.field} {condition.op} {_show(condition.operand)}"
    if isinstance(condition, Not):
        return f"not ({text(condition.child)})"
    if isinstance(condition, (All, Any_)):
        joiner = " and " if isinstance(condition, All) else " or "
        return joiner.join(text(c) if isinstance(c, Compare) else f"({text(c)})" for c in condition.children)
    return repr(condition)
