"""Prometheus metrics. All of prometheus_client lives here.

Counters and histograms are counted in each process; with PROMETHEUS_MULTIPROC_DIR
set (see promdir.py) /metrics adds up every process's files, gunicorn workers and
the worker process alike. Gauges of the outbox (queue depth, age of the oldest due
action, pending timers) are read from the store when /metrics is scraped, so they
are right whichever process answers.
"""

from __future__ import annotations

import os
import time

from prometheus_client import (CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram,
                               generate_latest)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from .outcomes import Attempt, Decided

DELIVERIES = Counter("roomwarden_deliveries_total", "Webhook deliveries decided (taken out of the inbox), by event "
                     "type and outcome (accepted: a known event type; ignored: an unknown one; unreadable: a "
                     "known type missing a field it needs, kept and never decided on; refused: kept unverified "
                     "for want of a key, then its signature failed)", ["event", "outcome"])
ACCEPTED = Counter("roomwarden_accepted_total", "Deliveries accepted into the inbox, by whether their signature "
                   "was verified (yes; later: no key yet, verified by the decider; off)", ["verified"])
REJECTIONS = Counter("roomwarden_rejections_total", "Deliveries refused, by HTTP status", ["status"])
SLOW_BODIES = Counter("roomwarden_slow_bodies_total", "Webhook requests whose body did not arrive within "
                      "WEB_BODY_TIMEOUT_SECONDS: answered 408 and their connection closed")
SIGNATURE_FAILURES = Counter("roomwarden_signature_failures_total",
                             "Deliveries refused because videosdk-signature was missing or wrong")
DECISIONS = Counter("roomwarden_decisions_total", "Decisions, by rule and outcome", ["rule", "outcome"])
TIMERS = Counter("roomwarden_timers_total", "for: timers decided by the worker, by verdict (fire, cancel, wait)",
                 ["verdict"])
ATTEMPTS = Counter("roomwarden_attempts_total", "Attempts at VideoSDK, by action kind and outcome "
                   "(done, retry, failed, dead, cancelled)", ["kind", "outcome"])
DOUBTFUL = Counter("roomwarden_doubtful_answers_total", "Actions VideoSDK answered 2xx in words that leave "
                   "their effect in doubt (deactivate without disabled: true)", ["kind"])
