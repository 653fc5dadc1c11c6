"""Operations: the circuit breaker, retention, graceful shutdown, and the logs.

The breaker is tested pure on a fake clock, then inside a Worker that calls the fake
VideoSDK API over real HTTP. Retention is tested on the store, through the Worker and
through `python -m service prune`. Shutdown runs `python -m service worker` as a real
process and stops it with SIGTERM in the middle of a call. The logs are read as the JSON
lines they are, and a whole run is searched for secrets: log lines, HTTP answers, and
every row of every table of the SQLite file.

Workers are built the way tests/test_worker.py builds them (a shared injected clock,
actions put in the outbox through the real inbox and Decider); the helpers are copied, not imported.
"""

from __future__ import annotations

import io
import json
import logging
import os
import secrets
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from service import logs
from service.breaker import CircuitBreaker
from service.errors import StoreUnavailable
from service.store import Store
from service.videosdk import TokenSource
from service.worker import Worker

from .conftest import (API_KEY, EMPTY_RULE, ROOT, RULES_HEAD, SECRET, SESSION_RULE, TEST_RULES, Clock, decide, ended,
                       event_body)
from .builders import SESSION, T0, add_action, deliver, make_worker, parse
from .fakeapi import Reply

DEACTIVATE = "/v2/rooms/deactivate"
DAY = 86400.0
WRONG_SECRET = "wrong-secret-" + secrets.token_hex(16)



SESSION_RULES = RULES_HEAD + SESSION_RULE

# session-ended schedules an action at once; a room left empty starts a 5m timer.
RETENTION_RULES = SESSION_RULES + EMPTY_RULE


def drain(worker: Worker, limit: int = 100) -> int:
    """run_once until nothing is due; how many pieces of work were done (bounded: never loops forever)."""
    for done in range(limit):
        if not worker.run_once():
            return done
    raise AssertionError(f"still busy after {limit} runs")


def base_env() -> dict[str, str]:
    """The test process's environment without anything that would configure the service."""
    prefixes = ("VIDEOSDK_", "DATABASE_URL", "RULES_FILE", "RETENTION_DAYS", "DRY_RUN", "WEBHOOK_VERIFY",
                "ADMIN_TOKEN", "BREAKER_", "LOG_LEVEL", "ACTION_", "WORKER_")
    return {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "service", *args], cwd=ROOT, env={**base_env(), **env},
                          capture_output=True, timeout=60)


def sqlite_path(url: str) -> Path:
    assert url.startswith("sqlite:///")
    return Path(url[len("sqlite:///"):])


# -- log capture -------------------------------------------------------------------------------


class Captured:
    """What service.logs wrote to a StringIO: every line must be one JSON object."""

    def __init__(self, stream: io.StringIO):
        self.stream = stream

    @property
    def text(self) -> str:
        return self.stream.getvalue()

    def lines(self) -> list[dict]:
        parsed = []
        for line in self.text.splitlines():
            record = json.loads(line)  # raises if a line is not JSON
            assert isinstance(record, dict), line
            parsed.append(record)
        return parsed

    def mark(self) -> int:
        return len(self.text.splitlines())

    def since(self, mark: int, logger: str | None = None) -> list[dict]:
        return [r for r in self.lines()[mark:] if logger is None or r["logger"] == logger]


@pytest.fixture
def captured():
    """service.logs.configure with a StringIO stream; the `roomwarden` logger is restored after."""
    logger = logging.getLogger("roomwarden")
    saved = (list(logger.handlers), logger.level, logger.propagate,
             getattr(logger, "_roomwarden_configured", False))
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    logger._roomwarden_configured = False
    stream = io.StringIO()
    logs.configure("INFO", stream=stream)
    try:
        yield Captured(stream)
    finally:
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
        for handler in saved[0]:
            logger.addHandler(handler)
        logger.setLevel(saved[1])
        logger.propagate = saved[2]
        logger._roomwarden_configured = saved[3]


# == 1. the circuit breaker, pure ===============================================================

OPEN_AT_0 = [("call", 503), ("call", 503), ("call", 503)]  # three failures at t=0: open until t=10


@dataclass
class Row:
    steps: list
    threshold: int = 3
    cooldown: float = 10.0
    max_cooldown: float = 40.0


