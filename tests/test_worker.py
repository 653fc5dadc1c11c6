"""The Worker against the fake VideoSDK API over real HTTP, on a real SQLite store.

The store, the ingestor and the worker share an injected clock, so due times are
exact and the tests move time by setting it; the API calls themselves are real.
Actions and timers get into the store the way the service puts them there: a
parsed webhook body through the inbox and the `Decider`, decided by a rule set parsed from YAML.
"""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass

import pytest

from service import explain
from service.breaker import CircuitBreaker
from service.config import Settings
from service.errors import ConfigError, StoreUnavailable
from service.reload import RulesHolder
from service.retrypolicy import RetryPolicy
from service.rules.model import RuleSet
from service.runtime import build_worker, load_rules_holder
from service.planner import Outcome
from service.store import AttemptRecord, NewDelivery, PlanWrite, Store

from .conftest import API_KEY, SECRET, event_body, ingest
from .builders import LEASE, SESSION, T0, add_action, deliver, make_worker, parse, session_rules
from .fakeapi import Reply, participant

DEACTIVATE = "/v2/rooms/deactivate"
END_SESSION = "/v2/sessions/end"
WRONG_SECRET = "wrong-secret-" + "w" * 32
CHECK = f"/v2/sessions/{SESSION}/participants/active"



# -- outcomes, table-driven -----------------------------------------------------------------------


@dataclass
class Case:
    # how the API behaves
    replies: tuple = ()              # scripted replies to the action's call, in order; then the fake's default
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
    acted: bool = True               # whether the fake ends with the room deactivated / session ended


OUTCOMES = {
    # 200: done at once, nothing left to do
    "200": Case(),
    # 404 room not found (the fake really does not know it): failed, one attempt, never retried
    "404": Case(missing=True, status="failed", http_status=404, outcome="failed",
                error_has=("room not found", "HTTP 404: Room not found"), acted=False),
    # 402, VideoSDK's answer to a customRoomId: failed, never retried
    "402": Case(replies=(Reply(402, {"message": "Invalid roomId"}),), status="failed", http_status=402,
                outcome="failed", error_has=("room not found", "HTTP 402: Invalid roomId"), acted=False),
    # 400 bad request: failed, never retried
    "400": Case(replies=(Reply(400, {"message": "roomId is required"}),), status="failed", http_status=400,
                outcome="failed", error_has=("bad request", "HTTP 400"), acted=False),
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
                    error_has=("connection failed",), then="pending", then_http_status=None, acted=False),
    # 401 from a wrong secret (the fake checks the JWT): the slow credentials delay, still pending after
    "401-wrong-secret": Case(secret=WRONG_SECRET, status="pending", http_status=401, outcome="retry",
                             due_in=300.0, error_has=("credentials", "VIDEOSDK_SECRET_KEY", "HTTP 401"),
                             then="pending", then_http_status=401, acted=False),
    # 403 (wrong role or version): the same slow delay
    "403": Case(replies=(Reply(403, {"message": "the v2 API needs version 2 and the crawler role"}),),
                status="pending", http_status=403, outcome="retry", due_in=300.0,
                error_has=("credentials", "HTTP 403"), then="done", then_http_status=200),
}

# Each row: action kind -> (the path it calls, the path it must never call, whether the fake shows its effect)
KINDS = {
    # deactivate: POST /v2/rooms/deactivate; the fake then lists the room as disabled
    "deactivate": (DEACTIVATE, END_SESSION, lambda fake, room: room in fake.disabled_rooms),
    # end-session: POST /v2/sessions/end; the fake then lists the session as ended
    "end-session": (END_SESSION, DEACTIVATE, lambda fake, room: SESSION in fake.ended_sessions),
}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("case", OUTCOMES.values(), ids=OUTCOMES.keys())
def test_outcomes(fake_api, closed_port, store, clock, case, kind):
    path, other_path, acted = KINDS[kind]
    room = "room-abc"
    if case.missing:
        fake_api.missing_rooms.add(room)
    fake_api.script(path, *case.replies)
    base = f"http://127.0.0.1:{closed_port}" if case.refused else fake_api.base_url
    worker = make_worker(store, clock, base, secret=case.secret, timeout=case.timeout)
    action_id = add_action(store, room, at=T0, kind=kind)

    assert worker.run_once() is True

    action = store.actions.action(action_id)
    assert action["kind"] == kind
    assert action["status"] == case.status
    assert action["attempts"] == 1
    assert action["last_status"] == case.http_status
    assert action["lease_owner"] is None and action["lease_until"] is None
    [attempt] = store.actions.attempts(action_id)
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
        assert len(store.actions.attempts(action_id)) == 1

    clock.now = T0 + (case.due_in if case.due_in is not None else 3600.0)
    ran = worker.run_once()

    action = store.actions.action(action_id)
    if case.then is None:
        assert ran is False  # finished actions are never claimed again
        assert action["status"] == case.status
        assert len(store.actions.attempts(action_id)) == 1
    else:
        assert ran is True
        assert action["status"] == case.then
        assert action["attempts"] == 2
        assert [a["http_status"] for a in store.actions.attempts(action_id)] == [case.http_status, case.then_http_status]
    assert acted(fake_api, room) is case.acted
    assert fake_api.calls_to(other_path) == []  # each kind makes only its own call
    if not case.refused and not case.timeout < 1:  # a timed-out call lands at the fake later
        assert len(fake_api.calls_to(path)) == (1 if case.then is None else 2)


def test_end_session_posts_room_and_session_and_leaves_the_room_usable(fake_api, store, clock):
    worker = make_worker(store, clock, fake_api.base_url)
    action_id = add_action(store, "room-1", at=T0, kind="end-session", session="sess-77")

    assert worker.run_once() is True

    [call] = fake_api.calls_to(END_SESSION)
    assert (call.method, call.body) == ("POST", {"roomId": "room-1", "sessionId": "sess-77"})
    assert fake_api.session_ends() == [("room-1", "sess-77")]
    assert fake_api.calls_to(DEACTIVATE) == [] and fake_api.disabled_rooms == set()
    action = store.actions.action(action_id)
    assert (action["status"], action["last_status"]) == ("done", 200)
    clock.now = T0 + 3600
    assert worker.run_once() is False  # done is done


def test_refused_connection_backs_off_further_each_attempt(closed_port, store, clock):
    worker = make_worker(store, clock, f"http://127.0.0.1:{closed_port}")
    action_id = add_action(store, "room-1", at=T0)
    due = []

    for _ in range(4):
        assert worker.run_once() is True
        clock.now = store.actions.action(action_id)["due_at"]
        due.append(clock.now)

    # 3/4 of 2, 4, 8, 16 s after each attempt
    assert [b - a for a, b in zip([T0, *due], due)] == [1.5, 3.0, 6.0, 12.0]
    assert store.actions.action(action_id)["status"] == "pending"


def test_always_500_is_dead_after_max_attempts_and_kept(fake_api, store, clock):
    fake_api.script(DEACTIVATE, *[Reply(500, {"message": "down"})] * 5)
    worker = make_worker(store, clock, fake_api.base_url, policy=RetryPolicy(max_attempts=3))
    action_id = add_action(store, "room-1", at=T0)

    for _ in range(3):
        assert worker.run_once() is True
        clock.now = max(clock.now, store.actions.action(action_id)["due_at"])
    clock.now += 86_400
    assert worker.run_once() is False  # dead is never claimed again

    action = store.actions.action(action_id)
    assert action is not None  # kept, never deleted
    assert action["status"] == "dead"
    assert action["attempts"] == 3
    assert "gave up after 3 attempts" in action["last_error"]
    rows = store.actions.attempts(action_id)
    assert [(r["number"], r["http_status"], r["outcome"]) for r in rows] == [
        (1, 500, "retry"), (2, 500, "retry"), (3, 500, "dead")]
    assert rows[-1]["next_due_at"] is None
    assert len(fake_api.calls_to(DEACTIVATE)) == 3
    assert store.actions.actions(status="dead")[0]["id"] == action_id
    assert fake_api.disabled_rooms == set()


def test_worker_that_dies_holding_a_claim(fake_api, store, clock):
    action_id = add_action(store, "room-1", at=T0)
    stale = store.outbox.claim("dead-worker", LEASE, 10)  # claimed, then the process "dies"
    assert stale is not None and stale.id == action_id
    survivor = make_worker(store, clock, fake_api.base_url, worker_id="worker-2")

    assert survivor.run_once() is False  # the lease still holds
    clock.now = T0 + LEASE  # the lease's last instant
    assert survivor.run_once() is False
    clock.now = T0 + LEASE + 1  # the lease has run out
    assert survivor.run_once() is True

    action = store.actions.action(action_id)
    assert action["status"] == "done"
    assert action["attempts"] == 2  # the dead worker's claim counts
    assert fake_api.deactivations() == ["room-1"]  # exactly one successful call
    [attempt] = store.actions.attempts(action_id)
    assert (attempt["number"], attempt["worker"], attempt["http_status"]) == (2, "worker-2", 200)

    # the dead worker comes back and records its call late: recorded, but the action does not move
    late = AttemptRecord(started_at=T0, latency_ms=1.0, http_status=500, outcome="retry",
                         error="late", next_due_at=T0 + 5)
    assert store.outbox.finish(stale, late, "dead-worker") is False
    assert store.actions.action(action_id)["status"] == "done"
    assert survivor.run_once() is False


def test_action_that_keeps_killing_its_worker_is_given_up(fake_api, store, clock):
    action_id = add_action(store, "room-1", at=T0)
    worker = make_worker(store, clock, fake_api.base_url, policy=RetryPolicy(max_attempts=2))
    for n in range(2):  # two workers claim it and die
        clock.now = T0 + n * (LEASE + 1)
        assert store.outbox.claim(f"dies-{n}", LEASE, 2) is not None

    clock.now = T0 + 2 * (LEASE + 1)
    assert worker.run_once() is False

    action = store.actions.action(action_id)
    assert action["status"] == "dead"
    assert "2 claims ended without a recorded result" in action["last_error"]
    assert fake_api.calls_to(DEACTIVATE) == []


