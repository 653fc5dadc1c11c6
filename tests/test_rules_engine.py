"""The pure rule engine: operators, three-valued conditions, fields, evaluate (and the planner's keys),
rules_for, traces, and compiled evaluation agreeing with the condition trees."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from types import MappingProxyType

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.events import Event
from service.planner import Outcome, action_key, plan_event
from service.rooms import RoomState
from service.rules.conditions import Compare
from service.rules.engine import evaluate
from service.rules.fields import MISSING, Facts
from service.rules.loader import parse_rules
from service.rules.model import Rule, RuleSet

from .condition_oracle import walk

T0 = datetime(2022, 7, 5, 15, 55, 35, tzinfo=timezone.utc)
DATA = {
    "meetingId": "room-1", "sessionId": "s-1",
    "start": "2022-07-05T15:55:35Z", "end": "2022-07-05T16:05:35Z",
    "flag": True, "count": 1, "ratio": 1.0, "text": "1", "nothing": None, "empty": "",
    "nested": {"a": {"b": "deep"}},
    "list": [10, {"x": "y"}],
    "fileDetails": [{"filePath": "/p/1.webm", "fileUrl": "https://cdn.example/p/1.webm"}],
}


def event(event_type="session-ended", *, known=True, room_id="room-1", session_id="s-1",
          participant_id=None, participant_name=None, start=T0, end=T0 + timedelta(seconds=600), data=None):
    return Event(type=event_type, data=MappingProxyType(dict(DATA if data is None else data)), known=known,
                 room_id=room_id, session_id=session_id, participant_id=participant_id,
                 participant_name=participant_name, start=start, end=end)


SE = event()  # session-ended, 600 s, no participant fields
PJ = event("participant-joined", participant_id="p-1", participant_name="Alice", start=None, end=None)
SHORT = event(end=T0 + timedelta(seconds=30))


def facts(ev: Event) -> Facts:
    return Facts(event=ev, now=1_700_000_000.0)


def rule_set(text: str):
    rules, problems = parse_rules(text, "t.yaml")
    assert problems == [], [str(p) for p in problems]
    return rules


def one_rule(when: str | None, on: str = "'*'", name: str = "r"):
    text = f"version: 1\nrules:\n  - name: {name}\n    on: {on}\n    action: deactivate\n"
    if when is not None:
        text += "    when:\n" + "".join(f"      {line}\n" for line in when.splitlines())
    return rule_set(text)


def result_of(when: str, ev: Event):
    [res] = evaluate(one_rule(when), facts(ev))
    return res.result


# -- every operator: true, false, unknown -----------------------------------------------------

@pytest.mark.parametrize("when, ev, expected", [
    # eq
    pytest.param("room.id: {eq: room-1}", SE, True, id="eq-true"),
    pytest.param("room.id: room-1", SE, True, id="eq-shorthand-true"),
    pytest.param("room.id: {eq: room-2}", SE, False, id="eq-false"),
    pytest.param("participant.id: {eq: p-1}", SE, None, id="eq-missing-unknown"),
    pytest.param("participant.id: {eq: p-1}", PJ, True, id="eq-participant-on-participant-event"),
    # ne
    pytest.param("room.id: {ne: room-2}", SE, True, id="ne-true"),
    pytest.param("room.id: {ne: room-1}", SE, False, id="ne-false"),
    pytest.param("participant.name: {ne: Bob}", SE, None, id="ne-missing-unknown"),
    # in
    pytest.param("room.id: {in: [a-b-c, room-1]}", SE, True, id="in-true"),
    pytest.param("room.id: {in: [a-b-c, d-e-f]}", SE, False, id="in-false"),
    pytest.param("participant.name: {in: [Alice]}", SE, None, id="in-missing-unknown"),
    # not_in
    pytest.param("room.id: {not_in: [a-b-c]}", SE, True, id="not_in-true"),
    pytest.param("room.id: {not_in: [a-b-c, room-1]}", SE, False, id="not_in-false"),
    pytest.param("participant.name: {not_in: [Alice]}", SE, None, id="not_in-missing-unknown"),
    # gt / gte / lt / lte on session.duration (600 s)
    pytest.param("session.duration: {gt: 599.5}", SE, True, id="gt-true"),
    pytest.param("session.duration: {gt: 600}", SE, False, id="gt-false-equal"),
    pytest.param("session.duration: {gt: 1}", PJ, None, id="gt-missing-unknown"),
    pytest.param("session.duration: {gte: 600}", SE, True, id="gte-true-equal"),
    pytest.param("session.duration: {gte: 601}", SE, False, id="gte-false"),
    pytest.param("session.duration: {gte: 60}", PJ, None, id="gte-missing-unknown"),
    pytest.param("session.duration: {lt: 601}", SE, True, id="lt-true"),
    pytest.param("session.duration: {lt: 600}", SE, False, id="lt-false-equal"),
    pytest.param("session.duration: {lt: 60}", PJ, None, id="lt-missing-unknown"),
    pytest.param("session.duration: {lte: 600}", SE, True, id="lte-true-equal"),
    pytest.param("session.duration: {lte: 599}", SE, False, id="lte-false"),
    pytest.param("session.duration: {lte: 60}", PJ, None, id="lte-missing-unknown"),
    pytest.param("session.duration: {gte: 60}", event(end=T0 - timedelta(seconds=1)), None,
                 id="gte-end-before-start-unknown"),
    # matches (re.search, not fullmatch)
    pytest.param(r"room.id: {matches: '^room-\d$'}", SE, True, id="matches-true"),
    pytest.param("room.id: {matches: '1'}", SE, True, id="matches-searches-anywhere"),
    pytest.param("room.id: {matches: '^x'}", SE, False, id="matches-false"),
    pytest.param("room.id: {matches: '^ROOM'}", SE, False, id="matches-case-sensitive"),
    pytest.param("participant.name: {matches: '.*'}", SE, None, id="matches-missing-unknown"),
    # exists: definite even when the field is missing
    pytest.param("room.id: {exists: true}", SE, True, id="exists-true-present"),
    pytest.param("room.id: {exists: false}", SE, False, id="exists-false-present"),
    pytest.param("participant.id: {exists: true}", SE, False, id="exists-true-missing-is-definite"),
    pytest.param("participant.id: {exists: false}", SE, True, id="exists-false-missing-is-definite"),
    pytest.param("data.nothing: {exists: true}", SE, False, id="exists-true-null-is-false"),
    pytest.param("data.nothing: {exists: false}", SE, True, id="exists-false-null-is-true"),
    pytest.param("data.empty: {exists: true}", SE, True, id="exists-empty-string-is-present"),
    # the event field
    pytest.param("event: session-ended", SE, True, id="event-field"),
    pytest.param("event: {matches: '^participant-'}", PJ, True, id="event-field-matches"),
])
def test_operators(when, ev, expected):
    assert result_of(when, ev) is expected


# -- type strictness --------------------------------------------------------------------------

@pytest.mark.parametrize("when, expected", [
    pytest.param("data.flag: true", True, id="true-eq-true"),
    pytest.param("data.flag: 1", False, id="true-is-not-1"),
    pytest.param("data.count: true", False, id="1-is-not-true"),
    pytest.param("data.flag: {ne: 1}", True, id="true-ne-1"),
    pytest.param("data.flag: {in: [1, '1']}", False, id="true-not-in-1s"),
    pytest.param("data.count: {in: [true]}", False, id="1-not-in-true"),
    pytest.param("data.text: 1", False, id="string-1-is-not-1"),
    pytest.param("data.count: '1'", False, id="1-is-not-string-1"),
    pytest.param("data.text: '1'", True, id="string-1-eq-string-1"),
    pytest.param("data.count: 1.0", True, id="1-eq-1.0"),
    pytest.param("data.ratio: 1", True, id="1.0-eq-1"),
    pytest.param("data.ratio: {in: [1]}", True, id="1.0-in-1"),
    pytest.param("data.nothing: null", True, id="null-eq-null"),
    pytest.param("data.nothing: {ne: 0}", True, id="null-ne-0"),
    pytest.param("data.empty: null", False, id="empty-string-is-not-null"),
    pytest.param("data.nested: x", False, id="object-is-not-a-string"),
    # ordering and regexes need the right kind; otherwise unknown, never an error
    pytest.param("data.flag: {gt: 0}", None, id="bool-is-not-a-number-for-gt"),
    pytest.param("data.text: {gt: 0}", None, id="string-is-not-a-number-for-gt"),
    pytest.param("data.nothing: {lt: 1}", None, id="null-is-not-a-number-for-lt"),
    pytest.param("data.count: {gte: 1}", True, id="int-gte"),
    pytest.param("data.ratio: {lt: 1.5}", True, id="float-lt"),
    pytest.param("data.count: {matches: '1'}", None, id="number-does-not-match-regex"),
    pytest.param("data.nested: {matches: 'deep'}", None, id="object-does-not-match-regex"),
    pytest.param("data.text: {matches: '^1$'}", True, id="string-matches-regex"),
])
def test_type_strictness(when, expected):
    assert result_of(when, SE) is expected


# -- data.<path> ------------------------------------------------------------------------------

@pytest.mark.parametrize("when, expected", [
    pytest.param("data.meetingId: room-1", True, id="top-level-key"),
    pytest.param("data.nested.a.b: deep", True, id="nested-dicts"),
    pytest.param("data.nested.a.b: shallow", False, id="nested-dicts-false"),
    pytest.param("data.nested.a.c: deep", None, id="missing-nested-key"),
    pytest.param("data.nested.a.b.c: deep", None, id="path-through-a-string"),
    pytest.param("data.nope.a: x", None, id="missing-top-key"),
    pytest.param("data.list.0: 10", True, id="list-index-0"),
    pytest.param("data.list.1.x: y", True, id="list-index-then-key"),
    pytest.param("data.list.2: 10", None, id="list-index-out-of-range"),
    pytest.param("data.list.-1: 10", None, id="negative-index-is-missing"),
    pytest.param("data.list.x: 10", None, id="key-on-a-list-is-missing"),
    pytest.param("data.fileDetails.0.fileUrl: {matches: '^https://'}", True, id="participant-recording-file-url"),
    pytest.param("data.fileDetails.0.fileUrl: {exists: true}", True, id="exists-deep"),
    pytest.param("data.fileDetails.5.fileUrl: {exists: true}", False, id="exists-deep-missing"),
    pytest.param("data.meetingId.0: r", None, id="index-into-a-string-is-missing"),
    pytest.param("data.nothing.x: {exists: false}", True, id="path-through-null-is-missing"),
])
def test_data_paths(when, expected):
    assert result_of(when, SE) is expected


# -- combinators under three-valued logic ------------------------------------------------------

T = "room.id: room-1"          # true on SE
F = "room.id: room-2"          # false on SE
U = "participant.id: p-1"      # unknown on SE (the field is missing)


def block(key: str, *items: str) -> str:
    return f"{key}:\n" + "".join(f"  - {item}\n" for item in items)


@pytest.mark.parametrize("when, expected", [
    pytest.param(block("all", T, T), True, id="all-true-true"),
    pytest.param(block("all", T, F), False, id="all-true-false"),
    pytest.param(block("all", F, U), False, id="all-false-unknown-is-false"),
    pytest.param(block("all", U, F), False, id="all-unknown-false-is-false"),
    pytest.param(block("all", T, U), None, id="all-true-unknown-is-unknown"),
    pytest.param(block("all", U), None, id="all-unknown"),
    pytest.param(block("any", F, F), False, id="any-false-false"),
    pytest.param(block("any", F, T), True, id="any-false-true"),
    pytest.param(block("any", T, U), True, id="any-true-unknown-is-true"),
    pytest.param(block("any", U, T), True, id="any-unknown-true-is-true"),
    pytest.param(block("any", F, U), None, id="any-false-unknown-is-unknown"),
    pytest.param(f"not: {{{T}}}", False, id="not-true"),
    pytest.param(f"not: {{{F}}}", True, id="not-false"),
    pytest.param(f"not: {{{U}}}", None, id="not-unknown-is-unknown"),
    pytest.param("not:\n  all: [{%s}, {%s}]" % (F, U), True, id="not-all-false-unknown"),
    pytest.param("not:\n  any: [{%s}, {%s}]" % (F, U), None, id="not-any-false-unknown"),
    pytest.param("not:\n  not: {%s}" % U, None, id="not-not-unknown"),
    pytest.param(f"{T}\n{U}", None, id="implicit-all-true-unknown"),
    pytest.param(f"{F}\n{U}", False, id="implicit-all-false-unknown"),
    pytest.param("session.duration: {gt: 10, lt: 20}", False, id="two-operators-on-a-field-are-all"),
    pytest.param("session.duration: {gt: 10, lt: 601}", True, id="two-operators-both-true"),
    pytest.param("any:\n  - all: [{%s}, {%s}]\n  - not: {%s}" % (T, T, U), True, id="nested-any-all-not"),
])
def test_three_valued_combinators(when, expected):
    assert result_of(when, SE) is expected


# -- evaluate, and what the planner makes of it ----------------------------------------------

NOW = 1_700_000_000.0


def plan(rules, ev: Event):
    return plan_event(rules, ev, NOW, None, (), set(), acts=True)


def test_rule_without_when_matches():
    [res] = evaluate(one_rule(None, on="session-ended"), facts(SE))
    assert res.result is True and res.matched is True and res.trace is None
    [outcome] = plan(one_rule(None, on="session-ended"), SE).outcomes
    assert outcome.trace is None and outcome.outcome == "scheduled"


DECIDE_RULES = """\
version: 1
rules:
  - name: long-sessions
    on: session-ended
    when:
      session.duration: {gte: 60}
    action: deactivate
  - name: always
    on: session-ended
    action: deactivate
  - name: unknowable
    on: session-ended
    when:
      participant.id: p-1
    action: deactivate
  - name: never
    on: session-ended
    when:
      room.id: nobody
    action: deactivate
  - name: everything
    on: '*'
    action: deactivate
