"""The pure core imports nothing that does I/O: the rule engine, the planner, room state, the retry
policy, the breaker and the API answer readers decide from their arguments alone, so they are tested without a server,
a database or a network, and cannot reach one by accident."""

from __future__ import annotations

import subprocess
import sys

import pytest

PURE = ["service.rules.engine", "service.rules.loader", "service.planner", "service.rooms", "service.retrypolicy",
        "service.breaker", "service.answers", "service.outcomes"]
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
