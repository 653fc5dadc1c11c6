"""The store, on a real SQLite file and a real PostgreSQL database (the `database_url` fixture).

What is pinned here: migrations (idempotent, safe to race), `record_delivery` (one
transaction: all of it or none of it; one action per key), the outbox (`claim`,
`finish`, `release`: due times, leases, fencing, max attempts, no double claims
under concurrency) and how outages surface (`StoreUnavailable`, never a raw
SQLAlchemy error, and the store works again once the outage ends).

Time is a `Clock` the test moves by hand, so no test depends on the machine's speed.
"""

from __future__ import annotations

import sqlite3
import threading
import uuid
from typing import Callable

import pytest
from sqlalchemy import func, inspect, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DataError, IntegrityError, SQLAlchemyError, StatementError

from service.errors import StoreUnavailable, Unavailable
from service.store import (AttemptRecord, ClaimedAction, NewDecision, NewDelivery, Receipt,
                           Store)
from service.store import engine as store_engine
from service.store import tables

T0 = 1_700_000_000.0  # the tests' "now": a fixed epoch second
LEASE = 30.0
MAX_ATTEMPTS = 10
INITIAL_STEP = "1: initial: deliveries, decisions, actions, attempts"
THREAD_JOIN_LIMIT = 120.0  # a hang guard for worker threads, never a timing assertion
PG_LOCK_WAIT = 10.0  # how long a PostgreSQL lock may block a write before it must give up


# -- helpers --------------------------------------------------------------------------------


class Clock:
    """A clock the test moves by hand: `Store(engine, clock=Clock())`."""

    def __init__(self, now: float = T0):
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now


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
                 session_id: str | None = "sess-1", trace: dict | None = None) -> NewDecision:
    return NewDecision(rule=rule, action=action, room_id=room_id, session_id=session_id,
                       key=key or f"{rule}|{room_id}|{session_id}", trace=trace)


def schedule(store: Store, *keys: str, at: float = T0, acts: bool = True) -> list[int]:
    """Record one delivery deciding one action per key; return the action ids."""
    receipt = store.record_delivery(new_delivery(at=at), [new_decision(k) for k in keys], acts=acts)
    return [d.action_id for d in receipt.decisions]


def attempt(outcome: str, *, status: int | None = 200, error: str | None = None,
            next_due_at: float | None = None, started_at: float = T0) -> AttemptRecord:
    return AttemptRecord(started_at=started_at, latency_ms=12.5, http_status=status,
                         outcome=outcome, error=error, next_due_at=next_due_at)


def row_counts(store: Store) -> dict[str, int]:
    """Rows in each table, read around the store's API so nothing can hide."""
    with store.engine.connect() as conn:
        return {t.name: conn.execute(select(func.count()).select_from(t)).scalar_one()
                for t in (tables.deliveries, tables.decisions, tables.actions, tables.attempts)}


def store_attempts_single(store: Store, action_id: int) -> bool:
    """The action was claimed once and has exactly one recorded attempt, number 1."""
    rows = store.attempts(action_id)
    return len(rows) == 1 and rows[0]["number"] == 1 and store.action(action_id)["attempts"] == 1


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


# -- fixtures -------------------------------------------------------------------------------


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def make_store(database_url):
    """Stores on the test database, each with its own engine; all closed at teardown."""
    made: list[Store] = []

    def make(clock: Callable[[], float] | None = None, *, migrate: bool = True,
             url: str | None = None) -> Store:
        store = Store.from_url(url or database_url, clock or Clock())
        made.append(store)
        if migrate:
            store.migrate()
        return store

    yield make
    for store in made:
        store.close()


@pytest.fixture
def store(make_store, clock) -> Store:
    return make_store(clock)


# -- migrations -----------------------------------------------------------------------------


