"""Make a SQLAlchemy engine from `DATABASE_URL`, with the settings each database needs.

SQLite: WAL so readers never wait for the writer; `synchronous=FULL` so a
committed delivery survives a power cut, not only a killed process; a busy
timeout so concurrent writers queue instead of failing; and write transactions
opened with BEGIN IMMEDIATE, because SQLite's default deferred BEGIN upgrades
to a write lock mid-transaction and fails with "database is locked" when two
processes race. PostgreSQL: psycopg 3, pre-ping so a restarted server costs one
failed request at most, and a lock timeout so a held lock fails fast too.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from ..errors import ConfigError, StoreUnavailable

SQLITE_BUSY_TIMEOUT_MS = 5000
POSTGRES_LOCK_TIMEOUT_MS = 5000  # the same promise on PostgreSQL: a held lock is an outage, not a hang
READ_ONLY = "roomwarden_read_only"  # execution option: a transaction that never writes


def make_engine(url: str) -> Engine:
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ConfigError(f"DATABASE_URL is not a database URL: {url.split('@')[-1]!r}") from None
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        return _sqlite(parsed)
    if backend == "postgresql":
        if parsed.drivername == "postgresql":  # plain postgresql:// means psycopg 3 here
            parsed = parsed.set(drivername="postgresql+psycopg")
        return create_engine(parsed, pool_pre_ping=True, pool_size=5, max_overflow=5, pool_timeout=5,
                             connect_args={"connect_timeout": 5,
                                           "options": f"-c lock_timeout={POSTGRES_LOCK_TIMEOUT_MS}"})
    raise ConfigError(f"DATABASE_URL: unsupported database '{backend}'; use sqlite:/// or postgresql://")


def missing_sqlite_file(url: str) -> str | None:
    """The path of a SQLite database that does not exist yet; None for one that does, or for PostgreSQL."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database and not Path(parsed.database).exists():
        return parsed.database
    return None


def _sqlite(url) -> Engine:
    database = url.database
    if not database or database == ":memory:":
        raise ConfigError("DATABASE_URL: an in-memory SQLite database cannot be shared by processes; "
                          "give a file path, such as sqlite:///instance/roomwarden.db")
    Path(database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000,
                                              "check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):
        configure_sqlite(dbapi_conn)

    @event.listens_for(engine, "begin")
    def _on_begin(conn):
        read_only = conn.get_execution_options().get(READ_ONLY, False)
        conn.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")

    return engine


def configure_sqlite(dbapi_conn: sqlite3.Connection) -> None:
    """What every connection to the SQLite file needs (see the module's docstring)."""
    dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
    cursor = dbapi_conn.cursor()
    cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
    _enable_wal(cursor)
    cursor.execute("PRAGMA synchronous = FULL")
    cursor.execute("PRAGMA foreign_keys = ON")
    cursor.close()


def sqlite_connect(database: str) -> sqlite3.Connection:
    """A plain DB-API connection to the store's SQLite file, configured as the engine's are."""
    conn = sqlite3.connect(database, timeout=SQLITE_BUSY_TIMEOUT_MS / 1000, check_same_thread=False)
    configure_sqlite(conn)
    return conn


class WriterQueue:
    """SQLite writers take turns through a lock file.

    Without it, processes racing for SQLite's write lock retry on SQLite's own
    sleeping back-off (1, 2, 5 ... 100 ms), so one unlucky request can wait
    hundreds of milliseconds while others get through. Here a waiter tries a
    non-blocking flock every half millisecond at first, backing off to 1 ms, so
    a freed lock is taken within a millisecond; there is no strict first-come
    order. With group commit (batch.py) one request thread a process waits here
    at a time (besides the worker's own writes), so the polling costs little.
    Past the busy timeout the store is reported unavailable (503).
    """

    def __init__(self, path: str, timeout: float, sleep: Callable[[float], None] = time.sleep):
        self.path = path
        self.timeout = timeout
        self._sleep = sleep  # offload.real_sleep where the waiter runs on a thread of gevent's pool

    @contextmanager
    def turn(self):
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)  # one open file per turn: threads queue too
        try:
            deadline, pause = time.monotonic() + self.timeout, 0.0005
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise StoreUnavailable("store unavailable: database is locked") from None
                    self._sleep(pause)
                    pause = min(pause * 1.5, 0.001)
            yield
        finally:
            os.close(fd)  # closing the file releases the lock


class NoQueue:
    @contextmanager
    def turn(self):
        yield


def writer_queue(engine: Engine):
    """Turns for write transactions: a lock file beside a SQLite database, nothing for PostgreSQL."""
    if engine.dialect.name != "sqlite":
        return NoQueue()
    return WriterQueue(engine.url.database + "-writers.lock", SQLITE_BUSY_TIMEOUT_MS / 1000)


def _enable_wal(cursor) -> None:
    """Switch the file to WAL (it stays so). SQLite does not apply its busy timeout to that
    switch, so a file another process is writing answers "locked" at once: wait here instead."""
    if cursor.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal":
        return
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            cursor.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)
