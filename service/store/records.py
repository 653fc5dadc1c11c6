"""The values that cross the store's boundary, in and out. Plain, frozen, no SQL."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


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


@dataclass(frozen=True)
class NewDecision:
    rule: str
    action: str
    room_id: str
    session_id: str | None
    key: str  # the action key: at most one action per key, ever
    trace: dict | None


@dataclass(frozen=True)
class DecisionOutcome:
    rule: str
    action: str
    outcome: str  # scheduled | duplicate | dry-run
    action_id: int | None


@dataclass(frozen=True)
class Receipt:
    delivery_id: str
    decisions: tuple[DecisionOutcome, ...]


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


@dataclass(frozen=True)
class AttemptRecord:
    started_at: float
    latency_ms: float
    http_status: int | None
    outcome: str  # done | retry | failed | dead
    error: str | None
    next_due_at: float | None  # when outcome is retry


Row = dict[str, Any]
