"""The worker: decides the inbox's deliveries, fires due `for:` timers, and carries out due
actions at VideoSDK.

Guarantee: each action is attempted until it is done, failed for good,
cancelled or dead. An action is called at least once, and more than once only
when a worker dies (or loses its store) between making the call and recording
it; the lease then runs out and another worker calls again. Deactivating a
room twice leaves it deactivated, so that window costs a repeated call, not a
wrong one. Timers are decided inside one transaction each, so a timer fires once.

Just before acting, the worker checks the rules in force: a room that became
protected is not touched, and a rule's `confirm: active-participants` asks
VideoSDK whether anyone is in the session (anyone there: cancelled, with why).

How it fails: a store outage is logged and waited out; the loop never exits on
one. An API failure is data: `retrypolicy.py` decides what happens next.
"""

from __future__ import annotations

import logging
import os
import random
import secrets
import socket
import threading
import time
from dataclasses import dataclass, replace
from typing import Callable

from . import acting, answers, metrics, sweeps
from .breaker import CircuitBreaker
from .decider import Decider
from .errors import StoreUnavailable
from .outcomes import Attempt
from .planner import fire_timer, recheck_timer
from .planrows import pending_timer, room_state, timer_write
from .retrypolicy import RetryPolicy, Verdict
from .rules.durations import format_duration
from .rules.model import RuleSet
from .store import AttemptRecord, ClaimedAction, Store, TimerRow
from .videosdk import ApiResult, VideoSDKClient

log = logging.getLogger("roomwarden.worker")


KEY_WAIT_SECONDS = 1.0  # how often deliveries waiting for a webhook key are tried again
PACED_CONFIRM = "no-live-session"  # the check settings.max_checks_per_minute paces (a sweep's)
PROBE_ROOM = "roomwarden-probe"  # the room the breaker's probe asks about (GET /v2/rooms/{roomId})
LOOK_EVERY_SECONDS = 1.0  # PostgreSQL: a look at a quiet inbox, besides each NOTIFY
REPORT_EVERY = 15.0  # seconds between the worker's reports of its breaker, besides each change
TURN_SECONDS = 1.0  # after a batch, due timers and actions go for at most this long, then the inbox


def default_worker_id() -> str:
    # The end of the host name (a pod's unique suffix), the pid, and random bits: pids repeat
    # across containers (often 1), and the lease is fenced by this id.
    return f"{socket.gethostname()[-30:]}:{os.getpid()}:{secrets.token_hex(3)}"


@dataclass(frozen=True)
class Carried:
    """What carrying out a claim came to: the call's result (or a check's), what it means, a note
    for the record, what a 2xx answer said; or given back unused (no time left in the lease)."""
    result: ApiResult
    verdict: Verdict | None
    note: str | None = None
    reading: answers.Reading | None = None
    given_back: bool = False


