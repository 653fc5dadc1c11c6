"""service.rooms.advance: per-room state folded from events, safe under the deliveries VideoSDK makes
(repeats, byte-identical bodies, late events from earlier sessions, out-of-order session events)."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from types import MappingProxyType

import pytest

from service.events import Event, parse_event
from service.rooms import RECENT_SESSIONS, RoomState, advance

ROOM = "abcd-efgh-ijkl"
START = "2022-07-05T15:55:35Z"
START_TS = datetime(2022, 7, 5, 15, 55, 35, tzinfo=timezone.utc).timestamp()
END = "2022-07-05T16:05:35Z"


def body(event_type: str, **data) -> bytes:
    return json.dumps({"webhookType": event_type, "data": {"meetingId": ROOM, **data}}).encode()


def ev(event_type: str, session: str = "s-1", **data) -> Event:
    return parse_event(body(event_type, sessionId=session, **data))


def J(participant: str, session: str = "s-1") -> Event:
    return ev("participant-joined", session, participantId=participant, participantName=participant.upper())


def L(participant: str, session: str = "s-1") -> Event:
    return ev("participant-left", session, participantId=participant, participantName=participant.upper())


def S(session: str = "s-1", start: str | None = START) -> Event:
    return ev("session-started", session, **({"start": start} if start is not None else {}))


def E(session: str = "s-1", start: str | None = START, end: str | None = END) -> Event:
    data = {k: v for k, v in (("start", start), ("end", end)) if v is not None}
    return ev("session-ended", session, **data)


def fold(steps, state: RoomState | None = None) -> RoomState | None:
    """Apply (event, now) steps in order."""
    for event, now in steps:
        state = advance(state, event, now)
    return state


def check(state: RoomState, expected: dict) -> None:
    got = {name: getattr(state, name) for name in expected}
    assert got == expected


# -- folding a sequence: (steps as (event, now), expected attributes of the final state) ----------

SEQUENCES = [
    # presence
    pytest.param([(J("p1"), 10)],
                 dict(room_id=ROOM, participants={"p1"}, session_id="s-1", session_active=True, sessions=1,
                      session_started_at=10.0, empty_since=None, recent_sessions=("s-1",)),
                 id="join-adds-and-starts-the-unseen-session"),
    pytest.param([(J("p1"), 10), (L("p1"), 20)],
                 dict(participants=frozenset(), session_active=True, sessions=1, empty_since=20),
                 id="leave-removes"),
    pytest.param([(J("p1"), 10), (J("p1"), 11)],
                 dict(participants={"p1"}, sessions=1, empty_since=None),
                 id="repeated-join-is-harmless"),
    pytest.param([(J("p1"), 10), (L("p1"), 20), (L("p1"), 30)],
                 dict(participants=frozenset(), sessions=1, empty_since=20),
                 id="repeated-leave-is-harmless-and-keeps-empty-since"),
    pytest.param([(L("p9"), 10)],
                 dict(participants=frozenset(), session_id="s-1", session_active=True, sessions=1, empty_since=10),
                 id="leave-of-someone-never-seen-starts-the-session-empty"),
    # two participants
    pytest.param([(J("p1"), 10), (J("p2"), 11)],
                 dict(participants={"p1", "p2"}, empty_since=None), id="two-join"),
    pytest.param([(J("p1"), 10), (J("p2"), 11), (L("p1"), 20)],
                 dict(participants={"p2"}, empty_since=None), id="one-of-two-leaves-room-not-empty"),
    pytest.param([(J("p1"), 10), (J("p2"), 11), (L("p1"), 20), (L("p2"), 30)],
                 dict(participants=frozenset(), empty_since=30), id="both-leave-empty-at-the-last-leave"),
    pytest.param([(J("p1"), 10), (J("p2"), 11), (L("p2"), 20), (L("p2"), 21)],
                 dict(participants={"p1"}, empty_since=None), id="repeated-leave-of-one-keeps-the-other"),
    # session-started / session-ended
    pytest.param([(S("s-1"), 10)],
                 dict(participants=frozenset(), session_id="s-1", session_active=True, sessions=1,
                      session_started_at=START_TS, empty_since=10),
                 id="session-started-uses-data-start"),
    pytest.param([(S("s-1", start=None), 10)],
                 dict(session_active=True, sessions=1, session_started_at=10.0), id="session-started-without-start"),
    pytest.param([(S("s-1", start="not a time"), 10)],
                 dict(session_active=True, session_started_at=10.0), id="session-started-unreadable-start"),
    pytest.param([(S("s-1"), 10), (J("p1"), 11), (E("s-1"), 50)],
                 dict(participants=frozenset(), session_id="s-1", session_active=False, sessions=1,
                      empty_since=50),
                 id="session-ended-clears-presence"),
    pytest.param([(S("s-1"), 10), (J("p1"), 11), (L("p1"), 40), (E("s-1"), 50)],
                 dict(participants=frozenset(), session_active=False, empty_since=40),
                 id="session-ended-keeps-empty-since-of-an-empty-room"),
    pytest.param([(E("s-1"), 50)],
                 dict(session_id="s-1", session_active=False, sessions=1, session_started_at=START_TS,
                      empty_since=50),
                 id="session-ended-first-starts-and-ends-it"),
    pytest.param([(S("s-1"), 10), (E("s-1"), 50), (E("s-1"), 60)],
                 dict(session_active=False, sessions=1, empty_since=10),  # nobody joined: empty since the start
                 id="repeated-session-ended"),
    pytest.param([(S("s-1"), 10), (S("s-1"), 20)],
                 dict(sessions=1, session_started_at=START_TS, empty_since=10), id="repeated-session-started"),
    # session start time from data.start, whichever event came first
    pytest.param([(J("p1"), 100), (S("s-1"), 200)],
                 dict(participants={"p1"}, sessions=1, session_started_at=START_TS, empty_since=None),
                 id="late-session-started-sets-start-and-keeps-presence"),
    pytest.param([(J("p1"), 100), (S("s-1", start=None), 200)],
                 dict(participants={"p1"}, session_started_at=100.0), id="session-started-without-start-keeps-it"),
    pytest.param([(J("p1"), 100), (E("s-1"), 200)],
                 dict(session_started_at=100.0, session_active=False), id="session-ended-does-not-move-start"),
    # a participant event for an unseen session starts it
    pytest.param([(J("p1", "s-1"), 10), (E("s-1"), 20), (J("p2", "s-2"), 30)],
                 dict(participants={"p2"}, session_id="s-2", session_active=True, sessions=2,
                      session_started_at=30.0, empty_since=None, recent_sessions=("s-1", "s-2")),
                 id="join-for-unseen-session-starts-it"),
    pytest.param([(J("p1", "s-1"), 10), (J("p2", "s-2"), 30)],
                 dict(participants={"p2"}, session_id="s-2", sessions=2),
                 id="new-session-drops-presence-of-the-old-one"),
    pytest.param([(J("p1", "s-1"), 10), (S("s-2"), 30)],
                 dict(participants=frozenset(), session_id="s-2", sessions=2, empty_since=30),
                 id="new-session-after-a-missed-session-ended-is-empty-from-now"),
    pytest.param([(J("p1", "s-1"), 10), (L("p1", "s-1"), 20), (E("s-1"), 25), (S("s-2"), 30)],
                 dict(participants=frozenset(), session_id="s-2", session_active=True, sessions=2, empty_since=20),
                 id="new-session-keeps-empty-since-of-an-empty-room"),
    pytest.param([(ev("recording-started", "s-2"), 30)],
                 dict(session_id="s-2", session_active=True, sessions=1, participants=frozenset()),
                 id="room-event-for-unseen-session-starts-it"),
    pytest.param([(J("p1"), 10), (ev("recording-started", "s-1"), 30)],
                 dict(participants={"p1"}, sessions=1, session_active=True, empty_since=None),
                 id="room-event-for-current-session-changes-nothing"),
    # a join after its session ended is late, and ignored
    pytest.param([(J("p1"), 10), (E("s-1"), 20), (J("p2"), 30)],
                 dict(participants=frozenset(), session_active=False, sessions=1, empty_since=20),
                 id="join-after-session-ended-is-ignored"),
    pytest.param([(E("s-1"), 20), (J("p1"), 30)],
                 dict(participants=frozenset(), session_active=False, sessions=1, empty_since=20),
                 id="join-delivered-after-its-session-ended-out-of-order"),
    pytest.param([(J("p1"), 10), (E("s-1"), 20), (L("p1"), 30)],
                 dict(participants=frozenset(), session_active=False, empty_since=20),
                 id="leave-after-session-ended-changes-nothing"),
]


@pytest.mark.parametrize("steps, expected", SEQUENCES)
def test_advance_sequences(steps, expected):
    state = fold(steps)
    assert isinstance(state, RoomState)
    check(state, expected)


def test_advance_returns_new_states_and_never_mutates():
    first = advance(None, J("p1"), 10)
    second = advance(first, L("p1"), 20)
    assert first.participants == {"p1"} and first.empty_since is None
    assert second.participants == frozenset() and second.empty_since == 20
    assert second is not first


# -- the byte-identical leave / rejoin / leave --------------------------------------------------

def test_leave_rejoin_leave_with_byte_identical_bodies_ends_absent():
    left_body = body("participant-left", sessionId="s-1", participantId="p1", participantName="P1")
    joined_body = body("participant-joined", sessionId="s-1", participantId="p1", participantName="P1")
    first_leave, second_leave = parse_event(left_body), parse_event(left_body)
    assert first_leave == second_leave  # nothing tells the two deliveries apart

    state = advance(None, parse_event(joined_body), 10)
    state = advance(state, first_leave, 20)
    assert (state.participants, state.empty_since) == (frozenset(), 20)
    state = advance(state, parse_event(joined_body), 30)
    assert (state.participants, state.empty_since) == ({"p1"}, None)
    state = advance(state, second_leave, 40)
    assert state.participants == frozenset()
    assert state.empty_since == 40  # empty since the second leave, not the first
    assert state.sessions == 1 and state.session_active is True


# -- empty_since, step by step: (event, now, expected empty_since after it) ---------------------

EMPTY_SINCE_STEPS = [
    (S("s-1"), 5, 5),          # a new session with nobody in it: empty from now
    (J("p1"), 10, None),        # a join clears it
    (J("p2"), 11, None),
    (L("p1"), 20, None),        # p2 is still there
    (L("p2"), 30, 30),          # the room becomes empty: set
    (L("p2"), 35, 30),          # a repeated leave keeps it
    (L("p1"), 36, 30),          # so does a leave of someone already gone
    (E("s-1"), 40, 30),         # the session ends: still empty since 30
    (J("p3"), 45, 30),          # a join for the ended session is ignored: still empty
    (S("s-2"), 50, 30),         # a new session with nobody: still empty since 30
    (J("p4", "s-2"), 60, None),  # a join clears it
    (E("s-2"), 70, 70),         # the session ends with p4 in it: empty from now
]


def test_empty_since_step_by_step():
    state = None
    for position, (event, now, expected) in enumerate(EMPTY_SINCE_STEPS):
        state = advance(state, event, now)
        assert state.empty_since == expected, f"step {position}: {event.type} at {now}"
        if expected is not None:
            assert state.participants == frozenset(), f"step {position}"


# -- late events from an earlier session change nothing -----------------------------------------

BEFORE_LATE = [(J("p1", "s-1"), 10), (L("p1", "s-1"), 20), (J("p2", "s-2"), 30), (J("p3", "s-2"), 31)]


@pytest.mark.parametrize("late", [
    pytest.param(J("p1", "s-1"), id="late-join"),
    pytest.param(L("p2", "s-1"), id="late-leave-of-someone-present-now"),
    pytest.param(S("s-1"), id="late-session-started"),
    pytest.param(E("s-1"), id="late-session-ended"),
    pytest.param(ev("recording-stopped", "s-1"), id="late-room-event"),
])
def test_late_event_from_earlier_session_changes_nothing(late):
    state = fold(BEFORE_LATE)
    assert state.session_id == "s-2" and state.recent_sessions == ("s-1", "s-2")
    assert advance(state, late, 100) == state
    assert state.participants == {"p2", "p3"} and state.sessions == 2


def test_recent_sessions_are_bounded():
    steps = [(J("p", f"s-{i}"), i) for i in range(RECENT_SESSIONS + 4)]
    state = fold(steps)
    assert state.sessions == RECENT_SESSIONS + 4
    assert len(state.recent_sessions) == RECENT_SESSIONS
    assert state.recent_sessions[-1] == state.session_id == f"s-{RECENT_SESSIONS + 3}"
    assert state.recent_sessions[0] == "s-4"


# -- events that are never folded -----------------------------------------------------------------

def _known_without_room() -> Event:
    return Event(type="participant-joined", data=MappingProxyType({}), known=True, room_id=None,
                 session_id="s-1", participant_id="p1")


@pytest.mark.parametrize("event", [
    pytest.param(parse_event(json.dumps({"webhookType": "agent-session-started",
                                         "data": {"meetingId": ROOM, "sessionId": "s-9"}}).encode()),
                 id="unknown-type-with-room"),
    pytest.param(parse_event(json.dumps({"webhookType": "call-started",
                                         "data": {"meetingId": "bad id/x", "participantId": "p"}}).encode()),
                 id="unknown-type-without-valid-room"),
    pytest.param(_known_without_room(), id="known-without-room"),
    pytest.param(Event(type="participant-joined", data=MappingProxyType({}), known=True, room_id="",
                       session_id="s-1", participant_id="p1"), id="known-empty-room"),
])
def test_unknown_events_and_events_without_a_room_change_nothing(event):
    state = fold([(J("p1"), 10)])
    assert advance(state, event, 50) == state
    assert advance(None, event, 50) is None


# -- to_dict / from_dict --------------------------------------------------------------------------

@pytest.mark.parametrize("steps", [
    pytest.param([], id="fresh"),
    pytest.param([(J("p2"), 10), (J("p1"), 11)], id="two-participants"),
    pytest.param([(S("s-1"), 10), (J("p1"), 11), (L("p1"), 20), (E("s-1"), 30), (J("p3", "s-2"), 40)],
                 id="two-sessions"),
    pytest.param([(E("s-1"), 30)], id="ended"),
])
def test_to_dict_from_dict_round_trip(steps):
    state = fold(steps, RoomState(room_id=ROOM))
    data = state.to_dict()
    assert "room_id" not in data
    assert data["participants"] == sorted(state.participants)
    again = RoomState.from_dict(ROOM, json.loads(json.dumps(data)))  # as stored: JSON
    assert again == state
    assert isinstance(again.participants, frozenset) and isinstance(again.recent_sessions, tuple)


def test_from_dict_of_nothing_is_a_fresh_state():
    assert RoomState.from_dict(ROOM, {}) == RoomState(room_id=ROOM)


# -- an unseen session while one is live ----------------------------------------------------------

OLD = "5f00000000000000000000aa"  # ObjectId-shaped: created 2020-07
NEW = "6a00000000000000000000bb"  # created 2026


@pytest.mark.parametrize("stray", [
    pytest.param(L("alice", "never-seen"), id="leave-of-an-unseen-session"),
    pytest.param(E("never-seen"), id="end-of-an-unseen-session"),
])
def test_a_leave_or_end_of_an_unseen_session_cannot_take_over_a_live_one(stray):
    live = fold([(J("alice", "cur"), 10), (J("bob", "cur"), 11)])
    after = advance(live, stray, 1000)
    assert (after.session_id, after.participants) == ("cur", frozenset({"alice", "bob"}))
    later = advance(after, J("carol", "cur"), 1001)  # the live session's events still count
    assert later.participants == frozenset({"alice", "bob", "carol"})


def test_a_session_older_than_the_current_one_is_ignored_even_when_it_joins():
    live = fold([(J("alice", NEW), 10)])
    after = advance(live, J("mallory", OLD), 1000)  # a replayed join from an old session
    assert (after.session_id, after.participants) == (NEW, frozenset({"alice"}))


def test_a_newer_session_replaces_the_current_one():
    live = fold([(J("alice", OLD), 10)])  # its end was never seen
    after = advance(live, J("bob", NEW), 1000)
    assert (after.session_id, after.participants, after.sessions) == (NEW, frozenset({"bob"}), 2)


def test_an_old_event_beyond_the_remembered_sessions_does_not_freeze_the_room():
    state = None
    for i in range(RECENT_SESSIONS + 1):  # more ended sessions than are remembered
        state = fold([(S(f"s{i}"), i), (E(f"s{i}"), i)], state)
    state = fold([(J("alice", "cur"), 500), (J("bob", "cur"), 501)], state)
    state = advance(state, L("alice", "s0"), 1000)  # very late: s0 is forgotten by now
    state = advance(state, J("carol", "cur"), 1001)
    assert (state.session_id, state.participants) == ("cur", frozenset({"alice", "bob", "carol"}))
