"""Writing a delivery and everything decided about it, inside another repository's write transaction."""

from __future__ import annotations

from sqlalchemy import Connection, update

from .driver import run, run_many, to_json
from ..planner import Outcome, PendingTimer
from .records import DecisionOutcome, Later, NewDelivery, PlanWrite, Receipt
from ..outcomes import ActionStatus, Decided, TimerStatus, makes_action
from .database import Database
from .tables import rooms


class RoomWrites:
    """Recording a delivery with what was decided about it, and what follows for its room, inside
    a transaction another repository opened: the decider's (inbox.py's `deciding`), a timer's
    (timers.py) or an attempt's (outbox.py). Not handed to any process: the repositories share it.
    The store reads and writes, the planner decides, and nothing here calls back into the planner."""

    def __init__(self, db: Database):
        self.db = db

    def record(self, conn: Connection, delivery: NewDelivery, write: PlanWrite | None,
                later: Later | None = None) -> Receipt:
        """The delivery, the room's new state, the timers cancelled and the decisions made.

        A decision whose action key is already taken is recorded as `duplicate`; a timer whose
        key already has a pending one, as `timer-running`. `write` is None for a delivery kept
        unread or refused (`problem` set): stored, and nothing else changes. Given `later`, the
        delivery's row, the room's state and the decision rows go there, written by `write_later`
        before the transaction ends (the delivery sooner, when an action or a timer points at it).
        """
        now = delivery.received_at
        if later is None:
            run(conn, self.db.sql.insert_delivery, delivery.__dict__)
        else:
            later.deliveries.append(delivery.__dict__)
        if write is None:
            return Receipt(delivery.id, ())
        room_id = delivery.room_id if delivery.known else None
        if room_id is not None and write.room_state is not None:
            room = {"room": room_id, "state": write.room_state, "now": now, "delivery": delivery.id}
            if later is None:
                run(conn, self.db.sql.update_room, {**room, "state": to_json(write.room_state)})
            else:
                later.rooms[room_id] = room
        cancelled = []
        for cancel in write.cancels:
            done = run(conn, self.db.sql.cancel_timer, {"timer_key": cancel.key, "now": now,
                                                      "delivery": delivery.id, "reason": cancel.reason}).rowcount
            if done:
                cancelled.append(cancel.key)
        outcomes = tuple(self.record_decision(conn, delivery.id, d, now, later=later) for d in write.decisions)
        return Receipt(delivery.id, outcomes, tuple(cancelled))

    def write_later(self, conn: Connection, later: Later) -> None:
        """What `record` left for the end of the transaction: one statement per kind."""
        self._write_deliveries(conn, later)
        if later.rooms:
            run_many(conn, self.db.sql.update_room, [{**values, "state": to_json(values["state"])}
                                                   for values in later.rooms.values()])
        if later.decisions:
            run_many(conn, self.db.sql.insert_decision, later.decisions)
        later.rooms, later.decisions = {}, []

    def _write_deliveries(self, conn: Connection, later: Later | None) -> None:
        """The deliveries left for later, written now: an action or a timer is about to point at one."""
        if later is not None and later.deliveries:
            run_many(conn, self.db.sql.insert_delivery, later.deliveries)
            later.deliveries = []

    def pending_timers(self, conn: Connection, room_id: str) -> list[PendingTimer]:
        cursor = run(conn, self.db.sql.pending_timers, {"room_id": room_id})
        names = [column[0] for column in cursor.description]
        rows = [dict(zip(names, row)) for row in cursor.fetchall()]
        for row in rows:
            row["trigger_verified"] = bool(row["trigger_verified"])  # SQLite stores booleans as 0 and 1
        return [PendingTimer.from_row(row) for row in rows]

    def action_keys(self, conn: Connection, room_id: str) -> set[str]:
        return {key for (key,) in run(conn, self.db.sql.action_keys, {"room_id": room_id}).fetchall()}

    def record_decision(self, conn: Connection, delivery_id: str, decision: Outcome, now: float,
                         timer_id: int | None = None, later: Later | None = None) -> DecisionOutcome:
        """The decision's action or timer written now (their ids are in the decision), and the
        decision row itself now or, given `later`, with the rest of the batch's."""
        outcome, action_id, started = decision.outcome, None, None
        if makes_action(outcome) or outcome == Decided.TIMER_STARTED:
            self._write_deliveries(conn, later)
        if makes_action(outcome):
            action_id = _scalar(run(conn, self.db.sql.insert_action, dict(
                key=decision.key, kind=decision.action, room_id=decision.room_id,
                session_id=decision.session_id, rule=decision.rule, delivery_id=delivery_id,
                status=ActionStatus.PENDING if outcome == Decided.SCHEDULED else ActionStatus.DRY_RUN,
                confirm=decision.confirm,
                attempts=0, due_at=now, created_at=now, updated_at=now)))
            if action_id is None:
                outcome = Decided.DUPLICATE
        if outcome == Decided.DUPLICATE:
            action_id = _scalar(run(conn, self.db.sql.action_id, {"action_key": decision.key}))
        if outcome == Decided.TIMER_STARTED:
            started = _scalar(run(conn, self.db.sql.insert_timer, dict(
                key=decision.key, rule=decision.rule, fingerprint=decision.fingerprint,
                room_id=decision.room_id, session_id=decision.session_id, action=decision.action,
                delivery_id=delivery_id, started_at=now, due_at=decision.due_at, status=TimerStatus.PENDING)))
            if started is None:
                outcome = Decided.TIMER_RUNNING
        trace = None if decision.trace is None else decision.trace.to_dict()
        row = dict(delivery_id=delivery_id, created_at=now, rule=decision.rule, action=decision.action,
                   room_id=decision.room_id, session_id=decision.session_id, action_key=decision.key,
                   outcome=outcome, action_id=action_id, timer_id=timer_id, trace=to_json(trace))
        if later is None:
            run(conn, self.db.sql.insert_decision, row)
        else:
            later.decisions.append(row)
        return DecisionOutcome(decision.rule, decision.action, outcome, action_id, started)

    def close_room(self, conn: Connection, room_id: str, now: float) -> None:
        """The room was deactivated (or VideoSDK says it does not exist): sweep it no more. A
        delivery for it clears the mark (the decider's room update)."""
        conn.execute(update(rooms).where(rooms.c.room_id == room_id).values(closed_at=now))


def _scalar(cursor):
    row = cursor.fetchone()
    return None if row is None else row[0]