def test_migrate_applies_each_step_once(make_store):
    store = make_store(migrate=False)
    assert store.schema_version() == 0  # an empty database

    assert store.migrate() == [INITIAL_STEP]
    assert store.migrate() == []
    assert make_store(migrate=False).migrate() == []  # another process, later
    assert store.schema_version() == 1

    with store.engine.connect() as conn:
        names = set(inspect(conn).get_table_names())
        migrated = conn.execute(select(tables.schema_migrations.c.version)).scalars().all()
    assert {"schema_migrations", "deliveries", "decisions", "actions", "attempts"} <= names
    assert migrated == [1]


def test_concurrent_migrations_all_succeed_and_apply_once(make_store):
    stores = [make_store(migrate=False) for _ in range(4)]

    results = run_threads(len(stores), lambda i: stores[i].migrate())

    errors = [r for r in results if isinstance(r, BaseException)]
    assert errors == []
    assert sorted(results, key=len) == [[], [], [], [INITIAL_STEP]]
    assert stores[0].schema_version() == 1
    with stores[0].engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(tables.schema_migrations)).scalar() == 1


# -- record_delivery ------------------------------------------------------------------------


def test_record_delivery_writes_delivery_decisions_and_actions(store):
    delivery = new_delivery(at=T0 + 5, participant_id="p-1")
    trace = {"rule": "close-after-session", "matched": [{"field": "event", "op": "eq"}]}
    first = new_decision("k-1", trace=trace)
    second = new_decision("k-2", rule="close-long-recordings", room_id="rec-2", session_id=None)

    receipt = store.record_delivery(delivery, [first, second], acts=True)

    assert isinstance(receipt, Receipt)
    assert receipt.delivery_id == delivery.id
    assert [(d.rule, d.action, d.outcome) for d in receipt.decisions] == [
        ("close-after-session", "deactivate", "scheduled"),
        ("close-long-recordings", "deactivate", "scheduled"),
    ]
    ids = [d.action_id for d in receipt.decisions]
    assert None not in ids and len(set(ids)) == 2

    assert store.delivery(delivery.id) == delivery.__dict__

    rows = store.decisions(delivery_id=delivery.id)
    assert [(r["rule"], r["room_id"], r["session_id"], r["action_key"], r["outcome"],
             r["action_id"], r["trace"], r["created_at"]) for r in rows] == [
        ("close-after-session", "room-1", "sess-1", "k-1", "scheduled", ids[0], trace, T0 + 5),
        ("close-long-recordings", "rec-2", None, "k-2", "scheduled", ids[1], None, T0 + 5),
    ]

    for action_id, decision in zip(ids, (first, second)):
        action = store.action(action_id)
        assert {k: action[k] for k in ("key", "kind", "room_id", "session_id", "rule",
                                       "delivery_id", "status", "attempts", "due_at",
                                       "lease_owner", "lease_until", "last_status",
                                       "last_error")} == {
            "key": decision.key, "kind": "deactivate", "room_id": decision.room_id,
            "session_id": decision.session_id, "rule": decision.rule, "delivery_id": delivery.id,
            "status": "pending", "attempts": 0, "due_at": T0 + 5, "lease_owner": None,
            "lease_until": None, "last_status": None, "last_error": None,
        }
    assert row_counts(store) == {"deliveries": 1, "decisions": 2, "actions": 2, "attempts": 0}


@pytest.mark.parametrize("delivery", [
    # an event type the service does not know, with no room, session or participant
    new_delivery(event_type="something-new", room_id=None, session_id=None, known=False),
    # an unverified delivery whose body is not ASCII
    new_delivery(verified=False, body='{"data": {"name": "Zoë’s room ✓"}}'),
    # a received_at with a fraction of a second, kept exactly
    new_delivery(at=T0 + 0.123456),
], ids=["unknown-event", "unicode-body", "fractional-time"])
def test_delivery_round_trips_exactly(store, delivery):
    store.record_delivery(delivery, [], acts=True)

    assert store.delivery(delivery.id) == delivery.__dict__


