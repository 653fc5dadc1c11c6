"""read_envelope, parse_event, parse_timestamp and Event.session_duration: the edge where a webhook
body becomes an Event.

The web request only reads the envelope (`read_envelope`: UTF-8 JSON, `{"webhookType": str,
"data": {...}}`, and the room id when it is a valid id); the decider reads the rest later
(`parse_event`). Both refuse exactly the same bodies, so a body the request accepted is always
readable by the decider (a known type with unreadable `data` is an Event with a problem).
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from service.errors import PayloadInvalid
from service.events import Event, parse_event, parse_timestamp, read_envelope

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
UTC = timezone.utc
ROOM = "jvsg-8rjn-j304"
SESSION = "613731342f27f56e4fc4b6d0"


def body(event_type, data) -> bytes:
    return json.dumps({"webhookType": event_type, "data": data}).encode()


def flatten(messages, prefix="") -> dict[str, str]:
    """PayloadInvalid.fields as {"data.meetingId": "all messages joined"}."""
    out = {}
    for key, value in messages.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, path + "."))
        else:
            out[path] = " ".join(value if isinstance(value, list) else [str(value)])
    return out


# -- the example payloads --------------------------------------------------------------------

# file -> the Event fields it must produce (fields not listed must be None)
EXAMPLE_EVENTS = {
    # participant events carry participantId and (optional) participantName
    "participant-joined.json": dict(type="participant-joined", known=True, room_id=ROOM, session_id=SESSION,
                                    participant_id="fkd74h", participant_name="John"),
    "participant-left.json": dict(type="participant-left", known=True, room_id=ROOM, session_id=SESSION,
                                  participant_id="fkd74h", participant_name="John"),
    # participant-recording-* uses the participant schema; no participantName in the body
    "participant-recording-stopped.json": dict(type="participant-recording-stopped", known=True, room_id=ROOM,
                                               session_id=SESSION, participant_id="fkd74h"),
    # room events: only meetingId and sessionId are read; extra fields stay in data
    "recording-stopped.json": dict(type="recording-stopped", known=True, room_id=ROOM, session_id=SESSION),
    "hls-playable.json": dict(type="hls-playable", known=True, room_id=ROOM, session_id=SESSION),
    # session-started has a start only
    "session-started.json": dict(type="session-started", known=True, room_id=ROOM, session_id=SESSION,
                                 start=datetime(2022, 7, 5, 15, 55, 35, 47000, tzinfo=UTC)),
    # session-ended has start and end, ten minutes apart
    "session-ended.json": dict(type="session-ended", known=True, room_id=ROOM, session_id=SESSION,
                               start=datetime(2022, 7, 5, 15, 55, 35, 47000, tzinfo=UTC),
                               end=datetime(2022, 7, 5, 16, 5, 35, 47000, tzinfo=UTC)),
}
OPTIONAL = ("participant_id", "participant_name", "start", "end")


def test_every_example_payload_is_in_the_table():
    on_disk = {p.name for p in EXAMPLES.glob("*.json")} - {"deactivate-response.json"}
    assert on_disk == set(EXAMPLE_EVENTS)


@pytest.mark.parametrize("name, expected", list(EXAMPLE_EVENTS.items()), ids=list(EXAMPLE_EVENTS))
def test_example_payload_parses_to_the_right_event(name, expected):
    raw = (EXAMPLES / name).read_bytes()
    event = parse_event(raw)
    assert isinstance(event, Event)
    for key, value in expected.items():
        assert getattr(event, key) == value, key
    for key in OPTIONAL:
        if key not in expected:
            assert getattr(event, key) is None, key
    # the raw data object is kept as sent, read-only
    assert dict(event.data) == json.loads(raw)["data"]
    with pytest.raises(TypeError):
        event.data["meetingId"] = "other"  # type: ignore[index]


def test_example_timestamps_are_utc_aware_and_session_lasted_600_seconds():
    event = parse_event((EXAMPLES / "session-ended.json").read_bytes())
    assert event.start.utcoffset() == timedelta(0)
    assert event.session_duration == 600.0


def test_event_is_frozen():
    event = parse_event((EXAMPLES / "session-ended.json").read_bytes())
    with pytest.raises(AttributeError):
        event.room_id = "x"  # type: ignore[misc]


# -- `type` as an alias of `webhookType` -------------------------------------------------------

@pytest.mark.parametrize("envelope, expected_type", [
    pytest.param({"type": "session-ended"}, "session-ended", id="type-only"),
    pytest.param({"webhookType": "session-ended", "type": "participant-left"}, "session-ended",
                 id="webhookType-wins-over-type"),
    pytest.param({"type": "agent-session-started"}, "agent-session-started", id="type-only-unknown-event"),
])
def test_type_is_an_alias_of_webhookType(envelope, expected_type):
    raw = json.dumps({**envelope, "data": {"meetingId": "room-1", "sessionId": "s-1"}}).encode()
    event = parse_event(raw)
    assert event.type == expected_type
    assert event.room_id == "room-1"
    assert event.session_id == "s-1"


def test_type_alias_still_validates_data():
    raw = json.dumps({"type": "session-ended", "data": {"sessionId": "s-1"}}).encode()
    event = parse_event(raw)
    assert event.type == "session-ended" and event.known is True
    assert event.problem == "data.meetingId: Missing data for required field."


# -- unknown event types ----------------------------------------------------------------------

@pytest.mark.parametrize("event_type, data, room_id, session_id", [
    # documented families whose shapes are unknown
    pytest.param("agent-session-started", {"meetingId": "abcd-efgh-ijkl", "sessionId": "s1"},
                 "abcd-efgh-ijkl", "s1", id="agent-session-with-ids"),
    pytest.param("ai-deployment-session-ended", {}, None, None, id="ai-deployment-empty-data"),
    pytest.param("call-started", {"callId": "c1", "nested": {"deep": [1, 2, {"x": None}]}}, None, None,
                 id="call-no-room"),
    pytest.param("batchcall-completed", {"meetingId": 12345, "sessionId": ["x"]}, None, None,
                 id="batchcall-ids-not-strings"),
    # ids that would fail a known schema are still not an error on an unknown event
    pytest.param("some.future_event-2", {"meetingId": "a" * 200, "sessionId": ""}, None, None,
                 id="future-event-id-too-long-and-empty"),
    pytest.param("x", {"meetingId": "a" * 128}, "a" * 128, None, id="one-char-type-128-char-room"),
])
def test_unknown_event_types_are_recorded_not_rejected(event_type, data, room_id, session_id):
    event = parse_event(body(event_type, data))
    assert event.type == event_type
    assert event.known is False
    assert event.room_id == room_id
    assert event.session_id == session_id
    assert event.participant_id is None and event.start is None and event.end is None
    assert dict(event.data) == data


@pytest.mark.parametrize("meeting_id", [
    pytest.param("abc\nFORGED log line", id="newline"),
    pytest.param("../../etc/passwd", id="slashes"),
    pytest.param("a b", id="space"),
])
def test_unknown_event_room_id_must_look_like_an_id(meeting_id):
    event = parse_event(body("call-started", {"meetingId": meeting_id}))
    assert event.room_id is None


# -- bad bodies -------------------------------------------------------------------------------

def _deep_array(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def _deep_in_data(depth: int) -> bytes:
    return b'{"webhookType": "call-x", "data": {"a": ' + b'{"a": ' * depth + b"1" + b"}" * depth + b"}}"


SE = "session-ended"
PJ = "participant-joined"

# (raw body, message fragment, {field path: message fragment} or None when fields must be None)
BAD_BODIES = [
    pytest.param(b"{nope", "not valid JSON", None, id="not-json"),
    pytest.param(b'{"webhookType": "x", "data": {}', "not valid JSON", None, id="truncated-json"),
    pytest.param(b'{"webhookType": "x", "data": {"a": "\xff"}}', "not UTF-8 (byte 36)", None, id="not-utf8"),
    pytest.param(b"\xfe\xff\x00{", "not UTF-8", None, id="utf16-bom"),
    pytest.param(b"", "empty", None, id="empty"),
    pytest.param(b" \r\n\t ", "empty", None, id="whitespace-only"),
    pytest.param(b"[]", "not a VideoSDK webhook", {"_schema": "Invalid input type"}, id="json-array"),
    pytest.param(b'[{"webhookType": "session-ended", "data": {}}]', "not a VideoSDK webhook",
                 {"_schema": "Invalid input type"}, id="json-array-of-webhook"),
    pytest.param(b'"session-ended"', "not a VideoSDK webhook", {"_schema": "Invalid input type"}, id="json-string"),
    pytest.param(b"null", "not a VideoSDK webhook", {"_schema": "Invalid input type"}, id="json-null"),
    pytest.param(b"42", "not a VideoSDK webhook", {"_schema": "Invalid input type"}, id="json-number"),
    pytest.param(b'{"webhookType": "call-x", "data": {"a": NaN}}', "NaN is not valid JSON", None, id="nan"),
    pytest.param(b'{"webhookType": "call-x", "data": {"a": Infinity}}', "Infinity is not valid JSON", None,
                 id="infinity"),
    pytest.param(b'{"webhookType": "call-x", "data": {"a": -Infinity}}', "-Infinity is not valid JSON", None,
                 id="minus-infinity"),
    pytest.param(b'{"webhookType": "call-x", "data": {"a": ' + b"7" * 5000 + b"}}", "not valid JSON", None,
                 id="integer-5000-digits"),
    pytest.param(_deep_array(100_000), "nested too deeply", None, id="array-nested-100000"),
    pytest.param(_deep_in_data(100_000), "nested too deeply", None, id="object-nested-100000-in-data"),
    # the envelope
    pytest.param(json.dumps({"data": {}}).encode(), "not a VideoSDK webhook",
                 {"webhookType": "Missing data"}, id="webhookType-missing"),
    pytest.param(json.dumps({"webhookType": 5, "data": {}}).encode(), "not a VideoSDK webhook",
                 {"webhookType": "Not a valid string"}, id="webhookType-number"),
    pytest.param(json.dumps({"webhookType": None, "data": {}}).encode(), "not a VideoSDK webhook",
                 {"webhookType": "may not be null"}, id="webhookType-null"),
    pytest.param(json.dumps({"webhookType": ["session-ended"], "data": {}}).encode(), "not a VideoSDK webhook",
                 {"webhookType": "Not a valid string"}, id="webhookType-list"),
    pytest.param(body("", {}), "not a VideoSDK webhook", {"webhookType": "Not a valid event type"},
                 id="webhookType-empty"),
    pytest.param(body("SESSION-ENDED", {}), "not a VideoSDK webhook", {"webhookType": "Not a valid event type"},
                 id="webhookType-uppercase"),
    pytest.param(body("Session Ended!!", {}), "not a VideoSDK webhook", {"webhookType": "Not a valid event type"},
                 id="webhookType-garbage"),
    pytest.param(body("session-ended\n", {}), "not a VideoSDK webhook", {"webhookType": "Not a valid event type"},
                 id="webhookType-trailing-newline"),
    pytest.param(body("a" * 101, {}), "not a VideoSDK webhook", {"webhookType": "Not a valid event type"},
                 id="webhookType-101-chars"),
    pytest.param(json.dumps({"webhookType": SE}).encode(), "not a VideoSDK webhook",
                 {"data": "Missing data"}, id="data-missing"),
    pytest.param(body(SE, [1, 2]), "not a VideoSDK webhook", {"data": "Not a valid mapping"}, id="data-list"),
    pytest.param(body(SE, "x"), "not a VideoSDK webhook", {"data": "Not a valid mapping"}, id="data-string"),
    pytest.param(body(SE, None), "not a VideoSDK webhook", {"data": "may not be null"}, id="data-null"),
]


# The web request (read_envelope) refuses what parse_event refuses, with the same message: the
# request's 400 is the whole of the refusal, and the decider never meets a body it cannot read.
READERS = [pytest.param(parse_event, id="parse_event"), pytest.param(read_envelope, id="read_envelope")]


@pytest.mark.parametrize("read", READERS)
@pytest.mark.parametrize("raw, message, expected_fields", BAD_BODIES)
def test_bad_body_raises_payload_invalid(read, raw, message, expected_fields):
    with pytest.raises(PayloadInvalid) as info:
        read(raw)
    error = info.value
    assert error.status == 400
    assert message in error.message
    assert str(error) == error.message
    if expected_fields is None:
        assert error.fields is None
    else:
        got = flatten(error.fields)
        assert set(got) == set(expected_fields), got
        for path, fragment in expected_fields.items():
            assert fragment in got[path], (path, got[path])


# -- a known type whose data cannot be read: kept, never an error ----------------------------------

# (raw body, {field path: message fragment} the problem must name, and only those,
#  (room_id, session_id, participant_id) the event keeps: the ids that were valid)
UNREADABLE_BODIES = [
    # session-ended's data
    pytest.param(body(SE, {"sessionId": "s1"}), {"data.meetingId": "Missing data"}, (None, "s1", None),
                 id="session-ended-without-meetingId"),
    pytest.param(body(SE, {"meetingId": "m1"}), {"data.sessionId": "Missing data"}, ("m1", None, None),
                 id="session-ended-without-sessionId"),
    pytest.param(body(SE, {}), {"data.meetingId": "Missing data", "data.sessionId": "Missing data"},
                 (None, None, None), id="session-ended-data-empty"),
    pytest.param(body(SE, {"meetingId": 1234, "sessionId": "s1"}), {"data.meetingId": "Not a valid string"},
                 (None, "s1", None), id="meetingId-number"),
    pytest.param(body(SE, {"meetingId": "abcd efgh", "sessionId": "s1"}), {"data.meetingId": "Not a valid id"},
                 (None, "s1", None), id="meetingId-with-space"),
    pytest.param(body(SE, {"meetingId": "abcd/efgh", "sessionId": "s1"}), {"data.meetingId": "Not a valid id"},
                 (None, "s1", None), id="meetingId-with-slash"),
    pytest.param(body(SE, {"meetingId": "abcd\nefgh", "sessionId": "s1"}), {"data.meetingId": "Not a valid id"},
                 (None, "s1", None), id="meetingId-with-newline"),
    pytest.param(body(SE, {"meetingId": "a" * 200, "sessionId": "s1"}), {"data.meetingId": "Not a valid id"},
                 (None, "s1", None), id="meetingId-200-chars"),
    pytest.param(body(SE, {"meetingId": "a" * 129, "sessionId": "s1"}), {"data.meetingId": "Not a valid id"},
                 (None, "s1", None), id="meetingId-129-chars"),
    pytest.param(body(SE, {"meetingId": "", "sessionId": "s1"}), {"data.meetingId": "Not a valid id"},
                 (None, "s1", None), id="meetingId-empty"),
    pytest.param(body(SE, {"meetingId": "m1", "sessionId": "s1", "start": 1657036535}),
                 {"data.start": "Not a valid string"}, ("m1", "s1", None), id="start-a-number"),
    pytest.param(body(SE, {"meetingId": "m1", "sessionId": "s1", "end": "2" * 65}),
                 {"data.end": "Longer than maximum length 64"}, ("m1", "s1", None), id="end-65-chars"),
    # participant-joined's data
    pytest.param(body(PJ, {"meetingId": "m1", "sessionId": "s1"}), {"data.participantId": "Missing data"},
                 ("m1", "s1", None), id="participant-joined-without-participantId"),
    pytest.param(body(PJ, {"meetingId": "m1", "sessionId": "s1", "participantId": ""}),
                 {"data.participantId": "Length must be between 1 and 256"}, ("m1", "s1", None),
                 id="participantId-empty"),
    pytest.param(body(PJ, {"meetingId": "m1", "sessionId": "s1", "participantId": "p1", "participantName": 7}),
                 {"data.participantName": "Not a valid string"}, ("m1", "s1", "p1"), id="participantName-number"),
    pytest.param(body(PJ, {"meetingId": "m1", "sessionId": "s1", "participantId": "p1",
                           "participantName": {"first": "J"}}),
                 {"data.participantName": "Not a valid string"}, ("m1", "s1", "p1"), id="participantName-object"),
    pytest.param(body(PJ, {"meetingId": "m1", "sessionId": "s1", "participantId": "p1",
                           "participantName": "n" * 513}),
                 {"data.participantName": "Longer than maximum length 512"}, ("m1", "s1", "p1"),
                 id="participantName-513-chars"),
    # recording-* uses the room schema
    pytest.param(body("recording-started", {"meetingId": "m1"}), {"data.sessionId": "Missing data"},
                 ("m1", None, None), id="recording-started-without-sessionId"),
    # transcription-completed: VideoSDK documents no payload for it
    pytest.param(body("transcription-completed", {"id": "t1", "meetingId": "m1"}),
                 {"data.sessionId": "Missing data"}, ("m1", None, None), id="transcription-completed-id-and-room"),
]


def _problem_fields(problem: str) -> dict[str, str]:
    """`data.a: message; data.b: message` as {"data.a": "message", ...}."""
    return dict(part.split(": ", 1) for part in problem.split("; "))


@pytest.mark.parametrize("raw, expected_fields, ids", UNREADABLE_BODIES)
def test_unreadable_data_of_a_known_type_is_an_event_with_its_problem(raw, expected_fields, ids):
    event = parse_event(raw)  # no PayloadInvalid: the body is kept, not refused
    assert event.known is True
    got = _problem_fields(event.problem)
    assert set(got) == set(expected_fields), event.problem
    for path, fragment in expected_fields.items():
        assert fragment in got[path], (path, got[path])
    assert (event.room_id, event.session_id, event.participant_id) == ids
    assert event.start is None and event.end is None and event.participant_name is None
    assert dict(event.data) == json.loads(raw)["data"]  # the data as sent, read-only


def test_a_readable_body_has_no_problem():
    assert parse_event((EXAMPLES / "participant-left.json").read_bytes()).problem is None


def test_the_problem_never_carries_a_value_from_the_body():
    # A value in the body can be anything (a forged log line, a secret): the problem names fields only.
    raw = body(PJ, {"meetingId": "m1\nFORGED", "sessionId": "s1", "participantId": "p\u0000x",
                    "participantName": "n" * 600})
    problem = parse_event(raw).problem
    assert "FORGED" not in problem and "nnnn" not in problem and "\n" not in problem and "\x00" not in problem
    assert set(_problem_fields(problem)) == {"data.meetingId", "data.participantId", "data.participantName"}


@pytest.mark.parametrize("literal", [pytest.param(b"1e999", id="1e999"), pytest.param(b"-1e999", id="-1e999")])
def test_overflowing_float_is_rejected_like_infinity(literal):
    with pytest.raises(PayloadInvalid, match="not valid JSON"):
        parse_event(b'{"webhookType": "call-x", "data": {"a": ' + literal + b"}}")


@pytest.mark.parametrize("raw", [
    pytest.param(body(SE, {"meetingId": "m1", "sessionId": "s1", "start": "not a time", "end": "nope"}),
                 id="unreadable-timestamps"),
    pytest.param(body(PJ, {"meetingId": "m1", "sessionId": "s1", "participantId": "p1", "participantName": None}),
                 id="participantName-null"),
    pytest.param(body(SE, {"meetingId": "m1", "sessionId": "s1", "start": None, "end": None}), id="null-timestamps"),
    pytest.param(body(SE, {"meetingId": "A" + "b" * 127, "sessionId": "x.y:z_w-1"}), id="ids-at-the-limits"),
])
def test_tolerated_oddities_parse(raw):
    event = parse_event(raw)
    assert event.known is True
    assert event.participant_name is None
    assert event.start is None and event.end is None


@pytest.mark.parametrize("start", [
    pytest.param("9999-12-31T23:59:59-01:00", id="past-year-9999-after-offset"),
    pytest.param("9999-12-31T23:60:00Z", id="past-year-9999-after-rollover"),
    pytest.param("0001-01-01T00:00:00+01:00", id="before-year-1-after-offset"),
])
def test_parse_event_never_raises_on_out_of_range_timestamps(start):
    event = parse_event(body(SE, {"meetingId": "m1", "sessionId": "s1", "start": start}))
    assert event.start is None


# -- read_envelope: what the web request reads, and all it reads ---------------------------------


@pytest.mark.parametrize("name, expected", list(EXAMPLE_EVENTS.items()), ids=list(EXAMPLE_EVENTS))
def test_read_envelope_of_each_example_payload(name, expected):
    assert read_envelope((EXAMPLES / name).read_bytes()) == (expected["type"], expected["room_id"])


@pytest.mark.parametrize("envelope, expected_type", [
    pytest.param({"type": "session-ended"}, "session-ended", id="type-only"),
    pytest.param({"webhookType": "session-ended", "type": "participant-left"}, "session-ended",
                 id="webhookType-wins-over-type"),
])
def test_read_envelope_takes_type_as_an_alias_of_webhookType(envelope, expected_type):
    raw = json.dumps({**envelope, "data": {"meetingId": "room-1", "sessionId": "s-1"}}).encode()
    assert read_envelope(raw) == (expected_type, "room-1")


# (body, the room id read_envelope gives): the room id only when `data.meetingId` is a valid id,
# whatever the event type; a body is never refused for what `data` holds
ENVELOPE_ROOMS = [
    pytest.param(body(SE, {"meetingId": ROOM, "sessionId": SESSION}), ROOM, id="valid"),
    pytest.param(body(SE, {"meetingId": "A" + "b" * 127, "sessionId": "s"}), "A" + "b" * 127, id="128-chars"),
    pytest.param(body(SE, {"meetingId": "x.y:z_w-1"}), "x.y:z_w-1", id="punctuation-allowed"),
    pytest.param(body("call-started", {"meetingId": "abcd-efgh-ijkl"}), "abcd-efgh-ijkl", id="unknown-type"),
    pytest.param(body(SE, {"meetingId": "a" * 129, "sessionId": "s"}), None, id="129-chars"),
    pytest.param(body(SE, {"meetingId": "", "sessionId": "s"}), None, id="empty"),
    pytest.param(body(SE, {"meetingId": "-abc", "sessionId": "s"}), None, id="leading-dash"),
    pytest.param(body(SE, {"meetingId": "abc\nFORGED", "sessionId": "s"}), None, id="newline"),
    pytest.param(body(SE, {"meetingId": "../../etc/passwd"}), None, id="slashes"),
    pytest.param(body("call-started", {"meetingId": "a b"}), None, id="space-unknown-type"),
    pytest.param(body(SE, {"meetingId": "ábcd", "sessionId": "s"}), None, id="non-ascii"),
    pytest.param(body(SE, {"meetingId": 1234, "sessionId": "s"}), None, id="number"),
    pytest.param(body(SE, {"meetingId": ["abcd"], "sessionId": "s"}), None, id="list"),
    pytest.param(body(SE, {"meetingId": None, "sessionId": "s"}), None, id="null"),
    pytest.param(body(SE, {"sessionId": "s"}), None, id="missing"),
    pytest.param(body(SE, {}), None, id="data-empty"),
]


@pytest.mark.parametrize("raw, room_id", ENVELOPE_ROOMS)
def test_read_envelope_gives_the_room_id_only_when_valid(raw, room_id):
    event_type, got = read_envelope(raw)
    assert (event_type, got) == (json.loads(raw)["webhookType"], room_id)
    assert got == parse_event(raw).room_id  # the room the decider files the delivery under


@pytest.mark.parametrize("event_type, data, room_id, session_id", [
    pytest.param("agent-session-started", {"meetingId": "abcd-efgh-ijkl", "sessionId": "s1"}, "abcd-efgh-ijkl",
                 "s1", id="agent-session-with-ids"),
    pytest.param("ai-deployment-session-ended", {}, None, None, id="ai-deployment-empty-data"),
    pytest.param("batchcall-completed", {"meetingId": 12345, "sessionId": ["x"]}, None, None,
                 id="batchcall-ids-not-strings"),
    pytest.param("x", {"meetingId": "a" * 128}, "a" * 128, None, id="one-char-type-128-char-room"),
])
def test_read_envelope_accepts_unknown_event_types(event_type, data, room_id, session_id):
    assert read_envelope(body(event_type, data)) == (event_type, room_id)


@pytest.mark.parametrize("raw, expected_fields, ids", UNREADABLE_BODIES)
def test_read_envelope_accepts_a_known_type_whose_data_cannot_be_read(raw, expected_fields, ids):
    # Not refused: VideoSDK signed it and documents no retry; the decider keeps it with its problem.
    event_type, room_id = read_envelope(raw)
    assert (event_type, room_id) == (json.loads(raw)["webhookType"], ids[0])
    event = parse_event(raw)
    assert (event.type, event.room_id) == (event_type, room_id) and event.problem


def test_read_envelope_reads_nothing_of_data_but_the_room():
    # A field parse_event would refuse to read (the problem) is not the request's business.
    raw = body(PJ, {"meetingId": "m1", "sessionId": "s1", "participantId": "p\u0000x", "participantName": 7})
    assert read_envelope(raw) == (PJ, "m1")
    assert parse_event(raw).problem


# -- parse_timestamp --------------------------------------------------------------------------

def utc(*args) -> datetime:
    return datetime(*args, tzinfo=UTC)


@pytest.mark.parametrize("text, expected", [
    pytest.param("2022-07-05T15:55:35Z", utc(2022, 7, 5, 15, 55, 35), id="Z"),
    pytest.param("2022-07-05T15:55:35z", utc(2022, 7, 5, 15, 55, 35), id="lowercase-z"),
    pytest.param("2022-07-05T15:55:35+00:00", utc(2022, 7, 5, 15, 55, 35), id="+00:00"),
    pytest.param("2022-07-05T15:55:35", utc(2022, 7, 5, 15, 55, 35), id="no-offset-is-utc"),
    pytest.param("2022-07-05 15:55:35", utc(2022, 7, 5, 15, 55, 35), id="space-separator"),
    pytest.param("2022-07-05T15:55", utc(2022, 7, 5, 15, 55), id="no-seconds"),
    pytest.param("2022-07-05T15:55:35.047+00:00", utc(2022, 7, 5, 15, 55, 35, 47000), id="milliseconds"),
    pytest.param("2022-07-05T15:55:35.1234567Z", utc(2022, 7, 5, 15, 55, 35, 123456), id="7-digit-fraction-truncated"),
    pytest.param("2022-07-05T15:55:35,5Z", utc(2022, 7, 5, 15, 55, 35, 500000), id="comma-fraction"),
    pytest.param("2022-07-05T15:60:35Z", utc(2022, 7, 5, 16, 0, 35), id="docs-sloppy-60-minutes-rolls-over"),
    pytest.param("2022-07-05T15:59:60Z", utc(2022, 7, 5, 16, 0, 0), id="60-seconds-rolls-over"),
    pytest.param("2022-12-31T23:60:00Z", utc(2023, 1, 1, 0, 0, 0), id="rollover-into-next-year"),
    pytest.param("2022-07-05T24:00:00Z", utc(2022, 7, 6), id="hour-24-is-next-midnight"),
    pytest.param("2022-07-05", utc(2022, 7, 5), id="date-only"),
    pytest.param(" 2022-07-05T15:55:35Z\n", utc(2022, 7, 5, 15, 55, 35), id="surrounding-whitespace"),
    pytest.param("2022-07-05T15:55:35+05:30", utc(2022, 7, 5, 10, 25, 35), id="+05:30"),
    pytest.param("2022-07-05T15:55:35-0800", utc(2022, 7, 5, 23, 55, 35), id="-0800"),
    pytest.param("2022-07-05T15:55:35+05", utc(2022, 7, 5, 10, 55, 35), id="+05-hours-only"),
    pytest.param("2022-07-05T01:00:00+02:00", utc(2022, 7, 4, 23, 0, 0), id="offset-crosses-midnight"),
    pytest.param("2022-07-05T15:55:35+23:59", utc(2022, 7, 4, 15, 56, 35), id="largest-offset"),
    # unreadable -> None
    pytest.param("garbage", None, id="garbage"),
    pytest.param("", None, id="empty"),
    pytest.param(None, None, id="none"),
    pytest.param("0000-01-01T00:00:00Z", None, id="year-0"),
    pytest.param("2022-02-30T00:00:00Z", None, id="february-30"),
    pytest.param("2022-13-01", None, id="month-13"),
    pytest.param("2022-07-05T15:55:35+24:00", None, id="offset-24h"),
    pytest.param("2022-07-05T15:55:35.Z", None, id="dot-without-digits"),
    pytest.param("1657036535", None, id="epoch-seconds"),
    pytest.param("July 5, 2022", None, id="prose"),
    pytest.param("2022-07-05T15:55:35 UTC", None, id="named-zone"),
])
def test_parse_timestamp(text, expected):
    got = parse_timestamp(text)
    assert got == expected
    if got is not None:
        assert got.utcoffset() == timedelta(0)


# -- session_duration -------------------------------------------------------------------------

T0 = utc(2022, 7, 5, 15, 55, 35)


@pytest.mark.parametrize("start, end, expected", [
    pytest.param(T0, T0 + timedelta(minutes=10), 600.0, id="ten-minutes"),
    pytest.param(T0, T0, 0.0, id="zero-length"),
    pytest.param(T0, T0 + timedelta(seconds=59, microseconds=500000), 59.5, id="fractional"),
    pytest.param(T0, T0 - timedelta(seconds=1), None, id="end-before-start"),
    pytest.param(None, T0, None, id="start-missing"),
    pytest.param(T0, None, None, id="end-missing"),
    pytest.param(None, None, None, id="both-missing"),
])
def test_session_duration(start, end, expected):
    event = Event(type="session-ended", data={}, known=True, room_id="r", session_id="s", start=start, end=end)
    assert event.session_duration == expected


@pytest.mark.parametrize("start, end, expected", [
    pytest.param("2022-07-05T15:55:35Z", "2022-07-05T16:55:35+01:00", 0.0, id="offsets-are-normalised"),
    pytest.param("2022-07-05T15:55:35Z", "2022-07-05T15:60:35Z", 300.0, id="sloppy-end-rolls-over"),
    pytest.param("2022-07-05T16:00:00Z", "2022-07-05T15:00:00Z", None, id="end-before-start"),
    pytest.param("2022-07-05T15:55:35Z", "garbage", None, id="end-unreadable"),
    pytest.param(None, "2022-07-05T15:55:35Z", None, id="start-absent"),
])
def test_session_duration_from_a_body(start, end, expected):
    data = {"meetingId": "m1", "sessionId": "s1"}
    if start is not None:
        data["start"] = start
    if end is not None:
        data["end"] = end
    assert parse_event(body(SE, data)).session_duration == expected
