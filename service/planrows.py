"""A stored room state back as the planner's RoomState, and a plan as the store's PlanWrite or
TimerWrite, which carry the planner's own Outcome and Cancel values. (Pending timers need no
conversion: the store reads them as the planner's PendingTimer.)"""

from __future__ import annotations

from .planner import EventPlan, TimerPlan
from .rooms import RoomState
from .store import PlanWrite, TimerWrite


def room_state(room_id: str, stored: dict | None) -> RoomState | None:
    return None if stored is None else RoomState.from_dict(room_id, stored)


def plan_write(plan: EventPlan) -> PlanWrite:
    return PlanWrite(room_state=plan.room.to_dict() if plan.room is not None else None,
                     decisions=plan.outcomes, cancels=plan.cancels)


def timer_write(plan: TimerPlan) -> TimerWrite:
    return TimerWrite(verdict=plan.verdict, reason=plan.reason,
                      decision=plan.outcome,
                      due_at=plan.due_at, fingerprint=plan.fingerprint or None)
