"""The pure core imports nothing that does I/O: the rule engine, the planner, room state (and the presence folded from it), the retry
policy, the breaker and the API answer readers decide from their arguments alone, so they are tested without a server,
a database or a network, and cannot reach one by accident."""

from __future__ import annotations

import subprocess
import sys

import pytest

PURE = ["service.rules.engine", "service.rules.loader", "service.planner", "service.rooms", "service.retrypolicy",
        "service.breaker", "service.answers", "service.outcomes", "service.presence"]
IO = {"flask", "werkzeug", "requests", "urllib3", "sqlalchemy", "psycopg", "sqlite3", "jwt",
      "prometheus_client", "gunicorn"}


@pytest.mark.parametrize("module", PURE)
def test_a_pure_module_imports_no_io_library(module):
    # A fresh interpreter: this test process has imported everything already.
    code = (f"import sys, {module}\n"
            f"print(' '.join(sorted({{n.split('.')[0] for n in sys.modules}} & set({sorted(IO)!r}))))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [], f"{module} pulls in {done.stdout.strip()}"


# -- the store: each process is handed the repositories it uses ------------------------------------

WORKER_SIDE = {"outbox", "timers", "sweeps", "workers"}  # claims, timers, sweep turns, breaker reports


def test_the_web_processs_store_has_no_worker_side_repository(app):
    """The web process (the webhook, /readyz, /metrics, the admin API and the dashboard) holds a
    WebStore: it appends to the inbox and reads, and cannot claim an action, fire a timer or take
    a sweep turn."""
    store = app.extensions["roomwarden"].store
    assert not any(hasattr(store, name) for name in WORKER_SIDE), type(store).__name__
    for name in ("inbox", "actions", "history", "pages", "rules_kept", "db"):
        assert hasattr(store, name)


def test_no_web_module_reaches_for_a_worker_side_repository():
    """The modules that serve HTTP name no worker-side repository, so a change that would make the
    dashboard claim an action fails here, before it fails at run time."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent / "service"
    web = [root / "web.py", root / "admin.py", root / "lane.py", root / "accept.py", root / "metrics.py",
           *sorted((root / "dashboard").glob("*.py"))]
    found = []
    for path in web:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in WORKER_SIDE:
                found.append(f"{path.name}:{node.lineno} .{node.attr}")
    assert found == []
