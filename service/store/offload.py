"""Blocking database work, kept off gevent's event loop when the web process runs on it.

gunicorn's gevent worker (gunicorn.conf.py) serves many requests on one OS thread; a call
into sqlite3 there (a commit waiting for its fsync) would stop every request of the process
for as long. `blocking(fn, ...)` runs such a call on a real thread of gevent's pool and parks
only the calling greenlet; without gevent (the worker process, tests, the CLI) it just calls.
Code that runs there must not touch gevent's patched primitives (a lock another greenlet
holds, `time.sleep`): `real_sleep` is the unpatched sleep.
"""

from __future__ import annotations

import sys
import time
from typing import Callable, TypeVar

T = TypeVar("T")


def on_event_loop() -> bool:
    """Whether gevent has patched this process (gunicorn's gevent worker does, before the app loads)."""
    monkey = sys.modules.get("gevent.monkey")
    return monkey is not None and monkey.is_module_patched("threading")


def blocking(fn: Callable[..., T], *args) -> T:
    if not on_event_loop():
        return fn(*args)
    import gevent

    return gevent.get_hub().threadpool.apply(fn, args)


def real_sleep(seconds: float) -> None:
    if on_event_loop():
        from gevent.monkey import get_original

        get_original("time", "sleep")(seconds)
    else:
        time.sleep(seconds)


def after_gevent_patch() -> None:
    """Make psycopg wait cooperatively, in a process gevent patched after psycopg was imported.

    psycopg picks how it waits for the server once, when first imported: a C function that blocks
    the whole process, unless gevent has patched `select` by then. gunicorn's master imports it
    (start-up checks and migrations) before a gevent worker patches itself, so without this every
    query of a worker would stop all its requests. Called from gunicorn.conf.py's post_worker_init.
    """
    waiting = sys.modules.get("psycopg.waiting")
    if waiting is None or not on_event_loop():
        return  # not imported yet (it will pick right by itself), or no gevent
    import selectors

    waiting.wait = waiting.wait_poll  # calls select.poll, which gevent has patched
    waiting.DefaultSelector = selectors.DefaultSelector  # for connecting: gevent's selector
