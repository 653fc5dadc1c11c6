"""Sweeps (issue 16): time as a trigger, the API as the judge.

Through the real pieces: signed-body events into the inbox, the worker's decider and its sweep
rounds on a real store (SQLite here; both databases for the round's bookkeeping), and the fake
VideoSDK API over HTTP answering `GET /v2/sessions?roomId=...&status=ongoing` from its
documented page shape (tests/videosdk_examples/SOURCES.md). The real-process test is in
tests/test_e2e.py.
"""

from __future__ import annotations

import re

import pytest

from service import explain
from service.decider import Decider
from service.events import parse_event
from service.reload import RulesHolder
from service.rules.loader import parse_rules
from service.store import Store
from service.sweeps import is_sweep_id, sweep_body, sweep_id
from service.worker import Worker

from .builders import T0, make_worker
from .conftest import Clock, event_body
from .fakeapi import Reply

HALF = lambda: 0.5  # noqa: E731
SESSIONS = "/v2/sessions"

SWEEP_RULES = """\
version: 1
settings:
  sweep_every: 10m
  protect: ["keep-*"]
rules:
  - name: close-forgotten
    on: sweep
    when:
      room.quiet_for: {gte: 2h}
    confirm: no-live-session
    action: deactivate
"""


def parse(text: str):
    """The rule set and its warnings (errors fail here)."""
    rule_set, problems = parse_rules(text, "sweep-rules.yaml")
    assert rule_set is not None, [str(p) for p in problems]
    return rule_set, list(rule_set.warnings)




def accept(store, raw: bytes, at: float) -> str:
    from service.accept import new_delivery_id
    from service.events import read_envelope
    from service.store.inbox import InboxItem

    item = InboxItem(id=new_delivery_id(at), received_at=at, room_id=read_envelope(raw)[1],
                     body=raw.decode(), signature=None, verified=True)
    store.inbox.append(item)
    return item.id


def join(store, room: str, at: float, session: str = "s-1", who: str = "p-1") -> str:
    return accept(store, event_body("participant-joined", meetingId=room, sessionId=session, participantId=who), at)


def inbox_rooms(store: Store) -> list[str]:
    from sqlalchemy import select

    from service.store.tables import inbox
    with store.db.engine.connect() as conn:
        return list(conn.execute(select(inbox.c.room_id).order_by(inbox.c.seq)).scalars())


def drain(worker: Worker) -> int:
    passes = 0
    while worker.run_once():
        passes += 1
        assert passes < 10_000
    return passes


# -- the rules ---------------------------------------------------------------------------------


def test_sweep_rules_load_with_their_settings_and_no_warning():
    rule_set, problems = parse(SWEEP_RULES)
    assert problems == []
    assert rule_set.sweep_every == 600 and rule_set.settings.max_checks_per_minute == 60
    assert rule_set.rules_for("sweep") == rule_set.rules


def test_without_a_sweep_rule_there_are_no_sweeps_and_a_glob_never_matches_one():
    rule_set, _ = parse("version: 1\nrules:\n  - name: any\n    on: '*'\n    dry_run: true\n    action: deactivate\n")
    assert rule_set.sweep_every is None
    assert rule_set.rules_for("sweep") == () and rule_set.rules_for("session-ended") == rule_set.rules


def test_a_sweep_rule_without_the_live_session_check_is_warned_about():
    _, problems = parse(SWEEP_RULES.replace("    confirm: no-live-session\n", ""))
    assert [p.severity for p in problems] == ["warning"]
    assert "without 'confirm: no-live-session'" in problems[0].message


@pytest.mark.parametrize("setting, message", [
    ("sweep_every: 0s", "'sweep_every' must be longer than zero"),
    ("sweep_every: 500ms", "'sweep_every'"),
    ("max_checks_per_minute: 0", "'max_checks_per_minute' must be a whole number, at least 1"),
])
def test_bad_sweep_settings_are_errors(setting, message):
    rule_set, problems = parse_rules(SWEEP_RULES.replace("sweep_every: 10m", setting), "r.yaml")
    assert rule_set is None and any(message in p.message for p in problems), [str(p) for p in problems]