# Steps: ("call", status)  allow() must say True, then `status` is recorded (None: no HTTP answer)
#        ("at", t)         the clock reads t
#        ("allow", b)      allow() says b (saying True hands out the half-open trial)
#        ("idle",)         record_idle(): the call allow() let through was not made
#        ("state", s)      the state is s
BREAKER = {
    # two failures in a row are below the threshold: still closed, calls go on
    "below-threshold": Row([("call", 503), ("call", None), ("state", "closed"), ("allow", True)]),
    # threshold failures in a row, of three kinds (no answer, 5xx, 429): open, no call allowed
    "threshold-opens": Row([("call", None), ("call", 500), ("call", 429), ("state", "open"), ("allow", False)]),
    # 401 and 403 are failures too: credentials the API refuses fail every call alike
    "401-403-count": Row([("call", 401), ("call", 403), ("call", 401), ("state", "open"), ("allow", False)]),
    # a threshold of 1: the first failure opens it
    "threshold-1": Row([("call", 502), ("state", "open"), ("allow", False)], threshold=1),
    # a 404 between failures resets the count (the API answered, about the room)
    "404-resets": Row([("call", 503), ("call", 503), ("call", 404), ("call", 503), ("call", 503),
                       ("state", "closed"), ("call", 503), ("state", "open")]),
    # a 400 resets the count too
    "400-resets": Row([("call", 503), ("call", 503), ("call", 400), ("call", 503), ("call", 503),
                       ("state", "closed")]),
    # a 2xx resets the count
    "2xx-resets": Row([("call", 503), ("call", 503), ("call", 200), ("call", 503), ("call", 503),
                       ("call", 204), ("call", 503), ("call", 503), ("state", "closed")]),
    # open for exactly `cooldown`: refused just before, then half-open with one trial
    "cooldown": Row(OPEN_AT_0 + [("at", 9.99), ("state", "open"), ("allow", False), ("at", 10.0),
                                 ("state", "half-open"), ("allow", True), ("allow", False)]),
    # one trial at a time: while it is out nobody else gets through, however long it takes
    "one-trial": Row(OPEN_AT_0 + [("at", 10.0), ("allow", True), ("at", 1000.0), ("allow", False),
                                  ("state", "half-open")]),
    # record_idle gives the trial back (nothing was due): the next allow() is the trial again, once
    "idle-releases": Row(OPEN_AT_0 + [("at", 10.0), ("allow", True), ("idle",), ("allow", True),
                                      ("allow", False)]),
    # a failed trial opens it again, for twice the cooldown, counted from the trial's answer
    "failed-trial-doubles": Row(OPEN_AT_0 + [("at", 10.0), ("call", 503), ("state", "open"), ("at", 29.99),
                                             ("allow", False), ("at", 30.0), ("state", "half-open"),
                                             ("allow", True)]),
    # a trial that gets no answer at all is a failed trial too
    "no-answer-trial-doubles": Row(OPEN_AT_0 + [("at", 10.0), ("call", None), ("at", 29.99), ("allow", False),
                                                ("at", 30.0), ("allow", True)]),
    # doubling stops at max_cooldown: 10, 20, 40, then 40 again (not 80)
    "capped": Row(OPEN_AT_0 + [("at", 10.0), ("call", 503), ("at", 30.0), ("call", 503), ("at", 70.0),
                               ("call", 503), ("at", 109.99), ("allow", False), ("at", 110.0), ("allow", True)]),
    # a successful trial closes it and resets: the count starts over and the cooldown is 10 again
    "success-closes-and-resets": Row(OPEN_AT_0 + [
        ("at", 10.0), ("call", 503),                   # failed trial: open until 30 (cooldown 20)
        ("at", 30.0), ("call", 200), ("state", "closed"), ("allow", True),
        ("call", 503), ("call", 503), ("state", "closed"),  # two: below the threshold again
        ("call", 503), ("state", "open"),              # three: open at 30, for the base 10 s
        ("at", 39.99), ("allow", False), ("at", 40.0), ("state", "half-open")]),
    # a 404 trial closes it: the API is answering
    "404-trial-closes": Row(OPEN_AT_0 + [("at", 10.0), ("call", 404), ("state", "closed"), ("allow", True),
                                         ("allow", True)]),
    # a 429 trial is a failure: rate limited is not working
    "429-trial-fails": Row(OPEN_AT_0 + [("at", 10.0), ("call", 429), ("state", "open"), ("allow", False)]),
}


@pytest.mark.parametrize("row", BREAKER.values(), ids=BREAKER.keys())
def test_circuit_breaker(row):
    clock = Clock(0.0)
    breaker = CircuitBreaker(row.threshold, row.cooldown, row.max_cooldown, clock=clock)
    for number, step in enumerate(row.steps):
        where = (number, step)
        if step[0] == "call":
            assert (where, breaker.allow()) == (where, True)
            breaker.record(step[1])
        elif step[0] == "at":
            clock.now = step[1]
        elif step[0] == "allow":
            assert (where, breaker.allow()) == (where, step[1])
        elif step[0] == "idle":
            breaker.record_idle()
        elif step[0] == "state":
            assert (where, breaker.state) == (where, step[1])
        else:
            raise AssertionError(f"unknown step {step}")


FAILURES = [None, 500, 502, 503, 504, 429, 401, 403]  # count towards opening
NOT_FAILURES = [200, 201, 204, 400, 404]  # reset the count


@pytest.mark.parametrize("status", FAILURES)
def test_each_failure_kind_alone_opens_the_breaker(status):
    breaker = CircuitBreaker(threshold=3, cooldown=10, clock=Clock(0.0))
    for _ in range(3):
        assert breaker.allow() is True
        breaker.record(status)
    assert breaker.state == "open"
    assert breaker.allow() is False


@pytest.mark.parametrize("status", NOT_FAILURES)
def test_an_answer_about_the_room_resets_the_count(status):
    breaker = CircuitBreaker(threshold=3, cooldown=10, clock=Clock(0.0))
    for answer in (503, 503, status, 503, 503):
        assert breaker.allow() is True
        breaker.record(answer)
    assert breaker.state == "closed"
    assert breaker.failures == 2


# == 2. the breaker in the worker ==============================================================


def outbox(store, ids) -> dict[int, tuple]:
    """Each action: (status, attempts, lease_owner)."""
    return {i: (a["status"], a["attempts"], a["lease_owner"]) for i in ids for a in [store.actions.action(i)]}


