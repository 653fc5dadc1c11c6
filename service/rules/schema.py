"""The JSON Schema of a rules file, made from the tables the loader reads and docs/rules.md shows.

Editors use it to complete keys, fields and operators and to flag mistakes as they are typed
(the shipped rules.yaml names it on its first line, for yaml-language-server); `python -m service
schema` prints it and docs/rules.schema.json is a copy (a test fails when it is stale).

The loader stays the authority. The schema says what one value may be where; it cannot say what
takes two places or a lookup: duplicate keys and rule names, a timezone that exists, a regular
expression that compiles, a `for:` or `sweep_every` written as a string that is too short, and
the loader's warnings (a rule that can never apply, participant-left without a confirm check).
docs/rules.md lists which is which.
"""

from __future__ import annotations

import json
import re
from typing import Any

from ..schemas import DOCUMENTED_EVENT_TYPES
from . import loader
from .durations import DURATION_FORM
from .fields import DATA_PATH, FIELDS, WEEKDAYS
from .model import ACTIONS, CONFIRMS, SWEEP
from .operators import OPERATORS, TIME, WEEKDAY_NAMES

DRAFT = "http://json-schema.org/draft-07/schema#"  # the draft editors' YAML support reads best


def _pattern(regex: re.Pattern) -> str:
    """A loader regex as a JSON Schema pattern (ECMA 262 has `$`, not Python's `\\Z`)."""
    return regex.pattern.replace(r"\Z", "$")


def _any_case(words) -> str:
    """A pattern for any of `words` in any letter case (ECMA 262 patterns have no flags)."""
    alternatives = ("".join(f"[{c}{c.upper()}]" if c.isalpha() else re.escape(c) for c in word)
                    for word in sorted(words))
    return "^(" + "|".join(alternatives) + ")$"


def _value(kind: str | None) -> dict:
    """One operand for a field of `kind` (None: a raw `data.` path, any JSON scalar)."""
    if kind == "string":
        return {"type": "string"}
    if kind == "number":
        return {"type": "number"}
    if kind == "duration":  # an operand: any number compares (the loader takes -1 as well as 300)
        return {"anyOf": [{"type": "number"}, {"type": "string", "pattern": _pattern(DURATION_FORM)}]}
    if kind == "time":
        return {"type": "string", "pattern": _pattern(TIME), "description": "HH:MM, 24-hour"}
    if kind == "weekday":
        return {"type": "string", "pattern": _any_case(WEEKDAY_NAMES), "description": ", ".join(WEEKDAYS)}
    return {"type": ["string", "number", "boolean", "null"]}


def _operand(operand: str, kind: str | None) -> dict | bool:
    """What an operator's operand may be on a field of `kind`; False where the loader refuses the
    operator on that kind (a regex on a number, an order on a string)."""
    if operand == "value":
        return _value(kind)
    if operand == "values":
        return {"type": "array", "minItems": 1, "items": _value(kind)}
    if operand == "ordered":
        if kind in ("string", "weekday"):
            return False
        return _value(kind) if kind in ("time", "duration") else {"type": "number"}
    if operand == "pattern":
        return False if kind in ("number", "duration") else {"type": "string", "description": "a regular expression"}
    if operand == "flag":
        return {"type": "boolean"}
    raise ValueError(f"unknown operand kind {operand!r}")


def _test(kind: str | None) -> dict:
    """A test of a field of `kind`: a value (`field: value`, equality) or a mapping of operators."""
    operators = {}
    for name, op in OPERATORS.items():
        allowed = _operand(op.operand, kind)
        if allowed is not False:  # left out: an editor neither offers it nor lets it by
            operators[name] = {"description": op.doc, **allowed}
    return {
        "if": {"type": "object"},
        "then": {"type": "object", "minProperties": 1, "additionalProperties": False, "properties": operators},
        "else": _value(kind),
    }


def _field(kind: str | None, description: str) -> dict:
    return {"description": description, "allOf": [{"$ref": f"#/definitions/test_{kind or 'data'}"}]}


def _listed(item: dict) -> dict:
    """One item, or a non-empty list of them (as `on:` is written)."""
    return {"anyOf": [item, {"type": "array", "minItems": 1, "items": item}]}


