"""The Worker against the fake VideoSDK API over real HTTP, on a real SQLite store.

The store and the worker share an injected clock, so due times are exact and the
tests move time by setting it; the API calls themselves are real.
"""

from __future__ import annotations

import threading
import uuid
from dataclasses import dataclass

import pytest

from service.config import Settings
from service.errors import ConfigError
from service.retry import RetryPolicy
from service.runtime import build_worker
from service.store import AttemptRecord, NewDecision, NewDelivery, Store
from service.videosdk import TokenSource, VideoSDKClient
from service.worker import Worker

from .conftest import API_KEY, SECRET
from .fakeapi import Reply

DEACTIVATE = "/v2/rooms/deactivate"
T0 = 1_700_000_000.0
HALF = lambda: 0.5  # noqa: E731  backoff = 3/4 of its ceiling: 1.5 s after attempt 1, 3 s after attempt 2
WRONG_SECRET = "wrong-secret-" + "w" * 32
LEASE = 30.0


class Clock:
    def __init__(self, now: float = T0):
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(tmp_path, clock):
    store = Store.from_url(f"sqlite:///{tmp_path}/w.db", clock)
    store.migrate()
    yield store
    store.close()


def make_worker(store, clock, base_url, *, secret=SECRET, timeout=5.0, policy=None,
                worker_id="worker-1") -> Worker:
    client = VideoSDKClient(base_url, TokenSource(API_KEY, secret), timeout=timeout)
    return Worker(store, client, policy or RetryPolicy(), lease_seconds=LEASE, worker_id=worker_id,
                  clock=clock, rand=HALF)


def add_action(store, room: str, *, at: float, kind: str = "deactivate", session: str = "sess-1") -> int:
    """Put one action in the outbox the way ingest does: a delivery and its decision, one transaction."""
    delivery = NewDelivery(
        id=uuid.uuid4().hex, received_at=at, event_type="session-ended", room_id=room,
        session_id=session, participant_id=None, known=True, verified=True, body_sha256="0" * 64,
        body='{"webhookType": "session-ended"}', rules_hash="0" * 64)
    decision = NewDecision(rule="close-after-session", action=kind, room_id=room, session_id=session,
                           key=f"close-after-session|{room}|{session}", trace=None)
    receipt = store.record_delivery(delivery, [decision], acts=True)
    [outcome] = receipt.decisions
    assert outcome.outcome == "scheduled"
    return outcome.action_id


# -- outcomes, table-driven -----------------------------------------------------------------------


@dataclass
class Case:
    # how the API behaves
    replies: tuple = ()              # scripted replies to deactivate, in order; then the fake's default
    missing: bool = False            # the fake does not know the room (a real 404)
    secret: str = SECRET             # the secret the worker signs with
    refused: bool = False            # the worker points at a closed port
    timeout: float = 5.0             # the client's timeout
    # after the first run_once
    status: str = "done"
    http_status: int | None = 200
    outcome: str = "done"            # the attempt row's outcome
    due_in: float | None = None      # for a retry: seconds from T0 until due again
    error_has: tuple = ()            # phrases the recorded error holds (None expected when empty)
    # after the clock reaches the due time (or an hour for finished actions) and run_once again
    then: str | None = None          # status after the second run; None: nothing is claimed
    then_http_status: int | None = None
    deactivated: bool = True         # whether the fake ends with the room deactivated


