"""Writing a delivery and everything it decides, in one transaction."""

from __future__ import annotations

from typing import Callable

from sqlalchemy import Connection

from .guard import guarded
from .records import DecisionOutcome, NewDecision, NewDelivery, PlanWrite, Receipt, TimerRow

ACTIVE = "pending"  # the one action status the worker claims


class IntakeMixin:
    @guarded
    def ingest(self, delivery: NewDelivery,
               plan: Callable[[dict | None, list[TimerRow], set[str]], PlanWrite]) -> Receipt:
        """Store a delivery and what `plan` decides about it, in one transaction.

        `plan` is called inside the transaction with the room's stored state (None
        for deliveries without a room), its pending timers and the keys of its
        actions, all locked, so concurrent deliveries for one room are decided one
        after the other. A decision whose action key is already taken is recorded
        as `duplicate`; a timer whose key already has a pending one, as
        `timer-running`.
        """
        now = delivery.received_at
        with self._write() as conn:
            conn.execute(self._sql.insert_delivery, delivery.__dict__)
            room_id = delivery.room_id if delivery.known else None
            if room_id is None:
                write = plan(None, [], set())
            else:
                state = self._lock_room(conn, room_id)
                write = plan(state, self._pending_timers(conn, room_id), self._action_keys(conn, room_id))
            if room_id is not None and write.room_state is not None:
                conn.execute(self._sql.update_room, {"room": room_id, "state": write.room_state, "now": now,
                                                     "delivery": delivery.id})
            cancelled = []
            for cancel in write.cancels:
                done = conn.execute(self._sql.cancel_timer, {"timer_key": cancel.key, "now": now,
                                                             "delivery": delivery.id,
                                                             "reason": cancel.reason}).rowcount
                if done:
                    cancelled.append(cancel.key)
            outcomes = tuple(self._record_decision(conn, delivery.id, d, now) for d in write.decisions)
        return Receipt(delivery.id, outcomes, tuple(cancelled))

    def _pending_timers(self, conn: Connection, room_id: str) -> list[TimerRow]:
        rows = conn.execute(self._sql.pending_timers, {"room_id": room_id}).mappings()
        return [TimerRow.from_mapping(r) for r in rows]

    def _action_keys(self, conn: Connection, room_id: str) -> set[str]:
        return set(conn.execute(self._sql.action_keys, {"room_id": room_id}).scalars())

    def _record_decision(self, conn: Connection, delivery_id: str, decision: NewDecision, now: float,
                         timer_id: int | None = None) -> DecisionOutcome:
        outcome, action_id = decision.outcome, None
        if outcome in ("scheduled", "dry-run"):
            action_id = conn.execute(self._sql.insert_action, dict(
                key=decision.key, kind=decision.action, room_id=decision.room_id,
                session_id=decision.session_id, rule=decision.rule, delivery_id=delivery_id,
                status=ACTIVE if outcome == "scheduled" else "dry-run", confirm=decision.confirm,
                attempts=0, due_at=now, created_at=now, updated_at=now)).scalar()
            if action_id is None:
                outcome = "duplicate"
        if outcome == "duplicate":
            action_id = conn.execute(self._sql.action_id, {"action_key": decision.key}).scalar()
        if outcome == "timer-started":
            started = conn.execute(self._sql.insert_timer, dict(
                key=decision.key, rule=decision.rule, fingerprint=decision.fingerprint,
                room_id=decision.room_id, session_id=decision.session_id, action=decision.action,
                delivery_id=delivery_id, started_at=now, due_at=decision.due_at, status="pending")).scalar()
            if started is None:
                outcome = "timer-running"
        conn.execute(self._sql.insert_decision, dict(
            delivery_id=delivery_id, created_at=now, rule=decision.rule, action=decision.action,
            room_id=decision.room_id, session_id=decision.session_id, action_key=decision.key,
            outcome=outcome, action_id=action_id, timer_id=timer_id, trace=decision.trace))
        return DecisionOutcome(decision.rule, decision.action, outcome, action_id)