"""


@pytest.mark.parametrize("ev, expected_keys", [
    pytest.param(SE, ["long-sessions|room-1|s-1", "always|room-1|s-1", "everything|room-1|s-1"],
                 id="session-ended-long"),
    pytest.param(SHORT, ["always|room-1|s-1", "everything|room-1|s-1"], id="session-ended-short"),
    pytest.param(event(session_id=None), ["long-sessions|room-1|-", "always|room-1|-", "everything|room-1|-"],
                 id="no-session-id-is-dash"),
    pytest.param(PJ, ["everything|room-1|s-1"], id="participant-joined-only-glob"),
    # unknown event types are recorded, never acted on, even when a rule would match
    pytest.param(event("agent-session-started", known=False), [], id="unknown-event-type"),
    pytest.param(event("session-ended", known=False), [], id="not-known-even-with-known-name"),
    pytest.param(event(room_id=None), [], id="no-room-id"),
    pytest.param(event(room_id=""), [], id="empty-room-id"),
])
def test_plan_event_keys(ev, expected_keys):
    outcomes = plan(rule_set(DECIDE_RULES), ev).outcomes
    assert [o.key for o in outcomes] == expected_keys
    for o in outcomes:
        assert isinstance(o, Outcome)
        assert o.outcome == "scheduled"
        assert o.action == "deactivate"
        assert o.room_id == ev.room_id
        assert o.session_id == ev.session_id
        assert o.key == f"{o.rule}|{o.room_id}|{o.session_id or '-'}"


def test_plan_event_skips_unknown_and_false_results_that_evaluate_reports():
    rules = rule_set(DECIDE_RULES)
    results = {r.rule.name: r.result for r in evaluate(rules, facts(SE))}
    assert results == {"long-sessions": True, "always": True, "unknowable": None, "never": False,
                       "everything": True}
    planned = {o.rule for o in plan(rules, SE).outcomes}
    assert planned == {"long-sessions", "always", "everything"}


def test_evaluate_still_reports_on_unknown_event_types():
    rules = rule_set(DECIDE_RULES)
    unknown = event("agent-session-started", known=False)
    assert [(r.rule.name, r.result) for r in evaluate(rules, facts(unknown))] == [("everything", True)]
    assert plan(rules, unknown).outcomes == ()
    assert plan(rules, unknown).room is None  # not folded into any room


def test_outcome_carries_the_trace_of_its_rule():
    [outcome, *_] = plan(rule_set(DECIDE_RULES), SE).outcomes
    assert outcome.rule == "long-sessions"
    assert outcome.trace.to_dict()["actual"] == 600.0


@pytest.mark.parametrize("rule, room, session, key", [
    pytest.param("r", "abcd-efgh-ijkl", "s1", "r|abcd-efgh-ijkl|s1", id="all-parts"),
    pytest.param("r", "abcd-efgh-ijkl", None, "r|abcd-efgh-ijkl|-", id="no-session"),
    pytest.param("r", "abcd-efgh-ijkl", "", "r|abcd-efgh-ijkl|-", id="empty-session"),
])
def test_action_key(rule, room, session, key):
    assert action_key(rule, room, session) == key


# -- rules_for --------------------------------------------------------------------------------

INDEX_RULES = """\
version: 1
rules:
  - {name: a, on: session-ended, action: deactivate}
  - {name: b, on: 'session-*', action: deactivate}
  - {name: c, on: [participant-joined, session-ended], action: deactivate}
  - {name: d, on: recording-stopped, action: deactivate}
  - {name: e, on: [session-started, 'recording-*'], action: deactivate}
  - {name: f, on: 'hls-?????', action: deactivate}
  - {name: g, on: [session-ended, session-ended], action: deactivate}