OUTCOMES = {
    # 200: done at once, nothing left to do
    "200": Case(),
    # 404 room not found (the fake really does not know it): failed, one attempt, never retried
    "404": Case(missing=True, status="failed", http_status=404, outcome="failed",
                error_has=("room not found", "HTTP 404: Room not found"), deactivated=False),
    # 402, VideoSDK's answer to a customRoomId: failed, never retried
    "402": Case(replies=(Reply(402, {"message": "Invalid roomId"}),), status="failed", http_status=402,
                outcome="failed", error_has=("room not found", "HTTP 402: Invalid roomId"), deactivated=False),
    # 400 bad request: failed, never retried
    "400": Case(replies=(Reply(400, {"message": "roomId is required"}),), status="failed", http_status=400,
                outcome="failed", error_has=("bad request", "HTTP 400"), deactivated=False),
    # 429 with Retry-After: 7: pending until exactly now+7, then done
    "429-retry-after": Case(replies=(Reply(429, {"message": "Too many requests"}, {"Retry-After": "7"}),),
                            status="pending", http_status=429, outcome="retry", due_in=7.0,
                            error_has=("rate limited", "HTTP 429"), then="done", then_http_status=200),
    # 429 without Retry-After: backoff, then done
    "429-no-header": Case(replies=(Reply(429, {"message": "Too many requests"}),), status="pending",
                          http_status=429, outcome="retry", due_in=1.5, error_has=("rate limited",),
                          then="done", then_http_status=200),
    # 500 then 200: retried after backoff, then done
    "500-then-200": Case(replies=(Reply(500, {"message": "boom"}),), status="pending", http_status=500,
                         outcome="retry", due_in=1.5, error_has=("transient failure", "HTTP 500: boom"),
                         then="done", then_http_status=200),
    # 503 then 200
    "503-then-200": Case(replies=(Reply(503, {"error": "maintenance"}),), status="pending", http_status=503,
                         outcome="retry", due_in=1.5, error_has=("HTTP 503: maintenance",), then="done",
                         then_http_status=200),
    # 409 conflict is transient
    "409-then-200": Case(replies=(Reply(409, {"message": "conflict"}),), status="pending", http_status=409,
                         outcome="retry", due_in=1.5, error_has=("transient",), then="done",
                         then_http_status=200),
    # a timeout then 200
    "timeout-then-200": Case(replies=(Reply(500, {"message": "late"}, delay=1.0),), timeout=0.3,
                             status="pending", http_status=None, outcome="retry", due_in=1.5,
                             error_has=("timed out",), then="done", then_http_status=200),
    # a dropped connection then 200
    "dropped-then-200": Case(replies=(Reply(drop=True),), status="pending", http_status=None,
                             outcome="retry", due_in=1.5, error_has=("connection failed",), then="done",
                             then_http_status=200),
    # garbage bytes then 200
    "garbage-then-200": Case(replies=(Reply(garbage=b"SSH-2.0-OpenSSH\r\n\r\n"),), status="pending",
                             http_status=None, outcome="retry", due_in=1.5, error_has=("connection failed",),
                             then="done", then_http_status=200),
    # refused connection: pending with backoff, and again with a longer one
    "refused": Case(refused=True, status="pending", http_status=None, outcome="retry", due_in=1.5,
                    error_has=("connection failed",), then="pending", then_http_status=None,
                    deactivated=False),
    # 401 from a wrong secret (the fake checks the JWT): the slow credentials delay, still pending after
    "401-wrong-secret": Case(secret=WRONG_SECRET, status="pending", http_status=401, outcome="retry",
                             due_in=300.0, error_has=("credentials", "VIDEOSDK_SECRET_KEY", "HTTP 401"),
                             then="pending", then_http_status=401, deactivated=False),
    # 403 (wrong role or version): the same slow delay
    "403": Case(replies=(Reply(403, {"message": "the v2 API needs version 2 and the crawler role"}),),
                status="pending", http_status=403, outcome="retry", due_in=300.0,
                error_has=("credentials", "HTTP 403"), then="done", then_http_status=200),
}


