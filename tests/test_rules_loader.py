"""service.rules.loader: YAML text in, a frozen RuleSet out, or every problem with its file:line:col."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import textwrap
import re
from pathlib import Path

import pytest

from service.errors import RulesError
from service.rules.conditions import All, Any_, Compare, Not
from service.rules.loader import Problem, load_rules, parse_rules

from .conftest import ROOT

SHIPPED = Path(__file__).resolve().parent.parent / "rules.yaml"
HEAD = "version: 1\nrules:\n"


def one_rule(when: str | None = None, *, on: str = "session-ended", name: str = "r1",
             action: str = "deactivate") -> str:
    """A file with one rule at 3:5: name (line 3), on (line 4), then `when:` (line 5) with the given
    YAML indented by 6 from line 6, then action (line 5 when there is no `when`)."""
    text = HEAD + f"  - name: {name}\n    on: {on}\n"
    if when is not None:
        text += "    when:\n" + "".join(f"      {line}\n" for line in when.splitlines())
    return text + f"    action: {action}\n"


def loads(text: str):
    rule_set, problems = parse_rules(text, "t.yaml")
    assert problems == [], [str(p) for p in problems]
    assert rule_set is not None
    return rule_set


# -- the shipped file -------------------------------------------------------------------------

def test_shipped_rules_file_loads_without_problems():
    rule_set = load_rules(SHIPPED)
    assert rule_set.source == str(SHIPPED)
    assert rule_set.version == 1
    assert rule_set.sha256 == hashlib.sha256(SHIPPED.read_bytes()).hexdigest()
    assert len(rule_set.short_hash) == 12
    assert rule_set.warnings == ()  # it passes `check --strict`
    settings = rule_set.settings
    assert (settings.timezone, settings.dry_run, settings.max_actions_per_minute, settings.protect) == (
        "UTC", False, 30, ("demo-*", "keep-keep-keep"))
    empty, marathon = rule_set.rules
    # close-when-empty: room.participants == 0 for 5m, confirmed, then deactivate
    assert empty.name == "close-when-empty"
    assert empty.on == ("participant-left", "session-ended")  # `on:` is the key "on", not the boolean true
    assert empty.description == "deactivate rooms left empty for five minutes"
    assert (empty.line, empty.action, empty.for_seconds, empty.confirm, empty.dry_run) == (
        23, "deactivate", 300.0, "active-participants", False)
    assert isinstance(empty.when, Compare)
    assert (empty.when.field, empty.when.op, empty.when.operand) == ("room.participants", "eq", 0)
    # end-marathon-sessions: session.age >= 4h and not a weekend, in shadow mode
    assert marathon.name == "end-marathon-sessions"
    assert (marathon.on, marathon.action, marathon.for_seconds, marathon.dry_run) == (
        ("participant-joined",), "end-session", None, True)
    assert isinstance(marathon.when, All)
    age, negation = marathon.when.children
    assert (age.field, age.op, age.operand) == ("session.age", "gte", 4 * 3600)
    assert isinstance(negation, Not)
    assert (negation.child.field, negation.child.op, negation.child.operand) == ("now.weekday", "in", ("sat", "sun"))


def test_parse_rules_of_shipped_text_matches_load_rules():
    text = SHIPPED.read_text()
    rule_set, problems = parse_rules(text, "rules.yaml")
    assert problems == []
    assert rule_set.rules == load_rules(SHIPPED).rules


# -- `on:` -------------------------------------------------------------------------------------

@pytest.mark.parametrize("on_yaml, expected", [
    pytest.param("session-ended", ("session-ended",), id="single-event"),
    pytest.param("[session-started, session-ended]", ("session-started", "session-ended"), id="flow-list"),
    pytest.param("\n      - participant-joined\n      - participant-left", ("participant-joined", "participant-left"),
                 id="block-list"),
    pytest.param("'recording-*'", ("recording-*",), id="quoted-glob"),
    pytest.param("recording-*", ("recording-*",), id="plain-glob"),
    pytest.param("['hls-?', 'participant-*', session-ended]", ("hls-?", "participant-*", "session-ended"),
                 id="list-with-globs"),
    pytest.param("'*'", ("*",), id="everything"),
    pytest.param("'[hl]s-started'", ("[hl]s-started",), id="character-class"),
])
def test_on_is_the_key_on(on_yaml, expected):
    text = HEAD + f"  - name: r1\n    on: {on_yaml}\n    action: deactivate\n"
    [rule] = loads(text).rules
    assert rule.on == expected


def test_on_at_top_of_a_rule_is_never_the_boolean_true():
    # PyYAML's YAML 1.1 reading would make this key True and report a missing 'on:'
    text = HEAD + "  - on: session-ended\n    name: r1\n    action: deactivate\n"
    [rule] = loads(text).rules
    assert rule.on == ("session-ended",)


# -- YAML 1.1 leftovers: booleans and timestamps are plain strings -----------------------------

@pytest.mark.parametrize("operand_yaml, expected", [
    pytest.param("yes", "yes", id="yes"),
    pytest.param("no", "no", id="no"),
    pytest.param("on", "on", id="on"),
    pytest.param("off", "off", id="off"),
    pytest.param("y", "y", id="y"),
    pytest.param("n", "n", id="n"),
    pytest.param("Yes", "Yes", id="Yes"),
    pytest.param("OFF", "OFF", id="OFF"),
    pytest.param("true", True, id="true-is-a-bool"),
    pytest.param("False", False, id="False-is-a-bool"),
    pytest.param("2022-07-05", "2022-07-05", id="date-stays-a-string"),
    pytest.param("2022-07-05T15:55:35Z", "2022-07-05T15:55:35Z", id="timestamp-stays-a-string"),
    pytest.param("null", None, id="null"),
    pytest.param("~", None, id="tilde-null"),
    pytest.param("60", 60, id="int"),
    pytest.param("1.5", 1.5, id="float"),
    pytest.param("'60'", "60", id="quoted-number-is-a-string"),
])
def test_scalar_operands_use_yaml_1_2_booleans(operand_yaml, expected):
    [rule] = loads(one_rule(f"data.flag: {operand_yaml}")).rules
    assert rule.when.op == "eq"
    assert rule.when.operand == expected
    assert type(rule.when.operand) is type(expected)


def test_yaml_1_1_booleans_in_a_list_operand_are_strings():
    [rule] = loads(one_rule("data.flag: {in: [yes, no, on, off, true]}")).rules
    assert rule.when.operand == ("yes", "no", "on", "off", True)
    assert [type(x) for x in rule.when.operand] == [str, str, str, str, bool]


def test_yaml_1_1_booleans_as_field_keys_and_exists_operand():
    # `data.on` is a field; `exists: yes` is the string "yes", so it is an error (below, in BAD_FILES)
    [rule] = loads(one_rule("data.on: {exists: true}")).rules
    assert (rule.when.field, rule.when.op, rule.when.operand) == ("data.on", "exists", True)


@pytest.mark.parametrize("operand_yaml, expected", [
    pytest.param("1:30", "1:30", id="sexagesimal"),
    pytest.param("017", 17, id="leading-zero"),
])
def test_yaml_1_1_integer_forms_are_not_reinterpreted(operand_yaml, expected):
    [rule] = loads(one_rule(f"data.x: {operand_yaml}")).rules
    assert rule.when.operand == expected


# -- conditions are built as written ----------------------------------------------------------

def test_condition_tree_shape():
    when = (
        "any:\n"
        "  - room.id: {matches: '^a-'}\n"
        "  - all:\n"
        "      - session.duration: {gt: 10, lte: 20}\n"
        "      - not: {participant.name: bob}\n"
    )
    [rule] = loads(one_rule(when)).rules
    assert isinstance(rule.when, Any_)
    first, second = rule.when.children
    assert isinstance(first, Compare) and first.op == "matches" and first.compiled.pattern == "^a-"
    assert isinstance(second, All)
    both, negation = second.children
    assert isinstance(both, All) and [c.op for c in both.children] == ["gt", "lte"]
    assert isinstance(negation, Not) and negation.child.operand == "bob"


def test_rule_without_when_has_none_and_empty_rules_is_valid():
    [rule] = loads(one_rule()).rules
    assert rule.when is None
    assert loads("version: 1\nrules:\n").rules == ()
    assert loads("version: 1\nrules: []\n").rules == ()


# -- bad rule files ---------------------------------------------------------------------------

def rule_with(extra: str) -> str:
    """HEAD and one rule starting at 3:5, with `extra` lines (indented by 4) after name/on/action."""
    return HEAD + "  - name: r1\n    on: session-ended\n    action: deactivate\n" + "".join(
        f"    {line}\n" for line in extra.splitlines())


# (file text, [(line, col, message fragment), ...] in the order reported)
BAD_FILES = [
    # -- top level
    pytest.param("version: 1\nrules: []\nrulez: []\n",
                 [(3, 1, "unknown top-level key 'rulez'; did you mean 'rules'?")], id="unknown-top-key-with-hint"),
    pytest.param("version: 1\nrules: []\nowner: me\n",
                 [(3, 1, "unknown top-level key 'owner'")], id="unknown-top-key-no-hint"),
    pytest.param("rules: []\n", [(1, 1, "missing 'version: 1'")], id="missing-version"),
    pytest.param("version: 2\nrules: []\n", [(1, 10, "unsupported version; this service reads 'version: 1'")],
                 id="version-2"),
    pytest.param("version: '1'\nrules: []\n", [(1, 10, "unsupported version")], id="version-a-string"),
    pytest.param("version: true\nrules: []\n", [(1, 10, "unsupported version")], id="version-true"),
    pytest.param("version: 1\n", [(1, 1, "missing 'rules:' (a list of rules)")], id="missing-rules"),
    pytest.param("version: 1\nrules: abc\n", [(2, 8, "'rules' must be a list of rules")], id="rules-a-string"),
    pytest.param("version: 1\nrules:\n  name: r1\n", [(3, 3, "'rules' must be a list of rules")],
                 id="rules-a-mapping"),
    pytest.param("- version: 1\n", [(1, 1, "the rules file must be a mapping of key: value")],
                 id="top-level-a-list"),
    pytest.param("version: 1\nversion: 1\nrules: []\n",
                 [(2, 1, "duplicate key 'version' in the rules file (first at line 1)")], id="duplicate-top-key"),
    # -- rules
    pytest.param(HEAD + "  - close-after-session\n", [(3, 5, "a rule must be a mapping of key: value")],
                 id="rule-not-a-mapping"),
    pytest.param(HEAD + "  - on: session-ended\n    action: deactivate\n", [(3, 5, "a rule needs 'name:'")],
                 id="missing-name"),
    pytest.param(HEAD + "  - name: r1\n    action: deactivate\n", [(3, 5, "a rule needs 'on:'")], id="missing-on"),
    pytest.param(HEAD + "  - name: r1\n    on: session-ended\n", [(3, 5, "a rule needs 'action:'")],
                 id="missing-action"),
    pytest.param(HEAD + "  - {}\n", [(3, 5, "a rule needs 'name:'"), (3, 5, "a rule needs 'on:'"),
                                    (3, 5, "a rule needs 'action:'")], id="empty-rule-misses-all-three"),
    pytest.param(HEAD + "  - name: a\n    on: session-ended\n    action: deactivate\n"
                        "  - name: b\n    on: session-ended\n    action: deactivate\n"
                        "  - name: a\n    on: session-started\n    action: deactivate\n",
                 [(9, 5, "duplicate rule name 'a' (first at line 3)")], id="duplicate-rule-name"),
    pytest.param(HEAD + "  - name: r1\n    on: session-ended\n    name: r2\n    action: deactivate\n",
                 [(5, 5, "duplicate key 'name' in a rule (first at line 3)")], id="duplicate-key-in-rule"),
    pytest.param(one_rule("room.id: {eq: a, eq: b}"),
                 [(6, 24, "duplicate key 'eq' in the conditions on 'room.id' (first at line 6)")],
                 id="duplicate-operator"),
    pytest.param(one_rule("room.id: a\nroom.id: b"),
                 [(7, 7, "duplicate key 'room.id' in 'when' (first at line 6)")], id="duplicate-field-in-when"),
    pytest.param(HEAD + "  - name: r1\n    on: session-ended\n    action: deactivate\n    acton: deactivate\n",
                 [(6, 5, "unknown rule key 'acton'; did you mean 'action'?")], id="unknown-rule-key-with-hint"),
    pytest.param(HEAD + "  - name: r1\n    on: session-ended\n    acton: deactivate\n",
                 [(3, 5, "a rule needs 'action:'"), (5, 5, "unknown rule key 'acton'; did you mean 'action'?")],
                 id="misspelt-action-is-also-missing"),
    pytest.param(rule_with("descripton: hi"), [(6, 5, "unknown rule key 'descripton'; did you mean 'description'?")],
                 id="unknown-rule-key-description-hint"),
    pytest.param(rule_with("5: x"), [(6, 5, "keys in a rule must be strings")], id="non-string-rule-key"),
    pytest.param(one_rule(action="deactivat"),
                 [(5, 13, "unknown action 'deactivat'; did you mean 'deactivate'?; known: deactivate, end-session")],
                 id="unknown-action-with-hint"),
    pytest.param(one_rule(action="delete"), [(5, 13, "unknown action 'delete'; known: deactivate, end-session")],
                 id="unknown-action-no-hint"),
    pytest.param(one_rule(name="'close room/now'"),
                 [(3, 11, "'name' may hold only letters, digits, '_', '.' and '-'")], id="name-with-space-and-slash"),
    pytest.param(one_rule(name="-r1"), [(3, 11, "'name' may hold only")], id="name-starting-with-dash"),
    pytest.param(one_rule(name="a" * 101), [(3, 11, "'name' may hold only")], id="name-101-chars"),
    pytest.param(one_rule(name="5"), [(3, 11, "'name' must be a non-empty string")], id="name-a-number"),
    pytest.param(one_rule(name="''"), [(3, 11, "'name' must be a non-empty string")], id="name-empty"),
    pytest.param(rule_with("description: 5"), [(6, 18, "'description' must be a non-empty string")],
                 id="description-a-number"),
    # -- on
    pytest.param(one_rule(on="Session-Ended"),
                 [(4, 9, "'Session-Ended' is not an event type or glob (lowercase, digits, '-', '*', '?')")],
                 id="on-uppercase"),
    pytest.param(one_rule(on="session ended"), [(4, 9, "'session ended' is not an event type or glob")],
                 id="on-with-space"),
    pytest.param(one_rule(on="[session-ended, Recording-*]"), [(4, 25, "'Recording-*' is not an event type")],
                 id="on-list-item-uppercase"),
    pytest.param(one_rule(on="[]"), [(4, 9, "'on' needs at least one event type")], id="on-empty-list"),
    pytest.param(one_rule(on="''"), [(4, 9, "an event type in 'on' must be a non-empty string")], id="on-empty-string"),
    pytest.param(one_rule(on="{session-ended: x}"), [(4, 9, "an event type in 'on' must be a non-empty string")],
                 id="on-a-mapping"),
    pytest.param(one_rule(on="5"), [(4, 9, "an event type in 'on' must be a non-empty string")], id="on-a-number"),
    # -- fields and operators
    pytest.param(one_rule("room.idd: abcd"), [(6, 7, "unknown field 'room.idd'; did you mean 'room.id'?")],
                 id="unknown-field-with-hint"),
    pytest.param(one_rule("sesion.duration: {gt: 1}"),
                 [(6, 7, "unknown field 'sesion.duration'; did you mean 'session.duration'?")],
                 id="unknown-field-session-duration-hint"),
    pytest.param(one_rule("alll: []"), [(6, 7, "unknown field 'alll'; did you mean 'all'?")],
                 id="unknown-combinator-with-hint"),
    pytest.param(one_rule("data: 1"), [(6, 7, "unknown field 'data' (fields: event, room.id")], id="bare-data"),
    pytest.param(one_rule("data..x: 1"), [(6, 7, "unknown field 'data..x'")], id="data-empty-segment"),
    pytest.param(one_rule("session.duration: {gte_: 60}"),
                 [(6, 26, "unknown operator 'gte_'; did you mean 'gte'?")],
                 id="unknown-operator-with-hint"),
    pytest.param(one_rule("room.id: {equals: a}"), [(6, 17, "unknown operator 'equals'")],
                 id="unknown-operator-equals"),
    pytest.param(one_rule("room.id: {}"), [(6, 16, "no operator given for 'room.id'")], id="no-operator"),
    pytest.param(one_rule("session.duration: {gt: abc}"), [(6, 30, "'session.duration: {gt: ...}' 'abc' is not a duration")],
                 id="gt-with-string"),
    pytest.param(one_rule("session.duration: {gte: '60'}"), [(6, 31, "'session.duration: {gte: ...}' '60' is not a duration")],
                 id="gte-with-quoted-number"),
    pytest.param(one_rule("session.duration: {lt: true}"), [(6, 30, "'session.duration: {lt: ...}' needs a number")],
                 id="lt-with-bool"),
    pytest.param(one_rule("session.duration: {lte: [1]}"), [(6, 31, "'session.duration: {lte: ...}' needs a number")],
                 id="lte-with-list"),
    pytest.param(one_rule("room.id: {gt: 5}"),
                 [(6, 21, "'room.id: {gt: ...}' compares numbers, durations or times, but this field is a string")],
                 id="gt-on-string-field"),
    pytest.param(one_rule("room.id: {in: abcd}"), [(6, 21, "'room.id: {in: ...}' needs a non-empty list of values")],
                 id="in-with-scalar"),
    pytest.param(one_rule("room.id: {in: []}"), [(6, 21, "'room.id: {in: ...}' needs a non-empty list of values")],
                 id="in-with-empty-list"),
    pytest.param(one_rule("room.id: {not_in: []}"), [(6, 25, "'room.id: {not_in: ...}' needs a non-empty list")],
                 id="not_in-with-empty-list"),
    pytest.param(one_rule("room.id: {in: [a, 5]}"),
                 [(6, 21, "'room.id: {in: ...}' list item 5 needs a string for this field; quote it")],
                 id="in-with-number-item-for-string-field"),
    pytest.param(one_rule("data.x: {in: [a, [b]]}"), [(6, 20, "list item ['b'] needs a single value")],
                 id="in-with-nested-list"),
    pytest.param(one_rule("room.id: {matches: '(['}"),
                 [(6, 26, "'room.id: {matches: ...}' bad regular expression: unterminated character set")],
                 id="matches-bad-regex"),
    pytest.param(one_rule("room.id: {matches: 5}"), [(6, 26, "needs a regular expression as a string")],
                 id="matches-a-number"),
    pytest.param(one_rule("session.duration: {matches: '^6'}"),
                 [(6, 35, "matches strings, but this field is a duration")], id="matches-on-number-field"),
    pytest.param(one_rule("room.id: {exists: 'true'}"), [(6, 25, "'room.id: {exists: ...}' needs true or false")],
                 id="exists-with-string"),
    pytest.param(one_rule("room.id: {exists: yes}"), [(6, 25, "needs true or false")],
                 id="exists-with-yaml-1.1-yes"),
    pytest.param(one_rule("data.x: {eq: {a: 1}}"),
                 [(6, 20, "'data.x: {eq: ...}' needs a single value (a string, number, true, false or null)")],
                 id="eq-with-mapping"),
    pytest.param(one_rule("data.x: {ne: [1]}"), [(6, 20, "'data.x: {ne: ...}' needs a single value")],
                 id="ne-with-list"),
    pytest.param(one_rule("room.id: [a, b]"),
                 [(6, 16, "'room.id' is given a list; to test membership write {in: [...]}")],
                 id="list-given-directly-to-field"),
    pytest.param(one_rule("room.id: {eq: 5}"),
                 [(6, 21, "'room.id: {eq: ...}' needs a string for this field; quote it")],
                 id="number-for-string-field"),
    pytest.param(one_rule("room.id: 5"), [(6, 16, "'room.id: {eq: ...}' needs a string for this field")],
                 id="bare-number-for-string-field"),
    pytest.param(one_rule("room.id: null"), [(6, 16, "needs a string for this field")], id="null-for-string-field"),
    pytest.param(one_rule("session.duration: {eq: abc}"),
                 [(6, 30, "'session.duration: {eq: ...}' 'abc' is not a duration")],
                 id="string-for-session-duration"),
    pytest.param(one_rule("session.duration: {in: [60, '90']}"),
                 [(6, 30, "'90' is not a duration")], id="in-string-item-for-number-field"),
    # -- combinators
    pytest.param(one_rule("{}"), [(6, 7, "'when' is empty; remove it, or give at least one condition")],
                 id="empty-when"),
    pytest.param(HEAD + "  - name: r1\n    on: session-ended\n    action: deactivate\n    when:\n",
                 [(6, 10, "'when' must be a mapping of key: value")], id="when-null"),
    pytest.param(one_rule("- room.id: a"), [(6, 7, "'when' must be a mapping of key: value")], id="when-a-list"),
    pytest.param(one_rule("any: []"), [(6, 12, "'any' needs a non-empty list of conditions")], id="empty-any"),
    pytest.param(one_rule("all: []"), [(6, 12, "'all' needs a non-empty list of conditions")], id="empty-all"),
    pytest.param(one_rule("all: {room.id: a}"), [(6, 12, "'all' needs a non-empty list of conditions")],
                 id="all-a-mapping"),
    pytest.param(one_rule("not:\n  - room.id: a"), [(7, 9, "'not' must be a mapping of key: value")],
                 id="not-with-list"),
    pytest.param(one_rule("not: {}"), [(6, 12, "'not' is empty")], id="not-empty"),
    pytest.param(one_rule("any:\n  - room.id: a\n  - {}"), [(8, 11, "an item of 'any' is empty")],
                 id="empty-item-in-any"),
    pytest.param(one_rule("any:\n  - room.id: a\n  - room.idd: b"),
                 [(8, 11, "unknown field 'room.idd'; did you mean 'room.id'?")], id="error-inside-any"),
    # -- YAML itself
    pytest.param(HEAD + "  - name: r1\n    on: [session-ended\n    action: deactivate\n",
                 [(5, 11, "not valid YAML: expected ',' or ']', but got ':'")], id="unclosed-flow-list"),
    pytest.param(HEAD + "  - name: r1\n   on: session-ended\n",
                 [(4, 4, "not valid YAML: expected <block end>, but found '<block mapping start>'")],
                 id="bad-indentation"),
    pytest.param(HEAD + "\t- name: r1\n", [(3, 1, "not valid YAML: found character '\\t' that cannot start any token")],
                 id="tab-indentation"),
    pytest.param("version: 1\nrules: []\n---\nversion: 1\n", [(3, 1, "not valid YAML: but found another document")],
                 id="two-documents"),
    pytest.param(HEAD + "  - name: !!python/object:os.system r1\n    on: session-ended\n    action: deactivate\n",
                 [(3, 11, "YAML tag "
                          "'tag:yaml.org,2002:python/object:os.system'")], id="python-object-tag"),
    pytest.param(one_rule("data.x: !!python/name:os.system ''"),
                 [(6, 15, "is not allowed in a rules file")],
                 id="python-name-tag-in-operand"),
    pytest.param(HEAD + "  - &r\n    name: a\n    on: session-ended\n    action: deactivate\n  - <<: *r\n    name: b\n",
                 [(7, 5, "YAML merge keys ('<<') are not supported")],
                 id="merge-key"),
    pytest.param("", [(1, 1, "the file is empty; expected 'version: 1' and 'rules:'")], id="empty-file"),
    pytest.param("# only a comment\n\n", [(1, 1, "the file is empty")], id="comments-only"),
]


@pytest.mark.parametrize("text, expected", BAD_FILES)
def test_bad_rules_file(text, expected):
    rule_set, problems = parse_rules(text, "bad.yaml")
    assert rule_set is None
    got = [(p.line, p.col, p.message) for p in problems]
    assert [(line, col) for line, col, _ in got] == [(line, col) for line, col, _ in expected], got
    for (_, _, message), (_, _, fragment) in zip(got, expected):
        assert fragment in message
    for problem in problems:
        assert problem.source == "bad.yaml"
        assert str(problem) == f"bad.yaml:{problem.line}:{problem.col}: {problem.message}"


def test_all_errors_are_reported_together_in_file_order():
    text = (
        "versio: 1\n"                       # 1:1 unknown key (and, at 1:1, version missing)
        "rules:\n"
        "  - name: a\n"
        "    on: BAD\n"                      # 4:9
        "    action: nope\n"                 # 5:13
        "  - name: b\n"
        "    on: session-ended\n"
        "    when:\n"
        "      room.idd: x\n"                # 9:7
        "      session.duration: {gt: x}\n"  # 10:30
        "    action: deactivate\n"
        "  - justastring\n"                  # 12:5
    )
    rule_set, problems = parse_rules(text, "multi.yaml")
    assert rule_set is None
    assert [str(p) for p in problems] == [
        "multi.yaml:1:1: unknown top-level key 'versio'; did you mean 'version'?",
        "multi.yaml:1:1: missing 'version: 1'",
        "multi.yaml:4:9: 'BAD' is not an event type or glob (lowercase, digits, '-', '*', '?')",
        "multi.yaml:5:13: unknown action 'nope'; known: deactivate, end-session",
        "multi.yaml:9:7: unknown field 'room.idd'; did you mean 'room.id'?",
        "multi.yaml:10:30: 'session.duration: {gt: ...}' 'x' is not a duration; write it as 90s, 5m, 2h, 1d or 1h30m",
        "multi.yaml:12:5: a rule must be a mapping of key: value",
    ]


def test_problems_are_sorted_even_when_found_out_of_order():
    # 'missing rules' is found at 1:1 after the unknown key on line 2 is seen
    _, problems = parse_rules("version: 1\nrule:\n  - name: a\n", "f.yaml")
    assert [str(p) for p in problems] == [
        "f.yaml:1:1: missing 'rules:' (a list of rules)",
        "f.yaml:2:1: unknown top-level key 'rule'; did you mean 'rules'?",
    ]


@pytest.mark.parametrize("text", [
    pytest.param("version: 1\nrules: " + "[" * 2000 + "]" * 2000 + "\n", id="nested-lists"),
    pytest.param(one_rule("not: {" * 2000 + "room.id: x" + "}" * 2000), id="nested-nots"),
])
def test_deeply_nested_file_is_a_problem_not_an_exception(text):
    rule_set, problems = parse_rules(text, "deep.yaml")
    assert rule_set is None
    assert [str(p) for p in problems] == ["deep.yaml:1:1: the file is nested too deeply"]


@pytest.mark.parametrize("text", [
    pytest.param(one_rule().replace("    action:", "    when: !!python/object/new:os.system {room.id: x}\n    action:"),
                 id="tag-on-when-mapping"),
    pytest.param(one_rule(on="!!python/tuple [session-ended]"), id="tag-on-on-list"),
])
def test_python_tag_on_a_collection_is_refused(text):
    rule_set, problems = parse_rules(text, "tag.yaml")
    assert rule_set is None
    assert problems and "python" in problems[0].message


# -- load_rules and Problem -------------------------------------------------------------------

def test_load_rules_missing_file(tmp_path):
    path = tmp_path / "nope.yaml"
    with pytest.raises(RulesError) as info:
        load_rules(path)
    assert info.value.problems == [f"{path}:1:1: cannot read the rules file: No such file or directory"]
    assert str(info.value) == info.value.problems[0]


def test_load_rules_directory(tmp_path):
    with pytest.raises(RulesError) as info:
        load_rules(tmp_path)
    [problem] = info.value.problems
    assert problem.startswith(f"{tmp_path}:1:1: cannot read the rules file: ")


@pytest.mark.parametrize("data", [
    pytest.param(b"version: 1\nrules: []\n# caf\xe9\n", id="latin-1"),
    pytest.param(b"\xff\xfev\x00e\x00", id="utf-16-le-bom"),
])
def test_load_rules_not_utf8(tmp_path, data):
    path = tmp_path / "latin1.yaml"
    path.write_bytes(data)
    with pytest.raises(RulesError) as info:
        load_rules(path)
    assert info.value.problems == [f"{path}:1:1: the rules file is not UTF-8"]


def test_load_rules_reports_every_problem_with_the_path(tmp_path):
    path = tmp_path / "rules.yaml"
    path.write_text("version: 2\nrules:\n  - name: r1\n    on: session-ended\n    action: nuke\n")
    with pytest.raises(RulesError) as info:
        load_rules(str(path))  # a str path works too
    assert info.value.problems == [
        f"{path}:1:10: unsupported version; this service reads 'version: 1'",
        f"{path}:5:13: unknown action 'nuke'; known: deactivate, end-session",
    ]
    assert str(info.value) == "\n".join(info.value.problems)


@pytest.mark.parametrize("problem, text", [
    pytest.param(Problem("rules.yaml", 3, 5, "a rule needs 'on:'"), "rules.yaml:3:5: a rule needs 'on:'",
                 id="simple"),
    pytest.param(Problem("/etc/roomwarden/rules.yaml", 12, 40, "x: y"), "/etc/roomwarden/rules.yaml:12:40: x: y",
                 id="absolute-path"),
])
def test_problem_str(problem, text):
    assert str(problem) == text
    assert re.fullmatch(r".+:\d+:\d+: .+", str(problem))


def test_source_defaults_to_placeholder_and_hash_is_of_the_text():
    text = one_rule()
    rule_set, problems = parse_rules(text)
    assert problems == []
    assert rule_set.source == "<rules>"
    assert rule_set.sha256 == hashlib.sha256(text.encode()).hexdigest()
    _, problems = parse_rules("version: 3\nrules: []\n")
    assert str(problems[0]).startswith("<rules>:1:10: ")


# -- operand kinds: durations, times, weekdays ----------------------------------------------------

@pytest.mark.parametrize("when, expected", [
    pytest.param("session.duration: {gte: 5m}", 300.0, id="5m-is-300s"),
    pytest.param("session.duration: {gte: '5m'}", 300.0, id="quoted-5m"),
    pytest.param("session.duration: {gte: 90s}", 90.0, id="90s"),
    pytest.param("session.duration: {gte: 2h}", 7200.0, id="2h"),
    pytest.param("session.duration: {gte: 1d}", 86400.0, id="1d"),
    pytest.param("session.duration: {gte: 1h30m}", 5400.0, id="1h30m"),
    pytest.param("session.duration: {gte: 1d2h3m4s}", 93784.0, id="all-units"),
    pytest.param("session.duration: {gte: 1.5h}", 5400.0, id="fractional-unit"),
    pytest.param("session.duration: {gte: 300}", 300, id="plain-seconds-unchanged"),
    pytest.param("session.duration: 10m", 600.0, id="eq-shorthand"),
    pytest.param("room.empty_for: {gte: 5m}", 300.0, id="empty_for"),
    pytest.param("session.age: {lt: 2h}", 7200.0, id="session-age"),
    pytest.param("session.duration: {in: [1m, 90, 2m]}", (60.0, 90, 120.0), id="list-item-by-item"),
])
def test_duration_operands_are_seconds(when, expected):
    [rule] = loads(one_rule(when)).rules
    assert rule.when.operand == expected
    if isinstance(expected, tuple):  # `in` compiles its list to a set: each second count is in it
        from service.rules.operators import OPERATORS

        assert all(OPERATORS["in"].test(value, rule.when.compiled) for value in expected)
        assert OPERATORS["in"].test(61.0, rule.when.compiled) is False
    else:
        assert rule.when.compiled == expected


@pytest.mark.parametrize("when, expected", [
    pytest.param("now.time: {gte: '22:00'}", "22:00", id="quoted"),
    pytest.param("now.time: {gte: 22:00}", "22:00", id="unquoted-is-not-sexagesimal"),
    pytest.param("now.time: '00:00'", "00:00", id="midnight"),
    pytest.param("now.time: {lt: '23:59'}", "23:59", id="last-minute"),
    pytest.param("now.time: {in: ['08:00', '20:30']}", ("08:00", "20:30"), id="list"),
    pytest.param("now.weekday: {in: [sat, sun]}", ("sat", "sun"), id="weekday-list"),
    pytest.param("now.weekday: {in: [Saturday, SUN]}", ("sat", "sun"), id="weekday-full-and-upper-case"),
    pytest.param("now.weekday: Mon", "mon", id="weekday-capitalised"),
    pytest.param("now.weekday: {ne: wednesday}", "wed", id="weekday-full-name-ne"),
    pytest.param("now.weekday: {matches: '^s'}", "^s", id="weekday-regex-as-written"),
])
def test_time_and_weekday_operands(when, expected):
    [rule] = loads(one_rule(when)).rules
    assert rule.when.operand == expected


# (when, (line, col, message fragment)); `when:` lines start at 6:7
BAD_OPERANDS = [
    # durations
    pytest.param("session.duration: {gt: 5 minutes}",
                 (6, 30, "'session.duration: {gt: ...}' '5 minutes' is not a duration; write it as 90s, 5m, 2h, "
                         "1d or 1h30m"), id="duration-words"),
    pytest.param("room.empty_for: {gte: 5x}", (6, 29, "'5x' is not a duration"), id="duration-unknown-unit"),
    pytest.param("room.empty_for: {gte: 1h30}", (6, 29, "'1h30' is not a duration"), id="duration-trailing-number"),
    pytest.param("session.age: {gt: -5m}", (6, 25, "'-5m' is not a duration"), id="duration-negative-string"),
    pytest.param("session.age: {gt: m}", (6, 25, "'m' is not a duration"), id="duration-unit-only"),
    pytest.param("session.duration: {in: [1m, soon]}", (6, 30, "'soon' is not a duration"),
                 id="duration-bad-list-item"),
    pytest.param("room.participants: {gt: 5m}", (6, 31, "'room.participants: {gt: ...}' needs a number"),
                 id="duration-for-a-number-field"),
    # times
    pytest.param("now.time: {gte: '25:00'}",
                 (6, 23, "'now.time: {gte: ...}' '25:00' is not a time; write it as HH:MM, 24-hour"),
                 id="time-hour-25"),
    pytest.param("now.time: {gte: '22:60'}", (6, 23, "'22:60' is not a time"), id="time-minute-60"),
    pytest.param("now.time: '8:30'", (6, 17, "'8:30' is not a time"), id="time-one-digit-hour"),
    pytest.param("now.time: '22:00:00'", (6, 17, "'22:00:00' is not a time"), id="time-with-seconds"),
    pytest.param("now.time: {in: ['08:00', noon]}", (6, 22, "'noon' is not a time"), id="time-bad-list-item"),
    pytest.param("now.time: {gt: 2200}", (6, 22, "'now.time: {gt: ...}' needs a time such as \"22:00\""),
                 id="time-number-ordered"),
    pytest.param("now.time: 2200", (6, 17, "needs a string for this field; quote it"), id="time-number-eq"),
    pytest.param("now.time: {matches: 5}", (6, 27, "needs a regular expression as a string"), id="time-regex-number"),
    # weekdays
    pytest.param("now.weekday: funday",
                 (6, 20, "'now.weekday: {eq: ...}' 'funday' is not a weekday; use mon, tue, wed, thu, fri, sat, sun"),
                 id="weekday-funday"),
    pytest.param("now.weekday: {in: [sat, sa]}", (6, 25, "'sa' is not a weekday"), id="weekday-abbreviation-too-short"),
    pytest.param("now.weekday: {gt: mon}",
                 (6, 25, "compares numbers, durations or times, but this field is a weekday"), id="weekday-ordered"),
    pytest.param("now.weekday: 1", (6, 20, "needs a string for this field"), id="weekday-number"),
]


@pytest.mark.parametrize("when, expected", BAD_OPERANDS)
def test_bad_operands_of_new_kinds(when, expected):
    rule_set, problems = parse_rules(one_rule(when), "bad.yaml")
    assert rule_set is None
    [problem] = problems
    line, col, fragment = expected
    assert (problem.line, problem.col) == (line, col), str(problem)
    assert fragment in problem.message
    assert str(problem).startswith(f"bad.yaml:{line}:{col}: ")


# -- settings -----------------------------------------------------------------------------------

def with_settings(*lines: str) -> str:
    """Settings keys from 3:3, then an empty rules list."""
    return "version: 1\nsettings:\n" + "".join(f"  {line}\n" for line in lines) + "rules: []\n"


def test_settings_default():
    settings = loads(one_rule()).settings
    assert (settings.timezone, settings.dry_run, settings.max_actions_per_minute, settings.protect) == (
        "UTC", False, None, ())
    assert settings.tz.utcoffset(None).total_seconds() == 0


def test_settings_read():
    settings = loads(with_settings("timezone: Europe/Berlin", "dry_run: true", "max_actions_per_minute: 30",
                                   "protect: [keep-keep-keep, 'demo-*']")).settings
    assert settings.timezone == "Europe/Berlin"
    assert str(settings.tz) == "Europe/Berlin"
    assert settings.dry_run is True
    assert settings.max_actions_per_minute == 30
    assert settings.protect == ("keep-keep-keep", "demo-*")
    assert settings.is_protected("demo-1") and settings.is_protected("keep-keep-keep")
    assert not settings.is_protected("keep-keep-kee")


@pytest.mark.parametrize("line, expected", [
    pytest.param("protect: keep-keep-keep", ("keep-keep-keep",), id="a-single-id"),
    pytest.param("protect: []", (), id="empty-list"),
    pytest.param("protect: ['room-[0-9]*', 'a?c', 'x:y.z_1']", ("room-[0-9]*", "a?c", "x:y.z_1"), id="globs"),
])
def test_protect_forms(line, expected):
    assert loads(with_settings(line)).settings.protect == expected


# (settings lines, (line, col, message fragment))
BAD_SETTINGS = [
    pytest.param(["dryrun: true"],
                 (3, 3, "unknown setting 'dryrun'; did you mean 'dry_run'? "
                        "(settings: timezone, dry_run, max_actions_per_minute, protect, sweep_every, max_checks_per_minute)"), id="unknown-with-hint"),
    pytest.param(["owner: me"],
                 (3, 3, "unknown setting 'owner' (settings: timezone, dry_run, max_actions_per_minute, protect, sweep_every, max_checks_per_minute)"),
                 id="unknown-without-hint"),
    pytest.param(["timezone: Europe/Berln"],
                 (3, 13, "unknown timezone 'Europe/Berln'; did you mean 'Europe/Berlin'? "
                         "(an IANA name such as Europe/Berlin or UTC)"), id="timezone-typo-with-hint"),
    pytest.param(["timezone: Mars/Olympus_Mons"], (3, 13, "unknown timezone 'Mars/Olympus_Mons'"),
                 id="timezone-unknown"),
    pytest.param(["timezone: ../../etc/passwd"], (3, 13, "unknown timezone '../../etc/passwd'"),
                 id="timezone-path-traversal"),
    pytest.param(["timezone: /etc/localtime"], (3, 13, "unknown timezone '/etc/localtime'"),
                 id="timezone-absolute-path"),
    pytest.param(["timezone: +02:00"], (3, 13, "unknown timezone '+02:00'"), id="timezone-an-offset"),
    pytest.param(["timezone: 5"], (3, 13, "'timezone' must be a non-empty string"), id="timezone-a-number"),
    pytest.param(["max_actions_per_minute: 0"],
                 (3, 27, "'max_actions_per_minute' must be a whole number, at least 1"), id="max-0"),
    pytest.param(["max_actions_per_minute: -3"], (3, 27, "at least 1"), id="max-negative"),
    pytest.param(["max_actions_per_minute: x"], (3, 27, "must be a whole number"), id="max-a-string"),
    pytest.param(["max_actions_per_minute: '10'"], (3, 27, "must be a whole number"), id="max-a-quoted-number"),
    pytest.param(["max_actions_per_minute: 1.5"], (3, 27, "must be a whole number"), id="max-a-float"),
    pytest.param(["max_actions_per_minute: true"], (3, 27, "must be a whole number"), id="max-true"),
    pytest.param(["protect: ['room 1']"], (3, 13, "'room 1' is not a room id or glob"), id="protect-space"),
    pytest.param(["protect: [ok-room, room/1]"], (3, 22, "'room/1' is not a room id or glob"),
                 id="protect-slash-second-item"),
    pytest.param(["protect: ['a\"b']"], (3, 13, "is not a room id or glob"), id="protect-quote"),
    pytest.param(["protect: ['']"], (3, 13, "a room id or glob in 'protect' must be a non-empty string"),
                 id="protect-empty-string"),
    pytest.param(["protect: [5]"], (3, 13, "must be a non-empty string"), id="protect-a-number"),
    pytest.param(["dry_run: yes"], (3, 12, "'dry_run' must be true or false"), id="dry_run-yes"),
    pytest.param(["dry_run: 1"], (3, 12, "'dry_run' must be true or false"), id="dry_run-1"),
]


@pytest.mark.parametrize("lines, expected", BAD_SETTINGS)
def test_bad_settings(lines, expected):
    rule_set, problems = parse_rules(with_settings(*lines), "bad.yaml")
    assert rule_set is None
    [problem] = problems
    line, col, fragment = expected
    assert (problem.line, problem.col) == (line, col), str(problem)
    assert fragment in problem.message


@pytest.mark.parametrize("text, fragment", [
    pytest.param("version: 1\nsettings: [a]\nrules: []\n", "'settings' must be a mapping of key: value", id="a-list"),
    pytest.param("version: 1\nsettings: x\nrules: []\n", "'settings' must be a mapping of key: value", id="a-string"),
])
def test_settings_must_be_a_mapping(text, fragment):
    rule_set, [problem] = parse_rules(text, "bad.yaml")
    assert rule_set is None
    assert (problem.line, problem.col, problem.message) == (2, 11, fragment)


# -- rule keys: for, confirm, dry_run, action -----------------------------------------------------

@pytest.mark.parametrize("extra, expected", [
    pytest.param("for: 5m", 300.0, id="5m"),
    pytest.param("for: 90", 90.0, id="plain-seconds"),
    pytest.param("for: 1h30m", 5400.0, id="1h30m"),
    pytest.param("for: 0.5", 0.5, id="half-a-second"),
    pytest.param("for: '2h'", 7200.0, id="quoted"),
])
def test_for_is_a_duration(extra, expected):
    [rule] = loads(rule_with(extra)).rules
    assert rule.for_seconds == expected


def test_rule_defaults_for_new_keys():
    [rule] = loads(one_rule()).rules
    assert (rule.for_seconds, rule.confirm, rule.dry_run) == (None, None, False)


@pytest.mark.parametrize("extra, attribute, expected", [
    pytest.param("confirm: active-participants", "confirm", "active-participants", id="confirm"),
    pytest.param("dry_run: true", "dry_run", True, id="dry_run-true"),
    pytest.param("dry_run: false", "dry_run", False, id="dry_run-false"),
])
def test_confirm_and_dry_run(extra, attribute, expected):
    [rule] = loads(rule_with(extra)).rules
    assert getattr(rule, attribute) == expected


def test_action_end_session_is_accepted():
    [rule] = loads(one_rule(action="end-session")).rules
    assert rule.action == "end-session"


# extra lines start at 6:5; their values at 6:10 (for), 6:14 (confirm), 6:14 (dry_run)
BAD_RULE_KEYS = [
    pytest.param("for: 0", (6, 10, "'for' must be longer than zero"), id="for-0"),
    pytest.param("for: 0s", (6, 10, "'for' must be longer than zero"), id="for-0s"),
    pytest.param("for: -5", (6, 10, "'for': a duration must be a finite number of seconds, not negative"),
                 id="for-negative"),
    pytest.param("for: -5m", (6, 10, "'for': '-5m' is not a duration"), id="for-negative-string"),
    pytest.param("for: soon", (6, 10, "'for': 'soon' is not a duration; write it as 90s, 5m, 2h, 1d or 1h30m"),
                 id="for-soon"),
    pytest.param("for: true", (6, 10, "'for': a duration is a number of seconds"), id="for-true"),
    pytest.param("for: .inf", (6, 10, "'for': a duration must be a finite number"), id="for-infinite"),
    pytest.param("for: [5m]", (6, 10, "'for': None is not a duration"), id="for-a-list"),
    pytest.param("confirm: active-participant",
                 (6, 14, "unknown check 'active-participant'; did you mean 'active-participants'?; "
                         "known: active-participants"), id="confirm-typo-with-hint"),
    pytest.param("confirm: nobody-there", (6, 14, "unknown check 'nobody-there'; known: active-participants"),
                 id="confirm-unknown"),
    pytest.param("confirm: true", (6, 14, "'confirm' must be a non-empty string"), id="confirm-bool"),
    pytest.param("dry_run: yes", (6, 14, "'dry_run' must be true or false"), id="dry_run-yes-is-a-string"),
    pytest.param("dry_run: 'true'", (6, 14, "'dry_run' must be true or false"), id="dry_run-quoted"),
    pytest.param("dry-run: true", (6, 5, "unknown rule key 'dry-run'; did you mean 'dry_run'?"),
                 id="dry-run-spelt-with-dash"),
    pytest.param("fro: 5m", (6, 5, "unknown rule key 'fro'; did you mean 'for'?"), id="fro"),
]


@pytest.mark.parametrize("extra, expected", BAD_RULE_KEYS)
def test_bad_new_rule_keys(extra, expected):
    rule_set, problems = parse_rules(rule_with(extra), "bad.yaml")
    assert rule_set is None
    [problem] = problems
    line, col, fragment = expected
    assert (problem.line, problem.col) == (line, col), str(problem)
    assert fragment in problem.message


# -- warnings: they are reported, and they do not stop loading ----------------------------------

# (rule file text, [(line, col, message fragment)] of the warnings, in order)
WARNINGS = [
    pytest.param(one_rule("participant.id: p1", on="session-ended"),
                 [(6, 7, "'participant.id' is never set on session-ended events (only on participant-*), "
                         "so this test is never true")], id="participant-field-on-session-ended"),
    pytest.param(one_rule("session.duration: {gt: 1m}", on="participant-left"),
                 [(6, 7, "'session.duration' is never set on participant-left events (only on session-ended)"),
                  (7, 13, "'deactivate' on participant-left without 'confirm: active-participants'")],
                 id="session-duration-on-participant-left"),
    pytest.param(one_rule("not:\n  any:\n    - room.id: a\n    - participant.name: bob", on="session-started"),
                 [(9, 13, "'participant.name' is never set on session-started events")], id="nested-field"),
    # families VideoSDK names without documenting a type: no near name is offered for them
    pytest.param(one_rule(on="call-*"),
                 [(4, 9, "'call-*': VideoSDK documents no type it matches (it names the call-* family, with "
                         "shapes unknown), and roomwarden does not act on it: events of unknown types are "
                         "recorded but never acted on")], id="on-call-glob"),
    pytest.param(one_rule(on="[session-ended, agent-session-ended]"),
                 [(4, 9, "'agent-session-ended': VideoSDK documents no such type (it names the agent-session-* "
                         "family, with shapes unknown), and roomwarden does not act on it")], id="on-list-item"),
    pytest.param(one_rule("participant.id: p1", on="batchcall-*"),
                 [(4, 9, "'batchcall-*': VideoSDK documents no type it matches (it names the batchcall-*"),
                  (6, 7, "'participant.id' is never set on batchcall-* events")], id="both-in-file-order"),
    pytest.param(one_rule(on="ai-deployment-session-started"),
                 [(4, 9, "'ai-deployment-session-started': VideoSDK documents no such type (it names the "
                         "ai-deployment-session-* family")], id="ai-deployment-session"),
    # a type VideoSDK does not document: most often a typo, so the nearest documented name is offered
    pytest.param(one_rule(on="participant-leftt"),
                 [(4, 9, "'participant-leftt': VideoSDK documents no such type, and roomwarden does not act on "
                         "it: events of unknown types are recorded but never acted on; did you mean "
                         "'participant-left'?")], id="typo-of-a-documented-type"),
    pytest.param(one_rule(on="sesion-ended"),
                 [(4, 9, "'sesion-ended': VideoSDK documents no such type, and roomwarden does not act on it: "
                         "events of unknown types are recorded but never acted on; did you mean 'session-ended'?")],
                 id="typo-session-ended"),
    # roomwarden would read it (recording-*), but VideoSDK documents no such type
    pytest.param(one_rule(on="recording-paused"),
                 [(4, 9, "'recording-paused': VideoSDK documents no such type; did you mean 'recording-")],
                 id="read-by-a-family-glob-but-undocumented"),
    # a glob that can only match undocumented types
    pytest.param(one_rule(on="'hls-play*d'"),
                 [(4, 9, "'hls-play*d': VideoSDK documents no type it matches; did you mean 'hls-playable'?")],
                 id="glob-matching-no-documented-type"),
    # documented, but not a type roomwarden reads
    pytest.param(one_rule(on="resource-acquired"),
                 [(4, 9, "'resource-acquired' matches no event type roomwarden acts on; events of unknown types "
                         "are recorded but never acted on")], id="documented-but-not-read"),
    # acting on a leave without asking VideoSDK first
    pytest.param(one_rule(on="participant-left"), [(5, 13, "'deactivate' on participant-left without 'confirm: active-participants': events can arrive late or out of "
                                                            "order")], id="deactivate-on-leave"),
    pytest.param(one_rule(on="'participant-*'", action="end-session"),
                 [(5, 13, "'end-session' on participant-left without")], id="end-session-on-leave-glob"),
    pytest.param(one_rule("participant.id: p1", on="'*'"), [(7, 13, "'deactivate' on participant-left without 'confirm: active-participants'")], id="star-carries-everything"),
    pytest.param(one_rule("participant.id: p1", on="[participant-left, session-ended]"), [(7, 13, "'deactivate' on participant-left without 'confirm: active-participants'")],
                 id="one-type-carries"),
    # no warnings
    pytest.param(one_rule(on="participant-left").replace("    action:", "    confirm: active-participants\n"
                                                          "    action:"), [], id="leave-with-confirm"),
    pytest.param(one_rule(on="participant-left").replace("    action:", "    dry_run: true\n    action:"), [],
                 id="leave-dry-run"),
    pytest.param(one_rule("participant.id: p1", on="participant-recording-started"), [], id="participant-recording"),
    pytest.param(one_rule("session.duration: {gt: 1}", on="'session-*'"), [], id="glob-covers-session-ended"),
    pytest.param(one_rule("room.empty_for: {gt: 5m}\nsession.age: {gt: 1h}\nnow.time: '22:00'",
                          on="participant-joined"), [], id="room-and-clock-fields-on-any-event"),
    pytest.param(one_rule("data.kind: video", on="hls-started"), [], id="data-paths-never-warn"),
    pytest.param(one_rule(on="transcription-completed"), [], id="documented-with-no-payload"),
    pytest.param(one_rule(on="'merge-recording-*'"), [], id="glob-of-a-documented-family"),
    pytest.param(one_rule(on="'hls-*'"), [], id="glob-matching-documented-types"),
]


@pytest.mark.parametrize("text, expected", WARNINGS)
def test_warnings(text, expected):
    rule_set, problems = parse_rules(text, "w.yaml")
    assert problems == []
    assert rule_set is not None and len(rule_set.rules) == 1  # warnings do not stop loading
    got = [(w.line, w.col, w.message) for w in rule_set.warnings]
    assert [(line, col) for line, col, _ in got] == [(line, col) for line, col, _ in expected], got
    for (_, _, message), (_, _, fragment) in zip(got, expected):
        assert fragment in message
    for warning in rule_set.warnings:
        assert warning.severity == "warning"
        assert str(warning) == f"w.yaml:{warning.line}:{warning.col}: warning: {warning.message}"


# The webhook types VideoSDK documents, copied by hand from ../shared/videosdk/README.md: the four of
# its "Fields by event" table (participant-joined, participant-left, session-started, session-ended)
# and the bullet "Webhook event types documented today". Kept apart from the service's own list so
# that a change to either shows up here.
DOCUMENTED_IN_THE_SHARED_README = [
    "participant-joined", "participant-left", "session-started", "session-ended",
    "recording-starting", "recording-started", "recording-stopping", "recording-stopped", "recording-failed",
    "participant-recording-starting", "participant-recording-started", "participant-recording-stopping",
    "participant-recording-stopped", "participant-recording-failed",
    "participant-track-recording-starting", "participant-track-recording-started",
    "participant-track-recording-stopping", "participant-track-recording-stopped",
    "participant-track-recording-failed",
    "merge-recording-completed", "merge-recording-failed",
    "livestream-starting", "livestream-started", "livestream-playable", "livestream-stopping",
    "livestream-stopped", "livestream-failed",
    "hls-starting", "hls-started", "hls-playable", "hls-stopping", "hls-stopped", "hls-failed",
    "transcription-started", "transcription-stopped", "transcription-failed", "transcription-completed",
    "resource-acquired",
]


def test_the_documented_types_are_exactly_the_shared_readme_list():
    from service.schemas import DOCUMENTED_EVENT_TYPES

    assert len(DOCUMENTED_EVENT_TYPES) == len(set(DOCUMENTED_EVENT_TYPES))  # no type twice
    assert sorted(DOCUMENTED_EVENT_TYPES) == sorted(DOCUMENTED_IN_THE_SHARED_README)


@pytest.mark.parametrize("event_type", DOCUMENTED_IN_THE_SHARED_README)
def test_a_rule_on_any_documented_type_gets_no_undocumented_warning(event_type):
    rule_set, problems = parse_rules(one_rule(on=event_type), "d.yaml")
    assert problems == []
    assert [w.message for w in rule_set.warnings if "VideoSDK documents" in w.message] == []


def test_warnings_do_not_stop_load_rules(tmp_path):
    path = tmp_path / "rules.yaml"
    path.write_text(one_rule("participant.id: p1", on="session-ended"))
    rule_set = load_rules(path)
    assert [r.name for r in rule_set.rules] == ["r1"]
    [warning] = rule_set.warnings
    assert str(warning).startswith(f"{path}:6:7: warning: 'participant.id' is never set")


def test_errors_drop_warnings_and_shipped_file_has_none():
    text = one_rule("participant.id: p1", on="session-ended").replace("action: deactivate", "action: nuke")
    rule_set, problems = parse_rules(text, "e.yaml")
    assert rule_set is None
    assert [p.severity for p in problems] == ["error"]
    assert "warning" not in str(problems[0])
    assert load_rules(SHIPPED).warnings == ()


@pytest.mark.parametrize("text", [
    pytest.param(one_rule(on="'*-stopped'"), id="on-star-stopped-covers-recording-stopped"),
    pytest.param(one_rule(on="'*-playable'"), id="on-star-playable-covers-hls-playable"),
    pytest.param(one_rule(on="'?ls-started'"), id="on-question-mark-covers-hls-started"),
    pytest.param(one_rule("participant.id: p1", on="'*-joined'"), id="participant-field-on-star-joined"),
])
def test_no_false_warning_for_globs_that_do_match_known_events(text):
    rule_set, problems = parse_rules(text, "w.yaml")
    assert problems == []
    assert [str(w) for w in rule_set.warnings] == []


# -- fingerprints: what makes two versions of a rule "the same" for its pending timers -------------

FINGERPRINT_BASE = """\
  - name: empty
    description: close rooms left empty
    on: participant-left
    when:
      room.participants: 0
    for: 5m
    action: deactivate
