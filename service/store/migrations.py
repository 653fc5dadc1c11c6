"""Versioned schema migrations: small named steps, applied in order, each in its transaction.

`apply(conn)` runs the steps a database has not seen and returns their names.
Concurrent callers are safe: on PostgreSQL an advisory lock serializes them; on
SQLite the write transaction (BEGIN IMMEDIATE) does.

A step, once released, never changes: a later change to the schema is a new step.
"""

from __future__ import annotations

import time
from typing import Callable

from sqlalchemy import Connection, inspect, select, text

from . import tables

# pg_advisory_xact_lock key: "roomwarden" in ASCII, folded into a bigint.
_LOCK_KEY = int.from_bytes(b"roomwrdn", "big") & 0x7FFF_FFFF_FFFF_FFFF


def _initial(conn: Connection) -> None:
    # Step 1 is still open: no release has shipped it. From the first release on, it is
    # frozen, and a schema change is a new step that alters tables.
    tables.metadata.create_all(conn, tables=[
        tables.deliveries, tables.actions, tables.timers, tables.decisions, tables.attempts,
        tables.rooms, tables.rules_versions,
    ])


STEPS: tuple[tuple[int, str, Callable[[Connection], None]], ...] = (
    (1, "initial: deliveries, decisions, actions, attempts, rooms, timers, rules_versions", _initial),
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
