"""Group commit (service/store/batch.py): threads that write together share one `write` call.

What is pinned here, first on `GroupCommit` alone with a fake `write`, then on the
real store, where it batches the web requests' inbox appends (`Store.append` on
SQLite through `inbox.SqliteAppender`; on PostgreSQL each append is its own
transaction, and only the free-for-all runs there too):

- a lone submit is a batch of one; work queued while a write runs goes out in the
  next call, in submission order, never more than `max_batch` at a time, and each
  submitter gets its own result; on the store, appends queued together are one
  transaction, kept in the order they were submitted, and a room's deliveries are
  then decided in that order;
- a batch that fails on an ordinary exception is written again one piece at a time,
  so only the bad piece fails, in its own thread, with its own exception (on the
  store: a repeated inbox id);
- an outage (`StoreUnavailable`) fails the whole batch, each submitter getting its
  own instance, with no retry (on the store: a locked database, and nothing kept);
- a BaseException in `write` propagates in the leader thread and every other
  submitter of that batch gets `StoreUnavailable` instead of hanging (on the store:
  an interrupt before COMMIT, and nothing of the batch half-kept).

No sleep synchronizes anything: a write blocks on an Event while the other threads
queue, and the queue reports each append through a Condition. Every thread is
joined with a timeout that only guards against a hang.
"""

from __future__ import annotations

import sqlite3
import threading
from collections import deque
from typing import Callable

import pytest
import sqlalchemy.exc
from sqlalchemy.engine import make_url

from service.errors import StoreUnavailable
from service.store import PlanWrite, Store
from service.store import database as store_database
from service.store.batch import MAX_BATCH, GroupCommit
from service.store.database import sqlite_connect
from service.store.inbox import InboxItem

from .conftest import Clock
from .test_store import T0, counts, inbox_item, new_decision, new_delivery, row_counts

JOIN_LIMIT = 60.0  # a hang guard only, never a timing assertion


# -- helpers --------------------------------------------------------------------------------


class Interrupt(BaseException):
    """A BaseException that is not KeyboardInterrupt/SystemExit, as `write` might raise."""


class ObservedQueue(deque):
    """GroupCommit's queue, reporting each append so a test can wait for "n queued".

    `pause_after` maps a work to an Event: the thread that appends that work stops
    right after appending, before it reaches the leader lock, until the Event is set.
    """

    def __init__(self, pause_after: dict | None = None):
        super().__init__()
        self.changed = threading.Condition()
        self.appended: list = []
        self.pause_after = pause_after or {}

    def append(self, job) -> None:
        super().append(job)
        with self.changed:
            self.appended.append(job.work)
            self.changed.notify_all()
        if job.work in self.pause_after:
            assert self.pause_after[job.work].wait(JOIN_LIMIT), "a paused submitter was never resumed"

    def wait_appended(self, n: int) -> None:
        with self.changed:
            assert self.changed.wait_for(lambda: len(self.appended) >= n, JOIN_LIMIT), \
                f"only {len(self.appended)} of {n} works were ever queued"


def observed(gc: GroupCommit, **kwargs) -> ObservedQueue:
    """Swap `gc`'s (empty) queue for an ObservedQueue and return it."""
    assert not gc._queue
    gc._queue = ObservedQueue(**kwargs)
    return gc._queue


class Submitter(threading.Thread):
    """Runs fn() once in its own thread; keeps what it returned or raised."""

    def __init__(self, fn: Callable[[], object]):
        super().__init__(daemon=True)
        self.fn = fn
        self.result: object = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.result = self.fn()
        except BaseException as exc:  # noqa: BLE001 - handed back to the test
            self.error = exc

    def finished(self) -> "Submitter":
        self.join(JOIN_LIMIT)
        assert not self.is_alive(), "a submitter hung"
        return self


def started(fn: Callable[[], object]) -> Submitter:
    thread = Submitter(fn)
    thread.start()
    return thread