def test_delivery_with_no_decisions(store):
    delivery = new_delivery()

    receipt = store.record_delivery(delivery, [], acts=True)

    assert receipt == Receipt(delivery.id, ())
    assert store.delivery(delivery.id) is not None
    assert store.decisions(delivery_id=delivery.id) == []
    assert row_counts(store) == {"deliveries": 1, "decisions": 0, "actions": 0, "attempts": 0}


@pytest.mark.parametrize("same_delivery", [
    False,  # the key came back in a later delivery (VideoSDK re-sent the event, say)
    True,   # two decisions in one delivery share a key
], ids=["later-delivery", "same-delivery"])
def test_repeated_action_key_is_a_duplicate_of_the_first_action(store, same_delivery):
    first = new_delivery(at=T0)
    if same_delivery:
        receipt = store.record_delivery(first, [new_decision("k"), new_decision("k")], acts=True)
        outcomes = receipt.decisions
        second = first
    else:
        second = new_delivery(at=T0 + 60)
        outcomes = (store.record_delivery(first, [new_decision("k")], acts=True).decisions
                    + store.record_delivery(second, [new_decision("k")], acts=True).decisions)

    assert [d.outcome for d in outcomes] == ["scheduled", "duplicate"]
    assert outcomes[0].action_id is not None
    assert outcomes[1].action_id == outcomes[0].action_id

    [action] = store.actions()
    assert action["id"] == outcomes[0].action_id
    assert action["delivery_id"] == first.id and action["due_at"] == T0  # the first one's, untouched
    last = store.decisions(delivery_id=second.id)[-1]
    assert (last["outcome"], last["action_id"], last["action_key"]) == (
        "duplicate", outcomes[0].action_id, "k")
    assert row_counts(store)["actions"] == 1


def test_dry_run_actions_are_recorded_but_never_claimed(store, clock):
    receipt = store.record_delivery(new_delivery(), [new_decision("k-1"), new_decision("k-2")],
                                    acts=False)
    again = store.record_delivery(new_delivery(), [new_decision("k-1")], acts=False)

    assert [d.outcome for d in receipt.decisions] == ["dry-run", "dry-run"]
    assert [(d.outcome, d.action_id) for d in again.decisions] == [
        ("duplicate", receipt.decisions[0].action_id)]
    assert [a["status"] for a in store.actions()] == ["dry-run", "dry-run"]
    assert [r["outcome"] for r in store.decisions(delivery_id=receipt.delivery_id)] == [
        "dry-run", "dry-run"]
    assert store.counts() == {"dry-run": 2}

    for later in (0.0, 3600.0, 86400.0 * 365):
        clock.now = T0 + later
        assert store.claim("w", LEASE, MAX_ATTEMPTS) is None
    assert [a["attempts"] for a in store.actions()] == [0, 0]


def test_concurrent_deliveries_with_one_key_schedule_one_action(make_store):
    n = 8
    stores = [make_store() for _ in range(n)]
    deliveries = [new_delivery(at=T0 + i) for i in range(n)]

    results = run_threads(n, lambda i: stores[i].record_delivery(
        deliveries[i], [new_decision("shared-key")], acts=True))

    errors = [r for r in results if isinstance(r, BaseException)]
    assert errors == []
    outcomes = [r.decisions[0] for r in results]
    assert sorted(d.outcome for d in outcomes) == ["duplicate"] * (n - 1) + ["scheduled"]
    assert len({d.action_id for d in outcomes}) == 1
    assert row_counts(stores[0]) == {"deliveries": n, "decisions": n, "actions": 1, "attempts": 0}


