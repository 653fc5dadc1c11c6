"""Unit tests for rules, written in YAML: `python -m service test FILE...`.

In the spirit of `promtool test rules`: each test is a sequence of events at
virtual times and the actions expected from them, run on a virtual clock with
no network and no database (see virtualclock.py).

```yaml
rules: rules.yaml                  # the rules under test, relative to this file
start: "2026-01-05T09:00:00Z"      # optional: the virtual clock's zero (a Monday, 09:00 UTC)
tests:
  - name: an empty room is deactivated after five minutes
    events:
      - at: 0s
        event: participant-joined
        data: {meetingId: abcd-efgh-ijkl, sessionId: s1, participantId: p1}
      - at: 30s
        event: participant-left
        data: {meetingId: abcd-efgh-ijkl, sessionId: s1, participantId: p1}
    expect:                        # every action, in time order; [] expects none
      - at: 5m30s
        action: deactivate
        room: abcd-efgh-ijkl
        rule: close-when-empty
        outcome: scheduled         # optional; default scheduled (dry-run for a rule in shadow mode)
```

How it fails: `load_tests` raises `TestFileError` with the file and a message
that names the test and the key at fault; a test whose actions differ from
its expectations is a failure with a readable diff, not an error.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import PayloadInvalid, RoomwardenError, RulesError
from .events import Event, parse_event, parse_timestamp
from .rules.durations import format_duration, parse_duration
from .rules.loader import item_lines, load_rules, read_yaml
from .rules.model import RuleSet
from .virtualclock import Simulation
from .outcomes import TimerStatus, decided_as

DEFAULT_START = "2026-01-05T09:00:00Z"
EXPECT_KEYS = ("at", "action", "room", "rule", "outcome")


class TestFileError(RoomwardenError):
    """A rule-test file that cannot be read or is not in the expected shape."""


@dataclass(frozen=True)
class Expected:
    at: float
    action: str
    room: str
    rule: str
    outcome: str

    def line(self) -> str:
        return f"at {_at(self.at)}: {self.action} room {self.room} by {self.rule} ({self.outcome})"


def _at(seconds: float) -> str:
    """A virtual time as tests write it, to the millisecond: `5m40s`, `5m40.4s`."""
    whole = int(seconds)
    fraction = round(seconds - whole, 3)
    if not fraction:
        return format_duration(whole)
    head = format_duration(whole - whole % 60) if whole >= 60 else ""
    return f"{head}{whole % 60 + fraction:g}s"


@dataclass(frozen=True)
class Case:
    name: str
    events: tuple[tuple[float, Event], ...]
    expect: tuple[Expected, ...]
    line: int = 0  # where the test starts in its file (0: not known)


@dataclass
class TestFile:
    path: Path
    rules: RuleSet
    start: float
    cases: list[Case] = field(default_factory=list)


@dataclass(frozen=True)
class Result:
    file: Path
    case: Case
    actual: tuple[Expected, ...]
    matched_rules: frozenset[str]

    @property
    def passed(self) -> bool:
        return self.actual == self.case.expect

    def diff(self) -> list[str]:
        lines = difflib.unified_diff([e.line() for e in self.case.expect], [a.line() for a in self.actual],
                                     "expected", "actual", lineterm="", n=len(self.actual) + 5)
        return [line for line in list(lines)[2:] if not line.startswith("@@")]


def _fail(path: Path, where: str, message: str):
    raise TestFileError(f"{path}: {where}: {message}")


def _seconds(path: Path, where: str, value: Any) -> float:
    try:
        return parse_duration(value)
    except ValueError as exc:
        _fail(path, where, str(exc))


def _event(path: Path, where: str, item: dict) -> Event:
    if "body" in item:
        body = item["body"]
        raw = body.encode() if isinstance(body, str) else json.dumps(body).encode()
    elif "event" in item:
        raw = json.dumps({"webhookType": item["event"], "data": item.get("data") or {}}).encode()
    else:
        _fail(path, where, "needs `event:` (with `data:`) or `body:`")
    try:
        event = parse_event(raw, sweep=True)  # a test's `event: sweep` is a sweep at that time
    except PayloadInvalid as exc:
        _fail(path, where, f"{exc.message}{': ' + json.dumps(exc.fields) if exc.fields else ''}")
    if event.problem is not None:  # the service would keep it and decide nothing: a test of nothing
        _fail(path, where, f"{event.type} body cannot be read: {event.problem}")
    return event


def load_tests(path: Path, rules_override: Path | None = None) -> TestFile:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
        doc = read_yaml(text)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise TestFileError(f"{path}: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("tests"), list):
        _fail(path, "top level", "expected a mapping with `tests:` (a list)")
    unknown = set(doc) - {"rules", "start", "tests"}
    if unknown:
        _fail(path, "top level", f"unknown key(s) {', '.join(sorted(unknown))}")
    rules_path = rules_override or (path.parent / str(doc.get("rules") or "rules.yaml"))
    try:
        rule_set = load_rules(rules_path)
    except RulesError as exc:
        raise TestFileError(f"{path}: the rules under test do not load:\n" + "\n".join(exc.problems)) from None
    start = parse_timestamp(str(doc.get("start") or DEFAULT_START))
    if start is None:
        _fail(path, "start", "not a timestamp such as 2026-01-05T09:00:00Z")
    test_file = TestFile(path, rule_set, start.timestamp())
    lines = item_lines(text, "tests")
    for index, case in enumerate(doc["tests"], 1):
        if not isinstance(case, dict) or not isinstance(case.get("events"), list):
            _fail(path, f"test {index}", "needs `name:`, `events:` (a list) and `expect:`")
        name = str(case.get("name") or f"test {index}")
        where = f"test '{name}'"
        extra = set(case) - {"name", "events", "expect"}
        if extra:
            _fail(path, where, f"unknown key(s) {', '.join(sorted(extra))}")
        if not isinstance(case.get("expect"), list):
            _fail(path, where, "needs `expect:`, a list of actions ([] for none)")
        events, last = [], 0.0
        for n, item in enumerate(case["events"], 1):
            if not isinstance(item, dict) or "at" not in item:
                _fail(path, f"{where}, event {n}", "needs `at:` and `event:`/`data:` or `body:`")
            at = _seconds(path, f"{where}, event {n}", item["at"])
            if at < last:
                _fail(path, f"{where}, event {n}", "events must be in time order")
            last = at
            events.append((at, _event(path, f"{where}, event {n}", item)))
        expect = []
        for n, item in enumerate(case["expect"], 1):
            if not isinstance(item, dict) or not {"at", "action", "room", "rule"} <= set(item):
                _fail(path, f"{where}, expected action {n}", "needs at, action, room and rule")
            if set(item) - set(EXPECT_KEYS):
                _fail(path, f"{where}, expected action {n}",
                      f"unknown key(s) {', '.join(sorted(set(item) - set(EXPECT_KEYS)))}")
            expect.append(Expected(_seconds(path, f"{where}, expected action {n}", item["at"]),
                                   str(item["action"]), str(item["room"]), str(item["rule"]),
                                   str(item.get("outcome") or _default_outcome(rule_set, str(item["rule"])))))
        test_file.cases.append(Case(name, tuple(events), tuple(sorted(expect, key=_order)),
                                    lines[index - 1] if index <= len(lines) else 0))
    return test_file


def _default_outcome(rule_set: RuleSet, name: str) -> str:
    """What an expected action's outcome is when not given: dry-run for a rule in shadow mode."""
    rule = rule_set.rule(name)
    return decided_as(rule_set.settings.dry_run or (rule is not None and rule.dry_run))