class FakeWrite:
    """A `write` that records each call and answers "result of <work>" for each work.

    A call containing BLOCK first waits for `release`; `fail(works)` may return an
    exception to raise for a call instead of answering it.
    """

    BLOCK = "block"

    def __init__(self, fail: Callable[[list], BaseException | None] = lambda works: None):
        self.fail = fail
        self.calls: list[list] = []
        self.raised: list[tuple[list, BaseException]] = []
        self.entered = threading.Event()
        self.release = threading.Event()

    def __call__(self, works) -> list:
        works = list(works)
        self.calls.append(works)
        if self.BLOCK in works:
            self.entered.set()
            assert self.release.wait(JOIN_LIMIT), "the blocked write was never released"
        error = self.fail(works)
        if error is not None:
            self.raised.append((works, error))
            raise error
        return [f"result of {w}" for w in works]


def queue_behind_blocked_write(gc: GroupCommit, write: FakeWrite, works: list) -> tuple[Submitter, list]:
    """Start a submit of BLOCK and wait until its write is running (it holds the leader
    lock); then submit each of `works` from its own thread, one after the other, each
    one queued before the next starts. Returns the blocked thread and the others."""
    queue = observed(gc)
    blocked = started(lambda: gc.submit(FakeWrite.BLOCK))
    assert write.entered.wait(JOIN_LIMIT), "the first write never started"
    threads = []
    for i, work in enumerate(works):
        threads.append(started(lambda work=work: gc.submit(work)))
        queue.wait_appended(i + 2)  # BLOCK, then works[0..i]
    assert len(gc._queue) == len(works)  # all waiting; the running write took only BLOCK
    return blocked, threads


def finish_all(blocked: Submitter, threads: list[Submitter]) -> None:
    blocked.finished()
    for t in threads:
        t.finished()


# -- GroupCommit on its own -----------------------------------------------------------------


def test_lone_submit_is_a_batch_of_one():
    """No concurrency: each submit is one write call of one work, answered at once."""
    write = FakeWrite()
    gc = GroupCommit(write)
    assert gc.submit("a") == "result of a"
    assert gc.submit("b") == "result of b"
    assert write.calls == [["a"], ["b"]]
    assert len(gc._queue) == 0


@pytest.mark.parametrize("error", [ValueError("bad value"), StoreUnavailable("store down")],
                         ids=["ValueError", "StoreUnavailable"])
def test_lone_submit_raises_the_write_error_itself(error):
    """A batch of one is not retried: the caller gets exactly the exception write raised."""
    write = FakeWrite(fail=lambda works: error)
    gc = GroupCommit(write)
    with pytest.raises(type(error)) as raised:
        gc.submit("a")
    assert raised.value is error
    assert write.calls == [["a"]]
    assert len(gc._queue) == 0


def test_works_queued_during_a_write_go_out_together_in_order():
    """While one write runs, N submitters queue; the next write is exactly those N, in
    submission order, each thread getting its own result; two write calls in all."""
    write = FakeWrite()
    gc = GroupCommit(write)
    works = [f"w{i}" for i in range(6)]
    blocked, threads = queue_behind_blocked_write(gc, write, works)

    write.release.set()
    finish_all(blocked, threads)

    assert write.calls == [[FakeWrite.BLOCK], works]
    assert blocked.error is None and blocked.result == "result of block"
    assert [(t.error, t.result) for t in threads] == [(None, f"result of {w}") for w in works]
    assert len(gc._queue) == 0


def test_max_batch_splits_the_queue_in_order():
    """More queued than max_batch: consecutive writes of at most max_batch, first in first
    out, every work written once and every submitter answered with its own result."""
    write = FakeWrite()
    gc = GroupCommit(write, max_batch=3)
    works = [f"w{i}" for i in range(7)]
    blocked, threads = queue_behind_blocked_write(gc, write, works)

    write.release.set()
    finish_all(blocked, threads)

    assert write.calls == [[FakeWrite.BLOCK], works[0:3], works[3:6], works[6:7]]
    assert max(len(c) for c in write.calls) <= 3
    assert [(t.error, t.result) for t in threads] == [(None, f"result of {w}") for w in works]
    assert len(gc._queue) == 0


