"""The store: connections, transactions and schema; what it stores is in the mixins beside it.

    Store
    ├── InboxMixin     (inbox.py)    the inbox: the request appends, the decider takes out in order
    ├── IntakeMixin    (intake.py)   a decided delivery, the room's state, decisions, actions, timers
    ├── TimersMixin    (timers.py)   firing due timers, re-checking them after a reload
    ├── OutboxMixin    (outbox.py)   claiming actions, recording attempts, re-driving dead ones
    ├── HistoryMixin   (history.py)  reads: deliveries, decisions, rooms, rules versions; retention
    └── DashboardMixin (dashboard.py) paged, indexed reads for the dashboard's pages

How it fails: a database that is locked past its timeout, unreachable or
restarting raises `StoreUnavailable` (the HTTP layer answers 503); nothing is
half-written, since each method is one transaction.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Callable, Iterator

from sqlalchemy import Connection, Engine, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from . import migrations
from .driver import Compiled, run
from .engine import READ_ONLY, WriterQueue, make_engine, writer_queue
from .dashboard import DashboardMixin
from .batch import GroupCommit
from .guard import guarded
from .history import HistoryMixin
from .inbox import COLUMNS as INBOX_COLUMNS
from .inbox import InboxMixin, SqliteAppender
from .intake import IntakeMixin
from .offload import real_sleep
from .outbox import OutboxMixin
from .statements import Statements
from .tables import inbox
from .timers import TimersMixin


class Store(InboxMixin, IntakeMixin, TimersMixin, OutboxMixin, HistoryMixin, DashboardMixin):
    def __init__(self, engine: Engine, clock: Callable[[], float] = time.time):
        self.engine = engine
        self.clock = clock
        self._insert = pg_insert if engine.dialect.name == "postgresql" else sqlite_insert
        self._sql = Statements(self._insert, engine.dialect)
        self._writers = writer_queue(engine)
        self._insert_inbox = Compiled(inbox.insert(), engine.dialect, INBOX_COLUMNS)
        self._notify_inbox = Compiled(text("SELECT pg_notify('roomwarden_inbox', '')"), engine.dialect)
        # Group commit of inbox appends where writers queue for one lock (SQLite). PostgreSQL runs
        # concurrent transactions side by side and groups their WAL flushes itself.
        self._sqlite_appender = None
        self._appender = None
        self._listener = None  # PostgreSQL: the decider's LISTEN connection, made when first waited on
        if engine.dialect.name == "sqlite":
            self._sqlite_appender = SqliteAppender(engine.url.database, WriterQueue(
                self._writers.path, self._writers.timeout, sleep=real_sleep))
            self._appender = GroupCommit(self._sqlite_appender.write)

    @classmethod
    def from_url(cls, url: str, clock: Callable[[], float] = time.time) -> "Store":
        return cls(make_engine(url), clock)

    def close(self) -> None:
        if self._sqlite_appender is not None:
            self._sqlite_appender.close()
        if self._listener is not None:
            self._listener.close()
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
