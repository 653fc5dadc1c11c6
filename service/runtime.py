"""Build the service's parts from `Settings`: shared by the web app and the CLI.

Every builder fails fast with `ConfigError`, `RulesError` or `StoreUnavailable`
and a message that says what to fix.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import requests

from .config import Settings
from .errors import ConfigError
from .ingest import Ingestor
from .retry import RetryPolicy
from .rules.loader import load_rules
from .rules.model import RuleSet
from .signature import SignatureVerifier, load_public_keys
from .store import Store
from .videosdk import TokenSource, VideoSDKClient, fetch_public_key
from .worker import Worker

log = logging.getLogger("roomwarden")

UNVERIFIED_BANNER = """
********************************************************************************
  WEBHOOK_VERIFY is off: deliveries are NOT verified. Anyone who can reach this
  service can post events to it. For local trials only. No room will be
  deactivated: decisions on unverified deliveries are recorded as dry-run.
********************************************************************************"""


@dataclass
class RulesHolder:
    """The rule set in force. Readers take `current` once per event; a reload swaps it whole."""

    current: RuleSet
    loaded_at: float = field(default_factory=time.time)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def replace(self, rule_set: RuleSet) -> None:
        with self.lock:
            self.current = rule_set
            self.loaded_at = time.time()


def build_verifier(settings: Settings, session: requests.Session | None = None) -> SignatureVerifier | None:
    if not settings.webhook_verify:
        log.warning(UNVERIFIED_BANNER)
        return None
    if settings.webhook_public_key:
        try:
            pinned = load_public_keys(settings.webhook_public_key)
        except ValueError as exc:
            raise ConfigError(f"VIDEOSDK_WEBHOOK_PUBLIC_KEY: {exc}") from None
        return SignatureVerifier(pinned=pinned)
    return SignatureVerifier(fetch=lambda: fetch_public_key(settings.api_base, session=session))


def open_store(settings: Settings, clock: Callable[[], float] = time.time) -> Store:
    store = Store.from_url(settings.database_url, clock)
    for step in store.migrate():
        log.info("schema migrated: %s", step)
    return store


def build_worker(settings: Settings, store: Store, session: requests.Session | None = None) -> Worker:
    settings.require_credentials()
    client = VideoSDKClient(settings.api_base, TokenSource(settings.api_key, settings.secret_key),
                            session=session, timeout=settings.api_timeout)
    return Worker(store, client, RetryPolicy(max_attempts=settings.max_attempts),
                  lease_seconds=settings.lease_seconds)


def preflight(settings: Settings | None = None) -> Settings:
    """Check everything a web process needs, and migrate the schema, before any worker forks."""
    from . import logs

    settings = settings or Settings.from_env()
    logs.configure(settings.log_level)
    settings.require_credentials()
    load_rules(settings.rules_file)
    build_verifier(settings)
    open_store(settings).close()
    return settings


@dataclass
class Runtime:
    """What a web process holds: built once by `create_app`."""

    settings: Settings
    store: Store
    rules: RulesHolder
    verifier: SignatureVerifier | None
    ingestor: Ingestor

    @classmethod
    def build(cls, settings: Settings, clock: Callable[[], float] = time.time) -> "Runtime":
        settings.require_credentials()
        rules = RulesHolder(load_rules(settings.rules_file))
        verifier = build_verifier(settings)
        store = open_store(settings, clock)
        ingestor = Ingestor(store, lambda: rules.current, acts=settings.acts, clock=clock)
        if settings.dry_run:
            log.warning("DRY_RUN is on: decisions are recorded, no API call is made")
        return cls(settings, store, rules, verifier, ingestor)
