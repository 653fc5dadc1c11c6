"""The pre-commit hooks (.pre-commit-hooks.yaml), run as a rules repository would run them: a
scratch git repository holding rules and rule tests, and the real `pre-commit try-repo` against
this repository, which installs roomwarden from it (pyproject.toml) into a hook environment of its
own. That install comes from the package index, so the environment is made once per session."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import ROOT

PRE_COMMIT = [sys.executable, "-m", "pre_commit"]


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="session")
def hook_home(tmp_path_factory) -> Path:
    """pre-commit's cache (its hook environments), shared by this session's runs only."""
    return tmp_path_factory.mktemp("pre-commit-home")


@pytest.fixture
def rules_repo(tmp_path) -> Path:
    """A repository of rules, as an operator keeps one: the shipped rules and their tests."""
    repo = tmp_path / "my-rules"
    repo.mkdir()
    git(repo, "init", "-q")
    git(repo, "config", "user.email", "ops@example.com")
    git(repo, "config", "user.name", "ops")
    shutil.copy(ROOT / "rules.yaml", repo / "rules.yaml")
    shutil.copy(ROOT / "rules.test.yaml", repo / "rules.test.yaml")
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "rules")
    return repo


def try_repo(repo: Path, hook: str, home: Path) -> subprocess.CompletedProcess:
    """`pre-commit try-repo` with this repository's hooks (its working tree, uncommitted changes
    and all), on every file of `repo`."""
    env = {**os.environ, "PRE_COMMIT_HOME": str(home), "PRE_COMMIT_COLOR": "never"}
    env.pop("RULES_FILE", None)
    return subprocess.run([*PRE_COMMIT, "try-repo", str(ROOT), hook, "--all-files", "--verbose"], cwd=repo,
                          env=env, capture_output=True, text=True, timeout=900)


def test_the_hooks_file_names_both_hooks_and_what_they_run():
    from service.rules.loader import read_yaml

    hooks = {hook["id"]: hook for hook in read_yaml((ROOT / ".pre-commit-hooks.yaml").read_text())}
    assert list(hooks) == ["roomwarden-check", "roomwarden-test"]
    assert hooks["roomwarden-check"]["entry"].split()[:2] == ["roomwarden", "check"]
    assert hooks["roomwarden-test"]["entry"].split()[:2] == ["roomwarden", "test"]
    assert all(hook["language"] == "python" for hook in hooks.values())


def test_the_check_hook_passes_good_rules_and_fails_a_mistake_at_its_line(rules_repo, hook_home):
    good = try_repo(rules_repo, "roomwarden-check", hook_home)
    assert good.returncode == 0, good.stdout + good.stderr
    assert "roomwarden check" in good.stdout and "Passed" in good.stdout

    text = (rules_repo / "rules.yaml").read_text()
    assert "room.participants: 0" in text
    (rules_repo / "rules.yaml").write_text(text.replace("room.participants: 0", "room.participants: {gtee: 0}", 1))
    line = next(n for n, row in enumerate((rules_repo / "rules.yaml").read_text().splitlines(), 1) if "gtee" in row)
    git(rules_repo, "add", "rules.yaml")
    bad = try_repo(rules_repo, "roomwarden-check", hook_home)
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "Failed" in bad.stdout
    assert f"rules.yaml:{line}:" in bad.stdout and "unknown operator 'gtee'; did you mean 'gte'?" in bad.stdout
    assert not (rules_repo / "instance").exists()  # no metrics files left in the user's repository


def test_the_test_hook_runs_the_rule_tests(rules_repo, hook_home):
    good = try_repo(rules_repo, "roomwarden-test", hook_home)
    assert good.returncode == 0, good.stdout + good.stderr
    assert "roomwarden test" in good.stdout and "Passed" in good.stdout

    tests = (rules_repo / "rules.test.yaml").read_text()
    assert "at: 5m40s" in tests
    (rules_repo / "rules.test.yaml").write_text(tests.replace("at: 5m40s", "at: 5m41s", 1))
    git(rules_repo, "add", "rules.test.yaml")
    bad = try_repo(rules_repo, "roomwarden-test", hook_home)
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "Failed" in bad.stdout and "FAIL  rules.test.yaml: a room left empty for five minutes" in bad.stdout


def test_a_change_to_the_rules_alone_runs_the_rule_tests(rules_repo, hook_home):
    """A rules change can break its tests: the test hook runs on it, though no test file changed."""
    text = (rules_repo / "rules.yaml").read_text()
    assert "for: 5m" in text
    (rules_repo / "rules.yaml").write_text(text.replace("for: 5m", "for: 6m", 1))
    git(rules_repo, "add", "rules.yaml")
    env = {**os.environ, "PRE_COMMIT_HOME": str(hook_home), "PRE_COMMIT_COLOR": "never"}
    done = subprocess.run([*PRE_COMMIT, "try-repo", str(ROOT), "roomwarden-test", "--files", "rules.yaml",
                           "--verbose"], cwd=rules_repo, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "FAIL  rules.test.yaml: a room left empty for five minutes" in done.stdout