# A failure part-way through record_delivery: the delivery row and the first decision's
# action and decision row are already written in the transaction when the second fails.
FAILING_DECISIONS = [
    # a key longer than the column (VARCHAR(400)); SQLite does not enforce lengths
    pytest.param(lambda: new_decision("x" * 401), (DataError,), "postgresql",
                 id="key-too-long"),
    # an action kind of NULL violates NOT NULL in the actions table
    pytest.param(lambda: new_decision("k-bad", action=None), (IntegrityError,), None,
                 id="null-action-kind"),
    # a trace that cannot be stored as JSON fails as the decision row is written (SQLAlchemy
    # wraps the TypeError on SQLite; psycopg's JSON adapter raises it bare on PostgreSQL)
    pytest.param(lambda: new_decision("k-bad", trace={"not json": {1, 2}}),
                 (StatementError, TypeError), None, id="trace-not-json"),
]


@pytest.mark.parametrize("bad_decision, raises, only_on", FAILING_DECISIONS)
def test_failure_inside_record_delivery_writes_nothing(store, database_url, bad_decision, raises,
                                                       only_on):
    if only_on and backend(database_url) != only_on:
        pytest.skip(f"only {only_on} rejects this")
    earlier = new_delivery(at=T0 - 10)
    store.record_delivery(earlier, [new_decision("k-earlier")], acts=True)
    before = row_counts(store)
    failing = new_delivery(at=T0)

    with pytest.raises(raises) as caught:
        store.record_delivery(failing, [new_decision("k-good"), bad_decision()], acts=True)

    assert not isinstance(caught.value, StoreUnavailable)  # a bad input is a bug, not an outage
    assert row_counts(store) == before
    assert store.delivery(failing.id) is None
    assert store.decisions(delivery_id=failing.id) == []
    assert [a["key"] for a in store.actions()] == ["k-earlier"]
    # The rolled-back action key is free again, and the store works after the failure.
    retried = store.record_delivery(failing, [new_decision("k-good")], acts=True)
    assert [d.outcome for d in retried.decisions] == ["scheduled"]


def test_duplicate_delivery_id_raises_and_keeps_the_first_intact(store):
    first = new_delivery(id="d" * 32, body='{"first": true}')
    receipt = store.record_delivery(first, [new_decision("k-1")], acts=True)
    before = row_counts(store)
    second = new_delivery(id=first.id, at=T0 + 1, body='{"second": true}')

    with pytest.raises(IntegrityError):
        store.record_delivery(second, [new_decision("k-2"), new_decision("k-1")], acts=True)

    assert row_counts(store) == before
    assert store.delivery(first.id) == first.__dict__
    assert [(r["action_key"], r["outcome"]) for r in store.decisions(delivery_id=first.id)] == [
        ("k-1", "scheduled")]
    assert [(a["id"], a["key"]) for a in store.actions()] == [(receipt.decisions[0].action_id, "k-1")]


def test_listing_reads_filter_and_order(store):
    older = new_delivery(at=T0, room_id="room-a")
    newer = new_delivery(at=T0 + 1, room_id="room-b")
    store.record_delivery(older, [new_decision("k-a", room_id="room-a")], acts=True)
    store.record_delivery(newer, [new_decision("k-b", room_id="room-b")], acts=False)

    assert [d["id"] for d in store.deliveries()] == [newer.id, older.id]  # newest first
    assert [d["id"] for d in store.deliveries(limit=1)] == [newer.id]
    assert [d["id"] for d in store.deliveries(room_id="room-a")] == [older.id]
    assert [d["action_key"] for d in store.decisions(room_id="room-b")] == ["k-b"]
    assert [a["key"] for a in store.actions(status="pending")] == ["k-a"]
    assert [a["key"] for a in store.actions(room_id="room-b")] == ["k-b"]
    assert store.action(10_000) is None
    assert store.delivery("no-such-delivery") is None
    assert store.counts() == {"pending": 1, "dry-run": 1}


# -- claim ----------------------------------------------------------------------------------


def _leased_to_another(store, clock):
    schedule(store, "k")
    assert store.claim("other", LEASE, MAX_ATTEMPTS) is not None


