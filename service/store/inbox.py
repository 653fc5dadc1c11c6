"""The inbox: the web request appends a delivery; the decider takes it out, decided, in order.

`append` is all a webhook request writes: one row, committed (SQLite `synchronous=FULL`, or
PostgreSQL's commit) before it returns. On SQLite the requests of a process that append at
the same moment share one transaction and its fsync (batch.py).

`deciding(limit)` opens one write transaction over the oldest undecided rows, in arrival
order. The decider reads a room's state, timers and action keys from it, asks the pure
planner, and records the delivery with what was decided (`InboxBatch.record`); rows it
`keep`s stay for later (a body still waiting for a key to verify it). Every row recorded is
deleted from the inbox in the same transaction, so each delivery is decided exactly once,
whatever process dies when. Any number of deciders may run on PostgreSQL: each takes only
rooms it can lock (an advisory lock per room, held to the end of its transaction), so one
room's deliveries are decided in order, by one decider at a time.
"""

from __future__ import annotations

import sqlite3
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Sequence

from sqlalchemy import Connection, bindparam, delete, func, select, text

from ..errors import StoreUnavailable
from .driver import run
from .engine import WriterQueue, sqlite_connect
from .guard import guarded, outages
from .offload import blocking, real_sleep
from .records import NewDelivery, PlanWrite, Receipt, TimerRow
from .tables import inbox

COLUMNS = ["id", "received_at", "room_id", "body", "signature", "verified"]

# pg_try_advisory_xact_lock(class, key): this class id, then hashtext(room). Rooms whose hashes
# collide only take turns.
_ROOM_LOCK_CLASS = 0x726F6F6D  # "room"


@dataclass(frozen=True)
class InboxItem:
    """A delivery as the web request accepted it."""

    id: str
    received_at: float
    room_id: str | None  # data.meetingId when it is a valid id
    body: str
    signature: str | None
    verified: bool | None  # True: checked; None: not yet (no key); False: verification is off


@dataclass(frozen=True)
class InboxRow(InboxItem):
    seq: int = 0


class InboxBatch:
    """One decider's transaction over the rows it took. Not thread-safe; lives inside `deciding`."""

    def __init__(self, store, conn: Connection, rows: list[InboxRow]):
        self._store = store
        self._conn = conn
        self.rows = rows
        self._done: list[int] = []

    def room_inputs(self, room_id: str) -> tuple[dict, list[TimerRow], set[str]]:
        """The room's stored state, its pending timers and its action keys, locked to the end."""
        store, conn = self._store, self._conn
        return (store._lock_room(conn, room_id), store._pending_timers(conn, room_id),
                store._action_keys(conn, room_id))

    def record(self, row: InboxRow, delivery: NewDelivery, write: PlanWrite | None) -> Receipt:
        """The delivery, and what was decided about it (None: nothing, as for a body kept unread)."""
        receipt = self._store._record(self._conn, delivery, write)
        self._done.append(row.seq)
        return receipt

    def keep(self, row: InboxRow) -> None:
        """Leave the row in the inbox, undecided, for a later batch."""


class SqliteAppender:
    """Appends inbox rows to a SQLite file through a plain sqlite3 connection of its own.

    Plain DB-API, not SQLAlchemy: on a one-row insert its overhead is most of the request's
    cost. `write` runs on a real thread when the process serves on gevent (offload.py), so
    the transaction's fsync parks one greenlet, not the process; batch.GroupCommit calls it
    with everything the process's requests queued meanwhile. Writers of all processes take
    turns through `queue` (engine.WriterQueue), as every other SQLite write does.
    """

    SQL = f"INSERT INTO inbox ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"

    def __init__(self, database: str, queue: WriterQueue):
        self._database = database
        self._queue = queue
        self._conn: sqlite3.Connection | None = None

    def write(self, items: Sequence[InboxItem]) -> list[None]:
        return blocking(self._write, items)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _write(self, items: Sequence[InboxItem]) -> list[None]:
        rows = [tuple(getattr(item, column) for column in COLUMNS) for item in items]
        try:
            with self._queue.turn():
                if self._conn is None:
                    self._conn = sqlite_connect(self._database)
                conn = self._conn
                conn.execute("BEGIN IMMEDIATE")
                try:
                    conn.executemany(self.SQL, rows)
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
        except sqlite3.IntegrityError:
            raise  # a bug (a repeated delivery id), not an outage: batch.py writes the rows one by one
        except sqlite3.Error as exc:  # locked past the busy timeout, I/O error, file gone
            self.close()  # a fresh connection next time
            raise StoreUnavailable(f"store unavailable: {str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__}") from exc
        return [None] * len(items)


