"""A room's story as a picture (issue 19): presence.py's fold, dashboard/timeline.py's SVG, the
rooms list's occupancy sparklines, and both pages in a real browser.

- The fold is checked against the decider itself: a random room's deliveries go through the
  real pipeline, and after each one the fold of what the store recorded must say what the
  decider wrote (the room's state, and `deliveries.participants`).
- The picture is drawn from a scripted room's real history (a worker on a fake clock, the fake
  VideoSDK over HTTP): joins and leaves, a cancelled timer, a fired one, a failed and then a
  successful attempt. Every mark's <title> must be a line `explain` prints and link to its
  entry; the marks must match the stored history, kind by kind.
- Scale: a room with 300 participants and 6,000 deliveries collapses its lanes and draws a
  bounded number of marks. Its page time goes to test-artifacts (bench/ measures it); no
  timing is asserted.
"""

from __future__ import annotations

import json
import random
import re
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET

import pytest
import requests

from service import explain, presence
from service.dashboard import timeline
from service.events import SWEEP
from service.reload import RulesHolder
from service.store.inbox import InboxItem
from service.decider import Decider
from service.sweeps import sweep_body, sweep_id

from .builders import SESSION, deliver, make_worker, parse
from .conftest import EMPTY_RULE, ROOT, RULES_HEAD, T0, deliver as deliver_raw, ended, joined, left
from .fakeapi import Reply
from .procs import wait_until_up
from .test_dashboard import ARTIFACTS, TOKEN, sign_in

SVG = "{http://www.w3.org/2000/svg}"
ROOM = "room-story"
RULES = RULES_HEAD + EMPTY_RULE  # a room left empty for 5 minutes


# == the fold ======================================================================================


def row(i: int, at: float, event_type: str, who: str | None = None, session: str | None = "s1", **extra) -> dict:
    return {"id": f"d{i:04d}", "received_at": T0 + at, "event_type": event_type, "session_id": session,
            "participant_id": who, "known": True, "problem": None, **extra}


def test_stays_sessions_and_the_head_count_follow_joins_and_leaves():
    rows = [row(1, 0, "session-started"), row(2, 1, "participant-joined", "ann"),
            row(3, 30, "participant-joined", "bob"), row(4, 90, "participant-left", "ann"),
            row(5, 100, "participant-joined", "ann"), row(6, 120, "participant-left", "bob"),
            row(7, 400, "session-ended")]
    folded = presence.fold(ROOM, reversed(rows))  # taken in arrival order, whatever order they come in
    assert [(s.who, s.start - T0, s.end - T0, s.start_delivery, s.end_delivery) for s in folded.stays] == [
        ("ann", 1, 90, "d0002", "d0004"), ("bob", 30, 120, "d0003", "d0006"), ("ann", 100, 400, "d0005", "d0007")]
    assert [(s.who, s.start - T0, s.end - T0) for s in folded.sessions] == [("s1", 0, 400)]
    assert [(at - T0, n) for at, n in folded.counts] == [(0, 0), (1, 1), (30, 2), (90, 1), (100, 2), (120, 1),
                                                         (400, 0)]
    assert folded.peak == 2 and folded.participants == ["ann", "bob"]


def test_late_repeated_unread_unknown_and_swept_deliveries_move_no_one():
    rows = [row(1, 0, "participant-joined", "ann"),
            row(2, 1, "participant-joined", "ann"),  # a repeated delivery: still one stay
            row(3, 2, "participant-left", "ann", problem="data.participantId: missing"),  # kept unread
            row(4, 3, "participant-gone", "ann", known=False),  # a type roomwarden does not know
            row(5, 4, SWEEP, None, None),
            row(6, 5, "session-ended", session="s2"),  # an end for an unseen session while s1 is live
            row(7, 6, "participant-joined", "bob", session="s3")]  # a new session: s1 ended unseen
    folded = presence.fold(ROOM, rows)
    assert [(s.who, s.start - T0, s.end and s.end - T0) for s in folded.stays] == [("ann", 0, 6), ("bob", 6, None)]
    assert [(s.who, s.start - T0, s.end and s.end - T0, s.end_delivery) for s in folded.sessions] == [
        ("s1", 0, 6, "d0007"), ("s3", 6, None, None)]


