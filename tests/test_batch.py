"""Group commit (service/store/batch.py): threads that write together share one `write` call.

What is pinned here, first on `GroupCommit` alone with a fake `write`, then on the
real store (`Store.ingest`, SQLite and PostgreSQL via the `database_url` fixture):

- a lone submit is a batch of one; work queued while a write runs goes out in the
  next call, in submission order, never more than `max_batch` at a time, and each
  submitter gets its own result;
- a batch that fails on an ordinary exception is written again one piece at a time,
  so only the bad piece fails, in its own thread, with its own exception;
- an outage (`StoreUnavailable`) fails the whole batch, each submitter getting its
  own instance, with no retry;
- a BaseException in `write` propagates in the leader thread and every other
  submitter of that batch gets `StoreUnavailable` instead of hanging.

No sleep synchronizes anything: a write (or a plan) blocks on an Event while the
other threads queue, and the queue reports each append through a Condition. Every
thread is joined with a timeout that only guards against a hang.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Callable

import pytest
from sqlalchemy import select

from service.errors import StoreUnavailable
from service.store import PlanWrite, Store, tables
from service.store.batch import MAX_BATCH, GroupCommit

from .conftest import Clock
from .test_store import T0, counts, new_decision, new_delivery, row_counts

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


# -- the real store -------------------------------------------------------------------------


@pytest.fixture
def store(database_url):
    store = Store.from_url(database_url, Clock(T0))
    store.migrate()
    yield store
    store.close()


def spy_on_writes(store: Store) -> list[list[str]]:
    """Record the delivery ids of each `write` call the store's group commit makes."""
    if store._intake is None:
        pytest.skip("PostgreSQL: each delivery is its own transaction (no group commit)")
    calls: list[list[str]] = []
    write = store._intake._write

    def spy(works):
        calls.append([delivery.id for delivery, _ in works])
        return write(works)

    store._intake._write = spy
    return calls


def plan_of(delivery, *, room_state: dict | None = None, before: Callable[[], None] | None = None,
            seen: list | None = None):
    """A plan scheduling one action keyed by the delivery id, in the delivery's room."""

    def plan(stored, pending, keys) -> PlanWrite:
        if seen is not None:
            seen.append(dict(stored or {}))
        if before is not None:
            before()
        return PlanWrite(room_state=room_state,
                         decisions=(new_decision(f"act|{delivery.id}", room_id=delivery.room_id),))

    return plan


def ingest_behind_blocked_one(store: Store, deliveries: list, plans: list) -> tuple[tuple, list]:
    """Ingest a first delivery (room-0) whose plan waits, inside its transaction, for the
    returned Event; meanwhile ingest each of `deliveries` from its own thread, each queued
    before the next starts. Returns (blocked thread, release Event, delivery), threads."""
    if store._intake is None:
        pytest.skip("PostgreSQL: each delivery is its own transaction (no group commit)")
    queue = observed(store._intake)
    entered, release = threading.Event(), threading.Event()

    def wait_for_release():
        entered.set()
        assert release.wait(JOIN_LIMIT), "the blocked plan was never released"

    first = new_delivery(room_id="room-0")
    blocked = started(lambda: store.ingest(first, plan_of(first, before=wait_for_release)))
    assert entered.wait(JOIN_LIMIT), "the first ingest never reached its plan"
    threads = []
    for i, (delivery, plan) in enumerate(zip(deliveries, plans, strict=True)):
        threads.append(started(lambda d=delivery, p=plan: store.ingest(d, p)))
        queue.wait_appended(i + 2)
    return (blocked, release, first), threads


def stored_delivery_ids(store: Store) -> set[str]:
    with store.engine.connect() as conn:
        return set(conn.execute(select(tables.deliveries.c.id)).scalars())


