"""`check` and `test` in the forms CI systems read (issue 18): GitHub Actions annotations, JSON,
and a JUnit XML report. Real subprocesses, real files; the annotations are checked against the
workflow-command syntax to the letter."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET

import pytest

from service import ciformat

from .conftest import RULES_HEAD, SESSION_RULE
from .test_cli import BAD, run

# `::error file=F,line=L,col=C::message` (or ::warning), F and the message escaped as the runner
# reads them back: no raw ',' or ':' in a property, no raw newline anywhere.
ANNOTATION = re.compile(r"::(error|warning) file=[^,:\r\n]+,line=[1-9][0-9]*,col=[1-9][0-9]*::[^\r\n]+")
ANNOTATION_NO_COL = re.compile(
    r"::(error|warning) file=[^,:\r\n]+(,line=[1-9][0-9]*)?(,title=[^,:\r\n]+)?::[^\r\n]+")

WARNED = ("version: 1\n"
          "rules:\n"
          "  - name: leave\n"
          "    on: participant-left\n"
          "    action: deactivate\n"
          "  - name: typo\n"
          "    on: sesion-ended\n"
          "    action: deactivate\n")


def unescape(text: str) -> str:
    return text.replace("%0A", "\n").replace("%0D", "\r").replace("%3A", ":").replace("%2C", ",").replace("%25", "%")


def text_lines(path) -> list[str]:
    return run("check", str(path)).stdout.decode().splitlines()


# -- check --------------------------------------------------------------------------------------


def test_check_format_github_prints_exactly_one_annotation_per_error(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(BAD)
    result = run("check", "--format", "github", str(path))
    assert result.returncode == 1
    lines = result.stdout.decode().splitlines()
    assert lines == [
        f"::error file={path},line=6,col=7::unknown field 'room.idd'; did you mean 'room.id'?",
        f"::error file={path},line=7,col=26::unknown operator 'gte_'; did you mean 'gte'?",
    ]
    assert all(ANNOTATION.fullmatch(line) for line in lines)
    # the same problems as the text format, place for place
    text = text_lines(path)
    assert [re.sub(r"^::error file=(.+?),line=(\d+),col=(\d+)::", r"\1:\2:\3: ", line) for line in lines] == text
    assert result.stderr.decode().splitlines() == ["2 error(s)"]


def test_check_format_github_prints_warnings_as_warnings_and_fails_only_when_strict(tmp_path):
    path = tmp_path / "warned.yaml"
    path.write_text(WARNED)
    lenient = run("check", "--format", "github", str(path))
    strict = run("check", "--format", "github", "--strict", str(path))
    assert (lenient.returncode, strict.returncode) == (0, 1)
    assert lenient.stdout == strict.stdout
    lines = lenient.stdout.decode().splitlines()
    assert len(lines) == 2 and all(ANNOTATION.fullmatch(line) for line in lines), lines
    assert [line.split(" ", 1)[0] for line in lines] == ["::warning", "::warning"]
    assert "line=5,col=13" in lines[0] and "participant-left" in lines[0]
    assert "line=7,col=9" in lines[1] and "sesion-ended" in lines[1]
    assert "ok, 2 rule(s)" in lenient.stderr.decode()  # stdout is for the runner only


def test_check_format_github_on_good_rules_prints_nothing_on_stdout():
    result = run("check", "--format", "github", "rules.yaml")
    assert (result.returncode, result.stdout) == (0, b"")
    assert result.stderr.decode().startswith("rules.yaml: ok, ")


def test_check_format_github_on_a_missing_file(tmp_path):
    result = run("check", "--format", "github", str(tmp_path / "nope.yaml"))
    assert result.returncode == 1
    [line] = result.stdout.decode().splitlines()
    assert ANNOTATION.fullmatch(line) and line.startswith(f"::error file={tmp_path}/nope.yaml,line=1,col=1::")


def test_check_format_json(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(BAD)
    result = run("check", "--format", "json", str(path))
    assert result.returncode == 1
    whole = json.loads(result.stdout)
    assert whole["ok"] is False and len(whole["files"]) == 1
    [report] = whole["files"]
    assert (report["ok"], report["errors"], report["warnings"], report["rules"]) == (False, 2, 0, None)
    assert [(p["severity"], p["line"], p["col"]) for p in report["problems"]] == [("error", 6, 7), ("error", 7, 26)]
    assert [f"{p['file']}:{p['line']}:{p['col']}: {p['message']}" for p in report["problems"]] == text_lines(path)

    both = json.loads(run("check", "--format", "json", "rules.yaml", "bench/rules.yaml").stdout)
    assert both["ok"] is True and [f["file"] for f in both["files"]] == ["rules.yaml", "bench/rules.yaml"]
    good = both["files"][0]
    assert good["ok"] is True and good["rules"] >= 1 and len(good["sha256"]) == 64 and good["errors"] == 0


def test_check_takes_several_files_and_fails_if_any_fails(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD)
    result = run("check", "rules.yaml", str(bad))
    assert result.returncode == 1
    out = result.stdout.decode().splitlines()
    assert out[0].startswith("rules.yaml: ok, ") and out[1:] == text_lines(bad)
    assert result.stderr.decode().splitlines() == [f"{bad}: 2 error(s)"]


def test_annotations_escape_what_the_runner_would_misread():
    line = ciformat.github("error", "100% sure\nsecond line\r", file="odd,name:1.yaml", line=3, col=4,
                           title="a: b, c")
    assert line == ("::error file=odd%2Cname%3A1.yaml,line=3,col=4,title=a%3A b%2C c::"
                    "100%25 sure%0Asecond line%0D")
    assert unescape(line.split("::", 2)[2]) == "100% sure\nsecond line\r"
    with pytest.raises(ValueError):
        ciformat.github("fatal", "x", file="f")


# -- test ---------------------------------------------------------------------------------------

FAILING_TESTS = """\
rules: rules.yaml
start: "2026-01-05T09:00:00Z"
tests:
  - name: passes
    events:
      - {at: 0s, event: session-ended, data: {meetingId: abcd-efgh-ijkl, sessionId: s1}}
    expect:
      - {at: 0s, action: deactivate, room: abcd-efgh-ijkl, rule: close-after-session}

  - name: expects the wrong time
    events:
      - {at: 0s, event: session-ended, data: {meetingId: abcd-efgh-ijkl, sessionId: s2}}
    expect:
      - {at: 1m, action: deactivate, room: abcd-efgh-ijkl, rule: close-after-session}
