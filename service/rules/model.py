"""A loaded rules file: frozen, validated, and indexed by event type."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timezone as dt_timezone, tzinfo
from fnmatch import fnmatchcase
from typing import NamedTuple

from ..events import SWEEP
from .compiled import Compiler, Test, Tracer
from .conditions import Condition, Trace
from .fields import Facts

# What each action does at VideoSDK; the worker maps these names to API calls.
ACTIONS = {
    "deactivate": "POST /v2/rooms/deactivate: the room can never be joined again",
    "end-session": "POST /v2/sessions/end: ends the room's live session; the room stays usable",
}

# Checks the worker makes just before acting; a check that fails cancels the action.
CONFIRMS = {
    "active-participants": "GET /v2/sessions/{sessionId}/participants/active: act only if nobody is there",
    "no-live-session": "GET /v2/sessions?roomId=...&status=ongoing: act only if the room has no live session",
}

# SWEEP is the event roomwarden raises itself, every `settings.sweep_every`, for each room it knows
# and has not closed (service/sweeps.py). Only a rule that names it exactly is decided on it: a glob
# in `on:` never matches it, so `on: "*"` does not start acting on rooms nobody has heard from.
DEFAULT_SWEEP_EVERY = 900.0  # seconds: 15 minutes, when a rule uses `sweep` and the setting is absent
DEFAULT_MAX_CHECKS_PER_MINUTE = 60  # confirm checks a minute, across all workers


@dataclass(frozen=True)
class RuleSettings:
    """The `settings:` block of a rules file."""

    timezone: str = "UTC"
    tz: tzinfo = field(default=dt_timezone.utc, compare=False)
    dry_run: bool = False  # every rule in shadow mode
    max_actions_per_minute: int | None = None  # excess actions wait; none is dropped
    protect: tuple[str, ...] = ()  # room ids or globs never acted on
    sweep_every: float | None = None  # seconds between sweeps (None: the default, if a rule uses sweep)
    max_checks_per_minute: int = DEFAULT_MAX_CHECKS_PER_MINUTE  # confirm checks, across all workers

    def is_protected(self, room_id: str) -> bool:
        return any(fnmatchcase(room_id, pattern) for pattern in self.protect)

_GLOB_CHARS = set("*?[")


@dataclass(frozen=True)
class Rule:
    name: str
    on: tuple[str, ...]  # event types or globs
    action: str
    when: Condition | None = None
    description: str | None = None
    line: int = 0  # where the rule starts in its file
    for_seconds: float | None = None  # `for:`: seconds the condition must hold before acting
    confirm: str | None = None
    dry_run: bool = False
    fingerprint: str = ""  # changes when anything but the description changes

    def applies_to(self, event_type: str) -> bool:
        if event_type == SWEEP:
            return SWEEP in self.on  # named, never globbed
        return any(fnmatchcase(event_type, pattern) for pattern in self.on)


class RuleResult(NamedTuple):  # a tuple: one is made per rule per event
    """One rule's verdict on one event, with the trace that explains it."""

    rule: Rule
    result: bool | None  # True: matched; False: did not; None: unknown (missing facts)
    trace: Trace | None  # None for a rule without `when:`, or not asked for

    @property
    def matched(self) -> bool:
        return self.result is True


class Check(NamedTuple):
    """A rule made ready for `engine.evaluate`: its condition compiled (see `compiled.py`), and
    the verdicts that carry no trace, made once here rather than per event (most rules do
    not match)."""

    rule: Rule
    test: Test | None  # None: no `when:`, the rule always matches
    trace: Tracer | None
    always: RuleResult  # (rule, True, None): the verdict of a rule without `when:`
    unmatched: RuleResult  # (rule, False, None)
    unknown: RuleResult  # (rule, None, None)

    @classmethod
    def of(cls, rule: Rule, compiler: Compiler) -> "Check":
        test = trace = None
        if rule.when is not None:
            node = compiler.compile(rule.when)
            test, trace = node.test, node.trace
        return cls(rule, test, trace, RuleResult(rule, True, None), RuleResult(rule, False, None),
                   RuleResult(rule, None, None))


