"""Versioned schema migrations: small named steps, applied in order, each in its transaction.

`apply(conn)` runs the steps a database has not seen and returns their names.
Concurrent callers are safe: on PostgreSQL an advisory lock serializes them; on
SQLite the write transaction (BEGIN IMMEDIATE) does.

A step, once released, never changes: a later change to the schema is a new step
(tests/test_store.py checks that the steps together build what tables.py declares).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from sqlalchemy import Connection, inspect, select, text

from . import tables

# pg_advisory_xact_lock key: "roomwarden" in ASCII, folded into a bigint.
_LOCK_KEY = int.from_bytes(b"roomwrdn", "big") & 0x7FFF_FFFF_FFFF_FFFF


STEPS_DIR = Path(__file__).with_name("steps")


def _sql_file(name: str) -> Callable[[Connection], None]:
    """A step written as SQL, one file per dialect (`steps/NAME.DIALECT.sql`), frozen once released.

    Plain SQL rather than `metadata.create_all`: tables.py describes the schema as it is now,
    and a step must create what it created when it shipped, whatever tables.py says later."""
    def step(conn: Connection) -> None:
        path = STEPS_DIR / f"{name}.{conn.dialect.name}.sql"
        lines = [line for line in path.read_text().splitlines() if not line.lstrip().startswith("--")]
        for statement in "\n".join(lines).split(";\n"):
            if statement.strip():
                conn.exec_driver_sql(statement)
    return step


STEPS: tuple[tuple[int, str, Callable[[Connection], None]], ...] = (
    (1, "initial: deliveries, decisions, actions, attempts, rooms, timers, rules_versions",
     _sql_file("0001_initial")),
    (2, "deliveries.problem (kept but unreadable); attempts.answer and attempts.doubt (what a 2xx said)",
     _sql_file("0002_unreadable_and_answers")),
    (3, "inbox: accepted deliveries not yet decided on", _sql_file("0003_inbox")),
    (4, "workers: each worker's circuit breaker, as last reported", _sql_file("0004_workers")),
    (5, "sweeps: rooms.closed_at, and the sweep's round", _sql_file("0005_sweeps")),
    (6, "deliveries.participants: the room's head count once each delivery was decided",
     _sql_file("0006_occupancy")),
)


def current_version(conn: Connection) -> int:
    if not inspect(conn).has_table("schema_migrations"):
        return 0
    versions = conn.execute(select(tables.schema_migrations.c.version)).scalars().all()
    return max(versions, default=0)


def apply(conn: Connection) -> list[str]:
    """Bring the schema up to date inside the caller's transaction."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _LOCK_KEY})
    tables.schema_migrations.create(conn, checkfirst=True)
    done = current_version(conn)
    applied = []
    for version, name, step in STEPS:
        if version <= done:
            continue
        step(conn)
        conn.execute(tables.schema_migrations.insert().values(
            version=version, name=name, applied_at=time.time()))
        applied.append(f"{version}: {name}")
    return applied


LATEST = STEPS[-1][0]
