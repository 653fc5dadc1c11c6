"""The fields a rule's `when:` may test, and how each is read from the facts.

A field with no value for an event (a `participant.id` on `session-ended`, an
unreadable `data.end`, `room.empty_for` while someone is in the room) reads as
MISSING, and a comparison with MISSING is *unknown*, never true: see
`conditions.py`.

Kinds say what operands a field takes: `string`, `number`, `duration` (seconds;
operands may be written `90s`, `5m`, `2h`, `1d`), `time` (`"HH:MM"`, 24-hour,
in the rules' timezone) and `weekday` (`mon` ... `sun`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timezone, tzinfo
from typing import Any, Callable

from ..events import Event
from ..rooms import RoomState


class _Missing:
    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


@dataclass(frozen=True)
class Facts:
    """Everything a rule may know when it is evaluated."""

    event: Event
    now: float  # seconds since the epoch, from the caller's clock
    room: RoomState | None = None  # the room's state after the event
    tz: tzinfo = field(default=timezone.utc)
    memo: dict = field(default_factory=dict, compare=False, repr=False)  # fields read, conditions decided
    clock: float | None = None  # the time now.time and now.weekday read, when not `now` (a timer's start)

    def local_now(self) -> datetime:
        return datetime.fromtimestamp(self.now if self.clock is None else self.clock, self.tz)


@dataclass(frozen=True)
class Field:
    name: str
    kind: str  # string | number | duration | time | weekday
    doc: str
    read: Callable[[Facts], Any]
    carried_by: tuple[str, ...] = ("*",)  # event-type globs that carry it; "*": any known event


def _empty_for(f: Facts):
    room = f.room
    if room is None or room.participants or room.empty_since is None:
        return None
    return max(0.0, f.now - room.empty_since)


def _quiet_for(f: Facts):
    room = f.room
    if room is None or room.last_seen_at is None:
        return None
    return max(0.0, f.now - room.last_seen_at)


def _session_age(f: Facts):
    room = f.room
    if room is None or not room.session_active or room.session_started_at is None:
        return None
    return max(0.0, f.now - room.session_started_at)


_PARTICIPANT_EVENTS = ("participant-*",)

FIELDS: dict[str, Field] = {f.name: f for f in (
    Field("event", "string", "the event type (`webhookType`)", lambda f: f.event.type),
    Field("room.id", "string", "the room id (`data.meetingId`)", lambda f: f.event.room_id),
    Field("room.participants", "number", "how many participants are in the room now",
          lambda f: len(f.room.participants) if f.room else None),
    Field("room.sessions", "number", "how many sessions of the room roomwarden has seen",
          lambda f: f.room.sessions if f.room else None),
    Field("room.empty_for", "duration", "seconds since the room became empty, while it is", _empty_for),
    Field("room.quiet_for", "duration", "seconds since the room's last delivery (a sweep is not one)",
          _quiet_for),
    Field("session.id", "string", "the session id (`data.sessionId`)", lambda f: f.event.session_id),
    Field("session.duration", "duration", "seconds from `data.start` to `data.end`",
          lambda f: f.event.session_duration, ("session-ended",)),
    Field("session.age", "duration", "seconds since the room's current session started, while it is live",
          _session_age),
    Field("participant.id", "string", "`data.participantId`", lambda f: f.event.participant_id,
          _PARTICIPANT_EVENTS),
    Field("participant.name", "string", "`data.participantName`", lambda f: f.event.participant_name,
          _PARTICIPANT_EVENTS),
    Field("now.time", "time", "the time of day, `HH:MM` in the rules' timezone",
          lambda f: f.local_now().strftime("%H:%M")),
    Field("now.weekday", "weekday", "the day of the week in the rules' timezone: `mon` ... `sun`",
          lambda f: WEEKDAYS[f.local_now().weekday()]),
)}

DATA_PREFIX = "data."
DATA_PATH = re.compile(r"^data(\.[A-Za-z0-9_-]+)+\Z")


def is_field(name: str) -> bool:
    return name in FIELDS or bool(DATA_PATH.match(name))


def field_kind(name: str) -> str | None:
    """The operand kind a field requires, or None for raw `data.` paths (any JSON value)."""
    spec = FIELDS.get(name)
    return spec.kind if spec else None


def read(facts: Facts, name: str) -> Any:
    """A field's value, or MISSING; each field is read once per Facts, however many rules test it."""
    memo = facts.memo
    if name in memo:
        return memo[name]
    value = memo[name] = _read(facts, name)
    return value


def _read(facts: Facts, name: str) -> Any:
    spec = FIELDS.get(name)
    if spec is not None:
        value = spec.read(facts)
        return MISSING if value is None else value
    value: Any = facts.event.data
    for part in name[len(DATA_PREFIX):].split("."):
        if isinstance(value, dict) or hasattr(value, "keys"):
            if part not in value:
                return MISSING
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return MISSING
    return value