@pytest.mark.parametrize("case", OUTCOMES.values(), ids=OUTCOMES.keys())
def test_outcomes(fake_api, closed_port, store, clock, case):
    room = "room-abc"
    if case.missing:
        fake_api.missing_rooms.add(room)
    fake_api.script(DEACTIVATE, *case.replies)
    base = f"http://127.0.0.1:{closed_port}" if case.refused else fake_api.base_url
    worker = make_worker(store, clock, base, secret=case.secret, timeout=case.timeout)
    action_id = add_action(store, room, at=T0)

    assert worker.run_once() is True

    action = store.action(action_id)
    assert action["status"] == case.status
    assert action["attempts"] == 1
    assert action["last_status"] == case.http_status
    assert action["lease_owner"] is None and action["lease_until"] is None
    [attempt] = store.attempts(action_id)
    assert (attempt["number"], attempt["worker"], attempt["outcome"]) == (1, "worker-1", case.outcome)
    assert attempt["http_status"] == case.http_status
    assert attempt["started_at"] == T0
    if case.error_has:
        for phrase in case.error_has:
            assert phrase in attempt["error"]
        assert action["last_error"] == attempt["error"]
    else:
        assert attempt["error"] is None
    assert SECRET not in (attempt["error"] or "")
    if case.due_in is None:
        assert attempt["next_due_at"] is None
        assert action["due_at"] == T0
    else:
        assert attempt["next_due_at"] == T0 + case.due_in
        assert action["due_at"] == T0 + case.due_in
        clock.now = T0 + case.due_in - 0.01
        assert worker.run_once() is False  # not a moment early
        assert len(store.attempts(action_id)) == 1

    clock.now = T0 + (case.due_in if case.due_in is not None else 3600.0)
    ran = worker.run_once()

    action = store.action(action_id)
    if case.then is None:
        assert ran is False  # finished actions are never claimed again
        assert action["status"] == case.status
        assert len(store.attempts(action_id)) == 1
    else:
        assert ran is True
        assert action["status"] == case.then
        assert action["attempts"] == 2
        assert [a["http_status"] for a in store.attempts(action_id)] == [case.http_status, case.then_http_status]
    assert (room in fake_api.disabled_rooms) is case.deactivated
    if not case.refused and not case.timeout < 1:  # a timed-out call lands at the fake later
        assert len(fake_api.calls_to(DEACTIVATE)) == (1 if case.then is None else 2)


def test_refused_connection_backs_off_further_each_attempt(closed_port, store, clock):
    worker = make_worker(store, clock, f"http://127.0.0.1:{closed_port}")
    action_id = add_action(store, "room-1", at=T0)
    due = []

    for _ in range(4):
        assert worker.run_once() is True
        clock.now = store.action(action_id)["due_at"]
        due.append(clock.now)

    # 3/4 of 2, 4, 8, 16 s after each attempt
    assert [b - a for a, b in zip([T0, *due], due)] == [1.5, 3.0, 6.0, 12.0]
    assert store.action(action_id)["status"] == "pending"


def test_always_500_is_dead_after_max_attempts_and_kept(fake_api, store, clock):
    fake_api.script(DEACTIVATE, *[Reply(500, {"message": "down"})] * 5)
    worker = make_worker(store, clock, fake_api.base_url, policy=RetryPolicy(max_attempts=3))
    action_id = add_action(store, "room-1", at=T0)

    for _ in range(3):
        assert worker.run_once() is True
        clock.now = max(clock.now, store.action(action_id)["due_at"])
    clock.now += 86_400
    assert worker.run_once() is False  # dead is never claimed again

    action = store.action(action_id)
    assert action is not None  # kept, never deleted
    assert action["status"] == "dead"
    assert action["attempts"] == 3
    assert "gave up after 3 attempts" in action["last_error"]
    rows = store.attempts(action_id)
    assert [(r["number"], r["http_status"], r["outcome"]) for r in rows] == [
        (1, 500, "retry"), (2, 500, "retry"), (3, 500, "dead")]
    assert rows[-1]["next_due_at"] is None
    assert len(fake_api.calls_to(DEACTIVATE)) == 3
    assert store.actions(status="dead")[0]["id"] == action_id
    assert fake_api.disabled_rooms == set()


def test_worker_that_dies_holding_a_claim(fake_api, store, clock):
    action_id = add_action(store, "room-1", at=T0)
    stale = store.claim("dead-worker", LEASE, 10)  # claimed, then the process "dies"
    assert stale is not None and stale.id == action_id
    survivor = make_worker(store, clock, fake_api.base_url, worker_id="worker-2")

    assert survivor.run_once() is False  # the lease still holds
    clock.now = T0 + LEASE  # the lease's last instant
    assert survivor.run_once() is False
    clock.now = T0 + LEASE + 1  # the lease has run out
    assert survivor.run_once() is True

    action = store.action(action_id)
    assert action["status"] == "done"
    assert action["attempts"] == 2  # the dead worker's claim counts
    assert fake_api.deactivations() == ["room-1"]  # exactly one successful call
    [attempt] = store.attempts(action_id)
    assert (attempt["number"], attempt["worker"], attempt["http_status"]) == (2, "worker-2", 200)

    # the dead worker comes back and records its call late: recorded, but the action does not move
    late = AttemptRecord(started_at=T0, latency_ms=1.0, http_status=500, outcome="retry",
                         error="late", next_due_at=T0 + 5)
    assert store.finish(stale, late, "dead-worker") is False
    assert store.action(action_id)["status"] == "done"
    assert survivor.run_once() is False


