"""Load a rules file: YAML text in, a frozen `RuleSet` out, or every problem with its position.

`load_rules(path)` raises `RulesError` listing each problem as
`file:line:col: message`; it never raises anything else for bad input. The
YAML is read with YAML 1.2 booleans (only true/false), so `on:` is the key
"on", not the boolean true that PyYAML's default YAML 1.1 reading makes it.
Duplicate keys, unknown keys, fields and operators, and operands of the wrong
kind are errors: nothing in a rules file is silently ignored.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
import stat
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from ..errors import RulesError
from ..schemas import DOCUMENTED_EVENT_TYPES, KNOWN_EVENTS, NAMED_UNDOCUMENTED_FAMILIES
from . import fields
from .conditions import All, Any_, Compare, Condition, Not
from .durations import parse_duration
from .model import ACTIONS, CONFIRMS, SWEEP, Rule, RuleSet, RuleSettings
from .operators import OPERATORS, coerce

_BOOL = "tag:yaml.org,2002:bool"
_TIMESTAMP = "tag:yaml.org,2002:timestamp"
_INT = "tag:yaml.org,2002:int"
_FLOAT = "tag:yaml.org,2002:float"
_MAP = "tag:yaml.org,2002:map"
_SEQ = "tag:yaml.org,2002:seq"
MAX_NODES = 1_000_000  # YAML nodes a rules file may stand for, aliases expanded (10,000 rules use about 200,000)


class _Unreadable:
    """A scalar whose explicit tag's converter refused it (already reported)."""

    def __repr__(self) -> str:
        return "<unreadable>"


_UNREADABLE = _Unreadable()

_PLAIN_TAGS = {_BOOL, _INT, _FLOAT, _MAP, _SEQ, "tag:yaml.org,2002:str", "tag:yaml.org,2002:null"}


