"""The processing pipeline for one verified, parsed delivery: decide and record, atomically.

The store locks the room, hands its state, timers and action keys to the pure
planner, and writes the delivery, the room's new state, the decisions, the
actions and the timers they cause, and the timers they cancel, in one
transaction. When `ingest` returns, all of it is durable; when it raises
(`StoreUnavailable`), none of it is, and the sender should retry.

A delivery whose body could not be read as its type needs (`Event.problem`) is
stored with that problem and nothing else: the planner is not asked about it.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from typing import Callable

from .events import Event
from .planner import plan_event
from .plans import pending_timer, plan_write, room_state
from .rules.model import RuleSet
from .store import NewDelivery, Receipt, Store


def new_delivery_id(now: float) -> str:
    """Time-ordered and unguessable: milliseconds in hex, then 64 random bits."""
    return f"{int(now * 1000):011x}{secrets.token_hex(8)}"


class Ingestor:
    def __init__(self, store: Store, rules: Callable[[], RuleSet], *, acts: bool,
                 clock: Callable[[], float] = time.time):
        self.store = store
        self.rules = rules  # called per delivery, so a reload takes effect at once
        self.acts = acts
        self.clock = clock

    def ingest(self, raw: bytes, event: Event, *, verified: bool) -> Receipt:
        now = self.clock()
        rule_set = self.rules()
        acts = self.acts and verified

        def plan(stored, timer_rows, acted):
            return plan_write(plan_event(rule_set, event, now, room_state(event.room_id, stored),
                                         [pending_timer(row) for row in timer_rows], acted, acts=acts))

        delivery = NewDelivery(
            id=new_delivery_id(now), received_at=now, event_type=event.type,
            room_id=event.room_id, session_id=event.session_id,
            participant_id=event.participant_id, known=event.known, verified=verified,
            body_sha256=hashlib.sha256(raw).hexdigest(), body=raw.decode("utf-8"),
            rules_hash=rule_set.sha256, problem=event.problem,
        )
        return self.store.ingest(delivery, plan)
