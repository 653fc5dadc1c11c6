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
from .batch import GroupCommit
from .driver import Compiled, run
from .database import Database, WriterQueue, sqlite_connect
from .intake import RoomWrites
from .guard import guarded, outages
from .offload import blocking, real_sleep
from ..planner import PendingTimer
from .records import Later, NewDelivery, PlanWrite, Receipt
from .tables import inbox
from ..outcomes import Decided, holds_key

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
    """One decider's transaction over the rows it took. Not thread-safe; lives inside `deciding`.

    A room's state, timers and action keys are read (and locked) once per batch; what a
    delivery then changes (a timer started or cancelled, an action key taken) is applied to the
    batch's copy as it is written, so the next delivery of the room reads nothing. The rooms' new
    states and the decisions are written together when the batch ends (`finish`), before it
    commits. Measured on PostgreSQL, each statement is a round trip that costs more than
    deciding: a busy room's later deliveries in a batch cost little more than their own rows.
    """

    def __init__(self, rooms: RoomWrites, conn: Connection | None, rows: list[InboxRow], *, defer: bool = True):
        self._writes = rooms
        self._conn = conn
        self.rows = rows
        self._done: list[int] = []
        self._rooms: dict[str, _RoomSoFar] = {}
        self._later = Later() if defer else None  # None: every row written as it is recorded

    def room_inputs(self, room_id: str) -> tuple[dict, list[PendingTimer], set[str]]:
        """The room's state, its pending timers and its action keys as this batch has left them,
        locked to the end."""
        writes, conn = self._writes, self._conn
        room = self._rooms.get(room_id)
        if room is None:
            room = self._rooms[room_id] = _RoomSoFar(writes.db.lock_room(conn, room_id))
        if room.timers is None:
            room.timers = writes.pending_timers(conn, room_id)
        if room.keys is None:
            room.keys = writes.action_keys(conn, room_id)
        return room.state, list(room.timers), set(room.keys)

    def record(self, row: InboxRow, delivery: NewDelivery, write: PlanWrite | None) -> Receipt:
        """The delivery, and what was decided about it (None: nothing, as for a body kept unread)."""
        receipt = self._writes.record(self._conn, delivery, write, self._later)
        self._done.append(row.seq)
        room = self._rooms.get(delivery.room_id) if delivery.known else None
        if room is not None and write is not None:
            if write.room_state is not None:
                room.state = write.room_state
            room.apply(delivery, write, receipt)
        return receipt

    def keep(self, row: InboxRow) -> None:
        """Leave the row in the inbox, undecided, for a later batch."""

    def finish(self) -> None:
        """Write what `record` left for the end (before the batch's rows leave the inbox)."""
        if self._later is not None:
            self._writes.write_later(self._conn, self._later)


class _RoomSoFar:
    """A room as the batch has left it: None for what must be read (again) from the store."""

    __slots__ = ("state", "timers", "keys")

    def __init__(self, state: dict):
        self.state = state
        self.timers: list[PendingTimer] | None = None
        self.keys: set[str] | None = None

    def apply(self, delivery: NewDelivery, write: PlanWrite, receipt: Receipt) -> None:
        """What recording `delivery` wrote, applied to this copy as the store now holds it:
        the timers it cancelled gone, the one it started added (as `pending_timers` reads it,
        in id order), the action keys it took added. A decision about another room leaves
        this one to be read again."""
        if any(d.room_id != delivery.room_id for d in write.decisions):
            self.timers = self.keys = None
            return
        if self.timers is not None and receipt.cancelled:
            gone = set(receipt.cancelled)
            self.timers = [timer for timer in self.timers if timer.key not in gone]
        for decision, done in zip(write.decisions, receipt.decisions):
            if holds_key(done.outcome) and self.keys is not None:
                self.keys.add(decision.key)
            elif done.outcome == Decided.TIMER_STARTED and self.timers is not None:
                self.timers.append(PendingTimer.from_row(dict(
                    id=done.timer_id, key=decision.key, rule=decision.rule, fingerprint=decision.fingerprint,
                    room_id=decision.room_id, session_id=decision.session_id, action=decision.action,
                    delivery_id=delivery.id, started_at=delivery.received_at, due_at=decision.due_at,
                    trigger_body=delivery.body, trigger_verified=delivery.verified)))


