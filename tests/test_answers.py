"""How VideoSDK's 2xx answers are read (service/answers.py), on the documented examples first.

The examples are `tests/videosdk_examples/` (sources in SOURCES.md there). Where the docs are
silent, each possible reading has a row, and the comment says which one it is.
"""

from __future__ import annotations

import copy

import pytest

from service import answers
from service.answers import Misread, Reading

from .fakeapi import example

CURRENT = example("active-participants.current")  # one session, one participant (Ann)
OLDER = example("active-participants.older")


def with_participants(body: dict, participants: list) -> dict:
    body = copy.deepcopy(body)
    session = body["data"][0] if isinstance(body["data"], list) else body["data"]
    session["participants"] = participants
    return body


ANN = CURRENT["data"][0]["participants"][0]

COUNTS = [
    # the documented current shape: a page of sessions; one participant, not "one session"
    (CURRENT, 1),
    # the documented older shape: one session under data
    (OLDER, 1),
    # three in the session: three, in either shape (pageInfo.total stays 1: it counts sessions)
    (with_participants(CURRENT, [ANN] * 3), 3),
    (with_participants(OLDER, [ANN] * 3), 3),
    # a session listing nobody, in either shape (the docs' other reading of "nobody": a 200)
    (with_participants(CURRENT, []), 0),
    (with_participants(OLDER, []), 0),
    # a page with no session at all: nobody (the server SDK reads data[0] as absent: no one)
    ({**CURRENT, "data": []}, 0),
    # two sessions on a page (undocumented): anyone in either counts
    ({**CURRENT, "data": [with_participants(CURRENT, [])["data"][0], CURRENT["data"][0]]}, 1),
]


@pytest.mark.parametrize("body,count", COUNTS)
def test_active_participants_are_counted_in_both_documented_shapes(body, count):
    assert answers.active_participants(body) == count


MISREADS = [
    # the shape tests/fakeapi.py used to answer (a bare participant list): not documented, and
    # reading it as sessions finds none with a participants list
    ({"data": [{"participantId": "p1"}], "pageInfo": {"total": 1}}, "a session with keys [participantId]"),
    ({"participants": [ANN]}, "keys [participants]"),
    ([ANN], "a JSON list"),
    (None, "an empty body"),
    ("text", "a JSON str"),
    ({"data": "x"}, "keys [data]"),
    ({"data": [1, 2]}, "keys [data]"),
    # a session whose participants are missing or null: the server SDK reads nobody, but a
    # deactivation cannot be undone, so only a documented "nobody" counts as one
    ({"data": {"id": "s"}}, "a session with keys [id]"),
    ({"data": [{"id": "s", "participants": None}]}, "a session with keys [id, participants]"),
]


@pytest.mark.parametrize("body,keys", MISREADS)
def test_anything_else_is_a_misread_that_names_its_keys_but_no_value(body, keys):
    result = answers.active_participants(body)
    assert result == Misread("active participants", keys)
    assert result.message == f"could not read the active participants: the answer held {keys}"
    assert "Ann" not in result.message


def test_live_sessions_read_the_documented_page_with_either_id_key():
    # the page example names its session `_id`; the server SDK reads `id`: both are read
    assert answers.live_sessions(CURRENT) == ["6a1b2c3d4e5f607182930001"]
    page = copy.deepcopy(CURRENT)
    page["data"][0]["id"] = page["data"][0].pop("_id")
    assert answers.live_sessions(page) == ["6a1b2c3d4e5f607182930001"]
    assert answers.live_sessions({**CURRENT, "data": []}) == []  # documented: no live session
    assert isinstance(answers.live_sessions(OLDER), Misread)  # not a page
    assert isinstance(answers.live_sessions({"data": [{"participants": []}]}), Misread)  # no id


DEACTIVATE = example("deactivate-response")  # "disabled": true, "meetingId": "aaaa-aaaa-aaaa"

DEACTIVATED = [
    # the documented example: done, no doubt; its meetingId is the room's id
    (DEACTIVATE, Reading({"disabled": True, "roomId": "aaaa-aaaa-aaaa"})),
    # roomId, as other endpoints spell it, is read too
    ({"roomId": "aaaa-aaaa-aaaa", "disabled": True}, Reading({"disabled": True, "roomId": "aaaa-aaaa-aaaa"})),
    # a 2xx saying disabled: false
    ({**DEACTIVATE, "disabled": False}, Reading({"disabled": False, "roomId": "aaaa-aaaa-aaaa"},
                                                "the answer says disabled: false: the room may still be open")),
    # a 2xx that does not say (what an already-disabled room answers is undocumented)
    ({"meetingId": "aaaa-aaaa-aaaa"}, Reading({"disabled": None, "roomId": "aaaa-aaaa-aaaa"},
                                              "the answer does not say whether the room is disabled")),
    ({"disabled": "yes"}, Reading({"disabled": None}, "the answer does not say whether the room is disabled")),
    # an answer about another room
    ({**DEACTIVATE, "meetingId": "zzzz-zzzz-zzzz"}, Reading(
        {"disabled": True, "roomId": "zzzz-zzzz-zzzz"}, "the answer is about room zzzz-zzzz-zzzz, not aaaa-aaaa-aaaa")),
    (None, Reading({"disabled": None}, "the answer is an empty body, not a room: it does not say the room is disabled")),
]


@pytest.mark.parametrize("body,reading", DEACTIVATED)
def test_deactivate_answers(body, reading):
    assert answers.deactivated(body, "aaaa-aaaa-aaaa") == reading


def test_end_session_answers():
    ended = example("end-session")  # "status": "completed", with an end time
    assert answers.session_ended(ended) == Reading({"status": "completed", "end": "2026-11-26T10:42:00.000Z"})
    # as the server SDK: no status, an end time: ended; no status, no end: still ongoing (doubtful)
    no_status = {k: v for k, v in ended.items() if k != "status"}
    assert answers.session_ended(no_status) == Reading({"status": "ended", "end": "2026-11-26T10:42:00.000Z"})
    assert answers.session_ended({**no_status, "end": None}) == Reading(
        {"status": "ongoing", "end": None}, "the answer says the session is still ongoing")
    assert answers.session_ended([]) == Reading({"status": None}, "the answer is a JSON list, not a session")