def test_default_max_batch_caps_a_long_queue():
    """With the default cap, a queue longer than MAX_BATCH still splits at MAX_BATCH."""
    write = FakeWrite()
    gc = GroupCommit(write)
    works = [f"w{i}" for i in range(MAX_BATCH + 2)]
    blocked, threads = queue_behind_blocked_write(gc, write, works)

    write.release.set()
    finish_all(blocked, threads)

    assert write.calls == [[FakeWrite.BLOCK], works[:MAX_BATCH], works[MAX_BATCH:]]
    assert [t.result for t in threads] == [f"result of {w}" for w in works]
    assert all(t.error is None for t in threads)


def test_one_bad_piece_fails_alone():
    """The batch raises ValueError because of one work: each piece is then written alone;
    the others get their results, the bad one's thread gets the ValueError its own write
    raised, and every work is answered exactly once."""
    write = FakeWrite(fail=lambda works: ValueError(f"cannot write {works}") if "bad" in works else None)
    gc = GroupCommit(write)
    works = ["a", "bad", "c"]
    blocked, threads = queue_behind_blocked_write(gc, write, works)

    write.release.set()
    finish_all(blocked, threads)

    assert write.calls == [[FakeWrite.BLOCK], works, ["a"], ["bad"], ["c"]]
    a, bad, c = threads
    assert (a.error, a.result) == (None, "result of a")
    assert (c.error, c.result) == (None, "result of c")
    assert bad.result is None and isinstance(bad.error, ValueError)
    assert write.raised[-1] == (["bad"], bad.error)  # the very exception of its lone write
    # each good work was written successfully exactly once (the failed batch kept nothing)
    succeeded = [call for call in write.calls if call not in [w for w, _ in write.raised]]
    assert sorted(w for call in succeeded for w in call) == ["a", "block", "c"]
    assert len(gc._queue) == 0


def test_store_unavailable_fails_the_whole_batch_with_one_error_each():
    """An outage on a batch: no retry one by one; every submitter raises StoreUnavailable,
    each its own instance (none shared, none the original), with the outage's message."""
    outage = StoreUnavailable("store unavailable: database is locked")
    write = FakeWrite(fail=lambda works: outage if len(works) > 1 else None)
    gc = GroupCommit(write)
    works = ["a", "b", "c"]
    blocked, threads = queue_behind_blocked_write(gc, write, works)

    write.release.set()
    finish_all(blocked, threads)

    assert write.calls == [[FakeWrite.BLOCK], works]
    assert blocked.error is None
    errors = [t.error for t in threads]
    assert all(type(e) is StoreUnavailable for e in errors), errors
    assert all(t.result is None for t in threads)
    assert len({id(e) for e in errors}) == len(errors)
    assert all(e is not outage and str(e) == str(outage) for e in errors)
    assert len(gc._queue) == 0


def test_base_exception_in_a_batch_propagates_in_the_leader_and_frees_the_others():
    """write raises a BaseException for a batch: whichever submitter led that batch sees
    it propagate; the others get StoreUnavailable instead of hanging; nothing is retried,
    and the next submit works (the leader lock was released)."""
    write = FakeWrite(fail=lambda works: Interrupt("interrupted") if len(works) > 1 else None)
    gc = GroupCommit(write)
    works = ["a", "b", "c"]
    blocked, threads = queue_behind_blocked_write(gc, write, works)

    write.release.set()
    finish_all(blocked, threads)

    assert write.calls == [[FakeWrite.BLOCK], works]
    assert blocked.error is None
    interrupted = [t for t in threads if isinstance(t.error, Interrupt)]
    assert len(interrupted) == 1  # the leader of the batch, whichever thread that was
    assert interrupted[0].error is write.raised[0][1]
    others = [t for t in threads if t is not interrupted[0]]
    assert all(type(t.error) is StoreUnavailable for t in others), [t.error for t in others]
    assert all(t.result is None for t in threads)
    assert len(gc._queue) == 0

    assert gc.submit("d") == "result of d"
    assert write.calls[-1] == ["d"]


