"""The rule tools as a user runs them: `test`, `check`, `replay`, `explain` and `retry`.

Every command runs as a real `python -m service` subprocess, on real files and a real SQLite
store. Stores are filled the way production fills them: signed deliveries posted through the
Flask test client and decided by the real Decider (as the worker does, behind the request), and
`worker --once` against the fake VideoSDK API.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest

from .conftest import EMPTY_RULE, ROOT, RULES_HEAD, SESSION_RULE, decide, ended, event_body, joined, left
from .fakeapi import Reply

# -- helpers -----------------------------------------------------------------------------------


def cli(*args: str, env: dict | None = None, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    """`python -m service ARGS` with only the given service settings in its environment; text output."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("VIDEOSDK_", "DATABASE_URL", "RULES_FILE"))}
    base["PYTHONPATH"] = str(ROOT)  # the package, from any working directory
    return subprocess.run([sys.executable, "-m", "service", *args], cwd=cwd, env={**base, **(env or {})},
                          capture_output=True, text=True, timeout=60)


@pytest.fixture
def service(rules_file, make_app, sign):
    """`service(RULES_TEXT)` writes the rules file, starts the app on it, and returns `post(*bodies)`,
    which signs each body and posts it to the webhook, as VideoSDK would, then decides them, as
    the worker would: what they decided is in the store when it returns."""

    def start(rules_text: str | None = None):
        if rules_text is not None:
            rules_file.write_text(rules_text)
        app = make_app()
        client = app.test_client()

        def post(*bodies: bytes) -> None:
            for body in bodies:
                answer = client.post("/webhooks/videosdk", data=body, headers={
                    "Content-Type": "application/json", "videosdk-signature": sign(body)})
                assert answer.status_code == 202, answer.get_data(as_text=True)
            decide(app)

        return post

    return start


WHEN = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}Z"  # explain.when()


