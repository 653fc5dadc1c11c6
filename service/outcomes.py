"""The words the service records: what a decision came to, where an action and a timer stand,
and what one attempt at an action came to. Each is a `StrEnum`, so a member is stored, shown
and compared as its text ("scheduled" == Decided.SCHEDULED), and each rule about them (which
decisions make an action, which statuses are final) is written here once.

Pure: the planner, the store, the worker and the offline tools all import it.
"""

from __future__ import annotations

from enum import StrEnum


class Decided(StrEnum):
    """What one rule's match came to (planner.py's table)."""
    SCHEDULED = "scheduled"  # an action is queued for the worker
    DRY_RUN = "dry-run"  # recorded as "would act"
    DUPLICATE = "duplicate"  # the rule already acted on this room and session
    PROTECTED = "protected"  # the room is in settings.protect: never acted on
    TIMER_STARTED = "timer-started"  # the rule has `for:`; a timer re-checks it when that has passed
    TIMER_RUNNING = "timer-running"  # such a timer is already pending


MAKES_ACTION = frozenset({Decided.SCHEDULED, Decided.DRY_RUN})  # an action row is written (dry-run: never claimed)
HOLDS_KEY = MAKES_ACTION | {Decided.DUPLICATE}  # the rule's action key for the room and session is taken


def makes_action(outcome: str) -> bool:
    return outcome in MAKES_ACTION


def holds_key(outcome: str) -> bool:
    return outcome in HOLDS_KEY


def decided_as(dry_run: bool) -> Decided:
    """What a match of an action rule on an unprotected room, not yet acted on, comes to."""
    return Decided.DRY_RUN if dry_run else Decided.SCHEDULED


class ActionStatus(StrEnum):
    """Where an action stands in the outbox."""
    PENDING = "pending"  # the one status the worker claims
    DONE = "done"
    FAILED = "failed"  # refused for good
    DEAD = "dead"  # retried until the policy gave up
    CANCELLED = "cancelled"  # not now: the room was in use, or protected, or dry run switched on
    DRY_RUN = "dry-run"  # what would have been done: never claimed


class Attempt(StrEnum):
    """What one attempt at an action came to (retrypolicy.py judges it)."""
    DONE = "done"
    RETRY = "retry"  # the action stays pending, due again later
    FAILED = "failed"
    DEAD = "dead"
    CANCELLED = "cancelled"


# The action's status after an attempt: a retry leaves it pending.
STATUS_AFTER = {Attempt.DONE: ActionStatus.DONE, Attempt.FAILED: ActionStatus.FAILED, Attempt.DEAD: ActionStatus.DEAD,
                Attempt.CANCELLED: ActionStatus.CANCELLED, Attempt.RETRY: ActionStatus.PENDING}


class TimerStatus(StrEnum):
    PENDING = "pending"
    FIRED = "fired"
    CANCELLED = "cancelled"
