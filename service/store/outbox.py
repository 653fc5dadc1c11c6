"""The action outbox, the worker's side: claiming due actions under a lease, recording attempts.

The operator's side (reading actions, re-driving dead ones) is actions.py."""

from __future__ import annotations

import functools

from sqlalchemy import and_, bindparam, func, or_, select, text, update

from .database import Database
from .guard import guarded
from .intake import RoomWrites
from .records import AttemptRecord, ClaimedAction
from .tables import actions, attempts, timers
from ..outcomes import STATUS_AFTER, ActionStatus, Attempt, TimerStatus

# pg_advisory_xact_lock key serializing rate-limited claims ("rw-rate" in ASCII).
RATE_LIMIT_LOCK = int.from_bytes(b"rw-rate", "big")


def _due_work():
    now = bindparam("p_now")
    action = select(func.min(actions.c.due_at)).where(
        actions.c.status == ActionStatus.PENDING,
        or_(actions.c.lease_until.is_(None), actions.c.lease_until < now)).scalar_subquery()
    timer = select(func.min(timers.c.due_at)).where(timers.c.status == TimerStatus.PENDING).scalar_subquery()
    return select(action, timer)


def _claim(without_check: str | None = None):
    """One statement: the most overdue claimable action (PostgreSQL: skipping any another claimer
    has locked), leased to a worker; with `without_check`, none whose confirm is that check."""
    now = bindparam("p_now")
    claimable = and_(actions.c.status == ActionStatus.PENDING, actions.c.due_at <= now,
                     or_(actions.c.lease_until.is_(None), actions.c.lease_until < now))
    if without_check is not None:
        claimable = and_(claimable, or_(actions.c.confirm.is_(None), actions.c.confirm != without_check))
    oldest = (select(actions.c.id).where(claimable).order_by(actions.c.due_at, actions.c.id).limit(1)
              .with_for_update(skip_locked=True).scalar_subquery())
    return (update(actions).where(actions.c.id == oldest, claimable)
            .values(lease_owner=bindparam("p_worker"), lease_until=bindparam("p_lease_until"),
                    attempts=actions.c.attempts + 1, updated_at=now)
            .returning(actions))


@functools.cache
def _move_action(frees_key: bool, moves_due: bool):
    """An attempt's action moved on, if the worker still holds its lease. (Parameters are named
    apart from the columns: SQLAlchemy would read a column's name as a value to SET.)"""
    values = dict(status=bindparam("p_status"), lease_owner=None, lease_until=None, updated_at=bindparam("p_now"),
                  last_status=bindparam("p_last_status"), last_error=bindparam("p_last_error"))
    if frees_key:
        values["key"] = bindparam("p_key")
    if moves_due:
        values["due_at"] = bindparam("p_due_at")
    return update(actions).where(actions.c.id == bindparam("p_id"), actions.c.lease_owner == bindparam("p_worker"),
                                 actions.c.status == ActionStatus.PENDING).values(**values)


# Built once: building a statement in SQLAlchemy costs more than running one of these (a worker's
# look at what is due: 1.9 ms built each time, 0.6 ms built once, on PostgreSQL).
_DUE_WORK = _due_work()
_CLAIM = _claim()
PACED_CHECK = "no-live-session"  # the confirm check `checks_per_minute` paces (a sweep's)
_CLAIM_UNCHECKED = _claim(PACED_CHECK)
_RECORD_ATTEMPT = attempts.insert()


