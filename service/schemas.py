"""Marshmallow schemas for VideoSDK webhook bodies: the envelope, then `data` by event type.

Only the fields the service reads are checked; anything else in `data` is kept
as sent (the raw body is stored) but never trusted. Event types the service does
not know are normal traffic: `data_schema_for` returns None for them.
"""

from __future__ import annotations

import re
from fnmatch import fnmatchcase

from marshmallow import EXCLUDE, Schema, fields, pre_load, validate

# VideoSDK room ids look like "abcd-efgh-ijkl"; accept any short id of safe characters
# so a format change upstream does not turn into 400s, but never control characters,
# slashes or whitespace, since the id goes into API bodies and logs.
ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}\Z")
_ID = validate.Regexp(ID_PATTERN, error="Not a valid id.")
_NAME = validate.Length(max=512)


EVENT_TYPE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,99}\Z")


class EnvelopeSchema(Schema):
    """`{"webhookType": "<event>", "data": {...}}`; `type` is accepted for `webhookType`."""

    class Meta:
        unknown = EXCLUDE

    webhookType = fields.String(required=True, validate=validate.Regexp(EVENT_TYPE, error="Not a valid event type."))
    data = fields.Dict(required=True)

    @pre_load
    def _accept_type_alias(self, body, **kwargs):
        # VideoSDK's server SDK reads `type` when `webhookType` is absent.
        if isinstance(body, dict) and "webhookType" not in body and "type" in body:
            body = {**body, "webhookType": body["type"]}
        return body


class RoomEventData(Schema):
    class Meta:
        unknown = EXCLUDE

    meetingId = fields.String(required=True, validate=_ID)
    sessionId = fields.String(required=True, validate=_ID)


_NO_CONTROL = validate.Regexp(r"^[^\x00-\x1f\x7f]*\Z", error="Must not contain control characters.")


class ParticipantEventData(RoomEventData):
    participantId = fields.String(required=True, validate=[validate.Length(min=1, max=256), _NO_CONTROL])
    participantName = fields.String(load_default=None, allow_none=True, validate=_NAME)


class SessionEventData(RoomEventData):
    # Timestamps are parsed leniently later (the docs' own examples are sloppy); here
    # they only have to be strings when present.
    start = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=64))
    end = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=64))


# Event types the service understands, and what their `data` must hold. Order
# matters: the first pattern that matches wins.
KNOWN_EVENTS: tuple[tuple[str, type[Schema]], ...] = (
    ("participant-joined", ParticipantEventData),
    ("participant-left", ParticipantEventData),
    ("session-started", SessionEventData),
    ("session-ended", SessionEventData),
    ("participant-recording-*", ParticipantEventData),
    ("participant-track-recording-*", ParticipantEventData),
    ("recording-*", RoomEventData),
    ("livestream-*", RoomEventData),
    ("hls-*", RoomEventData),
    ("transcription-*", RoomEventData),
    ("merge-recording-*", RoomEventData),
)

# Every webhook type VideoSDK documents by name, written out so that it cannot drift from its
# source: ../shared/videosdk/README.md, "Webhook event types documented today" plus the four
# session/participant types of its "Fields by event" table. It tells `check` whether a rule's
# `on:` can ever match what VideoSDK sends. Not a whitelist: at runtime any type is accepted,
# and any type matching KNOWN_EVENTS is read.
# Not here, on purpose: the families that README names with shapes unknown (agent-session-*,
# ai-deployment-session-*, call-*, batchcall-*) document no type by name. A rule on one gets a
# `check` warning that VideoSDK documents no such type; a delivery of one is still recorded
# (an unknown webhookType is normal traffic, answered 200).
DOCUMENTED_EVENT_TYPES = (
    "participant-joined", "participant-left", "session-started", "session-ended",
    "recording-starting", "recording-started", "recording-stopping", "recording-stopped", "recording-failed",
    "participant-recording-starting", "participant-recording-started", "participant-recording-stopping",
    "participant-recording-stopped", "participant-recording-failed",
    "participant-track-recording-starting", "participant-track-recording-started",
    "participant-track-recording-stopping", "participant-track-recording-stopped",
    "participant-track-recording-failed",
    "merge-recording-completed", "merge-recording-failed",
    "livestream-starting", "livestream-started", "livestream-playable", "livestream-stopping",
    "livestream-stopped", "livestream-failed",
    "hls-starting", "hls-started", "hls-playable", "hls-stopping", "hls-stopped", "hls-failed",
    "transcription-started", "transcription-stopped", "transcription-failed", "transcription-completed",
    "resource-acquired",
)

# The families that README names without documenting any of their types or shapes (see above).
NAMED_UNDOCUMENTED_FAMILIES = ("agent-session-*", "ai-deployment-session-*", "call-*", "batchcall-*")

_SCHEMAS = {cls: cls() for _, cls in KNOWN_EVENTS}


def data_schema_for(event_type: str) -> Schema | None:
    for pattern, cls in KNOWN_EVENTS:
        if fnmatchcase(event_type, pattern):
            return _SCHEMAS[cls]
    return None


ENVELOPE = EnvelopeSchema()
