"""The store, on a real SQLite file and a real PostgreSQL database (the `database_url` fixture).

What is pinned here: migrations (idempotent, safe to race); the inbox (`append`
durable and in arrival order; `deciding` hands out the oldest rows, keeps what is
kept, deletes what is recorded in the same transaction, and on PostgreSQL lets any
number of deciders run, one per room at a time); recording a decided delivery
(conftest's `ingest`: through the inbox and a decider's transaction, one
transaction: the delivery, the room's state, decisions, actions and timers, all of
it or none of it, the row left in the inbox when it fails; the plan sees the room's
stored state, pending timers and action keys, locked, so concurrent deliveries for
one room never lose an update; one action per key, one pending timer per key);
`for:` timers (`fire_due_timer` fires each due timer once, `recheck_timer`
re-decides one, verdicts fire, cancel and wait); the outbox (`claim`, `finish`,
`release`, `redrive`: due times, leases, fencing, max attempts, a per-minute limit,
no double claims under concurrency); reads (`room_story`, `deliveries_since` in
batches, rules versions); and how outages surface (`StoreUnavailable`, never a raw
SQLAlchemy error, and the store works again once the outage ends).

Time is a `Clock` the test moves by hand, so no test depends on the machine's speed.
"""

from __future__ import annotations

import copy
import sqlite3
import threading
import time
import uuid
from typing import Callable

import pytest
from sqlalchemy import func, inspect, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DataError, IntegrityError, SQLAlchemyError, StatementError

from service.errors import StoreUnavailable, Unavailable
from service.accept import new_delivery_id
from service.planner import Cancel, Outcome, PendingTimer
from service.rules.conditions import Trace
from service.store import AttemptRecord, ClaimedAction, NewDelivery, PlanWrite, Receipt, Store, TimerWrite
from service.store import database as store_database
from service.store import migrations, tables
from service.store.inbox import InboxItem, InboxRow

from .conftest import EMPTY_RULE, RULES_HEAD, SESSION_RULE, Clock, decide_appended, ingest

T0 = 1_700_000_000.0  # the tests' "now": a fixed epoch second
LEASE = 30.0
MAX_ATTEMPTS = 10
HOLD = 300.0  # a rule's `for: 5m`
ALL_STEPS = ["1: initial: deliveries, decisions, actions, attempts, rooms, timers, rules_versions",
             "2: deliveries.problem (kept but unreadable); attempts.answer and attempts.doubt (what a 2xx said)",
             "3: inbox: accepted deliveries not yet decided on",
             "4: workers: each worker's circuit breaker, as last reported",
             "5: sweeps: rooms.closed_at, and the sweep's round",
             "6: deliveries.participants: the room's head count once each delivery was decided"]
THREAD_JOIN_LIMIT = 120.0  # a hang guard for worker threads, never a timing assertion
PG_LOCK_WAIT = 10.0  # how long a PostgreSQL lock may block a write before it must give up
ALL_TABLES = (tables.deliveries, tables.decisions, tables.actions, tables.attempts, tables.rooms,
              tables.timers)
TIMER_KEY = "hold|room-1|sess-1"


# -- helpers --------------------------------------------------------------------------------


def backend(url: str) -> str:
    return make_url(url).get_backend_name()


def new_delivery(*, id: str | None = None, at: float = T0, **fields) -> NewDelivery:
    values = dict(
        id=id or uuid.uuid4().hex, received_at=at, event_type="session-ended",
        room_id="room-1", session_id="sess-1", participant_id=None, known=True, verified=True,
        body_sha256="0" * 64, body='{"webhookType": "session-ended"}', rules_hash="f" * 64,
    )
    values.update(fields)
    return NewDelivery(**values)


def new_decision(key: str | None = None, *, rule: str = "close-after-session",
                 action: str = "deactivate", room_id: str = "room-1",
                 session_id: str | None = "sess-1", trace: Trace | None = None,
                 outcome: str = "scheduled", confirm: str | None = None,
                 due_at: float | None = None, fingerprint: str = "") -> Outcome:
    return Outcome(rule=rule, action=action, room_id=room_id, session_id=session_id,
                   key=key or f"{rule}|{room_id}|{session_id}", trace=trace, outcome=outcome,
                   confirm=confirm, due_at=due_at, fingerprint=fingerprint)


def timer_decision(key: str = TIMER_KEY, *, at: float = T0, hold: float = HOLD,
                   room_id: str = "room-1", fingerprint: str = "fp-1",
                   outcome: str = "timer-started") -> Outcome:
    """What the planner decides for a rule with `for:`: start (or find running) a timer."""
    return new_decision(key, rule="hold", room_id=room_id, outcome=outcome,
                        due_at=at + hold if outcome == "timer-started" else None,
                        fingerprint=fingerprint)


class Plans:
    """What `ingest` handed each plan callback: (stored state, pending timers, action keys)."""

    def __init__(self):
        self.calls: list[tuple[dict | None, list[PendingTimer], set[str]]] = []


def record(store: Store, delivery: NewDelivery, decisions=(), *, room_state: dict | None = None,
           cancels=(), seen: Plans | None = None) -> Receipt:
    """Ingest a delivery whose plan decides `decisions` (and sets the room's state, and
    cancels timers); with `seen`, keep what the plan was handed."""

    def plan(stored, pending, keys) -> PlanWrite:
        if seen is not None:
            seen.calls.append((copy.deepcopy(stored), list(pending), set(keys)))
        return PlanWrite(room_state=room_state, decisions=tuple(decisions), cancels=tuple(cancels))

    return ingest(store, delivery, plan)


def decide_kept(store: Store, delivery: NewDelivery, plan) -> Receipt:
    """Decide a delivery whose row is already in the inbox (a failed try left it there), as
    conftest's `ingest` does once it has appended: the retry a decider makes."""
    assert delivery.id in inbox_ids(store), f"{delivery.id} is not in the inbox"
    return decide_appended(store, delivery, plan)


def inbox_item(*, id: str | None = None, at: float = T0, room_id: str | None = "room-1",
               body: str = '{"webhookType": "session-ended"}', signature: str | None = None,
               verified: bool | None = True) -> InboxItem:
    return InboxItem(id=id or uuid.uuid4().hex, received_at=at, room_id=room_id, body=body,
                     signature=signature, verified=verified)


def inbox_ids(store: Store) -> list[str]:
    """The inbox's delivery ids in arrival order, read around the store's API (in a read
    transaction, which a writer holding SQLite's lock does not block)."""
    with store.db.read() as conn:
        return list(conn.execute(select(tables.inbox.c.id).order_by(tables.inbox.c.seq)).scalars())


def schedule(store: Store, *keys: str, at: float = T0, acts: bool = True,
             room_id: str = "room-1") -> list[int]:
    """Record one delivery deciding one action per key; return the action ids.
    With acts=False the plan says dry-run, as it does for DRY_RUN or an unverified delivery."""
    outcome = "scheduled" if acts else "dry-run"
    receipt = record(store, new_delivery(at=at, room_id=room_id),
                     [new_decision(k, outcome=outcome, room_id=room_id) for k in keys])
    return [d.action_id for d in receipt.decisions]


def start_timer(store: Store, key: str = TIMER_KEY, *, at: float = T0, hold: float = HOLD,
                room_id: str = "room-1", fingerprint: str = "fp-1",
                **delivery_fields) -> tuple[NewDelivery, dict]:
    """Record a delivery that starts a `for:` timer; return it and the timer's row."""
    delivery = new_delivery(at=at, room_id=room_id, **delivery_fields)
    receipt = record(store, delivery, [timer_decision(key, at=at, hold=hold, room_id=room_id,
                                                      fingerprint=fingerprint)])
    assert [d.outcome for d in receipt.decisions] == ["timer-started"]
    [timer] = [t for t in store.history.timers(status="pending") if t["key"] == key]
    return delivery, timer


def attempt(outcome: str, *, status: int | None = 200, error: str | None = None,
            next_due_at: float | None = None, started_at: float = T0) -> AttemptRecord:
    return AttemptRecord(started_at=started_at, latency_ms=12.5, http_status=status,
                         outcome=outcome, error=error, next_due_at=next_due_at)


def row_counts(store: Store) -> dict[str, int]:
    """Rows in each table, read around the store's API so nothing can hide."""
    with store.db.engine.connect() as conn:
        return {t.name: conn.execute(select(func.count()).select_from(t)).scalar_one()
                for t in ALL_TABLES}


def counts(**nonzero: int) -> dict[str, int]:
    """row_counts as expected: every table 0 unless named."""
    return {t.name: nonzero.pop(t.name, 0) for t in ALL_TABLES} | nonzero


def store_attempts_single(store: Store, action_id: int) -> bool:
    """The action was claimed once and has exactly one recorded attempt, number 1."""
    rows = store.actions.attempts(action_id)
    return len(rows) == 1 and rows[0]["number"] == 1 and store.actions.action(action_id)["attempts"] == 1


def run_threads(n: int, target: Callable[[int], object]) -> list[object]:
    """Run target(i) in n threads released together; return each result or exception."""
    barrier = threading.Barrier(n)
    results: list[object] = [None] * n

    def run(i: int) -> None:
        try:
            barrier.wait()
            results[i] = target(i)
        except BaseException as exc:  # noqa: BLE001 - handed back to the test
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(THREAD_JOIN_LIMIT)
    assert not any(t.is_alive() for t in threads), "a store call hung"
    return results


def start_thread(target: Callable[[], object], results: list[object]) -> threading.Thread:
    def run() -> None:
        try:
            results.append(target())
        except BaseException as exc:  # noqa: BLE001 - handed back to the test
            results.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def wait_for_pg_lock_waiters(url: str, n: int) -> None:
    """Block until n sessions of the test database wait on a lock (a state, not a time)."""
    import psycopg

    deadline = time.monotonic() + THREAD_JOIN_LIMIT  # a hang guard only
    with psycopg.connect(url, autocommit=True) as conn:
        while True:
            waiting = conn.execute(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = current_database() AND wait_event_type = 'Lock'").fetchone()[0]
            if waiting >= n:
                return
            assert time.monotonic() < deadline, f"only {waiting} of {n} sessions ever waited"
            time.sleep(0.01)


# -- fixtures -------------------------------------------------------------------------------


@pytest.fixture
def clock() -> Clock:
    return Clock(T0)


@pytest.fixture
def store(make_store, clock) -> Store:
    return make_store(clock)


# -- migrations -----------------------------------------------------------------------------


def test_migrate_applies_each_step_once(make_store):
    store = make_store(migrate=False)
    assert store.db.schema_version() == 0  # an empty database

    assert store.db.migrate() == ALL_STEPS
    assert store.db.migrate() == []
    assert make_store(migrate=False).db.migrate() == []  # another process, later
    assert store.db.schema_version() == migrations.LATEST == 6

    with store.db.engine.connect() as conn:
        names = set(inspect(conn).get_table_names())
        migrated = conn.execute(select(tables.schema_migrations.c.version)).scalars().all()
    assert {"schema_migrations", "deliveries", "decisions", "actions", "attempts", "rooms",
            "timers", "rules_versions", "workers", "sweeps"} <= names
    assert migrated == [1, 2, 3, 4, 5, 6]


def test_a_workers_breaker_report_replaces_the_last_and_old_workers_are_forgotten(store, clock):
    """One row per worker, replaced by each report; a worker not heard from for FORGET_AFTER is
    dropped by the next report of any worker."""
    from service.store.workers import FORGET_AFTER

    store.workers.report_worker("w-old", T0, "closed", 0, None, None)
    store.workers.report_worker("w-1", T0 + 1, "closed", 0, None, None)
    clock.now = T0 + 10
    store.workers.report_worker("w-1", T0 + 1, "open", 5, T0 + 9, T0 + 14)
    assert [(w["worker_id"], w["breaker_state"], w["breaker_failures"], w["breaker_opened_at"], w["next_probe_at"],
             w["seen_at"]) for w in store.pages.workers_seen(T0 + 5)] == [("w-1", "open", 5, T0 + 9, T0 + 14, T0 + 10)]
    assert [w["worker_id"] for w in store.pages.workers_seen(T0)] == ["w-1", "w-old"]  # newest start first
    clock.now = T0 + FORGET_AFTER + 5
    store.workers.report_worker("w-1", T0 + 1, "closed", 0, None, None)
    assert [w["worker_id"] for w in store.pages.workers_seen(0)] == ["w-1"]


def _schema(conn, schema: str | None = None) -> dict:
    """Every table of the store as the database reports it: columns, keys, indexes."""
    found = inspect(conn)
    described = {}
    for table in sorted(tables.metadata.tables):
        if table == "schema_migrations":
            continue
        indexes = []
        for index in found.get_indexes(table, schema=schema):
            options = {k: str(v) for k, v in index.get("dialect_options", {}).items() if k.endswith("_where")}
            indexes.append((index["name"], tuple(index["column_names"]), bool(index["unique"]), options))
        described[table] = {
            "columns": [(c["name"], str(c["type"]), c["nullable"], c.get("autoincrement") is True,
                         _default(c.get("default"), schema), bool(c.get("identity")))
                        for c in found.get_columns(table, schema=schema)],
            "primary": found.get_pk_constraint(table, schema=schema)["constrained_columns"],
            "foreign": sorted((tuple(f["constrained_columns"]), f["referred_table"], tuple(f["referred_columns"]),
                               tuple(sorted(f.get("options", {}).items())))
                              for f in found.get_foreign_keys(table, schema=schema)),
            "unique": sorted(tuple(u["column_names"]) for u in found.get_unique_constraints(table, schema=schema)),
            "indexes": sorted(indexes),
        }
    return described


def _default(default: str | None, schema: str | None) -> str | None:
    # A SERIAL column's default names its sequence, which is qualified outside the default schema.
    return default.replace(f"{schema}.", "") if default and schema else default


def test_the_migration_steps_build_exactly_what_tables_py_declares(make_store, database_url, tmp_path):
    """The steps are frozen SQL; tables.py is what the code's statements are built from. A change
    to tables.py without a new step (or a step edited after release) fails here."""
    from sqlalchemy import create_engine, text

    store = make_store()
    declared_engine = None
    try:
        if backend(database_url) == "sqlite":
            declared_engine = create_engine(f"sqlite:///{tmp_path}/declared.db")
            with declared_engine.begin() as conn:
                tables.metadata.create_all(conn)
            with declared_engine.connect() as conn:
                declared = _schema(conn)
        else:
            with store.db.engine.begin() as conn:
                conn.execute(text("CREATE SCHEMA declared"))
                tables.metadata.create_all(conn.execution_options(schema_translate_map={None: "declared"}))
            with store.db.engine.connect() as conn:
                declared = _schema(conn, "declared")
        with store.db.engine.connect() as conn:
            migrated = _schema(conn)
    finally:
        if declared_engine is not None:
            declared_engine.dispose()
        else:
            with store.db.engine.begin() as conn:
                conn.execute(text("DROP SCHEMA IF EXISTS declared CASCADE"))
    assert migrated.keys() == declared.keys() and len(migrated) == 10
    for table in declared:
        assert migrated[table] == declared[table], table


def test_step_2_upgrades_a_store_of_step_1_and_keeps_its_rows(make_store, monkeypatch):
    store = make_store(migrate=False)
    monkeypatch.setattr(migrations, "STEPS", migrations.STEPS[:1])  # the release before step 2
    assert store.db.migrate() == ALL_STEPS[:1]
    with store.db.engine.begin() as conn:
        conn.execute(text("INSERT INTO deliveries (id, received_at, event_type, known, verified, "
                          "body_sha256, body, rules_hash) VALUES ('d1', 1.0, 'session-ended', "
                          "true, true, 'x', '{}', 'h')"))
    monkeypatch.undo()

    assert store.db.migrate() == ALL_STEPS[1:]
    with store.db.engine.connect() as conn:
        rows = conn.execute(text("SELECT id, problem FROM deliveries")).all()
        assert conn.execute(text("SELECT count(*) FROM inbox")).scalar() == 0
    assert [tuple(row) for row in rows] == [("d1", None)]


def test_concurrent_migrations_all_succeed_and_apply_once(make_store):
    stores = [make_store(migrate=False) for _ in range(4)]
    # Each store has connected once (an empty database still: no schema), so what races
    # below is the migrations. Racing *first connections* to a new SQLite file is a bug of
    # its own: see test_first_connection_to_a_new_sqlite_file_waits_for_a_writer.
    for store in stores:
        assert store.db.schema_version() == 0

    results = run_threads(len(stores), lambda i: stores[i].db.migrate())

    errors = [r for r in results if isinstance(r, BaseException)]
    assert errors == []
    assert sorted(results, key=len) == [[], [], [], ALL_STEPS]
    assert stores[0].db.schema_version() == 6
    with stores[0].db.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(tables.schema_migrations)).scalar() == 6