def test_a_body_from_outside_that_says_sweep_is_never_read_as_one():
    raw = sweep_body("room-1", 3).encode()
    outside = parse_event(raw)
    assert (outside.type, outside.known) == ("sweep", False)  # recorded, never decided on
    inside = parse_event(raw, sweep=True)
    assert (inside.type, inside.known, inside.room_id) == ("sweep", True, "room-1")
    assert is_sweep_id(sweep_id(T0, 3, "room-1")) and not is_sweep_id("18bcfe5680000123456789abcdef0")


# -- the round's bookkeeping, on both databases ---------------------------------------------------


@pytest.fixture
def make_store(database_url):
    made: list[Store] = []

    def make(clock: Clock) -> Store:
        store = Store.from_url(database_url, clock)
        store.db.migrate()
        made.append(store)
        return store

    yield make
    for store in made:
        store.close()


def _rooms(store: Store, clock: Clock, names: list[str]) -> None:
    """Rooms the store knows, each with a delivery decided at T0."""
    rules = RulesHolder(parse(SWEEP_RULES)[0])
    for name in names:
        join(store, name, T0)
    Decider(store.inbox, lambda: rules.current, acts=True, verifier=None).drain()


def test_a_round_appends_each_open_room_once_in_chunks_and_one_worker_holds_it(make_store):
    clock = Clock(T0)
    store = make_store(clock)
    names = [f"room-{i:02d}" for i in range(7)]
    _rooms(store, clock, names)
    clock.now = T0 + 1

    first = store.sweeps.sweep_turn("w-1", every=600, chunk=3, lease=60)
    assert (first.round, first.appended, first.finished, first.started) == (1, 3, False, True)
    held = store.sweeps.sweep_turn("w-2", every=600, chunk=3, lease=60)  # another worker: not its round
    assert (held.appended, held.next_look_at) == (0, T0 + 1 + 60)
    assert store.sweeps.sweep_turn("w-1", every=600, chunk=3, lease=60).appended == 3
    last = store.sweeps.sweep_turn("w-1", every=600, chunk=3, lease=60)
    assert (last.appended, last.finished, last.rooms, last.next_look_at) == (1, True, 7, T0 + 1 + 600)
    assert store.inbox.inbox_stats()[0] == 7
    swept = sorted(inbox_rooms(store))
    assert swept == names  # each once

    not_due = store.sweeps.sweep_turn("w-2", every=600, chunk=3, lease=60)
    assert (not_due.appended, not_due.next_look_at) == (0, T0 + 601)
    clock.now = T0 + 601
    again = store.sweeps.sweep_turn("w-2", every=600, chunk=100, lease=60)
    assert (again.round, again.appended, again.finished) == (2, 7, True)


def test_a_round_whose_owner_died_is_carried_on_from_its_cursor(make_store):
    clock = Clock(T0)
    store = make_store(clock)
    _rooms(store, clock, [f"room-{i:02d}" for i in range(5)])
    assert store.sweeps.sweep_turn("w-dead", every=600, chunk=2, lease=60).appended == 2
    clock.now = T0 + 61  # its lease ran out
    rest = store.sweeps.sweep_turn("w-2", every=600, chunk=10, lease=60)
    assert (rest.round, rest.appended, rest.finished, rest.rooms) == (1, 3, True, 5)
    assert sorted(set(inbox_rooms(store))) == sorted(inbox_rooms(store)) and len(inbox_rooms(store)) == 5


