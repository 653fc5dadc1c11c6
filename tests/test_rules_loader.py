"""service.rules.loader: YAML text in, a frozen RuleSet out, or every problem with its file:line:col."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest

from service.errors import RulesError
from service.rules.conditions import All, Any_, Compare, Not
from service.rules.loader import Problem, load_rules, parse_rules

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
    [rule] = rule_set.rules
    assert rule.name == "close-after-session"
    assert rule.on == ("session-ended",)  # `on:` is the key "on", not the boolean true
    assert rule.action == "deactivate"
    assert rule.description == "deactivate rooms whose session ended after a real meeting"
    assert rule.line == 9
    # session.duration >= 60 and not room.id in [keep-keep-keep]
    assert isinstance(rule.when, All)
    duration, negation = rule.when.children
    assert (duration.field, duration.op, duration.operand) == ("session.duration", "gte", 60)
    assert isinstance(negation, Not)
    assert (negation.child.field, negation.child.op, negation.child.operand) == ("room.id", "in", ("keep-keep-keep",))


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