ATTEMPT_LATENCY = Histogram("roomwarden_attempt_latency_seconds", "Latency of calls to VideoSDK", ["kind"],
                            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
RELOADS = Counter("roomwarden_rules_reloads_total", "Rules reloads, by result (success, failure)", ["result"])
RULES_INFO = Gauge("roomwarden_rules_info", "1 for the hash of the rules each process holds, 0 for those it held",
                   ["hash"], multiprocess_mode="liveall")
SIGN_INS = Counter("roomwarden_dashboard_sign_ins_total", "Dashboard sign-ins, by result (success; failure: a "
                   "wrong token; refused: too many failures from the address, the token not looked at)",
                   ["result"])
SWEEP_ROUNDS = Counter("roomwarden_sweep_rounds_total", "Sweep rounds started (settings.sweep_every)")
SWEPT_ROOMS = Counter("roomwarden_swept_rooms_total", "Sweep events appended to the inbox, one per open room a round")
BREAKER_OPEN = Gauge("roomwarden_circuit_open", "1 while a worker's circuit breaker is open",
                     multiprocess_mode="liveall")


def count_delivery(event: str, outcome: str) -> None:
    DELIVERIES.labels(event=event, outcome=outcome).inc()


def count_accepted(verified: str) -> None:
    ACCEPTED.labels(verified=verified).inc()


def count_rejection(status: int, signature: bool) -> None:
    REJECTIONS.labels(status=str(status)).inc()
    if signature:
        SIGNATURE_FAILURES.inc()


def count_decisions(outcomes) -> None:
    for outcome in outcomes:
        DECISIONS.labels(rule=outcome.rule, outcome=outcome.outcome).inc()


def count_doubtful(kind: str) -> None:
    DOUBTFUL.labels(kind=kind).inc()


def count_attempt(kind: str, outcome: str, latency_ms: float | None) -> None:
    ATTEMPTS.labels(kind=kind, outcome=outcome).inc()
    if latency_ms:
        ATTEMPT_LATENCY.labels(kind=kind).observe(latency_ms / 1000)


_rules_hash: list[str] = []

# The label values each family is known to take, exported at zero from the first scrape, so that
# `increase(...)` and `rate(...)` alerts work from the start, not only after a first increment.
VERIFIED = ("yes", "later", "off")
REJECTED = ("400", "401", "413", "503")
DELIVERY_OUTCOMES = ("accepted", "ignored", "unreadable", "refused")
DECISION_OUTCOMES = tuple(Decided)
TIMER_VERDICTS = ("fire", "cancel", "wait")
ATTEMPT_OUTCOMES = tuple(Attempt)
RELOAD_RESULTS = ("success", "failure")
SIGN_IN_RESULTS = ("success", "failure", "refused")


def rules_in_force(rule_set) -> None:
    """One series per process at 1: the hash of the rules it holds; those it held before go to 0
    (multiprocess mode cannot remove a series). Every known series is exported at zero, the
    decisions of each rule in force among them."""
    sha256 = rule_set.sha256
    if _rules_hash and _rules_hash[0] != sha256:
        RULES_INFO.labels(hash=_rules_hash[0][:12]).set(0)
    RULES_INFO.labels(hash=sha256[:12]).set(1)
    _rules_hash[:] = [sha256]
    _known_at_zero([rule.name for rule in rule_set.rules])


def _known_at_zero(rules: list[str]) -> None:
    from .schemas import DOCUMENTED_EVENT_TYPES
    from .rules.model import ACTIONS

    for verified in VERIFIED:
        ACCEPTED.labels(verified=verified)
    for status in REJECTED:
        REJECTIONS.labels(status=status)
    for event in DOCUMENTED_EVENT_TYPES:
        for outcome in DELIVERY_OUTCOMES:
            DELIVERIES.labels(event=event, outcome=outcome)
    for rule in rules:
        for outcome in DECISION_OUTCOMES:
            DECISIONS.labels(rule=rule, outcome=outcome)
    for verdict in TIMER_VERDICTS:
        TIMERS.labels(verdict=verdict)
    for kind in ACTIONS:
        DOUBTFUL.labels(kind=kind)
        ATTEMPT_LATENCY.labels(kind=kind)
        for outcome in ATTEMPT_OUTCOMES:
            ATTEMPTS.labels(kind=kind, outcome=outcome)
    for result in RELOAD_RESULTS:
        RELOADS.labels(result=result)
    for result in SIGN_IN_RESULTS:
        SIGN_INS.labels(result=result)


def process_exit(pid: int | None = None) -> None:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        mark_process_dead(pid or os.getpid())


class _OutboxCollector:
    """Gauges read from the store at scrape time."""

    def __init__(self, store):
        self.store = store

    def collect(self):
        now = time.time()
        depth, oldest = self.store.inbox.inbox_stats()
        yield GaugeMetricFamily("roomwarden_inbox_depth", "Deliveries accepted and not yet decided",
                                value=depth)
        yield GaugeMetricFamily("roomwarden_inbox_oldest_age_seconds",
                                "How long the oldest undecided delivery has waited",
                                value=max(0.0, now - oldest) if oldest is not None else 0.0)
        stats = self.store.actions.outbox_stats(now)
        yield GaugeMetricFamily("roomwarden_queue_depth", "Actions due now and not yet done",
                                value=stats["due"])
        yield GaugeMetricFamily("roomwarden_oldest_due_age_seconds",
                                "How long the oldest due action has waited", value=stats["oldest_due_age"])
        yield GaugeMetricFamily("roomwarden_pending_timers", "for: timers waiting to come due",
                                value=stats["pending_timers"])
        by_status = GaugeMetricFamily("roomwarden_actions", "Actions in the outbox, by status",
                                      labels=["status"])
        for status, count in sorted(stats["by_status"].items()):
            by_status.add_metric([status], count)
        yield by_status


def exposition(store) -> tuple[bytes, str]:
    """The /metrics page: every process's counters, plus the outbox gauges."""
    registry = CollectorRegistry()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        MultiProcessCollector(registry)
    else:  # one process (tests, `flask run`): its own counters
        from prometheus_client import REGISTRY

        for collector in list(REGISTRY._collector_to_names):
            registry.register(collector)
    registry.register(_OutboxCollector(store))
    return generate_latest(registry), CONTENT_TYPE_LATEST