def test_base_exception_while_writing_pieces_alone_frees_the_rest():
    """The batch fails on a bad piece, and then writing a piece alone raises a BaseException:
    the leader sees it, every piece not yet answered gets StoreUnavailable; no hang."""
    def fail(works):
        if "bad" in works:
            return ValueError("bad piece")
        if works == ["a"]:
            return Interrupt("interrupted")
        return None

    write = FakeWrite(fail=fail)
    gc = GroupCommit(write)
    works = ["a", "bad", "c"]
    blocked, threads = queue_behind_blocked_write(gc, write, works)

    write.release.set()
    finish_all(blocked, threads)

    assert write.calls == [[FakeWrite.BLOCK], works, ["a"]]  # stopped at the interrupt
    interrupted = [t for t in threads if isinstance(t.error, Interrupt)]
    assert len(interrupted) == 1
    others = [t for t in threads if t is not interrupted[0]]
    assert all(type(t.error) is StoreUnavailable for t in others), [t.error for t in others]
    assert len(gc._queue) == 0


def test_lone_base_exception_propagates_to_its_caller():
    """A batch of one interrupted: the caller gets the BaseException itself."""
    error = Interrupt("interrupted")
    write = FakeWrite(fail=lambda works: error)
    gc = GroupCommit(write)
    with pytest.raises(Interrupt) as raised:
        gc.submit("a")
    assert raised.value is error
    assert len(gc._queue) == 0
    write.fail = lambda works: None
    assert gc.submit("b") == "result of b"


def test_interrupted_leader_leaves_no_work_of_its_own_behind():
    """max_batch=1; B has queued but not yet reached the leader lock; C submits, leads,
    and writes B's work first; that write is interrupted. C sees the interrupt and B gets
    StoreUnavailable. C's work must then not be written by anybody later."""
    write = FakeWrite(fail=lambda works: Interrupt("interrupted") if works == ["b"] else None)
    gc = GroupCommit(write, max_batch=1)
    b_may_go_on = threading.Event()
    queue = observed(gc, pause_after={"b": b_may_go_on})
    b = started(lambda: gc.submit("b"))
    queue.wait_appended(1)  # B queued, paused before the leader lock

    c = started(lambda: gc.submit("c")).finished()  # C leads: writes ["b"], interrupted
    assert isinstance(c.error, Interrupt)
    b_may_go_on.set()
    assert type(b.finished().error) is StoreUnavailable
    assert write.calls == [["b"]]

    assert gc.submit("d") == "result of d"
    assert write.calls == [["b"], ["d"]]  # today: [["b"], ["c"], ["d"]], "c" written orphaned


# -- the real store: inbox appends ----------------------------------------------------------


@pytest.fixture
def store(database_url):
    store = Store.from_url(database_url, Clock(T0))
    store.db.migrate()
    yield store
    store.close()


class Writes:
    """The store's inbox transactions (what its group commit hands `Inbox._append_rows`), as
    inbox ids per call: `calls` every transaction begun, `committed` those that returned. While
    `hold` names an item, the call that carries it waits for `release` before it begins (its
    sender leads)."""

    def __init__(self, store: Store):
        self.calls: list[list[str]] = []
        self.committed: list[list[str]] = []
        self.hold: str | None = None
        self.entered, self.release = threading.Event(), threading.Event()
        write = store.inbox._appender._write

        def spy(items):
            ids = [item.id for item in items]
            self.calls.append(ids)
            if self.hold in ids:
                self.entered.set()
                assert self.release.wait(JOIN_LIMIT), "the held write was never released"
            result = write(items)
            self.committed.append(ids)
            return result

        store.inbox._appender._write = spy


