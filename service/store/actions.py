"""Actions as the operator sees them: read, counted, and re-driven when dead.

The worker's side of the outbox (claims, attempts) is outbox.py; this side cannot claim.
"""

from __future__ import annotations

from sqlalchemy import func, select, update

from .database import Database
from .guard import guarded
from .records import Row
from .tables import actions, attempts
from ..outcomes import ActionStatus, TimerStatus


class Actions:
    def __init__(self, db: Database):
        self.db = db

    @guarded
    def redrive(self, action_ids: list[int] | None = None) -> list[int]:
        """Make dead actions pending again, due now, with a fresh count of attempts.

        `None` re-drives every dead action. Returns the ids re-driven; actions
        that are not dead are left as they are.
        """
        now = self.db.clock()
        with self.db.write() as conn:
            query = select(actions.c.id).where(actions.c.status == ActionStatus.DEAD)
            if action_ids is not None:
                query = query.where(actions.c.id.in_(action_ids))
            ids = list(conn.execute(query.order_by(actions.c.id)).scalars())
            if ids:
                conn.execute(update(actions).where(actions.c.id.in_(ids)).values(
                    status=ActionStatus.PENDING, attempts=0, due_at=now, lease_owner=None, lease_until=None,
                    updated_at=now))
        return ids

    @guarded
    def action(self, action_id: int) -> Row | None:
        with self.db.read() as conn:
            row = conn.execute(select(actions).where(actions.c.id == action_id)).mappings().first()
            return dict(row) if row else None

    @guarded
    def actions(self, *, status: str | None = None, room_id: str | None = None, limit: int = 100,
                newest_first: bool = False, before: int | None = None) -> list[Row]:
        """Actions by id; `newest_first` with `before` (an action id) pages back from the newest."""
        order = actions.c.id.desc() if newest_first else actions.c.id
        query = select(actions).order_by(order).limit(limit)
        if status is not None:
            query = query.where(actions.c.status == status)
        if room_id is not None:
            query = query.where(actions.c.room_id == room_id)
        if before is not None:
            query = query.where(actions.c.id < before)
        with self.db.read() as conn:
            return [dict(r) for r in conn.execute(query).mappings()]

    @guarded
    def attempts(self, action_id: int) -> list[Row]:
        with self.db.read() as conn:
            return [dict(r) for r in conn.execute(
                select(attempts).where(attempts.c.action_id == action_id).order_by(attempts.c.id)
            ).mappings()]

    @guarded
    def outbox_stats(self, now: float) -> dict:
        """For the metrics: actions due, the age of the oldest due one, pending timers, by status."""
        from .tables import timers

        with self.db.read() as conn:
            due = conn.execute(select(func.count(), func.min(actions.c.due_at)).where(
                actions.c.status == ActionStatus.PENDING, actions.c.due_at <= now)).one()
            pending_timers = conn.execute(select(func.count()).select_from(timers)
                                          .where(timers.c.status == TimerStatus.PENDING)).scalar_one()
            by_status = {status: n for status, n in conn.execute(
                select(actions.c.status, func.count()).group_by(actions.c.status))}
        return {"due": due[0], "oldest_due_age": max(0.0, now - due[1]) if due[1] is not None else 0.0,
                "pending_timers": pending_timers, "by_status": by_status}

    @guarded
    def counts(self) -> dict[str, int]:
        """Actions by status."""
        with self.db.read() as conn:
            return {status: n for status, n in conn.execute(
                select(actions.c.status, func.count()).group_by(actions.c.status))}