def test_store_ingests_queued_deliveries_in_one_batch(store):
    """Deliveries for different rooms queued behind a running ingest are written in one
    transaction; each thread gets the receipt of its own delivery and every row is stored.
    Rooms are submitted out of order (the batch locks them sorted) to pin the mapping back."""
    rooms = ["room-5", "room-2", "room-4", "room-1", "room-3"]
    deliveries = [new_delivery(room_id=r) for r in rooms]
    calls = spy_on_writes(store)
    (blocked, release, first), threads = ingest_behind_blocked_one(
        store, deliveries, [plan_of(d, room_state={"last": d.id}) for d in deliveries])

    release.set()
    finish_all(blocked, threads)

    assert calls == [[first.id], [d.id for d in deliveries]]  # one transaction for all five
    assert blocked.error is None and blocked.result.delivery_id == first.id
    for thread, delivery in zip(threads, deliveries):
        assert thread.error is None, thread.error
        receipt = thread.result
        assert receipt.delivery_id == delivery.id
        [decision] = receipt.decisions
        assert decision.outcome == "scheduled"
        action = store.action(decision.action_id)
        assert (action["key"], action["room_id"], action["delivery_id"]) == \
            (f"act|{delivery.id}", delivery.room_id, delivery.id)
        assert store.room(delivery.room_id)["state"] == {"last": delivery.id}
    assert len({t.result.decisions[0].action_id for t in threads}) == len(threads)
    assert row_counts(store) == counts(deliveries=6, decisions=6, actions=6, rooms=6)


def test_store_batch_keeps_one_rooms_deliveries_in_order(store):
    """Two deliveries for one room in one batch: the second plan sees the state the first
    wrote, in the same transaction."""
    deliveries = [new_delivery(room_id="room-9"), new_delivery(room_id="room-1"),
                  new_delivery(room_id="room-9")]
    seen: list[list] = [[], [], []]
    plans = [plan_of(d, room_state={"last": d.id}, seen=s) for d, s in zip(deliveries, seen)]
    calls = spy_on_writes(store)
    (blocked, release, first), threads = ingest_behind_blocked_one(store, deliveries, plans)

    release.set()
    finish_all(blocked, threads)

    assert calls == [[first.id], [d.id for d in deliveries]]
    assert [t.error for t in threads] == [None, None, None]
    assert seen[0] == [{}] and seen[2] == [{"last": deliveries[0].id}]
    assert store.room("room-9")["state"] == {"last": deliveries[2].id}
    assert row_counts(store) == counts(deliveries=4, decisions=4, actions=4, rooms=3)


def test_store_batch_with_one_failing_plan_stores_all_the_others(store):
    """One delivery's plan raises inside a shared batch: the batch is rolled back and each
    delivery written alone; the others are stored with their receipts, the bad one's
    thread gets its plan's error, and nothing of the bad delivery is stored."""
    deliveries = [new_delivery(room_id=f"room-{i}") for i in (1, 2, 3)]
    good1, bad, good3 = deliveries

    def broken():
        raise ValueError("plan bug")

    plans = [plan_of(good1), plan_of(bad, before=broken), plan_of(good3)]
    calls = spy_on_writes(store)
    (blocked, release, first), threads = ingest_behind_blocked_one(store, deliveries, plans)

    release.set()
    finish_all(blocked, threads)

    ids = [d.id for d in deliveries]
    assert calls == [[first.id], ids, [good1.id], [bad.id], [good3.id]]
    t1, t_bad, t3 = threads
    assert t1.error is None and t1.result.delivery_id == good1.id
    assert t3.error is None and t3.result.delivery_id == good3.id
    assert isinstance(t_bad.error, ValueError) and str(t_bad.error) == "plan bug"
    assert t_bad.result is None
    assert stored_delivery_ids(store) == {first.id, good1.id, good3.id}
    assert store.room("room-2") is None  # the room row the failed transactions made is gone
    assert row_counts(store) == counts(deliveries=3, decisions=3, actions=3, rooms=3)


def test_store_concurrent_ingests_all_stored(store):
    """A free-for-all: several threads ingest for their own rooms at once (batching as it
    happens); every delivery is stored once and every receipt is its own."""
    n_threads, per_thread = 8, 5
    barrier = threading.Barrier(n_threads)

    def ingest_some(i: int) -> list:
        barrier.wait(JOIN_LIMIT)
        out = []
        for _ in range(per_thread):
            delivery = new_delivery(room_id=f"room-{i}")
            out.append((delivery.id, store.ingest(delivery, plan_of(delivery))))
        return out

    threads = [started(lambda i=i: ingest_some(i)) for i in range(n_threads)]
    for t in threads:
        t.finished()

    assert [t.error for t in threads] == [None] * n_threads
    pairs = [pair for t in threads for pair in t.result]
    assert all(receipt.delivery_id == delivery_id for delivery_id, receipt in pairs)
    assert all([d.outcome for d in r.decisions] == ["scheduled"] for _, r in pairs)
    total = n_threads * per_thread
    assert stored_delivery_ids(store) == {delivery_id for delivery_id, _ in pairs}
    assert row_counts(store) == counts(deliveries=total, decisions=total, actions=total,
                                       rooms=n_threads)
