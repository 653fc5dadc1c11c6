"""Signing in to the dashboard with ADMIN_TOKEN, the session cookie, and CSRF tokens.

The session is Flask's signed cookie: secure, HTTP-only, SameSite=Strict, scoped
to /dashboard. Its signing key is derived from ADMIN_TOKEN with scrypt (memory-hard:
16 MiB and tens of milliseconds a derivation), once per process at start, so no new
setting is needed and changing the token signs everyone out. Any visitor gets a
signed cookie (the sign-in form's CSRF session); with a fast derivation, guesses at
the token could be tested against it offline at tens of thousands a second; with
scrypt, each guess costs what a derivation costs. The token itself is only ever
read from a POSTed form and compared in constant time; it is never put in a page, a
URL, the cookie or a log line.

Failed sign-ins are limited per client address: after MAX_FAILURES within
FAILURE_WINDOW seconds, sign-in from that address is refused (429, without looking
at the token) until the window has passed. The count is kept by each process (each
gunicorn worker counts alone) and behind a proxy it is the proxy's address.

A session lasts 12 hours from signing in, whatever is done with it: the time of
signing in is in the cookie and checked on every request. The session is
stateless, so signing out clears this browser's cookie only: a copy of it taken
before stays valid until its 12 hours are up, or until ADMIN_TOKEN changes.

Every POST carries the session's CSRF token in a hidden `csrf` field: missing is
a 400, wrong a 403, and nothing is done. The sign-in form has one too (a session
is started for it before sign-in), so a third-party page cannot sign a browser
in with a token of its choosing.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from datetime import timedelta

from flask import Flask, abort, current_app, request, session

from ..requestctx import current_runtime, token_ok

SESSION_LIFETIME = timedelta(hours=12)
COOKIE = "roomwarden_dashboard"
_KEY_LABEL = b"roomwarden dashboard session key v2 (scrypt)"
# scrypt's cost: n * r * 128 bytes of memory (16 MiB) for each derivation, and as much per guess.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2 ** 14, 8, 1
MAX_FAILURES = 5  # failed sign-ins from one address ...
FAILURE_WINDOW = 60.0  # ... within this many seconds, then refused until the window has passed


def _settings():
    return current_runtime().settings


def session_key(admin_token: str) -> bytes:
    """The cookie-signing key: scrypt of the admin token (see the module's docstring)."""
    return hashlib.scrypt(admin_token.encode(), salt=_KEY_LABEL, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P,
                          maxmem=64 * 1024 * 1024, dklen=32)


class SignInLimiter:
    """Failed sign-ins per client address, over a sliding window (see the module's docstring)."""

    MAX_ADDRESSES = 10_000  # the oldest is forgotten first: memory stays bounded under a flood

    def __init__(self, clock=time.monotonic):
        self.clock = clock
        self._failures: dict[str, list[float]] = {}
        self._lock = threading.Lock()

    def wait_for(self, address: str) -> float:
        """Seconds before `address` may try again; 0 when it may now."""
        with self._lock:
            recent = self._recent(address)
            if len(recent) < MAX_FAILURES:
                return 0.0
            return max(0.0, recent[0] + FAILURE_WINDOW - self.clock())

    def failed(self, address: str) -> None:
        with self._lock:
            recent = self._recent(address)
            recent.append(self.clock())
            self._failures.pop(address, None)
            self._failures[address] = recent[-MAX_FAILURES:]  # newest last: insertion order is age
            while len(self._failures) > self.MAX_ADDRESSES:
                del self._failures[next(iter(self._failures))]

    def _recent(self, address: str) -> list[float]:
        since = self.clock() - FAILURE_WINDOW
        return [t for t in self._failures.get(address, []) if t > since]


def limiter() -> SignInLimiter:
    return current_app.extensions["roomwarden_sign_in_limiter"]


def configure(app: Flask) -> None:
    """Set up the session cookie (when an ADMIN_TOKEN is configured; else the dashboard is off)."""
    token = app.extensions["roomwarden"].settings.admin_token
    if not token:
        return
    app.secret_key = session_key(token)
    app.extensions["roomwarden_sign_in_limiter"] = SignInLimiter()
    app.config.update(SESSION_COOKIE_NAME=COOKIE, SESSION_COOKIE_PATH="/dashboard",
                      SESSION_COOKIE_SECURE=True, SESSION_COOKIE_HTTPONLY=True,
                      SESSION_COOKIE_SAMESITE="Strict", PERMANENT_SESSION_LIFETIME=SESSION_LIFETIME,
                      SESSION_REFRESH_EACH_REQUEST=False)  # 12 hours from signing in, not from the last click


def enabled() -> bool:
    return bool(_settings().admin_token)


def signed_in() -> bool:
    since = session.get("since")
    return (session.get("signed_in") is True and isinstance(since, (int, float))
            and 0 <= time.time() - since <= SESSION_LIFETIME.total_seconds())


def csrf_token() -> str:
    """The session's CSRF token, made on first use (templates put it in every form)."""
    token = session.get("csrf")
    if not token:
        token = session["csrf"] = secrets.token_urlsafe(32)
    return token


def check_csrf() -> None:
    """Abort a POST whose `csrf` field is missing (400) or not the session's (403)."""
    given = request.form.get("csrf")
    if not given:
        abort(400, "the form's CSRF token is missing; reload the page and try again")
    expected = session.get("csrf")
    if not expected or not hmac.compare_digest(given.encode(), expected.encode()):
        abort(403, "the form's CSRF token is wrong or expired; reload the page and try again")


def sign_in(given: str | None) -> bool:
    """Start a signed-in session if `given` is the admin token."""
    if not token_ok(given):
        return False
    session.clear()  # a fresh session: nothing from before sign-in carries over
    session.permanent = True
    session["signed_in"] = True
    session["since"] = int(time.time())  # the cookie's own expiry is renewed whenever the session changes
    session["csrf"] = secrets.token_urlsafe(32)
    return True


def sign_out() -> None:
    session.clear()
