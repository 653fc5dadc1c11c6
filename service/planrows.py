"""Stored rows back as the planner's inputs (a room's state, its pending timers with their
triggers parsed again), and a plan as the store's PlanWrite or TimerWrite, which carry the
planner's own Outcome and Cancel values: the one place the planner's values and the store's
records meet."""

from __future__ import annotations

from functools import lru_cache

from .errors import PayloadInvalid
from .events import Event, parse_event
from .planner import EventPlan, PendingTimer, TimerPlan
from .rooms import RoomState
from .store import PlanWrite, TimerRow, TimerWrite


def room_state(room_id: str, stored: dict | None) -> RoomState | None:
    return None if stored is None else RoomState.from_dict(room_id, stored)


def pending_timer(row: TimerRow) -> PendingTimer:
    """The stored timer, its trigger parsed again. A trigger that no longer parses (validation
    tightened in an upgrade) comes back as None, and the planner cancels the timer, saying why:
    it must not poison every later delivery for its room."""
    body = row.trigger_body
    trigger = _cached_trigger(body) if len(body) <= CACHED_TRIGGER_MAX else _trigger(body)
    return PendingTimer(key=row.key, rule=row.rule, fingerprint=row.fingerprint, room_id=row.room_id,
                        session_id=row.session_id, started_at=row.started_at, due_at=row.due_at,
                        trigger=trigger, id=row.id)


# Every later delivery for a room reads its pending timers again, inside the room's write lock:
# parsing each trigger once per process keeps that work (about 0.1 ms a timer) off the serial
# path. An Event is frozen and nothing writes into its data, so one may be shared. Only ordinary
# bodies are kept: a 64 KiB body can parse into megabytes, and 512 of those would be a process's
# memory.
CACHED_TRIGGER_MAX = 4096


def _trigger(body: str) -> Event | None:
    try:
        event = parse_event(body.encode("utf-8"))
    except PayloadInvalid:
        return None
    return event if event.problem is None else None  # read, but no longer readable as its type


_cached_trigger = lru_cache(maxsize=512)(_trigger)


def plan_write(plan: EventPlan) -> PlanWrite:
    return PlanWrite(room_state=plan.room.to_dict() if plan.room is not None else None,
                     decisions=plan.outcomes, cancels=plan.cancels)


def timer_write(plan: TimerPlan) -> TimerWrite:
    return TimerWrite(verdict=plan.verdict, reason=plan.reason,
                      decision=plan.outcome,
                      due_at=plan.due_at, fingerprint=plan.fingerprint or None)