class InboxListener:
    """PostgreSQL: a connection of its own listening on `roomwarden_inbox`, which every append
    notifies, so an idle decider wakes at once instead of at its next poll."""

    def __init__(self, url: str):
        self._url = url
        self._conn = None

    def wait(self, timeout: float) -> bool:
        """True when a delivery was appended within `timeout` seconds (or may have been)."""
        import psycopg

        try:
            if self._conn is None:
                self._conn = psycopg.connect(self._url, autocommit=True, connect_timeout=5)
                self._conn.execute("LISTEN roomwarden_inbox")
                return True  # appends made before we listened were not heard: look now
            for _ in self._conn.notifies(timeout=timeout, stop_after=1):
                return True
            return False
        except psycopg.Error:
            self.close()  # the server went away: poll until it is back (the store reports outages)
            real_sleep(min(timeout, 1.0))
            return True

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None


class InboxMixin:
    @guarded
    def append(self, item: InboxItem) -> None:
        """Durable when it returns; raises StoreUnavailable (and nothing is kept) otherwise.

        SQLite: through the process's group commit (SqliteAppender). PostgreSQL: one short
        transaction each (PostgreSQL shares WAL flushes among concurrent commits itself), which
        also wakes a decider listening on the `roomwarden_inbox` channel.
        """
        if self._appender is not None:
            self._appender.submit(item)
            return
        with self._write() as conn:
            run(conn, self._insert_inbox, {column: getattr(item, column) for column in COLUMNS})
            run(conn, self._notify_inbox, {})

    def wait_for_inbox(self, timeout: float) -> bool | None:
        """Wait up to `timeout` for an append (PostgreSQL: LISTEN); None where the database cannot
        tell (SQLite: the caller polls)."""
        if self.engine.dialect.name != "postgresql":
            return None
        if self._listener is None:
            self._listener = InboxListener(self.engine.url.set(drivername="postgresql").render_as_string(
                hide_password=False))
        return self._listener.wait(timeout)

    @guarded
    def has_undecided(self) -> bool:
        """Read-only: whether the inbox holds anything, so an idle decider takes no write lock."""
        with self._read() as conn:
            return conn.execute(select(inbox.c.seq).limit(1)).first() is not None

    @guarded
    def inbox_stats(self) -> tuple[int, float | None]:
        """How many deliveries wait to be decided, and when the oldest of them arrived."""
        with self._read() as conn:
            count, oldest = conn.execute(select(func.count(), func.min(inbox.c.received_at))).one()
        return count, oldest

    @contextmanager
    def deciding(self, limit: int) -> Iterator[InboxBatch]:
        """The oldest undecided rows this decider may take, in one write transaction.

        Raises StoreUnavailable for an outage; then nothing of the batch is kept.
        """
        with outages(), self._write() as conn:
            batch = InboxBatch(self, conn, self._take(conn, limit))
            yield batch
            if batch._done:
                conn.execute(delete(inbox).where(inbox.c.seq.in_(batch._done)))

    def _take(self, conn: Connection, limit: int) -> list[InboxRow]:
        columns = [inbox.c.seq, inbox.c.id, inbox.c.received_at, inbox.c.room_id, inbox.c.body,
                   inbox.c.signature, inbox.c.verified]
        oldest = select(*columns).order_by(inbox.c.seq).limit(limit)
        if conn.dialect.name != "postgresql":  # SQLite: this write transaction already excludes others
            return [_row(r) for r in conn.execute(oldest).mappings()]
        # PostgreSQL: a look at the oldest rows, then only the rooms this decider can lock; the rows
        # are read again under the locks, so a row another decider decided meanwhile is gone.
        seen = conn.execute(select(inbox.c.seq, inbox.c.room_id).order_by(inbox.c.seq).limit(limit)).all()
        rooms: list[str] = []
        for _, room in seen:
            if (room or "") not in rooms:
                rooms.append(room or "")
        locked = {room for room in rooms if conn.execute(
            text("SELECT pg_try_advisory_xact_lock(:cls, hashtext(:room))"),
            {"cls": _ROOM_LOCK_CLASS, "room": room}).scalar()}
        seqs = [seq for seq, room in seen if (room or "") in locked]
        if not seqs:
            return []
        rows = conn.execute(select(*columns).where(inbox.c.seq.in_(bindparam("seqs", expanding=True)))
                            .order_by(inbox.c.seq), {"seqs": seqs}).mappings()
        return [_row(r) for r in rows]


def _row(mapping) -> InboxRow:
    values = dict(mapping)
    if values["verified"] is not None:
        values["verified"] = bool(values["verified"])  # SQLite stores booleans as 0 and 1
    return InboxRow(**values)
