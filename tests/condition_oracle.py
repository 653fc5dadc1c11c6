"""The test oracle for condition evaluation: a plain walk of the tree, written as the
three-valued logic reads (SQL's NULL), one node at a time. The service evaluates conditions
only compiled (service/rules/compiled.py); the engine's tests check it against this.
"""

from __future__ import annotations

from service.rules import fields
from service.rules.conditions import All, Any_, Compare, Condition, Not, Trace
from service.rules.operators import OPERATORS


def walk(condition: Condition, facts: fields.Facts) -> Trace:
    """The condition's verdict on `facts`, with its trace."""
    if isinstance(condition, Compare):
        actual = fields.read(facts, condition.field)
        return Trace(condition.op, OPERATORS[condition.op].test(actual, condition.compiled), field=condition.field,
                     operand=condition.operand, actual=actual)
    if isinstance(condition, Not):
        trace = walk(condition.child, facts)
        return Trace("not", None if trace.result is None else not trace.result, (trace,))
    traces = tuple(walk(child, facts) for child in condition.children)
    results = [t.result for t in traces]
    if isinstance(condition, All):
        return Trace("all", False if False in results else (None if None in results else True), traces)
    if isinstance(condition, Any_):
        return Trace("any", True if True in results else (None if None in results else False), traces)
    raise TypeError(f"not a condition: {condition!r}")