class _Loader(yaml.SafeLoader):
    """SafeLoader reading YAML 1.2 core scalars: only true/false are booleans, no implicit
    timestamps, no sexagesimal (`1:30`) or leading-zero octal (`017`) integers."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in (_BOOL, _TIMESTAMP, _INT, _FLOAT)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(_BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
_Loader.add_implicit_resolver(_INT, re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$"),
                              list("-+0123456789"))
_Loader.add_implicit_resolver(
    _FLOAT, re.compile(r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
                       r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"), list("-+.0123456789"))


def _construct_int(loader: _Loader, node: ScalarNode) -> int:
    text = loader.construct_scalar(node)
    try:
        return int(text, 0) if text.startswith(("0x", "0o")) else int(text, 10)
    except ValueError:  # more digits than Python converts (4300)
        raise yaml.constructor.ConstructorError(None, None, "an integer with too many digits",
                                                node.start_mark) from None


_Loader.add_constructor(_INT, _construct_int)

# The keys a rules file may use, each with the line an editor shows for it (rules/schema.py);
# docs/rules.md says more of each.
TOP_KEYS = {
    "version": "always 1",
    "settings": "settings for the whole file",
    "rules": "a list of rules, evaluated in file order; an empty list is valid and does nothing",
}
MIN_SWEEP_EVERY = 1.0  # seconds: a shorter sweep is a busy loop over every known room
SETTINGS_KEYS = {
    "timezone": "the IANA timezone of now.time and now.weekday (Europe/Berlin, America/New_York); default UTC",
    "dry_run": "every rule in shadow mode: decisions recorded as 'would', nothing called",
    "max_actions_per_minute": "at most this many calls to VideoSDK a minute, across all workers; none is dropped",
    "protect": "room ids or globs (demo-*) never acted on, whatever a rule says",
    "sweep_every": f"how often a sweep raises a sweep event for every open room: a duration, at least "
                   f"{MIN_SWEEP_EVERY:g}s; default 15m when a rule is on: sweep",
    "max_checks_per_minute": "at most this many no-live-session checks a minute, across all workers; default 60",
}
RULE_KEYS = {
    "name": "unique in the file; letters, digits, _, . and -; part of the action key",
    "description": "free text, for people",
    "on": "the event type (webhookType) the rule is for: one name, a list, or globs (recording-*)",
    "when": "conditions that must all hold; without it, every event of the rule's types matches",
    "for": "a duration (90s, 5m, 2h, 1d): the condition must hold that long before the rule acts",
    "confirm": "a check made just before acting; a room in use cancels the action",
    "dry_run": "true: shadow mode for this rule; decisions recorded as 'would', nothing called",
    "action": "what to do to the event's room",
}
COMBINATORS = ("all", "any", "not")
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}\Z")
EVENT_PATTERN = re.compile(r"^[a-z0-9*?\[\]._-]{1,100}\Z")
ROOM_PATTERN = re.compile(r"^[A-Za-z0-9_.:*?\[\]-]{1,128}\Z")
_KNOWN_EVENT_PATTERNS = tuple(pattern for pattern, _ in KNOWN_EVENTS)


@dataclass(frozen=True)
class Problem:
    source: str
    line: int
    col: int
    message: str
    severity: str = "error"  # or "warning": fails `check` only with --strict

    def __str__(self) -> str:
        kind = "warning: " if self.severity == "warning" else ""
        return f"{self.source}:{self.line}:{self.col}: {kind}{self.message}"


def _overlap(a: str, b: str) -> bool:
    """Whether two event-type globs can match the same type (near enough for a warning):
    one matches the other, or both match an event type VideoSDK documents."""
    return fnmatchcase(a, b) or fnmatchcase(b, a) or any(
        fnmatchcase(name, a) and fnmatchcase(name, b) for name in DOCUMENTED_EVENT_TYPES)


def _undocumented(pattern: str, acted_on: bool) -> str:
    """The warning for an `on:` that can match no webhook type VideoSDK documents: most often a
    typo, so it names the nearest documented type, unless it is in a family VideoSDK names
    without documenting (a near name there would mislead)."""
    glob = any(c in pattern for c in "*?[")
    message = f"'{pattern}': VideoSDK documents no {'type it matches' if glob else 'such type'}"
    family = next((f for f in NAMED_UNDOCUMENTED_FAMILIES if _overlap(pattern, f)), None)
    if family is not None:
        message += f" (it names the {family} family, with shapes unknown)"
    if not acted_on:
        message += ", and roomwarden does not act on it: events of unknown types are recorded but never acted on"
    return message + ("" if family is not None else _hint(pattern, DOCUMENTED_EVENT_TYPES))


def _hint(word: str, choices) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


class _Reader:
    """Walks the YAML node tree, building rules and collecting problems."""

    def __init__(self, loader: _Loader, source: str):
        self.loader = loader
        self.source = source
        self.problems: list[Problem] = []
        self.warnings: list[Problem] = []
        self.settings = RuleSettings()
        self._fields_used: list[tuple[str, Node]] = []  # of the rule being read, for warnings

    def error(self, node: Node, message: str) -> None:
        mark = node.start_mark
        self.problems.append(Problem(self.source, mark.line + 1, mark.column + 1, message))

    def warn(self, node: Node, message: str) -> None:
        mark = node.start_mark
        self.warnings.append(Problem(self.source, mark.line + 1, mark.column + 1, message, "warning"))

    def value(self, node: Node) -> Any:
        """A scalar, or a list of scalars, as Python values."""
        if isinstance(node, ScalarNode):
            try:
                return self.loader.construct_object(node, deep=True)
            except (ValueError, KeyError, TypeError):  # `!!float 5m`, `!!bool maybe`: its tag's converter refuses it
                self.error(node, f"'{node.value}' cannot be read as {node.tag.rsplit(':', 1)[-1]}")
                return _UNREADABLE
        if isinstance(node, SequenceNode):
            return [self.value(item) for item in node.value]
        return {"<mapping>": True}  # callers reject this with a kind error

    def mapping(self, node: Node, what: str) -> list[tuple[Node, str, Node]] | None:
        if not isinstance(node, MappingNode):
            self.error(node, f"{what} must be a mapping of key: value")
            return None
        entries, seen = [], {}
        for key_node, value_node in node.value:
            key = self.value(key_node) if isinstance(key_node, ScalarNode) else None
            if not isinstance(key, str):
                self.error(key_node, f"keys in {what} must be strings")
                continue
            if key in seen:
                self.error(key_node, f"duplicate key '{key}' in {what} (first at line {seen[key]})")
                continue
            seen[key] = key_node.start_mark.line + 1
            entries.append((key_node, key, value_node))
        return entries

    def string(self, node: Node, what: str) -> str | None:
        value = self.value(node) if isinstance(node, ScalarNode) else None
        if not isinstance(value, str) or not value:
            self.error(node, f"{what} must be a non-empty string")
            return None
        return value

    def tags(self, node: Node) -> None:
        """Refuse explicit tags (`!!python/object`, `!foo`) anywhere: they would otherwise be
        ignored on mappings and lists, which this reader walks itself. Refuse too an alias
        inside what it names (`&a [*a]`: no end to it) and aliases that repeat the file past
        MAX_NODES nodes (each `*a` stands for all of `&a` again): the reader would walk them
        for ever, or for hours."""
        stack: list[tuple[Node, bool]] = [(node, False)]
        inside: set[int] = set()  # ids of the collections being walked, from the root down
        walked = 0
        while stack:
            current, leaving = stack.pop()
            if leaving:
                inside.discard(id(current))
                continue
            walked += 1
            if walked > MAX_NODES:
                self.error(node, f"the file stands for more than {MAX_NODES:,} YAML nodes, each alias (*name) "
                                 "counted as all it names; write it with fewer or smaller aliases, or split it")
                return
            if current.tag == "tag:yaml.org,2002:merge":
                self.error(current, "YAML merge keys ('<<') are not supported; write the keys out")
            elif current.tag not in _PLAIN_TAGS:
                self.error(current, f"YAML tag '{current.tag}' is not allowed in a rules file")
            if isinstance(current, (SequenceNode, MappingNode)):
                if id(current) in inside:
                    self.error(current, "a YAML alias (*name) inside the very list or mapping it names "
                                        "(&name) never ends")
                    return
                inside.add(id(current))
                stack.append((current, True))
                children = (current.value if isinstance(current, SequenceNode)
                            else [part for pair in current.value for part in pair])
                stack.extend((child, False) for child in reversed(children))

    # -- the file -------------------------------------------------------------

    def rule_set(self, root: Node | None) -> tuple[Rule, ...]:
        if root is None:
            self.problems.append(Problem(self.source, 1, 1, "the file is empty; expected 'version: 1' and 'rules:'"))
            return ()
        entries = self.mapping(root, "the rules file")
        if entries is None:
            return ()
        present = {key: (key_node, value) for key_node, key, value in entries}
        for key_node, key, _ in entries:
            if key not in TOP_KEYS:
                self.error(key_node, f"unknown top-level key '{key}'{_hint(key, TOP_KEYS)}")
        if "version" not in present:
            self.error(root, "missing 'version: 1'")
        else:
            node = present["version"][1]
            if type(self.value(node)) is not int or self.value(node) != 1:
                self.error(node, "unsupported version; this service reads 'version: 1'")
        if "settings" in present:
            self.settings = self.read_settings(present["settings"][1])
        if "rules" not in present:
            self.error(root, "missing 'rules:' (a list of rules)")
            return ()
        rules_node = present["rules"][1]
        if isinstance(rules_node, ScalarNode) and self.value(rules_node) is None:
            return ()  # `rules:` with nothing under it: a valid file that does nothing
        if not isinstance(rules_node, SequenceNode):
            self.error(rules_node, "'rules' must be a list of rules")
            return ()
        rules, names = [], {}
        for item in rules_node.value:
            rule = self.rule(item)
            if rule is None:
                continue
            if rule.name in names:
                self.error(item, f"duplicate rule name '{rule.name}' (first at line {names[rule.name]})")
                continue
            names[rule.name] = rule.line
            rules.append(rule)
        return tuple(rules)

    def read_settings(self, node: Node) -> RuleSettings:
        entries = self.mapping(node, "'settings'")
        if entries is None:
            return RuleSettings()
        values: dict[str, Any] = {}
        for key_node, key, value in entries:
            if key == "timezone":
                name = self.string(value, "'timezone'")
                if name is not None:
                    try:
                        values["tz"], values["timezone"] = ZoneInfo(name), name
                    except (ZoneInfoNotFoundError, ValueError):
                        self.error(value, f"unknown timezone '{name}'{_hint(name, available_timezones())} "
                                          "(an IANA name such as Europe/Berlin or UTC)")
            elif key == "dry_run":
                flag = self.boolean(value, "'dry_run'")
                if flag is not None:
                    values["dry_run"] = flag
            elif key in ("max_actions_per_minute", "max_checks_per_minute"):
                limit = self.value(value) if isinstance(value, ScalarNode) else None
                if type(limit) is not int or limit < 1:
                    self.error(value, f"'{key}' must be a whole number, at least 1")
                else:
                    values[key] = limit
            elif key == "sweep_every":
                every = self.duration(value, "'sweep_every'")
                if every is not None and every < MIN_SWEEP_EVERY:
                    self.error(value, f"'sweep_every' must be at least {MIN_SWEEP_EVERY:g}s")
                elif every is not None:
                    values["sweep_every"] = every
            elif key == "protect":
                items = value.value if isinstance(value, SequenceNode) else [value]
                patterns = []
                for item in items:
                    pattern = self.string(item, "a room id or glob in 'protect'")
                    if pattern is not None and not ROOM_PATTERN.match(pattern):
                        self.error(item, f"'{pattern}' is not a room id or glob")
                    elif pattern is not None:
                        patterns.append(pattern)
                values["protect"] = tuple(patterns)
            else:
                self.error(key_node, f"unknown setting '{key}'{_hint(key, SETTINGS_KEYS)} "
                                     f"(settings: {', '.join(SETTINGS_KEYS)})")
        return RuleSettings(**values)

    def boolean(self, node: Node, what: str) -> bool | None:
        value = self.value(node) if isinstance(node, ScalarNode) else None
        if not isinstance(value, bool):
            self.error(node, f"{what} must be true or false")
            return None
        return value

    def duration(self, node: Node, what: str) -> float | None:
        value = self.value(node) if isinstance(node, ScalarNode) else None
        try:
            seconds = parse_duration(value)
        except ValueError as exc:
            self.error(node, f"{what}: {exc}")
            return None
        if seconds <= 0:
            self.error(node, f"{what} must be longer than zero")
            return None
        return seconds

    def rule(self, node: Node) -> Rule | None:
        before = len(self.problems)
        entries = self.mapping(node, "a rule")
        if entries is None:
            return None
        self._fields_used = []
        present = {}
        for key_node, key, value in entries:
            if key not in RULE_KEYS:
                self.error(key_node, f"unknown rule key '{key}'{_hint(key, RULE_KEYS)}")
            present[key] = value
        for required in ("name", "on", "action"):
            if required not in present:
                self.error(node, f"a rule needs '{required}:'")
        name = self.string(present["name"], "'name'") if "name" in present else None
        if name is not None and not NAME_PATTERN.match(name):
            self.error(present["name"], "'name' may hold only letters, digits, '_', '.' and '-'")
        on = self.on(present["on"]) if "on" in present else ()
        action = None
        if "action" in present:
            action = self.string(present["action"], "'action'")
            if action is not None and action not in ACTIONS:
                self.error(present["action"], f"unknown action '{action}'{_hint(action, ACTIONS)}; "
                                              f"known: {', '.join(ACTIONS)}")
        when = self.condition(present["when"], "'when'") if "when" in present else None
        description = self.string(present["description"], "'description'") if "description" in present else None
        hold = self.duration(present["for"], "'for'") if "for" in present else None
        confirm = None
        if "confirm" in present:
            confirm = self.string(present["confirm"], "'confirm'")
            if confirm is not None and confirm not in CONFIRMS:
                self.error(present["confirm"], f"unknown check '{confirm}'{_hint(confirm, CONFIRMS)}; "
                                               f"known: {', '.join(CONFIRMS)}")
        dry_run = self.boolean(present["dry_run"], "'dry_run'") if "dry_run" in present else False
        if len(self.problems) > before:
            return None
        self.warn_unreachable(on, present["on"])
        if SWEEP in on and confirm != "no-live-session" and not dry_run:
            self.warn(present["action"], f"'{action}' on sweep without 'confirm: no-live-session': a sweep "
                                         "acts on what roomwarden last heard, and the webhook it missed may "
                                         "be why the room looks quiet")
        if confirm is None and not dry_run and any(_overlap(p, "participant-left") for p in on):
            # VideoSDK's events carry no order or time: the room's count is a best guess.
            self.warn(present["action"], f"'{action}' on participant-left without 'confirm: "
                                         "active-participants': events can arrive late or out of order, "
                                         "so a room can look empty while someone is in it")
        # What makes two versions of a rule "the same" for its pending timers: all but its description.
        raw = self.loader.construct_object(node, deep=True)
        raw.pop("description", None)
        fingerprint = hashlib.sha256(json.dumps(raw, sort_keys=True, default=str).encode()).hexdigest()[:16]
        return Rule(name=name, on=on, action=action, when=when, description=description,
                    line=node.start_mark.line + 1, for_seconds=hold, confirm=confirm, dry_run=bool(dry_run),
                    fingerprint=fingerprint)

    def warn_unreachable(self, on: tuple[str, ...], on_node: Node) -> None:
        """Warnings for parts of a rule that can never apply; errors are already ruled out."""
        for pattern in on:
            if pattern == SWEEP:
                continue  # roomwarden's own event (service/sweeps.py)
            acted_on = any(_overlap(pattern, known) for known in _KNOWN_EVENT_PATTERNS)
            if not any(fnmatchcase(name, pattern) for name in DOCUMENTED_EVENT_TYPES):
                self.warn(on_node, _undocumented(pattern, acted_on))
            elif not acted_on:
                self.warn(on_node, f"'{pattern}' matches no event type roomwarden acts on; events of "
                                   "unknown types are recorded but never acted on")
        for name, key_node in self._fields_used:
            spec = fields.FIELDS.get(name)
            if spec is None or spec.carried_by == ("*",):
                continue
            if not any(_overlap(p, c) for p in on for c in spec.carried_by):
                self.warn(key_node, f"'{name}' is never set on {', '.join(on)} events "
                                    f"(only on {', '.join(spec.carried_by)}), so this test is never true")

    def on(self, node: Node) -> tuple[str, ...]:
        items = node.value if isinstance(node, SequenceNode) else [node]
        if not items:
            self.error(node, "'on' needs at least one event type")
        patterns = []
        for item in items:
            pattern = self.string(item, "an event type in 'on'")
            if pattern is None:
                continue
            if not EVENT_PATTERN.match(pattern):
                self.error(item, f"'{pattern}' is not an event type or glob (lowercase, digits, '-', '*', '?')")
                continue
            patterns.append(pattern)
        return tuple(patterns)

    # -- conditions ------------------------------------------------------------

    def condition(self, node: Node, what: str) -> Condition | None:
        entries = self.mapping(node, what)
        if entries is None:
            return None
        if not entries:
            self.error(node, f"{what} is empty; remove it, or give at least one condition")
            return None
        parts: list[Condition] = []
        for key_node, key, value in entries:
            if key in ("all", "any"):
                part = self.combination(key, value)
            elif key == "not":
                inner = self.condition(value, "'not'")
                part = Not(inner) if inner is not None else None
            elif fields.is_field(key):
                self._fields_used.append((key, key_node))
                part = self.comparisons(key, value)
            else:
                hint = _hint(key, list(fields.FIELDS) + list(COMBINATORS))
                listing = "" if hint else f" (fields: {', '.join(fields.FIELDS)}, data.<path>)"
                self.error(key_node, f"unknown field '{key}'{hint}{listing}")
                part = None
            if part is not None:
                parts.append(part)
        if len(parts) != len(entries):
            return None
        return parts[0] if len(parts) == 1 else All(tuple(parts))

    def combination(self, key: str, node: Node) -> Condition | None:
        if not isinstance(node, SequenceNode) or not node.value:
            self.error(node, f"'{key}' needs a non-empty list of conditions")
            return None
        children = [self.condition(item, f"an item of '{key}'") for item in node.value]
        if any(child is None for child in children):
            return None
        return (All if key == "all" else Any_)(tuple(children))

    def comparisons(self, field: str, node: Node) -> Condition | None:
        kind = fields.field_kind(field)
        if isinstance(node, ScalarNode):
            return self.compare(field, "eq", node, kind)
        if isinstance(node, SequenceNode):
            self.error(node, f"'{field}' is given a list; to test membership write {{in: [...]}}")
            return None
        entries = self.mapping(node, f"the conditions on '{field}'")
        if entries is None:
            return None
        if not entries:
            self.error(node, f"no operator given for '{field}'")
            return None
        parts = []
        for key_node, op, operand_node in entries:
            if op not in OPERATORS:
                hint = _hint(op, OPERATORS)
                listing = "" if hint else f" (operators: {', '.join(OPERATORS)})"
                self.error(key_node, f"unknown operator '{op}'{hint}{listing}")
                continue
            parts.append(self.compare(field, op, operand_node, kind))
        if len(parts) != len(entries) or None in parts:
            return None
        return parts[0] if len(parts) == 1 else All(tuple(parts))

    def compare(self, field: str, op: str, node: Node, kind: str | None) -> Compare | None:
        operand, problem = self.value(node), None
        if op not in ("matches", "exists"):  # these take a pattern or a flag, not a value
            operand, problem = coerce(operand, kind)
        if problem:
            self.error(node, f"'{field}: {{{op}: ...}}' {problem}")
            return None
        problem = OPERATORS[op].check(operand, kind)
        if problem:
            self.error(node, f"'{field}: {{{op}: ...}}' {problem}")
            return None
        frozen = tuple(operand) if isinstance(operand, list) else operand
        return Compare(field, op, frozen, OPERATORS[op].compile(frozen))


def parse_rules(text: str, source: str = "<rules>") -> tuple[RuleSet | None, list[Problem]]:
    """Read rules from text: the rule set and no problems, or None and every error in file
    order. Warnings do not stop a rule set loading: they are in `rule_set.warnings`."""
    try:
        loader = _Loader(text)  # refuses characters YAML does not allow (NUL, most controls)
    except yaml.reader.ReaderError as exc:
        before = text[:exc.position]
        line, col = before.count("\n") + 1, exc.position - (before.rfind("\n") + 1) + 1
        return None, [Problem(source, line, col, f"not valid YAML: character #x{exc.character:04x} "
                                                 "is not allowed in a YAML file")]
    try:
        root = loader.get_single_node()
    except RecursionError:
        return None, [Problem(source, 1, 1, "the file is nested too deeply")]
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        return None, [Problem(source, line, col, f"not valid YAML: {exc.problem or exc.context}")]
    except yaml.YAMLError as exc:
        return None, [Problem(source, 1, 1, f"not valid YAML: {exc}")]
    finally:
        loader.dispose()
    reader = _Reader(loader, source)
    if root is not None:
        reader.tags(root)
        if reader.problems:
            return None, sorted(reader.problems, key=lambda p: (p.line, p.col))
    try:
        rules = reader.rule_set(root)
    except RecursionError:
        return None, [Problem(source, 1, 1, "the file is nested too deeply")]
    except yaml.MarkedYAMLError as exc:  # an explicit tag the safe loader refuses, say
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        return None, [Problem(source, line, col, f"not valid here: {exc.problem or exc.context}")]
    if reader.problems:
        return None, sorted(reader.problems, key=lambda p: (p.line, p.col))
    sha = hashlib.sha256(text.encode("utf-8")).hexdigest()
    warnings = tuple(sorted(reader.warnings, key=lambda p: (p.line, p.col)))
    return RuleSet(rules=rules, source=source, sha256=sha, settings=reader.settings, text=text,
                   warnings=warnings), []


def read_yaml(text: str) -> Any:
    """Plain data from YAML text, read the way rules files are (YAML 1.2 scalars, safe tags only).

    For the other YAML files roomwarden reads (rule tests). Raises ValueError
    with the position of a syntax error.
    """
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{mark.line + 1}:{mark.column + 1}: " if mark else ""
        raise ValueError(f"{where}not valid YAML: {exc.problem or exc.context}") from None
    except (yaml.YAMLError, RecursionError) as exc:
        raise ValueError(f"not valid YAML: {exc}") from None


def item_lines(text: str, key: str) -> list[int]:
    """The line (from 1) where each item of the top-level list `key` starts, so that a report can
    point at one (a rule test that failed); [] when the text has no such list. Call it on text
    `read_yaml` has read: it does not report errors of its own."""
    try:
        root = yaml.compose(text, Loader=_Loader)
    except (yaml.YAMLError, RecursionError):
        return []
    if not isinstance(root, MappingNode):
        return []
    for key_node, value in root.value:
        if isinstance(key_node, ScalarNode) and key_node.value == key and isinstance(value, SequenceNode):
            return [item.start_mark.line + 1 for item in value.value]
    return []


MAX_RULES_BYTES = 1024 * 1024  # ample: 10,000 rules take about 1 MiB


def _unread(path, why: str) -> Problem:
    return Problem(str(path), 1, 1, f"cannot read the rules file: {why}")


def read_rules_file(path: str | Path) -> bytes:
    """The rules file's bytes, or RulesError. Only a regular file of at most MAX_RULES_BYTES is
    read, with a bounded read, and opening never blocks: a FIFO, a device (`-> /dev/zero`) or a
    directory is refused before anything is read, so it cannot wedge or exhaust a process."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO opens at once, with no writer
    except OSError as exc:
        raise RulesError([_unread(path, exc.strerror)]) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            kind = ("a FIFO" if stat.S_ISFIFO(st.st_mode) else "a directory" if stat.S_ISDIR(st.st_mode)
                    else "a device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else "not a file")
            raise RulesError([_unread(path, f"it is {kind}, not a regular file; not read")])
        if st.st_size > MAX_RULES_BYTES:
            raise RulesError([_unread(path, f"it is {st.st_size:,} bytes; the limit is {MAX_RULES_BYTES:,} "
                                                "(1 MiB); not read")])
        chunks, left = [], MAX_RULES_BYTES + 1
        while left > 0 and (chunk := os.read(fd, min(left, 65536))):
            chunks.append(chunk)
            left -= len(chunk)
        if left <= 0:  # it grew past the limit while being read
            raise RulesError([_unread(path, f"it grew past {MAX_RULES_BYTES:,} bytes (1 MiB) while read; not read")])
        return b"".join(chunks)
    except OSError as exc:
        raise RulesError([_unread(path, exc.strerror)]) from None
    finally:
        os.close(fd)


def load_rules(path: str | Path) -> RuleSet:
    """Load a rules file, or raise `RulesError` with every problem found."""
    path = Path(path)
    data = read_rules_file(path)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise RulesError([Problem(str(path), 1, 1, "the rules file is not UTF-8")]) from None
    rule_set, problems = parse_rules(text, str(path))
    if problems:
        raise RulesError(problems)
    return rule_set