def test_unknown_action_kind_is_dead_without_a_call(fake_api, store, clock):
    """A kind this version cannot carry out (written by a newer one): dead, and nothing is called."""
    worker = make_worker(store, clock, fake_api.base_url)
    delivery = NewDelivery(
        id=uuid.uuid4().hex, received_at=T0, event_type="session-ended", room_id="room-1",
        session_id=SESSION, participant_id=None, known=True, verified=True, body_sha256="0" * 64,
        body='{"webhookType": "session-ended"}', rules_hash="0" * 64)
    decision = Outcome(rule="newer-rule", action="mute-everyone", room_id="room-1", session_id=SESSION,
                       key=f"newer-rule|room-1|{SESSION}", trace=None)
    receipt = ingest(store, delivery, lambda state, timers, acted: PlanWrite(None, (decision,)))
    [outcome] = receipt.decisions
    action_id = outcome.action_id

    assert worker.run_once() is True

    action = store.actions.action(action_id)
    assert action["status"] == "dead"
    [attempt] = store.actions.attempts(action_id)
    assert attempt["outcome"] == "dead"
    assert attempt["http_status"] is None
    assert "cannot carry out 'mute-everyone'" in attempt["error"]
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
    assert store.actions.action(early)["status"] == store.actions.action(late)["status"] == "done"


# -- the attempts table ------------------------------------------------------------------------


def test_each_attempt_records_status_latency_and_error(fake_api, store, clock):
    fake_api.script(DEACTIVATE, Reply(500, {"message": "boom"}),
                    Reply(429, {"message": "slow down"}, {"Retry-After": "7"}),
                    Reply(404, {"message": "Room not found"}))
    worker = make_worker(store, clock, fake_api.base_url)
    action_id = add_action(store, "room-1", at=T0)

    for _ in range(3):
        assert worker.run_once() is True
        clock.now = max(clock.now, store.actions.action(action_id)["due_at"])

    rows = store.actions.attempts(action_id)
    # Each row: (number, http status, outcome, error, next due)
    assert [(r["number"], r["http_status"], r["outcome"], r["error"], r["next_due_at"]) for r in rows] == [
        (1, 500, "retry", "transient failure; HTTP 500: boom", T0 + 1.5),          # backoff after attempt 1
        (2, 429, "retry", "rate limited; HTTP 429: slow down", T0 + 1.5 + 7.0),    # Retry-After honoured
        (3, 404, "failed", "room not found; HTTP 404: Room not found", None),      # final
    ]
    assert [r["started_at"] for r in rows] == [T0, T0 + 1.5, T0 + 8.5]
    assert all(isinstance(r["latency_ms"], float) and r["latency_ms"] > 0 for r in rows)
    assert all(r["worker"] == "worker-1" for r in rows)
    assert all(r["note"] is None for r in rows)  # no confirm check, nothing to note
    action = store.actions.action(action_id)
    assert (action["status"], action["last_status"], action["last_error"]) == (
        "failed", 404, "room not found; HTTP 404: Room not found")


def test_success_attempt_records_no_error(fake_api, store, clock):
    worker = make_worker(store, clock, fake_api.base_url)
    action_id = add_action(store, "room-1", at=T0)

    worker.run_once()

    [row] = store.actions.attempts(action_id)
    assert (row["http_status"], row["outcome"], row["error"], row["next_due_at"]) == (200, "done", None, None)
    assert row["latency_ms"] > 0
    assert store.actions.action(action_id)["last_error"] is None


# -- confirm: active-participants, table-driven -------------------------------------------------------


@dataclass
class Confirm:
    # what VideoSDK says about the session
    active: list | None = None       # who is live in sess-1 (fake.set_active); None: the fake knows no session
    shape: str = "current"           # which documented shape the fake answers in: current | older
    nobody: str = "404"              # how the fake says nobody is there: 404 (documented) | empty (a 200)
    replies: tuple = ()              # scripted answers to the check, in order; then the fake's default
    # after the first run_once
    status: str = "done"             # the action's status
    outcome: str = "done"            # the attempt's outcome
    http_status: object = 200        # the attempt's http status; ANY: not pinned
    error_has: tuple = ()            # phrases the attempt's error holds (None when empty)
    note_has: str | None = None      # what the attempt's note says (None: no note)
    due_in: float | None = None      # for a retry: seconds from T0 until due again
    # after the clock reaches the due time (or an hour) and run_once again
    then: str | None = None          # status after the second run; None: never claimed again
    deactivated: bool = True         # whether the room ends up deactivated (never more than once)


ANY = object()
ONE_ACTIVE = [participant("p-1", "Ann")]  # as the documented examples list one

CONFIRMS = {
    # someone is in the session: cancelled, naming the count, and the room is never touched
    "one-active": Confirm(active=ONE_ACTIVE, status="cancelled", outcome="cancelled", http_status=ANY,
                          error_has=("confirm: 1 participant(s) active in session sess-1", "not acted on"),
                          deactivated=False),
    # two in it: the count says two
    "two-active": Confirm(active=ONE_ACTIVE + [participant("p-2")], status="cancelled",
                          outcome="cancelled", http_status=ANY,
                          error_has=("confirm: 2 participant(s) active",), deactivated=False),
    # the older documented shape ({"data": {session}}) is read too
    "older-shape": Confirm(active=ONE_ACTIVE, shape="older", status="cancelled", outcome="cancelled",
                           http_status=ANY, error_has=("confirm: 1 participant(s) active",), deactivated=False),
    "older-shape-two": Confirm(active=ONE_ACTIVE + [participant("p-2")], shape="older", status="cancelled",
                               outcome="cancelled", http_status=ANY, error_has=("2 participant(s) active",),
                               deactivated=False),
    # nobody in it, said as documented (404 "No active participants found"): deactivated, with why
    "nobody-active": Confirm(active=[], note_has="confirm: session sess-1 not found (404): nobody active"),
    # nobody in it, said as a 200 listing no one (the docs' other possible reading), in either shape
    "nobody-empty-current": Confirm(active=[], nobody="empty", note_has="confirm: nobody active in session sess-1"),
    "nobody-empty-older": Confirm(active=[], nobody="empty", shape="older",
                                  note_has="confirm: nobody active in session sess-1"),
    # the check answers 404 (session not live): assumed nobody is in it, so it proceeds, and notes why
    "check-404": Confirm(replies=(Reply(404, {"message": "Session not found"}),),
                         note_has="confirm: session sess-1 not found (404): nobody active"),
    # the check answers 500: retried after backoff, no deactivate call yet; then the check passes
    "check-500": Confirm(replies=(Reply(500, {"message": "boom"}),), status="pending", outcome="retry",
                         http_status=500,
                         error_has=("confirm check failed: transient failure", "HTTP 500: boom"),
                         due_in=1.5, then="done"),
    # the check is refused for credentials (403): the slow credentials delay, no deactivate call yet
    "check-403": Confirm(replies=(Reply(403, {"message": "forbidden"}),), status="pending", outcome="retry",
                         http_status=403, error_has=("confirm check failed: credentials refused",),
                         due_in=300.0, then="done"),
    # an answer in no documented shape (200 {"foo": 1}; scripted on purpose, the fake's defaults
    # are all documented), twice: retried each time, never deactivated
    "unreadable": Confirm(replies=(Reply(200, {"foo": 1}), Reply(200, {"foo": 1})), status="pending",
                          outcome="retry", http_status=None,
                          error_has=("confirm: could not read the active participants: the answer held keys [foo]",),
                          due_in=1.5, then="pending", deactivated=False),
    # a session without a participants list: the server SDK would read nobody; a misread here
    "session-without-participants": Confirm(
        replies=(Reply(200, {"data": {"id": SESSION}}),) * 2, status="pending", outcome="retry",
        http_status=None, error_has=("could not read the active participants: the answer held a session "
                                     "with keys [id]",), due_in=1.5, then="pending", deactivated=False),
    # the undocumented shape the fake used to answer (a bare participant list under data) is a
    # page of "sessions" without participants: a misread, never a count of participants
    "old-fake-shape": Confirm(replies=(Reply(200, {"data": ONE_ACTIVE, "pageInfo": {"total": 1}}),) * 2,
                              status="pending", outcome="retry", http_status=None,
                              error_has=("could not read the active participants",), due_in=1.5,
                              then="pending", deactivated=False),
}


@pytest.mark.parametrize("case", CONFIRMS.values(), ids=CONFIRMS.keys())
def test_confirm_active_participants(fake_api, store, clock, case):
    fake_api.participants_shape, fake_api.nobody_answer = case.shape, case.nobody
    if case.active is not None:
        fake_api.set_active(SESSION, list(case.active), "room-1")
    fake_api.script(CHECK, *case.replies)
    worker = make_worker(store, clock, fake_api.base_url,
                         rules=RulesHolder(session_rules(confirm="active-participants")))
    action_id = add_action(store, "room-1", at=T0, confirm="active-participants")
    assert store.actions.action(action_id)["confirm"] == "active-participants"

    assert worker.run_once() is True

    [check] = fake_api.calls_to(CHECK)  # asked once, just before acting
    assert check.method == "GET"
    assert len(fake_api.calls_to(DEACTIVATE)) == (1 if case.status == "done" else 0)
    action = store.actions.action(action_id)
    assert action["status"] == case.status
    [attempt] = store.actions.attempts(action_id)
    assert attempt["outcome"] == case.outcome
    if case.http_status is not ANY:
        assert attempt["http_status"] == case.http_status
    if case.error_has:
        for phrase in case.error_has:
            assert phrase in attempt["error"]
    else:
        assert attempt["error"] is None
    assert attempt["note"] == case.note_has
    if case.due_in is not None:
        assert attempt["next_due_at"] == action["due_at"] == T0 + case.due_in

    clock.now = T0 + (case.due_in if case.due_in is not None else 3600.0)
    ran = worker.run_once()

    if case.then is None:
        assert ran is False  # cancelled and done are final
        assert store.actions.action(action_id)["status"] == case.status
    else:
        assert ran is True
        assert store.actions.action(action_id)["status"] == case.then
        assert len(fake_api.calls_to(CHECK)) == 2  # checked again on the retry
    assert fake_api.deactivations() == (["room-1"] if case.deactivated else [])


