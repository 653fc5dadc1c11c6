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
import json
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from sqlalchemy import Connection, Engine, create_engine, event, select, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from ..errors import ConfigError, StoreUnavailable
from . import migrations
from .driver import run
from .guard import guarded
from .statements import Statements

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


class Database:
    """One database: its engine, its clock, its transactions, its schema and its health.

    The repositories (store.py) are built over one of these and reach the database only
    through it: `write()` for a write transaction (SQLite: a turn of the writers' queue and
    BEGIN IMMEDIATE), `read()` for a read-only one, `peek()` and `write_one()` for a single
    statement (outside a transaction on PostgreSQL, saving two round trips), `lock_room()`
    for a room's state inside a write transaction.
    """

    def __init__(self, engine: Engine, clock: Callable[[], float] = time.time):
        self.engine = engine
        self.clock = clock
        self.dialect = engine.dialect.name
        self.insert = pg_insert if self.dialect == "postgresql" else sqlite_insert  # for ON CONFLICT
        self.sql = Statements(self.insert, engine.dialect)
        self.writers = writer_queue(engine)
        self.identity_problem: str | None = None  # a new SQLite store where another was (check_identity)
        # PostgreSQL: one-statement reads run outside a transaction, saving BEGIN and COMMIT (two
        # round trips and most of the cost of a worker's look at what is due).
        self._autocommit = (engine.execution_options(isolation_level="AUTOCOMMIT")
                            if self.dialect == "postgresql" else None)

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def write(self) -> Iterator[Connection]:
        with self.writers.turn(), self.engine.connect() as conn, conn.begin():
            yield conn

    @contextmanager
    def read(self) -> Iterator[Connection]:
        with self.engine.connect() as conn:
            conn = conn.execution_options(**{READ_ONLY: True})
            with conn.begin():
                yield conn

    def peek(self):
        """For one read statement: outside a transaction on PostgreSQL (a single statement sees
        one snapshot anyway); a read transaction on SQLite, where BEGIN costs no round trip."""
        return self._one_statement(self.read)

    def write_one(self):
        """For one write statement, atomic by itself: outside a transaction on PostgreSQL (no BEGIN
        and COMMIT round trips); a write transaction on SQLite (BEGIN IMMEDIATE, see above)."""
        return self._one_statement(self.write)

    @contextmanager
    def _one_statement(self, otherwise) -> Iterator[Connection]:
        if self._autocommit is None:
            with otherwise() as conn:
                yield conn
            return
        with self._autocommit.connect() as conn:
            yield conn

    def lock_room(self, conn: Connection, room_id: str) -> dict:
        """The room's stored state, locked until the transaction ends.

        The row is created first if need be, so two deliveries for a new room wait
        for each other instead of both starting from nothing (PostgreSQL); on
        SQLite the write transaction already serializes them.
        """
        run(conn, self.sql.insert_room, {"room_id": room_id, "state": "{}", "updated_at": self.clock()})
        (state,) = run(conn, self.sql.lock_room, {"room_id": room_id}).fetchone()
        return self.sql.lock_room.json(state)

    # -- schema and health -----------------------------------------------------

    @guarded
    def migrate(self) -> list[str]:
        with self.write() as conn:
            return migrations.apply(conn)

    @guarded
    def created_at(self) -> float | None:
        """When this store was created (its first migration step): its identity, as far as a
        marker beside a SQLite file needs one."""
        from .tables import schema_migrations

        with self.read() as conn:
            return conn.execute(select(schema_migrations.c.applied_at)
                                .where(schema_migrations.c.version == 1)).scalar()

    def check_identity(self) -> str | None:
        """SQLite: compare the store with the marker beside its file (`<file>.store`), written at
        its first start. None when they agree, or on a first start (the marker is written then);
        otherwise what is wrong: the file is a new store where another one was."""
        if self.dialect != "sqlite":
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
        with self.read() as conn:
            return migrations.current_version(conn)

    @guarded
    def ping(self) -> None:
        self.writers.probe()  # SQLite: still the file it opened, and its writers' lock file can be had
        with self.read() as conn:
            conn.execute(text("SELECT 1"))