def append_behind_blocked_one(store: Store, writes: Writes, items: list) -> tuple[tuple, list]:
    """Append a first item (room-0) whose write waits for `writes.release`; meanwhile append
    each of `items` from its own thread, each queued before the next starts.
    Returns (blocked thread, first item), threads."""
    queue = observed(store.inbox._appender)
    first = inbox_item(room_id="room-0")
    writes.hold = first.id
    blocked = started(lambda: store.inbox.append(first))
    assert writes.entered.wait(JOIN_LIMIT), "the first append never reached its write"
    threads = []
    for i, item in enumerate(items):
        threads.append(started(lambda item=item: store.inbox.append(item)))
        queue.wait_appended(i + 2)
    return (blocked, first), threads


def inbox_rows(store: Store) -> list[InboxItem]:
    """What the inbox holds, in arrival order, as the items appended (read by a decider)."""
    with store.inbox.deciding(10_000) as batch:
        return [InboxItem(**{k: v for k, v in row.__dict__.items() if k != "seq"}) for row in batch.rows]


def plan_of(row, *, room_state: dict | None = None, seen: list | None = None):
    """A plan scheduling one action keyed by the delivery id, in the delivery's room."""

    def plan(stored, pending, keys) -> PlanWrite:
        if seen is not None:
            seen.append(dict(stored or {}))
        return PlanWrite(room_state=room_state,
                         decisions=(new_decision(f"act|{row.id}", room_id=row.room_id),))

    return plan


def decide_all(store: Store, plan_for: Callable = plan_of) -> dict:
    """Decide what the inbox holds, in arrival order, in one decider's transaction, each row
    with `plan_for(row)`. Returns each delivery's receipt by id."""
    receipts = {}
    with store.inbox.deciding(10_000) as batch:
        for row in batch.rows:
            write = plan_for(row)(*batch.room_inputs(row.room_id))
            delivery = new_delivery(id=row.id, at=row.received_at, room_id=row.room_id, body=row.body)
            receipts[row.id] = batch.record(row, delivery, write)
    return receipts


def test_store_appends_queued_deliveries_in_one_transaction(store, database_url):
    """Deliveries queued behind a running append are written in one transaction; each sender
    returns (durable) with no error, and every row is in the inbox, exactly as submitted, in
    submission order, seen from another store (another process)."""
    rooms = ["room-5", "room-2", "room-4", "room-1", "room-3"]
    items = [inbox_item(at=T0 + i, room_id=r, signature=f"sig-{i}", verified=None if i == 2 else True)
             for i, r in enumerate(rooms)]
    writes = Writes(store)
    (blocked, first), threads = append_behind_blocked_one(store, writes, items)

    writes.release.set()
    finish_all(blocked, threads)

    assert writes.calls == [[first.id], [i.id for i in items]]  # one transaction for all five
    assert writes.committed == writes.calls
    assert (blocked.error, blocked.result) == (None, None)
    assert [(t.error, t.result) for t in threads] == [(None, None)] * len(items)
    other = Store.from_url(database_url, Clock(T0))
    try:
        assert inbox_rows(other) == [first, *items]
    finally:
        other.close()


def test_store_batch_keeps_one_rooms_deliveries_in_order(store):
    """Two deliveries for one room in one batch keep their order: deciding them, the second
    plan sees the state the first wrote."""
    items = [inbox_item(room_id="room-9"), inbox_item(room_id="room-1"), inbox_item(room_id="room-9")]
    writes = Writes(store)
    (blocked, first), threads = append_behind_blocked_one(store, writes, items)

    writes.release.set()
    finish_all(blocked, threads)
    seen: dict[str, list] = {}
    receipts = decide_all(store, lambda row: plan_of(row, room_state={"last": row.id},
                                                     seen=seen.setdefault(row.id, [])))

    assert writes.calls == [[first.id], [i.id for i in items]]
    assert [t.error for t in threads] == [None, None, None]
    assert list(receipts) == [first.id, *(i.id for i in items)]  # decided in arrival order
    assert seen[items[0].id] == [{}] and seen[items[2].id] == [{"last": items[0].id}]
    assert store.history.room("room-9")["state"] == {"last": items[2].id}
    assert row_counts(store) == counts(deliveries=4, decisions=4, actions=4, rooms=3)


