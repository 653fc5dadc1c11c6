"""Deciding `for:` timers: when they come due, and when the rules change under them."""

from __future__ import annotations

from typing import Callable

from sqlalchemy import exists, select, update

from .database import Database
from .guard import guarded
from .intake import RoomWrites
from ..outcomes import TimerStatus
from ..planner import PendingTimer
from .records import TimerWrite
from .tables import deliveries, inbox, timers

Decide = Callable[[PendingTimer, dict, set[str]], TimerWrite]


class Timers:
    """The worker's timers: firing the due ones, re-checking pending ones after a reload."""

    def __init__(self, db: Database, rooms: RoomWrites):
        self.db = db
        self.rooms = rooms

    @guarded
    def fire_due_timer(self, decide: Decide) -> TimerWrite | None:
        """Decide the most overdue pending timer, if any, in one transaction.

        No lease is needed: nothing outside the database happens here, so the
        timer row stays locked from reading to writing, and a timer fires once.
        Locks are taken room first, then timer, the order a delivery takes them in,
        so a timer firing while a delivery for its room arrives cannot deadlock.

        A timer whose room has a delivery in the inbox that arrived by its due time waits for
        the decider: that delivery (a join, say) may cancel it. Other rooms' timers fire however
        busy the inbox is.
        """
        for _ in range(10):  # another worker may take the timer we picked: pick again, in a new transaction
            now = self.db.clock()
            with self.db.write() as conn:
                candidate = conn.execute(
                    select(timers.c.id, timers.c.room_id)
                    .where(timers.c.status == TimerStatus.PENDING, timers.c.due_at <= now, ~exists().where(
                        inbox.c.room_id == timers.c.room_id, inbox.c.received_at <= timers.c.due_at))
                    .order_by(timers.c.due_at, timers.c.id).limit(1)
                ).first()  # not locked yet: the room is locked first, then the timer
                if candidate is None:
                    return None
                write = self._decide_locked(conn, candidate.id, candidate.room_id, decide, now)
            # (Never a second room in one transaction: two workers holding one room each and
            # wanting the other's would deadlock.)
            if write is not None:
                return write
        return None

    @guarded
    def pending_timers_by_rule(self) -> list[tuple[int, str, str]]:
        """(id, rule, fingerprint) of every pending timer, read-only: what a reload must re-check."""
        with self.db.read() as conn:
            return [tuple(row) for row in conn.execute(
                select(timers.c.id, timers.c.rule, timers.c.fingerprint)
                .where(timers.c.status == TimerStatus.PENDING).order_by(timers.c.id))]

    @guarded
    def recheck_timer(self, timer_id: int, decide: Decide) -> TimerWrite | None:
        """Re-decide one pending timer now (after a reload), if it is still pending."""
        now = self.db.clock()
        with self.db.write() as conn:
            room_id = conn.execute(select(timers.c.room_id).where(
                timers.c.id == timer_id, timers.c.status == TimerStatus.PENDING)).scalar()
            if room_id is None:
                return None
            return self._decide_locked(conn, timer_id, room_id, decide, now)

    def _decide_locked(self, conn, timer_id: int, room_id: str, decide: Decide, now: float) -> TimerWrite | None:
        """Lock the room, then the timer; decide it if it is still pending."""
        state = self.db.lock_room(conn, room_id)
        row = conn.execute(
            select(timers, deliveries.c.body.label("trigger_body"),
                   deliveries.c.verified.label("trigger_verified"))
            .join(deliveries, deliveries.c.id == timers.c.delivery_id)
            .where(timers.c.id == timer_id, timers.c.status == TimerStatus.PENDING)
            .with_for_update(of=timers)
        ).mappings().first()
        if row is None:
            return None
        timer = PendingTimer.from_row(row)
        write = decide(timer, state, self.rooms.action_keys(conn, room_id))
        self._apply_timer(conn, timer, write, now)
        return write

    def _apply_timer(self, conn, timer: PendingTimer, write: TimerWrite, now: float) -> None:
        where = (timers.c.id == timer.id) & (timers.c.status == TimerStatus.PENDING)
        if write.verdict == "fire":
            conn.execute(update(timers).where(where).values(status=TimerStatus.FIRED, resolved_at=now,
                                                           reason=write.reason))
            if write.decision is not None:
                self.rooms.record_decision(conn, timer.delivery_id, write.decision, now, timer_id=timer.id)
        elif write.verdict == "cancel":
            conn.execute(update(timers).where(where).values(status=TimerStatus.CANCELLED, resolved_at=now,
                                                           reason=write.reason))
        elif write.verdict == "wait":
            notes = conn.execute(select(timers.c.notes).where(timers.c.id == timer.id)).scalar() or []
            values = {"due_at": write.due_at if write.due_at is not None else timer.due_at}
            if write.fingerprint and write.fingerprint != timer.fingerprint:
                values["fingerprint"] = write.fingerprint
            if write.reason and write.reason != "unchanged":
                values["notes"] = [*notes, {"at": now, "note": write.reason}]
            conn.execute(update(timers).where(where).values(**values))
        else:
            raise ValueError(f"unknown timer verdict {write.verdict!r}")
