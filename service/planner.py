"""What to do about one event, or one due timer: pure, so the service, `python -m service test`
and `replay` all decide the same way.

`plan_event` folds the event into the room's state, re-checks the room's pending
timers (a join cancels an "empty for 5m" timer), and turns each matching rule
into an outcome:

| outcome         | meaning                                                          |
|-----------------|------------------------------------------------------------------|
| `scheduled`     | an action is queued for the worker                               |
| `dry-run`       | recorded as "would act" (DRY_RUN, `settings.dry_run`, a rule's `dry_run`, or an unverified delivery) |
| `duplicate`     | the rule already acted on this room and session                  |
| `protected`     | the room is in `settings.protect`: never acted on                |
| `timer-started` | the rule has `for:`; a timer will re-check it when that has passed |
| `timer-running` | such a timer is already pending                                  |

`fire_timer` decides a due timer: re-check the rule as it is now against the
room as it is now, then act, cancel (and say why), or wait longer (the rule's
`for:` grew in a reload).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Iterable

from .errors import PayloadInvalid
from .events import SWEEP, Event, parse_event
from .rooms import RoomState, advance
from .rules.conditions import Trace
from .rules.durations import format_duration
from .rules.engine import evaluate
from .rules.fields import Facts
from .rules.model import Rule, RuleSet
from .outcomes import Decided, decided_as, makes_action


_UNREADABLE = "the delivery that started it no longer parses (a newer version reads bodies differently)"


def action_key(rule: str, room_id: str, session_id: str | None) -> str:
    """At most one action per rule, room and session, however often the event arrives."""
    return f"{rule}|{room_id}|{session_id or '-'}"


@dataclass(frozen=True)
class PendingTimer:
    """A `for:` timer waiting to come due: one value for the store, which keeps it, and the
    planner, which decides it. The store's rows come in through `from_row`."""

    key: str
    rule: str
    fingerprint: str
    room_id: str
    session_id: str | None
    started_at: float
    due_at: float
    trigger: Event | None  # the event whose rule started it; None if its stored body no longer parses
    id: int | None = None
    # As stored (none of these is read in deciding): the action it leads to, the delivery that
    # started it, that delivery's body and whether its signature was verified.
    action: str = ""
    delivery_id: str = ""
    trigger_body: str = ""
    trigger_verified: bool = False  # never act on a trigger not known to be verified

    @classmethod
    def from_row(cls, row) -> "PendingTimer":
        """A stored timer (a mapping with every field but `trigger`), its trigger read again from
        `trigger_body`. A trigger that no longer parses (validation tightened in an upgrade) is
        None, and the planner cancels the timer, saying why: it must not poison every later
        delivery for its room."""
        body = row["trigger_body"]
        trigger = _cached_trigger(body) if len(body) <= CACHED_TRIGGER_MAX else _trigger(body)
        return cls(trigger=trigger, **{name: row[name] for name in _STORED})


# Every later delivery for a room reads its pending timers again, inside the room's write lock:
# parsing each trigger once per process keeps that work (about 0.1 ms a timer) off the serial
# path. An Event is frozen and nothing writes into its data, so one may be shared. Only ordinary
# bodies are kept: a 64 KiB body can parse into megabytes, and 512 of those would be a process's
# memory.
CACHED_TRIGGER_MAX = 4096
_STORED = tuple(name for name in PendingTimer.__dataclass_fields__ if name != "trigger")


def _trigger(body: str) -> Event | None:
    try:
        event = parse_event(body.encode("utf-8"))
    except PayloadInvalid:
        return None
    return event if event.problem is None else None  # read, but no longer readable as its type


_cached_trigger = lru_cache(maxsize=512)(_trigger)


@dataclass(frozen=True)
class Outcome:
    rule: str
    action: str
    room_id: str
    session_id: str | None
    key: str  # the action key: at most one action per key, ever
    outcome: str = Decided.SCHEDULED  # see the table above
    trace: Trace | None = None
    confirm: str | None = None
    due_at: float | None = None  # for timer-started
    fingerprint: str = ""

    @property
    def creates_action(self) -> bool:
        return makes_action(self.outcome)


@dataclass(frozen=True)
class Cancel:
    key: str  # the timer's key
    reason: str
    trace: Trace | None = None


@dataclass(frozen=True)
class EventPlan:
    room: RoomState | None
    outcomes: tuple[Outcome, ...]
    cancels: tuple[Cancel, ...]


@dataclass(frozen=True)
class TimerPlan:
    verdict: str  # fire | cancel | wait
    reason: str
    outcome: Outcome | None = None  # when fired
    due_at: float | None = None  # when waiting longer
    fingerprint: str = ""
    trace: Trace | None = None


def _facts(rule_set: RuleSet, event: Event, now: float, room: RoomState | None,
           clock: float | None = None) -> Facts:
    return Facts(event=event, now=now, room=room, tz=rule_set.settings.tz, clock=clock)


def _between(rule_set: RuleSet, timer: PendingTimer, now: float, room: RoomState | None) -> Facts:
    """A pending timer's facts between its start and its due time: the time of day (now.time,
    now.weekday) is read as at the start, so only what events change can cancel it then."""
    return _facts(rule_set, timer.trigger, now, room, clock=timer.started_at)


def _act(rule_set: RuleSet, rule: Rule, event: Event, trace: Trace | None, acted: set[str],
         acts: bool) -> Outcome:
    key = action_key(rule.name, event.room_id, event.session_id)
    if rule_set.settings.is_protected(event.room_id):
        outcome = Decided.PROTECTED
    elif key in acted:
        outcome = Decided.DUPLICATE
    else:
        outcome = decided_as(rule.dry_run or rule_set.settings.dry_run or not acts)
    return Outcome(rule.name, rule.action, event.room_id, event.session_id, key, outcome, trace,
                   rule.confirm, fingerprint=rule.fingerprint)


