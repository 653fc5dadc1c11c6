"""The statements a delivery's transaction runs, compiled once per store (see driver.py).

Each is built with SQLAlchemy Core, so it reads like the rest of the store and
is rendered for the store's own dialect (PostgreSQL's FOR UPDATE, for one),
then compiled to its SQL text once; `driver.run` executes it with a dict of
values. Insert statements name the columns they are given (`column_keys`).
"""

from __future__ import annotations

from sqlalchemy import bindparam, select, text, update
from sqlalchemy.engine import Dialect

from .driver import Compiled
from ..outcomes import TimerStatus
from .tables import actions, decisions, deliveries, rooms, timers

_TIMER_WITH_TRIGGER = (timers, deliveries.c.body.label("trigger_body"),
                       deliveries.c.verified.label("trigger_verified"))

DELIVERY_COLUMNS = ["id", "received_at", "event_type", "room_id", "session_id", "participant_id", "known",
                    "verified", "body_sha256", "body", "rules_hash", "problem", "participants"]
DECISION_COLUMNS = ["delivery_id", "created_at", "rule", "action", "room_id", "session_id", "action_key",
                    "outcome", "action_id", "timer_id", "trace"]
ACTION_COLUMNS = ["key", "kind", "room_id", "session_id", "rule", "delivery_id", "status", "confirm",
                  "attempts", "due_at", "created_at", "updated_at"]
TIMER_COLUMNS = ["key", "rule", "fingerprint", "room_id", "session_id", "action", "delivery_id",
                 "started_at", "due_at", "status"]


class Statements:
    def __init__(self, insert, dialect: Dialect):
        """`insert` is the dialect's insert (for ON CONFLICT DO NOTHING)."""
        def compiled(statement, columns=None):
            return Compiled(statement, dialect, columns)

        self.insert_delivery = compiled(deliveries.insert(), DELIVERY_COLUMNS)
        self.insert_decision = compiled(decisions.insert(), DECISION_COLUMNS)
        self.insert_room = compiled(insert(rooms).on_conflict_do_nothing(index_elements=["room_id"]),
                                    ["room_id", "state", "updated_at"])
        self.lock_room = compiled(
            select(rooms.c.state).where(rooms.c.room_id == bindparam("room_id")).with_for_update())
        self.update_room = compiled(update(rooms).where(rooms.c.room_id == bindparam("room")).values(
            state=bindparam("state"), updated_at=bindparam("now"), last_delivery_id=bindparam("delivery"),
            closed_at=None))  # a delivery brings a closed room back to life: it is swept again
        self.pending_timers = compiled(
            select(*_TIMER_WITH_TRIGGER).join(deliveries, deliveries.c.id == timers.c.delivery_id)
            .where(timers.c.room_id == bindparam("room_id"), timers.c.status == TimerStatus.PENDING)
            .order_by(timers.c.id).with_for_update(of=timers))
        self.action_keys = compiled(select(actions.c.key).where(actions.c.room_id == bindparam("room_id")))
        self.cancel_timer = compiled(update(timers).where(
            timers.c.key == bindparam("timer_key"), timers.c.status == TimerStatus.PENDING).values(
            status=TimerStatus.CANCELLED, resolved_at=bindparam("now"), resolved_by=bindparam("delivery"),
            reason=bindparam("reason")))
        self.insert_action = compiled(insert(actions).on_conflict_do_nothing(index_elements=["key"])
                                      .returning(actions.c.id), ACTION_COLUMNS)
        self.action_id = compiled(select(actions.c.id).where(actions.c.key == bindparam("action_key")))
        self.insert_timer = compiled(insert(timers).on_conflict_do_nothing(
            index_elements=["key"], index_where=text("status = 'pending'")).returning(timers.c.id),
            TIMER_COLUMNS)