def rules_schema() -> dict[str, Any]:
    combinators = {
        "all": {"description": "every condition listed holds",
                "type": "array", "minItems": 1, "items": {"$ref": "#/definitions/condition"}},
        "any": {"description": "at least one condition listed holds",
                "type": "array", "minItems": 1, "items": {"$ref": "#/definitions/condition"}},
        "not": {"description": "the condition does not hold (unknown stays unknown)",
                "$ref": "#/definitions/condition"},
    }
    assert list(combinators) == list(loader.COMBINATORS)
    field_tests = {name: _field(field.kind, f"{field.doc} ({field.kind})") for name, field in FIELDS.items()}
    kinds = sorted({field.kind for field in FIELDS.values()})
    event = {"anyOf": [{"enum": [*DOCUMENTED_EVENT_TYPES, SWEEP]},
                       {"type": "string", "pattern": _pattern(loader.EVENT_PATTERN)}]}
    settings = {
        "timezone": {"type": "string", "minLength": 1},
        "dry_run": {"type": "boolean"},
        "max_actions_per_minute": {"type": "integer", "minimum": 1},
        "protect": {"anyOf": [{"type": "string", "pattern": _pattern(loader.ROOM_PATTERN)},
                              {"type": "array", "items": {"type": "string",
                                                          "pattern": _pattern(loader.ROOM_PATTERN)}}]},
        "sweep_every": {"anyOf": [{"type": "number", "minimum": loader.MIN_SWEEP_EVERY},
                                  {"type": "string", "pattern": _pattern(DURATION_FORM)}]},
        "max_checks_per_minute": {"type": "integer", "minimum": 1},
    }
    assert list(settings) == list(loader.SETTINGS_KEYS)
    rule = {
        "name": {"type": "string", "pattern": _pattern(loader.NAME_PATTERN)},
        "description": {"type": "string", "minLength": 1},
        "on": _listed(event),
        "when": {"$ref": "#/definitions/condition"},
        "for": {"$ref": "#/definitions/positive_duration"},
        "confirm": {"enum": list(CONFIRMS)},
        "dry_run": {"type": "boolean"},
        "action": {"enum": list(ACTIONS)},
    }
    assert list(rule) == list(loader.RULE_KEYS)
    for key, doc in loader.RULE_KEYS.items():
        rule[key] = {"description": doc, **rule[key]}
    rule["confirm"]["description"] += ": " + "; ".join(f"{name}: {doc}" for name, doc in CONFIRMS.items())
    rule["action"]["description"] += ": " + "; ".join(f"{name}: {doc}" for name, doc in ACTIONS.items())
    return {
        "$schema": DRAFT,
        "title": "roomwarden rules file",
        "description": "Rules that deactivate VideoSDK rooms; see docs/rules.md. `python -m service check` "
                       "is the authority: it also checks what this schema cannot say.",
        "type": "object",
        "required": ["version", "rules"],
        "additionalProperties": False,
        "properties": {
            "version": {"description": loader.TOP_KEYS["version"], "const": 1},
            "settings": {
                "description": loader.TOP_KEYS["settings"],
                "type": "object",
                "additionalProperties": False,
                "properties": {key: {"description": doc, **settings[key]}
                               for key, doc in loader.SETTINGS_KEYS.items()},
            },
            "rules": {"description": loader.TOP_KEYS["rules"], "type": ["array", "null"],
                      "items": {"$ref": "#/definitions/rule"}},
        },
        "definitions": {
            "rule": {"type": "object", "required": ["name", "on", "action"], "additionalProperties": False,
                     "properties": rule},
            "condition": {
                "type": "object",
                "minProperties": 1,
                "additionalProperties": False,
                "properties": {**combinators, **field_tests},
                "patternProperties": {
                    _pattern(DATA_PATH): _field(None, "a raw field of the body's data, by dotted path (any JSON value)"),
                },
            },
            **{f"test_{kind}": _test(kind) for kind in kinds},
            "test_data": _test(None),
            "positive_duration": {"description": "longer than zero: seconds, or 90s, 5m, 2h, 1d, 1h30m",
                                  "anyOf": [{"type": "number", "exclusiveMinimum": 0},
                                            {"type": "string", "pattern": _pattern(DURATION_FORM)}]},
        },
    }


def schema_text() -> str:
    """The schema as docs/rules.schema.json holds it."""
    return json.dumps(rules_schema(), indent=2, ensure_ascii=False) + "\n"