def test_first_connection_to_a_new_sqlite_file_waits_for_a_writer(make_store, database_url,
                                                                  monkeypatch):
    if backend(database_url) != "sqlite":
        pytest.skip("SQLite's journal mode; PostgreSQL has none to set")
    monkeypatch.setattr(store_database, "SQLITE_BUSY_TIMEOUT_MS", 60_000)  # ample: the lock goes first
    store = make_store(migrate=False)  # no connection made yet
    writer = sqlite3.connect(make_url(database_url).database, isolation_level=None,
                             check_same_thread=False)  # released by the timer thread
    writer.execute("BEGIN IMMEDIATE")  # another process writing, before WAL was ever set
    # The writer commits soon; a store that waits as promised then connects. (An ordering,
    # not a measurement: a store that does not wait has failed long before.)
    release = threading.Timer(0.5, writer.rollback)
    release.start()
    try:
        store.db.ping()  # with the bug: StoreUnavailable('store unavailable: database is locked')
    finally:
        release.join(THREAD_JOIN_LIMIT)
        writer.close()

    assert store.db.migrate() == ALL_STEPS


# -- the inbox ------------------------------------------------------------------------------


def decided_plainly(batch, row: InboxRow, **fields) -> Receipt:
    """Record an inbox row as a delivery of its own room, deciding nothing."""
    return batch.record(row, new_delivery(id=row.id, at=row.received_at, room_id=row.room_id,
                                          body=row.body, **fields), PlanWrite(None))


@pytest.mark.attack("read the SQLite file as another local user")
def test_a_new_sqlite_store_and_its_new_directories_are_readable_by_the_owner_only(tmp_path):
    """Issue 15: the file holds every webhook body. A new file, its WAL and shared-memory files,
    the writers' lock file and each directory made for them are the owner's alone; a directory
    that was there keeps its mode."""
    import os
    import stat as st

    os.chmod(tmp_path, 0o755)
    path = tmp_path / "made" / "for-it" / "roomwarden.db"
    store = Store.from_url(f"sqlite:///{path}", Clock(T0))
    try:
        store.db.migrate()
        store.inbox.append(inbox_item())  # the appender's own connection, and the writers' lock
        modes = {p.name: st.S_IMODE(os.stat(p).st_mode) for p in (
            path.parent.parent, path.parent, path, path.with_name(path.name + "-wal"),
            path.with_name(path.name + "-shm"), path.with_name(path.name + "-writers.lock"))}
    finally:
        store.close()
    assert modes == {"made": 0o700, "for-it": 0o700, "roomwarden.db": 0o600, "roomwarden.db-wal": 0o600,
                     "roomwarden.db-shm": 0o600, "roomwarden.db-writers.lock": 0o600}
    assert st.S_IMODE(os.stat(tmp_path).st_mode) == 0o755


def test_append_then_deciding_hands_out_the_oldest_rows_in_arrival_order(store):
    items = [
        inbox_item(at=T0 + 5, room_id="room-2"),
        inbox_item(at=T0 + 1, room_id="room-1"),  # arrived later, with an earlier clock: still second
        inbox_item(at=T0 + 6, room_id=None, body='{"webhookType": "x", "data": {"name": "Zoë ✓"}}'),
        inbox_item(at=T0 + 7, room_id="room-2", signature="c2lnbmF0dXJl", verified=None),  # no key yet
        inbox_item(at=T0 + 8, verified=False),  # verification off
    ]
    for item in items:
        store.inbox.append(item)

    with store.inbox.deciding(10) as batch:
        rows = batch.rows
    with store.inbox.deciding(2) as batch:
        oldest = batch.rows

    assert [InboxItem(**{k: v for k, v in r.__dict__.items() if k != "seq"}) for r in rows] == items
    assert all(isinstance(r, InboxRow) for r in rows)
    assert [r.seq for r in rows] == sorted({r.seq for r in rows})  # strictly increasing
    assert oldest == rows[:2]
    assert inbox_ids(store) == [i.id for i in items]  # taking them decides nothing
    assert row_counts(store) == counts()


def test_a_kept_row_stays_and_comes_back_first(store):
    a, b, c = (inbox_item(at=T0 + i, room_id=f"room-{i}") for i in range(3))
    for item in (a, b, c):
        store.inbox.append(item)

    with store.inbox.deciding(10) as batch:
        first, second, third = batch.rows
        batch.keep(first)
        decided_plainly(batch, second)
        decided_plainly(batch, third)
    d = inbox_item(at=T0 + 3)
    store.inbox.append(d)

    assert inbox_ids(store) == [a.id, d.id]
    with store.inbox.deciding(1) as batch:
        assert [r.id for r in batch.rows] == [a.id]  # first, ahead of what came after
    with store.inbox.deciding(10) as batch:
        assert [r.id for r in batch.rows] == [a.id, d.id]
    assert {x["id"] for x in store.history.deliveries()} == {b.id, c.id}


def test_recorded_rows_leave_the_inbox_in_the_transaction_that_records_them(store, make_store):
    a, b = inbox_item(room_id="room-1"), inbox_item(room_id="room-2")
    store.inbox.append(a)
    store.inbox.append(b)
    other = make_store()  # another process's view

    with store.inbox.deciding(10) as batch:
        row_a, row_b = batch.rows
        decided_plainly(batch, row_a)
        batch.keep(row_b)
        # not committed yet: elsewhere, a is still undecided and not a delivery
        assert inbox_ids(other) == [a.id, b.id] and other.history.delivery(a.id) is None

    assert inbox_ids(other) == [b.id]  # committed together: out of the inbox, into deliveries
    assert other.history.delivery(a.id) is not None
    assert row_counts(other) == counts(deliveries=1)


# A trigger that makes the inbox refuse every delete, as a failure between recording and removing.
REFUSE_INBOX_DELETES = {
    "sqlite": ["CREATE TRIGGER refuse BEFORE DELETE ON inbox BEGIN SELECT RAISE(ABORT, 'refused'); END"],
    "postgresql": ["CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS "
                   "$$ BEGIN RAISE EXCEPTION 'refused'; END $$",
                   "CREATE TRIGGER refuse BEFORE DELETE ON inbox FOR EACH ROW "
                   "EXECUTE FUNCTION refuse()"],
}


def test_a_recorded_row_that_cannot_leave_the_inbox_is_not_recorded_either(store, database_url):
    """The record and the removal are one transaction: when removing the row fails, the
    delivery is not recorded either, so it is neither lost nor decided twice."""
    a = inbox_item(room_id="room-1")
    store.inbox.append(a)
    with store.db.engine.begin() as conn:
        for statement in REFUSE_INBOX_DELETES[backend(database_url)]:
            conn.execute(text(statement))

    with pytest.raises(SQLAlchemyError, match="refused"):
        with store.inbox.deciding(10) as batch:
            [row] = batch.rows
            batch.record(row, new_delivery(id=row.id, room_id=row.room_id),
                         PlanWrite({"n": 1}, (new_decision("k-a"),)))

    assert inbox_ids(store) == [a.id]
    assert store.history.delivery(a.id) is None and row_counts(store) == counts()


def test_an_exception_inside_deciding_keeps_every_row_and_writes_nothing(store):
    a, b = inbox_item(room_id="room-1"), inbox_item(room_id="room-2")
    store.inbox.append(a)
    store.inbox.append(b)

    with pytest.raises(RuntimeError, match="the decider fell over"):
        with store.inbox.deciding(10) as batch:
            for row in batch.rows:
                stored, _, _ = batch.room_inputs(row.room_id)
                batch.record(row, new_delivery(id=row.id, room_id=row.room_id),
                             PlanWrite({"n": 1}, (new_decision(f"k-{row.id}", room_id=row.room_id),)))
            raise RuntimeError("the decider fell over")

    assert inbox_ids(store) == [a.id, b.id]
    assert row_counts(store) == counts()
    with store.inbox.deciding(10) as batch:  # and the next decider takes them all again, in order
        assert [r.id for r in batch.rows] == [a.id, b.id]
        for row in batch.rows:
            decided_plainly(batch, row)
    assert inbox_ids(store) == [] and row_counts(store) == counts(deliveries=2)


def test_inbox_stats_and_has_undecided_follow_what_waits(store):
    assert store.inbox.inbox_stats() == (0, None) and store.inbox.has_undecided() is False
    late, early = inbox_item(at=T0 + 5), inbox_item(at=T0 + 2, room_id="room-2")
    store.inbox.append(late)
    store.inbox.append(early)  # arrived second, with the earlier clock: the oldest to have arrived

    assert store.inbox.inbox_stats() == (2, T0 + 2) and store.inbox.has_undecided() is True

    with store.inbox.deciding(10) as batch:
        kept, taken = batch.rows
        batch.keep(kept)  # a kept row still waits
        decided_plainly(batch, taken)
    assert store.inbox.inbox_stats() == (1, T0 + 5) and store.inbox.has_undecided() is True

    with store.inbox.deciding(10) as batch:
        decided_plainly(batch, batch.rows[0])
    assert store.inbox.inbox_stats() == (0, None) and store.inbox.has_undecided() is False


def test_postgresql_deciders_claim_rooms_not_rows(make_store, database_url):
    """While one decider holds a room, another takes every other room's rows and none of that
    room's, not even the ones the first did not take; the first room's next row comes later, in
    order."""
    if backend(database_url) != "postgresql":
        pytest.skip("SQLite: one decider at a time holds the whole database")
    first, second = make_store(), make_store()
    r1, s1, r2, s2 = (inbox_item(room_id=room) for room in ("room-r", "room-s", "room-r", "room-s"))
    for item in (r1, s1, r2, s2):
        first.inbox.append(item)

    with first.inbox.deciding(1) as held:
        assert [r.id for r in held.rows] == [r1.id]
        with second.inbox.deciding(10) as other:
            assert [r.id for r in other.rows] == [s1.id, s2.id]
            for row in other.rows:
                decided_plainly(other, row)
        decided_plainly(held, held.rows[0])

    with second.inbox.deciding(10) as batch:
        assert [r.id for r in batch.rows] == [r2.id]
        decided_plainly(batch, batch.rows[0])
    assert inbox_ids(first) == []


