"""The dashboard's forms: sign in and out, re-drive a dead action, try an event.

Every POST has passed the CSRF check (see `_guard` in __init__.py) before it gets here.
"""

from __future__ import annotations

import json
import math
import time

from flask import flash, redirect, render_template, request, url_for

from .. import metrics, simulate
from ..requestctx import MAX_ID, current_runtime
from ..errors import PayloadInvalid
from . import auth, bp

EXAMPLE = json.dumps({"webhookType": "participant-left",
                      "data": {"meetingId": "abcd-efgh-ijkl", "sessionId": "613731342f27f56e4fc4b6d0",
                               "participantId": "ann", "participantName": "Ann"}}, indent=2)


@bp.route("/login", methods=["GET", "POST"])
def login():
    if request.method == "GET":
        if auth.signed_in():
            return redirect(url_for(".overview"), 303)
        return _login_page()
    address = request.remote_addr or "?"
    wait = math.ceil(auth.limiter().wait_for(address))
    if wait > 0:  # refused without looking at the token: a guess made now tells nothing
        metrics.SIGN_INS.labels(result="refused").inc()
        return _login_page(wait=wait), 429, {"Retry-After": str(wait)}
    if auth.sign_in(request.form.get("token")):
        metrics.SIGN_INS.labels(result="success").inc()
        return redirect(url_for(".overview"), 303)
    auth.limiter().failed(address)
    metrics.SIGN_INS.labels(result="failure").inc()
    return _login_page(failed=True), 401


def _login_page(*, failed: bool = False, wait: int = 0) -> str:
    return render_template("dashboard/login.html", failed=failed, wait=wait, max_failures=auth.MAX_FAILURES,
                           window=int(auth.FAILURE_WINDOW))


@bp.post("/logout")
def logout():
    auth.sign_out()
    return redirect(url_for(".login"), 303)


@bp.post(f"/actions/<int(max={MAX_ID}):action_id>/redrive")
def redrive(action_id: int):
    if current_runtime().store.actions.redrive([action_id]):
        flash(f"Action #{action_id} is pending again, due now.", "ok")
    else:
        flash(f"Action #{action_id} is not dead; left as it is.", "error")
    return redirect(url_for(".actions"), 303)


@bp.route("/try", methods=["GET", "POST"])
def try_event():
    rule_set = current_runtime().rules.current
    body = request.form.get("body", "") if request.method == "POST" else EXAMPLE
    result = error = None
    if request.method == "POST":
        try:
            result = simulate.try_event(rule_set, body.encode("utf-8"), time.time())
        except PayloadInvalid as exc:
            error = exc
    return (render_template("dashboard/try.html", body=body, result=result, error=error, rule_set=rule_set,
                            fields=json.dumps(error.fields, indent=2) if error and error.fields else None),
            400 if error else 200)
