"""The store: connections, transactions and schema; what it stores is in the mixins beside it.

    Store
    ├── IntakeMixin    (intake.py)   a delivery, the room's state, decisions, actions, timers: one transaction
    ├── TimersMixin    (timers.py)   firing due timers, re-checking them after a reload
    ├── OutboxMixin    (outbox.py)   claiming actions, recording attempts, re-driving dead ones
    ├── HistoryMixin   (history.py)  reads: deliveries, decisions, rooms, rules versions; retention
    └── DashboardMixin (dashboard.py) paged, indexed reads for the dashboard's pages

How it fails: a database that is locked past its timeout, unreachable or
restarting raises `StoreUnavailable` (the HTTP layer answers 503 and the sender
retries); nothing is half-written, since each method is one transaction.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Callable, Iterator

from sqlalchemy import Connection, Engine, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from . import migrations
from .driver import run
from .engine import READ_ONLY, make_engine, writer_queue
from .dashboard import DashboardMixin
from .batch import GroupCommit
from .guard import guarded
from .history import HistoryMixin
from .intake import IntakeMixin
from .outbox import OutboxMixin
from .statements import Statements
from .timers import TimersMixin


class Store(IntakeMixin, TimersMixin, OutboxMixin, HistoryMixin, DashboardMixin):
    def __init__(self, engine: Engine, clock: Callable[[], float] = time.time):
        self.engine = engine
        self.clock = clock
        self._insert = pg_insert if engine.dialect.name == "postgresql" else sqlite_insert
        self._sql = Statements(self._insert, engine.dialect)
        self._writers = writer_queue(engine)
        # Group commit where writers queue for one lock (SQLite). PostgreSQL runs concurrent
        # transactions side by side and groups their WAL flushes itself; batching there would
        # also make one delivery waiting on a locked room hold up the others in its batch.
        self._intake = GroupCommit(self._ingest_together) if engine.dialect.name == "sqlite" else None

    @classmethod
    def from_url(cls, url: str, clock: Callable[[], float] = time.time) -> "Store":
        return cls(make_engine(url), clock)

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        with self._writers.turn(), self.engine.connect() as conn, conn.begin():
            yield conn

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        with self.engine.connect() as conn:
            conn = conn.execution_options(**{READ_ONLY: True})
            with conn.begin():
                yield conn

    def _lock_room(self, conn: Connection, room_id: str) -> dict:
        """The room's stored state, locked until the transaction ends.

        The row is created first if need be, so two deliveries for a new room wait
        for each other instead of both starting from nothing (PostgreSQL); on
        SQLite the write transaction already serializes them.
        """
        run(conn, self._sql.insert_room, {"room_id": room_id, "state": "{}", "updated_at": self.clock()})
        (state,) = run(conn, self._sql.lock_room, {"room_id": room_id}).fetchone()
        return self._sql.lock_room.json(state)

    # -- schema and health -----------------------------------------------------

    @guarded
    def migrate(self) -> list[str]:
        with self._write() as conn:
            return migrations.apply(conn)

    @guarded
    def schema_version(self) -> int:
        with self._read() as conn:
            return migrations.current_version(conn)

    @guarded
    def ping(self) -> None:
        with self._read() as conn:
            conn.execute(text("SELECT 1"))
