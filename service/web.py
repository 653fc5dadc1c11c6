"""The HTTP layer: the webhook receiver and the health checks. Thin: parse, call, answer.

The error handlers (app.py) answer every error as JSON with an `error` message; no answer
ever carries a stack trace. Status codes: 401 bad signature; 400 a body that is not UTF-8, not
JSON, or not `{"webhookType": str, "data": {...}}`; 413 body over 64 KiB; 503
only when the inbox cannot be written (with Retry-After); 202 accepted: the body
is durable in the inbox and will be decided exactly once, behind the request
(decider.py). A signed body in the webhook's envelope is never refused for what
its `data` holds, nor for want of a key to verify it (it is verified later), since
VideoSDK documents no retries and may never send it again.
"""

from __future__ import annotations

import json
import logging
import os
import time

from flask import Blueprint, current_app, g, jsonify, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge, RequestTimeout

from . import metrics
from .errors import BodyTimeout, RequestRejected, Unavailable
from .requestctx import bearer_ok, current_runtime
from .signature import HEADER

MAX_BODY = 64 * 1024
WEBHOOK = "/webhooks/videosdk"
# The answer's `verified`: yes; later (no public key could be had yet: verified by the decider
# once one can); off (WEBHOOK_VERIFY=false: never acted on).
VERIFIED = {True: "yes", None: "later", False: "off"}

log = logging.getLogger("roomwarden.web")
_compact = json.JSONEncoder(separators=(",", ":")).encode  # as jsonify writes it; made once
bp = Blueprint("roomwarden", __name__)


@bp.post(WEBHOOK)
def receive_webhook():
    """Deliveries the fast lane (lane.py) hands over: any it did not accept, and any it does not
    take (a chunked body, a query string): refusals and failures are all answered here."""
    runtime = current_runtime()
    raw = _read_body()
    item, event_type = runtime.intake.accept(raw, request.headers.get(HEADER))
    body, fields = accepted(item, event_type)
    g.setdefault("log_fields", {}).update(fields)
    return current_app.response_class(body, 202, mimetype="application/json")


def accepted(item, event_type: str) -> tuple[bytes, dict]:
    """The 202's body and the request line's fields for an accepted delivery, counted in the
    metrics: the same from either lane. Accepted means durable in the inbox, to be decided
    behind (decider.py); what was decided is in `python -m service explain ROOM`,
    GET /deliveries/ID and the dashboard, not in this answer."""
    verified = VERIFIED[item.verified]
    metrics.count_accepted(verified)
    body = _compact({"delivery": item.id, "event": event_type, "verified": verified}).encode() + b"\n"
    return body, {"event": event_type, "room": item.room_id, "delivery": item.id, "verified": verified}


def log_request(method: str, path: str, status: int, started: float, fields: dict, exc_info=None) -> None:
    """One JSON line per request: what came in, what became of it, how it was answered."""
    line = {"method": method, "path": path, "status": status, "ms": round((time.perf_counter() - started) * 1000, 2)}
    line.update({k: v for k, v in fields.items() if v is not None})
    log.log(logging.ERROR if exc_info else logging.WARNING if status >= 500 else logging.INFO,
            "%s %s %s", method, path, status, extra={"fields": line}, exc_info=exc_info)


def _read_body() -> bytes:
    """The raw body, whole, or a 4xx: never a truncated body taken as complete.

    Werkzeug stops reading a chunked body at MAX_CONTENT_LENGTH without saying so,
    hence the limit one byte past the largest body allowed, and the length checks.
    """
    try:
        raw = request.get_data(cache=False)
    except HTTPException:
        raise  # 413 for a declared length past the limit
    except BodyTimeout as exc:  # stalled mid-body (lane.TimedBody): 408; gunicorn then closes the
        # connection, the body not having been read to its end (tests/test_e2e.py)
        metrics.SLOW_BODIES.inc()
        raise RequestTimeout(str(exc)) from None
    except Exception as exc:  # noqa: BLE001 - gunicorn's own errors for broken chunked framing
        raise RequestRejected(f"the request body could not be read: {type(exc).__name__}") from None
    if len(raw) > MAX_BODY:
        raise RequestEntityTooLarge()
    if request.content_length is not None and len(raw) != request.content_length:
        raise RequestRejected(f"the body ended after {len(raw)} of its {request.content_length} bytes")
    return raw


@bp.get("/healthz")
def healthz():
    return jsonify({"status": "ok"})


@bp.get("/readyz")
def readyz():
    runtime = current_runtime()
    detailed = bearer_ok()
    rules = runtime.rules.current
    body = {
        "rules": {"hash": rules.sha256, "count": len(rules.rules), "source": rules.source,
                  "loaded_at": runtime.rules.loaded_at, "reloads": runtime.rules.reloads,
                  "last_error": runtime.rules.last_error, "last_error_at": runtime.rules.last_error_at},
        "webhook_verify": runtime.verifier is not None,
        "dry_run": not runtime.settings.acts,
        "pid": os.getpid(),  # which process answered: each gunicorn worker holds its own rules
    }
    problems = []
    try:
        runtime.store.db.ping()
        body["store"] = "ok"
        if detailed:
            # Information, not a readiness failure: a backlog means the decider is behind, and the
            # webhook still accepts (and keeps) deliveries.
            depth, oldest = runtime.store.inbox.inbox_stats()
            body["inbox"] = {"depth": depth, "oldest_age_seconds":
                             round(max(0.0, time.time() - oldest), 3) if oldest else None}
    except Unavailable as exc:
        body["store"] = "store unavailable"  # the driver's detail (hosts, users) is for the log
        log.warning("readyz: %s", exc)
        problems.append("store")
    if runtime.store.db.identity_problem:  # information, not a readiness failure: the store works
        body["store_identity"] = "a new store where another was: see the log"
    if runtime.verifier is not None and not runtime.verifier.has_key:
        body["webhook_key"] = "not fetched yet"  # fetched on the first delivery; not a readiness failure
    body["status"] = "ok" if not problems else "unavailable"
    if not detailed:
        # Anyone can ask: ready or not, and which rules, nothing more (the details, such as a
        # failed reload's message or the rules file's path, need the admin token).
        body = {"status": body["status"], "rules": {"hash": rules.sha256, "count": len(rules.rules)}}
    return jsonify(body), (200 if not problems else 503)


def error_answer(status: int, message: str, **extra):
    response = jsonify({"error": message, **{k: v for k, v in extra.items() if v is not None}})
    response.status_code = status
    return response
