"""Carrying out due actions at VideoSDK, one at a time: claim under a lease, check the rules in
force (protect, dry run) and the rule's `confirm:`, make the call (acting.py's registries say
which), judge the answer (retrypolicy.py), and record the attempt. Owns the circuit breaker and
reports it for the dashboard. The worker (worker.py) runs it in its loop.

Guarantee: each action is attempted until it is done, failed for good, cancelled or dead. An
action is called at least once, and more than once only when a worker dies (or loses its store)
between making the call and recording it; the lease then runs out and another worker calls again.
Deactivating a room twice leaves it deactivated, so that window costs a repeated call, not a
wrong one.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from dataclasses import dataclass, replace
from typing import Callable

from . import acting, answers, metrics
from .breaker import CircuitBreaker
from .errors import StoreUnavailable
from .outcomes import Attempt
from .retrypolicy import RetryPolicy, Verdict
from .rules.model import RuleSet
from .store import AttemptRecord, ClaimedAction
from .store.history import History
from .store.outbox import Outbox
from .store.workers import Workers
from .videosdk import ApiResult, VideoSDKClient

log = logging.getLogger("roomwarden.worker")

PACED_CONFIRM = "no-live-session"  # the check settings.max_checks_per_minute paces (a sweep's)
PROBE_ROOM = "roomwarden-probe"  # the room the breaker's probe asks about (GET /v2/rooms/{roomId})
REPORT_EVERY = 15.0  # seconds between the worker's reports of its breaker, besides each change


@dataclass(frozen=True)
class Carried:
    """What carrying out a claim came to: the call's result (or a check's), what it means, a note
    for the record, what a 2xx answer said; or given back unused (no time left in the lease)."""
    result: ApiResult
    verdict: Verdict | None
    note: str | None = None
    reading: answers.Reading | None = None
    given_back: bool = False


class Actor:
    def __init__(self, outbox: Outbox, workers: Workers, history: History, client: VideoSDKClient | None,
                 policy: RetryPolicy,
                 rules: Callable[[], RuleSet], *, lease_seconds: float, worker_id: str,
                 clock: Callable[[], float] = time.time, rand: Callable[[], float] = random.random,
                 breaker: CircuitBreaker | None = None):
        self.outbox = outbox  # claims and attempts
        self.workers = workers  # where the breaker is reported
        self.client = client  # None: nothing is ever called (a worker that does not act)
        self.policy = policy
        self.rules = rules
        self.lease_seconds = lease_seconds
        self.worker_id = worker_id
        self.clock = clock
        self.rand = rand
        self.breaker = breaker or CircuitBreaker(clock=clock)
        self.stop = threading.Event()  # the worker's: set at shutdown (an attempt's record then gives up)
        self._started_at = clock()
        self._reported: tuple | None = None  # (what was last reported of the breaker, when)
        self._misreads_logged: set[str] = set()  # each shape of unreadable answer is logged once
        # What the confirm checks and an action's follow-up may use (acting.py); None without a client.
        self._checker = None if client is None else acting.Checker(client, history, policy, rand, self._log_misread)

    def report_breaker(self) -> bool:
        """Write this worker's breaker to the store for the dashboard, when it changed or every
        REPORT_EVERY seconds (so a worker that stopped shows as not seen since then)."""
        view, now = self.breaker.view(), self.clock()
        shown = (view.state, view.failures, None if view.probe_in is None else round(now + view.probe_in, 1))
        if self._reported is not None and self._reported[0] == shown and now - self._reported[1] < REPORT_EVERY:
            return False
        self.workers.report_worker(
            self.worker_id, self._started_at, view.state, view.failures,
            None if view.opened_ago is None else now - view.opened_ago,
            None if view.probe_in is None else now + view.probe_in)
        self._reported = (shown, now)
        return True

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
            claim = self.outbox.claim(self.worker_id, self.lease_seconds, self.policy.max_attempts,
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
            self.outbox.release(claim, self.worker_id)
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
                if not self.outbox.finish(claim, attempt, self.worker_id):
                    log.warning("action %s: lease ran out before its attempt was recorded; "
                                "another worker may have repeated the call", claim.id)
                return
            except StoreUnavailable as exc:
                if self.stop.is_set():
                    log.error("action %s: shutting down before its attempt could be recorded (%s); it "
                              "will be retried when the lease runs out", claim.id, exc)
                    return
                if not warned:
                    log.warning("action %s: store unavailable, holding its result until it is back: %s",
                                claim.id, exc)
                    warned = True
                self.stop.wait(delay)
                delay = min(delay * 2, 5.0)
