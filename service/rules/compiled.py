"""The one evaluator of condition trees: each compiled into closures, so that many rules are
tested on one event quickly.

`conditions.py` holds the trees as data; this module says what they mean, and makes testing them cheap. A rules
file of a thousand rules repeats itself: the same `room.id: {in: [...]}` or `session.age:
{gte: 4h}` appears in rule after rule. The `Compiler` of a rule set gives each distinct
condition one `Node` (distinct: another field, operator, or operand value or type; or
another combination of nodes), and a node that more than one rule (or combination) uses
works out its verdict once per event and keeps it in the event's `Facts.memo`. A node used
once is not memoized: keeping its verdict would cost more than it saves.

Each node has two closures, bound once when the rules load, so that evaluating an event
does no dispatch on the kinds of nodes:

- `test(facts)`: True, False or None (unknown): `all` is false if any child is false, `any`
  true if any child is true, otherwise an unknown child makes the whole unknown; `not unknown`
  is unknown.
- `trace(facts)`: the same verdict as a `Trace`, built from the children's traces, every child
  evaluated (tests/condition_oracle.py walks the tree plainly, to check both).

The engine tests every applicable rule and builds a trace only where one is wanted (a
matching rule's, for its decision). Pure, like the rest of the engine: the memo lives and
dies with its `Facts`, one event.
"""

from __future__ import annotations

from collections import Counter
from functools import partial
from typing import Any, Callable, Iterable

from . import fields
from .conditions import All, Any_, Compare, Condition, Not, Trace
from .operators import OPERATORS

# `Trace(...)` runs the NamedTuple's generated `__new__`, a Python-level call; this makes the
# same Trace straight from a tuple of all six fields, in order, for a third of the cost (a
# trace is made per node of every matching rule, per event).
_trace = partial(tuple.__new__, Trace)

Test = Callable[[fields.Facts], "bool | None"]
Tracer = Callable[[fields.Facts], Trace]


class Node:
    """One distinct condition of a rule set, compiled."""

    __slots__ = ("test", "trace")

    def __init__(self, test: Test, trace: Tracer):
        self.test = test
        self.trace = trace


class Compiler:
    """Compiles the conditions of one rule set, one node for equal conditions.

    Made with all the rule set's conditions, so that it knows, before it builds a node,
    whether the node will be shared (and so worth memoizing).
    """

    def __init__(self, conditions: Iterable[Condition]):
        self._uses: Counter = Counter()  # condition key -> rules and distinct combinations using it
        self._nodes: dict[Any, Node] = {}
        for condition in conditions:
            self._count(condition)

    def _count(self, condition: Condition) -> None:
        key = _key(condition)
        self._uses[key] += 1
        if self._uses[key] == 1:  # a repeated combination tests its children once: count them once
            for child in _children(condition):
                self._count(child)

    def compile(self, condition: Condition) -> Node:
        key = _key(condition)
        node = self._nodes.get(key)
        if node is None:
            children = tuple(self.compile(child) for child in _children(condition))
            test, trace = _BUILDERS[type(condition)](condition, children)
            if self._uses[key] > 1:
                test, trace = _memoized(test), _memoized(trace)
            node = self._nodes[key] = Node(test, trace)
        return node


def _children(condition: Condition) -> tuple:
    if isinstance(condition, Not):
        return (condition.child,)
    return getattr(condition, "children", ())


def _key(condition: Condition) -> Any:
    """What makes two conditions the same condition; a key of its own if it cannot be hashed."""
    if isinstance(condition, Compare):
        key: Any = ("compare", condition.field, condition.op, _typed(condition.operand), condition.compiled)
    elif isinstance(condition, (All, Any_, Not)):
        key = (type(condition).__name__, tuple(_key(child) for child in _children(condition)))
    else:
        raise TypeError(f"not a condition: {condition!r}")
    try:
        hash(key)
    except TypeError:  # an unhashable operand (a rule set built by hand): never shared
        return object()
    return key


def _typed(operand: Any) -> Any:
    """An operand as a key that tells apart what `==` does not, but a test or a trace does:
    1, 1.0 and true; 0.0 and -0.0."""
    if isinstance(operand, tuple):
        return tuple(_typed(item) for item in operand)
    return (type(operand), repr(operand) if type(operand) is float else operand)


def _memoized(work: Callable[[fields.Facts], Any]) -> Callable[[fields.Facts], Any]:
    """`work`, done at most once per event: what it returns is kept in the event's memo."""
    key = object()  # unique, and hashed by identity: no clash with field names or other nodes

    def once(facts):
        memo = facts.memo
        if key in memo:
            return memo[key]
        value = memo[key] = work(facts)
        return value
    return once


def _compare(condition: Compare, children: tuple) -> tuple[Test, Tracer]:
    check, name, op = OPERATORS[condition.op].test, condition.field, condition.op
    operand, compiled, read = condition.operand, condition.compiled, fields.read

    def test(facts):
        return check(read(facts, name), compiled)

    def trace(facts):
        actual = read(facts, name)
        return _trace((op, check(actual, compiled), (), name, operand, actual))
    return test, trace


def _junction(name: str, decisive: bool):
    """`all` (decided by the first False) or `any` (by the first True), three-valued: with no
    decisive child, an unknown one makes the whole unknown."""

    def build(condition: All | Any_, children: tuple[Node, ...]) -> tuple[Test, Tracer]:
        tests, tracers = tuple(c.test for c in children), tuple(c.trace for c in children)
        otherwise = not decisive

        def test(facts):
            unknown = False
            for child in tests:
                result = child(facts)
                if result is decisive:
                    return decisive  # whatever the others are
                if result is None:
                    unknown = True
            return None if unknown else otherwise

        def trace(facts):
            traces = tuple([child(facts) for child in tracers])
            results = [t.result for t in traces]
            result = decisive if decisive in results else (None if None in results else otherwise)
            return _trace((name, result, traces, None, None, None))
        return test, trace
    return build


_all = _junction("all", False)
_any = _junction("any", True)


def _not(condition: Not, children: tuple[Node, ...]) -> tuple[Test, Tracer]:
    [child] = children
    child_test, child_trace = child.test, child.trace

    def test(facts):
        result = child_test(facts)
        return None if result is None else not result

    def trace(facts):
        inner = child_trace(facts)
        return _trace(("not", None if inner.result is None else not inner.result, (inner,), None, None, None))
    return test, trace


_BUILDERS = {Compare: _compare, All: _all, Any_: _any, Not: _not}