def test_the_fold_says_what_the_decider_wrote_after_every_delivery(make_store):
    """Random joins, leaves and session ends (repeats, late events from an earlier session), each
    through the real pipeline: the fold of the recorded deliveries ends where the room's stored
    state is, and its head count after each delivery is the one the decider wrote beside it."""
    store = make_store()
    rules = parse(RULES)
    rng = random.Random(19)
    # Session ids shaped as VideoSDK's (an ObjectId: its creation time first), so that a late
    # event for an older session is told apart by its id as well as by the recent ones kept.
    people, sessions = ["p1", "p2", "p3", "p4"], [f"{int(T0):08x}{'0' * 16}"]
    for i in range(120):
        at = T0 + i
        if rng.random() < 0.04:
            sessions.append(f"{int(at):08x}{len(sessions):016x}")
        session = sessions[-1] if rng.random() < 0.9 else rng.choice(sessions)  # now and then, a late one
        kind = rng.choice(["participant-joined", "participant-joined", "participant-left", "session-ended"]
                          if rng.random() < 0.1 else ["participant-joined", "participant-left"])
        data = {"meetingId": ROOM, "sessionId": session}
        if kind != "session-ended":
            data["participantId"] = rng.choice(people)
        deliver(store, rules, at, kind, **data)
        story = store.history.room_story(ROOM)
        folded = presence.fold(ROOM, story["deliveries"])
        in_room = {s.who for s in folded.stays if s.end is None}
        stored = story["room"][0]["state"]
        assert sorted(in_room) == stored["participants"], i
        live = [s.who for s in folded.sessions if s.end is None]
        assert live == ([stored["session_id"]] if stored["session_active"] else []), i
        assert folded.disagree == 0, i
        [newest] = [d for d in story["deliveries"] if d["received_at"] == at]
        assert newest["participants"] == folded.counts[-1][1] == len(in_room), i


# == the picture, from a scripted room's real history ==============================================


def scripted_room(store, clock, fake_api) -> dict:
    """ann and bob join, ann leaves, bob leaves (the room is empty: a 5m timer), cy joins (it is
    cancelled), cy leaves (another), and it fires; the deactivation fails once (HTTP 500), then
    succeeds. Returns the room's stored history (room_story)."""
    rules = RulesHolder(parse(RULES))
    worker = make_worker(store, clock, fake_api.base_url, rules=rules)
    script = [(0, "participant-joined", "ann"), (20, "participant-joined", "bob"), (60, "participant-left", "ann"),
              (90, "participant-left", "bob"), (150, "participant-joined", "cy"), (200, "participant-left", "cy")]
    for offset, kind, who in script:
        clock.now = T0 + offset
        deliver(store, rules, clock, kind, meetingId=ROOM, sessionId=SESSION, participantId=who)
    fake_api.script("/v2/rooms/deactivate", Reply(500, {"message": "upstream down"}))
    clock.now = T0 + 500
    assert worker.fire_one_timer() is True
    assert worker.run_once() is True  # attempt 1: HTTP 500, a retry
    clock.now = T0 + 600
    assert worker.run_once() is True  # attempt 2: done
    assert fake_api.deactivations() == [ROOM]
    return store.history.room_story(ROOM)


NOT_EXPLAIN = re.compile(r"\d+ (marks )?here:|… and \d+ more|\((participant still in the room|session still live)\)")


def explain_lines(title: str) -> set[str]:
    """A mark's title without what the picture adds: a merged mark's count, a span still open."""
    return {line for line in title.split("\n") if not NOT_EXPLAIN.fullmatch(line)}


def parse_svg(markup: str) -> ET.Element:
    return ET.fromstring(str(markup))


def marks_of(svg: ET.Element) -> list[tuple[str, str, str]]:
    """(class, title, href) of every linked mark: circles and the spans' rects. Every mark is
    linked: one whose entry was not found would be drawn in a bare <g>, and fail here."""
    assert svg.findall(f".//{SVG}g") == [], "a mark without a link to its story entry"
    out = []
    for link in svg.iter(f"{SVG}a"):
        shape = next(child for child in link if child.tag != f"{SVG}title")
        out.append((shape.get("class"), link.find(f"{SVG}title").text, link.get("href")))
    return out


@pytest.fixture
def scripted(store, clock, fake_api):
    rows = scripted_room(store, clock, fake_api)
    now = T0 + 700
    story = explain.build(ROOM, rows, now)
    svg = parse_svg(timeline.draw(story, rows, presence.fold(ROOM, rows["deliveries"]), now, lambda a: f"#{a}"))
    return rows, story, svg