def test_confirm_unreadable_every_time_ends_dead_and_never_deactivates(fake_api, store, clock):
    fake_api.script(CHECK, *[Reply(200, {"foo": 1})] * 3)
    worker = make_worker(store, clock, fake_api.base_url, policy=RetryPolicy(max_attempts=3))
    action_id = add_action(store, "room-1", at=T0, confirm="active-participants")

    for _ in range(3):
        assert worker.run_once() is True
        clock.now = max(clock.now, store.actions.action(action_id)["due_at"])
    clock.now += 3600
    assert worker.run_once() is False

    assert [a["outcome"] for a in store.actions.attempts(action_id)] == ["retry", "retry", "dead"]
    assert store.actions.action(action_id)["status"] == "dead"
    assert len(fake_api.calls_to(CHECK)) == 3
    assert fake_api.calls_to(DEACTIVATE) == []


def test_confirm_without_a_session_is_cancelled_without_any_call(fake_api, store, clock):
    """An action with no session id has nothing to check: it is cancelled, never acted on blind."""
    worker = make_worker(store, clock, fake_api.base_url)
    delivery = NewDelivery(
        id=uuid.uuid4().hex, received_at=T0, event_type="session-ended", room_id="room-1",
        session_id=None, participant_id=None, known=True, verified=True, body_sha256="0" * 64,
        body='{"webhookType": "session-ended"}', rules_hash="0" * 64)
    decision = Outcome(rule="close-after-session", action="deactivate", room_id="room-1", session_id=None,
                       key="close-after-session|room-1|-", trace=None, confirm="active-participants")
    [outcome] = ingest(store, delivery, lambda state, timers, acted: PlanWrite(None, (decision,))).decisions

    assert worker.run_once() is True

    assert store.actions.action(outcome.action_id)["status"] == "cancelled"
    [attempt] = store.actions.attempts(outcome.action_id)
    assert "no session to check" in attempt["error"]
    assert fake_api.calls == []


def test_confirm_check_and_call_together_stay_within_the_lease(fake_api, store, clock):
    """A 4.5 s lease with a 2 s timeout (2 s to connect, 2 s to answer): after a check that took
    1.9 s, a call could outlast the lease and a second worker could make it too. The worker must
    not call then: it gives the action back, due now, and the room is deactivated once, by the
    next attempt."""
    with pytest.raises(ConfigError, match="must exceed twice"):  # settings refuse a shorter lease
        Settings.from_env({"ACTION_LEASE_SECONDS": "4", "VIDEOSDK_TIMEOUT_SECONDS": "2"})
    Settings.from_env({"ACTION_LEASE_SECONDS": "4.5", "VIDEOSDK_TIMEOUT_SECONDS": "2"})
    first, second = (make_worker(store, clock, fake_api.base_url, worker_id=name, timeout=2.0, lease=4.5)
                     for name in ("worker-a", "worker-b"))
    action_id = add_action(store, "room-1", at=T0, confirm="active-participants")
    check = first.actor.client.active_participants

    def slow_check(session_id):
        clock.now += 1.9  # the check answers within its 2 s timeout
        return check(session_id)

    first.actor.client.active_participants = slow_check
    assert first.run_once() is True
    assert fake_api.calls_to(DEACTIVATE) == []  # no call that could outlive the lease
    assert store.actions.attempts(action_id) == []  # given back unused: no attempt, none counted
    action = store.actions.action(action_id)
    assert (action["status"], action["attempts"], action["lease_owner"]) == ("pending", 0, None)
    assert second.run_once() is True  # due at once: the next attempt checks again and acts
    assert fake_api.deactivations() == ["room-1"]
    assert store.actions.action(action_id)["status"] == "done"


# -- rules in force when the worker acts ----------------------------------------------------------------


def test_a_room_protected_by_a_reload_before_the_worker_acts_is_cancelled(fake_api, store, clock):
    holder = RulesHolder(session_rules())
    worker = make_worker(store, clock, fake_api.base_url, rules=holder)
    guarded = add_action(store, "vip-room", at=T0)
    other = add_action(store, "room-2", at=T0 + 1)

    holder.replace(session_rules(settings="{protect: [vip-*]}"))  # swapped, as a reload does
    assert worker.run_once() is True

    action = store.actions.action(guarded)
    assert action["status"] == "cancelled"
    [attempt] = store.actions.attempts(guarded)
    assert attempt["outcome"] == "cancelled"
    assert "room vip-room is protected by settings.protect" in attempt["error"]
    assert holder.current.short_hash in attempt["error"]  # which rules protected it
    assert fake_api.calls == []  # no call at all, not even a check

    clock.now = T0 + 3600
    assert worker.run_once() is True  # the room that is not protected is still acted on
    assert worker.run_once() is False  # the cancelled one is never claimed again
    assert fake_api.deactivations() == ["room-2"]
    assert store.actions.action(other)["status"] == "done"


@pytest.mark.parametrize("reloaded", [
    session_rules(settings="{dry_run: true}"),
    parse("version: 1\nrules:\n  - name: close-after-session\n    on: session-ended\n"
          "    action: deactivate\n    dry_run: true\n"),
], ids=["settings", "rule"])
def test_a_reload_to_dry_run_cancels_what_is_queued_before_the_worker_acts(fake_api, store, clock, reloaded):
    # dry_run is how an operator stops roomwarden acting: actions queued before the reload must
    # not be carried out afterwards either.
    holder = RulesHolder(session_rules())
    worker = make_worker(store, clock, fake_api.base_url, rules=holder)
    action_id = add_action(store, "room-1", at=T0)

    holder.replace(reloaded)
    assert worker.run_once() is True

    assert store.actions.action(action_id)["status"] == "cancelled"
    [attempt] = store.actions.attempts(action_id)
    assert "dry_run is on" in attempt["error"] and reloaded.short_hash in attempt["error"]
    assert fake_api.calls == []


def test_max_actions_per_minute_holds_the_rest_back_and_loses_none(fake_api, store, clock):
    holder = RulesHolder(session_rules(settings="{max_actions_per_minute: 2}"))
    worker = make_worker(store, clock, fake_api.base_url, rules=holder)
    rooms = [f"room-{n}" for n in range(5)]
    ids = [add_action(store, room, at=T0) for room in rooms]

    def drain() -> int:
        runs = 0
        while worker.run_once():
            runs += 1
        return runs

    # Each row: (seconds after T0, actions carried out then, deactivations so far)
    steps = [
        (0.0, 2, 2),     # the first two, then held back
        (59.99, 0, 2),   # still within the minute: nothing more
        (60.0, 2, 4),    # a minute after the first two: two more
        (119.99, 0, 4),  # within the second minute
        (120.0, 1, 5),   # the last one
    ]
    for offset, carried_out, total in steps:
        clock.now = T0 + offset
        assert (offset, drain(), len(fake_api.deactivations())) == (offset, carried_out, total)
        assert all(store.actions.action(i)["status"] in ("pending", "done") for i in ids)  # held back, never dropped

    assert sorted(fake_api.deactivations()) == rooms  # each exactly once
    assert all(store.actions.action(i)["status"] == "done" and store.actions.action(i)["attempts"] == 1 for i in ids)


# -- for: timers ----------------------------------------------------------------------------------------

EMPTY_FOR = """\
version: 1
{settings}rules:
  - name: close-when-empty
    {description}on: {on}
    when:
      room.participants: {participants}
    for: {hold}
    action: deactivate
{confirm}"""


def empty_rules(*, hold: str = "5m", settings: str = "", on: str = "participant-left",
                participants: str = "0", description: str = "", confirm: str = "") -> RuleSet:
    return parse(EMPTY_FOR.format(
        hold=hold, on=on, participants=participants, confirm=f"    confirm: {confirm}\n" if confirm else "",
        settings=f"settings: {settings}\n" if settings else "",
        description=f"description: {description}\n    " if description else ""))


ROOM = "room-t"
LEFT_AT = T0 + 10
DUE = LEFT_AT + 300  # 5m after the room emptied


def join_then_leave(store, rules: RulesHolder, clock, *, verified: bool = True) -> int:
    """p-1 joins at T0 and leaves at LEFT_AT: the room is empty and the 5m timer starts. Its id."""
    clock.now = T0
    deliver(store, rules, clock, "participant-joined", verified=verified, meetingId=ROOM,
            sessionId=SESSION, participantId="p-1")
    clock.now = LEFT_AT
    receipt = deliver(store, rules, clock, "participant-left", verified=verified, meetingId=ROOM,
                      sessionId=SESSION, participantId="p-1")
    assert [d.outcome for d in receipt.decisions] == ["timer-started"]
    [timer] = store.history.timers(room_id=ROOM)
    assert (timer["status"], timer["started_at"], timer["due_at"]) == ("pending", LEFT_AT, DUE)
    return timer["id"]


