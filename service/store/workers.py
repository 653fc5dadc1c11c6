"""Each worker's circuit breaker, as the worker last reported it (the dashboard reads it: pages.py)."""

from __future__ import annotations

from sqlalchemy import delete

from .database import Database
from .guard import guarded
from .tables import workers

FORGET_AFTER = 86400.0  # seconds: a worker not heard from for a day is dropped from the table


class Workers:
    def __init__(self, db: Database):
        self.db = db

    @guarded
    def report_worker(self, worker_id: str, started_at: float, state: str, failures: int,
                      opened_at: float | None, next_probe_at: float | None) -> None:
        """Record a worker's breaker as it is now (one row per worker, replaced each time)."""
        now = self.db.clock()
        values = {"started_at": started_at, "seen_at": now, "breaker_state": state,
                  "breaker_failures": failures, "breaker_opened_at": opened_at, "next_probe_at": next_probe_at}
        with self.db.write() as conn:
            conn.execute(self.db.insert(workers).values(worker_id=worker_id, **values)
                         .on_conflict_do_update(index_elements=[workers.c.worker_id], set_=values))
            conn.execute(delete(workers).where(workers.c.seen_at < now - FORGET_AFTER))
