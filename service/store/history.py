"""Reads of what happened: deliveries, decisions, rooms and their timers; retention.

The rules versions kept are rulesversions.py's."""

from __future__ import annotations

from typing import Iterator

from sqlalchemy import delete, func, select

from .database import Database
from .guard import guarded
from .records import Row
from .tables import actions, attempts, decisions, deliveries, rooms, timers


class History:
    def __init__(self, db: Database):
        self.db = db

    @guarded
    def delivery(self, delivery_id: str) -> Row | None:
        with self.db.read() as conn:
            row = conn.execute(select(deliveries).where(deliveries.c.id == delivery_id)).mappings().first()
            return dict(row) if row else None

    @guarded
    def deliveries(self, *, room_id: str | None = None, limit: int = 100,
                   before: str | None = None) -> list[Row]:
        """Newest first (delivery ids sort by arrival); `before` pages back from a delivery id."""
        query = select(deliveries).order_by(deliveries.c.id.desc()).limit(limit)
        if room_id is not None:
            query = query.where(deliveries.c.room_id == room_id)
        if before is not None:
            query = query.where(deliveries.c.id < before)
        with self.db.read() as conn:
            return [dict(r) for r in conn.execute(query).mappings()]

    def deliveries_since(self, since: float, batch: int = 1000) -> Iterator[Row]:
        """Every delivery received at or after `since`, oldest first, read in batches."""
        after = (since, "")
        while True:
            rows = self._deliveries_after(*after, batch)
            yield from rows
            if len(rows) < batch:
                return
            after = (rows[-1]["received_at"], rows[-1]["id"])

    @guarded
    def _deliveries_after(self, received_at: float, delivery_id: str, batch: int) -> list[Row]:
        query = (select(deliveries)
                 .where((deliveries.c.received_at > received_at)
                        | ((deliveries.c.received_at == received_at) & (deliveries.c.id > delivery_id)))
                 .order_by(deliveries.c.received_at, deliveries.c.id).limit(batch))
        with self.db.read() as conn:
            return [dict(r) for r in conn.execute(query).mappings()]

    @guarded
    def count_deliveries_since(self, since: float) -> int:
        with self.db.read() as conn:
            return conn.execute(select(func.count()).select_from(deliveries)
                                .where(deliveries.c.received_at >= since)).scalar_one()

    @guarded
    def decisions(self, *, delivery_id: str | None = None, room_id: str | None = None) -> list[Row]:
        query = select(decisions).order_by(decisions.c.id)
        if delivery_id is not None:
            query = query.where(decisions.c.delivery_id == delivery_id)
        if room_id is not None:
            query = query.where(decisions.c.room_id == room_id)
        with self.db.read() as conn:
            return [dict(r) for r in conn.execute(query).mappings()]

    @guarded
    def room(self, room_id: str) -> Row | None:
        with self.db.read() as conn:
            row = conn.execute(select(rooms).where(rooms.c.room_id == room_id)).mappings().first()
            return dict(row) if row else None

    @guarded
    def timers(self, *, room_id: str | None = None, status: str | None = None) -> list[Row]:
        query = select(timers).order_by(timers.c.id)
        if room_id is not None:
            query = query.where(timers.c.room_id == room_id)
        if status is not None:
            query = query.where(timers.c.status == status)
        with self.db.read() as conn:
            return [dict(r) for r in conn.execute(query).mappings()]

    @guarded
    def room_story(self, room_id: str) -> dict[str, list[Row]]:
        """Everything recorded about one room, each kind oldest first (for `explain`)."""
        with self.db.read() as conn:
            story = {
                "deliveries": conn.execute(select(deliveries).where(deliveries.c.room_id == room_id)
                                           .order_by(deliveries.c.received_at, deliveries.c.id)).mappings(),
                "decisions": conn.execute(select(decisions).where(decisions.c.room_id == room_id)
                                          .order_by(decisions.c.id)).mappings(),
                "timers": conn.execute(select(timers).where(timers.c.room_id == room_id)
                                       .order_by(timers.c.id)).mappings(),
                "actions": conn.execute(select(actions).where(actions.c.room_id == room_id)
                                        .order_by(actions.c.id)).mappings(),
                "attempts": conn.execute(select(attempts).join(actions, actions.c.id == attempts.c.action_id)
                                         .where(actions.c.room_id == room_id)
                                         .order_by(attempts.c.id)).mappings(),
                "room": conn.execute(select(rooms).where(rooms.c.room_id == room_id)).mappings(),
            }
            return {kind: [dict(r) for r in rows] for kind, rows in story.items()}

    # -- retention -------------------------------------------------------------------

    def prune(self, before: float, batch: int = 500) -> int:
        """Delete deliveries received before `before`, with their decisions, in batches.

        Kept whatever their age: the deliveries that caused an action or a timer (and
        their decisions), the actions, their attempts, and rooms' state: the record
        of what was done, and why, outlives the traffic around it.
        """
        total = 0
        while True:
            removed = self._prune_batch(before, batch)
            total += removed
            if removed < batch:
                return total

    @guarded
    def _prune_batch(self, before: float, batch: int) -> int:
        with self.db.write() as conn:
            used = select(actions.c.delivery_id).union(select(timers.c.delivery_id))
            ids = list(conn.execute(
                select(deliveries.c.id).where(deliveries.c.received_at < before, deliveries.c.id.not_in(used))
                .order_by(deliveries.c.received_at).limit(batch)).scalars())
            if ids:
                conn.execute(delete(decisions).where(decisions.c.delivery_id.in_(ids)))
                conn.execute(delete(deliveries).where(deliveries.c.id.in_(ids)))
        return len(ids)
