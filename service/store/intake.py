"""Writing a delivery and everything it decides, in one transaction."""

from __future__ import annotations

from typing import Callable, Sequence

from sqlalchemy import Connection

from .driver import run, to_json
from .guard import guarded
from .records import DecisionOutcome, NewDecision, NewDelivery, PlanWrite, Receipt, TimerRow

ACTIVE = "pending"  # the one action status the worker claims


class IntakeMixin:
    def ingest(self, delivery: NewDelivery,
               plan: Callable[[dict | None, list[TimerRow], set[str]], PlanWrite]) -> Receipt:
        """Store a delivery and what `plan` decides about it, in one transaction.

        `plan` is called inside the transaction with the room's stored state (None
        for deliveries without a room), its pending timers and the keys of its
        actions, all locked, so concurrent deliveries for one room are decided one
        after the other. A decision whose action key is already taken is recorded
        as `duplicate`; a timer whose key already has a pending one, as
        `timer-running`. A delivery kept unread (`problem` set) is stored and nothing
        else: `plan` is not called, and no room, timer, decision or action changes.
        On SQLite, deliveries that arrive together in one process share
        a transaction (batch.py); each is still all-or-nothing.
        """
        if self._intake is None:
            return self._ingest_together([(delivery, plan)])[0]
        return self._intake.submit((delivery, plan))

    @guarded
    def _ingest_together(self, works: Sequence[tuple[NewDelivery, Callable]]) -> list[Receipt]:
        # Rooms are locked in one order (by id) so that two batches never wait for each other
        # in a circle on PostgreSQL; deliveries for one room keep their order (sorted is stable).
        order = sorted(range(len(works)), key=lambda i: works[i][0].room_id or "")
        receipts: list[Receipt | None] = [None] * len(works)
        with self._write() as conn:
            for i in order:
                receipts[i] = self._ingest_one(conn, *works[i])
        return receipts

    def _ingest_one(self, conn: Connection, delivery: NewDelivery, plan: Callable) -> Receipt:
        now = delivery.received_at
        run(conn, self._sql.insert_delivery, delivery.__dict__)
        if delivery.problem is not None:
            return Receipt(delivery.id, ())  # kept unread: never decided on, its room not even locked
        room_id = delivery.room_id if delivery.known else None
        if room_id is None:
            write = plan(None, [], set())
        else:
            state = self._lock_room(conn, room_id)
            write = plan(state, self._pending_timers(conn, room_id), self._action_keys(conn, room_id))
        if room_id is not None and write.room_state is not None:
            run(conn, self._sql.update_room, {"room": room_id, "state": to_json(write.room_state),
                                              "now": now, "delivery": delivery.id})
        cancelled = []
        for cancel in write.cancels:
            done = run(conn, self._sql.cancel_timer, {"timer_key": cancel.key, "now": now,
                                                      "delivery": delivery.id, "reason": cancel.reason}).rowcount
            if done:
                cancelled.append(cancel.key)
        outcomes = tuple(self._record_decision(conn, delivery.id, d, now) for d in write.decisions)
        return Receipt(delivery.id, outcomes, tuple(cancelled))

    def _pending_timers(self, conn: Connection, room_id: str) -> list[TimerRow]:
        cursor = run(conn, self._sql.pending_timers, {"room_id": room_id})
        names = [column[0] for column in cursor.description]
        rows = [dict(zip(names, row)) for row in cursor.fetchall()]
        for row in rows:
            row["trigger_verified"] = bool(row["trigger_verified"])  # SQLite stores booleans as 0 and 1
        return [TimerRow.from_mapping(row) for row in rows]

    def _action_keys(self, conn: Connection, room_id: str) -> set[str]:
        return {key for (key,) in run(conn, self._sql.action_keys, {"room_id": room_id}).fetchall()}

    def _record_decision(self, conn: Connection, delivery_id: str, decision: NewDecision, now: float,
                         timer_id: int | None = None) -> DecisionOutcome:
        outcome, action_id = decision.outcome, None
        if outcome in ("scheduled", "dry-run"):
            action_id = _scalar(run(conn, self._sql.insert_action, dict(
                key=decision.key, kind=decision.action, room_id=decision.room_id,
                session_id=decision.session_id, rule=decision.rule, delivery_id=delivery_id,
                status=ACTIVE if outcome == "scheduled" else "dry-run", confirm=decision.confirm,
                attempts=0, due_at=now, created_at=now, updated_at=now)))
            if action_id is None:
                outcome = "duplicate"
        if outcome == "duplicate":
            action_id = _scalar(run(conn, self._sql.action_id, {"action_key": decision.key}))
        if outcome == "timer-started":
            started = _scalar(run(conn, self._sql.insert_timer, dict(
                key=decision.key, rule=decision.rule, fingerprint=decision.fingerprint,
                room_id=decision.room_id, session_id=decision.session_id, action=decision.action,
                delivery_id=delivery_id, started_at=now, due_at=decision.due_at, status="pending")))
            if started is None:
                outcome = "timer-running"
        run(conn, self._sql.insert_decision, dict(
            delivery_id=delivery_id, created_at=now, rule=decision.rule, action=decision.action,
            room_id=decision.room_id, session_id=decision.session_id, action_key=decision.key,
            outcome=outcome, action_id=action_id, timer_id=timer_id, trace=to_json(decision.trace)))
        return DecisionOutcome(decision.rule, decision.action, outcome, action_id)



def _scalar(cursor):
    row = cursor.fetchone()
    return None if row is None else row[0]
