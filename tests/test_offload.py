"""store/offload.py: blocking work and psycopg under gevent, in a fresh interpreter each (gevent
patches a whole process)."""

from __future__ import annotations

import subprocess
import sys

import pytest


def run(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_psycopg_imported_before_the_patch_is_made_to_wait_cooperatively():
    # As in gunicorn: the master imports psycopg, then the gevent worker patches itself.
    out = run("import psycopg.waiting as w\n"
              "before = w.wait.__name__\n"
              "from gevent import monkey; monkey.patch_all()\n"
              "from service.store.offload import after_gevent_patch\n"
              "after_gevent_patch()\n"
              "import selectors\n"
              "print(before, w.wait.__name__, w.DefaultSelector is selectors.DefaultSelector)")
    assert out == "wait_c wait_poll True"


def test_without_gevent_nothing_changes():
    out = run("import psycopg.waiting as w\n"
              "from service.store.offload import after_gevent_patch, on_event_loop\n"
              "after_gevent_patch()\n"
              "print(on_event_loop(), w.wait.__name__)")
    assert out == "False wait_c"


def test_blocking_work_runs_on_a_real_thread_and_other_greenlets_go_on():
    # A call that holds its thread for 0.3 s: on the event loop, another greenlet must run
    # meanwhile (its tick lands before the call returns). An ordering, not a timing.
    out = run("from gevent import monkey; monkey.patch_all()\n"
              "import gevent\n"
              "from gevent.monkey import get_original\n"
              "from service.store.offload import blocking, on_event_loop\n"
              "events = []\n"
              "def slow():\n"
              "    get_original('time', 'sleep')(0.3); events.append('slow done')\n"
              "def tick():\n"
              "    gevent.sleep(0.01); events.append('tick')\n"
              "g = gevent.spawn(tick)\n"
              "blocking(slow)\n"
              "g.join()\n"
              "print(on_event_loop(), events)")
    assert out == "True ['tick', 'slow done']"


@pytest.mark.parametrize("patched", [False, True])
def test_blocking_returns_the_result(patched):
    patch = "from gevent import monkey; monkey.patch_all()\n" if patched else ""
    assert run(patch + "from service.store.offload import blocking\nprint(blocking(lambda a, b: a + b, 2, 3))") == "5"