"""


def fingerprint(rules_yaml: str, before: str = "") -> str:
    rule_set = loads(HEAD + before + rules_yaml)
    return rule_set.rule("empty").fingerprint


@pytest.mark.parametrize("changed, same", [
    pytest.param(FINGERPRINT_BASE.replace("close rooms left empty", "a different description"), True,
                 id="description-changed"),
    pytest.param(FINGERPRINT_BASE.replace("    description: close rooms left empty\n", ""), True,
                 id="description-removed"),
    pytest.param(FINGERPRINT_BASE.replace("    for: 5m\n", "    for: 5m  # a comment\n"), True, id="comment-added"),
    pytest.param(FINGERPRINT_BASE.replace("    when:\n      room.participants: 0\n",
                                          "    when: {room.participants: 0}\n"), True,
                 id="same-condition-in-flow-style"),
    pytest.param(FINGERPRINT_BASE.replace("for: 5m", "for: '5m'"), True, id="same-for-quoted"),
    pytest.param(FINGERPRINT_BASE.replace("room.participants: 0", "room.participants: 1"), False,
                 id="condition-operand-changed"),
    pytest.param(FINGERPRINT_BASE.replace("room.participants: 0", "room.participants: {lte: 0}"), False,
                 id="condition-operator-changed"),
    pytest.param(FINGERPRINT_BASE.replace("for: 5m", "for: 10m"), False, id="for-changed"),
    pytest.param(FINGERPRINT_BASE.replace("on: participant-left", "on: [participant-left, session-ended]"), False,
                 id="on-changed"),
    pytest.param(FINGERPRINT_BASE.replace("action: deactivate", "action: end-session"), False, id="action-changed"),
    pytest.param(FINGERPRINT_BASE + "    dry_run: true\n", False, id="dry_run-added"),
    pytest.param(FINGERPRINT_BASE + "    confirm: active-participants\n", False, id="confirm-added"),
])
def test_fingerprint_changes_with_everything_but_the_description(changed, same):
    base = fingerprint(FINGERPRINT_BASE)
    assert len(base) == 16
    assert (fingerprint(changed) == base) is same


def test_fingerprint_does_not_depend_on_position_or_other_rules():
    moved = fingerprint(FINGERPRINT_BASE, before="  - {name: other, on: session-ended, action: deactivate}\n")
    assert moved == fingerprint(FINGERPRINT_BASE)
    [rule] = loads(HEAD + FINGERPRINT_BASE).rules
    assert rule.line == 3


# -- files that must come back as file:line:col problems (found in a review) ------------------------

REVIEW_HEAD = """\
version: 1
rules:
  - name: r
    on: session-ended
    action: deactivate