def test_for_timer_fires_only_after_5_minutes_then_the_worker_deactivates(fake_api, store, clock):
    rules = RulesHolder(empty_rules())
    worker = make_worker(store, clock, fake_api.base_url, rules=rules)
    timer_id = join_then_leave(store, rules, clock)

    clock.now = DUE - 0.01
    assert worker.fire_one_timer() is False  # not a moment early
    assert worker.run_once() is False
    assert store.actions.actions(room_id=ROOM) == []
    assert store.history.timers(room_id=ROOM)[0]["status"] == "pending"

    clock.now = DUE
    assert worker.fire_one_timer() is True
    [timer] = store.history.timers(room_id=ROOM)
    assert (timer["status"], timer["resolved_at"], timer["reason"]) == ("fired", DUE, "held for 5m")
    [fired] = [d for d in store.history.decisions(room_id=ROOM) if d["timer_id"] == timer_id]
    assert fired["outcome"] == "scheduled"
    [action] = store.actions.actions(room_id=ROOM)
    assert (action["id"], action["status"], action["due_at"]) == (fired["action_id"], "pending", DUE)
    assert fake_api.calls == []  # firing the timer calls nothing; the action does

    assert worker.run_once() is True
    assert fake_api.deactivations() == [ROOM]
    assert store.actions.action(action["id"])["status"] == "done"
    clock.now = DUE + 3600
    assert worker.run_once() is False  # fired once, acted once


def test_a_join_before_the_timer_is_due_cancels_it(fake_api, store, clock):
    rules = RulesHolder(empty_rules())
    worker = make_worker(store, clock, fake_api.base_url, rules=rules)
    join_then_leave(store, rules, clock)

    clock.now = LEFT_AT + 100
    receipt = deliver(store, rules, clock, "participant-joined", meetingId=ROOM, sessionId=SESSION,
                      participantId="p-2")

    assert receipt.cancelled == (f"close-when-empty|{ROOM}|{SESSION}",)
    [timer] = store.history.timers(room_id=ROOM)
    assert timer["status"] == "cancelled"
    assert timer["resolved_by"] == receipt.delivery_id
    assert "condition stopped holding on participant-joined" in timer["reason"]
    for now in (DUE, DUE + 3600):  # past the old due time: nothing fires, nothing is called
        clock.now = now
        assert worker.run_once() is False
    assert store.actions.actions(room_id=ROOM) == []
    assert fake_api.calls == []


def test_a_due_timer_is_fired_before_a_due_action_is_carried_out(fake_api, store, clock):
    rules = RulesHolder(empty_rules())
    worker = make_worker(store, clock, fake_api.base_url, rules=rules)
    join_then_leave(store, rules, clock)
    waiting = add_action(store, "room-other", at=T0)

    clock.now = DUE
    assert worker.run_once() is True  # the timer, not the action due since T0
    assert store.history.timers(room_id=ROOM)[0]["status"] == "fired"
    assert fake_api.calls == []
    assert store.actions.action(waiting)["attempts"] == 0

    assert worker.run_once() and worker.run_once()
    assert fake_api.deactivations() == ["room-other", ROOM]  # most overdue first


def test_a_timer_whose_for_grew_without_a_reload_notice_waits_longer(fake_api, store, clock):
    """The rules in force are read when the timer comes due, even if no re-check ran."""
    rules = RulesHolder(empty_rules())
    worker = make_worker(store, clock, fake_api.base_url, rules=rules)
    join_then_leave(store, rules, clock)
    rules.replace(empty_rules(hold="10m"))  # swapped, but rules_reloaded was never called

    clock.now = DUE
    assert worker.run_once() is True

    [timer] = store.history.timers(room_id=ROOM)
    assert (timer["status"], timer["due_at"]) == ("pending", LEFT_AT + 600)
    assert "now waits 10m" in timer["notes"][-1]["note"]
    assert store.actions.actions(room_id=ROOM) == [] and fake_api.calls == []
    clock.now = LEFT_AT + 600
    assert worker.run_once() is True  # fires now
    assert worker.run_once() is True  # and acts
    assert fake_api.deactivations() == [ROOM]


def test_a_timer_rule_with_confirm_is_cancelled_when_someone_is_still_there(fake_api, store, clock):
    """The webhook said the room emptied; VideoSDK says someone is in it: nothing is done."""
    rules = RulesHolder(empty_rules(confirm="active-participants"))
    worker = make_worker(store, clock, fake_api.base_url, rules=rules)
    join_then_leave(store, rules, clock)
    fake_api.set_active(SESSION, ONE_ACTIVE, ROOM)  # a join whose webhook never arrived

    clock.now = DUE
    assert worker.run_once() is True  # the timer fires...
    [action] = store.actions.actions(room_id=ROOM)
    assert action["confirm"] == "active-participants"  # ...carrying the rule's confirm into its action
    assert worker.run_once() is True  # ...and the worker checks before acting

    assert store.actions.action(action["id"])["status"] == "cancelled"
    assert "1 participant(s) active in session sess-1" in store.actions.attempts(action["id"])[0]["error"]
    assert len(fake_api.calls_to(CHECK)) == 1
    assert fake_api.calls_to(DEACTIVATE) == []


@dataclass
class Firing:
    worker: str = "acting"           # acting | acts=False | no-client: the worker that fires the timer
    verified: bool = True            # whether the deliveries that started it were verified
    settings: str = ""               # the rules' settings when the timer fires (swapped in after it started)
    outcome: str = "scheduled"       # the decision the timer fires as
    action: str | None = "pending"   # the status of the action that decision writes (None: no action)


FIRINGS = {
    # a worker that acts, a verified trigger: scheduled, then deactivated
    "acting": Firing(),
    # a worker built not to act fires the timer as dry-run
    "acts-false": Firing(worker="acts=False", outcome="dry-run", action="dry-run"),
    # a worker with no client cannot act either: dry-run
    "no-client": Firing(worker="no-client", outcome="dry-run", action="dry-run"),
    # a timer started by an unverified delivery never leads to a call, even from an acting worker
    "unverified": Firing(verified=False, outcome="dry-run", action="dry-run"),
    # settings.dry_run turned on before the timer fired
    "settings-dry-run": Firing(settings="{dry_run: true}", outcome="dry-run", action="dry-run"),
    # the room was protected before the timer fired: no action at all
    "protected": Firing(settings="{protect: [room-t]}", outcome="protected", action=None),
}


@pytest.mark.parametrize("case", FIRINGS.values(), ids=FIRINGS.keys())
def test_how_a_due_timer_fires(fake_api, store, clock, case):
    rules = RulesHolder(empty_rules())
    timer_id = join_then_leave(store, rules, clock, verified=case.verified)
    if case.settings:
        rules.replace(empty_rules(settings=case.settings))
    firing = {"acting": lambda: make_worker(store, clock, fake_api.base_url, rules=rules),
              "acts=False": lambda: make_worker(store, clock, fake_api.base_url, rules=rules, acts=False),
              "no-client": lambda: make_worker(store, clock, None, rules=rules)}[case.worker]()
    acting = make_worker(store, clock, fake_api.base_url, rules=rules, worker_id="worker-2")

    clock.now = DUE
    assert firing.run_once() is True

    assert store.history.timers(room_id=ROOM)[0]["status"] == "fired"
    [fired] = [d for d in store.history.decisions(room_id=ROOM) if d["timer_id"] == timer_id]
    assert fired["outcome"] == case.outcome
    assert [a["status"] for a in store.actions.actions(room_id=ROOM)] == ([case.action] if case.action else [])
    # then a worker that acts looks for work: only a scheduled action becomes a call
    assert acting.run_once() is (case.outcome == "scheduled")
    assert acting.run_once() is False
    assert fake_api.deactivations() == ([ROOM] if case.outcome == "scheduled" else [])
    if case.outcome != "scheduled":
        assert fake_api.calls == []


def test_a_worker_that_does_not_act_never_claims_actions(fake_api, store, clock):
    # Each: a worker without acting, by flag or for want of a client
    for worker in (make_worker(store, clock, fake_api.base_url, acts=False), make_worker(store, clock, None)):
        action_id = add_action(store, f"room-{worker.acts}-{worker.actor.client is None}", at=T0)
        assert worker.acts is False
        assert worker.run_once() is False
        assert store.actions.action(action_id)["attempts"] == 0
        assert store.actions.action(action_id)["status"] == "pending"
    assert fake_api.calls == []


@dataclass
class Reload:
    rules: RuleSet                   # the rules after the reload
    status: str                      # the timer's status after the re-check
    reason_has: str | None = None    # for a cancelled timer: what its reason says
    due_at: float = DUE              # a pending timer's due time after the re-check
    notes_has: str | None = None     # a pending timer's note (None: no notes at all)


RELOADS = {
    # the rule was removed: cancelled, saying so
    "rule-removed": Reload(session_rules(), "cancelled",
                           reason_has="'close-when-empty' was removed in a reload"),
    # `for:` grew from 5m to 10m: kept, due later, with a note that it was re-checked
    "for-5m-to-10m": Reload(empty_rules(hold="10m"), "pending", due_at=LEFT_AT + 600,
                            notes_has="changed in a reload; re-checked, still holds"),
    # `for:` shrank to 2m: kept, due sooner
    "for-5m-to-2m": Reload(empty_rules(hold="2m"), "pending", due_at=LEFT_AT + 120,
                           notes_has="changed in a reload; re-checked, still holds"),
    # only the description changed: the same rule, so the timer is untouched and gets no note
    "description-only": Reload(empty_rules(description="just words"), "pending"),
    # the condition changed so that it no longer holds for this room
    "condition-changed": Reload(empty_rules(participants="{gte: 1}"), "cancelled",
                                reason_has="changed in a reload and its condition no longer holds"),
    # the rule is now for another event
    "on-changed": Reload(empty_rules(on="session-ended"), "cancelled",
                         reason_has="no longer applies to participant-left"),
}


