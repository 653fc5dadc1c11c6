"""Signing in to the dashboard with ADMIN_TOKEN, the session cookie, and CSRF tokens.

The session is Flask's signed cookie: secure, HTTP-only, SameSite=Strict, scoped
to /dashboard. Its signing key is derived from ADMIN_TOKEN with HMAC, so no new
setting is needed, and changing the token signs everyone out. The token itself
is only ever read from a POSTed form and compared in constant time; it is never
put in a page, a URL, the cookie or a log line.

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
import time
from datetime import timedelta

from flask import Flask, abort, current_app, request, session

from ..admin import token_ok

SESSION_LIFETIME = timedelta(hours=12)
COOKIE = "roomwarden_dashboard"
_KEY_LABEL = b"roomwarden dashboard session key v1"


def _settings():
    return current_app.extensions["roomwarden"].settings


def session_key(admin_token: str) -> bytes:
    """The cookie-signing key: HMAC-SHA256 of a fixed label under the admin token."""
    return hmac.new(admin_token.encode(), _KEY_LABEL, hashlib.sha256).digest()


def configure(app: Flask) -> None:
    """Set up the session cookie (when an ADMIN_TOKEN is configured; else the dashboard is off)."""
    token = app.extensions["roomwarden"].settings.admin_token
    if not token:
        return
    app.secret_key = session_key(token)
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
