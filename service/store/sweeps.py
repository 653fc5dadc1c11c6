"""The sweep's rounds: which worker appends the next rooms' sweeps to the inbox, and closed rooms.

See service/sweeps.py for what a sweep is. Here: `sweep_turn` (one transaction) starts a round
when one is due and none is running, or carries on the round this worker holds (or one whose
owner's lease ran out), appending a sweep to the inbox for each of the next rooms after the
round's cursor that is not closed (a room is closed by its deactivation: intake.py's `close_room`).
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import insert, select, text, update

from ..sweeps import sweep_body, sweep_id
from .database import Database
from .guard import guarded
from .tables import inbox, rooms, sweeps

NAME = "rooms"


@dataclass(frozen=True)
class SweepTurn:
    round: int
    appended: int  # sweeps appended to the inbox by this turn
    finished: bool  # the round is over
    next_look_at: float  # when this worker should call again
    started: bool = False  # this turn started the round
    rooms: int = 0  # rooms swept in the round so far
    last_id: str | None = None  # the id of the last sweep this turn appended


class Sweeps:
    """The worker's side of the sweep: its turns. (The dashboard reads the round from pages.py.)"""

    def __init__(self, db: Database):
        self.db = db

    @guarded
    def sweep_turn(self, owner: str, every: float, chunk: int, lease: float) -> SweepTurn | None:
        """Append the next chunk of a round's sweeps, starting a round if one is due. None when
        there is nothing for `owner` to do now (no round due, or another worker holds it)."""
        now = self.db.clock()
        with self.db.write() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(self.db.insert(sweeps).values(name=NAME, round=0, next_at=now, rooms=0)
                             .on_conflict_do_nothing(index_elements=["name"]))
                row = conn.execute(select(sweeps).where(sweeps.c.name == NAME).with_for_update()).mappings().one()
            else:
                conn.execute(self.db.insert(sweeps).values(name=NAME, round=0, next_at=now, rooms=0)
                             .on_conflict_do_nothing(index_elements=["name"]))
                row = conn.execute(select(sweeps).where(sweeps.c.name == NAME)).mappings().one()
            running = row["started_at"] is not None and row["finished_at"] is None
            if running and row["owner"] != owner and (row["lease_until"] or 0) > now:
                return SweepTurn(row["round"], 0, False, row["lease_until"])  # another worker's round
            values: dict = {"owner": owner, "lease_until": now + lease}
            round_, cursor, swept = row["round"], row["cursor"], row["rooms"]
            if not running:
                if row["next_at"] > now:
                    return SweepTurn(row["round"], 0, True, row["next_at"])
                round_, cursor, swept = round_ + 1, None, 0
                values.update(round=round_, started_at=now, finished_at=None, next_at=now + every, cursor=None,
                              rooms=0)
            query = select(rooms.c.room_id).where(rooms.c.closed_at.is_(None)).order_by(rooms.c.room_id).limit(chunk)
            if cursor is not None:
                query = query.where(rooms.c.room_id > cursor)
            found = list(conn.execute(query).scalars())
            last_id = None
            if found:
                conn.execute(insert(inbox), [
                    {"id": sweep_id(now, round_, room), "received_at": now, "room_id": room,
                     "body": sweep_body(room, round_), "signature": None, "verified": True} for room in found])
                last_id = sweep_id(now, round_, found[-1])
                if conn.dialect.name == "postgresql":
                    conn.execute(text("SELECT pg_notify('roomwarden_inbox', '')"))
                values.update(cursor=found[-1], rooms=swept + len(found))
            finished = len(found) < chunk
            if finished:
                values.update(finished_at=now, owner=None, lease_until=None)
            conn.execute(update(sweeps).where(sweeps.c.name == NAME).values(**values))
            next_at = values.get("next_at", row["next_at"])
            return SweepTurn(round_, len(found), finished, next_at if finished else now, started=not running,
                             rooms=values.get("rooms", swept), last_id=last_id)
