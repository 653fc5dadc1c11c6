"""The worker: claims due actions from the outbox, calls VideoSDK, records every attempt.

Guarantee: each action is attempted until it is done, failed for good or dead.
An action is called at least once, and more than once only when a worker dies
(or loses its store) between making the call and recording it; the lease then
runs out and another worker calls again. Deactivating a room twice leaves it
deactivated, so that window costs a repeated call, not a wrong one.

How it fails: a store outage is logged and waited out; the loop never exits on
one. An API failure is data: `retry.py` decides what happens next.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import threading
import time
from typing import Callable

from .errors import StoreUnavailable
from .retry import RetryPolicy
from .store import AttemptRecord, ClaimedAction, Store
from .videosdk import ApiResult, VideoSDKClient

log = logging.getLogger("roomwarden.worker")


def default_worker_id() -> str:
    return f"{socket.gethostname()[:40]}:{os.getpid()}"


class Worker:
    def __init__(self, store: Store, client: VideoSDKClient, policy: RetryPolicy, *,
                 lease_seconds: float, worker_id: str | None = None,
                 clock: Callable[[], float] = time.time, rand: Callable[[], float] = random.random):
        self.store = store
        self.client = client
        self.policy = policy
        self.lease_seconds = lease_seconds
        self.worker_id = worker_id or default_worker_id()
        self.clock = clock
        self.rand = rand
        self._calls: dict[str, Callable[[ClaimedAction], ApiResult]] = {
            "deactivate": lambda action: client.deactivate_room(action.room_id),
        }

    def run_once(self) -> bool:
        """Claim and carry out one due action. False when none was due."""
        claim = self.store.claim(self.worker_id, self.lease_seconds, self.policy.max_attempts)
        if claim is None:
            return False
        started = self.clock()
        call = self._calls.get(claim.kind)
        if call is None:  # a kind written by a newer version of this service
            result = ApiResult(None, 0.0, f"this worker cannot carry out '{claim.kind}' actions")
            verdict = self.policy.judge(result, self.policy.max_attempts)
        else:
            result = call(claim)
            verdict = self.policy.judge(result, claim.attempts, self.rand)
        reason = "; ".join(part for part in (verdict.reason, result.error) if part) or None
        attempt = AttemptRecord(
            started_at=started, latency_ms=result.latency_ms, http_status=result.status,
            outcome=verdict.outcome, error=reason,
            next_due_at=self.clock() + verdict.delay if verdict.outcome == "retry" else None,
        )
        self._record(claim, attempt)
        level = logging.ERROR if verdict.credentials_problem or verdict.outcome == "dead" else logging.INFO
        log.log(level, "action %s %s room=%s rule=%s attempt=%d status=%s outcome=%s%s", claim.id,
                claim.kind, claim.room_id, claim.rule, claim.attempts, result.status, verdict.outcome,
                f" error={reason!r}" if reason else "")
        return True

    def _record(self, claim: ClaimedAction, attempt: AttemptRecord) -> None:
        """Record the attempt, retrying through a store outage for as long as the lease lasts."""
        delay = 0.2
        while True:
            try:
                if not self.store.finish(claim, attempt, self.worker_id):
                    log.warning("action %s: lease ran out before its attempt was recorded; "
                                "another worker may repeat the call", claim.id)
                return
            except StoreUnavailable as exc:
                if self.clock() + delay >= claim.lease_until:
                    log.error("action %s: could not record its attempt (%s); it will be retried "
                              "when the lease runs out", claim.id, exc)
                    return
                time.sleep(delay)
                delay = min(delay * 2, 5.0)

    def run(self, stop: threading.Event, poll_interval: float) -> None:
        """Work until `stop` is set; an in-flight action is finished and recorded first."""
        log.info("worker %s started", self.worker_id)
        while not stop.is_set():
            try:
                busy = self.run_once()
            except StoreUnavailable as exc:
                log.warning("store unavailable, waiting: %s", exc)
                stop.wait(min(5.0, poll_interval * 10))
                continue
            if not busy:
                stop.wait(poll_interval)
        log.info("worker %s stopped", self.worker_id)
