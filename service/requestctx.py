"""What every blueprint reads from the app and the request: the running service's parts, the
admin token check, and an id from the query string. One place, so the admin API and the
dashboard share these without importing each other.
"""

from __future__ import annotations

import hmac

from flask import abort, current_app, request

MAX_ID = 2 ** 63 - 1  # the largest id a database's integer column holds


def current_runtime():
    """The service's parts (runtime.Runtime) that app.create_app built for this app."""
    return current_app.extensions["roomwarden"]


def token_ok(given: str | None) -> bool:
    """Whether `given` is ADMIN_TOKEN, compared in constant time (never, with no token set)."""
    expected = current_runtime().settings.admin_token
    return bool(expected and given) and hmac.compare_digest(given.encode(), expected.encode())


def bearer_ok() -> bool:
    """Whether this request carries `Authorization: Bearer <ADMIN_TOKEN>` (never, with no token set)."""
    header = request.headers.get("Authorization", "")
    return token_ok(header[7:].strip() if header[:7].lower() == "bearer " else None)


def id_arg(name: str, what: str) -> int | None:
    """The query argument `name` as a positive id (None when absent or empty), or a 400."""
    text = request.args.get(name)
    if not text:
        return None
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= MAX_ID:
        abort(400, f"{name} must be {what}")
    return value
