"""Rules in force, and keeping them in step with their file.

`RulesHolder` holds the rule set in force; readers take `current` once per
event, and a reload swaps the reference whole (never a rule set half-changed
under a reader). `RulesWatcher` polls the file's identity (inode, size, mtime)
every `interval` seconds (None: never) and reloads at once when asked (SIGHUP): editors that
write a new file and rename it over the old one, and `git pull`, which rewrites
it, are both seen. A file that fails to load leaves the last good rules in
force; the errors are logged with their line numbers and kept in
`last_error` for /readyz.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from . import metrics
from .errors import RulesError, StoreUnavailable
from .rules.loader import load_rules, parse_rules, read_rules_file
from .rules.model import RuleSet

log = logging.getLogger("roomwarden.rules")


@dataclass
class RulesHolder:
    current: RuleSet
    loaded_at: float = field(default_factory=time.time)
    last_error: str | None = None  # the last failed load, until a load succeeds
    last_error_at: float | None = None
    reloads: int = 0
    report: bool = True  # into the metrics (not for a process that only checks, such as gunicorn's master)

    def __post_init__(self):
        if self.report:
            metrics.rules_in_force(self.current)

    def replace(self, rule_set: RuleSet) -> None:
        self.current = rule_set  # one reference swap: readers see the old set or the new one
        self.loaded_at = time.time()
        self.last_error = self.last_error_at = None
        self.reloads += 1
        if self.report:
            metrics.RELOADS.labels(result="success").inc()
            metrics.rules_in_force(rule_set)

    def failed(self, message: str) -> None:
        self.last_error, self.last_error_at = message, time.time()
        if self.report:
            metrics.RELOADS.labels(result="failure").inc()


_NOT_LOOKED = object()  # a file identity equal to none, not even a missing file's (None)


def _identity(path: Path) -> tuple | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_dev, st.st_size, st.st_mtime_ns)


def load_with_fallback(path: Path, store=None) -> tuple[RuleSet, str | None]:
    """The rules from `path`; if they do not load, the last good rules the store kept.

    Returns the rule set and the load error it stands in for (None when the file
    loaded). Raises RulesError when the file fails and there is nothing to fall
    back to: a first start with a broken file refuses to start.
    """
    try:
        rule_set = load_rules(path)
    except RulesError as exc:
        last = _last_good(store)
        if last is None:
            raise
        fallback, problems = parse_rules(last["text"], f"{last['source']} (last good, {last['sha256'][:12]})")
        if fallback is None:  # cannot happen for a version that loaded before, unless the language changed
            raise exc from None
        message = "\n".join(exc.problems)
        log.error("rules file %s does not load; using the last good rules %s instead:\n%s", path,
                  last["sha256"][:12], message)
        return fallback, message
    _remember(store, rule_set)
    return rule_set, None


def _last_good(store):
    if store is None:
        return None
    try:
        return store.rules_kept.last_good_rules()
    except StoreUnavailable:
        return None


def _remember(store, rule_set: RuleSet) -> None:
    if store is None:
        return
    try:
        store.rules_kept.remember_rules(rule_set.sha256, rule_set.source, rule_set.text)
    except StoreUnavailable as exc:  # the file loaded; keeping a copy can wait for the next load
        log.warning("could not keep a copy of rules %s: %s", rule_set.short_hash, exc)


class RulesWatcher:
    def __init__(self, holder: RulesHolder, path: Path, *, interval: float | None = 1.0, store=None,
                 on_reload: Callable[[RuleSet], None] | None = None):
        self.holder = holder
        self.path = Path(path)
        self.interval = interval
        self.store = store
        self.on_reload = on_reload
        # Unknown at first: the file may have changed between the load of the rules in force and
        # now, so the first look compares its text with them (and reloads if they differ).
        self._seen: object = _NOT_LOOKED
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def check(self, *, force: bool = False) -> bool:
        """Reload if the file changed (or `force`); True when new rules came into force."""
        with self._lock:
            identity = _identity(self.path)
            if not force and identity == self._seen:
                return False
            first, self._seen = self._seen is _NOT_LOOKED, identity
            try:
                data = read_rules_file(self.path)  # a regular file within the limit; never blocks
            except RulesError as exc:
                return self._fail("\n".join(exc.problems))
            if hashlib.sha256(data).hexdigest() == self.holder.current.sha256 and self.holder.last_error is None:
                return False  # touched, or rewritten with the same text
            try:
                rule_set = load_rules(self.path)
            except RulesError as exc:
                message = "\n".join(exc.problems)
                if first and not force and message == self.holder.last_error:
                    return False  # the failure the process started on (with fallback rules), counted then
                return self._fail(message)
            old = self.holder.current.short_hash
            self.holder.replace(rule_set)
            _remember(self.store, rule_set)
            log.info("rules reloaded: %s -> %s (%d rules)", old, rule_set.short_hash, len(rule_set.rules))
            for warning in rule_set.warnings:
                log.warning("rules: %s", warning)
        if self.on_reload is not None:
            self.on_reload(rule_set)
        return True

    def _fail(self, message: str) -> bool:
        if message != self.holder.last_error:
            log.error("rules file %s does not load; rules %s stay in force:\n%s", self.path,
                      self.holder.current.short_hash, message)
        self.holder.failed(message)
        return False

    def request(self) -> None:
        """Reload now (from a signal handler: only sets a flag for the watching thread)."""
        self._wake.set()

    def start(self) -> "RulesWatcher":
        self._thread = threading.Thread(target=self._run, name="rules-watcher", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            forced = self._wake.wait(self.interval)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self.check(force=forced)
            except Exception:  # the watcher must outlive any surprise; the last good rules stay
                log.exception("rules watcher: unexpected error")