@pytest.mark.parametrize("case", RELOADS.values(), ids=RELOADS.keys())
def test_reload_rechecks_pending_timers(fake_api, store, clock, case):
    rules = RulesHolder(empty_rules())
    worker = make_worker(store, clock, fake_api.base_url, rules=rules)
    join_then_leave(store, rules, clock)

    clock.now = LEFT_AT + 60
    rules.replace(case.rules)
    worker.rules_reloaded(case.rules)
    assert worker.run_once() is True  # the re-check, before anything else

    [timer] = store.history.timers(room_id=ROOM)
    assert timer["status"] == case.status
    if case.status == "cancelled":
        assert case.reason_has in timer["reason"]
        assert case.rules.short_hash in timer["reason"]  # which rules it was re-checked against
        clock.now = DUE + 3600
        assert worker.run_once() is False  # never fires
        assert fake_api.calls == []
        return
    assert timer["due_at"] == case.due_at
    if case.notes_has is None:
        assert timer["notes"] is None
    else:
        [note] = timer["notes"]
        assert note["at"] == LEFT_AT + 60 and case.notes_has in note["note"]
        assert case.rules.short_hash in note["note"]
    # it fires at its (new) due time, not a moment before
    clock.now = case.due_at - 0.01
    assert worker.fire_one_timer() is False
    clock.now = case.due_at
    assert worker.fire_one_timer() is True
    assert worker.run_once() is True
    assert fake_api.deactivations() == [ROOM]


def test_a_reload_is_rechecked_before_a_due_action_is_carried_out(fake_api, store, clock):
    rules = RulesHolder(empty_rules())
    worker = make_worker(store, clock, fake_api.base_url, rules=rules)
    join_then_leave(store, rules, clock)
    waiting = add_action(store, "room-other", at=T0)

    worker.rules_reloaded(rules.current)  # the same rules: nothing changes, but it is checked first
    assert worker.run_once() is True
    assert fake_api.calls == [] and store.actions.action(waiting)["attempts"] == 0
    assert store.history.timers(room_id=ROOM)[0]["notes"] is None  # unchanged rules leave no note

    assert worker.run_once() is True
    assert fake_api.deactivations() == ["room-other"]


def test_a_store_outage_during_the_recheck_does_not_lose_it(fake_api, store, clock, monkeypatch):
    rules = RulesHolder(empty_rules())
    worker = make_worker(store, clock, fake_api.base_url, rules=rules)
    join_then_leave(store, rules, clock)
    real = store.timers.pending_timers_by_rule
    outages = iter([StoreUnavailable("store unavailable: database is locked")])

    def flaky():
        for exc in outages:
            raise exc
        return real()

    monkeypatch.setattr(store.timers, "pending_timers_by_rule", flaky)
    rules.replace(empty_rules(hold="2m"))
    worker.rules_reloaded(rules.current)
    with pytest.raises(StoreUnavailable):
        worker.run_once()  # run() logs this and waits, then calls run_once again
    worker.run_once()

    # the shortened `for:` must still take effect: the timer comes due 2m after the room emptied
    assert store.history.timers(room_id=ROOM)[0]["due_at"] == LEFT_AT + 120


# -- the loop -----------------------------------------------------------------------------------


def test_run_drains_several_actions_and_stops_when_told(fake_api, store, clock):
    worker = make_worker(store, clock, fake_api.base_url)
    rooms = [f"room-{n}" for n in range(6)]
    ids = [add_action(store, room, at=T0) for room in rooms]
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop, 0.02), daemon=True)

    thread.start()
    drained = fake_api.wait_for(lambda: all(store.actions.action(i)["status"] == "done" for i in ids))
    stop.set()
    thread.join(timeout=10)

    assert drained
    assert not thread.is_alive()
    assert sorted(fake_api.deactivations()) == rooms  # each room exactly once
    assert all(len(store.actions.attempts(i)) == 1 for i in ids)
    after = add_action(store, "room-after-stop", at=T0)  # a stopped worker takes nothing more
    assert store.actions.action(after)["status"] == "pending"
    assert store.actions.action(after)["attempts"] == 0


def test_run_finishes_and_records_the_call_in_flight_when_stopped(fake_api, store, clock):
    fake_api.script(DEACTIVATE, Reply(200, {"roomId": "room-1", "disabled": True}, delay=1.0))
    worker = make_worker(store, clock, fake_api.base_url)
    action_id = add_action(store, "room-1", at=T0)
    second = add_action(store, "room-2", at=T0 + 1)
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop, 0.02), daemon=True)

    thread.start()
    leased = fake_api.wait_for(lambda: store.actions.action(action_id)["lease_owner"] == "worker-1", interval=0.01)
    stop.set()  # while the first call is in flight
    thread.join(timeout=10)

    assert leased
    assert not thread.is_alive()
    assert store.actions.action(action_id)["status"] == "done"
    assert [r["http_status"] for r in store.actions.attempts(action_id)] == [200]
    assert store.actions.action(second)["status"] == "pending"  # not started after the stop
    assert store.actions.action(second)["attempts"] == 0


def test_run_stops_on_an_empty_outbox(fake_api, store, clock):
    worker = make_worker(store, clock, fake_api.base_url)
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop, 0.02), daemon=True)

    thread.start()
    stop.set()
    thread.join(timeout=10)

    assert not thread.is_alive()
    assert fake_api.calls == []


def test_run_in_a_thread_fires_a_due_timer_and_acts_on_it(fake_api, store, clock):
    rules = RulesHolder(empty_rules())
    worker = make_worker(store, clock, fake_api.base_url, rules=rules)
    join_then_leave(store, rules, clock)
    clock.now = DUE
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop, 0.02), daemon=True)

    thread.start()
    acted = fake_api.wait_for(lambda: fake_api.deactivations() == [ROOM])
    stop.set()
    thread.join(timeout=10)

    assert acted
    assert not thread.is_alive()
    assert store.history.timers(room_id=ROOM)[0]["status"] == "fired"


# -- runtime.build_worker -------------------------------------------------------------------------


def test_build_worker_wires_settings_to_a_working_worker(fake_api, tmp_path, rules_file):
    settings = Settings(api_key=API_KEY, secret_key=SECRET, api_base=fake_api.base_url,
                        database_url=f"sqlite:///{tmp_path}/w.db", api_timeout=2.0, max_attempts=3,
                        lease_seconds=5.0, rules_file=rules_file)
    store = Store.from_url(settings.database_url)
    store.db.migrate()
    try:
        holder = load_rules_holder(settings, store)
        worker = build_worker(settings, store, holder)
        action_id = add_action(store, "room-1", at=store.db.clock())

        assert worker.actor.policy.max_attempts == 3
        assert worker.actor.lease_seconds == 5.0
        assert worker.acts is True
        assert worker.actor.client.timeout == (2.0, 2.0)
        assert worker.actor.client.base_url == fake_api.base_url
        assert worker.rules() is holder.current
        assert worker.run_once() is True
        assert store.actions.action(action_id)["status"] == "done"
        assert fake_api.deactivations() == ["room-1"]

        replaced = session_rules(settings="{protect: [room-2]}")
        holder.replace(replaced)  # the worker reads the holder, so a reload reaches it
        assert worker.rules() is replaced
    finally:
        store.close()


# Each row: settings that must not act -> a worker with no client, that never claims an action
NON_ACTING = {
    # DRY_RUN: no credentials needed, and none given
    "dry-run": dict(dry_run=True),
    # WEBHOOK_VERIFY off: credentials present, but nothing is acted on
    "unverified": dict(api_key=API_KEY, secret_key=SECRET, webhook_verify=False),
}


@pytest.mark.parametrize("overrides", NON_ACTING.values(), ids=NON_ACTING.keys())
def test_build_worker_that_must_not_act(fake_api, store, clock, overrides):
    worker = build_worker(Settings(api_base=fake_api.base_url, **overrides), store,
                          RulesHolder(session_rules()))
    action_id = add_action(store, "room-1", at=T0)

    assert (worker.acts, worker.actor.client) == (False, None)
    assert worker.run_once() is False
    assert store.actions.action(action_id)["attempts"] == 0
    assert fake_api.calls == []


# Each row: the credentials given -> build_worker refuses, naming what is missing.
MISSING_CREDENTIALS = [
    (None, SECRET, "VIDEOSDK_API_KEY"),        # no API key
    (API_KEY, None, "VIDEOSDK_SECRET_KEY"),    # no secret
]


@pytest.mark.parametrize("api_key, secret, missing", MISSING_CREDENTIALS)
def test_build_worker_refuses_without_credentials(store, api_key, secret, missing):
    with pytest.raises(ConfigError) as raised:
        build_worker(Settings(api_key=api_key, secret_key=secret), store, RulesHolder(session_rules()))

    assert missing in str(raised.value)


# -- found in review -------------------------------------------------------------------------------


def test_confirm_also_asks_about_the_rooms_current_session(fake_api, store, clock):
    """The action came from session sess-1, but the room has moved on to a live session that
    roomwarden knows of: someone in that one must stop the deactivation too."""
    rules = RulesHolder(session_rules(confirm="active-participants"))
    action_id = add_action(store, "room-1", at=T0, confirm="active-participants")
    deliver(store, rules, clock, "participant-joined", meetingId="room-1", sessionId="sess-2",
            participantId="carol")
    fake_api.set_active("sess-2", ["carol"], "room-1")
    worker = make_worker(store, clock, fake_api.base_url, rules=rules)
    assert worker.run_once() is True
    assert fake_api.deactivations(status=None) == []
    checked = [c.path for c in fake_api.calls if c.path.endswith("/participants/active")]
    assert checked == [CHECK, "/v2/sessions/sess-2/participants/active"]
    action = store.actions.action(action_id)
    assert action["status"] == "cancelled" and "session sess-2" in action["last_error"]


