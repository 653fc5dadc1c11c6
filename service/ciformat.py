"""Problems and test results in the forms CI systems read: GitHub Actions workflow commands
(`::error file=...,line=...,col=...::message`, shown on the pull request's line), JSON for other
tools, and JUnit XML, which most CI systems render as a test report.

Pure formatting: values in, text out. `check` and `test` (cli.py) choose with `--format` and
`--junit`.
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from typing import Iterable

FORMATS = ("text", "github", "json")


def _data(text: str) -> str:
    """A workflow command's message, escaped as the runner reads it back (% first)."""
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _property(text: str) -> str:
    """A workflow command's property value: a message's escapes, and ':' and ',' too."""
    return _data(text).replace(":", "%3A").replace(",", "%2C")


def github(severity: str, message: str, *, file: str, line: int | None = None, col: int | None = None,
           title: str | None = None) -> str:
    """One annotation: `::error` (or `::warning`, `::notice`) with its place and message."""
    if severity not in ("error", "warning", "notice"):
        raise ValueError(f"no such annotation: {severity!r}")
    props = [f"file={_property(file)}"]
    if line:
        props.append(f"line={line}")
    if col:
        props.append(f"col={col}")
    if title:
        props.append(f"title={_property(title)}")
    return f"::{severity} {','.join(props)}::{_data(message)}"


def problem_dict(problem) -> dict:
    """A loader Problem for JSON."""
    return {"severity": problem.severity, "file": problem.source, "line": problem.line, "col": problem.col,
            "message": problem.message}


def as_json(value) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False)


_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")  # characters XML 1.0 cannot hold


def _xml(text: str) -> str:
    return _NOT_XML.sub("\ufffd", text)


def _classname(name: str) -> str:
    """Jenkins splits a classname at its dots into package and class: none here."""
    return name.replace(".", "_")


def junit(suites: Iterable[dict]) -> bytes:
    """JUnit XML for rule tests. Each suite: {"name", "file", "error" (a file that did not load,
    or None), "cases": [{"name", "line", "failure" (None, or the text of what differed)}]}."""
    root = ET.Element("testsuites", name="roomwarden rule tests", time="0")
    totals = {"tests": 0, "failures": 0, "errors": 0}
    for suite in suites:
        cases = suite["cases"]
        failures = sum(1 for case in cases if case["failure"] is not None)
        errors = 1 if suite.get("error") else 0
        element = ET.SubElement(root, "testsuite", name=_xml(suite["name"]), file=_xml(suite["file"]),
                                tests=str(len(cases) + errors), failures=str(failures), errors=str(errors),
                                skipped="0", time="0")  # a virtual clock: no time worth reporting
        if errors:
            case = ET.SubElement(element, "testcase", name="(the test file)", classname=_classname(_xml(suite["name"])),
                                 file=_xml(suite["file"]), time="0")
            ET.SubElement(case, "error", message=_xml(suite["error"].splitlines()[0])).text = _xml(suite["error"])
        for item in cases:
            case = ET.SubElement(element, "testcase", name=_xml(item["name"]), classname=_classname(_xml(suite["name"])),
                                 file=_xml(suite["file"]), time="0")
            if item["line"]:
                case.set("line", str(item["line"]))
            if item["failure"] is not None:
                ET.SubElement(case, "failure", message="the actions differ from those expected").text = _xml(item["failure"])
        totals["tests"] += len(cases) + errors
        totals["failures"] += failures
        totals["errors"] += errors
    for key, value in totals.items():
        root.set(key, str(value))
    return ET.tostring(root, encoding="utf-8", xml_declaration=True)
