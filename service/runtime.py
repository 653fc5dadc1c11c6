"""Build the service's parts from `Settings`: shared by the web app and the CLI.

Every builder fails fast with `ConfigError`, `RulesError` or `StoreUnavailable`
and a message that says what to fix.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Callable

from .breaker import PROBE_EVERY, CircuitBreaker
from .config import Settings
from .errors import ConfigError
from .accept import Intake
from .decider import Decider
from .retrypolicy import RetryPolicy
from .reload import RulesHolder, RulesWatcher, load_with_fallback
from .signature import SignatureVerifier, load_public_keys
from .store import Store, WebStore, migrations
from .store.database import missing_sqlite_file
from .videosdk import TokenSource, VideoSDKClient, fetch_public_key
from .actor import Actor
from .worker import Worker, default_worker_id

log = logging.getLogger("roomwarden")

UNVERIFIED_BANNER = """
********************************************************************************
  WEBHOOK_VERIFY is off: deliveries are NOT verified. Anyone who can reach this
  service can post events to it. For local trials only. No room will be
  deactivated: decisions on unverified deliveries are recorded as dry-run.
********************************************************************************"""


def build_verifier(settings: Settings, session: Any = None) -> SignatureVerifier | None:
    if not settings.webhook_verify:
        log.warning(UNVERIFIED_BANNER)
        return None
    if settings.webhook_public_key:
        try:
            pinned = load_public_keys(settings.webhook_public_key)
        except ValueError as exc:
            raise ConfigError(f"VIDEOSDK_WEBHOOK_PUBLIC_KEY: {exc}") from None
        return SignatureVerifier(pinned=pinned)
    # A token goes along when there are credentials: whether the key endpoint needs one is undocumented.
    tokens = TokenSource(settings.api_key, settings.secret_key) if settings.api_key and settings.secret_key else None
    return SignatureVerifier(fetch=lambda: fetch_public_key(settings.api_base, session=session, tokens=tokens))


def open_store(settings: Settings, clock: Callable[[], float] = time.time, *, migrate: bool = True) -> Store:
    """The store; migrated by the processes that serve (web, worker) and by `migrate`.

    The other commands only read or fix records: they open an existing database at the
    schema this version knows, and say what to do otherwise, rather than migrate a
    production database behind older processes or create an empty one from a typo.
    """
    if not migrate and (missing := missing_sqlite_file(settings.database_url)):
        raise ConfigError(f"no database at {missing} (DATABASE_URL); nothing has been recorded there")
    store = Store.from_url(settings.database_url, clock)
    if migrate:
        for step in store.db.migrate():
            log.info("schema migrated: %s", step)
        if (problem := store.db.check_identity()) is not None:
            store.db.identity_problem = problem  # /readyz shows it; logged by every process that starts
            log.error("store: %s", problem)
    elif (version := store.db.schema_version()) != migrations.LATEST:
        store.close()
        raise ConfigError(f"the database is at schema version {version} and this version of roomwarden "
                          f"needs {migrations.LATEST}: run python -m service migrate")
    return store


def load_rules_holder(settings: Settings, store: Store | WebStore | None, *, report: bool = True) -> RulesHolder:
    """The rules file, or (if it does not load) the last good rules the store kept."""
    rule_set, error = load_with_fallback(settings.rules_file, store)
    holder = RulesHolder(rule_set, report=report)
    if error is not None:
        holder.failed(error)
    for warning in rule_set.warnings:
        log.warning("rules: %s", warning)
    return holder


def watch_rules(settings: Settings, holder: RulesHolder, store: Store | WebStore | None,
                on_reload=None) -> RulesWatcher:
    """Poll the rules file every RULES_RELOAD_SECONDS (0: only when asked, on SIGHUP)."""
    return RulesWatcher(holder, settings.rules_file, interval=settings.rules_reload_seconds or None,
                        store=store, on_reload=on_reload).start()


def build_decider(settings: Settings, store: Store, rules: RulesHolder, verifier: SignatureVerifier | None,
                  clock: Callable[[], float] = time.time) -> Decider:
    """What decides the inbox's deliveries: the worker's (and, in tests, after a request)."""
    return Decider(store.inbox, lambda: rules.current, acts=settings.acts, verifier=verifier, clock=clock)


def build_worker(settings: Settings, store: Store, rules: RulesHolder,
                 session: Any = None) -> Worker:
    """A worker that decides the inbox and acts, or (DRY_RUN, or WEBHOOK_VERIFY off) one that
    decides and fires timers as dry-run."""
    client = None
    if settings.acts:
        settings.require_credentials()
        client = VideoSDKClient(settings.api_base, TokenSource(settings.api_key, settings.secret_key),
                                session=session, timeout=settings.api_timeout)
    actor = Actor(store.outbox, store.workers, store.history, client, RetryPolicy(max_attempts=settings.max_attempts), lambda: rules.current,
                  lease_seconds=settings.lease_seconds, worker_id=default_worker_id(),
                  breaker=CircuitBreaker(settings.breaker_threshold, settings.breaker_cooldown,
                                         probe_every=PROBE_EVERY))
    return Worker(store, lambda: rules.current, actor,
                  decider=build_decider(settings, store, rules, build_verifier(settings, session)),
                  acts=settings.acts, retention_days=settings.retention_days)


def preflight(settings: Settings | None = None) -> Settings:
    """Check everything a web process needs, and migrate the schema, before any worker forks."""
    from . import logs

    settings = settings or Settings.from_env()
    logs.configure(settings.log_level)
    settings.require_credentials()
    build_verifier(settings)
    store = open_store(settings)
    try:
        load_rules_holder(settings, store, report=False)
    finally:
        store.close()
    return settings


@dataclass
class Runtime:
    """What a web process holds: built once by `create_app`."""

    settings: Settings
    store: WebStore  # no outbox, timers or sweeps: see store/store.py
    rules: RulesHolder
    verifier: SignatureVerifier | None
    intake: Intake
    watcher: RulesWatcher | None = None

    @classmethod
    def build(cls, settings: Settings, clock: Callable[[], float] = time.time) -> "Runtime":
        settings.require_credentials()
        verifier = build_verifier(settings)
        store = open_store(settings, clock).web()
        rules = load_rules_holder(settings, store)
        intake = Intake(store.inbox, verifier, clock=clock)
        if settings.dry_run:
            log.warning("DRY_RUN is on: decisions are recorded, no API call is made")
        return cls(settings, store, rules, verifier, intake, watch_rules(settings, rules, store))

    def close(self) -> None:
        if self.watcher is not None:
            self.watcher.stop()
        self.store.close()