def parse_when(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%d %H:%M:%S.%fZ").replace(tzinfo=timezone.utc).timestamp()


# == test: rule unit tests ======================================================================

RT_RULES = RULES_HEAD + EMPTY_RULE + SESSION_RULE


def ev(at: str, kind: str, room: str, who: str | None = None, session: str = "s1") -> dict:
    data = {"meetingId": room, "sessionId": session}
    if who is not None:
        data["participantId"] = who
    return {"at": at, "event": kind, "data": data}


def act(at: str, room: str, rule: str, action: str = "deactivate", outcome: str | None = None) -> dict:
    item = {"at": at, "action": action, "room": room, "rule": rule}
    if outcome is not None:
        item["outcome"] = outcome
    return item


def write_tests(directory: Path, tests: list[dict], *, rules_text: str | None = RT_RULES,
                name: str = "case.test.yaml", **top) -> Path:
    """A rule-test file (as JSON, which is YAML) next to its rules file `rules.yaml`."""
    directory.mkdir(parents=True, exist_ok=True)
    if rules_text is not None:
        (directory / "rules.yaml").write_text(rules_text)
    path = directory / name
    path.write_text(json.dumps({"rules": "rules.yaml", **top, "tests": tests}, indent=2))
    return path


def test_shipped_rule_tests_pass_and_cover_every_rule(tmp_path):
    from service.rules.loader import read_yaml

    shipped = read_yaml((ROOT / "rules.test.yaml").read_text())["tests"]
    # from another directory: the test file's `rules:` is relative to the test file, not the cwd
    result = cli("test", str(ROOT / "rules.test.yaml"), "--coverage", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[:-1] == [f"ok    {ROOT / 'rules.test.yaml'}: {case['name']}" for case in shipped]
    assert lines[-1] == "every rule was exercised by a test"
    assert result.stderr.strip() == f"{len(shipped)} passed, 0 failed"


def test_a_failing_expectation_prints_FAIL_with_a_diff_and_exits_1(tmp_path):
    path = write_tests(tmp_path, [
        {"name": "passes", "events": [ev("0s", "session-ended", "r0")],
         "expect": [act("0s", "r0", "close-after-session")]},
        {"name": "expects the wrong time", "events": [
            ev("0s", "participant-joined", "r1", "ann"), ev("40s", "participant-left", "r1", "ann")],
         "expect": [act("5m", "r1", "close-when-empty")]},
    ])
    result = cli("test", str(path))
    assert result.returncode == 1
    assert result.stdout.splitlines() == [
        f"ok    {path}: passes",
        f"FAIL  {path}: expects the wrong time",
        "      -at 5m: deactivate room r1 by close-when-empty (scheduled)",
        "      +at 5m40s: deactivate room r1 by close-when-empty (scheduled)",
    ]
    assert result.stderr.strip() == "1 passed, 1 failed"


def test_an_unexpected_action_and_a_missing_one_both_show_in_the_diff(tmp_path):
    path = write_tests(tmp_path, [{"name": "wrong room", "events": [ev("0s", "session-ended", "real")],
                                   "expect": [act("0s", "imagined", "close-after-session")]}])
    result = cli("test", str(path))
    assert result.returncode == 1
    assert "      -at 0s: deactivate room imagined by close-after-session (scheduled)" in result.stdout
    assert "      +at 0s: deactivate room real by close-after-session (scheduled)" in result.stdout


def test_coverage_names_the_rules_no_test_exercised(tmp_path):
    path = write_tests(tmp_path, [{"name": "only sessions", "events": [ev("0s", "session-ended", "r1")],
                                   "expect": [act("0s", "r1", "close-after-session")]}])
    result = cli("test", str(path), "--coverage")
    assert result.returncode == 0, result.stdout
    assert f"not exercised by any test in {tmp_path / 'rules.yaml'}: close-when-empty" in result.stdout
    assert "close-after-session" not in result.stdout.split("not exercised")[1]
    assert "every rule was exercised" not in result.stdout


def test_rules_option_overrides_the_file_a_test_names(tmp_path):
    tests = [{"name": "five minutes after the leave", "events": [
        ev("0s", "participant-joined", "r1", "ann"), ev("40s", "participant-left", "r1", "ann")],
        "expect": [act("5m40s", "r1", "close-when-empty")]}]
    path = write_tests(tmp_path / "t", tests, rules_text=None)  # names t/rules.yaml, which does not exist
    ten = tmp_path / "ten-minutes.yaml"
    ten.write_text(RT_RULES.replace("for: 5m", "for: 10m"))
    five = tmp_path / "five-minutes.yaml"
    five.write_text(RT_RULES)

    named = cli("test", str(path))
    assert named.returncode == 1
    assert named.stdout.startswith(f"ERROR {path}: the rules under test do not load:")
    assert "cannot read the rules file" in named.stdout

    assert cli("test", str(path), "--rules", str(five)).returncode == 0
    overridden = cli("test", str(path), "--rules", str(ten))
    assert overridden.returncode == 1
    assert "      +at 10m40s: deactivate room r1 by close-when-empty (scheduled)" in overridden.stdout


GOOD_CASE = ("  - name: t1\n    events:\n      - {at: 0s, event: session-ended, data: {meetingId: r1, "
             "sessionId: s1}}\n")

TEST_FILE_ERRORS = {
    "not YAML": ("tests: [\n", ": 2:1: not valid YAML"),
    "not a mapping": ("- just a list\n", ": top level: expected a mapping with `tests:` (a list)"),
    "no tests list": ("rules: rules.yaml\n", ": top level: expected a mapping with `tests:` (a list)"),
    "tests is not a list": ("tests: {name: t1}\n", ": top level: expected a mapping with `tests:` (a list)"),
    "unknown top-level key": ("tset: 1\ntests: []\n", ": top level: unknown key(s) tset"),
    "bad start": ('start: "next monday"\ntests: []\n', ": start: not a timestamp"),
    "a test without events": ("tests:\n  - name: t1\n    expect: []\n",
                              ": test 1: needs `name:`, `events:` (a list) and `expect:`"),
    "unknown key in a test": ("tests:\n" + GOOD_CASE + "    expect: []\n    expct: []\n",
                              ": test 't1': unknown key(s) expct"),
    "no expect": ("tests:\n" + GOOD_CASE, ": test 't1': needs `expect:`, a list of actions ([] for none)"),
    "an event without at": (
        "tests:\n  - name: t1\n    events:\n      - {event: session-ended, data: {meetingId: r1}}\n"
        "    expect: []\n", ": test 't1', event 1: needs `at:` and `event:`/`data:` or `body:`"),
    "an event with neither event nor body": (
        "tests:\n  - name: t1\n    events:\n      - {at: 0s, data: {meetingId: r1}}\n    expect: []\n",
        ": test 't1', event 1: needs `event:` (with `data:`) or `body:`"),
    "events out of time order": (
        "tests:\n  - name: t1\n    events:\n"
        "      - {at: 2m, event: session-ended, data: {meetingId: r1, sessionId: s1}}\n"
        "      - {at: 1m, event: session-ended, data: {meetingId: r1, sessionId: s1}}\n    expect: []\n",
        ": test 't1', event 2: events must be in time order"),
    "session-ended without meetingId": (
        "tests:\n  - name: t1\n    events:\n      - {at: 0s, event: session-ended, data: {sessionId: s1}}\n"
        "    expect: []\n", ": test 't1', event 1: "),
    "a bad duration in an event": (
        "tests:\n  - name: t1\n    events:\n"
        "      - {at: 5 minutes, event: session-ended, data: {meetingId: r1, sessionId: s1}}\n    expect: []\n",
        ": test 't1', event 1: '5 minutes' is not a duration"),
    "a bad duration in an expected action": (
        "tests:\n" + GOOD_CASE + "    expect:\n"
        "      - {at: soon, action: deactivate, room: r1, rule: close-after-session}\n",
        ": test 't1', expected action 1: 'soon' is not a duration"),
    "an expected action missing rule": (
        "tests:\n" + GOOD_CASE + "    expect:\n      - {at: 0s, action: deactivate, room: r1}\n",
        ": test 't1', expected action 1: needs at, action, room and rule"),
    "an unknown key in an expected action": (
        "tests:\n" + GOOD_CASE + "    expect:\n"
        "      - {at: 0s, action: deactivate, room: r1, rule: close-after-session, roomid: r1}\n",
        ": test 't1', expected action 1: unknown key(s) roomid"),
}


@pytest.mark.parametrize("case", TEST_FILE_ERRORS, ids=list(TEST_FILE_ERRORS))
def test_test_file_errors_are_reported_with_the_file_and_the_test(tmp_path, case):
    text, message = TEST_FILE_ERRORS[case]
    (tmp_path / "rules.yaml").write_text(RT_RULES)
    path = tmp_path / "case.test.yaml"
    path.write_text(text)
    result = cli("test", str(path))
    assert result.returncode == 1
    assert result.stdout.startswith(f"ERROR {path}{message}"), result.stdout
    assert "Traceback" not in result.stderr
    assert result.stderr.strip() == "0 passed, 1 failed"


def test_an_invalid_event_body_names_the_missing_field(tmp_path):
    text, _ = TEST_FILE_ERRORS["session-ended without meetingId"]
    (tmp_path / "rules.yaml").write_text(RT_RULES)
    path = tmp_path / "case.test.yaml"
    path.write_text(text)
    result = cli("test", str(path))
    assert result.returncode == 1 and "meetingId" in result.stdout


def test_rules_under_test_that_do_not_load_are_an_error_with_their_positions(tmp_path):
    path = write_tests(tmp_path, [{"name": "t1", "events": [], "expect": []}],
                       rules_text="version: 1\nrules:\n  - name: x\n    on: session-ended\n    action: nope\n")
    result = cli("test", str(path))
    assert result.returncode == 1
    assert result.stdout.splitlines()[0] == f"ERROR {path}: the rules under test do not load:"
    assert f"{tmp_path / 'rules.yaml'}:5:13: unknown action 'nope'" in result.stdout


def test_one_bad_file_does_not_stop_the_others(tmp_path):
    good = write_tests(tmp_path, [{"name": "fine", "events": [ev("0s", "session-ended", "r1")],
                                   "expect": [act("0s", "r1", "close-after-session")]}], name="good.test.yaml")
    bad = tmp_path / "bad.test.yaml"
    bad.write_text("tests: [\n")
    result = cli("test", str(bad), str(good))
    assert result.returncode == 1
    assert result.stdout.splitlines()[0].startswith(f"ERROR {bad}: ")
    assert f"ok    {good}: fine" in result.stdout
    assert result.stderr.strip() == "1 passed, 1 failed"


SHADOW_RULES = """\
version: 1
rules:
  - name: shadow-close
    on: session-ended
    dry_run: true
    action: deactivate
"""


@pytest.mark.parametrize("outcome, passes", [("dry-run", True), ("scheduled", False)])
def test_dry_run_rules_are_expected_with_outcome_dry_run(tmp_path, outcome, passes):
    path = write_tests(tmp_path, [{"name": "shadow", "events": [ev("1m", "session-ended", "r1")],
                                   "expect": [act("1m", "r1", "shadow-close", outcome=outcome)]}],
                       rules_text=SHADOW_RULES)
    result = cli("test", str(path))
    assert result.returncode == (0 if passes else 1), result.stdout
    if not passes:
        assert "      -at 1m: deactivate room r1 by shadow-close (scheduled)" in result.stdout
        assert "      +at 1m: deactivate room r1 by shadow-close (dry-run)" in result.stdout


@pytest.mark.parametrize("body", [
    {"webhookType": "session-ended", "data": {"meetingId": "r1", "sessionId": "s1"}},
    json.dumps({"webhookType": "session-ended", "data": {"meetingId": "r1", "sessionId": "s1"}}),
], ids=["mapping", "json-string"])
def test_an_event_given_as_a_whole_body(tmp_path, body):
    path = write_tests(tmp_path, [
        {"name": "acts on the body", "events": [{"at": "30s", "body": body}],
         "expect": [act("30s", "r1", "close-after-session")]},
        {"name": "an unknown event type never acts", "events": [
            {"at": "0s", "body": {"webhookType": "call-started", "data": {"meetingId": "r1"}}}],
         "expect": []},
    ])
    result = cli("test", str(path))
    assert result.returncode == 0, result.stdout
    assert result.stdout.count("ok    ") == 2


CLOCK_RULES = """\
version: 1
settings:
  timezone: {tz}
rules:
  - name: clocked
    on: participant-left
    when:
      {condition}
    action: deactivate
"""

# (start, timezone, condition, the event's `at`, whether the rule fires)
CLOCK_CASES = {
    "after hours, fires": ("2026-01-05T19:00:00Z", "UTC", 'now.time: {gte: "18:00"}', "0s", True),
    "office hours, does not": ("2026-01-05T09:00:00Z", "UTC", 'now.time: {gte: "18:00"}', "0s", False),
    "at counts from start": ("2026-01-05T17:30:00Z", "UTC", 'now.time: {gte: "18:00"}', "1h", True),
    "saturday, fires": ("2026-01-10T09:00:00Z", "UTC", "now.weekday: {in: [sat, sun]}", "0s", True),
    "friday, does not": ("2026-01-09T09:00:00Z", "UTC", "now.weekday: {in: [sat, sun]}", "0s", False),
    "sunday evening in New York": ("2026-01-05T03:00:00Z", "America/New_York",
                                   "now.weekday: {in: [sat, sun]}", "0s", True),
    "default start is a monday morning": (None, "UTC", "now.weekday: mon", "0s", True),
}


@pytest.mark.parametrize("case", CLOCK_CASES, ids=list(CLOCK_CASES))
def test_start_sets_the_clock_for_now_weekday_and_now_time(tmp_path, case):
    start, tz, condition, at, fires = CLOCK_CASES[case]
    top = {"start": start} if start else {}
    tests = [{"name": case, "events": [ev("0s", "participant-joined", "r1", "ann"),
                                       ev(at, "participant-left", "r1", "ann")],
              "expect": [act(at, "r1", "clocked")] if fires else []}]
    path = write_tests(tmp_path, tests, rules_text=CLOCK_RULES.format(tz=tz, condition=condition), **top)
    result = cli("test", str(path))
    assert result.returncode == 0, result.stdout  # a clock that ignored `start` would fail one way or the other


def test_timers_in_several_rooms_run_side_by_side(tmp_path):
    path = write_tests(tmp_path, [{"name": "three rooms", "events": [
        ev("0s", "participant-joined", "r1", "ann"),
        ev("10s", "participant-joined", "r2", "bob"),
        ev("20s", "participant-joined", "r3", "cat"),
        ev("25s", "participant-joined", "r3", "dan"),
        ev("40s", "participant-left", "r1", "ann"),
        ev("2m", "participant-left", "r2", "bob"),
        ev("3m", "participant-left", "r3", "cat"),  # dan stays: no timer for r3
        ev("6m", "participant-joined", "r2", "bob"),  # cancels r2's timer, which was due at 7m
    ], "expect": [act("5m40s", "r1", "close-when-empty")]}])
    result = cli("test", str(path))
    assert result.returncode == 0, result.stdout

    wrong = write_tests(tmp_path, [{"name": "three rooms", "events": [
        ev("0s", "participant-joined", "r1", "ann"), ev("0s", "participant-joined", "r2", "bob"),
        ev("40s", "participant-left", "r1", "ann"), ev("2m", "participant-left", "r2", "bob")],
        "expect": [act("5m40s", "r1", "close-when-empty")]}], name="wrong.test.yaml")
    result = cli("test", str(wrong))
    assert result.returncode == 1
    assert "      +at 7m: deactivate room r2 by close-when-empty (scheduled)" in result.stdout


LEAVE_JOIN_LEAVE = [ev("0s", "participant-joined", "r1", "ann"), ev("1m", "participant-left", "r1", "ann"),
                    ev("3m", "participant-joined", "r1", "ann"), ev("4m", "participant-left", "r1", "ann")]


@pytest.mark.parametrize("expect, passes", [
    ([act("9m", "r1", "close-when-empty")], True),  # once, five minutes after the second leave
    ([act("6m", "r1", "close-when-empty")], False),  # the first timer was cancelled by the join
    ([act("6m", "r1", "close-when-empty"), act("9m", "r1", "close-when-empty")], False),  # not twice
    ([], False),
], ids=["once-after-last-leave", "not-the-cancelled-timer", "not-twice", "not-never"])
def test_a_timer_cancelled_by_a_join_restarts_on_the_next_leave_and_fires_once(tmp_path, expect, passes):
    path = write_tests(tmp_path, [{"name": "leave, join, leave", "events": LEAVE_JOIN_LEAVE, "expect": expect}])
    result = cli("test", str(path))
    assert result.returncode == (0 if passes else 1), result.stdout
    if not passes:
        assert "+at 9m: deactivate room r1 by close-when-empty (scheduled)" in result.stdout \
            or " at 9m: deactivate room r1 by close-when-empty (scheduled)" in result.stdout


def test_a_sub_second_mismatch_still_shows_in_the_diff(tmp_path):
    path = write_tests(tmp_path, [{"name": "fractional", "events": [
        ev("0s", "participant-joined", "r1", "ann"), ev("40.4s", "participant-left", "r1", "ann")],
        "expect": [act("5m40s", "r1", "close-when-empty")]}])
    result = cli("test", str(path))
    assert result.returncode == 1
    diff = [line.strip() for line in result.stdout.splitlines()[1:]]
    assert any(line.startswith("-at 5m40") for line in diff) and any(line.startswith("+at 5m40") for line in diff)


# == check ======================================================================================

WARNING_RULES = """\
version: 1
rules:
  - name: a
    on: session-ended
    when:
      participant.id: x
    action: deactivate
  - name: b
    on: call-started
    action: deactivate
"""


@pytest.mark.parametrize("strict, code", [(False, 0), (True, 1)], ids=["plain", "strict"])
def test_check_prints_warnings_with_positions_and_fails_only_when_strict(tmp_path, strict, code):
    path = tmp_path / "warn.yaml"
    path.write_text(WARNING_RULES)
    result = cli("check", str(path), *(["--strict"] if strict else []))
    assert result.returncode == code
    lines = result.stdout.splitlines()
    assert lines[:2] == [
        f"{path}:6:7: warning: 'participant.id' is never set on session-ended events (only on participant-*), "
        "so this test is never true",
        f"{path}:9:9: warning: 'call-started': VideoSDK documents no such type (it names the call-* family, "
        "with shapes unknown), and roomwarden does not act on it: events of unknown types are recorded but "
        "never acted on",
    ]
    if strict:
        assert lines[2:] == [] and result.stderr.strip() == "2 warning(s), and --strict"
    else:
        assert re.fullmatch(rf"{re.escape(str(path))}: ok, 2 rule\(s\), sha256 [0-9a-f]{{12}}, 2 warning\(s\)",
                            lines[2])


@pytest.mark.parametrize("args", [["rules.yaml"], []], ids=["named", "from-RULES_FILE"])
def test_the_shipped_rules_pass_check_strict(args):
    result = cli("check", "--strict", *args, env={"RULES_FILE": str(ROOT / "rules.yaml")})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "warning" not in result.stdout + result.stderr
    assert ": ok, 2 rule(s), sha256 " in result.stdout


# == replay =====================================================================================

REPLAY_RULES = RULES_HEAD + SESSION_RULE + EMPTY_RULE
ONLY_TIMER_RULE = RULES_HEAD + EMPTY_RULE


@pytest.fixture
def recorded(service, env):
    """A store holding eight real deliveries for four rooms, decided under REPLAY_RULES."""
    post = service(REPLAY_RULES)
    post(joined("room-a", "ann"), ended("room-a"),  # close-after-session: scheduled
         joined("room-b", "ann"), left("room-b", "ann"),  # close-when-empty: timer-started
         joined("room-c", "ann"), left("room-c", "ann"), joined("room-c", "bob"),  # timer started, cancelled
         ended("room-d"))  # close-after-session: scheduled
    return env


def replayed(env: dict, tmp_path: Path, candidate_text: str, *args: str) -> subprocess.CompletedProcess:
    candidate = tmp_path / "candidate.yaml"
    candidate.write_text(candidate_text)
    return cli("replay", "--rules", str(candidate), "--since", "1h", *args, env=env)


def changes(stdout: str) -> list[tuple[str, str, str]]:
    """(room, what, rule line) for each change printed."""
    lines = stdout.splitlines()
    assert len(lines) % 2 == 0, stdout
    out = []
    for head, rule in zip(lines[::2], lines[1::2]):
        match = re.fullmatch(rf"{WHEN}  room (\S+)  (.+)", head)
        assert match, head
        out.append((match[1], match[2], rule.strip()))
    return out


def test_replay_under_an_identical_candidate_changes_nothing(recorded, tmp_path):
    result = replayed(recorded, tmp_path, REPLAY_RULES)
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    summary = result.stderr.strip().splitlines()[-1]
    match = re.fullmatch(r"8 deliveries replayed under (\w+) \(in force\) and (\w+) \(.*candidate\.yaml\): "
                         r"0 decision\(s\) would change", summary)
    assert match and match[1] == match[2], summary


def test_replay_of_a_candidate_without_a_rule_reports_only_that_rules_decisions(recorded, tmp_path):
    result = replayed(recorded, tmp_path, ONLY_TIMER_RULE)
    assert result.returncode == 0, result.stderr
    found = changes(result.stdout)
    assert [(room, rule) for room, _, rule in found] == [
        ("room-a", "rule close-after-session: scheduled -> no decision"),
        ("room-d", "rule close-after-session: scheduled -> no decision"),
    ]
    assert all(what.startswith("session-ended delivery ") for _, what, _ in found)
    assert result.stderr.strip().endswith(": 2 decision(s) would change")


def test_replay_of_a_candidate_with_another_for_changes_timer_decisions(recorded, tmp_path):
    # the candidate's timers are due a millisecond after their leave: long past when replay runs
    result = replayed(recorded, tmp_path, REPLAY_RULES.replace("for: 5m", "for: 0.001s"))
    assert result.returncode == 0, result.stderr
    found = changes(result.stdout)
    assert ("room-b", "timer:close-when-empty|room-b|s1",
            "rule close-when-empty: no decision -> scheduled") in found
    assert {rule.split(":")[0] for _, _, rule in found} == {"rule close-when-empty"}
    assert not {room for room, _, _ in found} & {"room-a", "room-d"}
    # the timer-started decisions themselves are the same under both files: not reported
    assert not any("timer-started" in rule for _, _, rule in found)


def test_replay_current_option_swaps_the_sides(recorded, tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text(ONLY_TIMER_RULE)
    result = replayed(recorded, tmp_path, REPLAY_RULES, "--current", str(base))
    assert result.returncode == 0, result.stderr
    assert [(room, rule) for room, _, rule in changes(result.stdout)] == [
        ("room-a", "rule close-after-session: no decision -> scheduled"),
        ("room-d", "rule close-after-session: no decision -> scheduled"),
    ]


@pytest.mark.parametrize("flag, bar", [("--progress", True), ("--no-progress", False), (None, False)],
                         ids=["progress", "no-progress", "default-not-a-terminal"])
def test_replay_progress_bar_on_stderr(recorded, tmp_path, flag, bar):
    result = replayed(recorded, tmp_path, REPLAY_RULES, *([flag] if flag else []))
    assert result.returncode == 0, result.stderr
    assert ("replaying [" in result.stderr) is bar
    assert "replaying [" not in result.stdout
    if bar:
        assert f"replaying [{'#' * 30}] 100% 8/8" in result.stderr


@pytest.mark.parametrize("since", ["abc", "1 hour", "-5m", ""])
def test_replay_with_a_bad_since_exits_2(recorded, tmp_path, since):
    candidate = tmp_path / "candidate.yaml"
    candidate.write_text(REPLAY_RULES)
    result = cli("replay", "--rules", str(candidate), f"--since={since}", env=recorded)
    assert result.returncode == 2
    assert result.stderr.startswith("replay: --since: ") and "not a duration" in result.stderr
    assert result.stdout == ""


# == explain ====================================================================================

EXPLAIN_RULES = """\
version: 1
settings:
  protect: ["demo-*"]
rules:
  - name: close-after-session
    on: session-ended
    when:
      not: {room.id: {matches: "^keep-"}}
    action: deactivate
""" + EMPTY_RULE


def story(room: str, env: dict, *args: str) -> tuple[int, list[str]]:
    result = cli("explain", room, *args, env=env)
    assert "Traceback" not in result.stderr, result.stderr
    return result.returncode, result.stdout.splitlines()


def entries(lines: list[str]) -> list[tuple[float, str]]:
    """(time, text) of each timed entry's first line."""
    found = []
    for line in lines:
        match = re.match(rf"({WHEN})  (.*)", line)
        if match:
            found.append((parse_when(match[1]), match[2]))
    return found


def test_explain_a_deactivated_room(service, env, fake_api):
    post = service(EXPLAIN_RULES)
    post(joined("room-a", "ann"), ended("room-a"))
    assert cli("worker", "--once", env=env).returncode == 0
    assert fake_api.deactivations() == ["room-a"]

    code, lines = story("room-a", env)
    assert code == 0
    assert lines[0].startswith("room room-a: 1 session(s) seen, 0 participant(s) in it now, session s1 ended")
    timed = entries(lines)
    masked = [re.sub(r"^delivery \w+ ", "delivery ID ", re.sub(r"\(\d+ ms\)$", "(N ms)", text)) for _, text in timed]
    assert [re.sub(r"rules \w{12}\]$", "rules HASH]", text) for text in masked] == [
        "delivery ID participant-joined participant=ann session=s1 [verified, rules HASH]",
        "delivery ID session-ended session=s1 [verified, rules HASH]",
        "action #1 deactivate attempt 1: HTTP 200, done (N ms)",
    ]
    assert [at for at, _ in timed] == sorted(at for at, _ in timed)
    body = [line.strip() for line in lines]
    joined_at = body.index(next(b for b in body if "participant-joined" in b))
    assert body[joined_at + 1] == "no rule matched"
    assert "rule close-after-session: scheduled -> action #1 deactivate (done)" in body
    assert "yes not" in body
    assert 'no  room.id matches "^keep-"  (actual: "room-a")' in body
    assert re.fullmatch(rf"outcome: deactivated at {WHEN} by rule close-after-session \(action #1\)", lines[-1])


def test_explain_a_room_deactivated_by_a_fired_timer(service, env, fake_api):
    post = service(EXPLAIN_RULES.replace("for: 5m", "for: 0.001s"))  # due at once: the worker fires it
    post(joined("room-t", "ann"), left("room-t", "ann"))
    assert cli("worker", "--once", env=env).returncode == 0
    code, lines = story("room-t", env)
    assert code == 0 and fake_api.deactivations() == ["room-t"]
    body = [line.strip() for line in lines]
    assert "rule close-when-empty: timer-started" in body
    fired = next(text for _, text in entries(lines) if " fired: " in text)
    assert re.fullmatch(r"timer #\d+ \(close-when-empty\) fired: held for \w+", fired)
    assert "rule close-when-empty: scheduled -> action #1 deactivate (done)" in body
    assert lines[-1].startswith("outcome: deactivated at ") and lines[-1].endswith("by rule close-when-empty "
                                                                                  "(action #1)")


def test_explain_a_room_with_a_pending_timer(service, env):
    post = service(EXPLAIN_RULES)
    post(joined("room-b", "ann"), left("room-b", "ann"))
    assert cli("worker", "--once", env=env).returncode == 0  # the timer is not due: nothing to do yet
    code, lines = story("room-b", env)
    assert code == 0
    body = [line.strip() for line in lines]
    assert "rule close-when-empty: timer-started" in body
    assert "yes room.participants eq 0  (actual: 0)" in body
    started = next(re.fullmatch(rf"timer #(\d+) due ({WHEN})", b) for b in body if b.startswith("timer #"))
    leave_at = next(at for at, text in entries(lines) if "participant-left" in text)
    assert abs(parse_when(started[2]) - leave_at - 300) < 0.002  # for: 5m, from the leave
    assert lines[-1] == (f"outcome: not deactivated yet: timer #{started[1]} (close-when-empty) "
                         f"is due {started[2]}")


def test_explain_a_timer_cancelled_by_a_join(service, env):
    post = service(EXPLAIN_RULES)
    post(joined("room-c", "ann"), left("room-c", "ann"), joined("room-c", "bob"))
    code, lines = story("room-c", env)
    assert code == 0
    timer = re.search(r"timer #(\d+) due", "\n".join(lines))[1]
    bob = next(i for i, line in enumerate(lines) if "participant-joined participant=bob" in line)
    assert lines[bob + 1].strip() == (f"cancelled timer #{timer} (close-when-empty): "
                                      "its condition stopped holding on participant-joined")
    assert lines[-1] == ("outcome: not deactivated: its last timer was cancelled "
                         "(its condition stopped holding on participant-joined)")


def test_explain_a_protected_room(service, env, fake_api):
    post = service(EXPLAIN_RULES)
    post(joined("demo-1", "ann"), ended("demo-1"))
    assert cli("worker", "--once", env=env).returncode == 0
    code, lines = story("demo-1", env)
    assert code == 0
    assert "rule close-after-session: protected" in [line.strip() for line in lines]
    assert lines[-1] == "outcome: not deactivated: the room is protected (settings.protect)"
    assert fake_api.deactivations(status=None) == []


def test_explain_shows_a_delivery_kept_unread(service, env, make_app, sign):
    post = service(EXPLAIN_RULES)
    post(joined("room-u", "ann"))
    unread = event_body("participant-left", meetingId="room-u", sessionId="s1")  # no participantId
    app = make_app()
    answer = app.test_client().post("/webhooks/videosdk", data=unread, headers={
        "Content-Type": "application/json", "videosdk-signature": sign(unread)})
    assert answer.status_code == 202  # accepted: what it lacks is found when it is decided
    decide(app)
    kept = app.extensions["roomwarden"].store.history.delivery(answer.get_json()["delivery"])
    assert kept["problem"] == "data.participantId: Missing data for required field."
    code, lines = story("room-u", env)
    assert code == 0
    assert lines[0].startswith("room room-u: 1 session(s) seen, 1 participant(s) in it now")  # ann never left
    heads = [re.sub(r"^delivery \w+ (.*) \[verified, rules \w{12}\]$", r"\1", text) for _, text in entries(lines)]
    assert heads == ["participant-joined participant=ann session=s1", "participant-left session=s1"]
    body = [line.strip() for line in lines]
    left_at = next(i for i, b in enumerate(body) if "participant-left session=s1" in b)
    assert body[left_at + 1:-1] == [
        "participant-left (unreadable: data.participantId: Missing data for required field.): kept, not decided on"]
    assert lines[-1] == ("outcome: not deactivated: no rule matched any of its 1 readable deliveries; "
                         "1 kept unread, not decided on")


@pytest.mark.parametrize("json_flag", [False, True], ids=["text", "json"])
def test_explain_an_unknown_room_exits_1(service, env, json_flag):
    service(EXPLAIN_RULES)(ended("room-a"))  # something else is recorded
    code, lines = story("no-such-room", env, *(["--json"] if json_flag else []))
    assert code == 1
    if json_flag:
        assert all(rows == [] for rows in json.loads("\n".join(lines)).values())
    else:
        assert lines == ["room no-such-room: no state recorded", "outcome: nothing recorded for this room"]


def test_explain_json_has_the_six_kinds_of_record(service, env):
    post = service(EXPLAIN_RULES)
    post(joined("room-a", "ann"), ended("room-a"))
    assert cli("worker", "--once", env=env).returncode == 0
    code, lines = story("room-a", env, "--json")
    assert code == 0
    data = json.loads("\n".join(lines))
    assert set(data) == {"deliveries", "decisions", "timers", "actions", "attempts", "room"}
    assert [d["event_type"] for d in data["deliveries"]] == ["participant-joined", "session-ended"]
    assert [(d["rule"], d["outcome"]) for d in data["decisions"]] == [("close-after-session", "scheduled")]
    assert data["decisions"][0]["trace"]["node"] == "not"
    assert [(a["kind"], a["status"]) for a in data["actions"]] == [("deactivate", "done")]
    assert [a["http_status"] for a in data["attempts"]] == [200]
    assert data["room"][0]["room_id"] == "room-a" and data["timers"] == []


def test_explain_shows_each_timer_under_the_decision_that_started_it(service, env):
    two_timers = EXPLAIN_RULES + ("  - name: end-when-empty\n    on: participant-left\n    when:\n"
                                  "      room.participants: 0\n    for: 10m\n    action: end-session\n")
    post = service(two_timers)
    post(joined("room-2", "ann"), left("room-2", "ann"))
    code, lines = story("room-2", env)
    assert code == 0
    data = json.loads(cli("explain", "room-2", "--json", env=env).stdout)
    by_rule = {t["rule"]: t["id"] for t in data["timers"]}
    body = [line.strip() for line in lines]
    for rule in ("close-when-empty", "end-when-empty"):
        decision = body.index(f"rule {rule}: timer-started")
        shown = next(b for b in body[decision:] if b.startswith("timer #"))
        assert shown.startswith(f"timer #{by_rule[rule]} due "), (rule, shown)


# == actions and retry ==========================================================================

DEAD_ENV = {"ACTION_MAX_ATTEMPTS": "1"}


def listed(env: dict, status: str) -> dict[int, str]:
    """`actions --status STATUS`: {id: line}."""
    result = cli("actions", "--status", status, env=env)
    assert result.returncode == 0, result.stderr
    return {int(line.split()[0]): line for line in result.stdout.splitlines()}


def make_dead(post, env, fake_api, *rooms: str) -> dict[int, str]:
    """One dead deactivate action per room: the API answers 500 and one attempt is all there is."""
    fake_api.script("/v2/rooms/deactivate", *[Reply(500, {"message": "boom"}) for _ in rooms])
    post(*[ended(room) for room in rooms])
    assert cli("worker", "--once", env={**env, **DEAD_ENV}).returncode == 0
    assert fake_api.deactivations(status=500) == list(rooms) and fake_api.deactivations() == []
    dead = listed(env, "dead")
    assert len(dead) == len(rooms)
    return dead


def test_retry_a_dead_action_and_the_next_worker_run_completes_it(service, env, fake_api):
    dead = make_dead(service(), env, fake_api, "room-x")
    [(action_id, line)] = dead.items()
    assert "room=room-x rule=close-after-session attempts=1" in line and "last_error=" in line

    result = cli("retry", str(action_id), env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [f"action {action_id}: pending again, due now"]
    assert listed(env, "dead") == {}
    assert "attempts=0" in listed(env, "pending")[action_id]

    assert cli("worker", "--once", env={**env, **DEAD_ENV}).returncode == 0
    assert fake_api.deactivations() == ["room-x"]
    assert action_id in listed(env, "done")


def test_retry_all_dead(service, env, fake_api):
    dead = make_dead(service(), env, fake_api, "room-x", "room-y")
    result = cli("retry", "--all-dead", env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [f"action {i}: pending again, due now" for i in sorted(dead)]
    assert cli("worker", "--once", env=env).returncode == 0
    assert sorted(fake_api.deactivations()) == ["room-x", "room-y"]
    assert set(listed(env, "done")) == set(dead)


def test_retry_without_ids_or_all_dead_exits_2(env):
    result = cli("retry", env=env)
    assert result.returncode == 2
    assert "retry: give action ids, or --all-dead" in result.stderr


def test_retry_of_an_action_that_is_not_dead_leaves_it_as_it_is(service, env, fake_api):
    post = service()
    post(ended("room-ok"))
    assert cli("worker", "--once", env=env).returncode == 0
    [done_id] = listed(env, "done")
    for ids in ([str(done_id)], ["999"]):
        result = cli("retry", *ids, env=env)
        assert result.returncode == 1
        assert f"action {ids[0]}: not dead; left as it is" in result.stderr
        assert result.stdout == ""
    assert set(listed(env, "done")) == {done_id} and listed(env, "pending") == {}


def test_retry_of_a_dead_and_a_done_action_retries_only_the_dead_one(service, env, fake_api):
    post = service()
    [dead_id] = make_dead(post, env, fake_api, "room-x")
    post(ended("room-ok"))
    assert cli("worker", "--once", env=env).returncode == 0
    [done_id] = listed(env, "done")
    result = cli("retry", str(dead_id), str(done_id), env=env)
    assert result.returncode == 0
    assert result.stdout.splitlines() == [f"action {dead_id}: pending again, due now"]
    assert f"action {done_id}: not dead; left as it is" in result.stderr
    assert set(listed(env, "pending")) == {dead_id}
