"""The Flask application factory. `gunicorn 'service:create_app()'` serves it."""

from __future__ import annotations

import time
from typing import Callable

from flask import Flask

from . import logs, web
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
    web.init_app(app)
    app.wsgi_app = WebhookLane(app.wsgi_app, app.extensions["roomwarden"].intake, settings.body_timeout)
    return app
