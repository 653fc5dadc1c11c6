"""Evaluate a rule set against the facts of one event. Pure: no I/O, no clock."""

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


@dataclass(frozen=True)
class Decision:
    """A matched rule, turned into the action it asks for on one room."""

    rule: str
    action: str
    room_id: str
    session_id: str | None
    trace: Trace | None

    @property
    def key(self) -> str:
        """At most one action per rule, room and session, however often the event arrives."""
        return f"{self.rule}|{self.room_id}|{self.session_id or '-'}"


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


def decide(rule_set: RuleSet, facts: Facts) -> tuple[Decision, ...]:
    """The actions the event calls for.

    Only events the service understands can cause actions: an unknown event type
    is recorded but never acted on, since its fields were never validated.
    """
    event = facts.event
    if not event.known or not event.room_id:
        return ()
    return tuple(
        Decision(r.rule.name, r.rule.action, event.room_id, event.session_id, r.trace)
        for r in evaluate(rule_set, facts)
        if r.matched
    )
