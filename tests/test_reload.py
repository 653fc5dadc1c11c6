"""Hot reload: the rules file is watched, replaced or rewritten, reloaded on SIGHUP, and a broken
one never displaces the last good rules; in the library, and in real gunicorn and worker processes."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest
import requests

from service.errors import RulesError
from service.reload import RulesHolder, RulesWatcher, load_with_fallback
from service.rules.loader import MAX_RULES_BYTES, load_rules
from service.store import Store

from .conftest import event_body
from .procs import wait_until_up

RULES_A = "version: 1\nrules:\n  - name: a\n    on: session-ended\n    action: deactivate\n"
RULES_B = "version: 1\nrules:\n  - name: b\n    on: session-ended\n    action: deactivate\n"
BROKEN = "version: 1\nrules:\n  - name: c\n    on: session-ended\n    action: obliterate\n"


def replace_file(path: Path, text: str) -> None:
    """What editors do: write a new file beside it, then rename it over the old one."""
    tmp = path.with_name(path.name + ".swp")
    tmp.write_text(text)
    os.replace(tmp, path)


def rewrite_in_place(path: Path, text: str) -> None:
    """What `git pull` and `cat >` do: truncate and write the same inode."""
    with open(path, "r+") as handle:
        handle.truncate(0)
        handle.write(text)


def names(holder: RulesHolder) -> list[str]:
    return [r.name for r in holder.current.rules]


@pytest.fixture
def watched(tmp_path):
    path = tmp_path / "rules.yaml"
    path.write_text(RULES_A)
    holder = RulesHolder(load_rules(path))
    reloaded = []
    watcher = RulesWatcher(holder, path, interval=None, on_reload=reloaded.append)
    return path, holder, watcher, reloaded


@pytest.mark.parametrize("change", [replace_file, rewrite_in_place], ids=["replaced", "rewritten"])
def test_a_changed_file_is_reloaded(watched, change):
    path, holder, watcher, reloaded = watched
    change(path, RULES_B)
    assert watcher.check() is True
    assert names(holder) == ["b"] and holder.reloads == 1
    assert [r.short_hash for r in reloaded] == [holder.current.short_hash]


def test_an_unchanged_or_touched_file_is_not_reloaded(watched):
    path, holder, watcher, reloaded = watched
    assert watcher.check() is False
    rewrite_in_place(path, RULES_A)  # same text, new mtime
    assert watcher.check() is False and reloaded == []


def test_a_file_changed_between_the_load_and_the_watcher_is_reloaded(tmp_path):
    # A gunicorn worker loads its rules, then starts watching: a file replaced in between
    # (seen in CI: one worker kept the old rules for good) must still be picked up.
    path = tmp_path / "rules.yaml"
    path.write_text(RULES_A)
    holder = RulesHolder(load_rules(path))
    replace_file(path, RULES_B)
    watcher = RulesWatcher(holder, path, interval=None)
    assert watcher.check() is True
    assert names(holder) == ["b"]
    assert watcher.check() is False  # and only once


def test_a_broken_file_leaves_the_last_good_rules_and_says_why(watched):
    path, holder, watcher, reloaded = watched
    replace_file(path, BROKEN)
    assert watcher.check() is False
    assert names(holder) == ["a"]
    assert f"{path}:5:13: unknown action 'obliterate'" in holder.last_error
    replace_file(path, RULES_B)  # fixed: the error clears
    assert watcher.check() is True
    assert names(holder) == ["b"] and holder.last_error is None


def test_a_deleted_file_leaves_the_rules_in_force(watched):
    path, holder, watcher, _ = watched
    path.unlink()
    assert watcher.check() is False
    assert names(holder) == ["a"] and "cannot read the rules file" in holder.last_error


def _fifo(path: Path) -> None:
    os.mkfifo(path)


def _dev_zero(path: Path) -> None:
    path.symlink_to("/dev/zero")


def _directory(path: Path) -> None:
    path.mkdir()


def _too_big(path: Path) -> None:
    path.write_text(RULES_A + "# " + "x" * MAX_RULES_BYTES + "\n")


@pytest.mark.parametrize("make, says", [
    (_fifo, "is a FIFO, not a regular file"),
    (_dev_zero, "is a device, not a regular file"),
    (_directory, "is a directory, not a regular file"),
    (_too_big, "the limit is 1,048,576 (1 MiB)"),
], ids=["fifo", "dev-zero", "directory", "over-1-MiB"])
@pytest.mark.attack("a rules file that is huge, endless (/dev/zero), a FIFO or a directory")
def test_a_rules_file_that_is_not_a_regular_file_of_at_most_1_mib_is_refused_unread(watched, make, says):
    """Issue 15: a FIFO blocked the watcher for good, `-> /dev/zero` read until memory ran out,
    50 MB cost each process 20 CPU seconds. Each is refused before it is read, at once, as a
    failed reload that /readyz shows; the last good rules stay in force."""
    path, holder, watcher, reloaded = watched
    path.unlink()
    make(path)
    outcome = []
    looking = threading.Thread(target=lambda: outcome.append(watcher.check(force=True)), daemon=True)
    looking.start()
    looking.join(10)
    assert outcome == [False], "the look blocked" if not outcome else outcome
    assert names(holder) == ["a"] and reloaded == []
    assert says in holder.last_error and "not read" in holder.last_error
    with pytest.raises(RulesError) as refused:  # a start on it is refused, the same way
        load_rules(path)
    assert says in "\n".join(refused.value.problems)


def test_the_watching_thread_polls_and_wakes_on_request(watched):
    path, holder, watcher, reloaded = watched
    watcher.interval = None  # never polls: only a request (SIGHUP) wakes it
    watcher.start()
    try:
        replace_file(path, RULES_B)
        watcher.request()
        deadline = time.monotonic() + 10
        while names(holder) != ["b"] and time.monotonic() < deadline:
            time.sleep(0.02)
        assert names(holder) == ["b"]
    finally:
        watcher.stop()


def test_start_up_falls_back_to_the_last_good_rules_the_store_kept(tmp_path):
    store = Store.from_url(f"sqlite:///{tmp_path}/s.db")
    store.db.migrate()
    path = tmp_path / "rules.yaml"
    path.write_text(RULES_A)
    rule_set, error = load_with_fallback(path, store)
    assert error is None and [r.name for r in rule_set.rules] == ["a"]
    path.write_text(BROKEN)
    rule_set, error = load_with_fallback(path, store)
    assert [r.name for r in rule_set.rules] == ["a"]  # the copy the store kept
    assert "unknown action 'obliterate'" in error and "last good" in rule_set.source
    store.close()


def test_the_watchers_first_look_does_not_count_the_start_up_failure_again(tmp_path):
    # A process that started on fallback rules has counted its file's failure once (the holder's
    # `failed`, which feeds roomwarden_rules_reloads_total{result="failure"}); the watcher's
    # first look at the same broken file must not count it a second time. A later change that
    # still fails is a new failure.
    class Counting(RulesHolder):
        failures: int = 0

        def failed(self, message):
            self.failures += 1
            super().failed(message)

    store = Store.from_url(f"sqlite:///{tmp_path}/s.db")
    store.db.migrate()
    path = tmp_path / "rules.yaml"
    path.write_text(RULES_A)
    load_with_fallback(path, store)
    path.write_text(BROKEN)
    rule_set, error = load_with_fallback(path, store)
    holder = Counting(rule_set, report=False)
    holder.failed(error)  # as runtime.load_rules_holder does
    watcher = RulesWatcher(holder, path, interval=None)

    assert watcher.check() is False
    assert holder.failures == 1 and holder.last_error == error
    # An operator's SIGHUP (a forced look, also the first one when polling is off) is a reload
    # attempt of its own: it counts, and says when it failed.
    forced = RulesWatcher(holder, path, interval=None)
    assert forced.check(force=True) is False
    assert holder.failures == 2
    replace_file(path, BROKEN.replace("obliterate", "vaporize"))
    assert watcher.check() is False
    assert holder.failures == 3 and "vaporize" in holder.last_error
    replace_file(path, RULES_B)
    assert watcher.check() is True and names(holder) == ["b"] and holder.last_error is None
    store.close()


def test_start_up_with_a_broken_file_and_nothing_to_fall_back_to_refuses(tmp_path):
    store = Store.from_url(f"sqlite:///{tmp_path}/s.db")
    store.db.migrate()
    path = tmp_path / "rules.yaml"
    path.write_text(BROKEN)
    with pytest.raises(RulesError, match="unknown action 'obliterate'"):
        load_with_fallback(path, store)
    store.close()


# -- real processes ----------------------------------------------------------------------------


# /readyz shows which process answered, and a failed reload's message, only to the admin.
ADMIN_TOKEN = "admin-token-for-reload-tests-0123"


def readyz_by_pid(base: str, workers: int, timeout: float = 60) -> dict[int, dict]:
    """/readyz from each gunicorn worker: new connections until every worker has answered."""
    seen: dict[int, dict] = {}
    deadline = time.monotonic() + timeout
    while len(seen) < workers and time.monotonic() < deadline:
        body = requests.get(base + "/readyz", timeout=5, headers={
            "Connection": "close", "Authorization": f"Bearer {ADMIN_TOKEN}"}).json()
        seen[body["pid"]] = body["rules"]
    assert len(seen) == workers, f"only {len(seen)} of {workers} workers answered"
    return seen


def wait_for_hash(base: str, workers: int, sha: str, timeout: float = 30) -> dict[int, dict]:
    deadline = time.monotonic() + timeout
    while True:
        seen = readyz_by_pid(base, workers)
        if all(r["hash"] == sha for r in seen.values()) or time.monotonic() > deadline:
            return seen
        time.sleep(0.2)


def test_every_gunicorn_worker_picks_up_a_replaced_file_without_dropping_a_request(
        processes, rules_file, sign):
    web = processes.start("web", WEB_CONCURRENCY="2", RULES_RELOAD_SECONDS="1", ADMIN_TOKEN=ADMIN_TOKEN)
    base = f"http://127.0.0.1:{processes.env['PORT']}"
    wait_until_up(base, web)
    statuses = []

    def post(room: str) -> None:
        body = event_body("session-ended", meetingId=room, sessionId="s")
        statuses.append(requests.post(base + "/webhooks/videosdk", data=body, timeout=10,
                                      headers={"videosdk-signature": sign(body)}).status_code)

    for i in range(5):
        post(f"room-before-{i}")
    replace_file(rules_file, RULES_B)
    new_hash = load_rules(rules_file).sha256
    for i in range(20):  # keep posting while the workers reload
        post(f"room-during-{i}")
    seen = wait_for_hash(base, 2, new_hash)
    assert {r["hash"] for r in seen.values()} == {new_hash}
    assert all(r["last_error"] is None for r in seen.values())
    assert statuses == [202] * 25  # no request dropped or refused while reloading

    replace_file(rules_file, BROKEN)
    deadline = time.monotonic() + 30  # until every worker has tried the broken file
    while True:
        seen = readyz_by_pid(base, 2)
        if all(r["last_error"] for r in seen.values()) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert {r["hash"] for r in seen.values()} == {new_hash}  # the broken file displaced nothing
    assert all("unknown action 'obliterate'" in r["last_error"] for r in seen.values())


def worker_python_pid(process) -> int:
    """The python process of a Procfile command (the shell may or may not have exec'd it)."""
    for pid in [process.pid, *map(int, Path(f"/proc/{process.pid}/task/{process.pid}/children")
                                  .read_text().split())]:
        if Path(f"/proc/{pid}/comm").read_text().strip().startswith("python"):
            return pid
    raise AssertionError("no python process under the worker command")


def wait_for_log(process, text: str, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        log = Path(process.log_path).read_text()
        if text in log:
            return log
        time.sleep(0.05)
    raise AssertionError(f"{text!r} never appeared in {process.log_path}:\n{log}")


def test_sighup_reloads_gunicorn_workers_and_the_worker_process_at_once(processes, rules_file, sign):
    env = {"WEB_CONCURRENCY": "2", "RULES_RELOAD_SECONDS": "0",  # no polling: only SIGHUP
           "ADMIN_TOKEN": ADMIN_TOKEN}
    web = processes.start("web", **env)
    base = f"http://127.0.0.1:{processes.env['PORT']}"
    wait_until_up(base, web)
    worker = processes.start("worker", **env)
    wait_for_log(worker, "started")  # it must have loaded the old rules before they change
    before = readyz_by_pid(base, 2)
    old_hash = next(iter(before.values()))["hash"]

    replace_file(rules_file, RULES_B)
    new_hash = load_rules(rules_file).sha256
    time.sleep(1.5)
    assert {r["hash"] for r in readyz_by_pid(base, 2).values()} == {old_hash}  # not polled: unchanged

    for pid in before:
        os.kill(pid, signal.SIGHUP)
    python = worker_python_pid(worker)
    os.kill(python, signal.SIGHUP)
    seen = wait_for_hash(base, 2, new_hash)
    assert {r["hash"] for r in seen.values()} == {new_hash}
    assert set(seen) == set(before)  # the same processes, reloaded in place, not restarted
    assert f"-> {new_hash[:12]}" in wait_for_log(worker, "rules reloaded")
    os.kill(python, 0)  # still alive: SIGHUP reloads, it does not stop the worker
