"""Reads for the dashboard: counts by rule, activity per minute, pages of rooms and actions, the
sweep's round and the workers' breakers. Nothing here writes.

Every read is one indexed query (or a few), paged by keyset, so a page costs the
same with ten rooms or a million: rooms by (updated_at, room_id) newest first,
actions by id newest first within a status.
"""

from __future__ import annotations

import math

from sqlalchemy import Integer, and_, cast, func, literal_column, or_, select

from .database import Database
from .guard import guarded
from ..outcomes import TimerStatus
from .records import Row
from .sweeps import NAME as SWEEP
from .tables import actions, attempts, decisions, deliveries, rooms, sweeps, timers, workers


SEED_LOOKBACK = 86400.0  # seconds before a sparkline's window to look for the count it starts with


class Pages:
    def __init__(self, db: Database):
        self.db = db

    def _minute(self, column):
        """The minute since the epoch that `column` (seconds since the epoch) falls in.

        No bound parameters in it, so GROUP BY repeats it word for word on PostgreSQL.
        """
        minutes = column / literal_column("60.0")
        if self.db.dialect == "postgresql":
            minutes = func.floor(minutes)  # PostgreSQL's cast rounds; SQLite's truncates
        return cast(minutes, Integer)

    @guarded
    def decision_counts(self) -> dict[str, dict[str, int]]:
        """{rule: {outcome: decisions}} over everything recorded."""
        counts: dict[str, dict[str, int]] = {}
        with self.db.read() as conn:
            for rule, outcome, n in conn.execute(
                    select(decisions.c.rule, decisions.c.outcome, func.count())
                    .group_by(decisions.c.rule, decisions.c.outcome)):
                counts.setdefault(rule, {})[outcome] = n
        return counts

    @guarded
    def activity(self, since: float, minutes: int) -> dict[str, list]:
        """Per minute from `since` (a whole minute): deliveries, decisions and actions made, attempts
        and their latency.

        Each list has `minutes` items; latency is None for a minute with no attempt.
        """
        series = {name: [0] * minutes for name in ("deliveries", "decisions", "actions", "attempts")}
        series["latency_avg"] = [None] * minutes
        series["latency_max"] = [None] * minutes
        until = since + minutes * 60
        first = int(since // 60)
        with self.db.read() as conn:
            for name, table, column in (("deliveries", deliveries, deliveries.c.received_at),
                                        ("decisions", decisions, decisions.c.created_at),
                                        ("actions", actions, actions.c.created_at)):
                minute = self._minute(column).label("minute")
                for bucket, n in conn.execute(select(minute, func.count()).select_from(table)
                                              .where(column >= since, column < until).group_by(minute)):
                    if 0 <= bucket - first < minutes:
                        series[name][bucket - first] = n
            minute = self._minute(attempts.c.started_at).label("minute")
            for bucket, n, avg, top in conn.execute(
                    select(minute, func.count(), func.avg(attempts.c.latency_ms), func.max(attempts.c.latency_ms))
                    .where(attempts.c.started_at >= since, attempts.c.started_at < until).group_by(minute)):
                if 0 <= bucket - first < minutes:
                    series["attempts"][bucket - first] = n
                    series["latency_avg"][bucket - first] = float(avg)
                    series["latency_max"][bucket - first] = float(top)
        return series

    @guarded
    def count_rooms(self, *, with_timers: bool = False) -> int:
        query = select(func.count()).select_from(rooms)
        if with_timers:
            query = query.where(rooms.c.room_id.in_(self._rooms_with_timers()))
        with self.db.read() as conn:
            return conn.execute(query).scalar_one()

    def _rooms_with_timers(self):
        return select(timers.c.room_id).where(timers.c.status == TimerStatus.PENDING)

    @guarded
    def rooms_page(self, *, limit: int = 50, after: str | None = None,
                   with_timers: bool = False) -> tuple[list[Row], str | None]:
        """Rooms, most recently updated first, each with its pending `timers` and its `actions`.

        `after` is the cursor of the previous page's last room, "UPDATED_AT~ROOM_ID" (a
        bare room id, from older links, is looked up); returns the rows and the cursor
        of the next page (None on the last one). The cursor carries the time the page
        was sorted by, so a room that changes in between does not move the page.
        Raises ValueError for a cursor that cannot be read.
        """
        query = (select(rooms).order_by(rooms.c.updated_at.desc(), rooms.c.room_id.desc()).limit(limit + 1))
        if with_timers:
            query = query.where(rooms.c.room_id.in_(self._rooms_with_timers()))
        with self.db.read() as conn:
            if after is not None:
                anchor, room_id = _room_cursor(after)
                if anchor is None:
                    anchor = conn.execute(select(rooms.c.updated_at).where(rooms.c.room_id == room_id)).scalar()
                if anchor is not None:
                    query = query.where(or_(rooms.c.updated_at < anchor,
                                            and_(rooms.c.updated_at == anchor, rooms.c.room_id < room_id)))
            page = [dict(r) for r in conn.execute(query).mappings()]
            more = len(page) > limit
            page = page[:limit]
            ids = [r["room_id"] for r in page]
            pending: dict[str, list[Row]] = {}
            done: dict[str, list[Row]] = {}
            if ids:
                for row in conn.execute(select(timers).where(timers.c.room_id.in_(ids), timers.c.status == TimerStatus.PENDING)
                                        .order_by(timers.c.due_at)).mappings():
                    pending.setdefault(row["room_id"], []).append(dict(row))
                for row in conn.execute(select(actions.c.id, actions.c.room_id, actions.c.kind, actions.c.status,
                                               actions.c.rule).where(actions.c.room_id.in_(ids))
                                        .order_by(actions.c.id)).mappings():
                    done.setdefault(row["room_id"], []).append(dict(row))
        for row in page:
            row["timers"] = pending.get(row["room_id"], [])
            row["actions"] = done.get(row["room_id"], [])
        return page, (f"{page[-1]['updated_at']!r}~{page[-1]['room_id']}" if more else None)

    @guarded
    def occupancy(self, room_ids: list[str], since: float, step: float, count: int,
                  now: dict[str, int] | None = None) -> dict[str, list[int | None]]:
        """Each room's head count in `count` buckets of `step` seconds from `since`: the most
        that were in it during the bucket (the count it came in with, or a delivery's after it);
        None before anything is known.

        From `deliveries.participants`, as the decider wrote it: one indexed look back per room
        (at most SEED_LOOKBACK) for the count the window starts with, and one row per room and
        bucket that had deliveries, so a page costs the same whatever the rooms' traffic. A room
        with no counted delivery in the window has held the count its state holds now (`now`,
        room id to head count) all along: only a delivery changes it."""
        if not room_ids:
            return {}
        seeds, buckets = self._occupancy_rows(room_ids, since, step, count)
        now = now or {}
        series = {}
        for room_id in room_ids:
            carry, values, found = seeds.get(room_id), [], buckets.get(room_id, {})
            if not found:
                carry = now.get(room_id, carry)
            for k in range(count):
                peak_last = found.get(k)
                if peak_last is None:
                    values.append(carry)
                    continue
                peak, last = peak_last
                values.append(max(peak, carry) if carry is not None else peak)
                carry = last
            series[room_id] = values
        return series

    @guarded
    def _occupancy_rows(self, room_ids, since, step, count):
        counted = and_(deliveries.c.participants.is_not(None), deliveries.c.room_id.in_(room_ids))
        seed = (select(deliveries.c.participants)
                .where(deliveries.c.room_id == rooms.c.room_id, deliveries.c.received_at < since,
                       deliveries.c.received_at >= since - SEED_LOOKBACK, deliveries.c.participants.is_not(None))
                .order_by(deliveries.c.received_at.desc(), deliveries.c.id.desc()).limit(1)
                .scalar_subquery())
        offset = deliveries.c.received_at - literal_column(repr(float(since)))
        bucket = offset / literal_column(repr(float(step)))
        if self.db.dialect == "postgresql":
            bucket = func.floor(bucket)  # PostgreSQL's cast rounds; SQLite's truncates
        bucket = cast(bucket, Integer).label("k")
        grouped = (select(deliveries.c.room_id, bucket, func.max(deliveries.c.participants).label("peak"),
                          func.max(deliveries.c.received_at).label("last_at"))
                   .where(counted, deliveries.c.received_at >= since,
                          deliveries.c.received_at < since + step * count)
                   .group_by(deliveries.c.room_id, bucket).subquery())
        last = (select(func.max(deliveries.c.participants))
                .where(deliveries.c.room_id == grouped.c.room_id, deliveries.c.received_at == grouped.c.last_at,
                       deliveries.c.participants.is_not(None))
                .scalar_subquery())
        with self.db.read() as conn:
            seeds = {room: value for room, value in conn.execute(
                select(rooms.c.room_id, seed).where(rooms.c.room_id.in_(room_ids))) if value is not None}
            buckets: dict[str, dict[int, tuple[int, int]]] = {}
            for room, k, peak, after in conn.execute(select(grouped.c.room_id, grouped.c.k, grouped.c.peak, last)):
                buckets.setdefault(room, {})[int(k)] = (peak, after)
        return seeds, buckets

    @guarded
    def actions_page(self, *, status: str | None = None, limit: int = 50,
                     before: int | None = None) -> tuple[list[Row], int | None]:
        """Actions newest first, of one status or all; `before` is the last id of the previous page."""
        query = select(actions).order_by(actions.c.id.desc()).limit(limit + 1)
        if status is not None:
            query = query.where(actions.c.status == status)
        if before is not None:
            query = query.where(actions.c.id < before)
        with self.db.read() as conn:
            page = [dict(r) for r in conn.execute(query).mappings()]
        more = len(page) > limit
        page = page[:limit]
        return page, (page[-1]["id"] if more else None)

    @guarded
    def sweep_state(self) -> dict | None:
        """The sweep's row: its round, when it started and finished, rooms swept, when the next is due."""
        with self.db.read() as conn:
            row = conn.execute(select(sweeps).where(sweeps.c.name == SWEEP)).mappings().first()
            return dict(row) if row else None

    @guarded
    def workers_seen(self, since: float) -> list[Row]:
        """Workers heard from since `since`, most recently started first."""
        with self.db.read() as conn:
            return [dict(r) for r in conn.execute(
                select(workers).where(workers.c.seen_at >= since)
                .order_by(workers.c.started_at.desc(), workers.c.worker_id)).mappings()]


def _room_cursor(cursor: str) -> tuple[float | None, str]:
    """(updated_at, room_id) of a rooms page cursor; (None, room_id) for a bare room id."""
    if "~" not in cursor:
        return None, cursor
    at, _, room_id = cursor.partition("~")
    value = float(at)  # ValueError when unreadable
    if not math.isfinite(value):
        raise ValueError("not a rooms page cursor")
    return value, room_id