def test_an_open_breaker_holds_the_outbox_then_one_trial_then_it_drains(fake_api, store, clock, captured):
    breaker = CircuitBreaker(threshold=3, cooldown=30, max_cooldown=600, clock=clock)
    worker = make_worker(store, clock, fake_api.base_url, breaker=breaker)
    rooms = [f"room-{n}" for n in range(5)]
    ids = [add_action(store, room, at=T0) for room in rooms]
    # The API is down: 503 to every call. Exactly three are scripted, so a fourth call made while
    # the breaker should be open would be answered 200 and show up below.
    fake_api.script(DEACTIVATE, *[Reply(503, {"message": "maintenance"})] * 3)

    assert [worker.run_once() for _ in range(3)] == [True, True, True]
    assert [c.status for c in fake_api.calls] == [503, 503, 503]
    assert breaker.state == "open"
    held = outbox(store, ids)
    assert held == {ids[0]: ("pending", 1, None), ids[1]: ("pending", 1, None), ids[2]: ("pending", 1, None),
                    ids[3]: ("pending", 0, None), ids[4]: ("pending", 0, None)}

    # Open: nothing is claimed, even once the retried actions are due again (T0 + 1.5).
    for now in (T0, T0 + 1.5, T0 + 29.99):
        clock.now = now
        assert worker.run_once() is False
    assert len(fake_api.calls) == 3  # no more calls
    assert outbox(store, ids) == held  # nothing dropped, no attempt burnt, no lease held
    assert all(len(store.actions.attempts(i)) == n for i, n in zip(ids, [1, 1, 1, 0, 0]))

    # After the cooldown: one trial call. Still 503: open again, for twice as long.
    clock.now = T0 + 30
    fake_api.script(DEACTIVATE, Reply(503, {"message": "maintenance"}))
    assert worker.run_once() is True
    assert len(fake_api.calls) == 4
    assert worker.run_once() is False
    assert breaker.state == "open"
    clock.now = T0 + 30 + 59.99
    assert worker.run_once() is False
    assert len(fake_api.calls) == 4

    # The API answers 200 again (nothing more scripted): the trial closes it and everything drains.
    clock.now = T0 + 90
    assert drain(worker) == 5
    assert breaker.state == "closed"
    assert sorted(fake_api.deactivations()) == rooms  # each room once
    assert len(fake_api.calls) == 9  # 3 + the failed trial + 5
    # the trial went to the most overdue action (never tried: due T0); each failure cost one attempt only
    assert {i: store.actions.action(i)["status"] for i in ids} == {i: "done" for i in ids}
    assert [store.actions.action(i)["attempts"] for i in ids] == [2, 2, 2, 2, 1]

    warnings = [r["msg"] for r in captured.lines() if r["level"] == "warning" and "circuit breaker" in r["msg"]]
    assert warnings == ["circuit breaker closed -> open after HTTP 503",
                        "circuit breaker half-open -> open after HTTP 503",
                        "circuit breaker half-open -> closed after HTTP 200"]


@pytest.mark.attack("a long API outage that stretches the breaker's cooldown")
def test_an_open_breaker_probes_the_api_and_actions_flow_within_15_s_of_its_return(fake_api, store, clock):
    """Issue 15: after a long outage the cooldown had doubled to minutes, and actions waited that
    long after the API was back. An open circuit probes the API every PROBE_EVERY seconds with a
    call that changes nothing (GET /v2/rooms/roomwarden-probe): the first probe the API answers
    closes it, and the waiting action is carried out, within 15 s of the API's return."""
    from service.breaker import PROBE_EVERY

    probe = "/v2/rooms/roomwarden-probe"
    breaker = CircuitBreaker(threshold=1, cooldown=600, max_cooldown=600, clock=clock, probe_every=PROBE_EVERY)
    worker = make_worker(store, clock, fake_api.base_url, breaker=breaker)
    action_id = add_action(store, "room-1", at=T0)
    fake_api.script(DEACTIVATE, Reply(503, {"message": "maintenance"}))
    fake_api.script(probe, *[Reply(503, {"message": "maintenance"})] * 3)  # down for three probes more

    assert worker.run_once() is True and breaker.state == "open"
    back_at = None
    for step in range(1, 60):  # a pass each second of the clock, as the worker's loop would make
        clock.now = T0 + step
        if back_at is None and len(fake_api.calls_to(probe)) == 3:
            back_at = clock.now  # the API answers from here on (nothing more is scripted)
        worker.run_once()
        if store.actions.action(action_id)["status"] == "done":
            break
    assert store.actions.action(action_id)["status"] == "done"
    assert back_at is not None and clock.now - back_at <= 15
    assert [c.status for c in fake_api.calls_to(probe)] == [503, 503, 503, 200]
    assert [c.status for c in fake_api.calls_to(DEACTIVATE)] == [503, 200]  # no call while it was open
    assert breaker.state == "closed"


def test_an_open_breaker_still_lets_timers_fire(fake_api, store, clock):
    rules = parse(RETENTION_RULES)
    breaker = CircuitBreaker(threshold=1, cooldown=600, clock=clock)
    worker = make_worker(store, clock, fake_api.base_url, rules=rules, breaker=breaker)
    fake_api.script(DEACTIVATE, Reply(503))
    add_action(store, "room-down", at=T0)
    assert worker.run_once() is True
    assert breaker.state == "open"
    deliver(store, rules, T0, "participant-joined", meetingId="room-t", sessionId=SESSION, participantId="p")
    deliver(store, rules, T0 + 1, "participant-left", meetingId="room-t", sessionId=SESSION, participantId="p")

    clock.now = T0 + 301
    assert worker.run_once() is True  # the timer fires: no API call needed
    assert store.history.timers(room_id="room-t")[0]["status"] == "fired"
    assert worker.run_once() is False  # its action waits for the breaker, like the others
    [action] = store.actions.actions(room_id="room-t")
    assert (action["status"], action["attempts"]) == ("pending", 0)
    assert len(fake_api.calls) == 1


def test_a_half_open_trial_with_nothing_due_is_given_back(fake_api, store, clock):
    breaker = CircuitBreaker(threshold=1, cooldown=1, clock=clock)
    worker = make_worker(store, clock, fake_api.base_url, breaker=breaker)
    action_id = add_action(store, "room-1", at=T0)
    fake_api.script(DEACTIVATE, Reply(503))
    assert worker.run_once() is True  # 503: open until T0 + 1, the action due again at T0 + 1.5
    assert breaker.state == "open"

    clock.now = T0 + 1  # half-open, but nothing is due: the trial is not spent
    assert worker.run_once() is False
    clock.now = T0 + 1.5
    assert worker.run_once() is True  # the trial call
    assert breaker.state == "closed"
    assert store.actions.action(action_id)["status"] == "done"
    assert len(fake_api.calls) == 2


