"""Scaling out (issue 6): several web instances and workers on one PostgreSQL database.

Two gunicorn instances (the Procfile's `web` command, WEB_CONCURRENCY=2, each on its own port)
and three workers (`python -m service worker`) share one database. Concurrent clients send
signed events for many rooms, spread over both ports, duplicate deliveries included. The web
instances only keep each delivery in the inbox (202); the three workers' deciders take the
inbox's rooms in turn and decide each delivery once, in order per room. Rooms are of four
kinds, by id:

| kind      | events                                      | rule                                   | expected            |
|-----------|---------------------------------------------|----------------------------------------|---------------------|
| `end-`    | a session with two people, then it ends      | `close-ended` on session-ended         | deactivated once    |
| `keep-`   | the same                                    | `shadow-keep`, dry run                 | never called        |
| `idle-`   | two people join and leave                   | `close-idle`: empty `for: 2s`, confirm | deactivated by timer |
| `linger-` | one leaves (timer starts), rejoins (cancel) | `close-lingering`: empty `for: 30s`    | never called        |

Mid-run, a worker is killed with SIGKILL while it holds an action's lease, and replaced; later a
second one is, and not replaced (each kill may land mid-batch in its decider too). At the end,
once the inbox is empty, every claim, call, delivery, decision and timer is checked against the
database and the fake VideoSDK API, and the figures go to test-artifacts/scale-summary.json.

The only calls that may be repeated are those a killed worker had in flight: its lease runs out
and a survivor calls again (at least once, as the README says). Everything else is exactly once.

ROOMWARDEN_SCALE_EVENTS sets the number of deliveries (default 2000, ten per room).
"""

from __future__ import annotations

import json
import os
import random
import re
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from .conftest import event_body
from .procs import ROOT, free_port, wait_until_up

pytestmark = pytest.mark.e2e

EVENTS = int(os.environ.get("ROOMWARDEN_SCALE_EVENTS", "2000"))
PER_ROOM = 10
CLIENTS = 16  # concurrent senders (as many as the two instances had request threads, 2 x 2 x 4)
WORKERS = 3
API_DELAY = 0.3  # seconds the fake API takes per deactivate call, so kills land mid-call
TIMEOUT = 3  # VIDEOSDK_TIMEOUT_SECONDS
LEASE = 8  # ACTION_LEASE_SECONDS: must exceed twice the timeout
DRAIN_DEADLINE = 150  # seconds, after the last event, for every action and timer to settle
ARTIFACTS = ROOT / "test-artifacts"

# max_actions_per_minute is set high enough never to hold anything back here; with it set,
# every claim on PostgreSQL goes through the rate limiter's advisory lock, as in production.
RULES = """\
version: 1
settings:
  max_actions_per_minute: 1000
rules:
  - name: close-ended
    on: session-ended
    when:
      room.id: {matches: "^end-"}
    action: deactivate
  - name: shadow-keep
    on: session-ended
    when:
      room.id: {matches: "^keep-"}
    dry_run: true
    action: deactivate
  - name: close-idle
    on: participant-left
    when:
      room.id: {matches: "^idle-"}
      room.participants: 0
    for: 2s
    confirm: active-participants
    action: deactivate
  - name: close-lingering
    on: participant-left
    when:
      room.id: {matches: "^linger-"}
      room.participants: 0
    for: 30s
    action: deactivate
"""

KINDS = ("end", "keep", "idle", "linger")
EXPECTED_KINDS = {"end", "idle"}


# -- the events ---------------------------------------------------------------------------------


def room_events(kind: str, room: str, session: str) -> list[bytes]:
    """The room's deliveries in order, exactly PER_ROOM of them, repeated deliveries included."""
    def people(event: str, pid: str) -> bytes:
        return event_body(event, meetingId=room, sessionId=session, participantId=pid,
                          participantName=pid.upper())

    started = event_body("session-started", meetingId=room, sessionId=session, start="2026-11-26T10:00:00Z")
    ended = event_body("session-ended", meetingId=room, sessionId=session, start="2026-11-26T10:00:00Z",
                       end="2026-11-26T10:30:00Z")
    unknown = event_body("whiteboard-started", meetingId=room, sessionId=session)  # kept, decided: ignored
    join_a, join_b = people("participant-joined", "p-a"), people("participant-joined", "p-b")
    left_a, left_b = people("participant-left", "p-a"), people("participant-left", "p-b")
    if kind in ("end", "keep"):
        events = [started, join_a, join_a, join_b, left_a, left_b, left_b, unknown, ended, ended]
    elif kind == "idle":  # empty after the last leave: a 2 s timer, fired and acted on
        events = [started, join_a, join_b, join_b, left_a, left_a, left_b, left_b, unknown, unknown]
    else:  # linger: empty (a 30 s timer), then p-a comes back (cancelled) and stays
        events = [started, join_a, join_a, left_a, left_a, join_a, join_b, left_b, left_b, unknown]
    assert len(events) == PER_ROOM
    return events


