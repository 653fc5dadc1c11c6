"""Who was in a room, and when, folded from its recorded deliveries (pure).

The dashboard's room timeline draws what roomwarden believed at each moment, which
is what its rules decided on: each recorded delivery is folded through the same
`rooms.advance` the decider uses, in the order the decider took them (arrival,
then id). So a late leave from an earlier session moves no one, a session-ended
empties the room, and a join after its session ended is not a stay. Deliveries
kept unread, of an unknown type, or raised by a sweep change nothing, as in the
decider.

What it cannot show: deliveries pruned by retention (`RETENTION_DAYS`) are not
in the store, so the fold starts at the retention horizon (`since`), and says how
many older deliveries it left out.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Iterable

from .events import SWEEP, Event
from .rooms import RoomState, advance

_NO_DATA = MappingProxyType({})
_ONE_PARTICIPANT = ("participant-joined", "participant-left")  # rooms.advance moves only its participant


@dataclass(frozen=True)
class Span:
    """A stretch of time: a participant's stay, or a session. `end` None: still going."""

    who: str  # the participant's id, or the session's
    start: float
    end: float | None
    start_delivery: str  # the delivery that began it
    end_delivery: str | None  # the one that ended it


@dataclass(frozen=True)
class Presence:
    stays: tuple[Span, ...]  # in the order they began
    sessions: tuple[Span, ...]
    # (when, how many were in the room from then on), at each change: the count the decider wrote
    # beside each delivery (deliveries.participants), or the fold's where it wrote none.
    counts: tuple[tuple[float, int], ...]
    since: float | None = None  # deliveries before this were left out (pruned history has holes)
    left_out: int = 0  # how many
    disagree: int = 0  # deliveries after which the fold's head count is not the decider's
    first_disagreement: str | None = None  # the earliest of them

    @property
    def peak(self) -> int:
        return max((count for _, count in self.counts), default=0)

    @property
    def participants(self) -> list[str]:
        """Everyone who stayed, in the order they first came."""
        return list(dict.fromkeys(stay.who for stay in self.stays))


def fold(room_id: str, deliveries: Iterable[dict], since: float | None = None) -> Presence:
    """The room's stays, sessions and head count from its delivery rows (as `room_story` reads
    them: id, received_at, event_type, session_id, participant_id, known, problem, participants).

    `since`: fold only the deliveries received from then on. Retention prunes a room's older
    deliveries but keeps those that started a timer or an action, so before the retention
    horizon the record has holes, and folding across them would invent stays and sessions.

    Where the decider wrote its head count beside a delivery, the count drawn is the decider's,
    and the fold's is checked against it: they differ after a hole in the record (a prune with a
    shorter age than the retention), or where two deliveries came in an order the store cannot
    tell apart (the same millisecond); `disagree` counts those deliveries. Folding from `since`,
    the people already in the room then are unknown to the fold until they leave, so the check
    starts once the two counts first agree."""
    state: RoomState | None = None
    open_stays: dict[str, int] = {}
    stays: list[list] = []
    sessions: list[list] = []
    counts: list[tuple[float, int]] = []
    left_out = disagree = 0
    first_disagreement = None
    checking = since is None  # from the start of the record, the fold knows all there is
    for row in sorted(deliveries, key=lambda d: (d["received_at"], d["id"])):
        if not row["known"] or row.get("problem") or row["event_type"] == SWEEP:
            continue
        at = row["received_at"]
        if since is not None and at < since:
            left_out += 1
            continue
        event = Event(type=row["event_type"], data=_NO_DATA, known=True, room_id=room_id,
                      session_id=row["session_id"], participant_id=row["participant_id"])
        before = state
        state = advance(state, event, at)
        if state is None:
            continue
        was_in = before.participants if before is not None else frozenset()
        same = before is not None and before.session_id == state.session_id
        if same and row["event_type"] in _ONE_PARTICIPANT:  # a join or a leave in the session: at most its
            moved = {row["participant_id"]} if len(was_in) != len(state.participants) else set()  # one moves
            gone, came = (moved, set()) if len(state.participants) < len(was_in) else (set(), moved)
        else:  # a session's start or end: anyone may have moved
            gone, came = was_in - state.participants, state.participants - was_in
        for who in sorted(gone):
            stays[open_stays.pop(who)][3:5] = [at, row["id"]]
        for who in sorted(came):
            open_stays[who] = len(stays)
            stays.append([who, at, row["id"], None, None])
        was_live = before is not None and before.session_active
        if was_live and sessions and (not same or not state.session_active):
            sessions[-1][3:5] = [at, row["id"]]
        if state.session_active and (not same or not was_live):
            sessions.append([state.session_id, at, row["id"], None, None])
        count = len(state.participants)
        written = row.get("participants")
        if written is not None:
            if written == count:
                checking = True
            elif checking:
                disagree += 1
                first_disagreement = first_disagreement or row["id"]
            count = written
        if not counts or counts[-1][1] != count:
            counts.append((at, count))
    return Presence(
        stays=tuple(Span(who, start, end, first, last) for who, start, first, end, last in stays),
        sessions=tuple(Span(who, start, end, first, last) for who, start, first, end, last in sessions),
        counts=tuple(counts), since=since, left_out=left_out, disagree=disagree,
        first_disagreement=first_disagreement)
