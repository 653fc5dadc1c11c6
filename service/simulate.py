"""What one event would do under a rule set, with no side effects: `python -m service simulate`
and the dashboard's "try an event" box.

`try_event(rule_set, raw, now)` parses the body (raising `PayloadInvalid` where the
webhook would answer 400), folds it into a room with no history (or, given `stored`, the room
as the store holds it: `simulate --from-store`), evaluates every
rule that applies to its type, and asks the planner what each match would lead
to. A body the webhook would keep unread (a known type missing a field it needs)
evaluates no rule: the trial says why, as the service would decide nothing on it.
Nothing is stored, called or logged.
"""

from __future__ import annotations

from dataclasses import dataclass

from .events import Event, parse_event
from .outcomes import Decided
from .planner import Outcome, plan_event
from .rooms import RoomState, advance
from .rules.durations import format_duration
from .rules.engine import RuleResult, evaluate
from .rules.fields import Facts
from .rules.model import RuleSet

VERDICTS = {True: "MATCH", False: "no match", None: "no match (unknown: a field is missing)"}


@dataclass(frozen=True)
class RuleTrial:
    """One rule's verdict on the event, and what would follow from it."""

    result: RuleResult
    outcome: Outcome | None  # None when the rule did not match
    now: float

    @property
    def verdict(self) -> str:
        return VERDICTS[self.result.result]

    @property
    def consequence(self) -> str:
        """What would follow, as " -> ..." (empty when nothing would)."""
        outcome = self.outcome
        if outcome is None:
            return ""
        if outcome.outcome == Decided.SCHEDULED:
            return f" -> would {outcome.action} room {outcome.room_id}"
        if outcome.outcome == Decided.TIMER_STARTED:
            return (f" -> would start a timer: {outcome.action} room {outcome.room_id} in "
                    f"{format_duration(outcome.due_at - self.now)} if the condition still holds then")
        return f" -> {outcome.outcome}: would not act"

    @property
    def condition_lines(self) -> list[str]:
        """The trace, one condition a line, indented under the rule's line."""
        trace = self.result.trace
        return trace.lines(2) if trace else ["    yes (no conditions)"]


@dataclass(frozen=True)
class Trial:
    event: Event
    rules_source: str
    rules: tuple[RuleTrial, ...]
    history: str = ""  # what the room was before the event, when that matters to say

    @property
    def notes(self) -> list[str]:
        out = [self.history] if self.history else []
        if self.event.problem is not None:
            return [f"unreadable ({self.event.problem}): kept, never decided on"]
        if not self.event.known:
            out.append("unknown event type: recorded, never acted on")
        if not self.rules:
            out.append(f"no rule in {self.rules_source} applies to {self.event.type}")
        return out

    def lines(self) -> list[str]:
        """The trace as `simulate` prints it."""
        event = self.event
        out = [f"event {event.type} room={event.room_id} session={event.session_id}"]
        out += [f"  {note}" for note in self.notes]
        for rule in self.rules:
            out.append(f"  rule {rule.result.rule.name} (line {rule.result.rule.line}): {rule.verdict}"
                       f"{rule.consequence}")
            out += rule.condition_lines
        return out

    def to_dict(self) -> dict:
        """The trace as `simulate --json` prints it."""
        return {
            "event": self.event.type, "room": self.event.room_id, "known": self.event.known,
            "problem": self.event.problem, "history": self.history or None,
            "rules": [{"rule": r.result.rule.name, "action": r.result.rule.action, "result": r.result.result,
                       "outcome": r.outcome.outcome if r.outcome else None,
                       "trace": r.result.trace.to_dict() if r.result.trace else None} for r in self.rules],
        }


def try_event(rule_set: RuleSet, raw: bytes, now: float, stored: RoomState | None = None, *,
              from_store: bool = False) -> Trial:
    """The decision trace for one body against `rule_set`, on a room with no history, or on
    `stored` (the room as the store holds it) when `from_store`. Its pending timers and the
    actions already taken are not read: a rule whose action was already taken shows what it
    would schedule, where the service would record a duplicate. Raises PayloadInvalid."""
    event = parse_event(raw, sweep=True)  # the operator's own body: `sweep` shows what a sweep decides
    if event.problem is not None:
        return Trial(event, rule_set.source, ())  # the service would not decide on it: nor does a trial
    history = _history(event, stored, now, from_store)
    room = advance(stored, event, now)
    results = evaluate(rule_set, Facts(event=event, now=now, room=room, tz=rule_set.settings.tz))
    outcomes = {o.rule: o for o in plan_event(rule_set, event, now, stored, [], set(), acts=True).outcomes}
    return Trial(event, rule_set.source, tuple(RuleTrial(r, outcomes.get(r.rule.name), now) for r in results),
                 history)


def _history(event: Event, stored: RoomState | None, now: float, from_store: bool) -> str:
    if from_store and stored is None:
        return f"room {event.room_id} is not in the store: tried on a room with no history"
    if stored is not None:
        seen = stored.last_seen_at
        return (f"room {event.room_id} as stored: {len(stored.participants)} participant(s), "
                f"session {stored.session_id} {'live' if stored.session_active else 'not live'}, "
                + (f"last delivery {format_duration(round(max(0.0, now - seen)))} ago" if seen is not None
                   else "last delivery unknown"))
    if event.type == "sweep":
        return ("a sweep of a room with no history: room.quiet_for and the room's state are unknown "
                "(--from-store reads the room as stored)")
    return ""