def test_every_mark_is_a_line_explain_prints_and_links_to_its_entry(scripted):
    rows, story, svg = scripted
    printed = {line.strip() for line in story.text()}
    anchors = {entry.anchor for entry in story.entries}
    marks = marks_of(svg)
    assert len(marks) > 15
    for css, title, href in marks:
        assert explain_lines(title) <= printed, title
        assert href[0] == "#" and href[1:] in anchors, href


def test_the_marks_match_the_stored_history(scripted):
    rows, story, svg = scripted
    marks = marks_of(svg)

    def titled(css: str) -> list[str]:
        return [title for classes, title, _ in marks if css in classes.split()]

    # A lane per participant, a bar per stay, from the join's line to the leave's.
    people = [t.text for t in svg.iter(f"{SVG}text") if "tl-person" in (t.get("class") or "")]
    assert people == ["ann", "bob", "cy"]
    stays = titled("tl-stay")
    joins = [d for d in rows["deliveries"] if d["event_type"] == "participant-joined"]
    assert len(stays) == len(joins) == 3
    for stay, join in zip(stays, joins):
        assert f"delivery {join['id']} participant-joined participant={join['participant_id']}" in stay
        assert "participant-left" in stay.split("\n")[1]
    # Two timers: one cancelled by cy's join, one fired; each span ends in a mark saying so.
    cancelled, fired = rows["timers"]
    assert (cancelled["status"], fired["status"]) == ("cancelled", "fired")
    assert [c for c, _, _ in marks if c.startswith("tl-timer")] == ["tl-timer tl-timer-cancelled",
                                                                    "tl-timer tl-timer-fired"]
    ends = {c: t for c, t, _ in marks if c.startswith("mark mark-timer-")}
    assert ends["mark mark-timer-cancelled"].endswith(
        f"cancelled timer #{cancelled['id']} (close-when-empty): {cancelled['reason']}")
    assert f"timer #{fired['id']} (close-when-empty) fired: held for 5m" in ends["mark mark-timer-fired"]
    # A mark per delivery, per decision, per attempt: a retry, then done.
    assert len(titled("mark-delivery")) == len(rows["deliveries"]) == 6
    decision_marks = [c for c, _, _ in marks if c.startswith("mark mark-") and c.split("-", 1)[1] in
                      ("act", "started", "quiet")]
    assert len(decision_marks) == len(rows["decisions"])
    assert decision_marks.count("mark mark-act") == 1 and decision_marks.count("mark mark-started") == 2
    attempts = [(c, t) for c, t, _ in marks if c in ("mark mark-retry", "mark mark-done", "mark mark-failed")]
    assert [c for c, _ in attempts] == ["mark mark-retry", "mark mark-done"]
    assert "attempt 1: HTTP 500, retry" in attempts[0][1] and "attempt 2: HTTP 200, done" in attempts[1][1]
    # The session as a band, still live; the head count's peak; and now, as a line.
    [band] = [t for c, t, _ in marks if c.startswith("tl-session")]
    assert band.endswith("(session still live)")
    assert "at most 2 at once" in svg.find(f"{SVG}desc").text
    assert svg.find(f".//{SVG}line[@class='tl-now']") is not None


def test_now_far_past_the_story_is_a_note_not_a_squeezed_axis(scripted, store):
    rows, story, _ = scripted
    later = T0 + 30 * 86400
    svg = parse_svg(timeline.draw(story, rows, presence.fold(ROOM, rows["deliveries"]), later, lambda a: f"#{a}"))
    assert svg.find(f".//{SVG}line[@class='tl-now']") is None
    [note] = [t for t in svg.iter(f"{SVG}text") if t.get("class") == "tl-now-label"]
    assert "".join(note.itertext()).startswith("now is 29d")


# == scale: lanes collapse, marks merge ===========================================================