"""


def test_a_recursive_yaml_alias_is_reported_not_looped_on():
    text = REVIEW_HEAD + "    description: &d [*d]\n"
    script = textwrap.dedent(f"""
        import resource, sys
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
        sys.path.insert(0, {str(ROOT)!r})
        from service.rules.loader import parse_rules
        rule_set, problems = parse_rules({text!r}, "rules.yaml")
        print(rule_set is None, [str(p) for p in problems])
    """)
    try:
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=10)
    except subprocess.TimeoutExpired:
        pytest.fail("parse_rules did not return within 10 s on a recursive alias")
    assert done.returncode == 0, done.stderr[-500:]
    assert done.stdout.startswith("True ['rules.yaml:"), done.stdout


@pytest.mark.parametrize("line", [
    pytest.param("    when:\n      session.duration: {gte: !!float 5m}\n", id="float-tag"),
    pytest.param("    dry_run: !!bool maybe\n", id="bool-tag"),
])
def test_an_explicit_scalar_tag_with_an_unreadable_value_is_a_problem_not_a_traceback(line):
    rule_set, problems = parse_rules(REVIEW_HEAD + line, "rules.yaml")
    assert rule_set is None
    line_no = REVIEW_HEAD.count("\n") + line.count("\n")  # the tagged scalar's line
    assert any(str(p).startswith(f"rules.yaml:{line_no}:") for p in problems), [str(p) for p in problems]


def test_aliases_that_expand_past_the_limit_are_a_problem_not_hours_of_work():
    text = "version: 1\nx0: &a0 [1,1,1,1,1,1,1,1,1,1]\n" + "".join(
        f"x{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 10) + "]\n" for i in range(1, 9)) + "rules: []\n"
    rule_set, problems = parse_rules(text, "rules.yaml")
    assert rule_set is None
    assert [str(p) for p in problems] == [
        "rules.yaml:1:1: the file stands for more than 1,000,000 YAML nodes, each alias (*name) counted as "
        "all it names; write it with fewer or smaller aliases, or split it"]
