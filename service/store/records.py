"""The values that cross the store's boundary, in and out. Plain, frozen, no SQL. What a plan
writes is the planner's own values (planner.Outcome, planner.Cancel), not copies of them, and
a pending timer is read as the planner's PendingTimer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..planner import Cancel, Outcome


@dataclass(frozen=True)
class NewDelivery:
    id: str
    received_at: float
    event_type: str
    room_id: str | None
    session_id: str | None
    participant_id: str | None
    known: bool
    verified: bool
    body_sha256: str
    body: str
    rules_hash: str
    problem: str | None = None  # a body of a known type that could not be read: kept, never decided on
    participants: int | None = None  # the room's head count once this was decided; None: no room state


@dataclass(frozen=True)
class PlanWrite:
    """What a plan changes, in the store's terms."""

    room_state: dict | None
    decisions: tuple[Outcome, ...] = ()  # as planned; the store turns scheduled into duplicate on a taken key
    cancels: tuple[Cancel, ...] = ()


@dataclass(frozen=True)
class TimerWrite:
    """What deciding a timer changes: fire (with its decision), cancel, or wait (to a new time)."""

    verdict: str  # fire | cancel | wait
    reason: str
    decision: Outcome | None = None
    due_at: float | None = None
    fingerprint: str | None = None


@dataclass(frozen=True)
class DecisionOutcome:
    rule: str
    action: str
    outcome: str  # see planner.py
    action_id: int | None
    timer_id: int | None = None  # the timer a `timer-started` decision started


@dataclass(frozen=True)
class Receipt:
    delivery_id: str
    decisions: tuple[DecisionOutcome, ...]
    cancelled: tuple[str, ...] = ()  # keys of the timers this delivery cancelled


@dataclass(frozen=True)
class ClaimedAction:
    id: int
    key: str
    kind: str
    room_id: str
    session_id: str | None
    rule: str
    attempts: int  # including the one this claim is for
    lease_owner: str
    lease_until: float
    confirm: str | None = None


@dataclass(frozen=True)
class AttemptRecord:
    started_at: float
    latency_ms: float
    http_status: int | None
    outcome: str  # done | retry | failed | dead | cancelled
    error: str | None
    next_due_at: float | None  # when outcome is retry
    note: str | None = None
    answer: dict | None = None  # what a 2xx answer said (answers.Reading)
    doubt: str | None = None  # why that answer leaves the action's effect in doubt
    closes_room: bool = False  # the deactivate call itself answered done, or "room not found"


Row = dict[str, Any]


class Later:
    """Writes nothing reads before the batch ends: the deliveries (until an action or a timer
    must point at one), each room's last state, and the decisions."""

    __slots__ = ("deliveries", "rooms", "decisions")

    def __init__(self):
        self.deliveries: list[dict] = []  # insert_delivery's values, in order
        self.rooms: dict[str, dict] = {}  # room id -> update_room's values (the last one wins)
        self.decisions: list[dict] = []  # insert_decision's values, in order
