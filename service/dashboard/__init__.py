"""The dashboard: server-rendered pages at /dashboard, behind ADMIN_TOKEN.

Off (404) without ADMIN_TOKEN. Every page but the sign-in form needs a signed-in
session (see auth.py); every POST needs the session's CSRF token. Pages are
Jinja templates in service/templates/dashboard, styled by one CSS file and
helped by one small script (countdowns) in service/static/dashboard; no build
step and nothing loaded from elsewhere, which the Content-Security-Policy
enforces. Errors other than the pages' own (a wrong token, a bad event body)
are answered by the app's shared JSON error handling in web.py.

| page                          | what                                                        |
|-------------------------------|-------------------------------------------------------------|
| `GET /dashboard/`             | rules in force, decisions by rule, 24 h of activity charts  |
| `GET /dashboard/rooms`        | rooms, most recent first: occupancy (now, and 6 h of it), session, timers |
| `GET /dashboard/rooms/<id>`   | a room's timeline (timeline.py), then its story as `explain` prints it |
| `GET /dashboard/actions`      | the outbox by status; dead actions can be re-driven         |
| `GET/POST /dashboard/try`     | paste an event body, see its decision trace; no side effects |
"""

from __future__ import annotations

from flask import Blueprint, abort, redirect, request, url_for

from . import auth, present
from ..explain import when

bp = Blueprint("dashboard", __name__, url_prefix="/dashboard",
               static_folder="../static/dashboard", static_url_path="/static")
bp.record_once(lambda state: auth.configure(state.app))

PUBLIC = {"dashboard.login", "dashboard.static"}
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; form-action 'self'; "
       "frame-ancestors 'none'; base-uri 'none'")


@bp.before_request
def _guard():
    if not auth.enabled():
        abort(404)  # off: no token configured
    if request.method == "POST":
        auth.check_csrf()
    if request.endpoint not in PUBLIC and not auth.signed_in():
        if request.method == "GET":
            return redirect(url_for("dashboard.login"), 303)
        abort(401, "sign in to the dashboard first")
    return None


@bp.after_request
def _headers(response):
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Referrer-Policy"] = "no-referrer"
    if request.endpoint != "dashboard.static":
        response.headers["Cache-Control"] = "no-store"
    return response


@bp.context_processor
def _template_helpers():
    return {"csrf_token": auth.csrf_token, "at": present.at, "iso": present.iso, "when": when}


from . import forms, pages  # noqa: E402,F401  (they add their routes to bp)
