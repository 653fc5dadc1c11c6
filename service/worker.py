"""The worker's loop: it decides the inbox's deliveries (decider.py), appends sweep rounds,
fires due `for:` timers, prunes old deliveries, and has its Actor (actor.py) carry out due
actions at VideoSDK, one piece of work at a time, the inbox first without starving the rest.
Timers are decided inside one transaction each, so a timer fires once.

How it fails: a store outage is logged and waited out; the loop never exits on one. An API
failure is data: `retrypolicy.py` decides what happens next.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
import time
from typing import Callable

from . import metrics, sweeps
from .actor import Actor
from .decider import Decider
from .errors import StoreUnavailable
from .planner import PendingTimer, fire_timer, recheck_timer
from .planrows import room_state, timer_write
from .rules.durations import format_duration
from .rules.model import RuleSet
from .store import Store

log = logging.getLogger("roomwarden.worker")


KEY_WAIT_SECONDS = 1.0  # how often deliveries waiting for a webhook key are tried again
LOOK_EVERY_SECONDS = 1.0  # PostgreSQL: a look at a quiet inbox, besides each NOTIFY
TURN_SECONDS = 1.0  # after a batch, due timers and actions go for at most this long, then the inbox


def default_worker_id() -> str:
    # The end of the host name (a pod's unique suffix), the pid, and random bits: pids repeat
    # across containers (often 1), and the lease is fenced by this id.
    return f"{socket.gethostname()[-30:]}:{os.getpid()}:{secrets.token_hex(3)}"



class Worker:
    def __init__(self, store: Store, rules: Callable[[], RuleSet], actor: Actor, *,
                 decider: Decider | None = None, acts: bool = True, clock: Callable[[], float] = time.time,
                 retention_days: float = 0.0):
        self.store = store
        self.rules = rules
        self.actor = actor  # carries out due actions (actor.py); its worker_id is this worker's
        self.decider = decider  # None: another process decides the inbox (tests of acting alone)
        self.acts = acts and actor.client is not None  # without acting, timers still fire, as dry-run
        self.worker_id = actor.worker_id
        self.clock = clock
        self._rules_changed = threading.Event()
        self._next_due: float | None = None  # from the last look at the store
        self._inbox_turn = False  # a batch was decided: timers and actions go until none is due,
        self._turn_ends = 0.0  # or until then (time.monotonic()): a backlog never keeps the inbox waiting
        self.turn_seconds = TURN_SECONDS
        self._drained = True  # the last batch decided all it could
        self._inbox_resume_at = 0.0  # while deliveries wait for a key, the inbox rests until then
        self._looked_at = float("-inf")  # when the decider last took a batch
        self._heard = False  # PostgreSQL: the idle wait was woken by an append's NOTIFY
        self._sweep_look_at = float("-inf")  # when to look at the sweep's round again
        self._sweep_behind: str | None = None  # the id of the last sweep this worker appended
        self.retention_days = retention_days  # 0: keep everything
        self._pruned_at: float | None = None

    # -- the loop ----------------------------------------------------------------------

    def run_once(self) -> bool:
        """Do one piece of due work: re-check timers after a reload, decide a batch of the inbox,
        fire a timer, or carry out an action. False when nothing was due.

        The inbox goes first, but a busy inbox never holds timers and actions back: after each
        batch, the calls that follow carry out what is due (one piece each) before the inbox has
        its turn again, for at most `turn_seconds`: a backlog of slow calls never keeps this
        decider from the inbox for longer. A timer never fires past a delivery for its room that
        arrived before it was due and is still in the inbox (it may cancel it: the store checks,
        store/timers.py); other rooms' timers fire however busy the inbox is. Each
        look at an empty inbox or at what is due is one read, so an idle worker never takes a
        write lock. While every delivery it takes waits for a webhook key, the inbox is tried
        again every KEY_WAIT_SECONDS, not on every pass.
        """
        if self._rules_changed.is_set():
            self._rules_changed.clear()
            try:
                self.recheck_timers()
            except StoreUnavailable:
                self._rules_changed.set()  # not done: do it once the store is back
                raise
            return True
        turn_given = self._inbox_turn
        if self.decider is not None and not turn_given and self.sweep_once():
            return True  # sweeps appended to the inbox: the decider takes them next
        if self.decider is not None and not turn_given and self._inbox_may_hold():
            self._looked_at, self._heard = self.clock(), False
            decided = self.decider.decide_once()  # an empty inbox costs one read (store.inbox.deciding)
            self._drained = len(decided) < self.decider.batch
            if decided:
                self._inbox_turn = True  # what it decided may be due now: act on it first
                self._turn_ends = time.monotonic() + self.turn_seconds
                return True
            if self.decider.kept:  # all it took waits for a key: look again in a while, not at
                self._inbox_resume_at = self.clock() + KEY_WAIT_SECONDS  # once (a write each time)
        now = self.clock()
        action_due, timer_due = self.store.outbox.due_work(now)
        self._next_due = min((t for t in (action_due, timer_due) if t is not None), default=None)
        if (timer_due is not None and timer_due <= now and self.fire_one_timer()) or (
                self.acts and action_due is not None and action_due <= now and self.actor.act_once()):
            if time.monotonic() >= self._turn_ends:
                self._inbox_turn = False  # the turn is over (or there was none): the inbox next
            return True
        self._inbox_turn = False  # nothing due (or held back): the inbox's turn again
        return turn_given  # a turn given away and now over: not idle, look at the inbox at once

    def sweep_once(self) -> bool:
        """When a sweep round is due (some rule is `on: sweep`) or this worker holds one, append
        the next rooms' sweeps to the inbox (one transaction). True when it appended some.

        The next chunk waits until the last one has been decided (its last sweep has left the
        inbox), or until this worker's decider finds nothing more it can take (what is left waits
        for a key, or is stuck), so a delivery that arrives during a round waits behind about one
        chunk of sweeps, not the round. While the owner waits its lease is not renewed: if the
        decider is behind by more than sweeps.LEASE_SECONDS, another worker carries the round on
        (and waits on its own chunk in turn), so the inbox may then hold two chunks."""
        every = self.rules().sweep_every
        now = self.clock()
        if every is None or now < self._sweep_look_at:
            return False
        if self._sweep_behind is not None and not self._drained and self.store.inbox.in_inbox(self._sweep_behind):
            return False  # the decider is still busy with what came before the next chunk
        turn = self.store.sweeps.sweep_turn(self.worker_id, every, sweeps.CHUNK, sweeps.LEASE_SECONDS)
        self._sweep_look_at = turn.next_look_at
        self._sweep_behind = turn.last_id if turn.appended and not turn.finished else None
        if turn.appended:
            self._drained = False  # there is work in the inbox again
        if turn.started:
            metrics.SWEEP_ROUNDS.inc()
            log.info("sweep round %d started (every %s)", turn.round, format_duration(every))
        if turn.appended:
            metrics.SWEPT_ROOMS.inc(turn.appended)
        if turn.finished and (turn.started or turn.appended):
            log.info("sweep round %d: all %d open room(s) appended to the inbox", turn.round, turn.rooms)
            self._inbox_turn = False  # the inbox next, at once
        return turn.appended > 0

    def _inbox_may_hold(self) -> bool:
        """Whether the inbox may hold something this decider can take now. After a batch that
        drained it, PostgreSQL's NOTIFY says when something came (no statement to ask); a look
        every LOOK_EVERY_SECONDS still finds rows another decider left when it died."""
        now = self.clock()
        if now < self._inbox_resume_at:
            return False
        if not self._drained or self.decider.kept:
            return True
        news = self._heard or self._listen(0)  # None on SQLite: deciding() itself looks, with one read
        return news is None or news or now - self._looked_at >= LOOK_EVERY_SECONDS

    def rules_reloaded(self, rule_set: RuleSet) -> None:
        """Called by the rules watcher; the re-check runs in the worker's own loop."""
        self._rules_changed.set()

    def run(self, stop: threading.Event, poll_interval: float) -> None:
        """Work until `stop` is set; an in-flight action is finished and recorded first."""
        log.info("worker %s started%s", self.worker_id, "" if self.acts else " (not acting: dry run)")
        self.actor.stop = stop
        self._rules_changed.set()  # the rules may have changed while no worker ran: re-check timers first
        while not stop.is_set():
            try:
                self.actor.report_breaker()
                self.prune_if_due()
                busy = self.run_once()
            except StoreUnavailable as exc:
                log.warning("store unavailable, waiting: %s", exc)
                stop.wait(min(5.0, max(poll_interval * 10, 0.5)))
                continue
            except Exception:  # a bug must not stop the worker: log it, back off, go on
                log.exception("unexpected error in the worker loop; going on")
                stop.wait(min(5.0, max(poll_interval * 10, 0.5)))
                continue
            if not busy:  # sleep until the next thing is due, but look again within poll_interval
                wait, now = poll_interval, self.clock()
                if self._next_due is not None and self._next_due > now:  # (overdue: held back, by the
                    wait = min(poll_interval, self._next_due - now)  # breaker or the rate limit)
                heard = None if self.decider is None else self._listen(wait)
                if heard is None:
                    stop.wait(wait)
                self._heard = bool(heard)  # an append woke it: the inbox's turn, at once
        log.info("worker %s stopped", self.worker_id)

    def _listen(self, wait: float) -> bool | None:
        """PostgreSQL: wait for an append to the inbox, woken at once by its NOTIFY; None on SQLite."""
        try:
            return self.store.inbox.wait_for_inbox(wait)
        except Exception:  # noqa: BLE001 - never let the wake-up stop the loop; polling still works
            log.exception("waiting for the inbox failed; polling instead")
            return None

    def prune_if_due(self, every: float = 3600.0) -> int:
        """Delete deliveries older than the retention period, at most once an `every` seconds."""
        now = self.clock()
        if self.retention_days <= 0 or (self._pruned_at is not None and now - self._pruned_at < every):
            return 0
        removed = self.store.history.prune(now - self.retention_days * 86400)
        self._pruned_at = now  # only once done: a store outage must not skip retention for an hour
        if removed:
            log.info("pruned %d deliveries older than %g days", removed, self.retention_days)
        return removed

    # -- timers -------------------------------------------------------------------------

    def fire_one_timer(self) -> bool:
        rule_set = self.rules()
        now = self.clock()

        def decide(timer: PendingTimer, stored: dict, acted: set[str]):
            return timer_write(fire_timer(rule_set, timer, now, room_state(timer.room_id, stored),
                                          acted, acts=self.acts and timer.trigger_verified))

        write = self.store.timers.fire_due_timer(decide)
        if write is not None:
            metrics.TIMERS.labels(verdict=write.verdict).inc()
            if write.decision is not None:
                metrics.DECISIONS.labels(rule=write.decision.rule, outcome=write.decision.outcome).inc()
            log.info("timer %s: %s (%s)", write.decision.key if write.decision else "", write.verdict,
                     write.reason)
        return write is not None

    def recheck_timers(self) -> int:
        """After a reload: cancel or re-check each pending timer whose rule went or changed."""
        rule_set = self.rules()
        changed = 0
        for timer_id, name, fingerprint in self.store.timers.pending_timers_by_rule():
            rule = rule_set.rule(name)
            if rule is not None and rule.fingerprint == fingerprint:
                continue  # its rule did not change: nothing to write
            now = self.clock()

            def decide(timer: PendingTimer, stored: dict, acted: set[str]):
                return timer_write(recheck_timer(rule_set, timer, now, room_state(timer.room_id, stored)))

            write = self.store.timers.recheck_timer(timer_id, decide)
            if write is not None and write.reason != "unchanged":
                changed += 1
                log.info("timer %s after reload: %s (%s)", timer_id, write.verdict, write.reason)
        return changed