class Outbox:
    """The worker's side of the action outbox: what is due, claims under a lease, attempts."""

    def __init__(self, db: Database, rooms: RoomWrites):
        self.db = db
        self.rooms = rooms

    @guarded
    def claim(self, worker: str, lease_seconds: float, max_attempts: int,
              per_minute: int | None = None, checks_per_minute: int | None = None) -> ClaimedAction | None:
        """Lease the most overdue action to `worker`, or return None if none is due.

        A lease that runs out (its worker died) makes the action claimable again.
        An action whose claims keep ending without a recorded result (it kills
        its worker, say) is marked dead after `max_attempts` claims. With
        `per_minute`, no claim is made while that many attempts started in the
        last minute or are in flight: excess actions wait, none is dropped. With
        `checks_per_minute`, the same for actions whose confirm is PACED_CHECK (a sweep's
        `no-live-session`: each claim of one is a call to VideoSDK's sessions list), while
        other actions are claimed as usual.
        """
        now = self.db.clock()
        limited = per_minute is not None or checks_per_minute is not None
        statement = _CLAIM
        # Without a rate limit, a claim is one statement (two only to mark an action dead).
        with self.db.write() if limited else self.db.write_one() as conn:
            if limited:
                if conn.dialect.name == "postgresql":  # claimers count the load one at a time
                    conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": RATE_LIMIT_LOCK})
                if per_minute is not None and self._recent_load(conn, now) >= per_minute:
                    return None
                if checks_per_minute is not None and self._recent_load(conn, now, PACED_CHECK) >= checks_per_minute:
                    statement = _CLAIM_UNCHECKED
            while True:
                claimed = conn.execute(statement, {"p_now": now, "p_worker": worker,
                                                "p_lease_until": now + lease_seconds}).mappings().first()
                if claimed is None or claimed["attempts"] <= max_attempts:
                    break
                # Its claims kept ending without a recorded result (it kills its worker, say).
                conn.execute(update(actions).where(actions.c.id == claimed["id"]).values(
                    status=ActionStatus.DEAD, lease_owner=None, lease_until=None, updated_at=now,
                    attempts=claimed["attempts"] - 1,
                    last_error=f"gave up: {claimed['attempts'] - 1} claims ended without a recorded result"))
        if claimed is None:  # none due
            return None
        return ClaimedAction(
            id=claimed["id"], key=claimed["key"], kind=claimed["kind"], room_id=claimed["room_id"],
            session_id=claimed["session_id"], rule=claimed["rule"], attempts=claimed["attempts"],
            lease_owner=worker, lease_until=claimed["lease_until"], confirm=claimed["confirm"])

    def _recent_load(self, conn, now: float, confirm: str | None = None) -> int:
        """Attempts started in the last minute and actions in flight (only those whose confirm
        is `confirm`, when given)."""
        recent = select(func.count()).select_from(attempts).where(attempts.c.started_at > now - 60)
        in_flight = select(func.count()).select_from(actions).where(actions.c.status == ActionStatus.PENDING,
                                                                    actions.c.lease_until >= now)
        if confirm is not None:
            recent = recent.join(actions, actions.c.id == attempts.c.action_id).where(actions.c.confirm == confirm)
            in_flight = in_flight.where(actions.c.confirm == confirm)
        return conn.execute(recent).scalar_one() + conn.execute(in_flight).scalar_one()

    @guarded
    def finish(self, claim: ClaimedAction, attempt: AttemptRecord, worker: str) -> bool:
        """Record an attempt and move its action on, in one transaction.

        The attempt is always recorded: the call was made. The action moves only
        if `worker` still holds its lease; False means the lease had run out and
        another worker may have the action now.
        """
        now = self.db.clock()
        with self.db.write() as conn:
            conn.execute(_RECORD_ATTEMPT, dict(
                # The claim's number: a claim lost with its worker leaves a gap; a re-drive starts again at 1.
                action_id=claim.id, number=claim.attempts, worker=worker,
                started_at=attempt.started_at, latency_ms=attempt.latency_ms,
                http_status=attempt.http_status, outcome=attempt.outcome, error=attempt.error,
                note=attempt.note, next_due_at=attempt.next_due_at, answer=attempt.answer,
                doubt=attempt.doubt))
            # "cancelled" is "not now" (someone was there), not "never": the key is freed, so that
            # the rule can act for this room and session when its condition holds again.
            frees_key, moves_due = attempt.outcome == Attempt.CANCELLED, attempt.next_due_at is not None
            values = dict(p_id=claim.id, p_worker=worker, p_status=STATUS_AFTER[attempt.outcome], p_now=now,
                          p_last_status=attempt.http_status, p_last_error=attempt.error)
            if frees_key:
                values["p_key"] = f"{claim.key}#cancelled-{claim.id}"
            if moves_due:
                values["p_due_at"] = attempt.next_due_at
            moved = conn.execute(_move_action(frees_key, moves_due), values).rowcount
            if moved and attempt.closes_room:
                self.rooms.close_room(conn, claim.room_id, now)
        return moved == 1

    @guarded
    def release(self, claim: ClaimedAction, worker: str) -> None:
        """Give a claimed action back without an attempt (on shutdown, say)."""
        with self.db.write() as conn:
            conn.execute(update(actions).where(
                actions.c.id == claim.id, actions.c.lease_owner == worker, actions.c.status == ActionStatus.PENDING,
            ).values(lease_owner=None, lease_until=None, attempts=actions.c.attempts - 1,
                     updated_at=self.db.clock()))

    @guarded
    def due_work(self, now: float) -> tuple[float | None, float | None]:
        """When the next claimable action and the next pending timer are due (None: none).

        One read statement, built once, so a worker can look this often without taking SQLite's
        write lock or opening a transaction on PostgreSQL.
        """
        with self.db.peek() as conn:
            action_due, timer_due = conn.execute(_DUE_WORK, {"p_now": now}).one()
        return action_due, timer_due