def _order(expected: Expected):
    return (expected.at, expected.room, expected.rule, expected.action)


def run_case(test_file: TestFile, case: Case) -> Result:
    simulation = Simulation(test_file.rules)
    for number, (at, event) in enumerate(case.events, 1):
        simulation.deliver(event, test_file.start + at, f"event {number}")
    simulation.finish()
    actual = tuple(sorted((Expected(round(r.at - test_file.start, 3), r.action, r.room_id, r.rule, r.outcome)
                           for r in simulation.records if r.acts), key=_order))
    matched = frozenset(r.rule for r in simulation.records if r.outcome != TimerStatus.CANCELLED)
    return Result(test_file.path, case, actual, matched)


def run_file(test_file: TestFile) -> list[Result]:
    return [run_case(test_file, case) for case in test_file.cases]


def uncovered(runs: list[tuple[TestFile, list[Result]]]) -> dict[str, list[str]]:
    """Rules that no test made match, by rules file (for `--coverage`)."""
    rule_sets: dict[str, RuleSet] = {}
    matched: dict[str, set[str]] = {}
    for test_file, results in runs:
        source = test_file.rules.source
        rule_sets[source] = test_file.rules
        matched.setdefault(source, set()).update(*(r.matched_rules for r in results))
    missing = {source: [r.name for r in rule_set.rules if r.name not in matched[source]]
               for source, rule_set in rule_sets.items()}
    return {source: names for source, names in missing.items() if names}
