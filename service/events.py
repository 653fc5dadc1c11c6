"""A webhook delivery's body, read once at the edge into an immutable `Event`.

`parse_event(raw)` raises `PayloadInvalid` (a 400 with field-level messages) for
a body that is not UTF-8, not JSON, or not the envelope `{"webhookType": str,
"data": {...}}`; it never raises anything else, whatever the bytes. A body of a
known event type whose `data` lacks a field the service needs, or has one it
cannot read, is not an error: VideoSDK signed it and may never send it again, so
it comes back as an Event with `problem` set (which fields failed), to be kept
and never decided on. It does not check signatures: that happens before, on the
raw bytes.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from types import MappingProxyType
from typing import Any, Mapping

from marshmallow import ValidationError

from .errors import PayloadInvalid
from .schemas import ENVELOPE, EVENT_TYPE, ID_PATTERN, data_schema_for


# roomwarden's own event: raised by a sweep (service/sweeps.py), written to the inbox under an id
# no delivery can have, and read as a sweep only from there. A body from outside that says
# "sweep" is an event of an unknown type: recorded, never decided on.
SWEEP = "sweep"


@dataclass(frozen=True)
class Event:
    type: str
    data: Mapping[str, Any]  # the raw `data` object, read-only
    known: bool  # whether the service understands this event type
    # Why a body of a known type could not be read (which `data` fields failed), or None.
    # Such an event is kept but never decided on: no rule sees it and no room state changes.
    problem: str | None = None
    room_id: str | None = None
    session_id: str | None = None
    participant_id: str | None = None
    participant_name: str | None = None
    start: datetime | None = None
    end: datetime | None = None

    @property
    def session_duration(self) -> float | None:
        """Seconds from `data.start` to `data.end`; None if either is missing or unreadable."""
        if self.start is None or self.end is None or self.end < self.start:
            return None
        return (self.end - self.start).total_seconds()


def _reject_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999 would otherwise become inf
        raise ValueError(f"number {text[:20]} is out of range")
    return value


def _decode_json(raw: bytes) -> Any:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PayloadInvalid(f"body is not UTF-8 (byte {exc.start})") from None
    if not text.strip():
        raise PayloadInvalid("body is empty; expected a JSON object")
    try:
        body = json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)
    except RecursionError:
        raise PayloadInvalid("body is nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, NaN, integers too long to convert
        raise PayloadInvalid(f"body is not valid JSON: {exc}") from None
    if "\\u" in text:  # only escapes can make half a surrogate pair ("\ud800" alone)
        try:
            json.dumps(body, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise PayloadInvalid("body has a \\u escape for half a surrogate pair, which is not a "
                                 "character") from None
        except RecursionError:
            raise PayloadInvalid("body is nested too deeply") from None
    return body


def _envelope(raw: bytes) -> dict:
    """`{"webhookType": str, "data": {...}}` from UTF-8 JSON bytes, or PayloadInvalid.

    ENVELOPE (marshmallow) is the authority and writes every refusal; a body plainly in the
    envelope, as every delivery is, is taken without it: the same answer at a tenth of the cost,
    on every webhook request (tests/test_properties.py holds the two equal)."""
    body = _decode_json(raw)
    if type(body) is dict:
        event_type, data = body.get("webhookType"), body.get("data")
        if type(event_type) is str and type(data) is dict and EVENT_TYPE.match(event_type):
            return {"webhookType": event_type, "data": data}
    try:
        return ENVELOPE.load(body)
    except ValidationError as exc:
        raise PayloadInvalid("body is not a VideoSDK webhook", fields=exc.messages) from None
    except RecursionError:
        raise PayloadInvalid("body is nested too deeply") from None


def read_envelope(raw: bytes) -> tuple[str, str | None]:
    """The body's event type and room id (None unless `data.meetingId` is a valid id), having
    checked only what the web request checks: UTF-8 JSON in the webhook's envelope. Raises
    PayloadInvalid otherwise. The rest is read behind the request, by `parse_event`."""
    envelope = _envelope(raw)
    return envelope["webhookType"], _maybe_str(envelope["data"].get("meetingId"))


def parse_event(raw: bytes, *, sweep: bool = False) -> Event:
    """The body as an Event. `sweep`: the body is a sweep roomwarden raised (never a delivery's)."""
    envelope = _envelope(raw)
    event_type, data = envelope["webhookType"], envelope["data"]
    if event_type == SWEEP and sweep:
        return _sweep(data)
    schema = None if event_type == SWEEP else data_schema_for(event_type)
    if schema is None:
        return Event(type=event_type, data=MappingProxyType(data), known=False,
                     room_id=_maybe_str(data.get("meetingId")),
                     session_id=_maybe_str(data.get("sessionId")))
    try:
        fields = schema.load(data)
    except ValidationError as exc:
        # Keep the ids that did pass, so the delivery can be found by room (explain).
        valid = exc.valid_data if isinstance(exc.valid_data, dict) else {}
        return Event(type=event_type, data=MappingProxyType(data), known=True,
                     problem=_problem_text(exc.messages, "data."),
                     room_id=valid.get("meetingId"), session_id=valid.get("sessionId"),
                     participant_id=valid.get("participantId"))
    return Event(
        type=event_type,
        data=MappingProxyType(data),
        known=True,
        room_id=fields["meetingId"],
        session_id=fields["sessionId"],
        participant_id=fields.get("participantId"),
        participant_name=fields.get("participantName"),
        start=parse_timestamp(fields.get("start")),
        end=parse_timestamp(fields.get("end")),
    )


def _sweep(data: Mapping[str, Any]) -> Event:
    room_id, session_id = _maybe_str(data.get("meetingId")), _maybe_str(data.get("sessionId"))
    return Event(type=SWEEP, data=MappingProxyType(dict(data)), known=room_id is not None,
                 problem=None if room_id is not None else "data.meetingId: not a room id",
                 room_id=room_id, session_id=session_id)


def _problem_text(messages: Mapping[str, Any], prefix: str = "") -> str:
    """Marshmallow's messages as one short line: `data.participantId: Missing data for required field.`

    Only the schema's own field names and messages appear (unknown fields are excluded
    before validation), never a value from the body, so the line is safe to log."""
    parts = []
    for key, value in messages.items():
        if isinstance(value, Mapping):
            parts.append(_problem_text(value, f"{prefix}{key}."))
        else:
            text = " ".join(str(m) for m in value) if isinstance(value, (list, tuple)) else str(value)
            parts.append(f"{prefix}{key}: {text}")
    return "; ".join(parts)


def _maybe_str(value: Any) -> str | None:
    # Unknown events are only recorded; keep a room id for lookups when it is a valid id.
    return value if isinstance(value, str) and ID_PATTERN.match(value) else None


_TIMESTAMP = re.compile(
    r"^\s*(\d{4})-(\d{1,2})-(\d{1,2})(?:[T ](\d{1,2}):(\d{1,2})(?::(\d{1,2})(?:[.,](\d+))?)?)?"
    r"\s*(Z|z|[+-]\d{2}(?::?\d{2})?)?\s*$"
)


def parse_timestamp(value: str | None) -> datetime | None:
    """Read an ISO-8601 timestamp leniently; None when it cannot be read.

    VideoSDK's documented examples include times such as `15:60:35`, so fields
    that overflow (60 seconds, 60 minutes) roll over instead of failing. A
    timestamp without an offset is taken as UTC.
    """
    if not value:
        return None
    match = _TIMESTAMP.match(value)
    if not match:
        return None
    year, month, day, hour, minute, second, fraction, offset = match.groups()
    try:
        moment = datetime(int(year), int(month), int(day), tzinfo=timezone.utc) + timedelta(
            hours=int(hour or 0), minutes=int(minute or 0), seconds=int(second or 0),
            microseconds=int((fraction or "0")[:6].ljust(6, "0")))
        if offset and offset not in ("Z", "z"):
            sign = 1 if offset[0] == "+" else -1
            digits = offset[1:].replace(":", "")
            shift = timedelta(hours=int(digits[:2]), minutes=int(digits[2:4] or 0))
            if shift >= timedelta(hours=24):
                return None
            moment -= sign * shift
    except (ValueError, OverflowError):  # day 31 of February; past year 9999 after an offset
        return None
    return moment