def test_a_cancelled_action_frees_its_key_so_the_rule_can_act_later(fake_api, store, clock):
    """Someone was still there when the worker checked: "not now", not "never"."""
    rules = RulesHolder(empty_rules(confirm="active-participants"))
    join_then_leave(store, rules, clock)
    fake_api.set_active(SESSION, ["p-1"], ROOM)  # VideoSDK still sees p-1
    worker = make_worker(store, clock, fake_api.base_url, rules=rules)
    clock.now = DUE
    assert worker.run_once() is True  # the timer fires: an action
    assert worker.run_once() is True  # the check finds p-1: cancelled
    [first] = store.actions.actions(room_id=ROOM)
    assert first["status"] == "cancelled"

    fake_api.set_active(SESSION, [], ROOM)  # p-1 really leaves, and says so again
    clock.now = DUE + 60
    receipt = deliver(store, rules, clock, "participant-left", meetingId=ROOM, sessionId=SESSION,
                      participantId="p-1")
    assert [d.outcome for d in receipt.decisions] == ["timer-started"]  # not a duplicate
    clock.now = DUE + 60 + 300
    while worker.run_once():
        pass
    assert fake_api.deactivations() == [ROOM]
    assert sorted(a["status"] for a in store.actions.actions(room_id=ROOM)) == ["cancelled", "done"]


def test_an_unexpected_error_does_not_stop_the_worker_loop(fake_api, store, clock, monkeypatch):
    worker = make_worker(store, clock, fake_api.base_url)
    add_action(store, "room-1", at=T0)
    calls = []
    real = worker.run_once

    def flaky():
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("a bug")
        return real()

    monkeypatch.setattr(worker, "run_once", flaky)
    stop = threading.Event()

    def stop_when_done():
        while not fake_api.deactivations():
            time.sleep(0.01)
        stop.set()

    threading.Thread(target=stop_when_done, daemon=True).start()
    worker.run(stop, 0.01)
    assert fake_api.deactivations() == ["room-1"] and len(calls) >= 2


def test_an_unreadable_confirm_answer_counts_as_a_breaker_failure(fake_api, store, clock):
    # A 200 whose body says nothing usable is not a healthy API: the breaker counts it, as it
    # counts no answer at all; a readable answer afterwards closes the count again.
    fake_api.script(CHECK, Reply(200, {"foo": 1}))
    worker = make_worker(store, clock, fake_api.base_url)
    action_id = add_action(store, "room-1", at=T0, confirm="active-participants")

    assert worker.run_once() is True
    assert worker.actor.breaker.failures == 1
    clock.now = store.actions.action(action_id)["due_at"]
    assert worker.run_once() is True  # the fake's default answer: nobody active; then deactivated
    assert worker.actor.breaker.failures == 0
    assert fake_api.deactivations() == ["room-1"]


# -- the breaker's half-open trial goes back when the confirm check's store read fails (review) --


def test_a_store_outage_during_the_confirm_check_does_not_wedge_a_half_open_breaker(
        fake_api, store, clock, monkeypatch):
    breaker = CircuitBreaker(threshold=1, cooldown=10, clock=clock)
    worker = make_worker(store, clock, fake_api.base_url, rules=session_rules(confirm="active-participants"),
                        breaker=breaker)
    action_id = add_action(store, "room-1", at=T0, confirm="active-participants")
    fake_api.script(DEACTIVATE, Reply(503))
    assert worker.run_once() is True  # checked (nobody), called, 503: the breaker opens
    assert breaker.state == "open"

    clock.now = T0 + 10  # half-open: the next allow() is the trial
    real = store.history.room
    outages = iter([StoreUnavailable("store unavailable: server closed the connection")])

    def flaky(room_id):
        for exc in outages:
            raise exc
        return real(room_id)

    monkeypatch.setattr(store.history, "room", flaky)
    with pytest.raises(StoreUnavailable):
        worker.run_once()  # run() logs it, waits, and calls run_once again

    clock.now = T0 + 3600  # the store is back, the claim's lease and any cooldown long past
    assert worker.run_once() is True  # wedged: allow() is False for ever, nothing is claimed
    assert store.actions.action(action_id)["status"] == "done"
    assert fake_api.deactivations() == ["room-1"]


# -- the lease guard after a confirm check counts the connect timeout too (review) --


def test_a_call_after_a_confirm_check_cannot_outlive_its_lease(fake_api, store, clock):
    """VIDEOSDK_TIMEOUT_SECONDS=30, ACTION_LEASE_SECONDS=61 (accepted: more than twice the timeout).

    requests bounds the connect (5 s) and the wait for the answer (30 s) separately, so one call
    can take 35 s: a first address that does not answer SYN, then a server that answers at 29 s.
    The check here takes 30 s; the guard sees 31 s left, more than the 30 s it reserves, and calls.
    """
    lease, timeout = 61.0, 30.0
    rules = session_rules(confirm="active-participants")
    first = make_worker(store, clock, fake_api.base_url, rules=rules, worker_id="worker-a",
                       timeout=timeout, lease=lease)
    second = make_worker(store, clock, fake_api.base_url, rules=rules, worker_id="worker-b",
                        timeout=timeout, lease=lease)
    assert first.actor.client.timeout == (5.0, 30.0)
    action_id = add_action(store, "room-1", at=T0, confirm="active-participants")
    check, call = first.actor.client.active_participants, first.actor.client.deactivate_room
    second_claims = []

    def slow_check(session_id):
        clock.now += 30.0  # within the 30 s timeout
        return check(session_id)

    def slow_call(room_id):
        clock.now += 5.0 + 29.0  # connect timeout on a dead address, then an answer within 30 s
        second_claims.append(store.outbox.claim("worker-b", lease, 10))  # another worker looks meanwhile
        return call(room_id)

    first.actor.client.active_participants = slow_check
    first.actor.client.deactivate_room = slow_call
    assert first.run_once() is True
    assert all(claim is None for claim in second_claims)  # the lease must hold while a call is in flight

    second.run_once()  # (a worker that gave the action back: the next one checks again and acts)
    assert len(fake_api.calls_to(DEACTIVATE)) == 1
    assert store.actions.action(action_id)["status"] == "done"


# -- what a 2xx answer says, read as documented (issue 13) -------------------------------------------


def test_deactivate_records_the_documented_answer_disabled_true(fake_api, store, clock):
    worker = make_worker(store, clock, fake_api.base_url)
    action_id = add_action(store, "room-1", at=T0)

    assert worker.run_once() is True

    [attempt] = store.actions.attempts(action_id)
    # payloads/deactivate-response.json spells the id meetingId; it is read as the room's id
    assert (attempt["outcome"], attempt["answer"], attempt["doubt"]) == (
        "done", {"disabled": True, "roomId": "room-1"}, None)


def test_a_2xx_deactivate_saying_disabled_false_is_done_but_doubtful(fake_api, store, clock, caplog):
    fake_api.deactivate_says_disabled = False
    worker = make_worker(store, clock, fake_api.base_url)
    action_id = add_action(store, "room-1", at=T0)

    with caplog.at_level("WARNING", logger="roomwarden.worker"):
        assert worker.run_once() is True

    [attempt] = store.actions.attempts(action_id)
    assert attempt["outcome"] == "done" and store.actions.action(action_id)["status"] == "done"
    assert attempt["answer"] == {"disabled": False, "roomId": "room-1"}
    assert attempt["doubt"] == "the answer says disabled: false: the room may still be open"
    assert any("doubtful" in r.getMessage() and "disabled: false" in r.getMessage() for r in caplog.records)
    clock.now = T0 + 3600
    assert worker.run_once() is False  # done, not retried: the API took the call
    story = explain.story("room-1", store.history.room_story("room-1"), clock.now)
    assert " " * 28 + "DOUBTFUL: the answer says disabled: false: the room may still be open" in story
    assert story[-1].endswith(", but doubtful: the answer says disabled: false: the room may still be open")


def test_end_session_records_the_documented_session_answer(fake_api, store, clock):
    worker = make_worker(store, clock, fake_api.base_url)
    action_id = add_action(store, "room-1", at=T0, kind="end-session", session="sess-77")

    assert worker.run_once() is True

    [attempt] = store.actions.attempts(action_id)
    assert attempt["outcome"] == "done" and attempt["doubt"] is None
    # answers/end-session.json: "status": "completed", and the end time
    assert attempt["answer"]["status"] == "completed" and attempt["answer"]["end"].endswith("Z")


def test_end_session_of_a_session_already_ended_is_done_not_retried(fake_api, store, clock):
    """406 "Failed to end session" (inferred: the session had ended) and VideoSDK lists the
    session as not live: the action is done, with why, after one call and one look."""
    fake_api.ended_sessions.add("sess-77")
    worker = make_worker(store, clock, fake_api.base_url)
    action_id = add_action(store, "room-1", at=T0, kind="end-session", session="sess-77")

    assert worker.run_once() is True

    assert [c.status for c in fake_api.calls_to(END_SESSION)] == [406]
    [listed] = fake_api.calls_to("/v2/sessions")
    assert listed.method == "GET"
    action = store.actions.action(action_id)
    assert (action["status"], action["last_error"]) == ("done", None)
    [attempt] = store.actions.attempts(action_id)
    assert (attempt["outcome"], attempt["http_status"], attempt["error"]) == ("done", 406, None)
    assert attempt["note"] == ("session already ended: VideoSDK does not list sess-77 as live "
                               "(HTTP 406: Failed to end session)")
    assert attempt["answer"] == {"status": "ended"}
    clock.now = T0 + 3600
    assert worker.run_once() is False