def _finished(outcome):
    def setup(store, clock):
        schedule(store, "k")
        claim = store.claim("other", LEASE, MAX_ATTEMPTS)
        assert store.finish(claim, attempt(outcome), "other")
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
], ids=["empty", "not-yet-due", "dry-run", "leased", "done", "failed", "dead"])
def test_claim_returns_none_when_nothing_is_due(store, clock, setup):
    setup(store, clock)
    before = store.actions()

    assert store.claim("w", LEASE, MAX_ATTEMPTS) is None
    assert store.actions() == before  # looking changed nothing


@pytest.mark.parametrize("now, claimable", [
    (T0 - 0.5, False),  # half a second early
    (T0, True),         # exactly due
    (T0 + 0.5, True),   # overdue
])
def test_claim_respects_due_at(store, clock, now, claimable):
    [action_id] = schedule(store, "k", at=T0)
    clock.now = now

    claim = store.claim("w", LEASE, MAX_ATTEMPTS)

    assert (claim is not None) == claimable
    assert store.action(action_id)["attempts"] == (1 if claimable else 0)


def test_claim_leases_the_action(store, clock):
    decision = new_decision("k", rule="r", room_id="room-9", session_id="s-9")
    receipt = store.record_delivery(new_delivery(at=T0 - 1), [decision], acts=True)
    action_id = receipt.decisions[0].action_id

    claim = store.claim("worker-a", LEASE, MAX_ATTEMPTS)

    assert claim == ClaimedAction(id=action_id, key="k", kind="deactivate", room_id="room-9",
                                  session_id="s-9", rule="r", attempts=1, lease_owner="worker-a",
                                  lease_until=T0 + LEASE)
    row = store.action(action_id)
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
    first = store.claim("worker-a", LEASE, MAX_ATTEMPTS)
    clock.advance(elapsed)

    second = store.claim("worker-b", LEASE, MAX_ATTEMPTS)

    if reclaimed:
        assert (second.id, second.attempts, second.lease_owner) == (action_id, 2, "worker-b")
        assert second.lease_until == clock.now + LEASE
        assert store.action(action_id)["lease_owner"] == "worker-b"
    else:
        assert second is None
        assert store.action(action_id)["lease_owner"] == "worker-a"
        assert store.action(action_id)["lease_until"] == first.lease_until


def test_killed_worker_loses_nothing(store, clock):
    [action_id] = schedule(store, "k")
    store.claim("doomed", LEASE, MAX_ATTEMPTS)  # ... and the worker is killed: no finish, no release
    clock.advance(LEASE + 1)

    claim = store.claim("survivor", LEASE, MAX_ATTEMPTS)
    assert (claim.id, claim.attempts) == (action_id, 2)
    assert store.finish(claim, attempt("done"), "survivor") is True

    assert store.action(action_id)["status"] == "done"
    assert [(a["number"], a["worker"]) for a in store.attempts(action_id)] == [(2, "survivor")]


@pytest.mark.parametrize("max_attempts", [
    1,  # a single claim is all an action gets
    3,  # the usual case: a few lost leases, then give up
])
def test_action_whose_claims_never_report_is_marked_dead(store, clock, max_attempts):
    [action_id] = schedule(store, "k")
    for n in range(1, max_attempts + 1):
        claim = store.claim(f"w{n}", LEASE, max_attempts)
        assert (claim.id, claim.attempts) == (action_id, n)
        clock.advance(LEASE + 1)  # each worker dies holding the lease

    assert store.claim("w-last", LEASE, max_attempts) is None

    row = store.action(action_id)
    assert (row["status"], row["attempts"], row["lease_owner"], row["lease_until"]) == (
        "dead", max_attempts, None, None)
    assert "gave up" in row["last_error"]
    assert f"{max_attempts} claims ended without a recorded result" in row["last_error"]
    assert store.attempts(action_id) == []
    clock.advance(86400)
    assert store.claim("w-later", LEASE, max_attempts) is None