def big_room(store, rules, *, people: int, deliveries: int) -> None:
    """`people` join, then deliveries alternate leaves and rejoins, one a second."""
    items, at = [], T0
    for i in range(deliveries):
        who = f"p{i % people:04d}"
        kind = "participant-joined" if i < people or (i // people) % 2 == 0 else "participant-left"
        body = json.dumps({"webhookType": kind, "data": {"meetingId": ROOM, "sessionId": SESSION,
                                                         "participantId": who}})
        items.append(InboxItem(id=f"{int(at * 1000):013d}{i:019d}"[:32], received_at=at, room_id=ROOM, body=body,
                               signature=None, verified=True))
        at += 1
    for item in items:
        store.inbox.append(item)
    Decider(store.inbox, lambda: rules, acts=True, verifier=None).drain()


def test_a_room_with_300_participants_collapses_its_lanes_and_bounds_its_marks(store):
    rules = parse(RULES)
    big_room(store, rules, people=300, deliveries=6000)
    rows = store.history.room_story(ROOM)
    assert len(rows["deliveries"]) == 6000
    now = T0 + 6000
    story = explain.build(ROOM, rows, now)
    markup = str(timeline.draw(story, rows, presence.fold(ROOM, rows["deliveries"]), now, lambda a: f"#{a}"))
    svg = parse_svg(markup)
    assert not [t for t in svg.iter(f"{SVG}text") if "tl-person" in (t.get("class") or "")]
    assert "lanes collapsed into the count above: more than 24 participants" in markup
    assert "at most 300 at once" in svg.find(f"{SVG}desc").text
    merged = [(c, t) for c, t, _ in marks_of(svg) if "mark-many" in c]
    assert merged and all(re.match(r"\d+ marks here:\n", t) for _, t in merged)
    rows_of_marks = 3  # deliveries, decisions, attempts (no sweeps here)
    assert len(svg.findall(f".//{SVG}circle")) <= rows_of_marks * (timeline.PLOT / timeline.BIN + 1)
    shown = sum(int(t.split(" ", 1)[0]) if "mark-many" in c else 1 for c, t, _ in marks_of(svg)
                if c.startswith("mark mark-delivery"))
    assert shown == 6000  # merged, none lost: each merged mark counts the deliveries under it


# == the pages ======================================================================================


@pytest.fixture
def dash(make_app, rules_file):
    rules_file.write_text(RULES)
    return make_app(ADMIN_TOKEN=TOKEN)


def test_the_room_page_draws_the_timeline_above_the_story_and_links_its_entries(dash):
    client, _ = sign_in(dash)
    runtime = dash.extensions["roomwarden"]
    rules = runtime.rules.current
    at = time.time() - 600
    for offset, body in ((0, joined(ROOM, "ann")), (30, joined(ROOM, "bob")), (60, left(ROOM, "ann")),
                         (90, left(ROOM, "bob"))):
        deliver_raw(runtime.store, rules, body, at=at + offset)
    page = client.get(f"/dashboard/rooms/{ROOM}").get_data(as_text=True)
    assert page.index('<svg class="timeline"') < page.index('<ol class="story">')
    ids = set(re.findall(r'<li class="entry [^"]*" id="([^"]+)"', page))
    hrefs = re.findall(r'<a href="#(entry-[^"]+)"', page)
    assert hrefs and set(hrefs) <= ids
    assert "Content-Security-Policy" in client.get(f"/dashboard/rooms/{ROOM}").headers


def test_marks_of_entries_the_page_hides_link_to_the_whole_story(dash, monkeypatch):
    from service.dashboard import pages

    monkeypatch.setattr(pages, "STORY_ENTRIES", 2)
    client, _ = sign_in(dash)
    runtime = dash.extensions["roomwarden"]
    at = time.time() - 600
    for i, body in enumerate((joined(ROOM, "ann"), joined(ROOM, "bob"), left(ROOM, "ann"), left(ROOM, "bob"))):
        deliver_raw(runtime.store, runtime.rules.current, body, at=at + i)
    page = client.get(f"/dashboard/rooms/{ROOM}").get_data(as_text=True)
    shown = set(re.findall(r'<li class="entry [^"]*" id="([^"]+)"', page))
    assert len(shown) == 2
    whole = re.findall(rf'<a href="/dashboard/rooms/{ROOM}\?all=1#(entry-[^"]+)"', page)
    assert whole and not set(whole) & shown
    everything = client.get(f"/dashboard/rooms/{ROOM}?all=1").get_data(as_text=True)
    assert set(whole) <= set(re.findall(r'<li class="entry [^"]*" id="([^"]+)"', everything))


# == the rooms list's sparklines ===================================================================


def test_occupancy_buckets_start_from_the_count_before_and_take_each_buckets_peak(make_store):
    store = make_store()
    rules = parse(RULES)
    since, step = T0 + 3600, 300.0

    def send(at: float, body: bytes) -> None:
        deliver_raw(store, rules, body, at=at)

    send(T0, joined("room-a", "ann"))  # before the window: the count it starts with is 1
    send(since + 10, joined("room-a", "bob"))  # bucket 0: 2
    send(since + 20, left("room-a", "bob"))  # ... and back to 1
    send(since + 2 * step + 5, left("room-a", "ann"))  # bucket 2: came in with 1, leaves 0
    send(since + 3.75 * step, joined("room-a", "dan"))  # bucket 3 (rounding would say 4)
    send(since + 3.8 * step, left("room-a", "dan"))
    send(since + 4 * step, joined("room-b", "cy"))  # room-b: nothing known before bucket 4
    send(since + 6 * step, joined("room-b", "eve"))  # past the last bucket: not counted
    store.inbox.append(InboxItem(id=sweep_id(since + 5 * step, 1, "room-a"), received_at=since + 5 * step,
                                 room_id="room-a", body=sweep_body("room-a", 1), signature=None, verified=True))
    Decider(store.inbox, lambda: rules, acts=True, verifier=None).drain()  # a sweep: no news, the count stays
    series = store.pages.occupancy(["room-a", "room-b", "room-none"], since, step, 6)
    assert series == {"room-a": [2, 1, 1, 1, 0, 0], "room-b": [None, None, None, None, 1, 1],
                      "room-none": [None] * 6}
    later = store.pages.occupancy(["room-a", "room-b", "room-old"], since + 7 * step, step, 2,
                                  now={"room-a": 0, "room-b": 2, "room-old": 3})
    # No delivery in the window: the count its state holds now held all along (for a room decided
    # before schema step 6, nothing counted says otherwise).
    assert later == {"room-a": [0, 0], "room-b": [2, 2], "room-old": [3, 3]}
    # With deliveries in the window, the count now is not what the window started with: the look
    # back is, and the buckets follow the deliveries.
    again = store.pages.occupancy(["room-a"], since, step, 6, now={"room-a": 7})
    assert again == {"room-a": [2, 1, 1, 1, 0, 0]}
    # And when nothing came in the window, the count now wins over the look back (they agree but
    # for a delivery decided before step 6, which the count now has seen and the look back has not).
    assert store.pages.occupancy(["room-a"], since + 7 * step, step, 2, now={"room-a": 4}) == {"room-a": [4, 4]}


def test_the_rooms_list_draws_a_sparkline_per_room(dash):
    client, _ = sign_in(dash)
    runtime = dash.extensions["roomwarden"]
    now = time.time()
    deliver_raw(runtime.store, runtime.rules.current, joined("room-a", "ann"), at=now - 3 * 3600)
    deliver_raw(runtime.store, runtime.rules.current, joined("room-a", "bob"), at=now - 3600)
    deliver_raw(runtime.store, runtime.rules.current, ended("room-b"), at=now - 60)
    page = client.get("/dashboard/rooms").get_data(as_text=True)
    titles = dict(re.findall(r'<a class="room-link" href="[^"]+">([^<]+)</a>.*?<svg class="spark"[^>]*>'
                             r"<title>([^<]+)</title>", page, re.S))
    assert titles == {"room-b": "In the room: at most 0 in the last 6 h, 0 now",
                      "room-a": "In the room: at most 2 in the last 6 h, 2 now"}


# == in a real browser =============================================================================


@pytest.mark.e2e
def test_the_room_timeline_in_a_browser(browser, processes, rules_file, fake_api, sign):
    """The scripted room through gunicorn and the worker: the picture is there without a script,
    each mark's hover text is a line the CLI prints, following one lands on its entry; the
    rooms list's sparkline is there. Screenshots go to test-artifacts/timeline/."""
    rules_file.write_text(RULES.replace("for: 5m", "for: 2s"))
    shots = ARTIFACTS / "timeline"
    shutil.rmtree(shots, ignore_errors=True)
    shots.mkdir(parents=True)
    web = processes.start("web", ADMIN_TOKEN=TOKEN)
    base = f"http://127.0.0.1:{processes.env['PORT']}"
    wait_until_up(base, web)
    processes.start("worker", ADMIN_TOKEN=TOKEN)
    admin = {"Authorization": f"Bearer {TOKEN}"}

    def deliver_http(body: bytes) -> None:
        answer = requests.post(base + "/webhooks/videosdk", data=body, timeout=10,
                               headers={"videosdk-signature": sign(body)})
        assert answer.status_code == 202, answer.text

    def undecided() -> int:
        return requests.get(base + "/readyz", headers=admin, timeout=10).json()["inbox"]["depth"]

    fake_api.script("/v2/rooms/deactivate", Reply(500, {"message": "upstream down"}))
    for body in (joined(ROOM, "ann"), joined(ROOM, "bob"), left(ROOM, "ann"), left(ROOM, "bob")):
        deliver_http(body)
        time.sleep(0.3)  # apart, so that the screenshot shows each stay
    assert fake_api.wait_for(lambda: undecided() == 0)
    deliver_http(joined(ROOM, "cy"))  # within the 2 s: the timer is cancelled
    assert fake_api.wait_for(lambda: undecided() == 0)
    time.sleep(0.5)
    deliver_http(left(ROOM, "cy"))  # the room is empty again: a timer that fires
    assert fake_api.wait_for(lambda: fake_api.deactivations() == [ROOM], timeout=60), fake_api.calls
    statuses = requests.get(base + f"/api/actions?room={ROOM}", headers=admin, timeout=10).json()["actions"]
    assert fake_api.wait_for(lambda: [a["status"] for a in requests.get(
        base + "/api/actions?status=done", headers=admin, timeout=10).json()["actions"]] == ["done"]), statuses

    context = browser.new_context(viewport={"width": 1280, "height": 900}, java_script_enabled=False)
    page = context.new_page()
    problems = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.goto(base + "/dashboard/login")
    page.fill("#token", TOKEN)
    page.click("form button[type=submit]")
    page.wait_for_url(base + "/dashboard/")
    page.goto(base + f"/dashboard/rooms/{ROOM}")
    assert page.locator("svg.timeline").is_visible()
    printed = subprocess.run([sys.executable, "-m", "service", "explain", ROOM], cwd=ROOT,
                             env={**processes.env, "ADMIN_TOKEN": TOKEN}, capture_output=True, text=True,
                             timeout=60).stdout.splitlines()
    lines = {line.strip() for line in printed}
    titles = page.eval_on_selector_all("svg.timeline a > title", "ts => ts.map(t => t.textContent)")
    classes = page.eval_on_selector_all("svg.timeline a > :not(title)", "es => es.map(e => e.getAttribute('class'))")
    assert titles and [t for t in titles if not explain_lines(t) <= lines] == [], printed
    people = page.eval_on_selector_all("svg.timeline text.tl-person", "ts => ts.map(t => t.textContent)")
    assert people == ["ann", "bob", "cy"]
    assert sum(1 for c in classes if c.startswith("tl-stay")) == 3
    assert [c for c in classes if c.startswith("tl-timer")] == ["tl-timer tl-timer-cancelled", "tl-timer tl-timer-fired"]
    assert [c for c in classes if c in ("mark mark-retry", "mark mark-done")] == ["mark mark-retry", "mark mark-done"]
    box = page.locator("section.timeline-card").bounding_box()  # the picture and its legend
    page.screenshot(path=str(shots / "room-timeline.png"),
                    clip={"x": 0, "y": 0, "width": 1280, "height": box["y"] + box["height"] + 12})
    # Following the retry's mark lands on its entry in the story below.
    page.locator("svg.timeline a:has(circle.mark-retry)").click()
    target = page.evaluate("location.hash")
    assert target.startswith("#entry-attempt-")
    assert "attempt 1: HTTP 500, retry" in page.locator(target).inner_text()
    assert page.locator("ol.story").is_visible()  # the explain text stays below the picture
    page.goto(base + "/dashboard/rooms")
    spark = page.locator("tr", has=page.locator("a.room-link", has_text=ROOM)).locator("svg.spark title")
    assert spark.text_content() == "In the room: at most 2 in the last 6 h, 0 now"
    page.screenshot(path=str(shots / "rooms.png"), full_page=True)
    assert not problems, problems
    context.close()


def test_a_room_whose_deliveries_were_pruned_draws_an_empty_picture():
    rows = {"deliveries": [], "decisions": [], "timers": [], "actions": [], "attempts": [],
            "room": [{"room_id": ROOM, "state": {"participants": []}}]}
    story = explain.build(ROOM, rows, T0)
    svg = parse_svg(timeline.draw(story, rows, presence.fold(ROOM, []), T0, lambda a: f"#{a}"))
    assert marks_of(svg) == [] and svg.find(f".//{SVG}line[@class='tl-now']") is not None
    assert "0 participant(s), at most 0 at once" in svg.find(f"{SVG}desc").text


def test_a_lane_of_hundreds_of_stays_draws_a_bounded_number_of_bars(store):
    big_room(store, parse(RULES), people=4, deliveries=6000)  # 4 lanes of 750 stays, one every 8 s
    rows = store.history.room_story(ROOM)
    now = T0 + 6000
    story = explain.build(ROOM, rows, now)
    svg = parse_svg(timeline.draw(story, rows, presence.fold(ROOM, rows["deliveries"]), now, lambda a: f"#{a}"))
    people = [t.text for t in svg.iter(f"{SVG}text") if "tl-person" in (t.get("class") or "")]
    assert people == [f"p{i:04d}" for i in range(4)]
    stays = [(c, t) for c, t, _ in marks_of(svg) if c.startswith("tl-stay")]
    assert len(stays) <= 4 * (timeline.PLOT / timeline.BIN + 1) < 3000
    assert sum(int(t.split(" ", 1)[0]) if "tl-merged" in c else 1 for c, t in stays) == 3000  # none lost
    assert any(re.match(r"\d+ here:\n", t) for c, t in stays if "tl-merged" in c)
    # Merging keeps the gaps: no bar wider than two columns, so a lane is many bars, not one.
    widths = [float(rect.get("width")) for rect in svg.iter(f"{SVG}rect") if "tl-stay" in rect.get("class")]
    assert max(widths) <= 2 * timeline.BIN and len(widths) >= 4 * 100


def test_a_sparkline_starts_where_a_count_is_first_known_and_peaks_at_the_top():
    from service.dashboard import charts

    svg = parse_svg(charts.sparkline([None, None, 1, 2, 0, 0], hours=0.5, title="In the room", now=0))
    assert svg.find(f"{SVG}title").text == "In the room: at most 2 in the last 0.5 h, 0 now"
    path = svg.find(f".//{SVG}path[@class='spark-area']").get("d")
    step, base, top = charts.SPARK_W / 6, charts.SPARK_H - 1, charts.SPARK_H - 1 - (charts.SPARK_H - 3)
    assert path == (f"M{2 * step:g} {base}H{2 * step:g}V{base - (charts.SPARK_H - 3) / 2:g}H{3 * step:g}V{top:g}"
                    f"H{4 * step:g}V{base}H{charts.SPARK_W}V{base}Z")
    unknown = parse_svg(charts.sparkline([None] * 6, hours=0.5, title="In the room"))
    assert unknown.find(f"{SVG}title").text == "In the room: no head counts recorded in the last 0.5 h"
    assert unknown.find(f".//{SVG}path") is None and unknown.find(f".//{SVG}line[@class='spark-none']") is not None


def test_back_to_back_sessions_are_two_bands_and_hostile_ids_are_text():
    hostile = '<script>alert("x")</script>&'
    rows = {"deliveries": [row(1, 0, "participant-joined", hostile, "s1", verified=True, rules_hash="ab" * 32),
                           row(2, 1800, "participant-joined", "bob", "s2", verified=True, rules_hash="ab" * 32)],
            "decisions": [], "timers": [], "actions": [], "attempts": [], "room": []}
    story = explain.build(ROOM, rows, T0 + 3600)
    markup = str(timeline.draw(story, rows, presence.fold(ROOM, rows["deliveries"]), T0 + 3600, lambda a: f"#{a}"))
    assert "<script>" not in markup
    svg = parse_svg(markup)
    bands = [t for c, t, _ in marks_of(svg) if c.startswith("tl-session")]
    assert len(bands) == 2 and bands[0].startswith(explain.when(T0)) and bands[1].endswith("(session still live)")
    [label] = [t.text for t in svg.iter(f"{SVG}text") if "tl-person" in (t.get("class") or "")][:1]
    assert label == hostile[:19] + "…"


def test_a_merged_mark_shows_and_links_its_weightiest_line_first():
    rows = {"deliveries": [], "decisions": [], "timers": [], "actions": [], "attempts": [], "room": []}
    for i in range(3):  # three deliveries within a pixel; the last is unverified
        rows["deliveries"].append(row(i, i * 0.01, "participant-joined", f"p{i}", verified=i != 2,
                                      rules_hash="ab" * 32))
    story = explain.build(ROOM, rows, T0 + 3600)
    svg = parse_svg(timeline.draw(story, rows, presence.fold(ROOM, rows["deliveries"]), T0 + 3600,
                                  lambda a: f"#{a}"))
    [(css, title, href)] = [m for m in marks_of(svg) if m[0].startswith("mark mark-")]
    assert css == "mark mark-unverified mark-many"
    assert title.split("\n")[1].endswith("UNVERIFIED, rules abababababab]") and href == f"#{story.entries[2].anchor}"


def test_now_before_the_story_is_said_not_drawn_at_the_edge(scripted):
    rows, story, _ = scripted
    svg = parse_svg(timeline.draw(story, rows, presence.fold(ROOM, rows["deliveries"]), T0 - 3600,
                                  lambda a: f"#{a}"))
    assert svg.find(f".//{SVG}line[@class='tl-now']") is None
    [note] = [t for t in svg.iter(f"{SVG}text") if t.get("class") == "tl-now-label"]
    assert "".join(note.itertext()).startswith("← now is 59m48s before the picture begins")  # 2% margin


def test_the_fold_starts_at_the_horizon_and_flags_counts_the_decider_did_not_write():
    rows = [row(1, 0, "participant-joined", "ann", participants=1),
            row(2, 100, "participant-joined", "bob", participants=2),
            row(3, 200, "participant-left", "bob", participants=1)]
    cut = presence.fold(ROOM, rows, since=T0 + 50)  # ann's join is before the horizon
    assert (cut.left_out, [s.who for s in cut.stays]) == (1, ["bob"])
    # After the cut the fold counts bob alone, the decider 2, then 1: the count drawn is its, and
    # ann (unknown to the fold since before the horizon) is no disagreement.
    assert [(at - T0, n) for at, n in cut.counts] == [(100, 2), (200, 1)]
    assert cut.disagree == 0
    [note] = timeline.notes(cut)
    assert note.startswith(f"The lanes start at {explain.when(T0 + 50)}, the retention horizon") and \
        "(1 deliveries, listed in the story below)" in note
    whole = presence.fold(ROOM, rows)
    assert (whole.left_out, whole.disagree, timeline.notes(whole)) == (0, 0, [])
    # Once the counts have agreed, a difference is a disagreement (here: a count written wrong).
    wrong = presence.fold(ROOM, rows[:2] + [row(3, 200, "participant-left", "bob", participants=2)])
    assert (wrong.disagree, wrong.first_disagreement, wrong.counts[-1][1]) == (1, "d0003", 2)
    assert timeline.notes(wrong)[0].startswith("The lanes disagree with the head count the decider wrote after 1")


def test_the_room_page_folds_from_the_retention_horizon_and_says_so(dash):
    client, _ = sign_in(dash)
    runtime = dash.extensions["roomwarden"]
    assert runtime.settings.retention_days == 30
    now = time.time()
    deliver_raw(runtime.store, runtime.rules.current, joined(ROOM, "ann", "s-old"), at=now - 40 * 86400)
    deliver_raw(runtime.store, runtime.rules.current, joined(ROOM, "bob", "s-new"), at=now - 60)
    page = client.get(f"/dashboard/rooms/{ROOM}").get_data(as_text=True)
    assert re.findall(r'<text class="tl-label tl-person"[^>]*>([^<]+)</text>', page) == ["bob"]
    [note] = re.findall(r'<p class="timeline-note">([^<]+)</p>', page)
    assert note.startswith("The lanes start at ") and "RETENTION_DAYS" in note and "(1 deliveries" in note


def test_thin_touching_stays_are_one_bar_and_wide_ones_each_their_own():
    rows = {"deliveries": [], "decisions": [], "timers": [], "actions": [], "attempts": [], "room": []}
    at = 0.0
    for i, (kind, who) in enumerate([("participant-joined", "ann"), ("participant-left", "ann")] * 3):
        rows["deliveries"].append(row(i, at, kind, who, verified=True, rules_hash="ab" * 32))
        at += 0.2  # three stays of 0.2 s, 0.2 s apart: well under a pixel on a 10-minute axis
    rows["deliveries"] += [row(10, 300, "participant-joined", "ann", verified=True, rules_hash="ab" * 32),
                           row(11, 400, "participant-left", "ann", verified=True, rules_hash="ab" * 32),
                           row(12, 400, "participant-joined", "ann", verified=True, rules_hash="ab" * 32)]
    now = T0 + 600
    story = explain.build(ROOM, rows, now)
    svg = parse_svg(timeline.draw(story, rows, presence.fold(ROOM, rows["deliveries"]), now, lambda a: f"#{a}"))
    stays = [(c, t) for c, t, _ in marks_of(svg) if c.startswith("tl-stay")]
    assert [c for c, _ in stays] == ["tl-stay tl-merged", "tl-stay", "tl-stay tl-open"]
    assert stays[0][1].startswith("3 here:\n")
