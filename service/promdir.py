"""Where prometheus_client keeps the metrics of several processes (multiprocess mode).

gunicorn's workers and the worker process each count their own metrics; /metrics,
served by any gunicorn worker, adds them up from files in one directory. That
directory must be known before prometheus_client is first imported, so the
process entry points (gunicorn.conf.py and `python -m service`) call
`ensure()` first thing. Default: instance/metrics, beside the SQLite file.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

ENV = "PROMETHEUS_MULTIPROC_DIR"
DEFAULT = "instance/metrics"
_PID = re.compile(r"_(\d+)\.db$")


def ensure() -> Path:
    path = Path(os.environ.setdefault(ENV, DEFAULT))
    path.mkdir(parents=True, exist_ok=True)
    return path


def remove_dead(path: Path) -> int:
    """Delete the files of processes that are gone (at start-up, before any worker forks)."""
    removed = 0
    for file in path.glob("*.db"):
        match = _PID.search(file.name)
        if match and not _alive(int(match.group(1))):
            file.unlink(missing_ok=True)
            removed += 1
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
