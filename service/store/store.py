"""The store: every read and write the service makes, as methods. All SQL lives here.

How it fails: a database that is locked past the busy timeout, unreachable or
restarting raises `StoreUnavailable` (the HTTP layer answers 503 and the sender
retries); nothing is half-written, since each method is one transaction.
"""

from __future__ import annotations

import functools
import time
from contextlib import contextmanager
from typing import Callable, Iterator

from sqlalchemy import Connection, Engine, and_, func, or_, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from ..errors import StoreUnavailable
from . import migrations
from .engine import READ_ONLY, make_engine
from .records import (AttemptRecord, ClaimedAction, DecisionOutcome, NewDecision, NewDelivery,
                      Receipt, Row)
from .tables import actions, attempts, decisions, deliveries

ACTIVE = "pending"  # the one status the worker claims


def _guarded(method: Callable) -> Callable:
    """Turn the database's outages into StoreUnavailable; let bugs be bugs."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except (OperationalError, PoolTimeout) as exc:
            raise StoreUnavailable(f"store unavailable: {_reason(exc)}") from exc
        except DBAPIError as exc:
            if exc.connection_invalidated:
                raise StoreUnavailable(f"store unavailable: {_reason(exc)}") from exc
            raise

    return wrapper


def _reason(exc: Exception) -> str:
    original = getattr(exc, "orig", None) or exc
    return str(original).strip().splitlines()[0][:200] if str(original).strip() else type(original).__name__


class Store:
    def __init__(self, engine: Engine, clock: Callable[[], float] = time.time):
        self.engine = engine
        self.clock = clock
        self._insert = pg_insert if engine.dialect.name == "postgresql" else sqlite_insert

    @classmethod
    def from_url(cls, url: str, clock: Callable[[], float] = time.time) -> "Store":
        return cls(make_engine(url), clock)

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        with self.engine.connect() as conn, conn.begin():
            yield conn

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        with self.engine.connect() as conn:
            conn = conn.execution_options(**{READ_ONLY: True})
            with conn.begin():
                yield conn

    # -- schema and health -----------------------------------------------------

    @_guarded
    def migrate(self) -> list[str]:
        with self._write() as conn:
            return migrations.apply(conn)

    @_guarded
    def schema_version(self) -> int:
        with self._read() as conn:
            return migrations.current_version(conn)

    @_guarded
    def ping(self) -> None:
        with self._read() as conn:
            conn.execute(text("SELECT 1"))

    # -- deliveries and decisions -------------------------------------------------

    @_guarded
    def record_delivery(self, delivery: NewDelivery, new_decisions: list[NewDecision],
                        *, acts: bool) -> Receipt:
        """Store a delivery, its decisions and the actions they cause, in one transaction.

        An action is inserted only if its key is new; otherwise the decision is
        recorded as a duplicate. With `acts` off (dry run, or verification off),
        actions are written with status `dry-run` and never claimed.
        """
        outcomes = []
        with self._write() as conn:
            conn.execute(deliveries.insert().values(**delivery.__dict__))
            for decision in new_decisions:
                now = delivery.received_at
                status = ACTIVE if acts else "dry-run"
                inserted = conn.execute(
                    self._insert(actions).values(
                        key=decision.key, kind=decision.action, room_id=decision.room_id,
                        session_id=decision.session_id, rule=decision.rule,
                        delivery_id=delivery.id, status=status, attempts=0, due_at=now,
                        created_at=now, updated_at=now,
                    ).on_conflict_do_nothing(index_elements=["key"]).returning(actions.c.id)
                ).scalar()
                if inserted is not None:
                    action_id, outcome = inserted, ("scheduled" if acts else "dry-run")
                else:
                    action_id = conn.execute(
                        select(actions.c.id).where(actions.c.key == decision.key)).scalar_one()
                    outcome = "duplicate"
                conn.execute(decisions.insert().values(
                    delivery_id=delivery.id, created_at=now, rule=decision.rule,
                    action=decision.action, room_id=decision.room_id,
                    session_id=decision.session_id, action_key=decision.key, outcome=outcome,
                    action_id=action_id, trace=decision.trace,
                ))
                outcomes.append(DecisionOutcome(decision.rule, decision.action, outcome, action_id))
        return Receipt(delivery.id, tuple(outcomes))

    @_guarded
    def delivery(self, delivery_id: str) -> Row | None:
        with self._read() as conn:
            row = conn.execute(select(deliveries).where(deliveries.c.id == delivery_id)).mappings().first()
            return dict(row) if row else None

    @_guarded
    def deliveries(self, *, room_id: str | None = None, limit: int = 100) -> list[Row]:
        query = select(deliveries).order_by(deliveries.c.received_at.desc()).limit(limit)
        if room_id is not None:
            query = query.where(deliveries.c.room_id == room_id)
        with self._read() as conn:
            return [dict(r) for r in conn.execute(query).mappings()]

    @_guarded
    def decisions(self, *, delivery_id: str | None = None, room_id: str | None = None) -> list[Row]:
        query = select(decisions).order_by(decisions.c.id)
        if delivery_id is not None:
            query = query.where(decisions.c.delivery_id == delivery_id)
        if room_id is not None:
            query = query.where(decisions.c.room_id == room_id)
        with self._read() as conn:
            return [dict(r) for r in conn.execute(query).mappings()]

    # -- the outbox -----------------------------------------------------------------

    def _claimable(self, now: float):
        return and_(actions.c.status == ACTIVE, actions.c.due_at <= now,
                    or_(actions.c.lease_until.is_(None), actions.c.lease_until < now))

    @_guarded
    def claim(self, worker: str, lease_seconds: float, max_attempts: int) -> ClaimedAction | None:
        """Lease the most overdue action to `worker`, or return None if none is due.

        A lease that runs out (its worker died) makes the action claimable again.
        An action whose claims keep ending without a recorded result (it kills
        its worker, say) is marked dead after `max_attempts` claims.
        """
        now = self.clock()
        with self._write() as conn:
            while True:
                row = conn.execute(
                    select(actions.c.id, actions.c.attempts).where(self._claimable(now))
                    .order_by(actions.c.due_at, actions.c.id).limit(1)
                    .with_for_update(skip_locked=True)
                ).first()
                if row is None:
                    return None
                if row.attempts < max_attempts:
                    break
                conn.execute(update(actions).where(actions.c.id == row.id).values(
                    status="dead", lease_owner=None, lease_until=None, updated_at=now,
                    last_error=f"gave up: {row.attempts} claims ended without a recorded result"))
            claimed = conn.execute(
                update(actions).where(actions.c.id == row.id, self._claimable(now))
                .values(lease_owner=worker, lease_until=now + lease_seconds,
                        attempts=actions.c.attempts + 1, updated_at=now)
                .returning(actions)
            ).mappings().first()
        if claimed is None:  # lost a race on SQLite, where SKIP LOCKED does not exist
            return None
        return ClaimedAction(
            id=claimed["id"], key=claimed["key"], kind=claimed["kind"], room_id=claimed["room_id"],
            session_id=claimed["session_id"], rule=claimed["rule"], attempts=claimed["attempts"],
            lease_owner=worker, lease_until=claimed["lease_until"])

    @_guarded
    def finish(self, claim: ClaimedAction, attempt: AttemptRecord, worker: str) -> bool:
        """Record an attempt and move its action on, in one transaction.

        The attempt is always recorded: the call was made. The action moves only
        if `worker` still holds its lease; False means the lease had run out and
        another worker may have the action now.
        """
        now = self.clock()
        status = {"done": "done", "failed": "failed", "dead": "dead", "retry": ACTIVE}[attempt.outcome]
        with self._write() as conn:
            conn.execute(attempts.insert().values(
                action_id=claim.id, number=claim.attempts, worker=worker,
                started_at=attempt.started_at, latency_ms=attempt.latency_ms,
                http_status=attempt.http_status, outcome=attempt.outcome, error=attempt.error,
                next_due_at=attempt.next_due_at))
            values = dict(status=status, lease_owner=None, lease_until=None, updated_at=now,
                          last_status=attempt.http_status, last_error=attempt.error)
            if attempt.next_due_at is not None:
                values["due_at"] = attempt.next_due_at
            moved = conn.execute(
                update(actions).where(actions.c.id == claim.id, actions.c.lease_owner == worker,
                                      actions.c.status == ACTIVE).values(**values)
            ).rowcount
        return moved == 1

    @_guarded
    def release(self, claim: ClaimedAction, worker: str) -> None:
        """Give a claimed action back without an attempt (on shutdown, say)."""
        with self._write() as conn:
            conn.execute(update(actions).where(
                actions.c.id == claim.id, actions.c.lease_owner == worker, actions.c.status == ACTIVE,
            ).values(lease_owner=None, lease_until=None, attempts=actions.c.attempts - 1,
                     updated_at=self.clock()))

    @_guarded
    def action(self, action_id: int) -> Row | None:
        with self._read() as conn:
            row = conn.execute(select(actions).where(actions.c.id == action_id)).mappings().first()
            return dict(row) if row else None

    @_guarded
    def actions(self, *, status: str | None = None, room_id: str | None = None,
                limit: int = 100) -> list[Row]:
        query = select(actions).order_by(actions.c.id).limit(limit)
        if status is not None:
            query = query.where(actions.c.status == status)
        if room_id is not None:
            query = query.where(actions.c.room_id == room_id)
        with self._read() as conn:
            return [dict(r) for r in conn.execute(query).mappings()]

    @_guarded
    def attempts(self, action_id: int) -> list[Row]:
        with self._read() as conn:
            return [dict(r) for r in conn.execute(
                select(attempts).where(attempts.c.action_id == action_id).order_by(attempts.c.id)
            ).mappings()]

    @_guarded
    def counts(self) -> dict[str, int]:
        """Actions by status."""
        with self._read() as conn:
            return {status: n for status, n in conn.execute(
                select(actions.c.status, func.count()).group_by(actions.c.status))}