def expected_status(body: bytes) -> int:
    """202: every delivery in the envelope is kept and decided behind the request, an event type
    the service does not know too (it used to be answered 200, having been decided in the request)."""
    return 202


# -- helpers ------------------------------------------------------------------------------------


def session_pids(process: subprocess.Popen) -> list[int]:
    """Every pid in the process's session (the shell `shell=True` may leave, and python)."""
    out = subprocess.run(["pgrep", "-s", str(process.pid)], capture_output=True, text=True).stdout
    return [int(pid) for pid in out.split()] + [process.pid]


def worker_ids(process: subprocess.Popen) -> set[str]:
    """The ids the worker's process may hold leases under, as prefixes: default_worker_id is
    "<end of the host name>:<pid>:<random hex>" (service/worker.py)."""
    host = socket.gethostname()[-30:]
    return {f"{host}:{pid}:" for pid in session_pids(process)}


def held_by(worker_id: str | None, prefixes) -> bool:
    return worker_id is not None and any(worker_id.startswith(prefix) for prefix in prefixes)


class Db:
    """Plain psycopg reads of the shared database, from the test's side."""

    def __init__(self, url: str):
        import psycopg

        self._conn = psycopg.connect(url, autocommit=True)
        self._lock = threading.Lock()

    def all(self, sql: str, *params) -> list[tuple]:
        with self._lock:
            return self._conn.execute(sql, params).fetchall()

    def one(self, sql: str, *params):
        return self.all(sql, *params)[0][0]

    def close(self) -> None:
        self._conn.close()


# -- the test -----------------------------------------------------------------------------------


