"""Re-decide recorded deliveries under a candidate rules file: `python -m service replay`.

Both the rules in force and the candidate are run over the same deliveries, in
the order they arrived, on a virtual clock that follows their arrival times
(see virtualclock.py): room state and `for:` timers are rebuilt from the start of
the window, the same way for both, so the only differences reported are the
candidate's. Nothing is written and nothing is called.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

from .errors import PayloadInvalid
from .events import parse_event
from .outcomes import TimerStatus
from .sweeps import is_sweep_id
from .rules.model import RuleSet
from .virtualclock import Record, Simulation


@dataclass(frozen=True)
class Change:
    at: float
    source: str  # a delivery id, or "timer:<key>"
    rule: str
    room_id: str
    event_type: str | None
    before: str | None  # the outcome under the rules in force; None: the rule did not decide
    after: str | None  # the outcome under the candidate


def replay(deliveries: Iterable[dict], current: RuleSet, candidate: RuleSet, *, until: float,
           progress: Callable[[int], None] | None = None) -> tuple[list[Change], int]:
    """The decisions that differ between the two rule sets, and how many deliveries were replayed."""
    runs = (Simulation(current), Simulation(candidate))
    events: dict[str, str] = {}
    count = 0
    for row in deliveries:
        count += 1
        if progress is not None:
            progress(count)
        if not row["known"]:
            continue
        try:
            # A recorded sweep is re-decided like a delivery; its confirm (an API call) is not re-run.
            event = parse_event(row["body"].encode("utf-8"), sweep=is_sweep_id(row["id"]))
        except PayloadInvalid:  # stored bodies parsed once; a newer schema may read them differently
            continue
        if event.problem is not None:  # kept unread: the service never decided on it, nor does a replay
            continue
        events[row["id"]] = event.type
        for run in runs:
            run.deliver(event, row["received_at"], row["id"])
    for run in runs:
        run.run_until(until)
    before, after = (_by_key(run.records) for run in runs)
    changes = []
    for key in sorted(set(before) | set(after), key=lambda k: _first(before, after, k).at):
        old, new = before.get(key), after.get(key)
        if (old and old.outcome) == (new and new.outcome):
            continue
        record = _first(before, after, key)
        changes.append(Change(record.at, record.source, record.rule, record.room_id, events.get(record.source),
                              old.outcome if old else None, new.outcome if new else None))
    return changes, count


def _by_key(records: list[Record]) -> dict[tuple[str, str, bool], Record]:
    # One delivery can both cancel a rule's timer and decide that rule again: keep both.
    return {(r.source, r.rule, r.outcome == TimerStatus.CANCELLED): r for r in records}


def _first(before: dict, after: dict, key) -> Record:
    return before.get(key) or after[key]
