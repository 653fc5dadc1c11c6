"""The docs are tested: every setting, field, operator, key and command that exists is documented,
and everything documented exists."""

from __future__ import annotations

import ast
import re

from service.cli import parser
from service.rules import loader
from service.rules.fields import FIELDS
from service.rules.loader import parse_rules
from service.rules.model import ACTIONS
from service.rules.operators import OPERATORS

from .conftest import ROOT

README = (ROOT / "README.md").read_text()
RULES_DOC = (ROOT / "docs" / "rules.md").read_text()
ENV_EXAMPLE = (ROOT / ".env.example").read_text()


def table_column(markdown: str, header: str) -> list[str]:
    """The backticked first cells of the markdown tables whose header row starts with `header`."""
    rows, inside = [], False
    for line in markdown.splitlines():
        if line.startswith(f"| {header} |"):
            inside = True
            continue
        if inside:
            if not line.startswith("|"):
                inside = False
                continue
            cell = line.split("|")[1].strip()
            if cell.startswith("`"):
                rows.append(cell.strip("`").split("`")[0].split(" ")[0])
    return rows


def env_vars_read_by_the_code() -> set[str]:
    names = set()
    for path in (ROOT / "service" / "config.py", ROOT / "gunicorn.conf.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and node.args:
                first = [a for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
                func = getattr(node.func, "attr", getattr(node.func, "id", ""))
                if func in ("get", "_flag", "_number") and first and re.fullmatch(r"[A-Z_]+", first[0].value):
                    names.add(first[0].value)
    return names


def test_every_setting_is_in_the_readme_table_and_env_example():
    code = env_vars_read_by_the_code()
    documented = set(table_column(README, "variable"))
    assert code == documented
    for name in code:
        assert re.search(rf"^#? ?{name}=", ENV_EXAMPLE, re.M), f"{name} missing from .env.example"


def test_every_operator_is_documented_and_exists():
    assert table_column(RULES_DOC, "operator") == list(OPERATORS)
    assert "`eq ne in not_in gt gte lt lte matches exists`" in README


def test_every_field_is_documented_and_exists():
    assert table_column(RULES_DOC, "field") == list(FIELDS) + ["data.<path>"]


def test_every_rule_key_and_top_level_key_is_documented():
    assert table_column(RULES_DOC, "key") == list(loader.TOP_KEYS) + list(loader.RULE_KEYS)
    for combinator in loader.COMBINATORS:
        assert f"`{combinator}:" in RULES_DOC


def test_every_action_is_documented():
    assert table_column(RULES_DOC, "action") == list(ACTIONS)


def test_every_command_is_documented_and_exists():
    commands = list(parser()._subparsers._group_actions[0].choices)
    assert table_column(README, "command") == commands


def test_yaml_examples_in_the_docs_load():
    blocks = re.findall(r"```yaml\n(.*?)```", README + RULES_DOC, re.S)
    assert len(blocks) >= 2
    for block in blocks:
        rule_set, problems = parse_rules(block, "doc example")
        assert problems == [], block


def test_the_two_commands_exist_and_ci_runs_the_test_one():
    assert "./bin/serve" in README and "./bin/test" in README
    for script in ("bin/serve", "bin/test", ".ci/run"):
        assert (ROOT / script).stat().st_mode & 0o111, f"{script} is not executable"
    ci = [line for line in (ROOT / ".ci" / "run").read_text().splitlines()
          if line and not line.startswith("#")]
    assert ci[-1] == "exec ./bin/test"


def test_the_readme_simulate_output_is_what_simulate_prints():
    import subprocess
    import sys

    shown = re.search(r"simulate examples/session-ended.json\n```\n```\n(.*?)```", README, re.S).group(1)
    actual = subprocess.run([sys.executable, "-m", "service", "simulate", "examples/session-ended.json",
                             "--rules", "rules.yaml"], cwd=ROOT, capture_output=True, text=True).stdout
    assert actual == shown