def test_a_delivery_that_arrives_during_a_round_waits_behind_one_chunk_not_the_round(make_store, monkeypatch):
    """The worker appends a round's next chunk only once the last one has been decided, so a
    webhook that comes just after a round starts is decided before the round's later chunks."""
    from service import sweeps

    clock = Clock(T0)
    store = make_store(clock)
    names = [f"room-{i:02d}" for i in range(10)]
    _rooms(store, clock, names)
    monkeypatch.setattr(sweeps, "CHUNK", 3)
    worker = make_worker(store, clock, "http://127.0.0.1:9", rules=RulesHolder(parse(SWEEP_RULES)[0]),
                         decides=True)
    held: list[list[str]] = []  # what the inbox held each time a chunk was appended
    turn = store.sweeps.sweep_turn

    def watched(*args):
        done = turn(*args)
        if done.appended:
            held.append(inbox_rooms(store))
        return done

    monkeypatch.setattr(store.sweeps, "sweep_turn", watched)
    clock.now = T0 + 1
    assert worker.run_once()  # the round starts: its first chunk
    join(store, "late-room", T0 + 1, session="s-9", who="p-9")  # sorts before the cursor: not swept
    drain(worker)
    assert held == [names[0:3], names[3:6], names[6:9], names[9:]]  # the late delivery never behind two
    assert store.inbox.inbox_stats()[0] == 0
    assert store.pages.sweep_state()["rooms"] == 10


def test_a_room_whose_delivery_waits_for_a_key_does_not_hold_a_round_back(make_store, monkeypatch):
    """A delivery kept until a webhook key can be had keeps its room's later rows (that room's
    sweep among them) in the inbox; the round goes on past it and finishes."""
    from service import sweeps
    from service.accept import new_delivery_id
    from service.store.inbox import InboxItem

    clock = Clock(T0)
    store = make_store(clock)
    names = [f"room-{i:02d}" for i in range(10)]
    _rooms(store, clock, names)
    monkeypatch.setattr(sweeps, "CHUNK", 3)
    raw = event_body("participant-joined", meetingId="room-05", sessionId="s-1", participantId="p-5")
    store.inbox.append(InboxItem(id=new_delivery_id(T0 + 1), received_at=T0 + 1, room_id="room-05", body=raw.decode(),
                           signature="not-checked-yet", verified=None))  # no key could be had yet
    worker = make_worker(store, clock, "http://127.0.0.1:9", rules=RulesHolder(parse(SWEEP_RULES)[0]),
                         decides=True)
    clock.now = T0 + 2
    drain(worker)
    state = store.pages.sweep_state()
    assert (state["round"], state["rooms"], state["finished_at"]) == (1, 10, T0 + 2)
    assert inbox_rooms(store) == ["room-05", "room-05"]  # the delivery and its room's sweep, kept in order


def test_a_closed_room_is_not_swept_until_a_delivery_brings_it_back(make_store):
    from service.store.tables import rooms
    from sqlalchemy import update

    clock = Clock(T0)
    store = make_store(clock)
    _rooms(store, clock, ["room-open", "room-shut"])
    with store.db.engine.begin() as conn:
        store.inbox.rooms.close_room(conn, "room-shut", T0)
    assert store.sweeps.sweep_turn("w-1", every=600, chunk=10, lease=60).appended == 1
    assert inbox_rooms(store) == ["room-open"]

    rules = RulesHolder(parse(SWEEP_RULES)[0])
    Decider(store.inbox, lambda: rules.current, acts=True, verifier=None).drain()
    join(store, "room-shut", T0 + 5, session="s-2")  # back to life
    Decider(store.inbox, lambda: rules.current, acts=True, verifier=None).drain()
    clock.now = T0 + 601
    assert store.sweeps.sweep_turn("w-1", every=600, chunk=10, lease=60).appended == 2
    with store.db.engine.begin() as conn:
        conn.execute(update(rooms).values(closed_at=None))  # (nothing else reads closed_at)


# -- deciding sweeps, and the API as the judge -----------------------------------------------------