def test_store_batch_with_one_repeated_id_stores_all_the_others(store):
    """One append in a shared batch repeats an id the inbox holds: the batch is rolled back
    and each append written alone; the others are kept, the bad one's sender gets the
    IntegrityError, and the row it repeated is untouched."""
    items = [inbox_item(room_id="room-1"), None, inbox_item(room_id="room-3")]
    writes = Writes(store)
    queue = observed(store.inbox._appender)
    first = inbox_item(room_id="room-0", body='{"first": true}')
    writes.hold = first.id
    blocked = started(lambda: store.inbox.append(first))
    assert writes.entered.wait(JOIN_LIMIT), "the first append never reached its write"
    items[1] = inbox_item(id=first.id, room_id="room-2", body='{"repeat": true}')
    good1, bad, good3 = items
    threads = []
    for i, item in enumerate(items):
        threads.append(started(lambda item=item: store.inbox.append(item)))
        queue.wait_appended(i + 2)

    writes.release.set()
    finish_all(blocked, threads)

    ids = [i.id for i in items]
    assert writes.calls == [[first.id], ids, [good1.id], [bad.id], [good3.id]]
    assert writes.committed == [[first.id], [good1.id], [good3.id]]
    t1, t_bad, t3 = threads
    assert (t1.error, t3.error) == (None, None)
    # A bug, not an outage: no 503. (SQLite's appender is plain sqlite3; PostgreSQL's runs under SQLAlchemy.)
    assert isinstance(t_bad.error, (sqlite3.IntegrityError, sqlalchemy.exc.IntegrityError))
    assert inbox_rows(store) == [first, good1, good3]  # the first's body, not the repeat's
    decide_all(store)
    assert store.history.room("room-2") is None
    assert row_counts(store) == counts(deliveries=3, decisions=3, actions=3, rooms=3)


def test_store_locked_database_fails_each_sender_and_keeps_nothing(store, database_url, monkeypatch):
    """Another connection holds SQLite's write lock past the busy timeout: the lone append
    and each sender of the batch queued behind it get their own StoreUnavailable, nothing is
    retried one by one, nothing is kept, and the same store appends once the lock is gone."""
    if store.inbox._sqlite_appender is None:
        pytest.skip("SQLite's write lock; on PostgreSQL appends take no lock another writer holds")
    monkeypatch.setattr(store_database, "SQLITE_BUSY_TIMEOUT_MS", 200)  # keep the wait short
    items = [inbox_item(room_id=f"room-{i}") for i in (1, 2, 3)]
    writes = Writes(store)
    (blocked, first), threads = append_behind_blocked_one(store, writes, items)
    lock = sqlite3.connect(make_url(database_url).database, isolation_level=None)
    lock.execute("BEGIN IMMEDIATE")
    try:
        writes.release.set()
        finish_all(blocked, threads)
    finally:
        lock.rollback()
        lock.close()

    assert writes.calls == [[first.id], [i.id for i in items]]
    assert writes.committed == []
    errors = [t.error for t in (blocked, *threads)]
    assert all(type(e) is StoreUnavailable for e in errors), errors
    assert all("locked" in str(e) for e in errors), errors
    assert len({id(e) for e in errors}) == len(errors)
    assert inbox_rows(store) == []

    again = inbox_item()
    store.inbox.append(again)
    assert inbox_rows(store) == [again]


