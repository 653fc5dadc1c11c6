"""Evaluate a rule set against the facts of one event. Pure: no I/O, no clock.

What a match leads to (an action, a timer, nothing for a protected room) is the
planner's business: see `service/planner.py`.
"""

from __future__ import annotations

from dataclasses import dataclass

from .conditions import Trace
from .fields import Facts
from .model import Rule, RuleSet


@dataclass(frozen=True)
class RuleResult:
    """One rule's verdict on one event, with the trace that explains it."""

    rule: Rule
    result: bool | None  # True: matched; False: did not; None: unknown (missing facts)
    trace: Trace | None  # None for a rule without `when:`

    @property
    def matched(self) -> bool:
        return self.result is True


def evaluate(rule_set: RuleSet, facts: Facts) -> tuple[RuleResult, ...]:
    """Every rule that applies to the event's type, in file order, with its verdict."""
    results = []
    for rule in rule_set.rules_for(facts.event.type):
        if rule.when is None:
            results.append(RuleResult(rule, True, None))
        else:
            trace = rule.when.evaluate(facts)
            results.append(RuleResult(rule, trace.result, trace))
    return tuple(results)