def plan_event(rule_set: RuleSet, event: Event, now: float, room: RoomState | None,
               timers: Iterable[PendingTimer], acted: set[str], *, acts: bool) -> EventPlan:
    """Everything one delivery changes: the room's state, its timers, and the decisions.

    An event of an unknown type, with no room, or whose body could not be read
    (`event.problem`) changes nothing: it is recorded, never decided on. A sweep changes
    neither the room nor its timers: only the rules `on: sweep` are decided."""
    if not event.known or event.problem is not None or not event.room_id:
        return EventPlan(room, (), ())
    room = advance(room, event, now)
    if event.type == SWEEP and room is not None:  # about the room's latest session: its action key
        event = replace(event, session_id=room.session_id)
    timers = list(timers)

    cancels = []
    for timer in timers if event.type != SWEEP else ():  # a sweep is no news: no timer is re-checked
        rule = rule_set.rule(timer.rule)
        if timer.trigger is None:
            cancels.append(Cancel(timer.key, _UNREADABLE))
            continue
        if rule is None:
            cancels.append(Cancel(timer.key, f"rule '{timer.rule}' is no longer in the rules "
                                             f"({rule_set.short_hash})"))
            continue
        holds, trace = rule_set.holds(rule, _between(rule_set, timer, now, room))
        if not holds:
            cancels.append(Cancel(timer.key, f"its condition stopped holding on {event.type}", trace))
    cancelled = {c.key for c in cancels}
    running = {t.key for t in timers if t.key not in cancelled}

    outcomes = []
    for result in evaluate(rule_set, _facts(rule_set, event, now, room), traces=False):
        if not result.matched:
            continue
        rule = result.rule
        if rule.for_seconds is None:
            outcomes.append(_act(rule_set, rule, event, result.trace, acted, acts))
            continue
        key = action_key(rule.name, event.room_id, event.session_id)
        if key in acted or rule_set.settings.is_protected(event.room_id):
            outcomes.append(_act(rule_set, rule, event, result.trace, acted, acts))
        elif key in running:
            outcomes.append(Outcome(rule.name, rule.action, event.room_id, event.session_id, key,
                                    Decided.TIMER_RUNNING, result.trace, rule.confirm,
                                    fingerprint=rule.fingerprint))
        else:
            outcomes.append(Outcome(rule.name, rule.action, event.room_id, event.session_id, key,
                                    Decided.TIMER_STARTED, result.trace, rule.confirm, due_at=now + rule.for_seconds,
                                    fingerprint=rule.fingerprint))
            running.add(key)
    return EventPlan(room, tuple(outcomes), tuple(cancels))


def fire_timer(rule_set: RuleSet, timer: PendingTimer, now: float, room: RoomState | None,
               acted: set[str], *, acts: bool) -> TimerPlan:
    """Decide a due timer against the rules and the room as they are now."""
    if timer.trigger is None:
        return TimerPlan("cancel", _UNREADABLE)
    rule = rule_set.rule(timer.rule)
    if rule is None:
        return TimerPlan("cancel", f"rule '{timer.rule}' is no longer in the rules ({rule_set.short_hash})")
    if not rule.applies_to(timer.trigger.type):
        return TimerPlan("cancel", f"rule '{rule.name}' no longer applies to {timer.trigger.type}")
    if rule.for_seconds is not None and timer.started_at + rule.for_seconds > now:
        due = timer.started_at + rule.for_seconds
        return TimerPlan("wait", f"rule '{rule.name}' now waits {format_duration(rule.for_seconds)}",
                         due_at=due, fingerprint=rule.fingerprint)
    holds, trace = rule_set.holds(rule, _facts(rule_set, timer.trigger, now, room))
    if not holds:
        return TimerPlan("cancel", "its condition no longer holds", trace=trace)
    held = format_duration(now - timer.started_at)
    return TimerPlan("fire", f"held for {held}", _act(rule_set, rule, timer.trigger, trace, acted, acts),
                     fingerprint=rule.fingerprint, trace=trace)


def recheck_timer(rule_set: RuleSet, timer: PendingTimer, now: float, room: RoomState | None) -> TimerPlan:
    """After a reload: a timer whose rule was removed or changed is cancelled or re-checked.

    Returns `wait` (keep it, perhaps with a new due time) or `cancel`, with the reason.
    """
    if timer.trigger is None:
        return TimerPlan("cancel", _UNREADABLE)
    rule = rule_set.rule(timer.rule)
    if rule is None:
        return TimerPlan("cancel", f"rule '{timer.rule}' was removed in a reload ({rule_set.short_hash})")
    if rule.fingerprint == timer.fingerprint:
        return TimerPlan("wait", "unchanged", due_at=timer.due_at, fingerprint=rule.fingerprint)
    if not rule.applies_to(timer.trigger.type):
        return TimerPlan("cancel", f"rule '{rule.name}' changed in a reload and no longer applies to "
                                   f"{timer.trigger.type} ({rule_set.short_hash})")
    holds, trace = rule_set.holds(rule, _between(rule_set, timer, now, room))
    if not holds:
        return TimerPlan("cancel", f"rule '{rule.name}' changed in a reload and its condition no longer "
                                   f"holds ({rule_set.short_hash})", trace=trace)
    due = timer.started_at + (rule.for_seconds or 0.0)
    return TimerPlan("wait", f"rule '{rule.name}' changed in a reload; re-checked, still holds "
                             f"({rule_set.short_hash})", due_at=due, fingerprint=rule.fingerprint)