def test_two_web_instances_and_three_workers_share_one_postgres(processes, pg_url, fake_api, sign, tmp_path,
                                                                 request):
    began = time.monotonic()
    rooms_count = max(len(KINDS) * 2, EVENTS // PER_ROOM)
    rng = random.Random(6)
    rooms = [(KINDS[i % len(KINDS)], f"{KINDS[i % len(KINDS)]}-{i:04d}-scal", f"sess-{i:04d}")
             for i in range(rooms_count)]
    rng.shuffle(rooms)
    expected = {room for kind, room, _ in rooms if kind in EXPECTED_KINDS}
    plans = {room: room_events(kind, room, session) for kind, room, session in rooms}
    signatures = {body: sign(body) for events in plans.values() for body in events}

    # The fake API answers deactivate calls (and confirm checks) a little slowly, as a real
    # API does, so that a killed worker is likely to be killed mid-call.
    default = fake_api._default

    def slow_default(method, path, headers, body, params=None):
        reply, error = default(method, path, headers, body, params)
        if path == "/v2/rooms/deactivate":
            reply.delay = API_DELAY
        elif path.endswith("/participants/active"):
            reply.delay = API_DELAY / 3
        return reply, error

    fake_api._default = slow_default
    # A killed worker's open connection to the fake is reset: expected, so not a traceback.
    server, report = fake_api._server, fake_api._server.handle_error

    def quiet(request_, address):
        if not isinstance(sys.exc_info()[1], (ConnectionResetError, BrokenPipeError)):
            report(request_, address)

    server.handle_error = quiet

    rules_path = tmp_path / "scale-rules.yaml"
    rules_path.write_text(RULES)
    processes.env.update({
        "DATABASE_URL": pg_url,
        "RULES_FILE": str(rules_path),
        "WEB_CONCURRENCY": "2",
        "VIDEOSDK_TIMEOUT_SECONDS": str(TIMEOUT),
        "ACTION_LEASE_SECONDS": str(LEASE),
        "WORKER_POLL_SECONDS": "0.1",
        "LOG_LEVEL": "INFO",
    })
    env = processes.env

    # The schema first, as a deployment would (the web instances then find nothing to do).
    migrate = subprocess.run([sys.executable, "-m", "service", "migrate"], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=120)
    assert migrate.returncode == 0, migrate.stdout + migrate.stderr
    assert "schema at version" in migrate.stdout

    ports = [free_port(), free_port()]
    webs = [processes.start("web", PORT=str(port)) for port in ports]
    bases = [f"http://127.0.0.1:{port}" for port in ports]
    for base, web in zip(bases, webs):
        wait_until_up(base, web)
    workers = [processes.start("worker") for _ in range(WORKERS)]

    db = Db(pg_url)
    request.addfinalizer(db.close)
    local = threading.local()
    answers: list[tuple[str, int, int, str | None]] = []  # (room, port index, status, delivery id)
    problems: list[str] = []
    record = threading.Lock()
    rooms_done = [0]

    def post(port_index: int, body: bytes) -> tuple[int, str | None]:
        http = getattr(local, "http", None) or requests.Session()
        local.http = http
        response = http.post(bases[port_index] + "/webhooks/videosdk", data=body, timeout=(5, 60), headers={
            "Content-Type": "application/json", "videosdk-signature": signatures[body]})
        delivery = response.json().get("delivery") if response.headers.get(
            "Content-Type", "").startswith("application/json") else None
        return response.status_code, delivery

    def send_room(index: int, room: str) -> None:
        for number, body in enumerate(plans[room]):
            port_index = (index + number) % 2  # alternate ports, so a repeat goes to the other one
            for _ in range(10):  # as VideoSDK would: a 503 is retried (nothing was recorded)
                try:
                    status, delivery = post(port_index, body)
                except requests.RequestException as exc:
                    with record:
                        problems.append(f"{room} event {number}: {exc!r} (outcome unknown)")
                    raise
                with record:
                    answers.append((room, port_index, status, delivery))
                if status != 503:
                    break
                time.sleep(0.2)
            if status != expected_status(body):
                with record:
                    problems.append(f"{room} event {number}: answered {status}, expected {expected_status(body)}")
        with record:
            rooms_done[0] += 1

    # -- killing workers mid-run --------------------------------------------------------------
    killed: list[dict] = []
    held_by_killed: dict[int, str] = {}  # action id -> room, leased to a worker when it was killed
    replacements: list = []

    def kill_while_holding(victim, replace: bool) -> None:
        ids = worker_ids(victim)
        deadline = time.monotonic() + 20
        holding = []
        while time.monotonic() < deadline:  # wait until it holds a lease: kill it mid-action
            holding = [row for row in db.all("SELECT id, lease_owner FROM actions WHERE status = 'pending'")
                       if held_by(row[1], ids)]
            if holding:
                break
            time.sleep(0.01)
        processes.kill(victim)  # SIGKILL to its whole process group
        # What it held stays leased to it until the lease runs out: read it before that.
        held = [(action, room) for action, room, owner in db.all(
            "SELECT id, room_id, lease_owner FROM actions WHERE status = 'pending'") if held_by(owner, ids)]
        held_by_killed.update(dict(held))
        killed.append({"at_seconds": round(time.monotonic() - began, 2), "worker_ids": sorted(ids),
                       "saw_it_hold_a_lease": bool(holding),
                       "held_actions": sorted(a for a, _ in held), "replaced": replace})
        if replace:
            replacements.append(processes.start("worker"))

    def killer() -> None:
        try:
            for victim, fraction, replace in ((workers[0], 0.3, True), (workers[1], 0.65, False)):
                while rooms_done[0] < fraction * rooms_count and not sending_over.is_set():
                    time.sleep(0.02)
                kill_while_holding(victim, replace)
        except Exception as exc:  # surfaced by the assertions below
            problems.append(f"killer: {exc!r}")

    sending_over = threading.Event()
    kill_thread = threading.Thread(target=killer, daemon=True)
    kill_thread.start()

    send_began = time.monotonic()
    with ThreadPoolExecutor(max_workers=CLIENTS) as pool:
        futures = [pool.submit(send_room, index, room) for index, (_, room, _) in enumerate(rooms)]
        for future in futures:
            future.result(timeout=240)
    sending_over.set()
    send_seconds = time.monotonic() - send_began
    kill_thread.join(timeout=60)
    assert not kill_thread.is_alive(), "the killer thread did not finish"

    # -- wait for everything to settle, with a deadline --------------------------------------
    def settled() -> bool:
        undecided = db.one("SELECT count(*) FROM inbox")
        called = set(fake_api.deactivations())
        pending_actions = db.one("SELECT count(*) FROM actions WHERE status = 'pending'")
        pending_timers = db.one("SELECT count(*) FROM timers WHERE status = 'pending'")
        return undecided == 0 and expected <= called and pending_actions == 0 and pending_timers == 0

    drain_began = time.monotonic()
    fake_api.wait_for(settled, timeout=DRAIN_DEADLINE, interval=0.25)
    time.sleep(1.5)  # a late, unwanted call would show up here
    drain_seconds = time.monotonic() - drain_began
    elapsed = time.monotonic() - began

    # -- the figures ---------------------------------------------------------------------------
    calls = fake_api.calls_to("/v2/rooms/deactivate")
    ok_calls = Counter(c.body.get("roomId") for c in calls if c.status == 200)
    statuses = Counter(status for _, _, status, _ in answers)
    answered_2xx = [delivery for _, _, status, delivery in answers if 200 <= status < 300]
    actions = db.all("SELECT id, room_id, rule, status, attempts FROM actions ORDER BY id")
    attempt_rows = db.all("SELECT action_id, worker, outcome, http_status FROM attempts ORDER BY id")
    timers = Counter(db.all("SELECT rule, status FROM timers"))
    survivors = [w for w in workers + replacements if w.poll() is None]
    worker_logs = {Path(w.log_path).stem: Path(w.log_path).read_text(errors="replace")
                   for w in workers + replacements}
    web_logs = "".join(Path(w.log_path).read_text(errors="replace") for w in webs)
    timers_fired_by = {name: len(re.findall(r'timer close-idle\|[^"\n]*: fire\b', text))
                       for name, text in worker_logs.items()}
    done_by = Counter(worker for _, worker, outcome, _ in attempt_rows if outcome == "done")
    summary = {
        "events_sent": len(answers),
        "events_planned": sum(len(e) for e in plans.values()),
        "rooms": rooms_count,
        "answers_2xx": len(answered_2xx),
        "undecided_at_end": db.one("SELECT count(*) FROM inbox"),
        "answers_by_status": {str(k): v for k, v in sorted(statuses.items())},
        "answers_by_port": {str(ports[i]): n for i, n in sorted(Counter(p for _, p, _, _ in answers).items())},
        "rooms_deactivated": len(ok_calls),
        "rooms_expected": len(expected),
        "deactivate_calls_200": sum(ok_calls.values()),
        "duplicate_calls": sum(n - 1 for n in ok_calls.values()),
        "workers_started": WORKERS + len(replacements),
        "workers_killed": len(killed),
        "workers_surviving": len(survivors),
        "kills": killed,
        "timers": {f"{rule}:{status}": n for (rule, status), n in sorted(timers.items())},
        "actions_by_status": dict(Counter(a[3] for a in actions)),
        "timers_fired_by_worker_log": timers_fired_by,
        "actions_done_by_worker": dict(sorted(done_by.items())),
        "deadlocks_logged": (web_logs + "".join(worker_logs.values())).count("deadlock detected"),
        "store_unavailable_logged": {"web": web_logs.count("store unavailable"),
                                     "workers": sum(t.count("store unavailable, waiting")
                                                    for t in worker_logs.values())},
        "send_seconds": round(send_seconds, 2),
        "drain_seconds": round(drain_seconds, 2),
        "elapsed_seconds": round(elapsed, 2),
        "settings": {"web_instances": 2, "web_concurrency": 2, "clients": CLIENTS, "workers": WORKERS,
                     "api_delay_seconds": API_DELAY, "timeout_seconds": TIMEOUT, "lease_seconds": LEASE},
    }
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "scale-summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print("\nscale summary:", json.dumps(summary, indent=2))

    # -- what must hold --------------------------------------------------------------------------
    assert not problems, problems[:20]
    assert len(killed) == 2 and survivors, summary
    # Both instances took a share of the traffic.
    assert len(summary["answers_by_port"]) == 2 and min(summary["answers_by_port"].values()) > len(answers) // 4

    # Every 2xx answer is a delivery in the database, decided (the inbox is empty), and nothing
    # else is; no delivery was decided twice: at most one decision per rule when it was decided
    # (a timer's firing records one more under the delivery that started it, with its timer_id).
    assert db.one("SELECT count(*) FROM inbox") == 0, summary
    stored = {row[0] for row in db.all("SELECT id FROM deliveries")}
    assert len(answered_2xx) == len(set(answered_2xx)) == db.one("SELECT count(*) FROM deliveries")
    assert stored == set(answered_2xx)
    assert db.all("SELECT delivery_id, rule FROM decisions WHERE timer_id IS NULL "
                  "GROUP BY delivery_id, rule HAVING count(*) > 1") == []

    # Nothing left to do: no pending action, no pending timer.
    assert db.one("SELECT count(*) FROM actions WHERE status = 'pending'") == 0, summary
    assert db.one("SELECT count(*) FROM timers WHERE status = 'pending'") == 0, summary

    # Exactly the expected rooms were deactivated, each by one action, and no other room was
    # even called for.
    called_rooms = {c.body.get("roomId") for c in calls}
    assert called_rooms == expected, (sorted(called_rooms - expected)[:10], sorted(expected - called_rooms)[:10])
    assert all(c.status == 200 for c in calls), Counter(c.status for c in calls)
    done = [a for a in actions if a[3] == "done"]
    assert sorted(a[1] for a in done) == sorted(expected)
    assert Counter(a[3] for a in actions) == {"done": len(expected), "dry-run": sum(
        1 for kind, _, _ in rooms if kind == "keep")}, summary["actions_by_status"]
    kinds = Counter(kind for kind, _, _ in rooms)
    assert timers == {("close-idle", "fired"): kinds["idle"], ("close-lingering", "cancelled"): kinds["linger"]}

    # Several workers shared the work: timers fired and actions carried out by more than one.
    if kinds["idle"] >= 10:
        assert sum(1 for n in timers_fired_by.values() if n) >= 2, timers_fired_by
        assert sum(timers_fired_by.values()) <= kinds["idle"], timers_fired_by
    assert len(done_by) >= 2, done_by

    # Once per rule, room and session: every repeated session-ended was a duplicate decision.
    outcomes = Counter(db.all("SELECT rule, outcome FROM decisions WHERE rule IN ('close-ended', 'shadow-keep')"))
    assert outcomes == {("close-ended", "scheduled"): kinds["end"], ("close-ended", "duplicate"): kinds["end"],
                        ("shadow-keep", "dry-run"): kinds["keep"], ("shadow-keep", "duplicate"): kinds["keep"]}

    # No action was claimed by two workers, except one a killed worker held: its lease ran out
    # and one survivor took it over. Each action has exactly one recorded attempt, a 200.
    per_action = Counter(row[0] for row in attempt_rows)
    for action_id, room, rule, status, claims in done:
        assert per_action[action_id] == 1, (action_id, room, [r for r in attempt_rows if r[0] == action_id])
        if action_id in held_by_killed:
            assert claims >= 2, (action_id, room, claims)
        else:
            assert claims == 1, (action_id, room, claims, "claimed twice, though no killed worker held it")
    assert all(row[2] == "done" and row[3] == 200 for row in attempt_rows), Counter((r[2], r[3]) for r in attempt_rows)
    killed_ids = {wid for kill in killed for wid in kill["worker_ids"]}
    assert not any(held_by(row[1], killed_ids) for row in attempt_rows if row[0] in held_by_killed)

    # One successful deactivate call per room; a second only where a killed worker had the call
    # in flight (the documented at-least-once window), never more than the action's claims.
    claims_of = {room: claims for _, room, _, _, claims in done}
    held_rooms = set(held_by_killed.values())
    for room in expected:
        if room in held_rooms:
            assert 1 <= ok_calls[room] <= claims_of[room], (room, ok_calls[room], claims_of[room])
        else:
            assert ok_calls[room] == 1, (room, ok_calls[room])
    assert summary["duplicate_calls"] <= len(held_by_killed)
    assert elapsed < 280, f"took {elapsed:.0f}s"
