"""The fake VideoSDK API answers only what VideoSDK documents.

Two drifts are caught here: an example in tests/videosdk_examples/ that no longer matches its
source in the shared VideoSDK facts, and a default answer of the fake (over real HTTP) whose keys
differ from its documented example.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import requests

from service.videosdk import TokenSource

from .conftest import API_KEY, SECRET
from .fakeapi import EXAMPLES, example

SHARED = Path(__file__).resolve().parents[2] / "shared" / "videosdk"
SOURCES = {
    "active-participants.current.json": "answers/active-participants.current.json",
    "active-participants.older.json": "answers/active-participants.older.json",
    "end-session.json": "answers/end-session.json",
    "deactivate-response.json": "payloads/deactivate-response.json",
}


def test_every_example_is_listed_with_its_source():
    assert sorted(p.name for p in EXAMPLES.glob("*.json")) == sorted(SOURCES)
    notes = (EXAMPLES / "SOURCES.md").read_text()
    for name, source in SOURCES.items():
        assert f"`{name}`" in notes and f"shared/videosdk/{source}" in notes


@pytest.mark.skipif(not SHARED.is_dir(), reason=f"the shared VideoSDK facts are not at {SHARED}")
@pytest.mark.parametrize("name", sorted(SOURCES))
def test_examples_match_their_documented_source(name):
    assert json.loads((EXAMPLES / name).read_text()) == json.loads((SHARED / SOURCES[name]).read_text())


def shape(value):
    """The keys and kinds of a JSON value, not its values (null stands for any kind)."""
    if isinstance(value, dict):
        return {key: shape(item) for key, item in value.items()}
    if isinstance(value, list):
        return [shape(value[0])] if value else []
    return None if value is None else type(value).__name__


def same_shape(answer, documented) -> bool:
    if isinstance(documented, dict):
        return isinstance(answer, dict) and answer.keys() == documented.keys() and all(
            same_shape(answer[key], documented[key]) for key in documented)
    if isinstance(documented, list):
        return isinstance(answer, list) and all(same_shape(item, documented[0]) for item in answer) \
            if documented else isinstance(answer, list)
    return answer is None or documented is None or type(answer).__name__ == documented


@pytest.fixture
def api(fake_api):
    http = requests.Session()
    http.headers["Authorization"] = TokenSource(API_KEY, SECRET).token()
    yield fake_api, http
    http.close()


@pytest.mark.parametrize("shape_name", ["current", "older"])
def test_active_participants_answers_take_a_documented_shape(api, shape_name):
    fake, http = api
    fake.participants_shape = shape_name
    fake.set_active("sess-9", ["p-1", "p-2"], "room-9")
    body = http.get(f"{fake.base_url}/v2/sessions/sess-9/participants/active", timeout=10).json()
    assert same_shape(body, shape(example(f"active-participants.{shape_name}")))
    session = body["data"][0] if shape_name == "current" else body["data"]
    assert [p["participantId"] for p in session["participants"]] == ["p-1", "p-2"]


def test_nobody_is_a_documented_404_or_a_200_listing_no_one(api):
    fake, http = api
    fake.set_active("sess-9", [], "room-9")
    url = f"{fake.base_url}/v2/sessions/sess-9/participants/active"
    answer = http.get(url, timeout=10)
    assert (answer.status_code, answer.json()) == (404, {"message": "No active participants found"})
    assert http.get(f"{fake.base_url}/v2/sessions/never/participants/active", timeout=10).status_code == 404
    fake.nobody_answer = "empty"
    answer = http.get(url, timeout=10)
    assert answer.status_code == 200 and answer.json()["data"][0]["participants"] == []


def test_live_sessions_page_takes_the_documented_page_shape(api):
    fake, http = api
    fake.set_active("sess-9", ["p-1"], "room-9")
    url = f"{fake.base_url}/v2/sessions"
    body = http.get(url, params={"roomId": "room-9", "status": "ongoing"}, timeout=10).json()
    assert same_shape(body, shape(example("active-participants.current")))
    assert [s["_id"] for s in body["data"]] == ["sess-9"]
    empty = http.get(url, params={"roomId": "room-0", "status": "ongoing"}, timeout=10).json()
    assert empty["data"] == [] and empty.keys() == body.keys()


def test_end_session_and_deactivate_answer_their_documented_examples(api):
    fake, http = api
    ended = http.post(f"{fake.base_url}/v2/sessions/end", json={"roomId": "room-9", "sessionId": "sess-9"},
                      timeout=10)
    assert ended.status_code == 200 and same_shape(ended.json(), shape(example("end-session")))
    again = http.post(f"{fake.base_url}/v2/sessions/end", json={"roomId": "room-9", "sessionId": "sess-9"},
                      timeout=10)
    assert (again.status_code, again.json()) == (406, {"message": "Failed to end session"})

    for disabled in (True, False):
        fake.deactivate_says_disabled = disabled
        room = http.post(f"{fake.base_url}/v2/rooms/deactivate", json={"roomId": "room-9"}, timeout=10)
        assert room.status_code == 200 and same_shape(room.json(), shape(example("deactivate-response")))
        assert (room.json()["meetingId"], room.json()["disabled"]) == ("room-9", disabled)


def test_shape_comparison_catches_a_drift():
    """The check above can fail: a key renamed, added or dropped is caught."""
    documented = shape(example("end-session"))
    changed = example("end-session")
    changed["sessionId"] = changed.pop("id")
    assert not same_shape(changed, documented)
    assert not same_shape({**example("end-session"), "extra": 1}, documented)
    assert not same_shape({"data": [{"participantId": "p"}]}, shape(example("active-participants.current")))
