"""The Flask application factory. `gunicorn 'service:create_app()'` serves it.

It builds the service's parts (runtime.py), registers the blueprints (web: the webhook and
health checks; admin: the API; dashboard), installs each request's start and log line and the
error handlers (every error answered as JSON, never a stack trace), and puts the webhook's fast
lane (lane.py) in front.
"""

from __future__ import annotations

import time
from typing import Callable

from flask import Flask, abort, g, request
from werkzeug.exceptions import HTTPException

from . import admin, dashboard, logs, metrics, web
from .errors import DeliveryRejected, SignatureInvalid, StoreUnavailable, Unavailable
from .lane import WebhookLane
from .config import Settings
from .runtime import Runtime


def create_app(settings: Settings | None = None, *, clock: Callable[[], float] = time.time) -> Flask:
    """Build the app from `settings` (default: from the environment).

    Raises ConfigError, RulesError or StoreUnavailable, with a message that says
    what to fix, instead of starting a service that cannot work.
    """
    settings = settings or Settings.from_env()
    logs.configure(settings.log_level)
    app = Flask("service", static_folder=None)  # the dashboard serves its own files, behind its sign-in
    app.extensions["roomwarden"] = Runtime.build(settings, clock)
    _serve(app)
    app.wsgi_app = WebhookLane(app.wsgi_app, app.extensions["roomwarden"].intake, settings.body_timeout)
    return app


def _serve(app: Flask) -> None:
    """The routes, each request's start and log line, and every error answered as JSON."""
    app.config["MAX_CONTENT_LENGTH"] = web.MAX_BODY + 1  # see web._read_body
    app.register_blueprint(web.bp)
    app.register_blueprint(admin.bp)
    app.register_blueprint(dashboard.bp)

    @app.before_request
    def _start():
        g.started, g.log_fields = time.perf_counter(), {}
        # No id, cursor or filter of this service holds a NUL, and PostgreSQL refuses one in a
        # string: say so here rather than let a lookup fail as a 500.
        if "\x00" in request.path or any("\x00" in value for _, values in request.args.lists() for value in values):
            abort(400, "the request's path or query has a NUL character")

    @app.after_request
    def _log(response):
        if request.path not in ("/healthz", "/readyz", "/metrics"):
            web.log_request(request.method, request.path, response.status_code, g.get("started", time.perf_counter()),
                        g.get("log_fields", {}), g.get("exc_info"))
        return response

    @app.errorhandler(DeliveryRejected)
    def _rejected(exc: DeliveryRejected):
        metrics.count_rejection(exc.status, signature=isinstance(exc, SignatureInvalid))
        g.setdefault("log_fields", {})["error"] = exc.message
        return web.error_answer(exc.status, exc.message, fields=exc.fields)

    @app.errorhandler(Unavailable)
    def _unavailable(exc: Unavailable):
        if request.path == web.WEBHOOK:  # an admin page during an outage is not a refused delivery
            metrics.count_rejection(503, signature=False)  # probably lost: VideoSDK documents no retries
        g.setdefault("log_fields", {})["error"] = str(exc)  # the detail is for the log only
        # The detail (the database's address, the driver's error) is for the log only.
        public = "store unavailable; retry later" if isinstance(exc, StoreUnavailable) else "unavailable; retry later"
        response = web.error_answer(503, public)
        response.headers["Retry-After"] = str(exc.retry_after)
        return response

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException):
        message = f"body larger than {web.MAX_BODY // 1024} KiB" if exc.code == 413 else exc.description or exc.name
        if exc.code == 413 and request.path == web.WEBHOOK:
            metrics.count_rejection(413, signature=False)
        g.setdefault("log_fields", {})["error"] = message
        return web.error_answer(exc.code or 500, message)

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        # Logged once, on the request's own line (with the traceback): see _log.
        g.setdefault("log_fields", {})["error"] = f"internal error: {type(exc).__name__}"
        g.exc_info = (type(exc), exc, exc.__traceback__)
        if request.path == web.WEBHOOK:
            return web.error_answer(500, "internal error; the delivery was not recorded, so retry it")
        return web.error_answer(500, "internal error")
