"""Settings, read once from the environment and then passed around frozen.

Every variable is documented in `.env.example` and the README's configuration
table; `tests/test_docs.py` checks the three agree. `Settings.from_env` raises
`ConfigError` with a message that says what to set.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from .errors import ConfigError

DEFAULT_API_BASE = "https://api.videosdk.live"
DEFAULT_DATABASE_URL = "sqlite:///instance/roomwarden.db"

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _flag(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigError(f"{name}={raw!r} is not a boolean; use true or false")


def _number(env: Mapping[str, str], name: str, default: float, *, minimum: float,
            maximum: float = 86400 * 365, whole: bool = False) -> float:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number") from None
    if not value >= minimum:  # also rejects NaN
        raise ConfigError(f"{name}={raw!r} must be at least {minimum:g}")
    if not value <= maximum:  # also rejects inf
        raise ConfigError(f"{name}={raw!r} must be at most {maximum:g}")
    if whole and value != int(value):
        raise ConfigError(f"{name}={raw!r} must be a whole number")
    return value


def _public_key_text(raw: str | None) -> str | None:
    """`VIDEOSDK_WEBHOOK_PUBLIC_KEY` is PEM text or the path of a PEM file."""
    if raw is None or raw.strip() == "":
        return None
    if "-----BEGIN" in raw:
        # Process managers that read .env files cannot hold newlines; accept "\n".
        return raw.replace("\\n", "\n")
    path = Path(raw.strip())
    try:
        return path.read_text()
    except OSError as exc:
        raise ConfigError(
            f"VIDEOSDK_WEBHOOK_PUBLIC_KEY is neither PEM text nor a readable file: "
            f"{path}: {exc.strerror}"
        ) from None


_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def _log_level(raw: str | None) -> str:
    level = (raw or "INFO").strip().upper()
    if level not in _LEVELS:
        raise ConfigError(f"LOG_LEVEL={raw!r} is not a level; use one of {', '.join(_LEVELS)}")
    return level


@dataclass(frozen=True)
class Settings:
    api_key: str | None = field(default=None, repr=False)
    secret_key: str | None = field(default=None, repr=False)
    api_base: str = DEFAULT_API_BASE
    webhook_public_key: str | None = None
    webhook_verify: bool = True
    rules_file: Path = Path("rules.yaml")
    database_url: str = field(default=DEFAULT_DATABASE_URL, repr=False)  # may hold a password
    dry_run: bool = False
    api_timeout: float = 30.0
    max_attempts: int = 10
    lease_seconds: float = 120.0
    poll_interval: float = 0.05
    rules_reload_seconds: float = 1.0
    admin_token: str | None = field(default=None, repr=False)
    retention_days: float = 30.0
    breaker_threshold: int = 5
    breaker_cooldown: float = 30.0
    body_timeout: float = 10.0
    log_level: str = "INFO"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "Settings":
        env = os.environ if env is None else env
        api_base = (env.get("VIDEOSDK_API_BASE") or DEFAULT_API_BASE).strip().rstrip("/")
        if not api_base.startswith(("http://", "https://")):
            raise ConfigError(f"VIDEOSDK_API_BASE={api_base!r} must start with https:// (or http://)")
        settings = cls(
            api_key=(env.get("VIDEOSDK_API_KEY") or "").strip() or None,
            secret_key=(env.get("VIDEOSDK_SECRET_KEY") or "").strip() or None,
            api_base=api_base,
            webhook_public_key=_public_key_text(env.get("VIDEOSDK_WEBHOOK_PUBLIC_KEY")),
            webhook_verify=_flag(env, "WEBHOOK_VERIFY", True),
            rules_file=Path(env.get("RULES_FILE") or "rules.yaml"),
            database_url=(env.get("DATABASE_URL") or DEFAULT_DATABASE_URL).strip(),
            dry_run=_flag(env, "DRY_RUN", False),
            api_timeout=_number(env, "VIDEOSDK_TIMEOUT_SECONDS", 30.0, minimum=0.1, maximum=600),
            max_attempts=int(_number(env, "ACTION_MAX_ATTEMPTS", 10, minimum=1, maximum=1000, whole=True)),
            lease_seconds=_number(env, "ACTION_LEASE_SECONDS", 120.0, minimum=1),
            poll_interval=_number(env, "WORKER_POLL_SECONDS", 0.05, minimum=0.01, maximum=3600),
            rules_reload_seconds=_number(env, "RULES_RELOAD_SECONDS", 1.0, minimum=0, maximum=3600),
            admin_token=(env.get("ADMIN_TOKEN") or "").strip() or None,
            retention_days=_number(env, "RETENTION_DAYS", 30.0, minimum=0, maximum=36500),
            breaker_threshold=int(_number(env, "BREAKER_THRESHOLD", 5, minimum=1, maximum=1000, whole=True)),
            breaker_cooldown=_number(env, "BREAKER_COOLDOWN_SECONDS", 30.0, minimum=0.1, maximum=3600),
            body_timeout=_number(env, "WEB_BODY_TIMEOUT_SECONDS", 10.0, minimum=0.1, maximum=600),
            log_level=_log_level(env.get("LOG_LEVEL")),
        )
        if settings.admin_token is not None and len(settings.admin_token) < 16:
            raise ConfigError("ADMIN_TOKEN must be at least 16 characters; make one with "
                              "python -c 'import secrets; print(secrets.token_urlsafe(32))'")
        if settings.lease_seconds <= 2 * settings.api_timeout:
            raise ConfigError(
                "ACTION_LEASE_SECONDS must exceed twice VIDEOSDK_TIMEOUT_SECONDS (a confirm check and "
                "the call itself), or a slow attempt could outlive its lease and be made twice"
            )
        return settings

    def require_credentials(self) -> None:
        """Refuse to run without credentials, unless nothing will be called."""
        if self.dry_run:
            return
        missing = [
            name
            for name, value in (("VIDEOSDK_API_KEY", self.api_key), ("VIDEOSDK_SECRET_KEY", self.secret_key))
            if not value
        ]
        if missing:
            raise ConfigError(
                f"{' and '.join(missing)} must be set (from the VideoSDK dashboard, API keys page), "
                "or set DRY_RUN=true to record decisions without calling the API"
            )

    @property
    def acts(self) -> bool:
        """Whether decisions may become real API calls.

        Off in dry-run mode, and off when webhook verification is off: a room is
        never deactivated on an unverified delivery.
        """
        return self.webhook_verify and not self.dry_run