class SqliteAppender:
    """Appends inbox rows to a SQLite file through a plain sqlite3 connection of its own.

    Plain DB-API, not SQLAlchemy: on a one-row insert its overhead is most of the request's
    cost. `write` runs on a real thread when the process serves on gevent (offload.py), so
    the transaction's fsync parks one greenlet, not the process; batch.GroupCommit calls it
    with everything the process's requests queued meanwhile. Writers of all processes take
    turns through `queue` (database.WriterQueue), as every other SQLite write does.
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


class Inbox:
    """The web request's `append`; the decider's `deciding`; and what each may look at."""

    def __init__(self, db: Database, rooms: RoomWrites):
        self.db = db
        self.rooms = rooms
        # Group commit of inbox appends: the requests of a process that append at the same moment
        # share one transaction. On SQLite that is one turn of the write lock and one fsync; on
        # PostgreSQL, which flushes concurrent commits together itself, it saves the round trips
        # (each one a wait on gevent's loop) of a transaction per request.
        self._appender = GroupCommit(self._append_rows)
        self._sqlite_appender = None
        self._append_pg = Compiled(APPEND_PG, db.engine.dialect)
        self._listener = None  # PostgreSQL: the decider's LISTEN connection, made when first waited on
        if db.dialect == "sqlite":
            writers = db.writers
            self._sqlite_appender = SqliteAppender(db.engine.url.database, WriterQueue(
                writers.path, writers.timeout, sleep=real_sleep, check=writers.check))

    def close(self) -> None:
        if self._sqlite_appender is not None:
            self._sqlite_appender.close()
        if self._listener is not None:
            self._listener.close()

    @guarded
    def append(self, item: InboxItem) -> None:
        """Durable when it returns; raises StoreUnavailable (and nothing is kept) otherwise.

        Through the process's group commit (batch.py): on SQLite, a plain sqlite3 connection
        (SqliteAppender); on PostgreSQL, one transaction for the batch that also wakes a decider
        listening on the `roomwarden_inbox` channel.
        """
        self._appender.submit(item)

    def _append_rows(self, items: Sequence[InboxItem]) -> list[None]:
        if self._sqlite_appender is not None:
            return self._sqlite_appender.write(items)
        with outages(), self.db.write_one() as conn:
            run(conn, self._append_pg, {column: [getattr(item, column) for item in items] for column in COLUMNS})
        return [None] * len(items)

    def wait_for_inbox(self, timeout: float) -> bool | None:
        """Wait up to `timeout` for an append (PostgreSQL: LISTEN); None where the database cannot
        tell (SQLite: the caller polls)."""
        if self.db.dialect != "postgresql":
            return None
        if self._listener is None:
            self._listener = InboxListener(self.db.engine.url.set(drivername="postgresql").render_as_string(
                hide_password=False))
        return self._listener.wait(timeout)

    @guarded
    def has_undecided(self) -> bool:
        """Read-only: whether the inbox holds anything, so an idle decider takes no write lock."""
        with self.db.peek() as conn:
            return conn.execute(_ANY).first() is not None

    @guarded
    def in_inbox(self, delivery_id: str) -> bool:
        """Read-only: whether the delivery (or sweep) `delivery_id` is still waiting to be decided."""
        with self.db.peek() as conn:
            return conn.execute(_HOLDS, {"p_id": delivery_id}).first() is not None

    @guarded
    def inbox_stats(self) -> tuple[int, float | None]:
        """How many deliveries wait to be decided, and when the oldest of them arrived."""
        with self.db.read() as conn:
            count, oldest = conn.execute(select(func.count(), func.min(inbox.c.received_at))).one()
        return count, oldest

    @contextmanager
    def deciding(self, limit: int, *, defer: bool = True) -> Iterator[InboxBatch]:
        """The oldest undecided rows this decider may take, in one write transaction; `defer`:
        see InboxBatch (False: each row's writes are made when it is recorded).

        Empty, with no transaction opened, when the inbox is: SQLite looks first with a read, so
        an idle decider never takes the write lock that the web's appends wait for. PostgreSQL
        looks inside the transaction, which locks nothing while it finds nothing.

        Raises StoreUnavailable for an outage; then nothing of the batch is kept.
        """
        if self.db.dialect != "postgresql" and not self.has_undecided():
            yield InboxBatch(self.rooms, None, [])
            return
        with outages(), self.db.write() as conn:
            batch = InboxBatch(self.rooms, conn, self._take(conn, limit), defer=defer)
            yield batch
            batch.finish()
            if batch._done:
                conn.execute(_DECIDED, {"p_seqs": batch._done})

    def _take(self, conn: Connection, limit: int) -> list[InboxRow]:
        if conn.dialect.name != "postgresql":  # SQLite: this write transaction already excludes others
            return [_row(r) for r in conn.execute(_OLDEST, {"p_limit": limit}).mappings()]
        # PostgreSQL: one statement locks what rooms it can among those of the oldest rows (a room
        # another decider holds is skipped, not waited for); a second reads those rooms' rows
        # under the locks, with a fresh snapshot, so a row another decider decided meanwhile is gone.
        locked = [room for (room,) in conn.execute(_LOCK_ROOMS, {"cls": _ROOM_LOCK_CLASS, "limit": limit})]
        if not locked:
            return []
        return [_row(r) for r in conn.execute(_OLDEST_OF_ROOMS, {"p_limit": limit, "p_rooms": locked}).mappings()]


# PostgreSQL: a batch of appends in one statement (one round trip, atomic by itself, outside a
# transaction): the rows as arrays, in order, then one NOTIFY for a listening decider.
APPEND_PG = text(
    "WITH appended AS (INSERT INTO inbox (id, received_at, room_id, body, signature, verified) "
    "SELECT id, received_at, room_id, body, signature, verified FROM unnest("
    "CAST(:id AS text[]), CAST(:received_at AS double precision[]), CAST(:room_id AS text[]), "
    "CAST(:body AS text[]), CAST(:signature AS text[]), CAST(:verified AS boolean[])) "
    "WITH ORDINALITY AS rows (id, received_at, room_id, body, signature, verified, n) ORDER BY n "
    "RETURNING seq) "
    "SELECT pg_notify('roomwarden_inbox', '') FROM (SELECT 1 FROM appended LIMIT 1) AS any_row")

# The decider's statements, built once (building one costs more than running it).
_COLUMNS = [inbox.c.seq, inbox.c.id, inbox.c.received_at, inbox.c.room_id, inbox.c.body, inbox.c.signature,
            inbox.c.verified]
_OLDEST = select(*_COLUMNS).order_by(inbox.c.seq).limit(bindparam("p_limit"))
_OLDEST_OF_ROOMS = (select(*_COLUMNS)
                    .where(inbox.c.seq.in_(select(inbox.c.seq).order_by(inbox.c.seq).limit(bindparam("p_limit"))
                                           .scalar_subquery()))
                    .where(func.coalesce(inbox.c.room_id, "").in_(bindparam("p_rooms", expanding=True)))
                    .order_by(inbox.c.seq))
# The rooms of the oldest `limit` rows ('' for rows without one), each locked if it can be.
# pg_try_advisory_xact_lock is volatile, so PostgreSQL calls it once per room, after DISTINCT.
_LOCK_ROOMS = text(
    "SELECT room FROM (SELECT DISTINCT coalesce(room_id, '') AS room FROM "
    "(SELECT room_id FROM inbox ORDER BY seq LIMIT :limit) AS oldest) AS rooms "
    "WHERE pg_try_advisory_xact_lock(:cls, hashtext(room))")
_DECIDED = delete(inbox).where(inbox.c.seq.in_(bindparam("p_seqs", expanding=True)))
_ANY = select(inbox.c.seq).limit(1)
_HOLDS = select(inbox.c.seq).where(inbox.c.id == bindparam("p_id"))


def _row(mapping) -> InboxRow:
    values = dict(mapping)
    if values["verified"] is not None:
        values["verified"] = bool(values["verified"])  # SQLite stores booleans as 0 and 1
    return InboxRow(**values)
