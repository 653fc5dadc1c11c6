"""The fields a rule's `when:` may test, and how each is read from the facts.

A field with no value for an event (a `participant.id` on `session-ended`, an
unreadable `data.end`) reads as MISSING, and a comparison with MISSING is
*unknown*, never true: see `conditions.py`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable

from ..events import Event


class _Missing:
    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()


@dataclass(frozen=True)
class Facts:
    """Everything a rule may know when it is evaluated."""

    event: Event
    now: float  # seconds since the epoch, from the caller's clock


@dataclass(frozen=True)
class Field:
    name: str
    kind: str  # "string" or "number": what its operands must be
    doc: str
    read: Callable[[Facts], Any]
    carried_by: tuple[str, ...] = ("*",)  # event-type globs that carry it


_PARTICIPANT_EVENTS = ("participant-*",)
_SESSION_TIMES = ("session-started", "session-ended")

FIELDS: dict[str, Field] = {f.name: f for f in (
    Field("event", "string", "the event type (`webhookType`)", lambda f: f.event.type),
    Field("room.id", "string", "the room id (`data.meetingId`)", lambda f: f.event.room_id),
    Field("session.id", "string", "the session id (`data.sessionId`)", lambda f: f.event.session_id),
    Field("participant.id", "string", "`data.participantId`", lambda f: f.event.participant_id,
          _PARTICIPANT_EVENTS),
    Field("participant.name", "string", "`data.participantName`", lambda f: f.event.participant_name,
          _PARTICIPANT_EVENTS),
    Field("session.duration", "number", "seconds from `data.start` to `data.end`",
          lambda f: f.event.session_duration, ("session-ended",)),
)}

DATA_PREFIX = "data."
_DATA_PATH = re.compile(r"^data(\.[A-Za-z0-9_-]+)+\Z")


def is_field(name: str) -> bool:
    return name in FIELDS or bool(_DATA_PATH.match(name))


def field_kind(name: str) -> str | None:
    """The operand kind a field requires, or None for raw `data.` paths (any JSON value)."""
    spec = FIELDS.get(name)
    return spec.kind if spec else None


def read(facts: Facts, name: str) -> Any:
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