def test_a_406_from_end_session_while_the_session_is_still_live_is_retried(fake_api, store, clock):
    """The same 406 with the session still listed live is a failure: retried, never taken as done."""
    fake_api.set_active("sess-77", ["p-1"], "room-1")
    fake_api.script(END_SESSION, Reply(406, {"message": "Failed to end session"}))
    worker = make_worker(store, clock, fake_api.base_url)
    action_id = add_action(store, "room-1", at=T0, kind="end-session", session="sess-77")

    assert worker.run_once() is True

    [attempt] = store.actions.attempts(action_id)
    assert (attempt["outcome"], attempt["http_status"]) == ("retry", 406)
    assert "HTTP 406: Failed to end session" in attempt["error"]
    assert store.actions.action(action_id)["status"] == "pending"
    clock.now = store.actions.action(action_id)["due_at"]
    assert worker.run_once() is True  # the second call ends it
    assert store.actions.action(action_id)["status"] == "done"
    assert fake_api.session_ends() == [("room-1", "sess-77")]


def test_a_406_from_end_session_with_an_unreadable_sessions_list_is_retried_and_logged_once(
        fake_api, store, clock, caplog):
    fake_api.ended_sessions.add("sess-77")
    fake_api.script("/v2/sessions", *[Reply(200, {"sessions": []})] * 2)  # no documented shape
    worker = make_worker(store, clock, fake_api.base_url)
    action_id = add_action(store, "room-1", at=T0, kind="end-session", session="sess-77")

    with caplog.at_level("ERROR", logger="roomwarden.worker"):
        assert worker.run_once() is True
        clock.now = store.actions.action(action_id)["due_at"]
        assert worker.run_once() is True

    assert [a["outcome"] for a in store.actions.attempts(action_id)] == ["retry", "retry"]
    misreads = [r.getMessage() for r in caplog.records if "could not read the live sessions" in r.getMessage()]
    assert len(misreads) == 1 and "keys [sessions]" in misreads[0]


def test_an_unreadable_confirm_answer_is_logged_once_with_its_keys_not_its_values(fake_api, store, clock,
                                                                                    caplog):
    fake_api.script(CHECK, *[Reply(200, {"secretish": "Ann Smith", "n": 1})] * 2)
    worker = make_worker(store, clock, fake_api.base_url)
    action_id = add_action(store, "room-1", at=T0, confirm="active-participants")

    with caplog.at_level("ERROR", logger="roomwarden.worker"):
        assert worker.run_once() is True
        clock.now = store.actions.action(action_id)["due_at"]
        assert worker.run_once() is True

    logged = [r.getMessage() for r in caplog.records if "could not read" in r.getMessage()]
    assert len(logged) == 1 and "keys [n, secretish]" in logged[0]
    assert "Ann Smith" not in caplog.text
    assert fake_api.calls_to(DEACTIVATE) == []


# -- the inbox: the worker decides behind the request (issue 14) --------------------------------------


def _accept(store, raw: bytes, at: float, *, verified: bool | None = True) -> str:
    """What the web request leaves: a row in the inbox, not yet decided."""
    from service.accept import new_delivery_id
    from service.events import read_envelope
    from service.store.inbox import InboxItem

    item = InboxItem(id=new_delivery_id(at), received_at=at, room_id=read_envelope(raw)[1],
                     body=raw.decode(), signature=None, verified=verified)
    store.inbox.append(item)
    return item.id


def _decider_worker(store, clock, base_url, rules: RulesHolder):
    return make_worker(store, clock, base_url, rules=rules, timeout=2.0, decides=True)


def test_the_worker_decides_the_inbox_in_arrival_order_as_of_each_arrival(fake_api, store, clock):
    rules = RulesHolder(empty_rules())
    worker = _decider_worker(store, clock, fake_api.base_url, rules)
    joined = _accept(store, event_body("participant-joined", meetingId=ROOM, sessionId=SESSION,
                                       participantId="p-1"), T0)
    left = _accept(store, event_body("participant-left", meetingId=ROOM, sessionId=SESSION,
                                     participantId="p-1"), LEFT_AT)
    assert store.inbox.inbox_stats() == (2, T0)
    clock.now = LEFT_AT + 60  # the worker gets to them a minute late

    assert worker.run_once() is True  # one batch: both

    assert store.inbox.inbox_stats() == (0, None)
    assert [d["id"] for d in store.history.deliveries(room_id=ROOM)][::-1] == [joined, left]
    [timer] = store.history.timers(room_id=ROOM)
    # as of the leave's arrival, not of the decision: the grace period runs from the event
    assert (timer["started_at"], timer["due_at"]) == (LEFT_AT, DUE)


def test_a_delivery_that_arrived_before_a_timer_was_due_is_decided_before_the_timer_fires(fake_api, store, clock):
    """The worker decides the inbox before it fires timers: a join that came in before the
    grace period ended cancels it, however late the worker is."""
    rules = RulesHolder(empty_rules())
    worker = _decider_worker(store, clock, fake_api.base_url, rules)
    join_then_leave(store, rules, clock)
    _accept(store, event_body("participant-joined", meetingId=ROOM, sessionId=SESSION, participantId="p-2"),
            DUE - 1)
    clock.now = DUE + 600

    while worker.run_once():
        pass

    [timer] = store.history.timers(room_id=ROOM)
    assert timer["status"] == "cancelled"
    assert store.actions.actions(room_id=ROOM) == [] and fake_api.deactivations(status=None) == []


def test_an_unverified_delivery_holds_back_its_room_but_not_others(fake_api, store, clock):
    """No key yet: the room's later deliveries wait behind it (a room is decided in order);
    other rooms are decided as usual."""
    rules = RulesHolder(session_rules())
    worker = _decider_worker(store, clock, fake_api.base_url, rules)
    waiting = _accept(store, event_body("session-started", meetingId="room-w", sessionId="s-1"), T0, verified=None)
    behind = _accept(store, event_body("session-ended", meetingId="room-w", sessionId="s-1"), T0 + 1)
    other = _accept(store, event_body("session-ended", meetingId="room-o", sessionId="s-9"), T0 + 2)

    assert worker.run_once() is True

    assert [d["id"] for d in store.history.deliveries()] == [other]
    assert store.inbox.inbox_stats() == (2, T0)
    assert [a["room_id"] for a in store.actions.actions()] == ["room-o"]
    assert store.history.delivery(waiting) is None and store.history.delivery(behind) is None


def test_while_every_delivery_waits_for_a_key_the_inbox_is_tried_again_only_now_and_then(
        fake_api, store, clock, monkeypatch):
    """No key: each try at the inbox is a write transaction (SQLite's lock, which the web's
    appends wait for), so it is tried once per KEY_WAIT_SECONDS, not on every pass."""
    from service.worker import KEY_WAIT_SECONDS

    rules = RulesHolder(session_rules())
    worker = _decider_worker(store, clock, fake_api.base_url, rules)
    _accept(store, event_body("session-ended", meetingId="room-w", sessionId="s-1"), T0, verified=None)
    taken = []
    real = store.inbox.deciding
    monkeypatch.setattr(store.inbox, "deciding", lambda limit, **kw: (taken.append(clock.now), real(limit, **kw))[1])

    for _ in range(5):
        worker.run_once()
    clock.now = T0 + KEY_WAIT_SECONDS
    worker.run_once()

    assert taken == [T0, T0 + KEY_WAIT_SECONDS]
    assert store.inbox.inbox_stats() == (1, T0)


def test_postgresql_decides_an_append_when_notified_and_finds_a_row_left_unnotified_within_a_second(
        fake_api, pg_url, clock):
    """On PostgreSQL a drained inbox is not asked again on every pass: an append's NOTIFY brings
    the decider to it at once, and a row that came without one (left by a decider that died
    holding it, say) is found by the look made every LOOK_EVERY_SECONDS."""
    from service.store.tables import inbox
    from service.worker import LOOK_EVERY_SECONDS

    store = Store.from_url(pg_url, clock)
    store.db.migrate()
    worker = _decider_worker(store, clock, fake_api.base_url, RulesHolder(session_rules()))
    store.inbox.wait_for_inbox(0)  # listening before any append: every NOTIFY below is heard
    while worker.run_once():  # the first look, at an empty inbox, made here: the loop's next is a
        pass                  # NOTIFY's or LOOK_EVERY_SECONDS' (the clock stands still till then)
    stop = threading.Event()
    loop = threading.Thread(target=worker.run, args=(stop, 0.05), daemon=True)
    loop.start()

    def until(check) -> bool:
        deadline = time.monotonic() + 10
        while not check() and time.monotonic() < deadline:
            time.sleep(0.02)
        return check()

    try:
        # The unnotified row first: were it second, the append's NOTIFY might still be queued
        # when the row came (a look made for another reason takes the append first) and wake a look.
        with store.db.engine.begin() as conn:  # a row in the inbox, and no NOTIFY
            conn.execute(inbox.insert().values(
                id="unnotified-1", received_at=T0, room_id="room-u", signature=None, verified=True,
                body=event_body("session-ended", meetingId="room-u", sessionId="s-2").decode()))
        time.sleep(0.5)  # ten polls: the clock stands still, so no look is due yet
        assert store.inbox.inbox_stats()[0] == 1
        clock.now = T0 + LOOK_EVERY_SECONDS
        assert until(lambda: store.history.delivery("unnotified-1") is not None)
        assert store.inbox.inbox_stats()[0] == 0

        # The clock stands still again, so only the append's NOTIFY can bring the decider to it.
        notified = _accept(store, event_body("session-ended", meetingId="room-n", sessionId="s-1"), T0)
        assert until(lambda: store.history.delivery(notified) is not None)
        assert store.inbox.inbox_stats()[0] == 0
    finally:
        stop.set()
        loop.join(10)
        store.close()


