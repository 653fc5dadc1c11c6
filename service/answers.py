"""What VideoSDK's 2xx answers say, read the way its own server SDK reads them. Pure: no I/O.

Each reader takes a parsed JSON body (anything `json.loads` can return) and never
raises. Sources, and what we do where the docs are silent: docs/videosdk.md.

- `active_participants(body)`: how many participants an active-participants answer
  lists, or a `Misread` when the body is neither documented shape. A misread never
  lets a room be deactivated.
- `live_sessions(body)`: the session ids a `GET /v2/sessions?status=ongoing` page lists,
  or a `Misread`.
- `deactivated(body, room_id)` and `session_ended(body)`: what a deactivate or an
  end-session answer says, as a `Reading` (the fields to record, and any doubt).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Misread:
    """A 2xx body in no documented shape. `keys` names what it held, for the log (never values)."""

    what: str
    keys: str

    @property
    def message(self) -> str:
        return f"could not read the {self.what}: the answer held {self.keys}"


@dataclass(frozen=True)
class Reading:
    """What an action's 2xx answer said (`answer`, recorded as is) and why it leaves doubt, if it does."""

    answer: dict
    doubt: str | None = None


def shape_of(body: Any) -> str:
    """The body's top-level keys (or its type), for a log line: never a value, which may be personal."""
    if isinstance(body, dict):
        return "keys [" + ", ".join(sorted(str(key)[:40] for key in body)[:20]) + "]"
    return "an empty body" if body is None else f"a JSON {type(body).__name__}"


def _sessions(body: Any) -> list[dict] | None:
    """The session objects of an answer: the current shape is a page, `{"pageInfo", "data": [...]}`;
    the older one is `{"data": {session}}`. None when it is neither."""
    if not isinstance(body, dict):
        return None
    data = body.get("data")
    if isinstance(data, dict):
        return [data]
    if isinstance(data, list) and all(isinstance(session, dict) for session in data):
        return data
    return None


def active_participants(body: Any) -> int | Misread:
    """The number of active participants an answer lists, over every session it holds.

    VideoSDK's server SDK reads `data[0]` of a list (else `data`) and then its `participants`.
    We count the participants of every listed session (more than one is undocumented, and a
    participant in any of them means someone is there), and an empty page as nobody. A session
    whose `participants` is not a list is a misread: the SDK would read it as nobody, but a
    deactivation cannot be undone, so only a documented "nobody" counts as one.
    """
    sessions = _sessions(body)
    if sessions is None:
        return Misread("active participants", shape_of(body))
    count = 0
    for session in sessions:
        participants = session.get("participants")
        if not isinstance(participants, list):
            return Misread("active participants", "a session with " + shape_of(session))
        count += len(participants)
    return count


def live_sessions(body: Any) -> list[str] | Misread:
    """The ids of the sessions a `GET /v2/sessions?roomId=...&status=ongoing` page lists.

    A session's id is `id` in most answers and `_id` in the documented page example: both are read.
    """
    sessions = _sessions(body)
    if sessions is None or not isinstance(body.get("data"), list):
        return Misread("live sessions", shape_of(body))
    ids = []
    for session in sessions:
        session_id = session.get("id", session.get("_id"))
        if not isinstance(session_id, str):
            return Misread("live sessions", "a session with " + shape_of(session))
        ids.append(session_id)
    return ids


def deactivated(body: Any, room_id: str) -> Reading:
    """What a 2xx deactivate answer says: the room object, documented with `"disabled": true`.

    The room's id is `roomId` in most answers and `meetingId` in the documented example. A 2xx
    that does not say `disabled: true` for this room is done (the API took the call) but doubtful.
    """
    if not isinstance(body, dict):
        return Reading({"disabled": None}, f"the answer is {shape_of(body)}, not a room: "
                                           "it does not say the room is disabled")
    disabled = body.get("disabled")
    answered_room = body.get("roomId", body.get("meetingId"))
    answer = {"disabled": disabled if isinstance(disabled, bool) else None}
    if isinstance(answered_room, str):
        answer["roomId"] = answered_room[:128]
    if isinstance(answered_room, str) and answered_room != room_id:
        return Reading(answer, f"the answer is about room {answered_room[:128]}, not {room_id}")
    if disabled is True:
        return Reading(answer)
    if disabled is False:
        return Reading(answer, "the answer says disabled: false: the room may still be open")
    return Reading(answer, "the answer does not say whether the room is disabled")


def session_ended(body: Any) -> Reading:
    """What a 2xx end-session answer says: the session object (`status`, `end`).

    As the server SDK does, a missing `status` reads as "ended" when `end` is set, else "ongoing".
    A session still ongoing after the call is done (the API took it) but doubtful.
    """
    if not isinstance(body, dict):
        return Reading({"status": None}, f"the answer is {shape_of(body)}, not a session")
    status = body.get("status")
    end = body.get("end")
    if not isinstance(status, str):
        status = "ended" if end is not None else "ongoing"
    answer = {"status": status[:32], "end": end[:64] if isinstance(end, str) else None}
    if status == "ongoing":
        return Reading(answer, "the answer says the session is still ongoing")
    return Reading(answer)
