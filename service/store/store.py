"""The store: connections, transactions and schema; what it stores is in the mixins beside it.

    Store
    ├── InboxMixin     (inbox.py)    the inbox: the request appends, the decider takes out in order
    ├── IntakeMixin    (intake.py)   a decided delivery, the room's state, decisions, actions, timers
    ├── TimersMixin    (timers.py)   firing due timers, re-checking them after a reload
    ├── OutboxMixin    (outbox.py)   claiming actions, recording attempts, re-driving dead ones
    ├── HistoryMixin   (history.py)  reads: deliveries, decisions, rooms, rules versions; retention
    ├── DashboardMixin (dashboard.py) paged, indexed reads for the dashboard's pages
    ├── WorkersMixin   (workers.py)  each worker's circuit breaker, as it last reported it
    └── SweepsMixin    (sweeps.py)   the sweep's rounds, and the rooms it no longer sweeps

How it fails: a database that is locked past its timeout, unreachable or
restarting raises `StoreUnavailable` (the HTTP layer answers 503); nothing is
half-written, since each method is one transaction.
"""

from __future__ import annotations

import json
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from sqlalchemy import Connection, Engine, select, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from . import migrations
from .driver import Compiled, run
from .database import READ_ONLY, WriterQueue, make_engine, writer_queue
from .dashboard import DashboardMixin
from .batch import GroupCommit
from .guard import guarded
from .history import HistoryMixin
from .inbox import APPEND_PG, InboxMixin, SqliteAppender
from .intake import IntakeMixin
from .offload import real_sleep
from .outbox import OutboxMixin
from .statements import Statements
from .timers import TimersMixin
from .sweeps import SweepsMixin
from .workers import WorkersMixin


class Store(InboxMixin, IntakeMixin, TimersMixin, OutboxMixin, HistoryMixin, DashboardMixin, WorkersMixin,
            SweepsMixin):
    def __init__(self, engine: Engine, clock: Callable[[], float] = time.time):
        self.engine = engine
        self.clock = clock
        self._insert = pg_insert if engine.dialect.name == "postgresql" else sqlite_insert
        self._sql = Statements(self._insert, engine.dialect)
        self._writers = writer_queue(engine)
        self._append_pg = Compiled(APPEND_PG, engine.dialect)
        # Group commit of inbox appends: the requests of a process that append at the same moment
        # share one transaction. On SQLite that is one turn of the write lock and one fsync; on
        # PostgreSQL, which flushes concurrent commits together itself, it saves the round trips
        # (each one a wait on gevent's loop) of a transaction per request.
        self._sqlite_appender = None
        self._appender = GroupCommit(self._append_rows)
        self._listener = None  # PostgreSQL: the decider's LISTEN connection, made when first waited on
        self.identity_problem: str | None = None  # a new SQLite store where another was (check_identity)
        # PostgreSQL: one-statement reads run outside a transaction, saving BEGIN and COMMIT (two
        # round trips and most of the cost of a worker's look at what is due).
        self._autocommit = (engine.execution_options(isolation_level="AUTOCOMMIT")
                            if engine.dialect.name == "postgresql" else None)
        if engine.dialect.name == "sqlite":
            self._sqlite_appender = SqliteAppender(engine.url.database, WriterQueue(
                self._writers.path, self._writers.timeout, sleep=real_sleep, check=self._writers.check))

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

    def _peek(self):
        """For one read statement: outside a transaction on PostgreSQL (a single statement sees
        one snapshot anyway); a read transaction on SQLite, where BEGIN costs no round trip."""
        return self._one_statement(self._read)

    def _write_one(self):
        """For one write statement, atomic by itself: outside a transaction on PostgreSQL (no BEGIN
        and COMMIT round trips); a write transaction on SQLite (BEGIN IMMEDIATE, see database.py)."""
        return self._one_statement(self._write)

    @contextmanager
    def _one_statement(self, otherwise) -> Iterator[Connection]:
        if self._autocommit is None:
            with otherwise() as conn:
                yield conn
            return
        with self._autocommit.connect() as conn:
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
    def created_at(self) -> float | None:
        """When this store was created (its first migration step): its identity, as far as a
        marker beside a SQLite file needs one."""
        from .tables import schema_migrations

        with self._read() as conn:
            return conn.execute(select(schema_migrations.c.applied_at)
                                .where(schema_migrations.c.version == 1)).scalar()

    def check_identity(self) -> str | None:
        """SQLite: compare the store with the marker beside its file (`<file>.store`), written at
        its first start. None when they agree, or on a first start (the marker is written then);
        otherwise what is wrong: the file is a new store where another one was."""
        if self.engine.dialect.name != "sqlite":
            return None
        marker = Path(self.engine.url.database + ".store")
        created = self.created_at()
        mine = json.dumps({"created_at": created})
        try:
            fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            try:
                was = json.loads(marker.read_text()).get("created_at")
            except (OSError, ValueError, AttributeError):
                was = None
            if was == created:
                return None
            when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(was)) if isinstance(was, (int, float)) else "?"
            return (f"{self.engine.url.database} is a new store, but the store created {when} was here "
                    f"({marker} says so): its deliveries, actions and timers are not in this one. Restore "
                    f"the file; or, if starting afresh is meant, delete {marker}")
        with os.fdopen(fd, "w") as out:
            out.write(mine)
        return None

    @guarded
    def schema_version(self) -> int:
        with self._read() as conn:
            return migrations.current_version(conn)

    @guarded
    def ping(self) -> None:
        self._writers.probe()  # SQLite: still the file it opened, and its writers' lock file can be had
        with self._read() as conn:
            conn.execute(text("SELECT 1"))
