"""Writing a delivery and everything it decides, in one transaction."""

from __future__ import annotations

from typing import Callable

from sqlalchemy import Connection, select, text, update

from .guard import guarded
from .records import DecisionOutcome, NewDecision, NewDelivery, PlanWrite, Receipt, TimerRow
from .tables import actions, decisions, deliveries, rooms, timers

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
            conn.execute(deliveries.insert().values(**delivery.__dict__))
            room_id = delivery.room_id if delivery.known else None
            if room_id is None:
                write = plan(None, [], set())
            else:
                state = self._lock_room(conn, room_id)
                write = plan(state, self._pending_timers(conn, room_id), self._action_keys(conn, room_id))
            if room_id is not None and write.room_state is not None:
                conn.execute(update(rooms).where(rooms.c.room_id == room_id).values(
                    state=write.room_state, updated_at=now, last_delivery_id=delivery.id))
            cancelled = []
            for cancel in write.cancels:
                done = conn.execute(update(timers).where(timers.c.key == cancel.key, timers.c.status == "pending")
                                    .values(status="cancelled", resolved_at=now, resolved_by=delivery.id,
                                            reason=cancel.reason)).rowcount
                if done:
                    cancelled.append(cancel.key)
            outcomes = tuple(self._record_decision(conn, delivery.id, d, now) for d in write.decisions)
        return Receipt(delivery.id, outcomes, tuple(cancelled))

    def _pending_timers(self, conn: Connection, room_id: str) -> list[TimerRow]:
        rows = conn.execute(
            select(timers, deliveries.c.body.label("trigger_body"),
                   deliveries.c.verified.label("trigger_verified"))
            .join(deliveries, deliveries.c.id == timers.c.delivery_id)
            .where(timers.c.room_id == room_id, timers.c.status == "pending")
            .order_by(timers.c.id).with_for_update(of=timers)
        ).mappings()
        return [TimerRow.from_mapping(r) for r in rows]

    def _action_keys(self, conn: Connection, room_id: str) -> set[str]:
        return set(conn.execute(select(actions.c.key).where(actions.c.room_id == room_id)).scalars())

    def _record_decision(self, conn: Connection, delivery_id: str, decision: NewDecision, now: float,
                         timer_id: int | None = None) -> DecisionOutcome:
        outcome, action_id = decision.outcome, None
        if outcome in ("scheduled", "dry-run"):
            action_id = conn.execute(
                self._insert(actions).values(
                    key=decision.key, kind=decision.action, room_id=decision.room_id,
                    session_id=decision.session_id, rule=decision.rule, delivery_id=delivery_id,
                    status=ACTIVE if outcome == "scheduled" else "dry-run", confirm=decision.confirm,
                    attempts=0, due_at=now, created_at=now, updated_at=now,
                ).on_conflict_do_nothing(index_elements=["key"]).returning(actions.c.id)
            ).scalar()
            if action_id is None:
                outcome = "duplicate"
        if outcome == "duplicate":
            action_id = conn.execute(select(actions.c.id).where(actions.c.key == decision.key)).scalar()
        if outcome == "timer-started":
            started = conn.execute(
                self._insert(timers).values(
                    key=decision.key, rule=decision.rule, fingerprint=decision.fingerprint,
                    room_id=decision.room_id, session_id=decision.session_id, action=decision.action,
                    delivery_id=delivery_id, started_at=now, due_at=decision.due_at, status="pending",
                ).on_conflict_do_nothing(index_elements=["key"], index_where=text("status = 'pending'"))
                .returning(timers.c.id)
            ).scalar()
            if started is None:
                outcome = "timer-running"
        conn.execute(decisions.insert().values(
            delivery_id=delivery_id, created_at=now, rule=decision.rule, action=decision.action,
            room_id=decision.room_id, session_id=decision.session_id, action_key=decision.key,
            outcome=outcome, action_id=action_id, timer_id=timer_id, trace=decision.trace,
        ))
        return DecisionOutcome(decision.rule, decision.action, outcome, action_id)