def test_a_store_outage_while_claiming_the_trial_does_not_wedge_the_breaker(fake_api, store, clock, monkeypatch):
    breaker = CircuitBreaker(threshold=1, cooldown=10, clock=clock)
    worker = make_worker(store, clock, fake_api.base_url, breaker=breaker)
    action_id = add_action(store, "room-1", at=T0)
    fake_api.script(DEACTIVATE, Reply(503))
    assert worker.run_once() is True
    assert breaker.state == "open"

    clock.now = T0 + 10  # half-open: the next allow() is the trial
    real = store.outbox.claim
    outages = iter([StoreUnavailable("store unavailable: database is locked")])

    def flaky(*args, **kwargs):
        for exc in outages:
            raise exc
        return real(*args, **kwargs)

    monkeypatch.setattr(store.outbox, "claim", flaky)
    with pytest.raises(StoreUnavailable):
        worker.run_once()  # run() logs this, waits, and calls run_once again

    clock.now = T0 + 3600  # the store is back, and long past any cooldown
    assert worker.run_once() is True  # the trial call is made
    assert store.actions.action(action_id)["status"] == "done"


# == 3. retention ==============================================================================


@pytest.mark.parametrize("batch", [500, 1, 2])
def test_prune_deletes_old_traffic_and_keeps_what_caused_an_action_or_a_timer(fake_api, store, clock, batch):
    rules = parse(RETENTION_RULES)
    old = T0 - 10 * DAY
    acted = deliver(store, rules, old, "session-ended", meetingId="room-a", sessionId="s-a")
    duplicate = deliver(store, rules, old + 1, "session-ended", meetingId="room-a", sessionId="s-a")
    joined = deliver(store, rules, old + 2, "participant-joined", meetingId="room-b", sessionId="s-b",
                     participantId="p")
    left = deliver(store, rules, old + 3, "participant-left", meetingId="room-b", sessionId="s-b",
                   participantId="p")
    unknown = deliver(store, rules, old + 4, "something-new", meetingId="room-c")
    recent = deliver(store, rules, T0 - 60, "participant-joined", meetingId="room-c", sessionId="s-c",
                     participantId="q")
    assert [d.outcome for d in acted.decisions] == ["scheduled"]
    assert [d.outcome for d in duplicate.decisions] == ["duplicate"]
    assert [d.outcome for d in left.decisions] == ["timer-started"]
    # the action is carried out, so it has an attempt; the timer fires and acts (as an action of its own)
    clock.now = T0
    worker = make_worker(store, clock, fake_api.base_url, rules=rules)
    assert drain(worker) == 3  # action a, timer b, action b
    # Timers that never became actions: one still pending, one cancelled when someone came back.
    pending_join = deliver(store, rules, old + 5, "participant-joined", meetingId="room-d", sessionId="s-d",
                           participantId="p")
    pending_left = deliver(store, rules, old + 6, "participant-left", meetingId="room-d", sessionId="s-d",
                           participantId="p")
    cancelled_join = deliver(store, rules, old + 7, "participant-joined", meetingId="room-e", sessionId="s-e",
                             participantId="p")
    cancelled_left = deliver(store, rules, old + 8, "participant-left", meetingId="room-e", sessionId="s-e",
                             participantId="p")
    rejoin = deliver(store, rules, old + 9, "participant-joined", meetingId="room-e", sessionId="s-e",
                     participantId="p")
    assert [t["status"] for t in store.history.timers(room_id="room-d")] == ["pending"]
    assert [t["status"] for t in store.history.timers(room_id="room-e")] == ["cancelled"]
    assert rejoin.cancelled and not rejoin.decisions
    actions_before, timers_before = store.actions.actions(), store.history.timers()
    attempts_before = {a["id"]: store.actions.attempts(a["id"]) for a in actions_before}
    rooms_before = {room: store.history.room(room) for room in ("room-a", "room-b", "room-c", "room-d", "room-e")}
    assert len(actions_before) == 2 and all(len(a) == 1 for a in attempts_before.values())

    removed = store.history.prune(T0 - DAY, batch=batch)

    assert removed == 6  # the duplicate, the unknown event, and the joins
    kept = {d["id"] for d in store.history.deliveries(limit=1000)}
    assert kept == {acted.delivery_id, left.delivery_id, pending_left.delivery_id, cancelled_left.delivery_id,
                    recent.delivery_id}
    for gone in (duplicate, joined, unknown, pending_join, cancelled_join, rejoin):
        assert store.history.delivery(gone.delivery_id) is None
        assert store.history.decisions(delivery_id=gone.delivery_id) == []
    assert [d["outcome"] for d in store.history.decisions(delivery_id=acted.delivery_id)] == ["scheduled"]
    assert sorted(d["outcome"] for d in store.history.decisions(delivery_id=left.delivery_id)) == [
        "scheduled", "timer-started"]  # the timer's own decision, and the one made when it fired
    for timer_started in (pending_left, cancelled_left):
        assert [d["outcome"] for d in store.history.decisions(delivery_id=timer_started.delivery_id)] == ["timer-started"]
    assert store.actions.actions() == actions_before
    assert store.history.timers() == timers_before
    assert {a["id"]: store.actions.attempts(a["id"]) for a in actions_before} == attempts_before
    assert {room: store.history.room(room) for room in rooms_before} == rooms_before
    assert store.history.prune(T0 - DAY, batch=batch) == 0  # nothing more to do


def test_prune_keeps_everything_received_at_or_after_the_cutoff(store):
    rules = parse(RETENTION_RULES)
    at_cutoff = deliver(store, rules, T0, "participant-joined", meetingId="r", sessionId="s", participantId="p")
    before = deliver(store, rules, T0 - 0.001, "participant-joined", meetingId="r", sessionId="s",
                     participantId="q")
    assert store.history.prune(T0) == 1
    assert store.history.delivery(before.delivery_id) is None
    assert store.history.delivery(at_cutoff.delivery_id) is not None