def test_action_that_keeps_killing_its_worker_is_given_up(fake_api, store, clock):
    action_id = add_action(store, "room-1", at=T0)
    worker = make_worker(store, clock, fake_api.base_url, policy=RetryPolicy(max_attempts=2))
    for n in range(2):  # two workers claim it and die
        clock.now = T0 + n * (LEASE + 1)
        assert store.claim(f"dies-{n}", LEASE, 2) is not None

    clock.now = T0 + 2 * (LEASE + 1)
    assert worker.run_once() is False

    action = store.action(action_id)
    assert action["status"] == "dead"
    assert "2 claims ended without a recorded result" in action["last_error"]
    assert fake_api.calls_to(DEACTIVATE) == []


def test_unknown_action_kind_is_dead_without_a_call(fake_api, store, clock):
    worker = make_worker(store, clock, fake_api.base_url)
    action_id = add_action(store, "room-1", at=T0, kind="end-session")  # written by a newer version

    assert worker.run_once() is True

    action = store.action(action_id)
    assert action["status"] == "dead"
    [attempt] = store.attempts(action_id)
    assert attempt["outcome"] == "dead"
    assert attempt["http_status"] is None
    assert "cannot carry out 'end-session'" in attempt["error"]
    assert fake_api.calls == []


def test_empty_outbox_run_once_is_false(fake_api, store, clock):
    worker = make_worker(store, clock, fake_api.base_url)

    assert worker.run_once() is False
    assert fake_api.calls == []


def test_most_overdue_action_goes_first(fake_api, store, clock):
    worker = make_worker(store, clock, fake_api.base_url)
    late = add_action(store, "room-late", at=T0)
    early = add_action(store, "room-early", at=T0 - 100)

    assert worker.run_once() and worker.run_once()

    assert fake_api.deactivations() == ["room-early", "room-late"]
    assert store.action(early)["status"] == store.action(late)["status"] == "done"


# -- the attempts table ------------------------------------------------------------------------


def test_each_attempt_records_status_latency_and_error(fake_api, store, clock):
    fake_api.script(DEACTIVATE, Reply(500, {"message": "boom"}),
                    Reply(429, {"message": "slow down"}, {"Retry-After": "7"}),
                    Reply(404, {"message": "Room not found"}))
    worker = make_worker(store, clock, fake_api.base_url)
    action_id = add_action(store, "room-1", at=T0)

    for _ in range(3):
        assert worker.run_once() is True
        clock.now = max(clock.now, store.action(action_id)["due_at"])

    rows = store.attempts(action_id)
    # Each row: (number, http status, outcome, error, next due)
    assert [(r["number"], r["http_status"], r["outcome"], r["error"], r["next_due_at"]) for r in rows] == [
        (1, 500, "retry", "transient failure; HTTP 500: boom", T0 + 1.5),          # backoff after attempt 1
        (2, 429, "retry", "rate limited; HTTP 429: slow down", T0 + 1.5 + 7.0),    # Retry-After honoured
        (3, 404, "failed", "room not found; HTTP 404: Room not found", None),      # final
    ]
    assert [r["started_at"] for r in rows] == [T0, T0 + 1.5, T0 + 8.5]
    assert all(isinstance(r["latency_ms"], float) and r["latency_ms"] > 0 for r in rows)
    assert all(r["worker"] == "worker-1" for r in rows)
    action = store.action(action_id)
    assert (action["status"], action["last_status"], action["last_error"]) == (
        "failed", 404, "room not found; HTTP 404: Room not found")