def _three_rooms_one_bad(store, clock, at: float = T0) -> dict[str, str]:
    """session-ended in room-a, room-bad and room-c, accepted in that order; their delivery ids."""
    return {room: _accept(store, event_body("session-ended", meetingId=room, sessionId=f"s-{room}"), at + i)
            for i, room in enumerate(["room-a", "room-bad", "room-c"])}


def _planner_fails_for(monkeypatch, room: str) -> None:
    import service.decider as decider_module

    real = decider_module.plan_event

    def plan_event(rule_set, event, *args, **kwargs):
        if event.room_id == room:
            raise RuntimeError(f"boom in {room}")
        return real(rule_set, event, *args, **kwargs)

    monkeypatch.setattr(decider_module, "plan_event", plan_event)


def test_a_delivery_that_cannot_be_decided_is_recorded_with_its_error_and_the_rest_go_on(
        fake_api, store, clock, monkeypatch, caplog):
    """A bug raised while deciding one delivery (here, the planner) does not hold up the
    deliveries behind it: they are decided; it is recorded with the error as its problem,
    never acted on, logged with its traceback; the inbox is empty."""
    _planner_fails_for(monkeypatch, "room-bad")
    rules = RulesHolder(session_rules())
    worker = _decider_worker(store, clock, fake_api.base_url, rules)
    ids = _three_rooms_one_bad(store, clock)

    with caplog.at_level("ERROR", logger="roomwarden.decider"):
        assert worker.run_once() is True

    assert store.inbox.inbox_stats() == (0, None)
    assert sorted(a["room_id"] for a in store.actions.actions()) == ["room-a", "room-c"]
    bad = store.history.delivery(ids["room-bad"])
    assert bad["problem"] == "not decided: internal error (RuntimeError: boom in room-bad)"
    assert bad["event_type"] == "session-ended" and bad["room_id"] == "room-bad"
    assert store.history.decisions(delivery_id=ids["room-bad"]) == []
    assert all(store.history.delivery(ids[room])["problem"] is None for room in ("room-a", "room-c"))
    [traced] = [r for r in caplog.records if r.exc_info and "could not be decided" in r.getMessage()]
    assert "boom in room-bad" in str(traced.exc_info[1])


def test_a_delivery_that_cannot_even_be_recorded_stays_in_the_inbox_and_the_rest_go_on(
        fake_api, store, clock, monkeypatch, caplog):
    """When recording the failed delivery fails too, it stays in the inbox (for an operator:
    it is counted in its depth), skipped; the others, and later deliveries of its room, are
    decided, and the worker does not try it again on every pass."""
    _planner_fails_for(monkeypatch, "room-bad")
    real_record = store.inbox.rooms.record

    def record(conn, delivery, write, later=None):
        if delivery.room_id == "room-bad" and delivery.problem is not None:
            raise RuntimeError("cannot record it either")
        return real_record(conn, delivery, write, later)

    monkeypatch.setattr(store.inbox.rooms, "record", record)
    rules = RulesHolder(session_rules())
    worker = _decider_worker(store, clock, fake_api.base_url, rules)
    ids = _three_rooms_one_bad(store, clock)

    with caplog.at_level("ERROR", logger="roomwarden.decider"):
        assert worker.run_once() is True

    assert store.inbox.inbox_stats() == (1, T0 + 1)
    assert store.history.delivery(ids["room-bad"]) is None
    assert sorted(a["room_id"] for a in store.actions.actions()) == ["room-a", "room-c"]
    assert any("could not be recorded either" in r.getMessage() for r in caplog.records)

    monkeypatch.undo()  # the planner works again: a later delivery of the room is decided past it
    later = _accept(store, event_body("participant-joined", meetingId="room-bad", sessionId="s-2",
                                      participantId="p-1"), T0 + 10)
    clock.now = T0 + 20
    worker.decider.decide_once()
    assert store.history.delivery(later) is not None
    assert store.inbox.inbox_stats() == (1, T0 + 1)  # still there, skipped: not retried on every pass


def test_a_decision_that_cannot_be_written_at_the_batchs_end_is_found_and_the_rest_go_on(
        fake_api, store, clock, monkeypatch, caplog):
    """A batch writes its decisions together at its end; when that write fails, the batch is
    taken again writing row by row, so the row whose decision cannot be written is the one
    recorded with its error, and the others are decided."""
    import service.store.intake as intake_module

    def refusing(real):
        def run(conn, statement, values):
            rows = values if isinstance(values, list) else [values]
            if statement is store.db.sql.insert_decision and any(v["room_id"] == "room-bad" for v in rows):
                raise RuntimeError("value too long for the decisions table")
            return real(conn, statement, values)
        return run

    monkeypatch.setattr(intake_module, "run", refusing(intake_module.run))
    monkeypatch.setattr(intake_module, "run_many", refusing(intake_module.run_many))
    worker = _decider_worker(store, clock, fake_api.base_url, RulesHolder(session_rules()))
    ids = _three_rooms_one_bad(store, clock)

    with caplog.at_level("WARNING", logger="roomwarden.decider"):
        assert worker.run_once() is True

    assert store.inbox.inbox_stats()[0] == 0
    assert "internal error (RuntimeError: value too long" in store.history.delivery(ids["room-bad"])["problem"]
    assert sorted(a["room_id"] for a in store.actions.actions()) == ["room-a", "room-c"]
    assert any("deciding it again row by row" in r.getMessage() for r in caplog.records)


def test_a_busy_inbox_does_not_hold_back_due_actions_or_fire_timers_past_it(fake_api, store, clock):
    """More than a batch waiting: after each full batch the worker gives due actions their turn,
    but fires no timer until the inbox has been drained (a waiting join could cancel it)."""
    rules = RulesHolder(empty_rules())
    worker = _decider_worker(store, clock, fake_api.base_url, rules)
    worker.decider.batch = 3
    join_then_leave(store, rules, clock)  # a timer due at DUE
    waiting = add_action(store, "room-other", at=T0)
    for i in range(7):  # joins of other rooms, then one of ROOM that cancels the timer
        _accept(store, event_body("participant-joined", meetingId=f"busy-{i}", sessionId="s",
                                  participantId="p"), DUE - 10 + i)
    _accept(store, event_body("participant-joined", meetingId=ROOM, sessionId=SESSION, participantId="p-9"),
            DUE - 1)
    clock.now = DUE + 60

    assert worker.run_once() is True  # a full batch of 3
    assert worker.run_once() is True  # the turn of actions: the one due since T0
    assert store.actions.action(waiting)["status"] == "done"
    assert store.history.timers(room_id=ROOM)[0]["status"] == "pending"  # not fired past the inbox
    while worker.run_once():
        pass
    assert store.inbox.inbox_stats() == (0, None)
    assert store.history.timers(room_id=ROOM)[0]["status"] == "cancelled"  # by the join that had waited
    assert fake_api.deactivations() == ["room-other"]


def test_a_backlog_of_due_actions_gives_the_inbox_its_turn_back_after_turn_seconds(fake_api, store, clock):
    """Many actions due and the inbox still full: the due work's turn after a batch ends after
    `turn_seconds` (here at once, after one piece), and the next batch is decided before the
    rest of the backlog. Without the bound, one worker with a long backlog of slow calls never
    looked at the inbox again, and so never drained it far enough to fire a timer."""
    rules = RulesHolder(empty_rules())
    worker = _decider_worker(store, clock, fake_api.base_url, rules)
    worker.decider.batch = 3
    worker.turn_seconds = 0.0
    backlog = [add_action(store, f"room-due-{i}", at=T0) for i in range(4)]
    for i in range(6):
        _accept(store, event_body("participant-joined", meetingId=f"busy-{i}", sessionId="s",
                                  participantId="p"), T0 + i)
    clock.now = T0 + 60

    assert worker.run_once() is True  # a full batch of 3
    assert store.inbox.inbox_stats()[0] == 3
    assert worker.run_once() is True  # one due action, then the turn is over
    assert [store.actions.action(a)["status"] for a in backlog].count("done") == 1
    assert worker.run_once() is True  # the inbox again, though three actions are still due
    assert store.inbox.inbox_stats()[0] == 0
    assert [store.actions.action(a)["status"] for a in backlog].count("done") == 1
    while worker.run_once():
        pass
    assert [store.actions.action(a)["status"] for a in backlog] == ["done"] * 4


def test_a_busy_inbox_holds_back_only_the_timers_of_rooms_with_deliveries_waiting(fake_api, store, clock):
    """A due timer waits only for its own room's deliveries that arrived by its due time (one may
    cancel it); a full inbox of other rooms' deliveries does not hold it back. Before, every
    timer waited until the whole inbox was drained: under steady traffic, all of them fired
    late and at once, by whichever worker happened to be free."""
    rules = RulesHolder(empty_rules())
    worker = _decider_worker(store, clock, fake_api.base_url, rules)
    worker.decider.batch = 3
    timer_id = join_then_leave(store, rules, clock)  # a timer due at DUE
    for i in range(9):  # three full batches of other rooms
        _accept(store, event_body("participant-joined", meetingId=f"busy-{i}", sessionId="s",
                                  participantId="p"), DUE - 10 + i)
    late = _accept(store, event_body("participant-joined", meetingId=ROOM, sessionId=SESSION,
                                     participantId="p-9"), DUE + 5)  # after the due time: too late to cancel it
    clock.now = DUE + 60

    assert worker.run_once() is True  # a full batch of 3
    assert worker.run_once() is True  # the timer, though six deliveries of other rooms wait
    assert store.history.timers(room_id=ROOM)[0]["status"] == "fired"
    assert store.inbox.inbox_stats()[0] == 7
    while worker.run_once():
        pass
    assert store.history.delivery(late) is not None and store.inbox.inbox_stats() == (0, None)
    assert [t["id"] for t in store.history.timers(room_id=ROOM)] == [timer_id]