def test_a_room_whose_leave_was_lost_is_deactivated_by_a_sweep_confirmed_by_the_api(fake_api, store, clock):
    """Three rooms heard from at T0 and then never again (their leave webhooks lost): the sweep
    after two quiet hours deactivates the one VideoSDK lists no live session for, cancels the one
    it lists live, and never touches the protected one. A room heard from an hour ago is not
    confirmed at all (its `when` does not hold)."""
    rules = RulesHolder(parse(SWEEP_RULES)[0])
    worker = make_worker(store, clock, fake_api.base_url, rules=rules, decides=True)
    for room in ("room-lost", "room-live", "keep-lost"):
        join(store, room, T0, session=f"s-{room}")
    fake_api.set_active("s-room-live", ["p-1"], room_id="room-live")
    drain(worker)  # decided; the first round starts at once and finds them quiet for 0 s
    assert fake_api.calls == []
    clock.now = T0 + 3600
    join(store, "room-recent", clock.now)
    drain(worker)

    clock.now = T0 + 2 * 3600 + 601  # the next round, two hours after the three went quiet
    drain(worker)

    assert fake_api.deactivations() == ["room-lost"]
    assert len(fake_api.calls_to(SESSIONS)) == 2  # room-live and room-lost: not the protected, not the recent
    by_room = {a["room_id"]: a for a in store.actions.actions()}
    assert by_room["room-lost"]["status"] == "done"
    assert by_room["room-live"]["status"] == "cancelled"
    assert "VideoSDK lists live session s-room-live" in by_room["room-live"]["last_error"]
    assert "keep-lost" not in by_room and "room-recent" not in by_room
    outcomes = {d["room_id"]: d["outcome"] for d in store.history.decisions() if d["rule"] == "close-forgotten"}
    assert outcomes == {"room-lost": "scheduled", "room-live": "scheduled", "keep-lost": "protected"}

    # room-lost is closed: the next round leaves it out; room-live stays in (it is in use)
    clock.now += 601
    drain(worker)
    swept = [d["room_id"] for room in ("room-live", "room-lost") for d in store.history.deliveries(room_id=room, limit=100)
             if d["event_type"] == "sweep"]
    assert swept.count("room-live") == 3 and swept.count("room-lost") == 2
    assert fake_api.deactivations() == ["room-lost"]


def test_a_sweep_changes_nothing_about_the_room_and_explain_says_what_it_saw(fake_api, store, clock):
    rules = RulesHolder(parse(SWEEP_RULES)[0])
    worker = make_worker(store, clock, fake_api.base_url, rules=rules, decides=True)
    join(store, "room-x", T0, session="s-x")
    drain(worker)
    before = store.history.room("room-x")
    clock.now = T0 + 3 * 3600
    drain(worker)
    after = store.history.room("room-x")
    assert (after["state"], after["updated_at"], after["last_delivery_id"]) == (
        before["state"], before["updated_at"], before["last_delivery_id"])
    text = "\n".join(explain.story("room-x", store.history.room_story("room-x"), clock.now))
    assert "swept at" in text and "quiet for 3h" in text
    assert "close-forgotten" in text


def test_an_unreadable_or_failed_live_session_check_never_deactivates(fake_api, store, clock):
    rules = RulesHolder(parse(SWEEP_RULES)[0])
    worker = make_worker(store, clock, fake_api.base_url, rules=rules, decides=True)
    join(store, "room-q", T0)
    drain(worker)
    fake_api.script(SESSIONS, Reply(200, {"unexpected": True}), Reply(503, {"message": "down"}))
    clock.now = T0 + 3 * 3600
    for _ in range(40):  # a pass every second of the clock, as the loop would make
        worker.run_once()
        clock.now += 1
        if len(fake_api.calls_to(SESSIONS)) == 2:
            break
    assert fake_api.deactivations() == []
    [action] = store.actions.actions()
    assert action["status"] == "pending" and action["attempts"] == 2  # retried, not acted on


def test_a_404_from_the_live_session_list_is_not_read_as_no_session(fake_api, store, clock):
    """The docs do not say what the list answers for a room with no sessions at all: a 404 fails
    the action as a 404 to its own call would (docs/videosdk.md), and nothing is deactivated."""
    rules = RulesHolder(parse(SWEEP_RULES)[0])
    worker = make_worker(store, clock, fake_api.base_url, rules=rules, decides=True)
    join(store, "room-n", T0)
    drain(worker)
    fake_api.script(SESSIONS, Reply(404, {"message": "Room not found"}))
    clock.now = T0 + 3 * 3600
    drain(worker)
    assert len(fake_api.calls_to(SESSIONS)) == 1 and fake_api.deactivations(status=None) == []
    [action] = store.actions.actions()
    assert action["status"] == "failed" and "confirm check failed" in action["last_error"]


