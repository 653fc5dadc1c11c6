"""The schema, as SQLAlchemy Core tables. Times are seconds since the epoch (UTC)."""

from __future__ import annotations

from sqlalchemy import (JSON, BigInteger, Boolean, Column, Float, ForeignKey, Index, Integer, MetaData,
                        String, Table, Text, text)

metadata = MetaData()

schema_migrations = Table(
    "schema_migrations", metadata,
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("name", String(100), nullable=False),
    Column("applied_at", Float, nullable=False),
)

# Every accepted delivery, byte for byte. VideoSDK sends no event id, so each
# arrival is its own row; `body_sha256` groups byte-identical bodies.
deliveries = Table(
    "deliveries", metadata,
    Column("id", String(32), primary_key=True),
    Column("received_at", Float, nullable=False),
    Column("event_type", String(100), nullable=False),
    Column("room_id", String(128)),
    Column("session_id", String(128)),
    Column("participant_id", String(256)),
    Column("known", Boolean, nullable=False),
    Column("verified", Boolean, nullable=False),
    Column("body_sha256", String(64), nullable=False),
    Column("body", Text, nullable=False),
    Column("rules_hash", String(64), nullable=False),
    # Why a body of a known type could not be read (a field it needs is missing or invalid):
    # kept, answered 2xx, never decided on. Null when it was read.
    Column("problem", Text),
    # How many were in the room once the delivery was decided (rooms.py's presence): the rooms
    # list's occupancy sparklines. Null when it told nothing about a room, and before step 6.
    Column("participants", Integer),
    Index("ix_deliveries_room", "room_id", "received_at"),
    Index("ix_deliveries_room_id", "room_id", "id"),
    Index("ix_deliveries_received", "received_at"),
    Index("ix_deliveries_body", "body_sha256"),
)