"""

RULES = RULES_HEAD + SESSION_RULE


@pytest.fixture
def test_files(tmp_path):
    (tmp_path / "rules.yaml").write_text(RULES)
    failing = tmp_path / "failing.test.yaml"
    failing.write_text(FAILING_TESTS)
    broken = tmp_path / "broken.test.yaml"
    broken.write_text("rules: missing.yaml\ntests: []\n")
    return failing, broken


def test_test_format_github_annotates_each_failed_test_at_its_line(test_files):
    failing, _ = test_files
    result = run("test", "--format", "github", str(failing))
    assert result.returncode == 1
    [line] = result.stdout.decode().splitlines()
    assert ANNOTATION_NO_COL.fullmatch(line), line
    assert line.startswith(f"::error file={failing},line=10,title=rule test%3A expects the wrong time::")
    assert unescape(line.split("::", 2)[2]).splitlines() == [
        "test failed: expects the wrong time",
        "-at 1m: deactivate room abcd-efgh-ijkl by close-after-session (scheduled)",
        "+at 0s: deactivate room abcd-efgh-ijkl by close-after-session (scheduled)",
    ]  # the diff the text format prints
    assert "1 passed, 1 failed" in result.stderr.decode()


def test_test_format_github_reports_a_file_that_does_not_load(test_files):
    _, broken = test_files
    result = run("test", "--format", "github", str(broken))
    assert result.returncode == 1
    [line] = result.stdout.decode().splitlines()
    assert ANNOTATION_NO_COL.fullmatch(line) and line.startswith(f"::error file={broken}::"), line


def test_test_format_json(test_files):
    failing, broken = test_files
    result = run("test", "--format", "json", str(failing), str(broken))
    assert result.returncode == 1
    report = json.loads(result.stdout)
    assert (report["passed"], report["failed"]) == (1, 2)
    first, second = report["files"]
    assert [(c["name"], c["line"], c["failure"] is None) for c in first["cases"]] == [
        ("passes", 4, True), ("expects the wrong time", 10, False)]
    assert first["cases"][1]["expected"] != first["cases"][1]["actual"]
    assert second["error"] and "do not load" in second["error"] and second["cases"] == []


def test_test_junit_report(test_files, tmp_path):
    failing, broken = test_files
    report = tmp_path / "junit.xml"
    result = run("test", "--junit", str(report), str(failing), str(broken))
    assert result.returncode == 1
    assert "FAIL  " in result.stdout.decode()  # the text report is still printed
    root = ET.fromstring(report.read_bytes())
    assert root.tag == "testsuites" and root.get("time") == "0"
    assert (root.get("tests"), root.get("failures"), root.get("errors")) == ("3", "1", "1")
    good, bad = root.findall("testsuite")
    assert (good.get("name"), good.get("tests"), good.get("failures"), good.get("errors")) == (str(failing), "2", "1", "0")
    cases = good.findall("testcase")
    assert [(c.get("name"), c.get("line"), c.find("failure") is not None) for c in cases] == [
        ("passes", "4", False), ("expects the wrong time", "10", True)]
    assert "close-after-session" in cases[1].find("failure").text
    assert all(c.get("time") == "0" and "." not in c.get("classname") for c in cases)  # Jenkins splits at dots
    assert bad.find("testcase/error") is not None and "do not load" in bad.find("testcase/error").text


def test_test_without_files_runs_every_test_file_below_here(test_files):
    failing, broken = test_files
    result = run_in(failing.parent, "test", "--format", "json")
    report = json.loads(result.stdout)
    assert sorted(f["file"] for f in report["files"]) == ["broken.test.yaml", "failing.test.yaml"]
    assert result.returncode == 1


def run_in(directory, *args):
    import os
    import subprocess
    import sys

    from .conftest import ROOT

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "service", *args], cwd=directory, env=env, capture_output=True,
                          timeout=60)


def test_junit_xml_holds_no_character_xml_cannot(tmp_path):
    xml = ciformat.junit([{"name": "a.test.yaml", "file": "a.test.yaml", "error": None,
                           "cases": [{"name": "bell\x07 and escape\x1b", "line": 0, "failure": "x\x00y"}]}])
    case = ET.fromstring(xml).find("testsuite/testcase")  # parses: nothing XML 1.0 refuses
    assert case.get("name") == "bell\ufffd and escape\ufffd" and case.get("line") is None
    assert case.find("failure").text == "x\ufffdy"


def test_test_junit_report_of_the_shipped_tests_all_pass(tmp_path):
    report = tmp_path / "junit.xml"
    result = run("test", "rules.test.yaml", "--junit", str(report))
    assert result.returncode == 0, result.stdout + result.stderr
    root = ET.fromstring(report.read_bytes())
    cases = root.findall("testsuite/testcase")
    assert len(cases) >= 5 and root.get("failures") == "0" and root.get("errors") == "0"
    assert all(int(case.get("line")) > 0 for case in cases)
