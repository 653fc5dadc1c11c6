"""Evaluate a rule set against the facts of one event. Pure: no I/O, no clock.

What a match leads to (an action, a timer, nothing for a protected room) is the
planner's business: see `service/planner.py`.
"""

from __future__ import annotations

from typing import NamedTuple

from .conditions import Trace
from .fields import Facts
from .model import Rule, RuleSet


class RuleResult(NamedTuple):  # a tuple: one is made per rule per event
    """One rule's verdict on one event, with the trace that explains it."""

    rule: Rule
    result: bool | None  # True: matched; False: did not; None: unknown (missing facts)
    trace: Trace | None  # None for a rule without `when:`, or not asked for

    @property
    def matched(self) -> bool:
        return self.result is True


def evaluate(rule_set: RuleSet, facts: Facts, *, traces: bool = True) -> tuple[RuleResult, ...]:
    """Every rule that applies to the event's type, in file order, with its verdict.

    With `traces=False` only matching rules carry a trace (the one a decision records);
    the others are tested without building one, which is most of the cost.
    """
    results = []
    append = results.append
    for rule in rule_set.rules_for(facts.event.type):
        when = rule.when
        if when is None:
            append(RuleResult(rule, True, None))
        elif traces:
            trace = when.evaluate(facts)
            append(RuleResult(rule, trace.result, trace))
        else:
            result = when.test(facts)
            append(RuleResult(rule, result, when.evaluate(facts) if result is True else None))
    return tuple(results)