"""


@pytest.mark.parametrize("event_type, expected", [
    pytest.param("session-ended", ["a", "b", "c", "g"], id="exact-glob-and-list-in-file-order"),
    pytest.param("session-started", ["b", "e"], id="glob-and-mixed-list"),
    pytest.param("participant-joined", ["c"], id="second-item-of-a-list"),
    pytest.param("recording-stopped", ["d", "e"], id="exact-then-glob-in-a-list"),
    pytest.param("recording-started", ["e"], id="glob-in-a-list"),
    pytest.param("hls-ended", ["f"], id="question-marks"),
    pytest.param("hls-started", [], id="question-marks-wrong-length"),
    pytest.param("SESSION-ENDED", [], id="case-sensitive"),
    pytest.param("agent-session-started", [], id="unrelated"),
])
def test_rules_for(event_type, expected):
    rules = rule_set(INDEX_RULES)
    got = rules.rules_for(event_type)
    assert isinstance(got, tuple)
    assert [r.name for r in got] == expected
    assert rules.rules_for(event_type) is got  # memoized


def test_rules_for_star_matches_everything_and_sets_do_not_share_memos():
    everything = rule_set("version: 1\nrules:\n  - {name: all, on: '*', action: deactivate}\n")
    nothing = rule_set("version: 1\nrules:\n  - {name: one, on: hls-started, action: deactivate}\n")
    assert [r.name for r in everything.rules_for("anything-at-all")] == ["all"]
    assert nothing.rules_for("anything-at-all") == ()
    assert [r.name for r in everything.rules_for("hls-started")] == ["all"]
    assert [r.name for r in nothing.rules_for("hls-started")] == ["one"]


def test_rules_for_keeps_file_order_when_a_glob_comes_before_an_exact_match():
    # positions 1 (glob) and 9 (exact) collide in a small set; the result must still be in file order
    lines = ["version: 1", "rules:"]
    for i in range(10):
        on = {1: "'x-*'", 9: "x-y"}.get(i, f"other-{i}")
        lines.append(f"  - {{name: r{i}, on: {on}, action: deactivate}}")
    rules = rule_set("\n".join(lines) + "\n")
    assert [r.name for r in rules.rules_for("x-y")] == ["r1", "r9"]


def test_rules_for_stays_right_past_the_memo_bound():
    rules = rule_set(INDEX_RULES)
    for i in range(5000):
        assert rules.rules_for(f"session-x{i}") == (rules.rules[1],)  # only 'session-*'
    assert [r.name for r in rules.rules_for("recording-zzz")] == ["e"]
    assert [r.name for r in rules.rules_for("session-ended")] == ["a", "b", "c", "g"]


def test_evaluate_follows_rules_for():
    rules = rule_set(INDEX_RULES)
    assert [r.rule.name for r in evaluate(rules, facts(event("recording-stopped")))] == ["d", "e"]


# -- traces -----------------------------------------------------------------------------------

SHIPPED_LIKE = """\
session.duration: {gte: 60}
not:
  room.id: {in: [keep-keep-keep]}
