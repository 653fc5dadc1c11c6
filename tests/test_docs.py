"""The docs are tested: every setting, field, operator, key and command that exists is documented,
and everything documented exists."""

from __future__ import annotations

import ast
import re

from service.cli import parser
from service.rules import loader
from service.rules.fields import FIELDS
from service.rules.loader import parse_rules
from service import ruletest
from service.rules.model import ACTIONS, CONFIRMS
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
    from service import promdir

    return names | {promdir.ENV}


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
    summary = README[README.index("Fields: `event`"):README.index("Operators: `eq")]
    assert re.findall(r"`([^`]+)`", summary) == list(FIELDS) + ["data.<path>"]


def test_every_rule_key_and_top_level_key_is_documented():
    assert table_column(RULES_DOC, "key") == list(loader.TOP_KEYS) + list(loader.RULE_KEYS)
    for combinator in loader.COMBINATORS:
        assert f"`{combinator}:" in RULES_DOC


def test_every_setting_of_a_rules_file_is_documented():
    assert table_column(RULES_DOC, "setting") == list(loader.SETTINGS_KEYS)


def test_every_action_and_confirmation_is_documented():
    assert table_column(RULES_DOC, "action") == list(ACTIONS)
    assert table_column(RULES_DOC, "confirm") == list(CONFIRMS)


def subcommands() -> dict:
    return parser()._subparsers._group_actions[0].choices


def test_every_command_is_documented_and_exists():
    assert table_column(README, "command") == list(subcommands())


def test_every_option_of_every_command_is_documented():
    for name, sub in subcommands().items():
        row = next(line for line in README.splitlines() if line.startswith(f"| `{name} ") or
                   line.startswith(f"| `{name}`"))
        for action in sub._actions:
            for flag in action.option_strings:
                if flag.startswith("--") and flag not in ("--help", "--no-progress"):
                    assert flag in row, f"{name} {flag} is not in the README's command table"


def yaml_blocks() -> list[str]:
    return re.findall(r"```yaml\n(.*?)```", README + RULES_DOC, re.S)


def test_rules_examples_in_the_docs_load_without_warnings():
    blocks = [b for b in yaml_blocks() if b.startswith("version:")]
    assert len(blocks) >= 2
    for block in blocks:
        rule_set, problems = parse_rules(block, "doc example")
        assert problems == [] and rule_set.warnings == (), block


def test_the_rule_test_example_in_the_docs_passes_against_the_shipped_rules(tmp_path):
    [example] = [b for b in yaml_blocks() if b.startswith("rules:")]
    (tmp_path / "rules.yaml").write_text((ROOT / "rules.yaml").read_text())
    (tmp_path / "example.test.yaml").write_text(example)
    test_file = ruletest.load_tests(tmp_path / "example.test.yaml")
    results = ruletest.run_file(test_file)
    assert results and all(r.passed for r in results), [r.diff() for r in results]


def test_the_shipped_rules_pass_check_strict_and_their_own_tests():
    from service.rules.loader import load_rules

    assert load_rules(ROOT / "rules.yaml").warnings == ()
    test_file = ruletest.load_tests(ROOT / "rules.test.yaml")
    results = ruletest.run_file(test_file)
    assert len(results) >= 5 and all(r.passed for r in results), [r.diff() for r in results if not r.passed]
    assert ruletest.uncovered([(test_file, results)]) == {}
    assert any(r.case.expect == () for r in results), "a test that expects no action"
    assert any(r.case.expect for r in results), "a test that expects an action"


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

    shown = re.search(r"simulate examples/participant-left.json\n```\n```\n(.*?)```", README, re.S).group(1)
    actual = subprocess.run([sys.executable, "-m", "service", "simulate", "examples/participant-left.json",
                             "--rules", "rules.yaml"], cwd=ROOT, capture_output=True, text=True).stdout
    assert actual == shown


def test_every_test_docs_reliability_names_exists():
    doc = (ROOT / "docs" / "reliability.md").read_text()
    named = re.findall(r"`(tests/test_\w+\.py)(?:::(\w+))?", doc)
    assert len(named) >= 20
    for path, test in named:
        source = (ROOT / path).read_text()
        assert not test or f"def {test}(" in source, f"{path}::{test} does not exist"
    assert "docs/reliability.md" in README


def test_the_attacks_table_names_every_attack_the_tests_try_and_no_other():
    doc = (ROOT / "docs" / "reliability.md").read_text()
    table = doc.split("## Attacks tried", 1)[1].split("\n## ", 1)[0]
    listed = [row.split(" | ")[0].removeprefix("| ") for row in table.splitlines()
              if row.startswith("| ") and not row.startswith(("| attack |", "|---"))]
    tried = {name for path in (ROOT / "tests").glob("test_*.py")
             for name in re.findall(r'^@pytest\.mark\.attack\("([^"]+)"\)', path.read_text(), re.M)}
    assert len(listed) == len(set(listed)), "an attack is listed twice"
    assert set(listed) == tried, {"untested": set(listed) - tried, "not listed": tried - set(listed)}
    assert len(tried) >= 10
