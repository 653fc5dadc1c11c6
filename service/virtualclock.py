"""The service's decisions on a virtual clock, in memory: what `test` and `replay` run.

It drives the same pure planner the service uses, with the same room state,
timers and action keys, but keeps them in dictionaries and takes time from the
events it is given. Timers fire at their due times, in order, between events.
Nothing here touches a network, a database or the real clock.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass

from .events import Event
from .planner import Outcome, PendingTimer, fire_timer, plan_event
from .rooms import RoomState
from .rules.model import RuleSet
from .outcomes import Decided, TimerStatus, makes_action


@dataclass(frozen=True)
class Record:
    """One thing the simulation decided, at a virtual time."""

    at: float
    source: str  # the delivery's id, or "timer:<key>" for a timer's decision
    rule: str
    action: str
    room_id: str
    session_id: str | None
    outcome: str  # a planner outcome (Decided), or TimerStatus.CANCELLED for a timer that stopped
    reason: str | None = None

    @property
    def acts(self) -> bool:
        """Whether the service would call VideoSDK (or would, but for a dry run)."""
        return makes_action(self.outcome)


class Simulation:
    def __init__(self, rule_set: RuleSet, *, acts: bool = True):
        self.rule_set = rule_set
        self.acts = acts
        self.now = -math.inf
        self.rooms: dict[str, RoomState] = {}
        self.timers: dict[str, PendingTimer] = {}  # pending, by key
        self.acted: dict[str, set[str]] = {}  # action keys, by room
        self.records: list[Record] = []
        self._due: list[tuple[float, int, str]] = []  # (due_at, order, key): a heap
        self._order = 0

    def deliver(self, event: Event, at: float, source: str) -> None:
        """One delivery at virtual time `at` (not before the previous one)."""
        self.run_until(at)
        self.now = max(self.now, at)
        room_id = event.room_id if event.known else None
        timers = [t for t in self.timers.values() if t.room_id == room_id]
        plan = plan_event(self.rule_set, event, at, self.rooms.get(room_id) if room_id else None, timers,
                          self.acted.get(room_id, set()), acts=self.acts)
        if room_id and plan.room is not None:
            self.rooms[room_id] = plan.room
        for cancel in plan.cancels:
            timer = self.timers.pop(cancel.key, None)
            if timer is not None:
                self.records.append(Record(at, source, timer.rule, "", timer.room_id, timer.session_id,
                                           TimerStatus.CANCELLED, cancel.reason))
        for outcome in plan.outcomes:
            self._apply(outcome, at, source, event)

    def run_until(self, until: float) -> None:
        """Fire every timer due at or before `until`, each at its due time."""
        while self._due and self._due[0][0] <= until:
            due_at, _, key = heapq.heappop(self._due)
            timer = self.timers.get(key)
            if timer is None or timer.due_at != due_at:
                continue  # cancelled, or moved
            self.now = max(self.now, due_at)
            del self.timers[key]
            plan = fire_timer(self.rule_set, timer, due_at, self.rooms.get(timer.room_id),
                              self.acted.get(timer.room_id, set()), acts=self.acts)
            source = f"timer:{key}"
            if plan.verdict == "fire":
                self._apply(plan.outcome, due_at, source, timer.trigger)
            elif plan.verdict == "wait":
                self._start(PendingTimer(**{**timer.__dict__, "due_at": plan.due_at}))
            else:
                self.records.append(Record(due_at, source, timer.rule, "", timer.room_id, timer.session_id,
                                           TimerStatus.CANCELLED, plan.reason))

    def finish(self) -> None:
        """Run the clock on until no timer is left."""
        self.run_until(math.inf)

    def _apply(self, outcome: Outcome, at: float, source: str, trigger: Event) -> None:
        if outcome.outcome == Decided.TIMER_STARTED:
            self._start(PendingTimer(key=outcome.key, rule=outcome.rule, fingerprint=outcome.fingerprint,
                                     room_id=outcome.room_id, session_id=outcome.session_id, started_at=at,
                                     due_at=outcome.due_at, trigger=trigger))
        elif outcome.creates_action:
            self.acted.setdefault(outcome.room_id, set()).add(outcome.key)
        self.records.append(Record(at, source, outcome.rule, outcome.action, outcome.room_id,
                                   outcome.session_id, outcome.outcome))

    def _start(self, timer: PendingTimer) -> None:
        self.timers[timer.key] = timer
        self._order += 1
        heapq.heappush(self._due, (timer.due_at, self._order, timer.key))