def joined_at(store, at: float, room: str = "room-p") -> str:
    """A delivery that decides nothing (so prune may delete it), received at `at`; its id."""
    return deliver(store, parse(SESSION_RULES), at, "participant-joined", meetingId=room, sessionId=SESSION,
                   participantId=f"p-{at}").delivery_id


def test_worker_prunes_at_most_once_an_interval(store, clock, captured):
    worker = make_worker(store, clock, None, retention_days=1)
    two_days = joined_at(store, T0 - 2 * DAY)
    half_day = joined_at(store, T0 - 0.5 * DAY)

    assert worker.prune_if_due() == 1
    assert store.history.delivery(two_days) is None and store.history.delivery(half_day) is not None
    assert any(r["msg"] == "pruned 1 deliveries older than 1 days" for r in captured.lines())

    three_days = joined_at(store, T0 - 3 * DAY)
    clock.now = T0 + 3599.99
    assert worker.prune_if_due() == 0  # pruned less than an hour ago: not again yet
    assert store.history.delivery(three_days) is not None
    clock.now = T0 + 3600
    assert worker.prune_if_due() == 1
    assert store.history.delivery(three_days) is None
    assert store.history.delivery(half_day) is not None  # still younger than a day
    assert worker.prune_if_due() == 0


def test_worker_prunes_on_its_own_interval_argument(store, clock):
    worker = make_worker(store, clock, None, retention_days=1)
    assert worker.prune_if_due(every=60) == 0  # nothing old yet, but it counts as a prune
    old = joined_at(store, T0 - 2 * DAY)
    clock.now = T0 + 59
    assert worker.prune_if_due(every=60) == 0
    assert store.history.delivery(old) is not None
    clock.now = T0 + 60
    assert worker.prune_if_due(every=60) == 1


def test_retention_0_never_prunes(store, clock):
    worker = make_worker(store, clock, None, retention_days=0)
    ancient = joined_at(store, T0 - 1000 * DAY)
    for now in (T0, T0 + 3600, T0 + 365 * DAY):
        clock.now = now
        assert worker.prune_if_due() == 0
    assert store.history.delivery(ancient) is not None


def test_run_prunes_as_it_works(store, clock):
    worker = make_worker(store, clock, None, retention_days=1)
    old = joined_at(store, T0 - 2 * DAY)
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop, 0.02), daemon=True)
    thread.start()
    try:
        gone = _wait_for(lambda: store.history.delivery(old) is None)
    finally:
        stop.set()
        thread.join(timeout=10)
    assert gone
    assert not thread.is_alive()