def test_postgresql_deciders_decide_each_delivery_once_and_each_room_in_order(make_store, database_url):
    """8 deciders, each its own store (as processes would be), run while deliveries for 3 rooms
    are appended one after the other: no room is in two deciders' hands at once, every delivery
    is decided exactly once, and each room's deliveries are recorded in their arrival order
    (each plan appends its delivery to the room's state, so the state is the record order)."""
    if backend(database_url) != "postgresql":
        pytest.skip("SQLite: the worker is the one decider")
    n_deciders, n_rows, rooms = 8, 240, ["room-a", "room-b", "room-c"]
    appender = make_store()
    deciders = [make_store() for _ in range(n_deciders)]
    items = [inbox_item(at=T0 + i, room_id=rooms[(i // 2) % len(rooms)]) for i in range(n_rows)]
    all_appended = threading.Event()
    guard = threading.Lock()
    holding: dict[str, int] = {}  # room -> the decider inside a transaction holding it
    clashes: list[tuple[str, int, int]] = []

    def append_all() -> None:
        try:
            for item in items:
                appender.inbox.append(item)  # committed before the next: arrival order is this order
        finally:
            all_appended.set()

    def decide(i: int) -> list[str]:
        store, mine = deciders[i], []
        while True:
            finished = all_appended.is_set()  # read before looking at the inbox
            with store.inbox.deciding(7) as batch:
                taken = {row.room_id for row in batch.rows}
                with guard:
                    clashes.extend((room, holding[room], i) for room in taken if room in holding)
                    holding.update(dict.fromkeys(taken, i))
                try:
                    for row in batch.rows:
                        stored, _, _ = batch.room_inputs(row.room_id)
                        delivery = new_delivery(id=row.id, at=row.received_at, room_id=row.room_id)
                        order = [*stored.get("order", []), row.id]  # the room's record order
                        batch.record(row, delivery, PlanWrite({"order": order}))
                        mine.append(row.id)
                finally:
                    with guard:  # let go before the commit lets go of the lock: never a false clash
                        for room in taken:
                            if holding.get(room) == i:
                                del holding[room]
            if finished and not batch.rows and not store.inbox.has_undecided():
                return mine

    results: list[object] = []
    threads = [start_thread(append_all, results)]
    threads += [start_thread(lambda i=i: decide(i), results) for i in range(n_deciders)]
    for thread in threads:
        thread.join(THREAD_JOIN_LIMIT)
    assert not any(t.is_alive() for t in threads), "a decider hung"

    assert [r for r in results if isinstance(r, BaseException)] == []
    assert clashes == []
    decided = [delivery_id for r in results if isinstance(r, list) for delivery_id in r]
    assert sorted(decided) == sorted(i.id for i in items)  # each exactly once
    for room in rooms:
        assert appender.history.room(room)["state"]["order"] == [i.id for i in items if i.room_id == room]
    assert inbox_ids(appender) == []
    assert row_counts(appender) == counts(deliveries=n_rows, rooms=len(rooms))


# -- ingest: deliveries, decisions, actions -------------------------------------------------


def test_ingest_writes_delivery_decisions_and_actions(store):
    delivery = new_delivery(at=T0 + 5, participant_id="p-1")
    trace = Trace("eq", True, field="event", operand="session-ended", actual="session-ended")
    first = new_decision("k-1", trace=trace)
    second = new_decision("k-2", rule="close-long-recordings", room_id="rec-2", session_id=None,
                          confirm="active-participants")

    receipt = record(store, delivery, [first, second])

    assert isinstance(receipt, Receipt)
    assert receipt.delivery_id == delivery.id
    assert receipt.cancelled == ()
    assert [(d.rule, d.action, d.outcome) for d in receipt.decisions] == [
        ("close-after-session", "deactivate", "scheduled"),
        ("close-long-recordings", "deactivate", "scheduled"),
    ]
    ids = [d.action_id for d in receipt.decisions]
    assert None not in ids and len(set(ids)) == 2

    assert store.history.delivery(delivery.id) == delivery.__dict__

    rows = store.history.decisions(delivery_id=delivery.id)
    assert [(r["rule"], r["room_id"], r["session_id"], r["action_key"], r["outcome"],
             r["action_id"], r["timer_id"], r["trace"], r["created_at"]) for r in rows] == [
        ("close-after-session", "room-1", "sess-1", "k-1", "scheduled", ids[0], None, trace.to_dict(), T0 + 5),
        ("close-long-recordings", "rec-2", None, "k-2", "scheduled", ids[1], None, None, T0 + 5),
    ]

    for action_id, decision in zip(ids, (first, second)):
        action = store.actions.action(action_id)
        assert {k: action[k] for k in ("key", "kind", "room_id", "session_id", "rule",
                                       "delivery_id", "status", "confirm", "attempts", "due_at",
                                       "lease_owner", "lease_until", "last_status",
                                       "last_error")} == {
            "key": decision.key, "kind": "deactivate", "room_id": decision.room_id,
            "session_id": decision.session_id, "rule": decision.rule, "delivery_id": delivery.id,
            "status": "pending", "confirm": decision.confirm, "attempts": 0, "due_at": T0 + 5,
            "lease_owner": None, "lease_until": None, "last_status": None, "last_error": None,
        }
    assert row_counts(store) == counts(deliveries=1, decisions=2, actions=2, rooms=1)


@pytest.mark.parametrize("delivery", [
    # an event type the service does not know, with no room, session or participant
    new_delivery(event_type="something-new", room_id=None, session_id=None, known=False),
    # an unverified delivery whose body is not ASCII
    new_delivery(verified=False, body='{"data": {"name": "Zoë’s room ✓"}}'),
    # a received_at with a fraction of a second, kept exactly
    new_delivery(at=T0 + 0.123456),
    # a known type kept unread: its problem, and the ids that were valid
    new_delivery(event_type="participant-left", participant_id=None,
                 problem="data.participantId: Missing data for required field."),
], ids=["unknown-event", "unicode-body", "fractional-time", "kept-unread"])
def test_delivery_round_trips_exactly(store, delivery):
    record(store, delivery)

    assert store.history.delivery(delivery.id) == delivery.__dict__


def test_delivery_with_no_decisions(store):
    delivery = new_delivery()

    receipt = record(store, delivery)

    assert receipt == Receipt(delivery.id, ())
    assert store.history.delivery(delivery.id) is not None
    assert store.history.decisions(delivery_id=delivery.id) == []
    assert row_counts(store) == counts(deliveries=1, rooms=1)


@pytest.mark.parametrize("same_delivery", [
    False,  # the key came back in a later delivery (VideoSDK re-sent the event, say)
    True,   # two decisions in one delivery share a key
], ids=["later-delivery", "same-delivery"])
def test_repeated_action_key_is_a_duplicate_of_the_first_action(store, same_delivery):
    first = new_delivery(at=T0)
    if same_delivery:
        receipt = record(store, first, [new_decision("k"), new_decision("k")])
        outcomes = receipt.decisions
        second = first
    else:
        second = new_delivery(at=T0 + 60)
        outcomes = (record(store, first, [new_decision("k")]).decisions
                    + record(store, second, [new_decision("k")]).decisions)

    assert [d.outcome for d in outcomes] == ["scheduled", "duplicate"]
    assert outcomes[0].action_id is not None
    assert outcomes[1].action_id == outcomes[0].action_id

    [action] = store.actions.actions()
    assert action["id"] == outcomes[0].action_id
    assert action["delivery_id"] == first.id and action["due_at"] == T0  # the first one's, untouched
    last = store.history.decisions(delivery_id=second.id)[-1]
    assert (last["outcome"], last["action_id"], last["action_key"]) == (
        "duplicate", outcomes[0].action_id, "k")
    assert row_counts(store)["actions"] == 1


def test_dry_run_actions_are_recorded_but_never_claimed(store, clock):
    receipt = record(store, new_delivery(), [new_decision("k-1", outcome="dry-run"),
                                             new_decision("k-2", outcome="dry-run")])
    again = record(store, new_delivery(), [new_decision("k-1", outcome="dry-run")])

    assert [d.outcome for d in receipt.decisions] == ["dry-run", "dry-run"]
    assert [(d.outcome, d.action_id) for d in again.decisions] == [
        ("duplicate", receipt.decisions[0].action_id)]
    assert [a["status"] for a in store.actions.actions()] == ["dry-run", "dry-run"]
    assert [r["outcome"] for r in store.history.decisions(delivery_id=receipt.delivery_id)] == [
        "dry-run", "dry-run"]
    assert store.actions.counts() == {"dry-run": 2}

    for later in (0.0, 3600.0, 86400.0 * 365):
        clock.now = T0 + later
        assert store.outbox.claim("w", LEASE, MAX_ATTEMPTS) is None
    assert [a["attempts"] for a in store.actions.actions()] == [0, 0]


@pytest.mark.parametrize("outcome", [
    "protected",      # the room is in settings.protect: recorded, never acted on
    "duplicate",      # the planner already knew the key was taken
    "timer-running",  # the planner already knew a timer was pending
])
def test_decisions_that_act_on_nothing_create_no_action_and_no_timer(store, outcome):
    [existing] = schedule(store, "k-taken")

    receipt = record(store, new_delivery(), [new_decision("k-taken" if outcome == "duplicate"
                                                          else "k-other", outcome=outcome)])

    [decision] = receipt.decisions
    assert decision.outcome == outcome
    # a duplicate points at the action that took the key; the others at nothing
    assert decision.action_id == (existing if outcome == "duplicate" else None)
    assert [a["id"] for a in store.actions.actions()] == [existing]
    assert store.history.timers() == []


def test_concurrent_deliveries_with_one_key_schedule_one_action(make_store):
    n = 8
    stores = [make_store() for _ in range(n)]
    deliveries = [new_delivery(at=T0 + i) for i in range(n)]

    results = run_threads(n, lambda i: record(stores[i], deliveries[i], [new_decision("shared-key")]))

    errors = [r for r in results if isinstance(r, BaseException)]
    assert errors == []
    outcomes = [r.decisions[0] for r in results]
    assert sorted(d.outcome for d in outcomes) == ["duplicate"] * (n - 1) + ["scheduled"]
    assert len({d.action_id for d in outcomes}) == 1
    assert row_counts(stores[0]) == counts(deliveries=n, decisions=n, actions=1, rooms=1)


def _raise_in_plan() -> PlanWrite:
    raise RuntimeError("a bug in the planner")


# A failure part-way through ingest: the delivery row, the room row, and the first decision's
# action and decision row are already written in the transaction when the failure comes.
FAILING_PLANS = [
    # a key longer than the column (VARCHAR(400)); SQLite does not enforce lengths
    pytest.param(lambda good: PlanWrite({"n": 1}, (good, new_decision("x" * 401))),
                 (DataError,), "postgresql", id="key-too-long"),
    # an action kind of NULL violates NOT NULL in the actions table
    pytest.param(lambda good: PlanWrite({"n": 1}, (good, new_decision("k-bad", action=None))),
                 (IntegrityError,), None, id="null-action-kind"),
    # a trace that cannot be stored as JSON fails as the decision row is written (SQLAlchemy
    # wraps the TypeError on SQLite; psycopg's JSON adapter raises it bare on PostgreSQL)
    pytest.param(lambda good: PlanWrite({"n": 1}, (good, new_decision(
        "k-bad", trace=Trace("in", True, field="x", operand={1, 2}, actual=1)))), (StatementError, TypeError), None,
        id="trace-not-json"),
    # a room state that cannot be stored as JSON, with the decision after it
    pytest.param(lambda good: PlanWrite({"not json": {1, 2}}, (good,)),
                 (StatementError, TypeError), None, id="room-state-not-json"),
    # a timer with no due time violates NOT NULL in the timers table
    pytest.param(lambda good: PlanWrite({"n": 1}, (good, new_decision("k-timer",
                                                                    outcome="timer-started"))),
                 (IntegrityError,), None, id="timer-without-due-time"),
    # the plan callback itself raises: whatever it raises comes out, and nothing is kept
    pytest.param(lambda good: _raise_in_plan(), (RuntimeError,), None, id="plan-raises"),
]


@pytest.mark.parametrize("make_write, raises, only_on", FAILING_PLANS)
def test_failure_inside_ingest_writes_nothing(store, database_url, make_write, raises, only_on):
    if only_on and backend(database_url) != only_on:
        pytest.skip(f"only {only_on} rejects this")
    earlier = new_delivery(at=T0 - 10)
    record(store, earlier, [new_decision("k-earlier")])
    before = row_counts(store)
    failing = new_delivery(at=T0, room_id="room-new")  # a room not seen before, too
    good = new_decision("k-good", room_id="room-new")

    with pytest.raises(raises) as caught:
        ingest(store, failing, lambda *_: make_write(good))

    assert not isinstance(caught.value, StoreUnavailable)  # a bad input is a bug, not an outage
    assert row_counts(store) == before
    assert store.history.delivery(failing.id) is None
    assert store.history.decisions(delivery_id=failing.id) == []
    assert store.history.room("room-new") is None  # the room row made to lock it is rolled back too
    assert [a["key"] for a in store.actions.actions()] == ["k-earlier"]
    # The accepted delivery is not lost with the decision: it waits in the inbox, undecided.
    assert inbox_ids(store) == [failing.id]
    assert store.inbox.inbox_stats() == (1, T0) and store.inbox.has_undecided()
    # The rolled-back action key is free again, and the store works after the failure: the
    # next try decides the row that waited.
    retried = decide_kept(store, failing, lambda *_: PlanWrite(None, (good,)))
    assert [d.outcome for d in retried.decisions] == ["scheduled"]
    assert inbox_ids(store) == [] and store.history.delivery(failing.id) == failing.__dict__


def test_duplicate_delivery_id_raises_and_keeps_the_first_intact(store):
    """A repeated id reaching the decider (the first already decided): recording it fails, the
    plan made for it is thrown away with the whole transaction, the first is untouched, and the
    repeat stays in the inbox, never half-decided."""
    first = new_delivery(id="d" * 32, body='{"first": true}')
    receipt = record(store, first, [new_decision("k-1")], room_state={"n": 1})
    before = row_counts(store)
    second = new_delivery(id=first.id, at=T0 + 1, body='{"second": true}')
    seen = Plans()

    with pytest.raises(IntegrityError):
        record(store, second, [new_decision("k-2"), new_decision("k-1")], room_state={"n": 2},
               seen=seen)

    assert row_counts(store) == before
    assert store.history.delivery(first.id) == first.__dict__
    assert [(r["action_key"], r["outcome"]) for r in store.history.decisions(delivery_id=first.id)] == [
        ("k-1", "scheduled")]
    assert [(a["id"], a["key"]) for a in store.actions.actions()] == [(receipt.decisions[0].action_id, "k-1")]
    assert store.history.room("room-1")["state"] == {"n": 1}
    # Planned (the decider asks the planner before it writes), but nothing of the plan was kept.
    assert seen.calls == [({"n": 1}, [], {"k-1"})]
    assert inbox_ids(store) == [second.id]


def test_duplicate_delivery_id_still_in_the_inbox_is_refused_at_append(store, database_url):
    """A repeated id while the first still waits to be decided: the inbox refuses it before
    anything is planned, and the first's row is untouched."""
    first = inbox_item(id="d" * 32, body='{"first": true}')
    store.inbox.append(first)
    second = new_delivery(id=first.id, at=T0 + 1, body='{"second": true}')
    seen = Plans()

    # The SQLite inbox appends through a plain sqlite3 connection (inbox.SqliteAppender).
    raised = sqlite3.IntegrityError if backend(database_url) == "sqlite" else IntegrityError
    with pytest.raises(raised):
        record(store, second, [new_decision("k-2")], room_state={"n": 2}, seen=seen)

    assert seen.calls == []  # refused before anything was planned
    with store.inbox.deciding(10) as batch:
        assert [(r.id, r.body, r.received_at) for r in batch.rows] == [(first.id, '{"first": true}', T0)]
    assert row_counts(store) == counts()


def test_listing_reads_filter_and_order(store):
    # ids as the service makes them: time-ordered, so "newest first" is by id
    older = new_delivery(id=new_delivery_id(T0), at=T0, room_id="room-a")
    newer = new_delivery(id=new_delivery_id(T0 + 1), at=T0 + 1, room_id="room-b")
    record(store, newer, [new_decision("k-b", room_id="room-b", outcome="dry-run")])
    record(store, older, [new_decision("k-a", room_id="room-a")])  # recorded last, still older

    assert [d["id"] for d in store.history.deliveries()] == [newer.id, older.id]  # newest first
    assert [d["id"] for d in store.history.deliveries(limit=1)] == [newer.id]
    assert [d["id"] for d in store.history.deliveries(before=newer.id)] == [older.id]  # the next page
    assert store.history.deliveries(before=older.id) == []
    assert [d["id"] for d in store.history.deliveries(room_id="room-a")] == [older.id]
    assert [d["action_key"] for d in store.history.decisions(room_id="room-b")] == ["k-b"]
    assert [a["key"] for a in store.actions.actions(status="pending")] == ["k-a"]
    assert [a["key"] for a in store.actions.actions(room_id="room-b")] == ["k-b"]
    assert store.actions.action(10_000) is None
    assert store.history.delivery("no-such-delivery") is None
    assert store.history.room("no-such-room") is None
    assert store.actions.counts() == {"pending": 1, "dry-run": 1}


# -- ingest: the room's state and what the plan is handed ------------------------------------


def test_room_state_is_stored_and_handed_to_the_next_plan_for_the_room(store, clock):
    seen = Plans()

    record(store, new_delivery(id="a" * 32, at=T0), room_state={"n": 1, "who": ["p-1"]}, seen=seen)
    record(store, new_delivery(id="b" * 32, at=T0 + 1), room_state={"n": 2, "who": []}, seen=seen)
    record(store, new_delivery(id="c" * 32, at=T0 + 2), room_state=None, seen=seen)  # no change
    record(store, new_delivery(id="d" * 32, at=T0 + 3, room_id="room-2"), room_state={"n": 9},
           seen=seen)
    # an unknown event naming room-1: its plan gets nothing, and what it returns is not stored
    record(store, new_delivery(id="e" * 32, at=T0 + 4, known=False), room_state={"n": -1},
           seen=seen)
    record(store, new_delivery(id="f" * 32, at=T0 + 5), seen=seen)

    assert [stored for stored, _, _ in seen.calls] == [
        {},                          # room-1 is new: an empty state
        {"n": 1, "who": ["p-1"]},    # what the first delivery stored
        {"n": 2, "who": []},         # what the second stored
        {},                          # room-2 is new, and apart from room-1
        None,                        # known=False: no room at all
        {"n": 2, "who": []},         # the third (None) and the fifth (unknown) changed nothing
    ]
    assert store.history.room("room-1") == {"room_id": "room-1", "state": {"n": 2, "who": []},
                                    "updated_at": T0 + 1, "last_delivery_id": "b" * 32, "closed_at": None}
    assert store.history.room("room-2") == {"room_id": "room-2", "state": {"n": 9},
                                    "updated_at": T0 + 3, "last_delivery_id": "d" * 32, "closed_at": None}


def test_unknown_delivery_without_a_room_touches_no_room(store):
    seen = Plans()

    record(store, new_delivery(room_id=None, session_id=None, known=False), room_state={"n": 1},
           seen=seen)

    assert seen.calls == [(None, [], set())]
    assert row_counts(store) == counts(deliveries=1)


def test_a_delivery_kept_unread_is_stored_and_nothing_is_decided_on_it(store, clock):
    _, timer = start_timer(store, "hold|room-1|a", at=T0)
    room_before = store.history.room("room-1")
    seen = Plans()
    unread = new_delivery(at=T0 + 1, event_type="participant-left", participant_id=None,
                          problem="data.participantId: Missing data for required field.")

    # a plan that would change everything, if it were asked
    receipt = record(store, unread, [new_decision("k-unread")], room_state={"n": -1},
                     cancels=[Cancel("hold|room-1|a", "left")], seen=seen)

    assert seen.calls == []  # never asked
    assert receipt == Receipt(unread.id, ())
    assert store.history.delivery(unread.id) == unread.__dict__
    assert store.history.room("room-1") == room_before  # not even its updated_at
    assert [(t["id"], t["status"]) for t in store.history.timers()] == [(timer["id"], "pending")]
    assert store.history.decisions(delivery_id=unread.id) == [] and store.actions.actions() == []
    assert row_counts(store) == counts(deliveries=2, decisions=1, timers=1, rooms=1)


def test_plan_is_handed_the_rooms_pending_timers_and_action_keys_only(store, clock):
    schedule(store, "k-room-1", room_id="room-1")
    schedule(store, "k-dry", room_id="room-1", acts=False)
    schedule(store, "k-room-2", room_id="room-2")
    trigger, timer = start_timer(store, "hold|room-1|a", at=T0 + 1, body='{"trigger": 1}',
                                 verified=False)
    start_timer(store, "hold|room-1|b", at=T0 + 2)
    record(store, new_delivery(at=T0 + 3), cancels=[Cancel("hold|room-1|b", "joined")])
    start_timer(store, "hold|room-2|a", at=T0 + 4, room_id="room-2")
    seen = Plans()

    record(store, new_delivery(at=T0 + 5), seen=seen)

    [(stored, pending, keys)] = seen.calls
    # the cancelled timer and room-2's are not handed over; the trigger comes with the timer
    assert pending == [PendingTimer.from_row(dict(
        id=timer["id"], key="hold|room-1|a", rule="hold", fingerprint="fp-1", room_id="room-1", session_id="sess-1",
        action="deactivate", delivery_id=trigger.id, started_at=T0 + 1, due_at=T0 + 1 + HOLD,
        trigger_body='{"trigger": 1}', trigger_verified=False))]
    assert keys == {"k-room-1", "k-dry"}  # dry-run actions took their key too


def test_concurrent_ingests_for_one_new_room_lose_no_update(make_store):
    n = 8
    stores = [make_store() for _ in range(n)]
    seen: list[dict] = []

    def ingest_one(i: int) -> Receipt:
        def plan(stored, pending, keys) -> PlanWrite:
            seen.append(copy.deepcopy(stored))
            return PlanWrite(room_state={"count": stored.get("count", 0) + 1,
                                         "by": [*stored.get("by", []), i]})
        return ingest(stores[i], new_delivery(at=T0 + i, room_id="room-new"), plan)

    results = run_threads(n, ingest_one)

    errors = [r for r in results if isinstance(r, BaseException)]
    assert errors == []
    state = stores[0].history.room("room-new")["state"]
    assert state["count"] == n  # no increment lost: each plan saw the one before it
    assert sorted(state["by"]) == list(range(n))
    assert sorted(s.get("count", 0) for s in seen) == list(range(n))
    assert row_counts(stores[0]) == counts(deliveries=n, rooms=1)
    assert inbox_ids(stores[0]) == []


# -- ingest: timers --------------------------------------------------------------------------


def test_timer_started_creates_one_pending_timer(store):
    delivery = new_delivery(at=T0 + 7)

    receipt = record(store, delivery, [timer_decision(at=T0 + 7, fingerprint="fp-a")])

    [decision] = receipt.decisions
    assert (decision.outcome, decision.action_id) == ("timer-started", None)
    [timer] = store.history.timers()
    assert timer == {
        "id": timer["id"], "key": TIMER_KEY, "rule": "hold", "fingerprint": "fp-a",
        "room_id": "room-1", "session_id": "sess-1", "action": "deactivate",
        "delivery_id": delivery.id, "started_at": T0 + 7, "due_at": T0 + 7 + HOLD,
        "status": "pending", "resolved_at": None, "resolved_by": None, "reason": None, "notes": None,
    }
    [row] = store.history.decisions(delivery_id=delivery.id)
    assert (row["outcome"], row["action_id"], row["timer_id"]) == ("timer-started", None, None)
    assert store.actions.actions() == []


@pytest.mark.parametrize("same_delivery", [
    False,  # the event came again while the timer runs
    True,   # one delivery started the same key twice
], ids=["later-delivery", "same-delivery"])
def test_second_timer_for_a_pending_key_is_timer_running(store, same_delivery):
    if same_delivery:
        outcomes = record(store, new_delivery(), [timer_decision(), timer_decision()]).decisions
    else:
        outcomes = (record(store, new_delivery(at=T0), [timer_decision(at=T0)]).decisions
                    + record(store, new_delivery(at=T0 + 60), [timer_decision(at=T0 + 60)]).decisions)

    assert [d.outcome for d in outcomes] == ["timer-started", "timer-running"]
    [timer] = store.history.timers()
    assert (timer["started_at"], timer["due_at"]) == (T0, T0 + HOLD)  # the first, untouched
    assert [r["outcome"] for r in store.history.decisions()] == ["timer-started", "timer-running"]


def test_cancel_marks_the_pending_timer_cancelled(store):
    start_timer(store)
    start_timer(store, "hold|room-1|other")
    canceller = new_delivery(at=T0 + 30)

    receipt = record(store, canceller, cancels=[
        Cancel(TIMER_KEY, "its condition stopped holding on participant-joined"),
        Cancel("hold|room-1|none-pending", "nothing to cancel"),  # ignored: no such timer
    ])

    assert receipt.cancelled == (TIMER_KEY,)
    by_key = {t["key"]: t for t in store.history.timers()}
    assert {k: by_key[TIMER_KEY][k] for k in ("status", "reason", "resolved_by", "resolved_at")} == {
        "status": "cancelled", "reason": "its condition stopped holding on participant-joined",
        "resolved_by": canceller.id, "resolved_at": T0 + 30}
    assert by_key["hold|room-1|other"]["status"] == "pending"  # only the named key
    assert [t[0] for t in store.timers.pending_timers_by_rule()] == [by_key["hold|room-1|other"]["id"]]

    again = record(store, new_delivery(at=T0 + 31), cancels=[Cancel(TIMER_KEY, "again")])
    assert again.cancelled == ()  # a cancelled timer is not cancelled twice
    assert store.history.timers(status="cancelled")[0]["resolved_by"] == canceller.id


@pytest.mark.parametrize("same_delivery", [
    False,  # a later event starts the timer again
    True,   # one delivery cancels the old timer and starts a new one (cancels come first)
], ids=["later-delivery", "same-delivery"])
def test_after_a_cancel_the_same_key_can_start_a_new_timer(store, same_delivery):
    _, first = start_timer(store)
    cancel = [Cancel(TIMER_KEY, "joined")]
    restart = [timer_decision(at=T0 + 60)]
    if same_delivery:
        receipt = record(store, new_delivery(at=T0 + 60), restart, cancels=cancel)
    else:
        record(store, new_delivery(at=T0 + 30), cancels=cancel)
        receipt = record(store, new_delivery(at=T0 + 60), restart)

    assert [d.outcome for d in receipt.decisions] == ["timer-started"]
    assert [(t["id"] == first["id"], t["status"], t["due_at"]) for t in store.history.timers(
        room_id="room-1")] == [(True, "cancelled", T0 + HOLD), (False, "pending", T0 + 60 + HOLD)]


# -- fire_due_timer ---------------------------------------------------------------------------


class Decider:
    """A `decide` callback that returns `write` and keeps what it was handed."""

    def __init__(self, write: TimerWrite | Callable[[PendingTimer], TimerWrite]):
        self.write = write
        self.calls: list[tuple[PendingTimer, dict, set[str]]] = []
        self._lock = threading.Lock()

    def __call__(self, row: PendingTimer, state: dict, keys: set[str]) -> TimerWrite:
        with self._lock:
            self.calls.append((row, copy.deepcopy(state), set(keys)))
        return self.write(row) if callable(self.write) else self.write


def fire(key: str = TIMER_KEY, outcome: str = "scheduled", *, room_id: str = "room-1") -> TimerWrite:
    return TimerWrite("fire", "held for 5m", decision=new_decision(key, rule="hold", room_id=room_id,
                                                                  outcome=outcome,
                                                                  fingerprint="fp-1"))


@pytest.mark.parametrize("verified", [
    True,   # a signed trigger: the timer may act
    False,  # an unsigned one: the worker makes it a dry-run
])
def test_fire_due_timer_waits_for_due_at_then_decides_with_what_it_needs(store, clock, verified):
    record(store, new_delivery(at=T0 - 5), room_state={"empty_since": T0 - 5})
    schedule(store, "k-done-before", at=T0 - 4)
    schedule(store, "k-other-room", at=T0 - 4, room_id="room-2")
    trigger, timer = start_timer(store, at=T0, body='{"webhookType": "participant-left"}',
                                 verified=verified)
    decider = Decider(fire())

    for now in (T0, T0 + HOLD - 0.5):  # started; half a second before due
        clock.now = now
        assert store.timers.fire_due_timer(decider) is None
    assert decider.calls == []
    assert store.history.timers()[0]["status"] == "pending"

    clock.now = T0 + HOLD  # exactly due
    write = store.timers.fire_due_timer(decider)

    assert write == fire()
    [(row, state, keys)] = decider.calls
    assert row == PendingTimer.from_row(dict(
        id=timer["id"], key=TIMER_KEY, rule="hold", fingerprint="fp-1", room_id="room-1", session_id="sess-1",
        action="deactivate", delivery_id=trigger.id, started_at=T0, due_at=T0 + HOLD,
        trigger_body='{"webhookType": "participant-left"}', trigger_verified=verified))
    assert state == {"empty_since": T0 - 5}
    assert keys == {"k-done-before"}  # this room's keys only


def test_fire_due_timer_takes_the_most_overdue_first(store, clock):
    _, late = start_timer(store, "hold|room-1|late", at=T0, hold=HOLD)
    _, early = start_timer(store, "hold|room-1|early", at=T0, hold=HOLD - 60)
    _, tie = start_timer(store, "hold|room-2|tie", at=T0, hold=HOLD - 60, room_id="room-2")
    _, future = start_timer(store, "hold|room-1|future", at=T0, hold=HOLD + 60)
    clock.now = T0 + HOLD
    decider = Decider(lambda row: fire(row.key, room_id=row.room_id))

    while store.timers.fire_due_timer(decider) is not None:
        pass

    assert [row.id for row, _, _ in decider.calls] == [early["id"], tie["id"], late["id"]]
    assert [t[0] for t in store.timers.pending_timers_by_rule()] == [future["id"]]


def _existing_action(store):
    return schedule(store, TIMER_KEY, at=T0 + 1)[0]


# verdict, what the timer becomes, the decision recorded (outcome, has an action), the actions
TIMER_VERDICTS = [
    # fired: the rule still holds, an action is queued for the worker
    pytest.param(lambda s: None, fire(outcome="scheduled"),
                 {"status": "fired", "reason": "held for 5m", "resolved_at": T0 + HOLD},
                 ("scheduled", True), ["pending"], id="fire-scheduled"),
    # fired while not acting (dry run, or an unsigned trigger): a dry-run action
    pytest.param(lambda s: None, fire(outcome="dry-run"),
                 {"status": "fired", "reason": "held for 5m", "resolved_at": T0 + HOLD},
                 ("dry-run", True), ["dry-run"], id="fire-dry-run"),
    # fired, but the room became protected: recorded, no action
    pytest.param(lambda s: None, fire(outcome="protected"),
                 {"status": "fired", "reason": "held for 5m", "resolved_at": T0 + HOLD},
                 ("protected", False), [], id="fire-protected"),
    # fired, but the key was taken meanwhile: a duplicate of that action, nothing new
    pytest.param(_existing_action, fire(outcome="scheduled"),
                 {"status": "fired", "reason": "held for 5m", "resolved_at": T0 + HOLD},
                 ("duplicate", True), ["pending"], id="fire-key-taken"),
    # fired with no decision at all
    pytest.param(lambda s: None, TimerWrite("fire", "held for 5m"),
                 {"status": "fired", "reason": "held for 5m", "resolved_at": T0 + HOLD},
                 None, [], id="fire-without-decision"),
    # cancelled: the condition no longer holds; no delivery did it
    pytest.param(lambda s: None, TimerWrite("cancel", "its condition no longer holds"),
                 {"status": "cancelled", "reason": "its condition no longer holds",
                  "resolved_at": T0 + HOLD, "resolved_by": None},
                 None, [], id="cancel"),
    # wait: the rule's `for:` grew in a reload; a new due time, fingerprint and note
    pytest.param(lambda s: None, TimerWrite("wait", "rule 'hold' now waits 10m", due_at=T0 + 2 * HOLD,
                                            fingerprint="fp-2"),
                 {"status": "pending", "due_at": T0 + 2 * HOLD, "fingerprint": "fp-2",
                  "resolved_at": None, "reason": None,
                  "notes": [{"at": T0 + HOLD, "note": "rule 'hold' now waits 10m"}]},
                 None, [], id="wait"),
]


@pytest.mark.parametrize("setup, write, timer_after, decision, action_statuses", TIMER_VERDICTS)
def test_fire_due_timer_applies_the_verdict(store, clock, setup, write, timer_after, decision,
                                            action_statuses):
    trigger, timer = start_timer(store, at=T0)
    existing = setup(store)
    clock.now = T0 + HOLD

    assert store.timers.fire_due_timer(Decider(write)) == write

    [after] = store.history.timers()
    assert {k: after[k] for k in timer_after} == timer_after
    fired = [d for d in store.history.decisions() if d["timer_id"] is not None]
    if decision is None:
        assert fired == []
    else:
        [row] = fired
        outcome, has_action = decision
        assert (row["timer_id"], row["delivery_id"], row["outcome"], row["action_key"],
                row["created_at"]) == (timer["id"], trigger.id, outcome, TIMER_KEY, T0 + HOLD)
        assert (row["action_id"] is not None) == has_action
        if existing is not None:
            assert row["action_id"] == existing
    assert [a["status"] for a in store.actions.actions()] == action_statuses
    if action_statuses and existing is None:  # the action the timer made: its trigger's, due now
        [action] = store.actions.actions()
        assert (action["delivery_id"], action["due_at"], action["key"]) == (
            trigger.id, T0 + HOLD, TIMER_KEY)
    if after["status"] != "pending":
        assert store.timers.fire_due_timer(Decider(fire())) is None  # decided once, for good


def test_a_timer_that_waits_fires_at_its_new_due_time(store, clock):
    start_timer(store, at=T0)
    clock.now = T0 + HOLD
    store.timers.fire_due_timer(Decider(TimerWrite("wait", "longer", due_at=T0 + HOLD + 60)))
    decider = Decider(fire())

    clock.now = T0 + HOLD + 59.5
    assert store.timers.fire_due_timer(decider) is None
    clock.now = T0 + HOLD + 60
    assert store.timers.fire_due_timer(decider) == fire()

    [(row, _, _)] = decider.calls
    assert row.due_at == T0 + HOLD + 60
    assert store.history.timers()[0]["status"] == "fired"


def test_concurrent_fire_due_timer_fires_each_timer_once(make_store):
    n_workers = 8
    clock = Clock(T0 + HOLD)  # fixed: every timer is due
    setup = make_store(clock)
    keys = [f"hold|room-{i % 2}|s-{i}" for i in range(5)]  # two rooms, so some share a room lock
    for key in keys:
        start_timer(setup, key, at=T0, room_id=key.split("|")[1])
    stores = [make_store(clock) for _ in range(n_workers)]
    decider = Decider(lambda row: fire(row.key, room_id=row.room_id))

    def work(i: int) -> int:
        fired = 0
        while stores[i].timers.fire_due_timer(decider) is not None:
            fired += 1
        return fired

    results = run_threads(n_workers, work)

    errors = [r for r in results if isinstance(r, BaseException)]
    assert errors == []
    assert sum(results) == len(keys)
    assert sorted(row.key for row, _, _ in decider.calls) == sorted(keys)  # each decided once
    assert [t["status"] for t in setup.history.timers()] == ["fired"] * len(keys)
    assert sorted(d["timer_id"] for d in setup.history.decisions() if d["timer_id"] is not None) == [
        t["id"] for t in setup.history.timers()]
    assert sorted(a["key"] for a in setup.actions.actions()) == sorted(keys)


def test_firing_a_timer_while_a_delivery_for_its_room_arrives_does_not_deadlock(make_store, database_url,
                                                                                 request):
    clock = Clock(T0 + HOLD + 1)
    setup = make_store(clock)
    start_timer(setup, at=T0)  # room-1's timer, due a second ago
    ingester, firer = make_store(clock), make_store(clock)
    results: list[object] = []
    # After the due time: a delivery in the inbox that came by then would hold the timer back
    # (it may cancel it), and the two would never meet.
    delivery = new_delivery(at=T0 + HOLD + 1)

    def ingest():
        return record(ingester, delivery, room_state={"n": 1})

    def fire_it():
        return firer.timers.fire_due_timer(Decider(fire()))

    if backend(database_url) == "sqlite":
        threads = [start_thread(ingest, results), start_thread(fire_it, results)]
    else:
        # Force the interleaving the bug needs: the delivery holds room-1 and wants the timer
        # while the worker holds the timer and wants room-1. A third session holds room-1
        # until both wait (pg_stat_activity says so), then lets go; the delivery queued first.
        import psycopg

        holder = psycopg.connect(database_url)
        holder.execute("SELECT state FROM rooms WHERE room_id = 'room-1' FOR UPDATE")
        try:
            threads = [start_thread(ingest, results)]
            wait_for_pg_lock_waiters(database_url, 1)
            threads.append(start_thread(fire_it, results))
            wait_for_pg_lock_waiters(database_url, 2)
        finally:
            holder.rollback()
            holder.close()
    for thread in threads:
        thread.join(THREAD_JOIN_LIMIT)
    assert not any(t.is_alive() for t in threads), "a store call hung"

    assert [r for r in results if isinstance(r, BaseException)] == []
    assert setup.history.timers()[0]["status"] == "fired"
    assert setup.history.delivery(delivery.id) is not None


# -- recheck_timer and pending_timers_by_rule ------------------------------------------------------


def test_recheck_wait_keeps_the_timer_and_notes_only_changes(store, clock):
    _, timer = start_timer(store, at=T0, fingerprint="fp-1")
    clock.now = T0 + 10  # not due: a re-check does not wait for due_at

    # (what the re-check decided, the fingerprint and due time after, the notes after)
    steps = [
        # the rule did not change: nothing is written
        (TimerWrite("wait", "unchanged", due_at=T0 + HOLD, fingerprint="fp-1"),
         "fp-1", T0 + HOLD, None),
        # the rule changed and still holds: new fingerprint and due time, and a note
        (TimerWrite("wait", "rule 'hold' changed in a reload; still holds", due_at=T0 + 2 * HOLD,
                    fingerprint="fp-2"),
         "fp-2", T0 + 2 * HOLD,
         [{"at": T0 + 10, "note": "rule 'hold' changed in a reload; still holds"}]),
        # changed again: the note is appended, the first kept
        (TimerWrite("wait", "changed again", due_at=None, fingerprint="fp-3"),
         "fp-3", T0 + 2 * HOLD,  # no due_at: the due time stays
         [{"at": T0 + 10, "note": "rule 'hold' changed in a reload; still holds"},
          {"at": T0 + 10, "note": "changed again"}]),
    ]
    for write, fingerprint, due_at, notes in steps:
        decider = Decider(write)
        assert store.timers.recheck_timer(timer["id"], decider) == write
        assert len(decider.calls) == 1
        [after] = store.history.timers()
        assert (after["status"], after["fingerprint"], after["due_at"], after["notes"]) == (
            "pending", fingerprint, due_at, notes)


def test_recheck_hands_the_decider_the_timer_room_state_and_keys(store, clock):
    record(store, new_delivery(at=T0 - 1), room_state={"n": 3})
    schedule(store, "k-1", at=T0 - 1)
    trigger, timer = start_timer(store, at=T0)
    decider = Decider(TimerWrite("wait", "unchanged"))

    store.timers.recheck_timer(timer["id"], decider)

    [(row, state, keys)] = decider.calls
    assert (row.id, row.delivery_id, row.trigger_body, row.trigger_verified) == (
        timer["id"], trigger.id, trigger.body, True)
    assert (state, keys) == ({"n": 3}, {"k-1"})


@pytest.mark.parametrize("resolve", [
    # fired by the worker
    lambda store, clock: store.timers.fire_due_timer(Decider(fire())),
    # cancelled by a re-check
    lambda store, clock: store.timers.recheck_timer([t[0] for t in store.timers.pending_timers_by_rule()][0],
                                             Decider(TimerWrite("cancel", "rule removed"))),
    # cancelled by a delivery
    lambda store, clock: record(store, new_delivery(at=clock.now),
                                cancels=[Cancel(TIMER_KEY, "joined")]),
], ids=["fired", "cancelled-by-recheck", "cancelled-by-delivery"])
def test_recheck_of_a_timer_no_longer_pending_returns_none(store, clock, resolve):
    _, timer = start_timer(store, at=T0)
    clock.now = T0 + HOLD
    resolve(store, clock)
    before = store.history.timers()
    decider = Decider(fire())

    assert store.timers.recheck_timer(timer["id"], decider) is None
    assert store.timers.recheck_timer(10_000, decider) is None  # no such timer at all

    assert decider.calls == []
    assert store.history.timers() == before
    assert [t[0] for t in store.timers.pending_timers_by_rule()] == []


def test_recheck_cancel_records_why(store, clock):
    _, timer = start_timer(store, at=T0)
    clock.now = T0 + 10

    store.timers.recheck_timer(timer["id"], Decider(TimerWrite("cancel", "rule 'hold' was removed")))

    [after] = store.history.timers()
    assert (after["status"], after["reason"], after["resolved_at"], after["resolved_by"]) == (
        "cancelled", "rule 'hold' was removed", T0 + 10, None)


def test_unknown_timer_verdict_raises_and_changes_nothing(store, clock):
    _, timer = start_timer(store, at=T0)
    before = store.history.timers()

    with pytest.raises(ValueError):
        store.timers.recheck_timer(timer["id"], Decider(TimerWrite("explode", "?")))

    assert store.history.timers() == before


def test_pending_timers_by_rule_lists_pending_timers_in_id_order(store, clock):
    assert [t[0] for t in store.timers.pending_timers_by_rule()] == []
    ids = [start_timer(store, f"hold|room-1|{i}", at=T0)[1]["id"] for i in range(4)]
    record(store, new_delivery(at=T0 + 1), cancels=[Cancel("hold|room-1|1", "joined")])
    clock.now = T0 + HOLD
    store.timers.recheck_timer(ids[2], Decider(TimerWrite("cancel", "removed")))

    assert [t[0] for t in store.timers.pending_timers_by_rule()] == [ids[0], ids[3]]


# -- claim ----------------------------------------------------------------------------------


def _leased_to_another(store, clock):
    schedule(store, "k")
    assert store.outbox.claim("other", LEASE, MAX_ATTEMPTS) is not None


def _finished(outcome):
    def setup(store, clock):
        schedule(store, "k")
        claim = store.outbox.claim("other", LEASE, MAX_ATTEMPTS)
        assert store.outbox.finish(claim, attempt(outcome), "other")
    return setup


@pytest.mark.parametrize("setup", [
    # an empty outbox
    lambda store, clock: None,
    # an action due in the future
    lambda store, clock: schedule(store, "k", at=T0 + 1),
    # a dry-run action, due long ago
    lambda store, clock: schedule(store, "k", at=T0 - 3600, acts=False),
    # an action whose lease, held by another worker, is still running
    _leased_to_another,
    # actions that reached an end
    _finished("done"),
    _finished("failed"),
    _finished("dead"),
    _finished("cancelled"),
], ids=["empty", "not-yet-due", "dry-run", "leased", "done", "failed", "dead", "cancelled"])
def test_claim_returns_none_when_nothing_is_due(store, clock, setup):
    setup(store, clock)
    before = store.actions.actions()

    assert store.outbox.claim("w", LEASE, MAX_ATTEMPTS) is None
    assert store.actions.actions() == before  # looking changed nothing


@pytest.mark.parametrize("now, claimable", [
    (T0 - 0.5, False),  # half a second early
    (T0, True),         # exactly due
    (T0 + 0.5, True),   # overdue
])
def test_claim_respects_due_at(store, clock, now, claimable):
    [action_id] = schedule(store, "k", at=T0)
    clock.now = now

    claim = store.outbox.claim("w", LEASE, MAX_ATTEMPTS)

    assert (claim is not None) == claimable
    assert store.actions.action(action_id)["attempts"] == (1 if claimable else 0)


def test_claim_leases_the_action(store, clock):
    decision = new_decision("k", rule="r", room_id="room-9", session_id="s-9",
                            confirm="active-participants")
    receipt = record(store, new_delivery(at=T0 - 1, room_id="room-9"), [decision])
    action_id = receipt.decisions[0].action_id

    claim = store.outbox.claim("worker-a", LEASE, MAX_ATTEMPTS)

    assert claim == ClaimedAction(id=action_id, key="k", kind="deactivate", room_id="room-9",
                                  session_id="s-9", rule="r", attempts=1, lease_owner="worker-a",
                                  lease_until=T0 + LEASE, confirm="active-participants")
    row = store.actions.action(action_id)
    assert (row["status"], row["lease_owner"], row["lease_until"], row["attempts"],
            row["updated_at"]) == ("pending", "worker-a", T0 + LEASE, 1, T0)


@pytest.mark.parametrize("elapsed, reclaimed", [
    (0.0, False),            # the same instant
    (LEASE - 0.5, False),    # the lease is still running
    (LEASE, False),          # the lease ends at lease_until, not before
    (LEASE + 0.5, True),     # the lease ran out: the worker is presumed dead
])
def test_claimed_action_is_not_claimed_again_until_its_lease_runs_out(store, clock, elapsed,
                                                                      reclaimed):
    [action_id] = schedule(store, "k")
    first = store.outbox.claim("worker-a", LEASE, MAX_ATTEMPTS)
    clock.advance(elapsed)

    second = store.outbox.claim("worker-b", LEASE, MAX_ATTEMPTS)

    if reclaimed:
        assert (second.id, second.attempts, second.lease_owner) == (action_id, 2, "worker-b")
        assert second.lease_until == clock.now + LEASE
        assert store.actions.action(action_id)["lease_owner"] == "worker-b"
    else:
        assert second is None
        assert store.actions.action(action_id)["lease_owner"] == "worker-a"
        assert store.actions.action(action_id)["lease_until"] == first.lease_until


def test_killed_worker_loses_nothing(store, clock):
    [action_id] = schedule(store, "k")
    store.outbox.claim("doomed", LEASE, MAX_ATTEMPTS)  # ... and the worker is killed: no finish, no release
    clock.advance(LEASE + 1)

    claim = store.outbox.claim("survivor", LEASE, MAX_ATTEMPTS)
    assert (claim.id, claim.attempts) == (action_id, 2)
    assert store.outbox.finish(claim, attempt("done"), "survivor") is True

    assert store.actions.action(action_id)["status"] == "done"
    assert [(a["number"], a["worker"]) for a in store.actions.attempts(action_id)] == [(2, "survivor")]


@pytest.mark.parametrize("max_attempts", [
    1,  # a single claim is all an action gets
    3,  # the usual case: a few lost leases, then give up
])
def test_action_whose_claims_never_report_is_marked_dead(store, clock, max_attempts):
    [action_id] = schedule(store, "k")
    for n in range(1, max_attempts + 1):
        claim = store.outbox.claim(f"w{n}", LEASE, max_attempts)
        assert (claim.id, claim.attempts) == (action_id, n)
        clock.advance(LEASE + 1)  # each worker dies holding the lease

    assert store.outbox.claim("w-last", LEASE, max_attempts) is None

    row = store.actions.action(action_id)
    assert (row["status"], row["attempts"], row["lease_owner"], row["lease_until"]) == (
        "dead", max_attempts, None, None)
    assert "gave up" in row["last_error"]
    assert f"{max_attempts} claims ended without a recorded result" in row["last_error"]
    assert store.actions.attempts(action_id) == []
    clock.advance(86400)
    assert store.outbox.claim("w-later", LEASE, max_attempts) is None


def test_action_with_recorded_retries_is_not_marked_dead_before_max_attempts(store, clock):
    [action_id] = schedule(store, "k")
    for n in range(1, 3):
        claim = store.outbox.claim("w", LEASE, 3)
        assert store.outbox.finish(claim, attempt("retry", status=503, next_due_at=clock.now + 1), "w")
        clock.advance(2)

    claim = store.outbox.claim("w", LEASE, 3)
    assert (claim.id, claim.attempts) == (action_id, 3)


def test_claim_marking_an_action_dead_still_hands_out_the_next_due_action(store, clock):
    [exhausted] = schedule(store, "exhausted", at=T0 - 10)
    [due] = schedule(store, "due", at=T0)
    claim = store.outbox.claim("w1", LEASE, 1)
    assert claim.id == exhausted  # the most overdue, first
    clock.advance(LEASE + 1)  # w1 dies

    claim = store.outbox.claim("w2", LEASE, 1)

    assert store.actions.action(exhausted)["status"] == "dead"
    # The docstring: "Lease the most overdue action to `worker`, or return None if none is due."
    assert claim is not None and claim.id == due


def test_claim_hands_out_the_most_overdue_first(store, clock):
    # Scheduled out of order; two share a due time, so the older id goes first between them.
    late = schedule(store, "late", at=T0 - 1)[0]
    early = schedule(store, "early", at=T0 - 30)[0]
    tie_first = schedule(store, "tie-1", at=T0 - 10)[0]
    tie_second = schedule(store, "tie-2", at=T0 - 10)[0]
    future = schedule(store, "future", at=T0 + 60)[0]

    order = []
    while (claim := store.outbox.claim("w", LEASE, MAX_ATTEMPTS)) is not None:
        order.append(claim.id)

    assert order == [early, tie_first, tie_second, late]
    assert store.actions.action(future)["attempts"] == 0


def test_retried_action_goes_behind_those_due_sooner(store, clock):
    first, second = schedule(store, "first", "second", at=T0 - 5)
    claim = store.outbox.claim("w", LEASE, MAX_ATTEMPTS)
    assert claim.id == first
    store.outbox.finish(claim, attempt("retry", status=503, next_due_at=T0 + 10), "w")
    clock.now = T0 + 20

    assert [store.outbox.claim("w", LEASE, MAX_ATTEMPTS).id for _ in range(2)] == [second, first]


# -- claim: per_minute ------------------------------------------------------------------------

PER_MINUTE = 3


@pytest.mark.parametrize("elapsed, claimable", [
    (0.0, False),   # the same instant as the attempts
    (59.5, False),  # still within their minute
    (60.5, True),   # the minute has passed
])
def test_claim_per_minute_waits_while_the_limit_is_reached(store, clock, elapsed, claimable):
    ids = schedule(store, *(f"k-{i}" for i in range(PER_MINUTE + 2)), at=T0)
    for _ in range(PER_MINUTE):
        claim = store.outbox.claim("w", LEASE, MAX_ATTEMPTS, per_minute=PER_MINUTE)
        assert store.outbox.finish(claim, attempt("done", started_at=clock.now), "w")
    clock.advance(elapsed)
    before = store.actions.actions()

    claim = store.outbox.claim("w", LEASE, MAX_ATTEMPTS, per_minute=PER_MINUTE)

    if claimable:
        assert (claim.id, claim.attempts) == (ids[PER_MINUTE], 1)
    else:
        assert claim is None
        assert store.actions.actions() == before  # waiting changed nothing
        # the limit is the only thing in the way: without it, the next action is handed out
        assert store.outbox.claim("w", LEASE, MAX_ATTEMPTS).id == ids[PER_MINUTE]


def test_claim_per_minute_counts_claims_in_flight(store, clock):
    schedule(store, "a", "b", "c", at=T0)
    first = store.outbox.claim("w1", LEASE, MAX_ATTEMPTS, per_minute=2)
    second = store.outbox.claim("w2", LEASE, MAX_ATTEMPTS, per_minute=2)
    assert first is not None and second is not None

    assert store.outbox.claim("w3", LEASE, MAX_ATTEMPTS, per_minute=2) is None  # two in flight

    store.outbox.release(second, "w2")  # given back without a call: it does not count
    third = store.outbox.claim("w3", LEASE, MAX_ATTEMPTS, per_minute=2)
    assert third is not None and third.id == second.id


def test_claim_per_minute_loses_no_action(store, clock):
    n = 2 * PER_MINUTE + 1
    ids = schedule(store, *(f"k-{i}" for i in range(n)), at=T0)
    claimed_per_minute: list[list[int]] = [[]]

    for _ in range(5 * n):  # a bound, so a bug cannot loop forever
        claim = store.outbox.claim("w", LEASE, MAX_ATTEMPTS, per_minute=PER_MINUTE)
        if claim is None:
            if store.actions.counts() == {"done": n}:
                break
            clock.advance(61)
            claimed_per_minute.append([])
            continue
        claimed_per_minute[-1].append(claim.id)
        assert store.outbox.finish(claim, attempt("done", started_at=clock.now), "w")

    assert store.actions.counts() == {"done": n}
    assert [len(c) for c in claimed_per_minute] == [PER_MINUTE, PER_MINUTE, 1]
    assert [i for c in claimed_per_minute for i in c] == ids  # each once, in order
    assert all(store_attempts_single(store, i) for i in ids)


def test_concurrent_claims_respect_per_minute(make_store, database_url, request):
    n_workers, limit = 8, 2
    clock = Clock(T0)
    setup = make_store(clock)
    schedule(setup, *(f"k-{i}" for i in range(n_workers)), at=T0)
    stores = [make_store(clock) for _ in range(n_workers)]

    def claim(i: int):
        return stores[i].outbox.claim(f"w{i}", LEASE, MAX_ATTEMPTS, per_minute=limit)

    if backend(database_url) == "sqlite":
        results = run_threads(n_workers, claim)
    else:
        # Force the interleaving: every claimer counts the load and picks its row, then waits
        # to write it (a third session's SHARE lock on actions blocks UPDATE, not SELECT).
        import psycopg

        holder = psycopg.connect(database_url)
        holder.execute("LOCK TABLE actions IN SHARE MODE")
        try:
            threads, results = [], []
            for i in range(n_workers):
                threads.append(start_thread(lambda i=i: claim(i), results))
            wait_for_pg_lock_waiters(database_url, n_workers)
        finally:
            holder.rollback()
            holder.close()
        for thread in threads:
            thread.join(THREAD_JOIN_LIMIT)
        assert not any(t.is_alive() for t in threads), "a store call hung"

    assert [r for r in results if isinstance(r, BaseException)] == []
    claimed = [r for r in results if r is not None]
    assert len(claimed) == limit  # no more in flight than the limit, and the limit is used
    assert sum(a["attempts"] for a in setup.actions.actions()) == limit


# -- finish ---------------------------------------------------------------------------------


@pytest.mark.parametrize("record_, status, due_at", [
    # the API said yes
    (attempt("done", status=200), "done", T0),
    # the API refused for good (room not found)
    (attempt("failed", status=404, error="room not found"), "failed", T0),
    # transient failure: back to pending, due again later
    (attempt("retry", status=503, error="transient failure", next_due_at=T0 + 120), "pending",
     T0 + 120),
    # no HTTP answer at all, retried
    (attempt("retry", status=None, error="connection refused", next_due_at=T0 + 4), "pending",
     T0 + 4),
    # the policy gave up
    (attempt("dead", status=503, error="gave up after 10 attempts"), "dead", T0),
    # not acted on: the room became protected, or confirm found people in the session
    (attempt("cancelled", status=None, error="room room-1 is protected"), "cancelled", T0),
], ids=["done", "failed", "retry", "retry-no-answer", "dead", "cancelled"])
def test_finish_moves_the_action_and_records_the_attempt(store, clock, record_, status, due_at):
    [action_id] = schedule(store, "k", at=T0)
    claim = store.outbox.claim("w", LEASE, MAX_ATTEMPTS)
    clock.advance(3)

    assert store.outbox.finish(claim, record_, "w") is True

    row = store.actions.action(action_id)
    assert {k: row[k] for k in ("status", "due_at", "lease_owner", "lease_until", "last_status",
                                "last_error", "attempts", "updated_at")} == {
        "status": status, "due_at": due_at, "lease_owner": None, "lease_until": None,
        "last_status": record_.http_status, "last_error": record_.error, "attempts": 1,
        "updated_at": T0 + 3,
    }
    [row] = store.actions.attempts(action_id)
    assert {k: row[k] for k in ("action_id", "number", "worker", "started_at", "latency_ms",
                                "http_status", "outcome", "error", "next_due_at")} == {
        "action_id": action_id, "number": 1, "worker": "w", "started_at": record_.started_at,
        "latency_ms": record_.latency_ms, "http_status": record_.http_status,
        "outcome": record_.outcome, "error": record_.error, "next_due_at": record_.next_due_at,
    }

    clock.now = due_at - 0.5
    assert store.outbox.claim("w2", LEASE, MAX_ATTEMPTS) is None
    clock.now = due_at + 60
    again = store.outbox.claim("w2", LEASE, MAX_ATTEMPTS)
    if status == "pending":
        assert (again.id, again.attempts) == (action_id, 2)
    else:
        assert again is None  # an ended action is never handed out again


def test_finish_keeps_the_attempts_note(store, clock):
    [action_id] = schedule(store, "k")
    claim = store.outbox.claim("w", LEASE, MAX_ATTEMPTS)
    note = "confirm: nobody active in session sess-1"

    store.outbox.finish(claim, AttemptRecord(T0, 1.0, 200, "done", None, None, note=note), "w")

    assert [a["note"] for a in store.actions.attempts(action_id)] == [note]


@pytest.mark.parametrize("late", [
    attempt("done"),                                      # a late success
    attempt("failed", status=404, error="room not found"),  # a late permanent failure
    attempt("retry", status=503, next_due_at=T0 + 3600),  # a late retry, which would push due_at
    attempt("dead", status=503, error="gave up"),         # a late give-up
    attempt("cancelled", status=None, error="protected"),  # a late cancel
], ids=["done", "failed", "retry", "dead", "cancelled"])
def test_finish_by_a_worker_that_lost_its_lease_is_fenced(store, clock, late):
    [action_id] = schedule(store, "k")
    stale = store.outbox.claim("worker-a", LEASE, MAX_ATTEMPTS)
    clock.advance(LEASE + 1)
    current = store.outbox.claim("worker-b", LEASE, MAX_ATTEMPTS)
    before = store.actions.action(action_id)

    assert store.outbox.finish(stale, late, "worker-a") is False

    assert store.actions.action(action_id) == before  # still worker-b's, untouched
    assert before["lease_owner"] == "worker-b" and before["status"] == "pending"
    assert [(a["number"], a["worker"], a["outcome"]) for a in store.actions.attempts(action_id)] == [
        (1, "worker-a", late.outcome)]  # the call was made, so it is recorded anyway

    assert store.outbox.finish(current, attempt("done"), "worker-b") is True
    assert store.actions.action(action_id)["status"] == "done"


def test_finish_after_another_worker_finished_is_fenced(store, clock):
    [action_id] = schedule(store, "k")
    stale = store.outbox.claim("worker-a", LEASE, MAX_ATTEMPTS)
    clock.advance(LEASE + 1)
    current = store.outbox.claim("worker-b", LEASE, MAX_ATTEMPTS)
    assert store.outbox.finish(current, attempt("failed", status=404, error="room not found"), "worker-b")

    assert store.outbox.finish(stale, attempt("done"), "worker-a") is False

    row = store.actions.action(action_id)
    assert (row["status"], row["last_status"], row["last_error"]) == ("failed", 404, "room not found")
    assert [a["worker"] for a in store.actions.attempts(action_id)] == ["worker-b", "worker-a"]


def test_finishing_twice_moves_the_action_once(store, clock):
    [action_id] = schedule(store, "k")
    claim = store.outbox.claim("w", LEASE, MAX_ATTEMPTS)

    assert store.outbox.finish(claim, attempt("retry", status=503, next_due_at=T0 + 60), "w") is True
    assert store.outbox.finish(claim, attempt("done"), "w") is False

    row = store.actions.action(action_id)
    assert (row["status"], row["due_at"]) == ("pending", T0 + 60)
    assert [a["outcome"] for a in store.actions.attempts(action_id)] == ["retry", "done"]


# -- release --------------------------------------------------------------------------------


def test_release_gives_the_action_back_at_once(store, clock):
    [action_id] = schedule(store, "k")
    claim = store.outbox.claim("w", LEASE, MAX_ATTEMPTS)

    store.outbox.release(claim, "w")

    row = store.actions.action(action_id)
    assert (row["status"], row["lease_owner"], row["lease_until"], row["attempts"]) == (
        "pending", None, None, 0)
    assert store.actions.attempts(action_id) == []
    again = store.outbox.claim("other", LEASE, MAX_ATTEMPTS)  # same instant: no lease to wait out
    assert (again.id, again.attempts, again.lease_owner) == (action_id, 1, "other")


def test_released_claims_do_not_count_toward_max_attempts(store, clock):
    [action_id] = schedule(store, "k")
    for _ in range(5):
        claim = store.outbox.claim("w", LEASE, 2)
        assert claim is not None and claim.attempts == 1
        store.outbox.release(claim, "w")

    assert store.actions.action(action_id)["status"] == "pending"


def test_release_by_a_worker_that_lost_its_lease_changes_nothing(store, clock):
    [action_id] = schedule(store, "k")
    stale = store.outbox.claim("worker-a", LEASE, MAX_ATTEMPTS)
    clock.advance(LEASE + 1)
    store.outbox.claim("worker-b", LEASE, MAX_ATTEMPTS)
    before = store.actions.action(action_id)

    store.outbox.release(stale, "worker-a")

    assert store.actions.action(action_id) == before
    assert (before["lease_owner"], before["attempts"]) == ("worker-b", 2)


# -- redrive --------------------------------------------------------------------------------


def _outbox_with_every_status(store, clock) -> dict[str, int]:
    """One action per status: dead twice (a policy give-up, lost claims), and the rest."""
    ids = dict(zip(["dead", "done", "lost", "failed", "cancelled"],
                   schedule(store, "dead", "done", "lost", "failed", "cancelled", at=T0)))
    [ids["pending"]] = schedule(store, "pending", at=T0 + 3600)
    [ids["dry-run"]] = schedule(store, "dry-run", at=T0, acts=False)
    for name, outcome in (("dead", "dead"), ("done", "done")):
        claim = store.outbox.claim("w", LEASE, MAX_ATTEMPTS)
        assert claim.id == ids[name]
        store.outbox.finish(claim, attempt(outcome, status=503, error="gave up"), "w")
    assert store.outbox.claim("w", LEASE, 1).id == ids["lost"]
    clock.advance(LEASE + 1)  # that worker died; the next claim marks "lost" dead
    for name, outcome in (("failed", "failed"), ("cancelled", "cancelled")):
        claim = store.outbox.claim("w", LEASE, 1)
        assert claim.id == ids[name]
        store.outbox.finish(claim, attempt(outcome), "w")
    assert store.actions.action(ids["lost"])["status"] == "dead"
    return ids


def test_redrive_makes_only_the_named_dead_actions_pending_again(store, clock):
    ids = _outbox_with_every_status(store, clock)
    clock.advance(100)
    before = {a["id"]: a for a in store.actions.actions()}

    redriven = store.actions.redrive([ids["dead"], ids["done"], ids["pending"], ids["failed"],
                              ids["cancelled"], ids["dry-run"], 10_000])

    assert redriven == [ids["dead"]]  # not the other dead one: it was not named
    after = {a["id"]: a for a in store.actions.actions()}
    row = after[ids["dead"]]
    assert {k: row[k] for k in ("status", "attempts", "due_at", "lease_owner", "lease_until",
                                "updated_at")} == {
        "status": "pending", "attempts": 0, "due_at": clock.now, "lease_owner": None,
        "lease_until": None, "updated_at": clock.now}
    assert {i: a for i, a in after.items() if i != ids["dead"]} == {
        i: a for i, a in before.items() if i != ids["dead"]}  # everything else untouched
    claim = store.outbox.claim("w", LEASE, 1)  # a fresh count: max_attempts=1 still allows one claim
    assert (claim.id, claim.attempts) == (ids["dead"], 1)
    assert len(store.actions.attempts(ids["dead"])) == 1  # the history is kept


def test_redrive_none_redrives_every_dead_action(store, clock):
    ids = _outbox_with_every_status(store, clock)

    assert store.actions.redrive([]) == []  # nothing named, nothing done
    assert store.actions.redrive(None) == sorted([ids["dead"], ids["lost"]])
    assert store.actions.redrive(None) == []  # none left

    assert store.actions.counts() == {"pending": 3, "done": 1, "failed": 1, "cancelled": 1, "dry-run": 1}
    assert [store.actions.action(ids[n])["attempts"] for n in ("dead", "lost")] == [0, 0]


# -- rules versions -------------------------------------------------------------------------


def test_remember_rules_keeps_one_row_per_hash_and_the_latest_is_last_good(store, clock):
    assert store.rules_kept.last_good_rules() is None

    store.rules_kept.remember_rules("a" * 64, "rules.yaml", "version: 1  # a")
    clock.advance(10)
    store.rules_kept.remember_rules("b" * 64, "rules.yaml", "version: 1  # b")
    assert store.rules_kept.last_good_rules()["sha256"] == "b" * 64
    clock.advance(10)
    store.rules_kept.remember_rules("a" * 64, "elsewhere.yaml", "version: 1  # a")  # a loaded again

    assert store.rules_kept.last_good_rules() == {
        "sha256": "a" * 64, "source": "rules.yaml", "text": "version: 1  # a",
        "first_loaded_at": T0, "last_loaded_at": T0 + 20}  # the first row, its time moved on
    assert store.rules_kept.rules_version("b" * 64) == {
        "sha256": "b" * 64, "source": "rules.yaml", "text": "version: 1  # b",
        "first_loaded_at": T0 + 10, "last_loaded_at": T0 + 10}
    assert store.rules_kept.rules_version("c" * 64) is None
    with store.db.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(tables.rules_versions)).scalar() == 2


def test_concurrent_remember_rules_keeps_one_row(make_store):
    n = 8
    stores = [make_store() for _ in range(n)]

    results = run_threads(n, lambda i: stores[i].rules_kept.remember_rules("a" * 64, "rules.yaml", "version: 1"))

    assert [r for r in results if isinstance(r, BaseException)] == []
    with stores[0].db.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(tables.rules_versions)).scalar() == 1


# -- room_story -----------------------------------------------------------------------------


def test_room_story_tells_one_rooms_story_only(store, clock):
    stories = {}
    for room in ("room-1", "room-2"):
        d1 = new_delivery(at=T0 + 1, room_id=room)
        d2 = new_delivery(at=T0, room_id=room)  # received earlier, recorded later
        record(store, d1, [new_decision(f"k|{room}", room_id=room)], room_state={"room": room})
        record(store, d2, [timer_decision(f"hold|{room}|s", room_id=room, at=T0)])
        stories[room] = (d1, d2)
    clock.now = T0 + 1  # both actions due; room-1's is the older
    claim = store.outbox.claim("w", LEASE, MAX_ATTEMPTS)
    assert claim.room_id == "room-1"
    store.outbox.finish(claim, attempt("done"), "w")
    record(store, new_delivery(at=T0 + 2, room_id=None, known=False))  # no room at all

    story = store.history.room_story("room-1")

    d1, d2 = stories["room-1"]
    assert set(story) == {"deliveries", "decisions", "timers", "actions", "attempts", "room"}
    assert [d["id"] for d in story["deliveries"]] == [d2.id, d1.id]  # oldest first
    assert [(d["action_key"], d["outcome"]) for d in story["decisions"]] == [
        ("k|room-1", "scheduled"), ("hold|room-1|s", "timer-started")]
    assert [t["key"] for t in story["timers"]] == ["hold|room-1|s"]
    assert [a["key"] for a in story["actions"]] == ["k|room-1"]
    assert [(a["action_id"], a["outcome"]) for a in story["attempts"]] == [(claim.id, "done")]
    assert [(r["room_id"], r["state"]) for r in story["room"]] == [("room-1", {"room": "room-1"})]
    other = store.history.room_story("room-2")
    assert [len(other[k]) for k in ("deliveries", "decisions", "timers", "actions", "attempts",
                                    "room")] == [2, 2, 1, 1, 0, 1]
    assert store.history.room_story("no-such-room") == {
        "deliveries": [], "decisions": [], "timers": [], "actions": [], "attempts": [], "room": []}


# -- deliveries_since -----------------------------------------------------------------------

# Ten deliveries, several sharing a received_at, recorded out of order.
SINCE_TIMES = [T0 + 3, T0, T0 + 1, T0 + 5, T0 + 1, T0, T0 + 3, T0 + 1, T0 + 4, T0 + 2]


@pytest.mark.parametrize("since, expected", [
    (T0 - 1, 10),      # before them all
    (T0, 10),          # exactly the first received_at: included
    (T0 + 0.5, 8),     # between two received_at values
    (T0 + 1, 8),       # exactly a shared received_at: all three included
    (T0 + 3, 4),       # the last four
    (T0 + 5, 1),       # only the last
    (T0 + 5.5, 0),     # after them all
])
def test_deliveries_since_reads_in_order_across_batches(store, since, expected, monkeypatch):
    made = [new_delivery(id=uuid.uuid4().hex, at=at, room_id=f"room-{i % 3}")
            for i, at in enumerate(SINCE_TIMES)]
    for delivery in made:
        record(store, delivery)
    reads = []
    read = store.history._deliveries_after
    monkeypatch.setattr(store.history, "_deliveries_after",
                        lambda *args: reads.append(args) or read(*args))

    got = list(store.history.deliveries_since(since, batch=3))

    want = sorted((d for d in made if d.received_at >= since), key=lambda d: (d.received_at, d.id))
    assert len(want) == expected
    assert [(d["received_at"], d["id"]) for d in got] == [(d.received_at, d.id) for d in want]
    assert [d["body"] for d in got] == [d.body for d in want]  # whole rows
    assert len(reads) == expected // 3 + 1  # in batches of 3; a short batch ends it
    assert store.history.count_deliveries_since(since) == expected


# -- outages --------------------------------------------------------------------------------


@pytest.fixture
def unreachable_url(database_url, tmp_path, closed_port) -> str:
    """A URL of the test's backend that cannot be opened."""
    if backend(database_url) == "postgresql":
        return f"postgresql://postgres@127.0.0.1:{closed_port}/x"
    directory = tmp_path / "a-directory"  # SQLite cannot open a directory as a database
    directory.mkdir()
    return f"sqlite:///{directory}"


@pytest.mark.parametrize("call", [
    lambda s: s.db.ping(),
    lambda s: s.db.migrate(),
    lambda s: s.db.schema_version(),
    lambda s: record(s, new_delivery(), [new_decision("k")]),
    lambda s: s.inbox.append(inbox_item()),
    lambda s: s.inbox.deciding(10).__enter__(),
    lambda s: s.inbox.has_undecided(),
    lambda s: s.inbox.inbox_stats(),
    lambda s: s.outbox.claim("w", LEASE, MAX_ATTEMPTS),
    lambda s: s.outbox.claim("w", LEASE, MAX_ATTEMPTS, per_minute=5),
    lambda s: s.actions.actions(),
    lambda s: s.timers.fire_due_timer(Decider(fire())),
    lambda s: s.timers.recheck_timer(1, Decider(fire())),
    lambda s: s.timers.pending_timers_by_rule(),
    lambda s: s.actions.redrive(None),
    lambda s: s.rules_kept.remember_rules("a" * 64, "rules.yaml", "version: 1"),
    lambda s: s.rules_kept.last_good_rules(),
    lambda s: s.history.room_story("room-1"),
    lambda s: list(s.history.deliveries_since(T0)),
    lambda s: s.history.count_deliveries_since(T0),
], ids=["ping", "migrate", "schema_version", "ingest", "append", "deciding", "has_undecided",
        "inbox_stats", "claim", "claim-per-minute", "actions",
        "fire_due_timer", "recheck_timer", "pending_timers_by_rule", "redrive", "remember_rules",
        "last_good_rules", "room_story", "deliveries_since", "count_deliveries_since"])
def test_unreachable_database_raises_store_unavailable(make_store, unreachable_url, call):
    store = make_store(migrate=False, url=unreachable_url)

    with pytest.raises(StoreUnavailable) as caught:
        call(store)

    assert isinstance(caught.value, Unavailable) and caught.value.status == 503
    assert str(caught.value).startswith("store unavailable: ")
    # kept for the logs: SQLAlchemy's error, or sqlite3's where the SQLite inbox appends through
    # a plain connection (inbox.SqliteAppender)
    assert isinstance(caught.value.__cause__, (SQLAlchemyError, sqlite3.Error))


def test_driver_errors_come_out_as_sqlalchemys(make_store):
    """The hot path runs on the driver's cursor (store/driver.py); its errors must still be
    SQLAlchemy's classes, which is what `guarded` and the callers catch."""
    from sqlalchemy import text

    from service.store.driver import Compiled, run

    store = make_store()
    broken = Compiled(text("SELECT missing_column FROM deliveries"), store.db.engine.dialect)
    with pytest.raises(SQLAlchemyError) as caught:
        with store.db.write() as conn:
            run(conn, broken, {})
    assert type(caught.value.orig).__module__.split(".")[0] in ("sqlite3", "psycopg")
    assert "missing_column" in str(caught.value.orig)
    assert row_counts(store) == counts()
    record(store, new_delivery(), [new_decision("k")])  # the store works on after it
    assert row_counts(store)["deliveries"] == 1


def test_an_interrupt_inside_a_driver_statement_does_not_return_the_connection_to_the_pool(
        make_store, monkeypatch):
    """A KeyboardInterrupt or a worker's timeout raised while the driver runs a statement leaves
    the connection in an unknown state: it is closed, not pooled, and the store works on."""
    from sqlalchemy import text

    from service.store.driver import Compiled, run

    store = make_store()
    statement = Compiled(text("SELECT 1"), store.db.engine.dialect)

    def interrupted(values):
        raise KeyboardInterrupt

    monkeypatch.setattr(statement, "params", interrupted)
    with pytest.raises(KeyboardInterrupt):
        with store.db.write() as conn:
            raw = conn.connection.driver_connection
            run(conn, statement, {})
    with pytest.raises(Exception, match="(?i)closed"):
        raw.execute("SELECT 1")
    assert row_counts(store) == counts()
    record(store, new_delivery(), [new_decision("k")])
    assert row_counts(store)["deliveries"] == 1


def test_a_connection_dropped_mid_delivery_is_unavailable_then_recovers(make_store, database_url):
    if backend(database_url) != "postgresql":
        pytest.skip("only a server connection can be dropped")
    import psycopg

    store = make_store()
    dropped = new_delivery(room_id="room-dropped")

    def plan_then_drop(state, timers, keys):
        # The server ends every other session of this database, the store's open one included,
        # after the delivery's first statements ran and before its room update and decisions.
        with psycopg.connect(database_url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                          "WHERE datname = current_database() AND pid <> pg_backend_pid()")
        return PlanWrite({"n": 1}, (new_decision("k-dropped", room_id="room-dropped"),))

    with pytest.raises(StoreUnavailable):
        ingest(store, dropped, plan_then_drop)

    # Nothing of the decision was kept, the delivery waits in the inbox, and the same store (its
    # pool) decides it on the next try.
    assert row_counts(store) == counts()
    assert inbox_ids(store) == [dropped.id]
    receipt = decide_kept(store, dropped, lambda *_: PlanWrite(
        {"n": 1}, (new_decision("k-dropped", room_id="room-dropped"),)))
    assert inbox_ids(store) == []
    assert [d.outcome for d in receipt.decisions] == ["scheduled"]
    assert store.history.room("room-dropped")["state"] == {"n": 1}


class _Lock:
    """Another connection's open write transaction, holding the store's tables."""

    def __init__(self, url: str):
        if backend(url) == "sqlite":
            self.conn = sqlite3.connect(make_url(url).database, isolation_level=None)
            self.conn.execute("BEGIN IMMEDIATE")
        else:
            import psycopg

            self.conn = psycopg.connect(url)
            self.conn.execute("LOCK TABLE inbox, deliveries, actions IN EXCLUSIVE MODE")

    def release(self) -> None:
        self.conn.rollback()
        self.conn.close()


@pytest.mark.parametrize("held", [
    "append",  # the web request's write: the inbox cannot take the delivery
    "decide",  # the decider's write: the delivery is in the inbox, its decision cannot be written
])
def test_locked_database_raises_store_unavailable_then_recovers(make_store, database_url,
                                                               monkeypatch, held):
    # keep the waits short
    monkeypatch.setattr(store_database, "SQLITE_BUSY_TIMEOUT_MS", 200)
    monkeypatch.setattr(store_database, "POSTGRES_LOCK_TIMEOUT_MS", 200)
    store = make_store()
    delivery = new_delivery()
    plan = lambda *_: PlanWrite({"n": 1}, (new_decision("k"),))  # noqa: E731
    if held == "decide":
        store.inbox.append(inbox_item(id=delivery.id, body=delivery.body))
    lock = _Lock(database_url)
    outcome: list[object] = []

    write = (lambda: ingest(store, delivery, plan)) if held == "append" else \
        (lambda: decide_kept(store, delivery, plan))
    writer = start_thread(write, outcome)
    try:
        writer.join(PG_LOCK_WAIT if backend(database_url) == "postgresql" else THREAD_JOIN_LIMIT)
        blocked = writer.is_alive()
        if not blocked:
            store.db.ping()  # readers are not held up by the writer
            assert store.inbox.inbox_stats()[0] == (1 if held == "decide" else 0)
    finally:
        lock.release()
    writer.join(THREAD_JOIN_LIMIT)

    assert not blocked, f"{held} waited on the lock without limit"
    [error] = outcome
    assert isinstance(error, StoreUnavailable), error
    assert row_counts(store) == counts()
    # what was accepted stays accepted; what was not is not half-kept
    assert inbox_ids(store) == ([delivery.id] if held == "decide" else [])

    # The lock is gone: the same store, no restart, takes the same delivery.
    receipt = ingest(store, delivery, plan) if held == "append" else decide_kept(store, delivery, plan)
    assert [d.outcome for d in receipt.decisions] == ["scheduled"]
    assert store.history.delivery(delivery.id) == delivery.__dict__
    assert store.history.room("room-1")["state"] == {"n": 1}
    assert store.outbox.claim("w", LEASE, MAX_ATTEMPTS) is not None
    assert inbox_ids(store) == []


# -- the decider's copy of a room within a batch ------------------------------------------------

COPY_RULES = RULES_HEAD + EMPTY_RULE + SESSION_RULE + """\
  - name: end-long-recordings
    on: recording-started
    action: end-session
"""


def test_the_batchs_copy_of_a_room_is_what_the_store_holds_after_every_delivery(store, monkeypatch):
    """The decider reads a room's timers and action keys once per batch and then applies what
    each delivery changed to its copy. After every delivery of a batch with timers started,
    cancelled and running, actions scheduled and duplicated, in several rooms, the copy equals
    what the store reads (the decisions made are those of real rules)."""
    from service.decider import Decider
    from service.rules.loader import parse_rules
    from service.store.inbox import InboxBatch

    from .conftest import event_body

    rule_set, problems = parse_rules(COPY_RULES, "copy-rules.yaml")
    assert not problems
    bodies = []  # (room, body)
    for room in ("copy-room-a", "copy-room-b"):
        def event(event_type, **data):
            bodies.append((room, event_body(event_type, meetingId=room, sessionId="s-1", **data)))

        for _ in range(2):  # a second life: the timer again, the actions now duplicates
            event("participant-joined", participantId="p-1")
            event("participant-joined", participantId="p-2")
            event("participant-left", participantId="p-1")
            event("participant-left", participantId="p-2")  # empty: the timer starts
            event("participant-joined", participantId="p-3")  # and is cancelled
            event("participant-left", participantId="p-3")  # and starts again
            event("recording-started")
            event("session-ended")
    for i, (room, body) in enumerate(bodies):
        at = T0 + i
        store.inbox.append(InboxItem(id=new_delivery_id(at), received_at=at, room_id=room, body=body.decode(),
                               signature=None, verified=True))

    compared, outcomes = [], []
    original = InboxBatch.record

    def record_and_compare(batch, row, delivery, write):
        receipt = original(batch, row, delivery, write)
        outcomes.extend(d.outcome for d in receipt.decisions)
        _, timers, keys = batch.room_inputs(delivery.room_id)
        assert timers == store.inbox.rooms.pending_timers(batch._conn, delivery.room_id)
        assert keys == store.inbox.rooms.action_keys(batch._conn, delivery.room_id)
        compared.append(delivery.id)
        return receipt

    monkeypatch.setattr(InboxBatch, "record", record_and_compare)
    decided = Decider(store.inbox, lambda: rule_set, acts=True, verifier=None).drain()
    assert len(decided) == len(compared) == len(bodies)
    # Every kind of change was made: the copy was checked against each.
    assert {"timer-started", "scheduled", "duplicate"} <= set(outcomes), outcomes
    assert any(t["status"] == "cancelled" for t in store.history.timers(room_id="copy-room-a"))