def test_action_with_recorded_retries_is_not_marked_dead_before_max_attempts(store, clock):
    [action_id] = schedule(store, "k")
    for n in range(1, 3):
        claim = store.claim("w", LEASE, 3)
        assert store.finish(claim, attempt("retry", status=503, next_due_at=clock.now + 1), "w")
        clock.advance(2)

    claim = store.claim("w", LEASE, 3)
    assert (claim.id, claim.attempts) == (action_id, 3)


def test_claim_marking_an_action_dead_still_hands_out_the_next_due_action(store, clock):
    [exhausted] = schedule(store, "exhausted", at=T0 - 10)
    [due] = schedule(store, "due", at=T0)
    claim = store.claim("w1", LEASE, 1)
    assert claim.id == exhausted  # the most overdue, first
    clock.advance(LEASE + 1)  # w1 dies

    claim = store.claim("w2", LEASE, 1)

    assert store.action(exhausted)["status"] == "dead"
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
    while (claim := store.claim("w", LEASE, MAX_ATTEMPTS)) is not None:
        order.append(claim.id)

    assert order == [early, tie_first, tie_second, late]
    assert store.action(future)["attempts"] == 0


def test_retried_action_goes_behind_those_due_sooner(store, clock):
    first, second = schedule(store, "first", "second", at=T0 - 5)
    claim = store.claim("w", LEASE, MAX_ATTEMPTS)
    assert claim.id == first
    store.finish(claim, attempt("retry", status=503, next_due_at=T0 + 10), "w")
    clock.now = T0 + 20

    assert [store.claim("w", LEASE, MAX_ATTEMPTS).id for _ in range(2)] == [second, first]


# -- finish ---------------------------------------------------------------------------------


@pytest.mark.parametrize("record, status, due_at", [
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
], ids=["done", "failed", "retry", "retry-no-answer", "dead"])
def test_finish_moves_the_action_and_records_the_attempt(store, clock, record, status, due_at):
    [action_id] = schedule(store, "k", at=T0)
    claim = store.claim("w", LEASE, MAX_ATTEMPTS)
    clock.advance(3)

    assert store.finish(claim, record, "w") is True

    row = store.action(action_id)
    assert {k: row[k] for k in ("status", "due_at", "lease_owner", "lease_until", "last_status",
                                "last_error", "attempts", "updated_at")} == {
        "status": status, "due_at": due_at, "lease_owner": None, "lease_until": None,
        "last_status": record.http_status, "last_error": record.error, "attempts": 1,
        "updated_at": T0 + 3,
    }
    [row] = store.attempts(action_id)
    assert {k: row[k] for k in ("action_id", "number", "worker", "started_at", "latency_ms",
                                "http_status", "outcome", "error", "next_due_at")} == {
        "action_id": action_id, "number": 1, "worker": "w", "started_at": record.started_at,
        "latency_ms": record.latency_ms, "http_status": record.http_status,
        "outcome": record.outcome, "error": record.error, "next_due_at": record.next_due_at,
    }

    clock.now = due_at - 0.5
    assert store.claim("w2", LEASE, MAX_ATTEMPTS) is None
    clock.now = due_at + 60
    again = store.claim("w2", LEASE, MAX_ATTEMPTS)
    if status == "pending":
        assert (again.id, again.attempts) == (action_id, 2)
    else:
        assert again is None  # an ended action is never handed out again