class Worker:
    def __init__(self, store: Store, client: VideoSDKClient | None, policy: RetryPolicy,
                 rules: Callable[[], RuleSet], *, lease_seconds: float, decider: Decider | None = None,
                 acts: bool = True,
                 worker_id: str | None = None, clock: Callable[[], float] = time.time,
                 rand: Callable[[], float] = random.random, breaker: CircuitBreaker | None = None,
                 retention_days: float = 0.0):
        self.store = store
        self.client = client
        self.decider = decider  # None: another process decides the inbox (tests of acting alone)
        self.policy = policy
        self.rules = rules
        self.lease_seconds = lease_seconds
        self.acts = acts and client is not None  # without acting, timers still fire, as dry-run
        self.worker_id = worker_id or default_worker_id()
        self.clock = clock
        self.rand = rand
        self._rules_changed = threading.Event()
        self._stop = threading.Event()  # set by run()'s caller to shut down
        self._next_due: float | None = None  # from the last look at the store
        self._inbox_turn = False  # a batch was decided: timers and actions go until none is due,
        self._turn_ends = 0.0  # or until then (time.monotonic()): a backlog never keeps the inbox waiting
        self.turn_seconds = TURN_SECONDS
        self._drained = True  # the last batch decided all it could
        self._inbox_resume_at = 0.0  # while deliveries wait for a key, the inbox rests until then
        self._looked_at = float("-inf")  # when the decider last took a batch
        self._heard = False  # PostgreSQL: the idle wait was woken by an append's NOTIFY
        self.breaker = breaker or CircuitBreaker(clock=clock)
        self._started_at = clock()
        self._sweep_look_at = float("-inf")  # when to look at the sweep's round again
        self._sweep_behind: str | None = None  # the id of the last sweep this worker appended
        self._reported: tuple | None = None  # (what was last reported of the breaker, when)
        self.retention_days = retention_days  # 0: keep everything
        self._pruned_at: float | None = None
        self._misreads_logged: set[str] = set()  # each shape of unreadable answer is logged once
        # What the confirm checks and an action's follow-up may use (acting.py); None without a client.
        self._checker = None if client is None else acting.Checker(client, store, policy, rand, self._log_misread)

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
            decided = self.decider.decide_once()  # an empty inbox costs one read (store.deciding)
            self._drained = len(decided) < self.decider.batch
            if decided:
                self._inbox_turn = True  # what it decided may be due now: act on it first
                self._turn_ends = time.monotonic() + self.turn_seconds
                return True
            if self.decider.kept:  # all it took waits for a key: look again in a while, not at
                self._inbox_resume_at = self.clock() + KEY_WAIT_SECONDS  # once (a write each time)
        now = self.clock()
        action_due, timer_due = self.store.due_work(now)
        self._next_due = min((t for t in (action_due, timer_due) if t is not None), default=None)
        if (timer_due is not None and timer_due <= now and self.fire_one_timer()) or (
                self.acts and action_due is not None and action_due <= now and self.act_once()):
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
        if self._sweep_behind is not None and not self._drained and self.store.in_inbox(self._sweep_behind):
            return False  # the decider is still busy with what came before the next chunk
        turn = self.store.sweep_turn(self.worker_id, every, sweeps.CHUNK, sweeps.LEASE_SECONDS)
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
        self._stop = stop
        self._rules_changed.set()  # the rules may have changed while no worker ran: re-check timers first
        while not stop.is_set():
            try:
                self.report_breaker()
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

    def report_breaker(self) -> bool:
        """Write this worker's breaker to the store for the dashboard, when it changed or every
        REPORT_EVERY seconds (so a worker that stopped shows as not seen since then)."""
        view, now = self.breaker.view(), self.clock()
        shown = (view.state, view.failures, None if view.probe_in is None else round(now + view.probe_in, 1))
        if self._reported is not None and self._reported[0] == shown and now - self._reported[1] < REPORT_EVERY:
            return False
        self.store.report_worker(
            self.worker_id, self._started_at, view.state, view.failures,
            None if view.opened_ago is None else now - view.opened_ago,
            None if view.probe_in is None else now + view.probe_in)
        self._reported = (shown, now)
        return True

    def _listen(self, wait: float) -> bool | None:
        """PostgreSQL: wait for an append to the inbox, woken at once by its NOTIFY; None on SQLite."""
        try:
            return self.store.wait_for_inbox(wait)
        except Exception:  # noqa: BLE001 - never let the wake-up stop the loop; polling still works
            log.exception("waiting for the inbox failed; polling instead")
            return None

    def prune_if_due(self, every: float = 3600.0) -> int:
        """Delete deliveries older than the retention period, at most once an `every` seconds."""
        now = self.clock()
        if self.retention_days <= 0 or (self._pruned_at is not None and now - self._pruned_at < every):
            return 0
        removed = self.store.prune(now - self.retention_days * 86400)
        self._pruned_at = now  # only once done: a store outage must not skip retention for an hour
        if removed:
            log.info("pruned %d deliveries older than %g days", removed, self.retention_days)
        return removed

    # -- timers -------------------------------------------------------------------------

    def fire_one_timer(self) -> bool:
        rule_set = self.rules()
        now = self.clock()

        def decide(row: TimerRow, stored: dict, acted: set[str]):
            return timer_write(fire_timer(rule_set, pending_timer(row), now, room_state(row.room_id, stored),
                                          acted, acts=self.acts and row.trigger_verified))

        write = self.store.fire_due_timer(decide)
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
        for timer_id, name, fingerprint in self.store.pending_timers_by_rule():
            rule = rule_set.rule(name)
            if rule is not None and rule.fingerprint == fingerprint:
                continue  # its rule did not change: nothing to write
            now = self.clock()

            def decide(row: TimerRow, stored: dict, acted: set[str]):
                return timer_write(recheck_timer(rule_set, pending_timer(row), now,
                                                 room_state(row.room_id, stored)))

            write = self.store.recheck_timer(timer_id, decide)
            if write is not None and write.reason != "unchanged":
                changed += 1
                log.info("timer %s after reload: %s (%s)", timer_id, write.verdict, write.reason)
        return changed

    # -- actions --------------------------------------------------------------------------

    def act_once(self) -> bool:
        """Claim and carry out one due action. False when none was due, or the circuit is open."""
        if self.client is not None and self.breaker.probe_due():
            self._probe()
        allowed = self.breaker.allow()
        metrics.BREAKER_OPEN.set(self.breaker.state != "closed")
        if not allowed:
            return False
        rule_set = self.rules()
        try:
            claim = self.store.claim(self.worker_id, self.lease_seconds, self.policy.max_attempts,
                                     per_minute=rule_set.settings.max_actions_per_minute,
                                     checks_per_minute=rule_set.settings.max_checks_per_minute
                                     if rule_set.uses_confirm(PACED_CONFIRM) else None)
        except Exception:
            self.breaker.record_idle()  # no call was made: give a half-open trial back
            raise
        if claim is None:
            self.breaker.record_idle()
            return False
        started = self.clock()
        try:
            carried = self._carry_out(claim, rule_set)
        except BaseException:
            # The confirm check's store read failed, say: no call was made, so a half-open
            # trial goes back; otherwise the breaker would refuse every claim from now on.
            self.breaker.record_idle()
            raise
        if carried.given_back:
            self.breaker.record_idle()
            self.store.release(claim, self.worker_id)
            log.warning("action %s: the confirm check left no time in the lease to act; given back",
                        claim.id)
            return True
        result, verdict, note, reading = carried.result, carried.verdict, carried.note, carried.reading
        if result.latency_ms:  # a call was made: tell the breaker how it went
            before = self.breaker.state
            self.breaker.record(result.status)
            metrics.BREAKER_OPEN.set(self.breaker.state != "closed")
            if self.breaker.state != before:
                log.warning("circuit breaker %s -> %s after HTTP %s", before, self.breaker.state, result.status)
        else:
            self.breaker.record_idle()
        metrics.count_attempt(claim.kind, verdict.outcome, result.latency_ms)
        reason = "; ".join(part for part in (verdict.reason, result.error) if part) or None
        attempt = AttemptRecord(
            started_at=started, latency_ms=result.latency_ms, http_status=result.status,
            outcome=verdict.outcome, error=reason, note=note,
            next_due_at=self.clock() + verdict.delay if verdict.outcome == Attempt.RETRY else None,
            answer=reading.answer if reading else None, doubt=reading.doubt if reading else None,
            closes_room=result.closes_room,
        )
        self._record(claim, attempt)
        level = logging.ERROR if verdict.credentials_problem or verdict.outcome == Attempt.DEAD else logging.INFO
        log.log(level, "action %s %s room=%s rule=%s attempt=%d status=%s outcome=%s%s", claim.id,
                claim.kind, claim.room_id, claim.rule, claim.attempts, result.status, verdict.outcome,
                f" error={reason!r}" if reason else "", extra={"fields": {
                    "action": claim.id, "room": claim.room_id, "rule": claim.rule,
                    "outcome": verdict.outcome, "status": result.status}})
        if reading is not None and reading.doubt:
            metrics.count_doubtful(claim.kind)
            log.warning("action %s %s room=%s: done, but doubtful: %s", claim.id, claim.kind, claim.room_id,
                        reading.doubt, extra={"fields": {"action": claim.id, "room": claim.room_id,
                                                         "doubt": reading.doubt}})
        return True

    def _probe(self) -> None:
        """The open circuit's probe: a call that changes nothing (fetch a room; one that does not
        exist answers 404, which shows the API working as well as a 200 does)."""
        result = self.client.fetch_room(PROBE_ROOM)
        before = self.breaker.state
        self.breaker.probed(result.status)
        metrics.BREAKER_OPEN.set(self.breaker.state != "closed")
        if self.breaker.state != before:
            log.warning("circuit breaker %s -> %s: the API answered a probe (HTTP %s)", before,
                        self.breaker.state, result.status)

    def _carry_out(self, claim: ClaimedAction, rule_set: RuleSet) -> Carried:
        """Check what must be checked, make the call, and say what it came to."""
        if rule_set.settings.is_protected(claim.room_id):
            return Carried(ApiResult(None, 0.0), Verdict(Attempt.CANCELLED, reason=(
                f"room {claim.room_id} is protected by settings.protect (rules {rule_set.short_hash})")))
        # Switching to dry-run by a reload (the whole file, or the rule) stops what is queued too,
        # not only what is decided from then on.
        rule = rule_set.rule(claim.rule)
        if rule_set.settings.dry_run or (rule is not None and rule.dry_run):
            where = "settings.dry_run" if rule_set.settings.dry_run else f"rule {claim.rule}'s dry_run"
            return Carried(ApiResult(None, 0.0), Verdict(Attempt.CANCELLED, reason=(
                f"{where} is on (rules {rule_set.short_hash}): not acted on")))
        kind = acting.ACTION_KINDS.get(claim.kind)
        if kind is None or self._checker is None:  # a kind written by a newer version of this service
            result = ApiResult(None, 0.0, f"this worker cannot carry out '{claim.kind}' actions")
            return Carried(result, self.policy.judge(result, self.policy.max_attempts))
        note = None
        if claim.confirm is not None:
            confirm = acting.CONFIRM_KINDS.get(claim.confirm)
            if confirm is None:  # a check named by a newer version of this service
                result = ApiResult(None, 0.0, f"this worker cannot make '{claim.confirm}' checks")
                return Carried(result, self.policy.judge(result, self.policy.max_attempts))
            confirmation = confirm.check(self._checker, claim)
            note = confirmation.note
            if confirmation.stop is not None:
                return Carried(confirmation.stop.result, confirmation.stop.verdict, note)
            if self.clock() + sum(self.client.timeout) >= claim.lease_until:
                # The check took long: a call now (connect, then read, each with its own timeout)
                # could outlive the lease, and another worker could make it too. Give the action
                # back, due now, to check again; no call was made, so it is no attempt and does
                # not count towards the limit.
                return Carried(ApiResult(None, 0.0), None, note, given_back=True)
        result = kind.call(self.client, claim)
        if kind.closes_room(result):
            result = replace(result, closes_room=True)  # not swept again until a delivery comes
        if result.ok:
            return Carried(result, Verdict(Attempt.DONE), note, kind.read(claim, result))
        done = kind.already_done(self._checker, claim, result)
        if done is not None:  # the API's refusal is the note, not an error: the action is done
            said, reading = done
            note = "; ".join(part for part in (note, f"{said} ({result.error})") if part)
            return Carried(replace(result, error=None), Verdict(Attempt.DONE), note, reading)
        return Carried(result, self.policy.judge(result, claim.attempts, self.rand), note)

    def _log_misread(self, claim: ClaimedAction, misread: answers.Misread) -> None:
        if misread.message not in self._misreads_logged:  # once per shape, not once per retry
            self._misreads_logged.add(misread.message)
            log.error("action %s room=%s: %s (logged once per shape; never acted on while unreadable)",
                      claim.id, claim.room_id, misread.message)

    def _record(self, claim: ClaimedAction, attempt: AttemptRecord) -> None:
        """Record the attempt, retrying through a store outage until the store is back.

        The call has been made: its result must not be dropped, or this worker would
        claim the action again and repeat the call. Only a shutdown gives up (the
        lease then runs out and the action is retried).
        """
        delay, warned = 0.2, False
        while True:
            try:
                if not self.store.finish(claim, attempt, self.worker_id):
                    log.warning("action %s: lease ran out before its attempt was recorded; "
                                "another worker may have repeated the call", claim.id)
                return
            except StoreUnavailable as exc:
                if self._stop.is_set():
                    log.error("action %s: shutting down before its attempt could be recorded (%s); it "
                              "will be retried when the lease runs out", claim.id, exc)
                    return
                if not warned:
                    log.warning("action %s: store unavailable, holding its result until it is back: %s",
                                claim.id, exc)
                    warned = True
                self._stop.wait(delay)
                delay = min(delay * 2, 5.0)