class InterruptBeforeCommit:
    """The appender's sqlite3 connection, raising Interrupt at the COMMIT of a transaction
    that wrote more than one row: after its INSERTs ran, before anything was kept."""

    def __init__(self, conn: sqlite3.Connection):
        self._conn = conn
        self._rows = 0

    def executemany(self, sql, rows):
        rows = list(rows)
        self._rows = len(rows)
        return self._conn.executemany(sql, rows)

    def execute(self, sql, *args):
        if sql == "COMMIT" and self._rows > 1:
            raise Interrupt("interrupted before COMMIT")
        return self._conn.execute(sql, *args)

    def __getattr__(self, name):
        return getattr(self._conn, name)


def test_store_interrupted_batch_keeps_nothing_and_frees_the_others(store, database_url, monkeypatch):
    """A batch interrupted inside its transaction (a worker's timeout, a signal): its leader
    sees the interrupt, the other senders get StoreUnavailable, none of the batch is in the
    inbox, and the appender's connection is not left inside a transaction."""
    writes = Writes(store)
    if store.inbox._sqlite_appender is not None:
        store.inbox._sqlite_appender._conn = InterruptBeforeCommit(sqlite_connect(make_url(database_url).database))
    else:  # PostgreSQL: the batch is one statement; interrupted while it runs, before any reply
        import service.store.inbox as inbox_module

        def run_or_interrupt(conn, statement, values, _run=inbox_module.run):
            if statement is store.inbox._append_pg and len(values["id"]) > 1:
                raise Interrupt("interrupted mid-statement")
            return _run(conn, statement, values)

        monkeypatch.setattr(inbox_module, "run", run_or_interrupt)
    items = [inbox_item(room_id=f"room-{i}") for i in (1, 2, 3)]
    (blocked, first), threads = append_behind_blocked_one(store, writes, items)

    writes.release.set()
    finish_all(blocked, threads)

    assert writes.calls == [[first.id], [i.id for i in items]]  # not retried one by one
    assert writes.committed == [[first.id]]
    assert blocked.error is None
    interrupted = [t for t in threads if isinstance(t.error, Interrupt)]
    assert len(interrupted) == 1  # the leader of the batch, whichever thread that was
    others = [t for t in threads if t is not interrupted[0]]
    assert all(type(t.error) is StoreUnavailable for t in others), [t.error for t in others]
    assert inbox_rows(store) == [first]

    after = inbox_item()
    store.inbox.append(after)
    assert inbox_rows(store) == [first, after]


def test_store_concurrent_appends_all_stored(store):
    """A free-for-all: several threads append for their own rooms at once (batching as it
    happens, on SQLite); every delivery is kept once, each thread's in the order it sent
    them, and each is then decided once with its own receipt."""
    writes = Writes(store) if store.inbox._sqlite_appender is not None else None
    n_threads, per_thread = 8, 5
    barrier = threading.Barrier(n_threads)
    sent = [[inbox_item(room_id=f"room-{i}") for _ in range(per_thread)] for i in range(n_threads)]

    def append_some(i: int) -> None:
        barrier.wait(JOIN_LIMIT)
        for item in sent[i]:
            store.inbox.append(item)

    threads = [started(lambda i=i: append_some(i)) for i in range(n_threads)]
    for t in threads:
        t.finished()

    assert [t.error for t in threads] == [None] * n_threads
    total = n_threads * per_thread
    kept = [item.id for item in inbox_rows(store)]
    assert sorted(kept) == sorted(item.id for items in sent for item in items)
    for items in sent:  # each sender's appends in the order it made them
        assert [k for k in kept if k in {item.id for item in items}] == [item.id for item in items]
    if writes is not None:  # each in exactly one committed transaction, none begun in vain
        assert sorted(i for ids in writes.committed for i in ids) == sorted(kept)
        assert writes.calls == writes.committed
    receipts = decide_all(store)
    assert all(receipt.delivery_id == delivery_id for delivery_id, receipt in receipts.items())
    assert all([d.outcome for d in r.decisions] == ["scheduled"] for r in receipts.values())
    assert len({r.decisions[0].action_id for r in receipts.values()}) == total
    assert row_counts(store) == counts(deliveries=total, decisions=total, actions=total,
                                       rooms=n_threads)
    assert inbox_rows(store) == []