"""


def test_trace_to_dict_and_lines_for_a_match():
    [res] = evaluate(one_rule(SHIPPED_LIKE, on="session-ended"), facts(SE))
    assert res.result is True
    as_json = json.loads(json.dumps(res.trace.to_dict()))
    assert as_json == {
        "node": "all", "result": True, "children": [
            {"node": "gte", "result": True, "field": "session.duration", "operand": 60, "actual": 600.0,
             "missing": False},
            {"node": "not", "result": True, "children": [
                {"node": "in", "result": False, "field": "room.id", "operand": ["keep-keep-keep"],
                 "actual": "room-1", "missing": False},
            ]},
        ],
    }
    assert res.trace.lines() == [
        "yes all",
        "  yes session.duration gte 60  (actual: 600.0)",
        "  yes not",
        '    no  room.id in ["keep-keep-keep"]  (actual: "room-1")',
    ]


@pytest.mark.parametrize("when, ev, expected_dict, expected_line", [
    pytest.param("session.duration: {gte: 60}", PJ,
                 {"node": "gte", "result": None, "field": "session.duration", "operand": 60, "actual": None,
                  "missing": True},
                 "?   session.duration gte 60  (actual: missing)", id="missing-field"),
    pytest.param("data.nothing: {eq: x}", SE,
                 {"node": "eq", "result": False, "field": "data.nothing", "operand": "x", "actual": None,
                  "missing": False},
                 'no  data.nothing eq "x"  (actual: null)', id="null-is-not-missing"),
    pytest.param("participant.id: {exists: false}", SE,
                 {"node": "exists", "result": True, "field": "participant.id", "operand": False, "actual": None,
                  "missing": True},
                 "yes participant.id exists false  (actual: missing)", id="exists-on-missing"),
    pytest.param("room.id: {matches: '^room-'}", SE,
                 {"node": "matches", "result": True, "field": "room.id", "operand": "^room-", "actual": "room-1",
                  "missing": False},
                 'yes room.id matches "^room-"  (actual: "room-1")', id="matches-shows-pattern-text"),
    pytest.param("data.list.1: {exists: true}", SE,
                 {"node": "exists", "result": True, "field": "data.list.1", "operand": True, "actual": {"x": "y"},
                  "missing": False},
                 'yes data.list.1 exists true  (actual: {"x": "y"})', id="object-actual"),
    pytest.param("participant.name: {in: [Zoë, Al]}", PJ,
                 {"node": "in", "result": False, "field": "participant.name", "operand": ["Zoë", "Al"],
                  "actual": "Alice", "missing": False},
                 'no  participant.name in ["Zoë", "Al"]  (actual: "Alice")', id="unicode-list-operand"),
])
def test_trace_leaf(when, ev, expected_dict, expected_line):
    [res] = evaluate(one_rule(when), facts(ev))
    trace = res.trace
    assert json.loads(json.dumps(trace.to_dict())) == expected_dict
    assert trace.lines() == [expected_line]
    if expected_dict["missing"]:
        assert trace.actual is MISSING


def test_trace_lines_indent_unknowns_in_combinators():
    when = "any:\n  - %s\n  - %s" % (F, U)
    [res] = evaluate(one_rule(when), facts(SE))
    assert res.trace.lines() == [
        "?   any",
        '  no  room.id eq "room-2"  (actual: "room-1")',
        '  ?   participant.id eq "p-1"  (actual: missing)',
    ]
    d = res.trace.to_dict()
    assert d["result"] is None
    assert [c["missing"] for c in d["children"]] == [False, True]


# -- room and session fields, from the room's state ---------------------------------------------

NOW_R = 1_700_000_000.0
IN_USE = RoomState("room-1", participants=frozenset({"a", "b"}), session_id="s-3", session_started_at=NOW_R - 600,
                   session_active=True, sessions=3, empty_since=None, recent_sessions=("s-1", "s-2", "s-3"))
EMPTY_90S = RoomState("room-1", session_id="s-1", session_started_at=NOW_R - 600, session_active=True, sessions=1,
                      empty_since=NOW_R - 90, recent_sessions=("s-1",))
ENDED_30S = RoomState("room-1", session_id="s-1", session_started_at=NOW_R - 600, session_active=False, sessions=1,
                      empty_since=NOW_R - 30, recent_sessions=("s-1",))
FRESH = RoomState("room-1")  # nothing seen yet: not empty "since" anything
CLOCK_BEHIND = RoomState("room-1", session_id="s-1", session_started_at=NOW_R + 5, session_active=True, sessions=1,
                         empty_since=NOW_R + 10)  # a stored time ahead of the clock reads as 0


def room_result(when: str, room: RoomState | None):
    [res] = evaluate(one_rule(when), Facts(event=SE, now=NOW_R, room=room))
    return res


@pytest.mark.parametrize("when, room, expected", [
    # room.participants: how many are in the room now
    pytest.param("room.participants: 2", IN_USE, True, id="participants-eq"),
    pytest.param("room.participants: {gt: 1}", IN_USE, True, id="participants-gt"),
    pytest.param("room.participants: 0", IN_USE, False, id="participants-eq-0-false"),
    pytest.param("room.participants: 0", EMPTY_90S, True, id="participants-0-when-empty"),
    pytest.param("room.participants: 0", FRESH, True, id="participants-0-fresh"),
    pytest.param("room.participants: 0", None, None, id="participants-no-room-state-unknown"),
    # room.sessions: how many sessions have been seen
    pytest.param("room.sessions: 3", IN_USE, True, id="sessions-eq"),
    pytest.param("room.sessions: {gte: 2}", EMPTY_90S, False, id="sessions-gte-false"),
    pytest.param("room.sessions: 0", FRESH, True, id="sessions-0-fresh"),
    pytest.param("room.sessions: {gte: 0}", None, None, id="sessions-no-room-state-unknown"),
    # room.empty_for: seconds since the room became empty, while it is
    pytest.param("room.empty_for: {gte: 90}", EMPTY_90S, True, id="empty_for-seconds"),
    pytest.param("room.empty_for: {gte: 90s}", EMPTY_90S, True, id="empty_for-90s"),
    pytest.param("room.empty_for: {gt: 1m}", EMPTY_90S, True, id="empty_for-gt-1m"),
    pytest.param("room.empty_for: {gte: 2m}", EMPTY_90S, False, id="empty_for-gte-2m-false"),
    pytest.param("room.empty_for: {lt: 1m}", ENDED_30S, True, id="empty_for-after-session-ended"),
    pytest.param("room.empty_for: {gte: 0}", IN_USE, None, id="empty_for-missing-while-occupied"),
    pytest.param("room.empty_for: {gte: 0}", FRESH, None, id="empty_for-missing-without-empty_since"),
    pytest.param("room.empty_for: {gte: 0}", None, None, id="empty_for-no-room-state-unknown"),
    pytest.param("room.empty_for: 0", CLOCK_BEHIND, True, id="empty_for-never-negative"),
    pytest.param("room.empty_for: {exists: false}", IN_USE, True, id="empty_for-exists-false-while-occupied"),
    # session.age: seconds since the current session started, while it is live
    pytest.param("session.age: {gte: 10m}", IN_USE, True, id="age-gte-10m"),
    pytest.param("session.age: {gt: 10m}", IN_USE, False, id="age-gt-10m-false"),
    pytest.param("session.age: 600", EMPTY_90S, True, id="age-seconds"),
    pytest.param("session.age: {gte: 0}", ENDED_30S, None, id="age-missing-after-session-ended"),
    pytest.param("session.age: {gte: 0}", FRESH, None, id="age-missing-without-session"),
    pytest.param("session.age: {gte: 0}", None, None, id="age-no-room-state-unknown"),
    pytest.param("session.age: 0", CLOCK_BEHIND, True, id="age-never-negative"),
])
def test_room_and_session_fields(when, room, expected):
    assert room_result(when, room).result is expected


@pytest.mark.parametrize("when, room, actual", [
    pytest.param("room.participants: 0", IN_USE, 2, id="participants"),
    pytest.param("room.sessions: 0", IN_USE, 3, id="sessions"),
    pytest.param("room.empty_for: 0", EMPTY_90S, 90.0, id="empty_for"),
    pytest.param("session.age: 0", IN_USE, 600.0, id="age"),
    pytest.param("room.empty_for: 0", IN_USE, MISSING, id="empty_for-missing"),
])
def test_room_fields_in_traces(when, room, actual):
    trace = room_result(when, room).trace
    assert trace.actual == actual if actual is not MISSING else trace.actual is MISSING


def test_room_fields_read_the_state_the_planner_folded():
    rules = rule_set("version: 1\nrules:\n  - name: last-out\n    on: participant-left\n    when:\n"
                     "      room.participants: 0\n      room.sessions: 1\n    action: deactivate\n")
    joined = event("participant-joined", participant_id="p-1", start=None, end=None)
    left = event("participant-left", participant_id="p-1", start=None, end=None)
    other_left = event("participant-left", participant_id="p-2", start=None, end=None)
    room = plan_event(rules, joined, NOW, None, (), set(), acts=True).room
    room = plan_event(rules, event("participant-joined", participant_id="p-2", start=None, end=None),
                      NOW, room, (), set(), acts=True).room
    first = plan_event(rules, left, NOW + 1, room, (), set(), acts=True)
    assert first.outcomes == () and first.room.participants == {"p-2"}
    last = plan_event(rules, other_left, NOW + 2, first.room, (), set(), acts=True)
    assert [(o.rule, o.outcome) for o in last.outcomes] == [("last-out", "scheduled")]


# -- now.time and now.weekday, in the rules' timezone ------------------------------------------

MON_2330_UTC_SUMMER = datetime(2024, 7, 1, 23, 30, tzinfo=timezone.utc).timestamp()  # a Monday
MON_2330_UTC_WINTER = datetime(2024, 1, 1, 23, 30, tzinfo=timezone.utc).timestamp()  # a Monday
SAT_NOON_UTC = datetime(2024, 7, 6, 12, 0, tzinfo=timezone.utc).timestamp()


def timed_rules(when: str, tz: str | None):
    settings = f"settings:\n  timezone: {tz}\n" if tz else ""
    return rule_set("version: 1\n" + settings + "rules:\n  - name: r\n    on: '*'\n    action: deactivate\n"
                    "    when:\n" + "".join(f"      {line}\n" for line in when.splitlines()))


@pytest.mark.parametrize("when, tz, now, expected", [
    # Monday 23:30 UTC is Tuesday 01:30 in Berlin (CEST, +2) in summer, 00:30 (CET, +1) in winter
    pytest.param("now.time: '23:30'", None, MON_2330_UTC_SUMMER, True, id="utc-by-default-time"),
    pytest.param("now.weekday: mon", None, MON_2330_UTC_SUMMER, True, id="utc-by-default-weekday"),
    pytest.param("now.time: '23:30'", "UTC", MON_2330_UTC_SUMMER, True, id="explicit-utc"),
    pytest.param("now.time: '01:30'", "Europe/Berlin", MON_2330_UTC_SUMMER, True, id="berlin-summer-time"),
    pytest.param("now.weekday: tue", "Europe/Berlin", MON_2330_UTC_SUMMER, True, id="berlin-is-already-tuesday"),
    pytest.param("now.weekday: mon", "Europe/Berlin", MON_2330_UTC_SUMMER, False, id="berlin-is-not-monday"),
    pytest.param("now.time: '00:30'", "Europe/Berlin", MON_2330_UTC_WINTER, True, id="berlin-winter-time"),
    pytest.param("now.time: '19:30'\nnow.weekday: mon", "America/New_York", MON_2330_UTC_SUMMER, True,
                 id="new-york-still-monday"),
    pytest.param("now.time: '08:30'\nnow.weekday: tue", "Asia/Tokyo", MON_2330_UTC_SUMMER, True, id="tokyo"),
    # ordering compares HH:MM
    pytest.param("now.time: {gte: '22:00'}", None, MON_2330_UTC_SUMMER, True, id="gte-22-utc"),
    pytest.param("now.time: {gte: '22:00'}", "Europe/Berlin", MON_2330_UTC_SUMMER, False, id="gte-22-berlin"),
    pytest.param("now.time: {lt: '06:00'}", "Europe/Berlin", MON_2330_UTC_SUMMER, True, id="lt-06-berlin"),
    pytest.param("any:\n  - now.time: {gte: '22:00'}\n  - now.time: {lt: '06:00'}", "Europe/Berlin",
                 MON_2330_UTC_SUMMER, True, id="night-window-across-midnight"),
    pytest.param("now.time: {gt: '12:00', lt: '13:00'}", None, SAT_NOON_UTC, False, id="noon-is-not-after-noon"),
    # weekdays
    pytest.param("now.weekday: {in: [sat, sun]}", None, SAT_NOON_UTC, True, id="weekend"),
    pytest.param("now.weekday: {in: [sat, sun]}", None, MON_2330_UTC_SUMMER, False, id="not-weekend"),
    pytest.param("now.weekday: Saturday", None, SAT_NOON_UTC, True, id="full-name-operand"),
    pytest.param("now.weekday: {not_in: [Sat, SUN]}", "Pacific/Kiritimati", SAT_NOON_UTC, False,
                 id="kiritimati-plus-14-is-sunday-already"),
    pytest.param("now.weekday: sun", "Pacific/Kiritimati", datetime(2024, 7, 6, 11, 0, tzinfo=timezone.utc)
                 .timestamp(), True, id="kiritimati-sunday-at-11-utc"),
])
def test_now_fields_in_the_rules_timezone(when, tz, now, expected):
    rules = timed_rules(when, tz)
    [res] = evaluate(rules, Facts(event=SE, now=now, tz=rules.settings.tz))
    assert res.result is expected


def test_now_fields_in_traces_show_local_values():
    rules = timed_rules("now.time: '01:30'\nnow.weekday: tue", "Europe/Berlin")
    [res] = evaluate(rules, Facts(event=SE, now=MON_2330_UTC_SUMMER, tz=rules.settings.tz))
    assert [(c.field, c.actual) for c in res.trace.children] == [("now.time", "01:30"), ("now.weekday", "tue")]


@pytest.mark.parametrize("tz, expected", [
    pytest.param("Europe/Berlin", ["r"], id="berlin-tuesday-acts"),
    pytest.param(None, [], id="utc-monday-does-not"),
])
def test_plan_event_uses_the_timezone_from_settings(tz, expected):
    rules = timed_rules("now.weekday: tue", tz)
    outcomes = plan_event(rules, SE, MON_2330_UTC_SUMMER, None, (), set(), acts=True).outcomes
    assert [o.rule for o in outcomes] == expected


# -- duration operands, evaluated (session.duration is 600 s on SE) ----------------------------

@pytest.mark.parametrize("when, expected", [
    pytest.param("session.duration: 10m", True, id="10m-is-600"),
    pytest.param("session.duration: {gte: 10m}", True, id="gte-10m"),
    pytest.param("session.duration: {gt: 10m}", False, id="gt-10m"),
    pytest.param("session.duration: {lt: 601s}", True, id="lt-601s"),
    pytest.param("session.duration: {lt: 1h30m}", True, id="lt-1h30m"),
    pytest.param("session.duration: {gt: 9m59s}", True, id="gt-9m59s"),
    pytest.param("session.duration: {in: [5m, 10m]}", True, id="in-durations"),
    pytest.param("session.duration: {gte: 0.2h}", False, id="fractional-hours-720s"),
    pytest.param("session.duration: {lt: 1d}", True, id="lt-1d"),
])
def test_duration_operands_evaluate_as_seconds(when, expected):
    assert result_of(when, SE) is expected


# -- compiled evaluation: the same verdicts and traces as the condition trees --------------------

# Leaves chosen so that rules repeat them (and so share compiled nodes), with operands that `==`
# confuses but tests and traces do not: 1, 1.0 and true; 0.0 and -0.0; "1".
LEAVES = [
    "room.id: room-1", "room.id: {ne: room-2}", "room.id: {in: [a, room-1]}", "room.id: {matches: '^room-'}",
    "participant.id: p-1", "participant.name: {not_in: [Bob]}", "participant.id: {exists: false}",
    "session.duration: {gte: 10m}", "session.duration: {gt: 10, lt: 601}", "session.age: {gt: 5m}",
    "room.participants: {lte: 1}", "room.empty_for: {gte: 1m}", "room.sessions: {gt: 0}",
    "data.count: 1", "data.count: 1.0", "data.count: true", "data.flag: true", "data.flag: 1", "data.text: '1'",
    "data.ratio: {in: [1]}", "data.ratio: {in: [1.0]}", "data.ratio: 0.0", "data.ratio: -0.0",
    "data.ratio: {gte: 0}", "data.nothing: null", "data.nested: {exists: true}", "data.list.1.x: y",
    "now.weekday: {in: [sat, sun]}", "now.time: {gte: '09:00'}", "event: session-ended",
]
ODD_DATA = dict(DATA, count=True, ratio=-0.0, flag=1, text=1, nothing="", nested=None, list=[])
EVENTS = [SE, PJ, SHORT, event(data=ODD_DATA), event("participant-left", participant_id="p-2",
                                                        participant_name="Bob", data=ODD_DATA)]
ROOMS = [None, IN_USE, EMPTY_90S, ENDED_30S, FRESH]


def _flow(key: str, children: list[str]) -> str:
    return f"{key}: [" + ", ".join("{%s}" % child for child in children) + "]"


flow_conditions = st.recursive(
    st.sampled_from(LEAVES),
    lambda inner: st.one_of(st.lists(inner, min_size=1, max_size=3).map(lambda cs: _flow("all", cs)),
                            st.lists(inner, min_size=1, max_size=3).map(lambda cs: _flow("any", cs)),
                            inner.map(lambda c: "not: {%s}" % c)),
    max_leaves=6)


def exact(trace) -> str:
    """A trace as text that tells 1 from 1.0 and true, which `==` on traces does not."""
    return repr(trace)


@settings(max_examples=300, deadline=None, database=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(whens=st.lists(st.one_of(st.none(), flow_conditions, st.sampled_from(LEAVES)), min_size=1, max_size=8),
       ev=st.sampled_from(EVENTS), room=st.sampled_from(ROOMS), tz=st.sampled_from([None, "Europe/Berlin"]),
       now=st.sampled_from([MON_2330_UTC_SUMMER, SAT_NOON_UTC, NOW_R]))
def test_compiled_evaluation_agrees_with_the_condition_trees(whens, ev, room, tz, now):
    settings_text = f"settings:\n  timezone: {tz}\n" if tz else ""
    text = "version: 1\n" + settings_text + "rules:\n" + "".join(
        f"  - {{name: r{i}, on: '*', action: deactivate" + (f", when: {{{when}}}" if when else "") + "}\n"
        for i, when in enumerate(whens))
    rules = rule_set(text)

    def fresh():
        return Facts(event=ev, now=now, room=room, tz=rules.settings.tz)
    expected = [None if r.when is None else walk(r.when, fresh()) for r in rules.rules]
    shared = fresh()  # both modes, twice, on one Facts: whatever the memo holds must not change a verdict
    for traces in (True, False, True, False):
        got = evaluate(rules, shared, traces=traces)
        assert [r.rule for r in got] == list(rules.rules)
        for res, reference in zip(got, expected):
            if reference is None:
                assert res.result is True and res.trace is None
                continue
            assert res.result is reference.result
            if traces or res.result is True:
                assert res.trace == reference and exact(res.trace) == exact(reference)
            else:
                assert res.trace is None


def test_equal_conditions_share_a_compiled_node_and_unequal_ones_do_not():
    rules = rule_set("version: 1\nrules:\n" + "".join(
        f"  - {{name: r{i}, on: session-ended, action: deactivate, when: {{{when}}}}}\n" for i, when in enumerate([
            "data.count: 1", "data.count: 1", "data.count: 1.0", "data.count: true",
            "all: [{data.count: 1}, {room.id: room-1}]", "all: [{data.count: 1}, {room.id: room-1}]",
            "data.ratio: 0.0", "data.ratio: -0.0"])))
    nodes = [check.test for check in rules.checks_for("session-ended")]
    assert nodes[0] is nodes[1] and nodes[4] is nodes[5]
    assert len({id(n) for n in (nodes[0], nodes[2], nodes[3], nodes[4])}) == 4
    assert nodes[6] is not nodes[7]
    got = evaluate(rules, facts(SE))
    assert [r.result for r in got] == [True, True, True, False, True, True, False, False]
    assert [json.dumps(r.trace.to_dict()["operand"]) for r in got[:4]] == ["1", "1", "1.0", "true"]
    assert [json.dumps(r.trace.to_dict()["operand"]) for r in got[6:]] == ["0.0", "-0.0"]


def test_two_rule_sets_on_one_facts_keep_their_own_verdicts():
    a = one_rule("room.id: room-1")
    b = one_rule("room.id: room-2")
    shared = facts(SE)
    assert [r.result for r in evaluate(a, shared)] == [True]
    assert [r.result for r in evaluate(b, shared, traces=False)] == [False]
    assert [r.result for r in evaluate(a, shared, traces=False)] == [True]


def test_a_hand_built_condition_with_an_unhashable_operand_still_evaluates():
    when = Compare("data.list", "eq", [10, {"x": "y"}], [10, {"x": "y"}])  # not what the loader makes
    rules = RuleSet(rules=(Rule("a", ("*",), "deactivate", when), Rule("b", ("*",), "deactivate", when)))
    got = evaluate(rules, facts(SE))
    assert [r.result for r in got] == [True, True]
    assert [r.trace for r in got] == [walk(when, facts(SE))] * 2


@pytest.mark.parametrize("nest", [
    pytest.param(lambda depth: "{not: " * depth + "{room.id: x}" + "}" * depth, id="not"),
    pytest.param(lambda depth: "{all: [" * depth + "{room.id: x}" + "]}" * depth, id="all"),
])
def test_the_deepest_condition_that_loads_evaluates_compiled(nest):
    def text(depth):
        return "version: 1\nrules:\n" + "".join(f"  - {{name: {name}, on: '*', action: deactivate, when: "
                                                f"{nest(depth)}}}\n" for name in "ab")  # shared: memoized
    depth, rules = 300, None
    while rules is None:
        depth -= 10
        rules, _ = parse_rules(text(depth))
    for traces in (True, False):
        got = evaluate(rules, facts(SE), traces=traces)
        reference = walk(rules.rules[0].when, facts(SE))
        assert [r.result for r in got] == [reference.result] * 2
        assert [r.trace for r in got] == [reference if traces or reference.result else None] * 2
