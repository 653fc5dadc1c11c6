"""What roomwarden knows about a room, folded from its events. Pure: state and an event in, state out.

VideoSDK sends no event id and no timestamp, so the state is built to be safe
under the deliveries it really gets:

- Presence is a set of participant ids: a join adds, a leave removes, so a
  repeated delivery changes nothing, and a participant who leaves, rejoins and
  leaves again (three deliveries, two of them byte-identical) ends up absent.
- Sessions are told apart by id. An event for a session older than the current
  one (a late delivery) does not touch presence. An unseen session replaces a
  live one only when it is plausibly newer: a join or a start (a room has one
  session at a time, so a new one means the old one ended unseen), and never
  when its id says it began earlier (VideoSDK's session ids begin with their
  creation time, as MongoDB ObjectIds do). A leave or an end for an unseen
  session while one is live is a late or replayed delivery, and is ignored.
- A join for a session that has already ended is late, and ignored.

What it cannot know: the order of two deliveries for the same participant in
the same session. It takes them in arrival order (see docs/rules.md).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

from .events import SWEEP, Event

RECENT_SESSIONS = 64  # how many past session ids are kept to recognise late events
_OBJECT_ID = re.compile(r"^[0-9a-f]{24}\Z")
_STARTS_SESSION = ("participant-joined", "session-started")


@dataclass(frozen=True)
class RoomState:
    room_id: str
    participants: frozenset[str] = frozenset()
    session_id: str | None = None
    session_started_at: float | None = None
    session_active: bool = False
    sessions: int = 0  # sessions seen
    empty_since: float | None = None  # when the room last became empty, while it is
    recent_sessions: tuple[str, ...] = field(default=())  # oldest first, current last
    # When the room's last delivery came (room.quiet_for). Not part of what the room *is*: two
    # states that differ only here are equal, so a repeated delivery still changes nothing.
    last_seen_at: float | None = field(default=None, compare=False)

    def to_dict(self) -> dict:
        return {"participants": sorted(self.participants), "session_id": self.session_id,
                "session_started_at": self.session_started_at, "session_active": self.session_active,
                "sessions": self.sessions, "empty_since": self.empty_since,
                "recent_sessions": list(self.recent_sessions), "last_seen_at": self.last_seen_at}

    @classmethod
    def from_dict(cls, room_id: str, data: dict) -> "RoomState":
        return cls(room_id=room_id, participants=frozenset(data.get("participants") or ()),
                   session_id=data.get("session_id"), session_started_at=data.get("session_started_at"),
                   session_active=bool(data.get("session_active")), sessions=int(data.get("sessions") or 0),
                   empty_since=data.get("empty_since"),
                   recent_sessions=tuple(data.get("recent_sessions") or ()),
                   last_seen_at=data.get("last_seen_at"))


def _new_session(state: RoomState, session_id: str, started_at: float, now: float) -> RoomState:
    recent = (state.recent_sessions + (session_id,))[-RECENT_SESSIONS:]
    return replace(state, participants=frozenset(), session_id=session_id, session_started_at=started_at,
                   session_active=True, sessions=state.sessions + 1, recent_sessions=recent,
                   empty_since=_still_empty_since(state, now))


def _still_empty_since(state: RoomState, now: float) -> float:
    """When the room became empty: unchanged if it already was, else now."""
    return state.empty_since if state.empty_since is not None and not state.participants else now


def _began_before(session: str, current: str) -> bool:
    """Whether `session` began before `current`, going by the creation time ObjectId-shaped ids
    carry; False when either id is of another shape (then arrival order is all there is)."""
    if _OBJECT_ID.match(session) and _OBJECT_ID.match(current):
        return int(session[:8], 16) < int(current[:8], 16)
    return False


def advance(state: RoomState | None, event: Event, now: float) -> RoomState | None:
    """The room's state after `event`, received at `now`. None for events with no room.

    A sweep (roomwarden's own event) changes nothing: it is no news from the room."""
    if not event.known or not event.room_id or event.type == SWEEP:
        return state
    state = replace(state or RoomState(room_id=event.room_id), last_seen_at=now)
    session = event.session_id
    if session is None:
        return state
    if session != state.session_id:
        if session in state.recent_sessions:
            return state  # a late event from an earlier session
        if state.session_id is not None and _began_before(session, state.session_id):
            return state  # a session older than the current one, delivered late (or replayed)
        if state.session_active and event.type not in _STARTS_SESSION:
            return state  # a leave or an end cannot start a session while another is live
        started = event.start.timestamp() if event.start is not None else now
        state = _new_session(state, session, started, now)
    elif event.type == "session-started" and event.start is not None:
        state = replace(state, session_started_at=event.start.timestamp())

    if event.type == "session-ended":
        return replace(state, participants=frozenset(), session_active=False,
                       empty_since=_still_empty_since(state, now))
    if event.type == "participant-joined":
        if not state.session_active:
            return state  # a join delivered after its session ended
        return replace(state, participants=state.participants | {event.participant_id}, empty_since=None)
    if event.type == "participant-left":
        remaining = state.participants - {event.participant_id}
        empty_since = state.empty_since
        if not remaining and empty_since is None:
            empty_since = now
        return replace(state, participants=remaining, empty_since=empty_since)
    return state
