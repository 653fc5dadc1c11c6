"""Evaluate a rule set against the facts of one event. Pure: no I/O, no clock.

What a match leads to (an action, a timer, nothing for a protected room) is the
planner's business: see `service/planner.py`.

Conditions are evaluated through their compiled nodes (`compiled.py`): a condition that
several rules share is tested once per event, and a verdict without a trace is a tuple
the rule set made when it loaded.
"""

from __future__ import annotations

from functools import partial

from .fields import Facts
from .model import RuleResult, RuleSet

__all__ = ["RuleResult", "evaluate"]

# RuleResult((rule, result, trace)) without the NamedTuple's Python-level `__new__`: one is
# made per matching rule per event (see `compiled._trace`).
_result = partial(tuple.__new__, RuleResult)


def evaluate(rule_set: RuleSet, facts: Facts, *, traces: bool = True) -> tuple[RuleResult, ...]:
    """Every rule that applies to the event's type, in file order, with its verdict.

    With `traces=False` only matching rules carry a trace (the one a decision records);
    the others are tested without building one, which is most of the cost.
    """
    results = []
    append = results.append
    for rule, test, trace, always, unmatched, unknown in rule_set.checks_for(facts.event.type):
        if test is None:
            append(always)
        elif traces:
            made = trace(facts)
            append(_result((rule, made.result, made)))
        else:
            result = test(facts)
            if result is True:
                append(_result((rule, True, trace(facts))))
            else:
                append(unmatched if result is False else unknown)
    return tuple(results)