@pytest.mark.parametrize("late", [
    attempt("done"),                                      # a late success
    attempt("failed", status=404, error="room not found"),  # a late permanent failure
    attempt("retry", status=503, next_due_at=T0 + 3600),  # a late retry, which would push due_at
    attempt("dead", status=503, error="gave up"),         # a late give-up
], ids=["done", "failed", "retry", "dead"])
def test_finish_by_a_worker_that_lost_its_lease_is_fenced(store, clock, late):
    [action_id] = schedule(store, "k")
    stale = store.claim("worker-a", LEASE, MAX_ATTEMPTS)
    clock.advance(LEASE + 1)
    current = store.claim("worker-b", LEASE, MAX_ATTEMPTS)
    before = store.action(action_id)

    assert store.finish(stale, late, "worker-a") is False

    assert store.action(action_id) == before  # still worker-b's, untouched
    assert before["lease_owner"] == "worker-b" and before["status"] == "pending"
    assert [(a["number"], a["worker"], a["outcome"]) for a in store.attempts(action_id)] == [
        (1, "worker-a", late.outcome)]  # the call was made, so it is recorded anyway

    assert store.finish(current, attempt("done"), "worker-b") is True
    assert store.action(action_id)["status"] == "done"


def test_finish_after_another_worker_finished_is_fenced(store, clock):
    [action_id] = schedule(store, "k")
    stale = store.claim("worker-a", LEASE, MAX_ATTEMPTS)
    clock.advance(LEASE + 1)
    current = store.claim("worker-b", LEASE, MAX_ATTEMPTS)
    assert store.finish(current, attempt("failed", status=404, error="room not found"), "worker-b")

    assert store.finish(stale, attempt("done"), "worker-a") is False

    row = store.action(action_id)
    assert (row["status"], row["last_status"], row["last_error"]) == ("failed", 404, "room not found")
    assert [a["worker"] for a in store.attempts(action_id)] == ["worker-b", "worker-a"]


def test_finishing_twice_moves_the_action_once(store, clock):
    [action_id] = schedule(store, "k")
    claim = store.claim("w", LEASE, MAX_ATTEMPTS)

    assert store.finish(claim, attempt("retry", status=503, next_due_at=T0 + 60), "w") is True
    assert store.finish(claim, attempt("done"), "w") is False

    row = store.action(action_id)
    assert (row["status"], row["due_at"]) == ("pending", T0 + 60)
    assert [a["outcome"] for a in store.attempts(action_id)] == ["retry", "done"]


# -- release --------------------------------------------------------------------------------


def test_release_gives_the_action_back_at_once(store, clock):
    [action_id] = schedule(store, "k")
    claim = store.claim("w", LEASE, MAX_ATTEMPTS)

    store.release(claim, "w")

    row = store.action(action_id)
    assert (row["status"], row["lease_owner"], row["lease_until"], row["attempts"]) == (
        "pending", None, None, 0)
    assert store.attempts(action_id) == []
    again = store.claim("other", LEASE, MAX_ATTEMPTS)  # same instant: no lease to wait out
    assert (again.id, again.attempts, again.lease_owner) == (action_id, 1, "other")


def test_released_claims_do_not_count_toward_max_attempts(store, clock):
    [action_id] = schedule(store, "k")
    for _ in range(5):
        claim = store.claim("w", LEASE, 2)
        assert claim is not None and claim.attempts == 1
        store.release(claim, "w")

    assert store.action(action_id)["status"] == "pending"


def test_release_by_a_worker_that_lost_its_lease_changes_nothing(store, clock):
    [action_id] = schedule(store, "k")
    stale = store.claim("worker-a", LEASE, MAX_ATTEMPTS)
    clock.advance(LEASE + 1)
    store.claim("worker-b", LEASE, MAX_ATTEMPTS)
    before = store.action(action_id)

    store.release(stale, "worker-a")

    assert store.action(action_id) == before
    assert (before["lease_owner"], before["attempts"]) == ("worker-b", 2)


# -- concurrency ----------------------------------------------------------------------------


