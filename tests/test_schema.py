"""The JSON Schema of a rules file (issue 18), used as an editor uses it: the `jsonschema` package
validates YAML read as YAML 1.2 (as yaml-language-server reads it) against docs/rules.schema.json.

The loader stays the authority: where the schema cannot say what the loader checks, the tables
below say so, and docs/rules.md lists the same split."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from jsonschema import Draft7Validator

from service.rules.loader import parse_rules, read_yaml
from service.rules.schema import schema_text

ROOT = Path(__file__).resolve().parent.parent
SCHEMA_FILE = ROOT / "docs" / "rules.schema.json"
SCHEMA = json.loads(SCHEMA_FILE.read_text())
VALIDATOR = Draft7Validator(SCHEMA)


def problems(text: str) -> list[tuple[list, str]]:
    """(path, message) of each schema error, the path down to the key at fault: for a key that is
    not allowed, the path of its mapping and then the key, as an editor underlines it."""
    found = []
    for error in VALIDATOR.iter_errors(read_yaml(text)):
        path = list(error.absolute_path)
        if error.validator == "additionalProperties":
            known, patterns = error.schema.get("properties", {}), error.schema.get("patternProperties", {})
            extra = [key for key in error.instance
                     if key not in known and not any(re.search(p, key) for p in patterns)]
            for key in extra:
                found.append((path + [key], error.message))
            continue
        found.append((path, error.message))
    return found


def rules(body: str, head: str = "version: 1\nrules:\n") -> str:
    return head + body


# -- the schema is made from the tables, and the committed copy is that --------------------------


def test_the_committed_schema_is_the_one_the_tables_make():
    assert SCHEMA_FILE.read_text() == schema_text(), "stale: run python -m service schema > docs/rules.schema.json"


def test_python_m_service_schema_prints_it():
    done = subprocess.run([sys.executable, "-m", "service", "schema"], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout == SCHEMA_FILE.read_text()


def test_it_is_a_valid_draft_7_schema():
    Draft7Validator.check_schema(SCHEMA)  # raises SchemaError otherwise
    assert SCHEMA["$schema"] == "http://json-schema.org/draft-07/schema#"


def test_the_shipped_rules_file_names_it_for_editors():
    first = (ROOT / "rules.yaml").read_text().splitlines()[0]
    match = re.fullmatch(r"# yaml-language-server: \$schema=(\S+)", first)
    assert match, first
    assert (ROOT / match.group(1)).resolve() == SCHEMA_FILE  # relative to the rules file, as editors read it


# -- every rules file in the repository is valid under it ---------------------------------------


def _examples() -> list[tuple[str, str]]:
    """Every whole rules file the repository ships or shows: files, and the YAML blocks of the docs
    that are rules files (they start with `version:`)."""
    found = [(str(path.relative_to(ROOT)), path.read_text())
             for path in (ROOT / "rules.yaml", ROOT / "bench" / "rules.yaml")]
    for doc in (ROOT / "README.md", ROOT / "docs" / "rules.md"):
        for n, block in enumerate(re.findall(r"```yaml\n(.*?)```", doc.read_text(), re.S)):
            if block.startswith("version:"):
                found.append((f"{doc.relative_to(ROOT)} block {n + 1}", block))
    return found


EXAMPLES = _examples()


def test_the_examples_are_found():
    names = [name for name, _ in EXAMPLES]
    assert "rules.yaml" in names and any(name.startswith("docs/rules.md") for name in names)
    assert len(names) >= 5, names


@pytest.mark.parametrize("name, text", EXAMPLES, ids=[name for name, _ in EXAMPLES])
def test_every_example_rules_file_is_valid_under_the_schema(name, text):
    rule_set, loader_problems = parse_rules(text, name)
    assert loader_problems == []  # the loader agrees: these are good files
    assert problems(text) == []


# -- what it flags, at the path an editor shows ------------------------------------------------


def test_an_unknown_operator_is_flagged_at_its_path():
    text = rules("  - name: r\n    on: participant-left\n    when:\n      room.participants: {gtee: 0}\n"
                 "    action: deactivate\n")
    assert [path for path, _ in problems(text)] == [["rules", 0, "when", "room.participants", "gtee"]]
    assert parse_rules(text)[1]  # the loader refuses it too


def test_an_unknown_field_is_flagged_at_its_path():
    text = rules("  - name: r\n    on: participant-left\n    when:\n      room.participant: 0\n"
                 "    action: deactivate\n")
    assert [path for path, _ in problems(text)] == [["rules", 0, "when", "room.participant"]]
    assert parse_rules(text)[1]


def test_a_nested_unknown_field_is_flagged_inside_all():
    text = rules("  - name: r\n    on: session-ended\n    when:\n      all:\n        - room.id: a\n"
                 "        - sesion.id: b\n    action: deactivate\n")
    assert [path for path, _ in problems(text)] == [["rules", 0, "when", "all", 1, "sesion.id"]]


RULE = "  - name: r\n    on: session-ended\n    action: deactivate\n"

# Mistakes both the schema and the loader refuse: (what, the file, the path the schema names).
BOTH_REFUSE = [
    ("unknown top-level key", "version: 1\nrule: []\n", ["rule"]),
    ("wrong version", "version: 2\nrules: []\n", ["version"]),
    ("no rules key", "version: 1\n", []),
    ("unknown setting", "version: 1\nsettings:\n  timezon: UTC\nrules: []\n", ["settings", "timezon"]),
    ("a limit of zero", "version: 1\nsettings:\n  max_actions_per_minute: 0\nrules: []\n",
     ["settings", "max_actions_per_minute"]),
    ("a sweep every half second", "version: 1\nsettings:\n  sweep_every: 0.5\nrules: []\n", ["settings", "sweep_every"]),
    ("a bad room glob", "version: 1\nsettings:\n  protect: ['demo room']\nrules: []\n", ["settings", "protect"]),
    ("unknown rule key", rules(RULE + "    when_:\n      room.id: a\n"), ["rules", 0, "when_"]),
    ("a rule without a name", rules("  - on: session-ended\n    action: deactivate\n"), ["rules", 0]),
    ("a bad rule name", rules("  - name: 'r 1'\n    on: session-ended\n    action: deactivate\n"),
     ["rules", 0, "name"]),
    ("an unknown action", rules("  - name: r\n    on: session-ended\n    action: delete\n"),
     ["rules", 0, "action"]),
    ("an unknown check", rules(RULE + "    confirm: nobody-there\n"), ["rules", 0, "confirm"]),
    ("an event type in capitals", rules("  - name: r\n    on: Session-Ended\n    action: deactivate\n"),
     ["rules", 0, "on"]),
    ("an empty 'on' list", rules("  - name: r\n    on: []\n    action: deactivate\n"), ["rules", 0, "on"]),
    ("a duration in words", rules(RULE + "    for: 5 minutes\n"), ["rules", 0, "for"]),
    ("a zero duration in seconds", rules(RULE + "    for: 0\n"), ["rules", 0, "for"]),
    ("dry_run as a word", rules(RULE + "    dry_run: yes\n"), ["rules", 0, "dry_run"]),
    ("an empty when", rules(RULE + "    when: {}\n"), ["rules", 0, "when"]),
    ("a list given to a field", rules(RULE + "    when:\n      room.id: [a, b]\n"), ["rules", 0, "when", "room.id"]),
    ("a number for a string field", rules(RULE + "    when:\n      room.id: 5\n"), ["rules", 0, "when", "room.id"]),
    ("a string for a number field", rules(RULE + "    when:\n      room.participants: none\n"),
     ["rules", 0, "when", "room.participants"]),
    ("an order on a string", rules(RULE + "    when:\n      room.id: {gt: a}\n"),
     ["rules", 0, "when", "room.id", "gt"]),
    ("a regex on a number", rules(RULE + "    when:\n      room.participants: {matches: '0'}\n"),
     ["rules", 0, "when", "room.participants", "matches"]),
    ("an empty list for in", rules(RULE + "    when:\n      room.id: {in: []}\n"),
     ["rules", 0, "when", "room.id", "in"]),
    ("exists with a word", rules(RULE + "    when:\n      data.x: {exists: maybe}\n"),
     ["rules", 0, "when", "data.x", "exists"]),
    ("a time past midnight", rules(RULE + "    when:\n      now.time: {gte: '24:00'}\n"),
     ["rules", 0, "when", "now.time", "gte"]),
    ("a day that is not one", rules(RULE + "    when:\n      now.weekday: funday\n"),
     ["rules", 0, "when", "now.weekday"]),
    ("no operator", rules(RULE + "    when:\n      room.id: {}\n"), ["rules", 0, "when", "room.id"]),
    ("an empty description", rules(RULE + "    description: ''\n"), ["rules", 0, "description"]),
    ("an empty timezone", "version: 1\nsettings:\n  timezone: ''\nrules: []\n", ["settings", "timezone"]),
    ("an empty 'all'", rules(RULE + "    when:\n      all: []\n"), ["rules", 0, "when", "all"]),
]


@pytest.mark.parametrize("what, text, path", BOTH_REFUSE, ids=[case[0] for case in BOTH_REFUSE])
def test_the_schema_refuses_what_the_loader_refuses(what, text, path):
    assert parse_rules(text)[1], "the loader accepts it: the case is wrong"
    assert path in [found for found, _ in problems(text)], problems(text)


# Good files the schema must not refuse (an editor that underlines valid rules is worse than none).
BOTH_ACCEPT = [
    rules(RULE + "    when:\n      room.participants: 0\n      now.weekday: {in: [Mon, tuesday]}\n"
                 "      now.time: {gte: '09:00', lt: '17:30'}\n"),
    rules(RULE + "    for: 1h30m\n    dry_run: true\n    when:\n      any:\n        - session.duration: {gte: 2h}\n"
                 "        - not: {data.fileDetails.0.fileUrl: {exists: true}}\n"),
    rules("  - name: r\n    on: [participant-left, 'recording-*']\n    confirm: active-participants\n"
          "    action: end-session\n    when:\n      participant.name: {matches: '^bot-'}\n"
          "      data.count: {ne: null}\n"),
    "version: 1\nsettings:\n  protect: demo-*\n  sweep_every: 10m\n  timezone: Europe/Berlin\n"
    "  max_checks_per_minute: 30\nrules:\n",
    rules(RULE + "    when:\n      room.empty_for: {gt: -1}\n"),  # any number compares
    rules("  - name: quiet\n    on: sweep\n    when:\n      room.quiet_for: {gte: 7200}\n"
          "    confirm: no-live-session\n    action: deactivate\n"),
]


@pytest.mark.parametrize("text", BOTH_ACCEPT)
def test_the_schema_accepts_what_the_loader_accepts(text):
    assert parse_rules(text)[1] == []
    assert problems(text) == []


# What only the loader can say: the schema lets these through, by design (docs/rules.md, "Editors").
LOADER_ONLY = [
    ("a duplicate rule name", rules(RULE + RULE)),
    ("an unknown timezone", "version: 1\nsettings:\n  timezone: Mars/Olympus\nrules: []\n"),
    ("a regular expression that does not compile", rules(RULE + "    when:\n      room.id: {matches: '('}\n")),
    ("a duration string of zero", rules(RULE + "    for: 0s\n")),
    ("a sweep string shorter than a second", "version: 1\nsettings:\n  sweep_every: 0.5s\nrules: []\n"),
    ("a whole number written with a point", "version: 1.0\nsettings:\n  max_actions_per_minute: 5.0\nrules: []\n"),
    ("a duplicate key", rules(RULE.replace("action: deactivate", "action: deactivate\n    action: end-session"))),
]


@pytest.mark.parametrize("what, text", LOADER_ONLY, ids=[case[0] for case in LOADER_ONLY])
def test_what_only_the_loader_checks(what, text):
    assert parse_rules(text)[1], "the loader accepts it"
    assert problems(text) == []


def test_the_docs_list_what_only_the_loader_checks():
    doc = (ROOT / "docs" / "rules.md").read_text()
    section = doc.split("## Editors", 1)[1].split("\n## ", 1)[0]
    for what, _ in LOADER_ONLY:
        assert what in section, what