def test_success_attempt_records_no_error(fake_api, store, clock):
    worker = make_worker(store, clock, fake_api.base_url)
    action_id = add_action(store, "room-1", at=T0)

    worker.run_once()

    [row] = store.attempts(action_id)
    assert (row["http_status"], row["outcome"], row["error"], row["next_due_at"]) == (200, "done", None, None)
    assert row["latency_ms"] > 0
    assert store.action(action_id)["last_error"] is None


# -- the loop -----------------------------------------------------------------------------------


def test_run_drains_several_actions_and_stops_when_told(fake_api, store, clock):
    worker = make_worker(store, clock, fake_api.base_url)
    rooms = [f"room-{n}" for n in range(6)]
    ids = [add_action(store, room, at=T0) for room in rooms]
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop, 0.02), daemon=True)

    thread.start()
    drained = fake_api.wait_for(lambda: all(store.action(i)["status"] == "done" for i in ids))
    stop.set()
    thread.join(timeout=10)

    assert drained
    assert not thread.is_alive()
    assert sorted(fake_api.deactivations()) == rooms  # each room exactly once
    assert all(len(store.attempts(i)) == 1 for i in ids)
    after = add_action(store, "room-after-stop", at=T0)  # a stopped worker takes nothing more
    assert store.action(after)["status"] == "pending"
    assert store.action(after)["attempts"] == 0


def test_run_finishes_and_records_the_call_in_flight_when_stopped(fake_api, store, clock):
    fake_api.script(DEACTIVATE, Reply(200, {"roomId": "room-1", "disabled": True}, delay=1.0))
    worker = make_worker(store, clock, fake_api.base_url)
    action_id = add_action(store, "room-1", at=T0)
    second = add_action(store, "room-2", at=T0 + 1)
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop, 0.02), daemon=True)

    thread.start()
    leased = fake_api.wait_for(lambda: store.action(action_id)["lease_owner"] == "worker-1", interval=0.01)
    stop.set()  # while the first call is in flight
    thread.join(timeout=10)

    assert leased
    assert not thread.is_alive()
    assert store.action(action_id)["status"] == "done"
    assert [r["http_status"] for r in store.attempts(action_id)] == [200]
    assert store.action(second)["status"] == "pending"  # not started after the stop
    assert store.action(second)["attempts"] == 0


def test_run_stops_on_an_empty_outbox(fake_api, store, clock):
    worker = make_worker(store, clock, fake_api.base_url)
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop, 0.02), daemon=True)

    thread.start()
    stop.set()
    thread.join(timeout=10)

    assert not thread.is_alive()
    assert fake_api.calls == []


# -- runtime.build_worker -------------------------------------------------------------------------


def test_build_worker_wires_settings_to_a_working_worker(fake_api, tmp_path):
    settings = Settings(api_key=API_KEY, secret_key=SECRET, api_base=fake_api.base_url,
                        database_url=f"sqlite:///{tmp_path}/w.db", api_timeout=2.0, max_attempts=3,
                        lease_seconds=5.0)
    store = Store.from_url(settings.database_url)
    store.migrate()
    try:
        worker = build_worker(settings, store)
        action_id = add_action(store, "room-1", at=store.clock())

        assert worker.policy.max_attempts == 3
        assert worker.lease_seconds == 5.0
        assert worker.client.timeout == (2.0, 2.0)
        assert worker.client.base_url == fake_api.base_url
        assert worker.run_once() is True
        assert store.action(action_id)["status"] == "done"
        assert fake_api.deactivations() == ["room-1"]
    finally:
        store.close()


# Each row: the credentials given -> build_worker refuses, naming what is missing.
MISSING_CREDENTIALS = [
    (None, SECRET, "VIDEOSDK_API_KEY"),        # no API key
    (API_KEY, None, "VIDEOSDK_SECRET_KEY"),    # no secret
]


@pytest.mark.parametrize("api_key, secret, missing", MISSING_CREDENTIALS)
def test_build_worker_refuses_without_credentials(store, api_key, secret, missing):
    with pytest.raises(ConfigError) as raised:
        build_worker(Settings(api_key=api_key, secret_key=secret), store)

    assert missing in str(raised.value)