def test_concurrent_workers_never_claim_an_action_twice(make_store):
    n_workers, n_actions = 8, 50
    clock = Clock(T0 + 1)  # fixed: every action is due and no lease ever runs out
    setup = make_store(clock)
    action_ids = schedule(setup, *(f"k-{i}" for i in range(n_actions)), at=T0)
    stores = [make_store(clock) for _ in range(n_workers)]

    def work(i: int) -> list[int]:
        worker, claimed = f"worker-{i}", []
        while (claim := stores[i].claim(worker, 300.0, MAX_ATTEMPTS)) is not None:
            claimed.append(claim.id)
            assert stores[i].finish(claim, attempt("done"), worker) is True
        return claimed

    results = run_threads(n_workers, work)

    errors = [r for r in results if isinstance(r, BaseException)]
    assert errors == []
    claimed = [action_id for ids in results for action_id in ids]
    assert sorted(claimed) == sorted(action_ids)  # every action, each exactly once
    assert setup.counts() == {"done": n_actions}
    for action_id in action_ids:  # one claim and one recorded attempt each
        assert store_attempts_single(setup, action_id)
    assert setup.claim("late", 300.0, MAX_ATTEMPTS) is None


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
    lambda s: s.ping(),
    lambda s: s.migrate(),
    lambda s: s.schema_version(),
    lambda s: s.record_delivery(new_delivery(), [new_decision("k")], acts=True),
    lambda s: s.claim("w", LEASE, MAX_ATTEMPTS),
    lambda s: s.actions(),
], ids=["ping", "migrate", "schema_version", "record_delivery", "claim", "actions"])
def test_unreachable_database_raises_store_unavailable(make_store, unreachable_url, call):
    store = make_store(migrate=False, url=unreachable_url)

    with pytest.raises(StoreUnavailable) as caught:
        call(store)

    assert isinstance(caught.value, Unavailable) and caught.value.status == 503
    assert str(caught.value).startswith("store unavailable: ")
    assert isinstance(caught.value.__cause__, SQLAlchemyError)  # kept for the logs


class _Lock:
    """Another connection's open write transaction, holding the store's tables."""

    def __init__(self, url: str):
        if backend(url) == "sqlite":
            self.conn = sqlite3.connect(make_url(url).database, isolation_level=None)
            self.conn.execute("BEGIN IMMEDIATE")
        else:
            import psycopg

            self.conn = psycopg.connect(url)
            self.conn.execute("LOCK TABLE deliveries, actions IN EXCLUSIVE MODE")

    def release(self) -> None:
        self.conn.rollback()
        self.conn.close()


def test_locked_database_raises_store_unavailable_then_recovers(make_store, database_url,
                                                               monkeypatch):
    # keep the waits short
    monkeypatch.setattr(store_engine, "SQLITE_BUSY_TIMEOUT_MS", 200)
    monkeypatch.setattr(store_engine, "POSTGRES_LOCK_TIMEOUT_MS", 200)
    store = make_store()
    delivery = new_delivery()
    lock = _Lock(database_url)
    outcome: list[object] = []

    def write() -> None:
        try:
            outcome.append(store.record_delivery(delivery, [new_decision("k")], acts=True))
        except BaseException as exc:  # noqa: BLE001 - handed back to the test
            outcome.append(exc)

    writer = threading.Thread(target=write, daemon=True)
    try:
        writer.start()
        writer.join(PG_LOCK_WAIT if backend(database_url) == "postgresql" else THREAD_JOIN_LIMIT)
        blocked = writer.is_alive()
        if not blocked:
            store.ping()  # readers are not held up by the writer
    finally:
        lock.release()
    writer.join(THREAD_JOIN_LIMIT)

    assert not blocked, "record_delivery waited on the lock without limit"
    [error] = outcome
    assert isinstance(error, StoreUnavailable), error
    assert row_counts(store) == {"deliveries": 0, "decisions": 0, "actions": 0, "attempts": 0}

    # The lock is gone: the same store, no restart, takes the same delivery.
    receipt = store.record_delivery(delivery, [new_decision("k")], acts=True)
    assert [d.outcome for d in receipt.decisions] == ["scheduled"]
    assert store.delivery(delivery.id) == delivery.__dict__
    assert store.claim("w", LEASE, MAX_ATTEMPTS) is not None
