"""The processing pipeline for one verified, parsed delivery: decide, then record, atomically.

Rules are evaluated before the transaction (the engine is pure and fast); the
delivery, its decisions and the actions they cause are then written in one
transaction. When `ingest` returns, all of it is durable; when it raises
(`StoreUnavailable`), none of it is, and the sender should retry.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from typing import Callable

from .events import Event
from .rules.engine import decide
from .rules.fields import Facts
from .rules.model import RuleSet
from .store import NewDecision, NewDelivery, Receipt, Store


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
        decisions = decide(rule_set, Facts(event=event, now=now))
        delivery = NewDelivery(
            id=new_delivery_id(now), received_at=now, event_type=event.type,
            room_id=event.room_id, session_id=event.session_id,
            participant_id=event.participant_id, known=event.known, verified=verified,
            body_sha256=hashlib.sha256(raw).hexdigest(), body=raw.decode("utf-8"),
            rules_hash=rule_set.sha256,
        )
        return self.store.record_delivery(
            delivery,
            [NewDecision(d.rule, d.action, d.room_id, d.session_id, d.key,
                         d.trace.to_dict() if d.trace else None) for d in decisions],
            acts=self.acts and verified,
        )
