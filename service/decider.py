"""The decider: takes accepted deliveries out of the inbox, in arrival order per room, and decides.

For each delivery of a batch (one transaction, `Store.deciding`): a body the web request
could not verify yet (no key then) is verified now, or left for later, with every later
delivery of its room, while no key can be had; one whose signature then fails is recorded
as refused and never acted on. The rest is read into an `Event`; the room's state, timers and
action keys come out of the store, the pure planner decides, and the delivery is recorded with
the plan. A delivery's decisions are made as of its arrival time, as if decided in the
request, so a slow decider delays actions but never changes them.

How it fails: a store outage raises StoreUnavailable and nothing of the batch is kept; the
rows stay in the inbox for the next try. A body that cannot be read at all (it passed the
request's checks, so this is a bug or a tampered database) is recorded with its problem,
never decided on and never retried forever.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, replace
from typing import Callable

from . import metrics
from .errors import KeyUnavailable, PayloadInvalid, SignatureInvalid, StoreUnavailable
from .events import Event, parse_event, read_envelope
from .planner import plan_event
from .planrows import plan_write, room_state
from .rules.model import RuleSet
from .signature import SignatureVerifier
from .sweeps import is_sweep_id
from .store import NewDelivery, Receipt
from .store.inbox import Inbox, InboxBatch, InboxRow

log = logging.getLogger("roomwarden.decider")

BATCH = 200  # deliveries per transaction: one fsync shared, and a bounded time holding the lock


@dataclass(frozen=True)
class Decided:
    """What became of one inbox row."""

    delivery_id: str
    event_type: str
    outcome: str  # accepted | ignored | unreadable | refused (see metrics.DELIVERIES)
    receipt: Receipt


class Decider:
    def __init__(self, inbox: Inbox, rules: Callable[[], RuleSet], *, acts: bool,
                 verifier: SignatureVerifier | None, batch: int = BATCH,
                 clock: Callable[[], float] = time.time):
        self.inbox = inbox
        self.rules = rules  # called per batch, so a reload takes effect at the next one
        self.acts = acts
        self.verifier = verifier
        self.batch = batch
        self.clock = clock
        self.kept = 0  # rows the last batch left in the inbox: waiting for a key to verify them, or stuck
        self._current: InboxRow | None = None  # the row being decided, to blame for an exception
        self._failed: dict[int, str] = {}  # inbox seq -> why it could not be decided (recorded next)
        self._stuck: set[int] = set()  # inbox seqs that could not even be recorded: skipped
        self._defer = True  # a batch's room states and decisions written at its end (InboxBatch)

    def decide_once(self) -> list[Decided]:
        """Decide one batch of the oldest undecided deliveries; [] when there were none to take.

        A delivery that cannot be decided (a bug raised while deciding or recording it) must not
        hold up every delivery behind it. The batch is rolled back and taken again, that row
        recorded alone as not decided, with the error as its problem (never acted on); if even
        that fails, the row stays in the inbox, skipped until this process restarts, and the
        rest go on. Each is logged with its traceback. A batch whose writes left for its end fail
        (InboxBatch) is taken again with each row written as it is recorded, to find the row.
        """
        rule_set = self.rules()
        while True:  # each pass moves one row on (failed, then stuck), or writes row by row, or returns, or raises
            try:
                return self._decide_batch(rule_set)
            except StoreUnavailable:
                raise
            except Exception as exc:
                row = self._current
                if row is None and self._defer:  # the writes left for the batch's end failed: take
                    self._defer = False          # it again writing each row as it goes, to find whose
                    log.warning("a batch's writes failed at its end (%s); deciding it again row by row",
                                type(exc).__name__)
                    continue
                if row is None or row.seq in self._stuck:
                    raise  # not one row's fault (the commit, say): the worker logs it and backs off
                if row.seq not in self._failed:
                    self._failed[row.seq] = (f"not decided: internal error ({type(exc).__name__}: "
                                             f"{str(exc)[:160]})")
                    log.exception("delivery %s could not be decided; it is recorded with its error "
                                  "and the rest go on", row.id,
                                  extra={"fields": {"delivery": row.id, "room": row.room_id}})
                else:
                    del self._failed[row.seq]
                    self._stuck.add(row.seq)
                    log.exception("delivery %s could not be recorded either; it stays in the inbox (seq %d) "
                                  "for an operator, and the deliveries after it are decided", row.id,
                                  row.seq, extra={"fields": {"delivery": row.id, "room": row.room_id}})

    def _decide_batch(self, rule_set: RuleSet) -> list[Decided]:
        decided: list[Decided] = []
        recorded_failed: list[int] = []
        self.kept, self._current = 0, None
        with self.inbox.deciding(self.batch, defer=self._defer) as batch:
            waiting: set[str | None] = set()  # rooms whose earlier delivery waits for a key
            for row in batch.rows:
                self._current = row
                if row.seq in self._stuck or row.room_id in waiting:
                    batch.keep(row)
                    self.kept += 1
                    continue
                if row.seq in self._failed:
                    result = self._record_failed(batch, row, rule_set)
                    recorded_failed.append(row.seq)
                else:
                    result = self._decide(batch, row, rule_set)
                if result is None:
                    waiting.add(row.room_id)
                    batch.keep(row)
                    self.kept += 1
                else:
                    decided.append(result)
            self._current = None  # what fails from here (the delete, the commit) is no row's fault
        self._defer = True
        for seq in recorded_failed:
            del self._failed[seq]
        for result in decided:  # counted once committed, not for a batch that rolled back
            metrics.count_delivery(result.event_type, result.outcome)
            metrics.count_decisions(result.receipt.decisions)
        return decided

    def _record_failed(self, batch: InboxBatch, row: InboxRow, rule_set: RuleSet) -> Decided:
        """A row that raised while being decided: recorded with the error as its problem."""
        problem = self._failed[row.seq]
        raw = row.body.encode("utf-8")
        try:
            event_type = read_envelope(raw)[0]
        except PayloadInvalid:
            event_type = "unreadable"
        receipt = batch.record(row, NewDelivery(
            id=row.id, received_at=row.received_at, event_type=event_type, room_id=row.room_id,
            session_id=None, participant_id=None, known=False, verified=bool(row.verified),
            body_sha256=hashlib.sha256(raw).hexdigest(), body=row.body, rules_hash=rule_set.sha256,
            problem=problem), None)
        log.error("delivery %s (%s) kept, not decided on: %s", row.id, event_type, problem,
                  extra={"fields": {"delivery": row.id, "event": event_type, "room": row.room_id,
                                    "problem": problem}})
        return Decided(row.id, event_type, "unreadable", receipt)

    def drain(self, limit: int = 1_000_000) -> list[Decided]:
        """Decide until the inbox holds nothing this decider can take now (tests, shutdown)."""
        out: list[Decided] = []
        while len(out) < limit:
            more = self.decide_once()
            if not more:
                return out
            out.extend(more)
        return out

    def _decide(self, batch: InboxBatch, row: InboxRow, rule_set: RuleSet) -> Decided | None:
        raw = row.body.encode("utf-8")
        verified, refused = row.verified, None
        if verified is None:
            try:
                self._verifier().verify(raw, row.signature)
                verified = True
            except KeyUnavailable:
                return None  # still no key: this room waits, in order
            except SignatureInvalid as exc:
                verified, refused = False, f"refused: {exc.message} (checked once a key could be had)"
        sweep = is_sweep_id(row.id)  # raised by this service (sweeps.py), never a delivery
        try:
            event = parse_event(raw, sweep=sweep)
        except PayloadInvalid as exc:  # the request checked the envelope: only a bug comes here
            event = Event(type="unreadable", data={}, known=False, problem=exc.message, room_id=row.room_id)
        problem = refused or event.problem

        def as_recorded(participants: int | None = None) -> NewDelivery:
            return NewDelivery(
                id=row.id, received_at=row.received_at, event_type=event.type,
                room_id=event.room_id or row.room_id, session_id=event.session_id,
                participant_id=event.participant_id, known=event.known, verified=bool(verified),
                body_sha256=hashlib.sha256(raw).hexdigest(), body=row.body, rules_hash=rule_set.sha256,
                problem=problem, participants=participants)

        if problem is not None:
            delivery = as_recorded()
            receipt = batch.record(row, delivery, None)
            outcome = "refused" if refused else "unreadable"
            log.warning("delivery %s (%s) kept, not decided on: %s", row.id, event.type, problem,
                        extra={"fields": {"delivery": row.id, "event": event.type, "room": delivery.room_id,
                                          "problem": problem}})
            return Decided(row.id, event.type, outcome, receipt)
        # Decided as of its arrival: timers run from when the event came, not from when it was read.
        now = row.received_at
        acts = self.acts and bool(verified)
        room_id = event.room_id if event.known else None
        if room_id is None:
            write = plan_write(plan_event(rule_set, event, now, None, [], set(), acts=acts))
        else:
            stored, timers, acted = batch.room_inputs(room_id)
            write = plan_write(plan_event(rule_set, event, now, room_state(room_id, stored),
                                          timers, acted, acts=acts))
        # With the head count as decided (the rooms list's sparklines, the room page's check).
        delivery = as_recorded(len(write.room_state["participants"]) if write.room_state is not None else None)
        if sweep:  # no news from the room: its state, its last delivery and closed mark stay as they are
            write = replace(write, room_state=None)
        receipt = batch.record(row, delivery, write)
        if receipt.decisions or receipt.cancelled:
            log.info("delivery %s (%s) room=%s: %s", row.id, event.type, room_id,
                     ", ".join(f"{d.rule}:{d.outcome}" for d in receipt.decisions) or "no decision",
                     extra={"fields": {"delivery": row.id, "event": event.type, "room": room_id,
                                       "decisions": [f"{d.rule}:{d.outcome}" for d in receipt.decisions],
                                       "cancelled_timers": list(receipt.cancelled) or None}})
        return Decided(row.id, event.type, "accepted" if event.known else "ignored", receipt)

    def _verifier(self) -> SignatureVerifier:
        if self.verifier is None:  # rows are stored unverified only when verification is on
            raise KeyUnavailable("this process has no verifier")
        return self.verifier