@dataclass(frozen=True)
class RuleSet:
    rules: tuple[Rule, ...]
    source: str = "<rules>"
    sha256: str = ""
    version: int = 1
    settings: RuleSettings = field(default_factory=RuleSettings)
    text: str = field(default="", repr=False, compare=False)  # the file as loaded
    warnings: tuple = field(default=(), repr=False, compare=False)  # loader Problems of severity warning
    # Rules by exact event type, plus those using globs; filled in __post_init__ so
    # that evaluating an event costs only the rules that can apply to its type.
    _exact: dict = field(default_factory=dict, repr=False, compare=False)
    _globbed: tuple = field(default=(), repr=False, compare=False)
    _checks: tuple = field(default=(), repr=False, compare=False)  # a Check per rule, in file order
    _cache: dict = field(default_factory=dict, repr=False, compare=False)  # type -> (rules, checks)
    _by_name: dict = field(default_factory=dict, repr=False, compare=False)  # rule name -> its Check

    def __post_init__(self):
        # One compiler for the whole set: equal conditions of its rules share a node.
        compiler = Compiler(rule.when for rule in self.rules if rule.when is not None)
        object.__setattr__(self, "_checks", tuple(Check.of(rule, compiler) for rule in self.rules))
        for check in self._checks:  # (the loader refuses a repeated name; a hand-built set keeps the first)
            self._by_name.setdefault(check.rule.name, check)
        globbed = []
        for position, rule in enumerate(self.rules):
            if any(_GLOB_CHARS & set(p) for p in rule.on):
                globbed.append(position)
            else:
                for pattern in rule.on:
                    self._exact.setdefault(pattern, []).append(position)
        object.__setattr__(self, "_globbed", tuple(globbed))

    @property
    def short_hash(self) -> str:
        return self.sha256[:12]

    def uses_confirm(self, confirm: str) -> bool:
        return any(rule.confirm == confirm for rule in self.rules)

    @property
    def sweep_every(self) -> float | None:
        """Seconds between sweeps; None when no rule uses `sweep` (then there are none)."""
        if not any(SWEEP in rule.on for rule in self.rules):
            return None
        return self.settings.sweep_every or DEFAULT_SWEEP_EVERY

    def rule(self, name: str) -> Rule | None:
        check = self._by_name.get(name)
        return None if check is None else check.rule

    def holds(self, rule: Rule, facts: Facts) -> tuple[bool, Trace | None]:
        """Whether one of this set's rules holds on `facts` now, and its trace (None for a rule
        without `when:`): the same compiled evaluation `engine.evaluate` uses for events."""
        check = self._by_name.get(rule.name)
        if check is None or check.rule is not rule:
            raise ValueError(f"rule {rule.name!r} is not one of this rule set's")
        if check.trace is None:
            return True, None
        trace = check.trace(facts)
        return trace.result is True, trace

    def rules_for(self, event_type: str) -> tuple[Rule, ...]:
        """The rules whose `on:` covers this event type, in file order."""
        return self._for(event_type)[0]

    def checks_for(self, event_type: str) -> tuple[Check, ...]:
        """The same rules, each as its `Check`, for `engine.evaluate`."""
        return self._for(event_type)[1]

    def _for(self, event_type: str) -> tuple[tuple[Rule, ...], tuple[Check, ...]]:
        cached = self._cache.get(event_type)
        if cached is None:
            positions = set(self._exact.get(event_type, ()))
            positions.update(i for i in self._globbed if self.rules[i].applies_to(event_type))
            if event_type == SWEEP:
                positions = {i for i in positions if self.rules[i].applies_to(SWEEP)}
            ordered = sorted(positions)
            cached = tuple(self.rules[i] for i in ordered), tuple(self._checks[i] for i in ordered)
            if len(self._cache) < 4096:  # event types are open-ended; bound the memo
                self._cache[event_type] = cached
        return cached
