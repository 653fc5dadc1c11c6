"""Builders the worker, operations and sweep tests share: one place for each.

The rule sets, a worker on an injected clock, and one delivery through the real pipeline
(conftest.deliver) given as an event type and its data.
"""

from __future__ import annotations

from typing import Callable

from service.actor import Actor
from service.breaker import CircuitBreaker
from service.decider import Decider
from service.reload import RulesHolder
from service.retrypolicy import RetryPolicy
from service.rules.loader import parse_rules
from service.rules.model import RuleSet
from service.videosdk import TokenSource, VideoSDKClient
from service.worker import Worker

from .conftest import API_KEY, SECRET, T0, deliver as deliver_raw, event_body  # T0: one place for builders

HALF = lambda: 0.5  # noqa: E731  backoff = 3/4 of its ceiling: 1.5 s after attempt 1, 3 s after attempt 2
LEASE = 30.0
SESSION = "sess-1"


def parse(text: str, source: str = "test-rules.yaml") -> RuleSet:
    """The rule set (its errors fail here)."""
    rule_set, problems = parse_rules(text, source)
    assert rule_set is not None, [str(p) for p in problems]
    return rule_set


def session_rules(kind: str = "deactivate", *, confirm: str | None = None, settings: str = "") -> RuleSet:
    """One rule acting on session-ended; `settings` is a YAML flow mapping such as `{protect: [a]}`."""
    text = "version: 1\n"
    if settings:
        text += f"settings: {settings}\n"
    text += f"rules:\n  - name: close-after-session\n    on: session-ended\n    action: {kind}\n"
    if confirm:
        text += f"    confirm: {confirm}\n"
    return parse(text)


def _current(rules: RuleSet | RulesHolder) -> Callable[[], RuleSet]:
    return (lambda: rules.current) if isinstance(rules, RulesHolder) else (lambda: rules)


def make_worker(store, clock, base_url: str | None = None, *, rules: RuleSet | RulesHolder | None = None,
                secret: str = SECRET, tokens: TokenSource | None = None, timeout: float = 5.0,
                policy: RetryPolicy | None = None, worker_id: str = "worker-1", acts: bool = True,
                lease: float = LEASE, breaker: CircuitBreaker | None = None, retention_days: float = 0.0,
                decides: bool = False) -> Worker:
    """A worker on the injected clock; `base_url=None` gives it no client at all; `decides`: it
    decides the inbox too (its own Decider), as the worker process does."""
    client = None
    if base_url is not None:
        client = VideoSDKClient(base_url, tokens or TokenSource(API_KEY, secret), timeout=timeout)
    current = _current(rules if rules is not None else session_rules())
    decider = Decider(store.inbox, current, acts=True, verifier=None) if decides else None
    actor = Actor(store.outbox, store.workers, store.history, client, policy or RetryPolicy(), current, lease_seconds=lease, worker_id=worker_id,
                  clock=clock, rand=HALF, breaker=breaker)
    return Worker(store, current, actor, decider=decider, acts=acts, clock=clock, retention_days=retention_days)


def deliver(store, rules: RuleSet | RulesHolder, at: float | Callable[[], float], event_type: str, *,
            verified: bool = True, **data):
    """One delivery through the real pipeline: bytes into the inbox at `at` (a time, or a clock
    read now), then the Decider. Returns its Receipt."""
    when = at() if callable(at) else at
    return deliver_raw(store, _current(rules), event_body(event_type, **data), at=when, verified=verified)


def add_action(store, room: str, *, at: float, kind: str = "deactivate", session: str = SESSION,
               confirm: str | None = None) -> int:
    """Put one action in the outbox the way the service does: a session-ended delivery, decided."""
    receipt = deliver(store, session_rules(kind, confirm=confirm), at, "session-ended",
                      meetingId=room, sessionId=session)
    [outcome] = receipt.decisions
    assert outcome.outcome == "scheduled"
    return outcome.action_id