def test_live_session_checks_are_paced_by_max_checks_per_minute(fake_api, store, clock):
    rules = RulesHolder(parse(SWEEP_RULES.replace("sweep_every: 10m", "sweep_every: 10m\n  max_checks_per_minute: 3"))[0])
    worker = make_worker(store, clock, fake_api.base_url, rules=rules, decides=True)
    for i in range(5):
        join(store, f"room-{i}", T0, session=f"s-{i}")
    drain(worker)
    clock.now = T0 + 3 * 3600
    drain(worker)
    assert len(fake_api.calls_to(SESSIONS)) == 3 and len(fake_api.deactivations()) == 3
    clock.now += 61
    drain(worker)
    assert len(fake_api.calls_to(SESSIONS)) == 5 and len(fake_api.deactivations()) == 5


def test_a_rule_test_advances_the_virtual_clock_across_sweeps(tmp_path):
    """`python -m service test`: sweeps given as events at virtual times, decided with the room's
    history (room.quiet_for counts from its last delivery, not from an earlier sweep)."""
    import subprocess
    import sys

    from .conftest import ROOT

    (tmp_path / "rules.yaml").write_text(SWEEP_RULES)
    (tmp_path / "rules.test.yaml").write_text(f"""\
rules: rules.yaml
tests:
  - name: quiet for two hours, the sweep after that closes it
    events:
      - {{at: 0s, event: participant-joined, data: {{meetingId: room-s, sessionId: s1, participantId: p1}}}}
      - {{at: 1h, event: sweep, data: {{meetingId: room-s}}}}
      - {{at: 2h10m, event: sweep, data: {{meetingId: room-s}}}}
    expect:
      - {{at: 2h10m, action: deactivate, room: room-s, rule: close-forgotten}}
  - name: a delivery in between keeps it open
    events:
      - {{at: 0s, event: participant-joined, data: {{meetingId: room-s, sessionId: s1, participantId: p1}}}}
      - {{at: 1h30m, event: participant-left, data: {{meetingId: room-s, sessionId: s1, participantId: p1}}}}
      - {{at: 2h10m, event: sweep, data: {{meetingId: room-s}}}}
    expect: []
""")
    result = subprocess.run([sys.executable, "-m", "service", "test", str(tmp_path / "rules.test.yaml")],
                            cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stderr.strip() == "2 passed, 0 failed" and result.stdout.count("ok    ") == 2, result.stdout


def test_simulate_shows_what_a_sweep_would_do_for_one_room_as_stored(tmp_path, fake_api):
    """`simulate --from-store`: a sweep for a room the store last heard from 3 hours ago matches
    the rule; without the store, a sweep of a room with no history says it cannot know."""
    import time

    from .test_cli import run

    clock = Clock(time.time() - 3 * 3600)
    store = Store.from_url(f"sqlite:///{tmp_path}/sim.db", clock)
    store.db.migrate()
    rules_path = tmp_path / "sweep-rules.yaml"
    rules_path.write_text(SWEEP_RULES)
    worker = make_worker(store, clock, fake_api.base_url, rules=RulesHolder(parse(SWEEP_RULES)[0]), decides=True)
    join(store, "room-sim", clock.now)
    drain(worker)
    store.close()
    body = sweep_body("room-sim", 1)

    stored = run("simulate", body, "--rules", str(rules_path), "--from-store",
                 env={"DATABASE_URL": f"sqlite:///{tmp_path}/sim.db"})
    assert stored.returncode == 0, stored.stderr
    out = stored.stdout.decode()
    assert re.search(r"room room-sim as stored: 1 participant\(s\), session s-1 live, last delivery 3h(\d+s)? ago",
                     out), out
    assert "rule close-forgotten (line 6): MATCH -> would deactivate room room-sim" in out

    alone = run("simulate", body, "--rules", str(rules_path)).stdout.decode()
    assert "a sweep of a room with no history: room.quiet_for and the room's state are unknown" in alone
    assert "no match (unknown: a field is missing)" in alone and "would deactivate" not in alone