# The inbox: deliveries accepted by the web request and not yet decided on. The request only
# appends here (durably) and answers; the decider (decider.py) moves each row, in arrival order
# per room, into `deliveries` with what it decides, in one transaction, and deletes it here.
inbox = Table(
    "inbox", metadata,
    # Arrival order. A BIGINT identity on PostgreSQL; on SQLite the rowid (a new row always
    # gets more than every row present, which is the order needed).
    Column("seq", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("id", String(32), nullable=False, unique=True),  # the delivery id answered to the sender
    Column("received_at", Float, nullable=False),
    Column("room_id", String(128)),  # data.meetingId when it is a valid id: a room is decided in order
    Column("body", Text, nullable=False),  # the raw body, as received (UTF-8 JSON: checked in the request)
    Column("signature", Text),  # the videosdk-signature header, kept to verify later
    # true: verified in the request; null: not yet (no key could be had); false: verification is off
    Column("verified", Boolean),
    Index("ix_inbox_room", "room_id", "seq"),
)

# One row per rule that matched a delivery: the record of why.
decisions = Table(
    "decisions", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("delivery_id", String(32), ForeignKey("deliveries.id"), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("rule", String(100), nullable=False),
    Column("action", String(32), nullable=False),
    Column("room_id", String(128), nullable=False),
    Column("session_id", String(128)),
    Column("action_key", String(400), nullable=False),
    # scheduled | duplicate | dry-run | protected | timer-started | timer-running
    # (see planner.py); a decision made when a timer fired has timer_id set.
    Column("outcome", String(32), nullable=False),
    Column("action_id", Integer, ForeignKey("actions.id")),
    Column("timer_id", Integer, ForeignKey("timers.id")),
    Column("trace", JSON),
    Index("ix_decisions_delivery", "delivery_id"),
    Index("ix_decisions_room", "room_id", "created_at"),
    Index("ix_decisions_created", "created_at"),  # the dashboard's decisions per minute
    Index("ix_decisions_rule", "rule", "outcome"),  # the dashboard's count by rule
)

# The outbox: actions to carry out at VideoSDK. `key` (rule|room|session) is unique,
# which is what makes a rule fire at most once per room and session.
actions = Table(
    "actions", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("key", String(400), nullable=False, unique=True),
    Column("kind", String(32), nullable=False),
    Column("room_id", String(128), nullable=False),
    Column("session_id", String(128)),
    Column("rule", String(100), nullable=False),
    Column("delivery_id", String(32), ForeignKey("deliveries.id"), nullable=False),
    # pending -> done | failed | dead | cancelled; dry-run rows are never claimed.
    Column("status", String(16), nullable=False),
    Column("confirm", String(32)),  # a check made just before acting (rule's `confirm:`)
    Column("attempts", Integer, nullable=False, default=0),
    Column("due_at", Float, nullable=False),
    Column("lease_owner", String(64)),
    Column("lease_until", Float),
    Column("last_status", Integer),
    Column("last_error", Text),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Index("ix_actions_due", "status", "due_at"),
    Index("ix_actions_room", "room_id"),
    Index("ix_actions_status", "status", "id"),  # the dashboard's actions by status, newest first
    Index("ix_actions_created", "created_at"),  # the dashboard's actions per minute
)

# Every call made for an action, whatever came of it.
attempts = Table(
    "attempts", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("action_id", Integer, ForeignKey("actions.id"), nullable=False),
    Column("number", Integer, nullable=False),
    Column("worker", String(64), nullable=False),
    Column("started_at", Float, nullable=False),
    Column("latency_ms", Float, nullable=False),
    Column("http_status", Integer),
    Column("outcome", String(16), nullable=False),  # done | retry | failed | dead
    Column("error", Text),
    Column("note", Text),  # what a confirm check found, for instance
    Column("next_due_at", Float),
    Column("answer", JSON),  # what was read of a 2xx answer: deactivate's `disabled`, a session's state
    Column("doubt", Text),  # why that answer leaves the action's effect in doubt (`disabled: false`)
    Index("ix_attempts_action", "action_id"),
    Index("ix_attempts_started", "started_at"),
)

# What roomwarden knows about each room (see rooms.py), updated with each of its deliveries.
rooms = Table(
    "rooms", metadata,
    Column("room_id", String(128), primary_key=True),
    Column("state", JSON, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("last_delivery_id", String(32)),
    # When roomwarden deactivated the room (or VideoSDK said it does not exist): it is not swept
    # again until a delivery brings it back to life (which sets this back to NULL).
    Column("closed_at", Float),
    Index("ix_rooms_updated", "updated_at", "room_id"),  # the dashboard's rooms, most recent first
)

# `for:` timers: a rule whose condition must hold a while before it acts. At most one
# pending timer per key (rule|room|session), enforced by a partial unique index.
timers = Table(
    "timers", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("key", String(400), nullable=False),
    Column("rule", String(100), nullable=False),
    Column("fingerprint", String(32), nullable=False),
    Column("room_id", String(128), nullable=False),
    Column("session_id", String(128)),
    Column("action", String(32), nullable=False),
    Column("delivery_id", String(32), ForeignKey("deliveries.id"), nullable=False),  # what started it
    Column("started_at", Float, nullable=False),
    Column("due_at", Float, nullable=False),
    Column("status", String(16), nullable=False),  # pending -> fired | cancelled
    Column("resolved_at", Float),
    Column("resolved_by", String(32)),  # the delivery that cancelled it, if one did
    Column("reason", Text),
    Column("notes", JSON),  # re-checks after reloads: [{"at", "note"}]
    Index("ux_timers_pending", "key", unique=True,
          sqlite_where=text("status = 'pending'"), postgresql_where=text("status = 'pending'")),
    Index("ix_timers_due", "status", "due_at"),
    Index("ix_timers_room", "room_id"),
)

# Every rules file that was ever in force, by hash: what decided each delivery, and what a
# process falls back to when the file it finds at start-up does not load.
rules_versions = Table(
    "rules_versions", metadata,
    Column("sha256", String(64), primary_key=True),
    Column("source", Text, nullable=False),
    Column("text", Text, nullable=False),
    Column("first_loaded_at", Float, nullable=False),
    Column("last_loaded_at", Float, nullable=False),
)

# Each worker process's view of the VideoSDK API (its circuit breaker), reported when it changes
# and every REPORT_EVERY seconds (service/actor.py): what the dashboard shows of the breakers.
workers = Table(
    "workers", metadata,
    Column("worker_id", String(128), primary_key=True),
    Column("started_at", Float, nullable=False),
    Column("seen_at", Float, nullable=False),
    Column("breaker_state", String(16), nullable=False),  # closed | open | half-open
    Column("breaker_failures", Integer, nullable=False),  # in a row
    Column("breaker_opened_at", Float),
    Column("next_probe_at", Float),
    Index("ix_workers_seen", "seen_at"),
)

# The sweep (service/sweeps.py): one row, `rooms`. A round appends a sweep to the inbox for each
# room not closed, in chunks by room id (`cursor`), under a lease so that one worker at a time
# does it and another takes over from the cursor if it dies; the next round starts `every`
# after this one started, and never before this one has finished.
sweeps = Table(
    "sweeps", metadata,
    Column("name", String(32), primary_key=True),
    Column("round", Integer, nullable=False),
    Column("started_at", Float),
    Column("finished_at", Float),
    Column("next_at", Float, nullable=False),
    Column("cursor", String(128)),  # the last room id swept in this round
    Column("rooms", Integer, nullable=False),  # rooms swept in this round so far
    Column("owner", String(128)),
    Column("lease_until", Float),
)
