"""The statements the hot paths run, built once per store instead of once per call.

Building a SQLAlchemy statement and its cache key costs about as much as running
it on SQLite; these are built when the store is made, with bind parameters, and
executed with a dict of values each time (see bench/ for the figures).
"""

from __future__ import annotations

from sqlalchemy import bindparam, select, text, update

from .tables import actions, decisions, deliveries, rooms, timers

_TIMER_WITH_TRIGGER = (timers, deliveries.c.body.label("trigger_body"),
                       deliveries.c.verified.label("trigger_verified"))


class Statements:
    def __init__(self, insert):
        """`insert` is the dialect's insert (for ON CONFLICT DO NOTHING)."""
        self.insert_delivery = deliveries.insert()
        self.insert_decision = decisions.insert()
        self.insert_room = insert(rooms).on_conflict_do_nothing(index_elements=["room_id"])
        self.lock_room = select(rooms.c.state).where(rooms.c.room_id == bindparam("room_id")).with_for_update()
        self.update_room = update(rooms).where(rooms.c.room_id == bindparam("room")).values(
            state=bindparam("state"), updated_at=bindparam("now"), last_delivery_id=bindparam("delivery"))
        self.pending_timers = (
            select(*_TIMER_WITH_TRIGGER).join(deliveries, deliveries.c.id == timers.c.delivery_id)
            .where(timers.c.room_id == bindparam("room_id"), timers.c.status == "pending")
            .order_by(timers.c.id).with_for_update(of=timers))
        self.action_keys = select(actions.c.key).where(actions.c.room_id == bindparam("room_id"))
        self.cancel_timer = update(timers).where(
            timers.c.key == bindparam("timer_key"), timers.c.status == "pending").values(
            status="cancelled", resolved_at=bindparam("now"), resolved_by=bindparam("delivery"),
            reason=bindparam("reason"))
        self.insert_action = insert(actions).on_conflict_do_nothing(index_elements=["key"]).returning(actions.c.id)
        self.action_id = select(actions.c.id).where(actions.c.key == bindparam("action_key"))
        self.insert_timer = insert(timers).on_conflict_do_nothing(
            index_elements=["key"], index_where=text("status = 'pending'")).returning(timers.c.id)
