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
import logging
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

log = logging.getLogger("roomwarden.store")

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
    _create_owner_only(Path(database))
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


def _create_owner_only(path: Path) -> None:
    """A new SQLite file, and each directory made for it, readable by the owner only: it holds
    every webhook body. SQLite gives the -wal and -shm files the main file's mode. Existing
    files and directories keep theirs (that is the operator's choice)."""
    for directory in reversed([path.parent, *path.parent.parents]):
        if not directory.exists():
            directory.mkdir(mode=0o700, exist_ok=True)
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))  # empty: SQLite's new database
    except FileExistsError:
        pass


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

    def __init__(self, path: str, timeout: float, sleep: Callable[[float], None] = time.sleep,
                 check: Callable[[], None] | None = None):
        self.path = path
        self.timeout = timeout
        self._sleep = sleep  # offload.real_sleep where the waiter runs on a thread of gevent's pool
        self.check = check  # before each turn: raises StoreUnavailable when writing would be lost

    def _open(self) -> int:
        if self.check is not None:
            self.check()
        try:
            return os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:  # its directory gone, or not ours to write: an outage, not a bug
            raise StoreUnavailable(f"store unavailable: cannot open {self.path}: {exc.strerror}") from None

    def probe(self) -> None:
        """What a turn needs, without taking one (for /readyz); StoreUnavailable if it would fail."""
        os.close(self._open())

    @contextmanager
    def turn(self):
        fd = self._open()  # one open file per turn: threads queue too
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


class SqliteFile:
    """The database file a store opened, checked before each write and by /readyz.

    Deleted (or replaced) while the service runs, the file lives on unlinked under the open
    connections: every write would still succeed, into a file the next start cannot see, and
    everything since would be lost without a word. So a store whose path no longer names the
    file it opened (device and inode; one stat, a few microseconds) refuses: 503, logged as an
    error once.
    """

    def __init__(self, path: str):
        self.path = path
        self._identity = self._stat()
        self._reported = False

    def _stat(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return st.st_dev, st.st_ino

    def check(self) -> None:
        now = self._stat()
        if self._identity is None:  # not there when the store was made: the first one seen is it
            self._identity = now
        if now is not None and now == self._identity:
            return
        what = "deleted" if now is None else "replaced by another file"
        message = (f"store unavailable: the database file {self.path} was {what} while in use; writes "
                   f"are refused so that none is lost. Restore the file (or restart on a new one, "
                   f"knowingly)")
        if not self._reported:
            self._reported = True
            log.error(message)
        raise StoreUnavailable(message)


class NoQueue:
    check = None

    def probe(self) -> None:
        pass

    @contextmanager
    def turn(self):
        yield


def writer_queue(engine: Engine):
    """Turns for write transactions: a lock file beside a SQLite database, each turn checking
    that the database file is still the one opened; nothing for PostgreSQL."""
    if engine.dialect.name != "sqlite":
        return NoQueue()
    return WriterQueue(engine.url.database + "-writers.lock", SQLITE_BUSY_TIMEOUT_MS / 1000,
                       check=SqliteFile(engine.url.database).check)


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