def _wait_for(predicate, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()



@pytest.fixture
def cli_env(env, tmp_path) -> dict[str, str]:
    return {**env, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics")}


def test_prune_command_reports_what_it_deleted(cli_env):
    # Deliveries written an hour ago (the store's clock says so), on the file the command opens.
    store = Store.from_url(cli_env["DATABASE_URL"], lambda: time.time() - 3600)
    store.db.migrate()
    try:
        hour_ago = time.time() - 3600
        rules = parse(SESSION_RULES)
        acted = deliver(store, rules, hour_ago, "session-ended", meetingId="room-a", sessionId="s")
        for n in range(2):
            deliver(store, rules, hour_ago + n, "participant-joined", meetingId="room-b", sessionId="s",
                    participantId=f"p{n}")

        result = run_cli("prune", "--older-than", "1s", env=cli_env)

        assert result.returncode == 0, result.stderr
        assert result.stdout.decode().strip() == (
            "pruned 2 deliveries older than 1s; actions and what caused them are kept")
        assert [d["id"] for d in store.history.deliveries()] == [acted.delivery_id]
        assert len(store.actions.actions()) == 1

        again = run_cli("prune", "--older-than", "1s", env=cli_env)
        assert again.returncode == 0
        assert again.stdout.decode().startswith("pruned 0 deliveries")
    finally:
        store.close()


def test_prune_command_without_an_age_when_retention_is_0_exits_2(cli_env):
    store = Store.from_url(cli_env["DATABASE_URL"])
    store.db.migrate()
    try:
        old = joined_at(store, time.time() - 1000 * DAY)

        result = run_cli("prune", env={**cli_env, "RETENTION_DAYS": "0"})

        assert result.returncode == 2
        assert "RETENTION_DAYS is 0" in result.stderr.decode()
        assert result.stdout == b""
        assert store.history.delivery(old) is not None  # nothing deleted
    finally:
        store.close()


def test_prune_command_with_a_bad_age_exits_2(cli_env):
    result = run_cli("prune", "--older-than", "soon", env=cli_env)
    assert result.returncode == 2
    assert result.stderr.decode().startswith("prune: --older-than: ")


# == 4. graceful shutdown ======================================================================


def start_worker(env: dict[str, str], log_path: Path, **extra) -> subprocess.Popen:
    log = open(log_path, "wb")
    process = subprocess.Popen([sys.executable, "-m", "service", "worker"], cwd=ROOT,
                               env={**base_env(), **env, **extra}, stdout=log, stderr=subprocess.STDOUT,
                               start_new_session=True)
    log.close()
    return process


def stop_process(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)


def log_records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]


def test_sigterm_mid_call_finishes_and_records_the_call_then_exits_0(cli_env, fake_api, tmp_path):
    store = Store.from_url(cli_env["DATABASE_URL"])
    store.db.migrate()
    action_id = add_action(store, "room-slow", at=time.time())
    second = add_action(store, "room-next", at=time.time() + 1)
    # The call takes 2 s, and its 2 s only start once SIGTERM has been sent: the signal is
    # sure to arrive while the call is in flight.
    call_time = 2.0
    fake_api.script(DEACTIVATE, Reply(200, {"roomId": "room-slow", "disabled": True}, delay=call_time))
    arrived, signalled = threading.Event(), threading.Event()
    real_next_reply = fake_api._next_reply

    def gated(path):
        if path == DEACTIVATE and not arrived.is_set():
            arrived.set()
            signalled.wait(timeout=60)
        return real_next_reply(path)

    fake_api._next_reply = gated  # the instance attribute shadows the method
    log_path = tmp_path / "worker.log"
    # a timeout well over the call's 2 s, and a lease over twice the timeout (the settings insist)
    process = start_worker(cli_env, log_path, VIDEOSDK_TIMEOUT_SECONDS="10", ACTION_LEASE_SECONDS="30")
    try:
        assert arrived.wait(timeout=60), log_path.read_text()
        assert store.actions.action(action_id)["lease_owner"]  # claimed, and mid-call
        os.kill(process.pid, signal.SIGTERM)
        signalled.set()
        returncode = process.wait(timeout=call_time + 15)
    finally:
        signalled.set()
        stop_process(process)
    output = log_path.read_text()

    assert returncode == 0, output
    assert "Traceback" not in output
    assert [c.status for c in fake_api.calls_to(DEACTIVATE)] == [200]  # the call was finished, not cut
    action = store.actions.action(action_id)
    assert (action["status"], action["attempts"], action["last_status"]) == ("done", 1, 200)
    [attempt] = store.actions.attempts(action_id)
    assert (attempt["outcome"], attempt["http_status"]) == ("done", 200)
    assert all(a["lease_owner"] is None and a["lease_until"] is None for a in store.actions.actions())
    assert (store.actions.action(second)["status"], store.actions.action(second)["attempts"]) == ("pending", 0)  # not started
    assert [r["msg"] for r in log_records(log_path)][-1].endswith(" stopped")
    store.close()


def test_sigterm_when_idle_exits_0(cli_env, tmp_path):
    log_path = tmp_path / "idle.log"
    process = start_worker(cli_env, log_path)
    try:
        started = _wait_for(lambda: any(r["msg"].startswith("worker ") and r["msg"].endswith(" started")
                                        for r in log_records(log_path)), timeout=60)
        assert started, log_path.read_text()
        os.kill(process.pid, signal.SIGTERM)
        returncode = process.wait(timeout=15)
    finally:
        stop_process(process)
    assert returncode == 0, log_path.read_text()
    assert log_records(log_path)[-1]["msg"].endswith(" stopped")


# == 5. logs ===================================================================================


@dataclass
class Request:
    body: bytes
    status: int
    signature: str | None = None  # None: a good signature
    fields: dict = field(default_factory=dict)  # expected in the request's line, besides method/path/status/ms
    error: bool = False  # the line has an `error`, and no delivery
    # Once the decider has taken an accepted delivery: what its one line about it says (None: it
    # logs nothing, as for a delivery that decided nothing), and the stored delivery's columns.
    decided: dict | None = None
    stored: dict = field(default_factory=dict)


TOO_BIG = event_body("session-ended", meetingId="room-big", sessionId="s", pad="x" * 70_000)

# Requests made one after the other to one app; each must log exactly one line, and the decider
# at most one more about each accepted delivery (what was decided is no longer the request's).
REQUESTS = {
    # accepted: the delivery, the event and the room; the decider's line says what was decided
    "accepted": Request(ended("room-log", "s-1"), 202, fields={"event": "session-ended", "room": "room-log",
                                                         "verified": "yes"},
                        decided={"level": "info", "event": "session-ended", "room": "room-log",
                                 "decisions": ["close-after-session:scheduled"]},
                        stored={"known": True, "problem": None}),
    # the same again: accepted, decided as a duplicate
    "repeated": Request(ended("room-log", "s-1"), 202, fields={"event": "session-ended", "room": "room-log",
                                                         "verified": "yes"},
                        decided={"level": "info", "event": "session-ended", "room": "room-log",
                                 "decisions": ["close-after-session:duplicate"]},
                        stored={"known": True, "problem": None}),
    # an event type nobody handles: accepted (202), recorded as unknown, no decision, no decider line
    "unknown": Request(event_body("something-new", meetingId="room-u"), 202,
                       fields={"event": "something-new", "room": "room-u", "verified": "yes"},
                       stored={"known": False, "problem": None}),
    # a signature that is not base64: rejected before parsing
    "garbled-signature": Request(ended("room-x", "s-1"), 401, signature="!!!", error=True),
    # a good signature over other bytes
    "wrong-signature": Request(ended("room-x", "s-1"), 401, signature="OTHER", error=True),
    # no signature at all
    "no-signature": Request(ended("room-x", "s-1"), 401, signature="", error=True),
    # signed, but not JSON
    "not-json": Request(b"{not json", 400, error=True),
    # signed, JSON, a known event missing its room: accepted (202); kept, never decided on, and
    # the decider's line (a warning) says why
    "missing-field": Request(event_body("session-ended", sessionId="s"), 202,
                             fields={"event": "session-ended", "verified": "yes"},
                             decided={"level": "warning", "event": "session-ended",
                                      "problem": "data.meetingId: Missing data for required field."},
                             stored={"problem": "data.meetingId: Missing data for required field."}),
}


def _line_checks(record: dict, request: Request, response) -> None:
    assert record["level"] == "info"
    assert (record["method"], record["path"], record["status"]) == ("POST", "/webhooks/videosdk", request.status)
    assert isinstance(record["ms"], (int, float)) and record["ms"] >= 0
    for key, value in request.fields.items():
        assert record[key] == value, key
    assert "decisions" not in record and "problem" not in record  # decided behind the request, not in it
    if request.error:
        assert record["error"] == response.get_json()["error"]
        assert "delivery" not in record
    else:
        assert record["delivery"] == response.get_json()["delivery"]
        assert "error" not in record


def test_each_webhook_request_logs_exactly_one_json_line(make_app, sign, captured):
    app = make_app()
    client = app.test_client()
    store = app.extensions["roomwarden"].store
    for name, request in REQUESTS.items():
        signature = sign(request.body) if request.signature is None else request.signature
        if signature == "OTHER":
            signature = sign(b"other bytes")
        mark = captured.mark()
        response = client.post("/webhooks/videosdk", data=request.body,
                               headers={"Content-Type": "application/json", "videosdk-signature": signature})
        assert (name, response.status_code) == (name, request.status)
        lines = captured.since(mark, "roomwarden.web")
        assert (name, len(lines)) == (name, 1)
        _line_checks(lines[0], request, response)

        # What the worker does next: decide it (a refused request left nothing to decide).
        assert (name, store.inbox.has_undecided()) == (name, not request.error)
        mark = captured.mark()
        decide(app)
        assert (name, store.inbox.has_undecided()) == (name, False)
        about = captured.since(mark, "roomwarden.decider")
        assert (name, len(about)) == (name, 0 if request.decided is None else 1)
        if request.error:
            continue
        delivery_id = response.get_json()["delivery"]
        if request.decided is not None:
            assert about[0]["delivery"] == delivery_id
            for key, value in request.decided.items():
                assert (name, key, about[0][key]) == (name, key, value)
        stored = store.history.delivery(delivery_id)
        assert {key: stored[key] for key in request.stored} == request.stored, name


def test_the_fast_lane_and_the_flask_route_answer_and_log_a_delivery_alike(make_app, sign, captured):
    """lane.py takes a plain delivery; one with a query string goes to the Flask route (as does a
    chunked body: tests/test_hostile.py sends those over real sockets). Both answer the same 202 bytes but for the delivery id, write one line with the
    same fields, and leave the same row in the inbox; a refusal through either is the Flask
    route's own answer, logged once."""
    app = make_app()
    client = app.test_client()
    store = app.extensions["roomwarden"].store
    seen = {}
    for lane, path in (("fast", "/webhooks/videosdk"), ("flask", "/webhooks/videosdk?via=flask")):
        body = ended(f"room-{lane}", "s-1")
        mark = captured.mark()
        response = client.post(path, data=body, headers={"Content-Type": "application/json",
                                                        "videosdk-signature": sign(body)})
        [line] = captured.since(mark, "roomwarden.web")
        delivery = response.get_json()["delivery"]
        seen[lane] = (response.status_code, response.headers["Content-Type"],
                      response.get_data().replace(delivery.encode(), b"ID").replace(lane.encode(), b"LANE"),
                      sorted(line), {k: line[k] for k in ("level", "method", "status", "event", "verified")},
                      line["room"] == f"room-{lane}" and line["delivery"] == delivery)
        assert line["path"] == "/webhooks/videosdk"
    assert seen["fast"] == seen["flask"]
    assert seen["fast"][0] == 202 and seen["fast"][-1] is True
    assert store.inbox.inbox_stats()[0] == 2

    mark = captured.mark()
    response = client.post("/webhooks/videosdk", data=ended("room-forged", "s-1"),
                           headers={"Content-Type": "application/json", "videosdk-signature": sign(b"other")})
    [line] = captured.since(mark, "roomwarden.web")
    assert response.status_code == 401 and line["error"] == response.get_json()["error"]


def test_an_oversize_delivery_logs_one_line_with_its_error(make_app, sign, captured):
    client = make_app().test_client()
    mark = captured.mark()
    response = client.post("/webhooks/videosdk", data=TOO_BIG,
                           headers={"Content-Type": "application/json", "videosdk-signature": sign(TOO_BIG)})
    assert response.status_code == 413
    [line] = captured.since(mark, "roomwarden.web")
    assert line["status"] == 413
    assert line["error"] == response.get_json()["error"]


def test_an_unexpected_error_logs_its_request_line_with_an_error(make_app, sign, captured, monkeypatch):
    app = make_app()

    def explode(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(app.extensions["roomwarden"].intake, "accept", explode)
    body = ended("room-boom", "s-1")
    mark = captured.mark()
    response = app.test_client().post("/webhooks/videosdk", data=body,
                                      headers={"Content-Type": "application/json", "videosdk-signature": sign(body)})
    assert response.status_code == 500
    assert app.extensions["roomwarden"].store.inbox.has_undecided() is False  # nothing was kept
    [line] = captured.since(mark, "roomwarden.web")  # one line for the request, traceback included
    assert (line["status"], line["level"]) == (500, "error")
    assert line["error"] == "internal error: RuntimeError" and "RuntimeError: boom" in line["exc"]


def test_health_checks_are_not_logged(client, captured):
    mark = captured.mark()
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code == 200
    assert captured.since(mark, "roomwarden.web") == []


# Each row: the fake's answer -> the attempt's outcome and status in its log line, and the line's level
ATTEMPT_LOGS = {
    # done
    "200": (None, "done", 200, "info"),
    # a transient failure: retried
    "503": (Reply(503, {"message": "down"}), "retry", 503, "info"),
    # credentials refused: retried, and logged as an error for someone to fix
    "401": (Reply(401, {"message": "invalid token"}), "retry", 401, "error"),
    # room not found: failed for good
    "404": (Reply(404, {"message": "Room not found"}), "failed", 404, "info"),
}


@pytest.mark.parametrize("reply, outcome, status, level", ATTEMPT_LOGS.values(), ids=ATTEMPT_LOGS.keys())
def test_each_attempt_logs_action_room_rule_outcome_status(fake_api, store, clock, captured,
                                                           reply, outcome, status, level):
    if reply is not None:
        fake_api.script(DEACTIVATE, reply)
    worker = make_worker(store, clock, fake_api.base_url)
    action_id = add_action(store, "room-l", at=T0)
    mark = captured.mark()

    assert worker.run_once() is True

    lines = [r for r in captured.since(mark, "roomwarden.worker") if "action" in r]
    assert len(lines) == 1
    [line] = lines
    assert {k: line[k] for k in ("action", "room", "rule", "outcome", "status", "level")} == {
        "action": action_id, "room": "room-l", "rule": "close-after-session", "outcome": outcome,
        "status": status, "level": level}


def _dump_sqlite(path: Path) -> list[tuple[str, tuple]]:
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
        tables = [name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        rows = []
        for table in tables:
            rows.extend((table, row) for row in conn.execute(f'SELECT * FROM "{table}"'))
    conn.close()
    return rows


def test_no_secret_or_token_in_logs_error_bodies_or_stored_rows(make_app, env, sign, fake_api, closed_port,
                                                                captured, tmp_path):
    admin_token = "admin-" + secrets.token_hex(16)
    app = make_app(ADMIN_TOKEN=admin_token)
    http = app.test_client()
    answers: list[str] = []

    def send(body: bytes, signature: str | None = None) -> int:
        response = http.post("/webhooks/videosdk", data=body, headers={
            "Content-Type": "application/json", "videosdk-signature": sign(body) if signature is None else signature})
        answers.append(response.get_data(as_text=True))
        return response.status_code

    rooms = [f"leak-{n:04d}" for n in range(5)]
    statuses = [send(ended(room, "s-1")) for room in rooms]
    statuses += [send(ended(rooms[0], "s-1")), send(event_body("something-new", meetingId="leak-zzzz")),
                 send(ended("leak-bad", "s-1"), signature="garbage"),
                 send(ended("leak-bad", "s-1"), signature=sign(b"x")),
                 send(b"{not json"), send(TOO_BIG)]
    assert statuses == [202] * 7 + [401, 401, 400, 413]
    decide(app)  # what the worker's decider does first; this one only acts
    unknown = app.extensions["roomwarden"].store.history.delivery(json.loads(answers[6])["delivery"])
    assert (unknown["event_type"], unknown["known"]) == ("something-new", False)

    # The worker, on the same SQLite file, with its own clock a little ahead of the deliveries.
    clock = Clock(time.time() + 1)
    store = Store.from_url(env["DATABASE_URL"], clock)
    rules = parse(TEST_RULES)
    tokens = TokenSource(API_KEY, SECRET)  # real time: the fake refuses a token issued in the future
    token = tokens.token()  # the token the worker will send (minted once, reused for an hour)
    echo = f"token {token} secret {SECRET}"
    # An API that echoes what it got into its error bodies, under each key the client reads.
    fake_api.script(DEACTIVATE,
                    Reply(401, {"message": f"invalid token: {echo}"}),   # the message key
                    Reply(500, {"detail": f"upstream: {echo}"}),          # no known key: the raw text
                    Reply(400, {"error": f"rejected: {echo}"}),           # failed for good
                    Reply(403, {"msg": f"forbidden: {echo}"}))
    no_breaker = CircuitBreaker(threshold=1000, clock=clock)
    worker = make_worker(store, clock, fake_api.base_url, rules=rules, tokens=tokens, breaker=no_breaker)
    assert drain(worker) == 5  # 401, 500, 400, 403, then a 200
    # A worker with the wrong secret: a real 401 from the fake, which checks the JWT.
    clock.now += 2  # the 500's retry is due
    wrong = make_worker(store, clock, fake_api.base_url, rules=rules, secret=WRONG_SECRET,
                        breaker=CircuitBreaker(threshold=1000, clock=clock), worker_id="wrong-secret")
    assert wrong.run_once() is True
    assert fake_api.calls[-1].status == 401 and fake_api.calls[-1].auth_error == "invalid or expired token"
    # A run that fails: nothing answers at all.
    clock.now += 600  # every retry is due
    refused = make_worker(store, clock, f"http://127.0.0.1:{closed_port}", rules=rules, tokens=tokens,
                          breaker=CircuitBreaker(threshold=1000, clock=clock), worker_id="refused")
    assert drain(refused) == 3
    store.close()

    # What the admin API shows of it all, and its refusals.
    auth = {"Authorization": f"Bearer {admin_token}"}
    for path in ("/api/actions", "/api/deliveries", f"/api/rooms/{rooms[0]}", f"/api/rooms/{rooms[1]}"):
        response = http.get(path, headers=auth)
        assert response.status_code == 200
        answers.append(response.get_data(as_text=True))
    for headers in ({}, {"Authorization": "Bearer wrong-wrong-wrong-wrong"}):
        response = http.get("/api/actions", headers=headers)
        assert response.status_code == 401
        answers.append(response.get_data(as_text=True))

    received = {c.headers["authorization"] for c in fake_api.calls if "authorization" in c.headers}
    assert token in received and len(received) == 2  # the good token and the wrong-secret one
    forbidden = [SECRET, WRONG_SECRET, admin_token, *received]

    lines = captured.lines()  # every line is JSON
    log_text = captured.text
    rows = _dump_sqlite(sqlite_path(env["DATABASE_URL"]))
    stored = "\n".join(repr(row) for row in rows)
    raw_files = b"".join(p.read_bytes() for p in sqlite_path(env["DATABASE_URL"]).parent.glob("roomwarden.db*"))

    # The search is not vacuous: every kind of answer was logged, recorded, and redacted.
    attempt_rows = [row for table, row in rows if table == "attempts"]
    assert len(attempt_rows) == 9
    assert stored.count("[redacted]") >= 4 * 2  # each echo had the token and the secret
    assert len([r for r in lines if r.get("action") is not None]) == 9
    assert len([r for r in lines if r["logger"] == "roomwarden.web"]) == len(answers)
    assert all(room in stored for room in rooms)
    for secret in forbidden:
        assert secret not in log_text
        assert all(secret not in answer for answer in answers)
        assert secret not in stored
        assert secret.encode() not in raw_files
