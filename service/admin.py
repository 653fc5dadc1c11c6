"""Everything but the webhook and the health checks: behind ADMIN_TOKEN.

`Authorization: Bearer <ADMIN_TOKEN>`, compared in constant time. With no
ADMIN_TOKEN configured these endpoints are off (404), not open. Read-only:

| endpoint                          | answer                                                    |
|-----------------------------------|-----------------------------------------------------------|
| `GET /metrics`                    | Prometheus text format                                    |
| `GET /api/deliveries?room=&limit=&before=` | deliveries, newest first; `before` (a delivery id) pages back |
| `GET /api/actions?status=&room=&limit=&before=` | actions, newest first; `before` (an action id) pages back |
| `GET /api/rooms/<room_id>`        | state, pending timers, and the whole recorded history     |
"""

from __future__ import annotations

import functools

from flask import Blueprint, Response, abort, jsonify, request

from . import metrics
from .outcomes import TimerStatus
from .requestctx import bearer_ok, current_runtime, id_arg

bp = Blueprint("admin", __name__)
MAX_LIMIT = 500


def admin_only(view):
    @functools.wraps(view)
    def wrapped(*args, **kwargs):
        if not current_runtime().settings.admin_token:
            abort(404)  # off: no token configured
        if not bearer_ok():
            response = jsonify({"error": "this endpoint needs Authorization: Bearer <ADMIN_TOKEN>"})
            response.status_code = 401
            response.headers["WWW-Authenticate"] = 'Bearer realm="roomwarden"'
            return response
        return view(*args, **kwargs)

    return wrapped


def _limit() -> int:
    try:
        return max(1, min(MAX_LIMIT, int(request.args.get("limit", 100))))
    except ValueError:
        abort(400, "limit must be a whole number")


@bp.get("/metrics")
@admin_only
def prometheus():
    body, content_type = metrics.exposition(current_runtime().store)
    return Response(body, content_type=content_type)


@bp.get("/api/deliveries")
@admin_only
def deliveries():
    limit = _limit()
    rows = current_runtime().store.history.deliveries(room_id=request.args.get("room"), limit=limit,
                                       before=request.args.get("before"))
    return jsonify({"deliveries": rows, "next_before": rows[-1]["id"] if len(rows) == limit else None})


@bp.get("/api/actions")
@admin_only
def actions():
    limit = _limit()
    before = id_arg("before", "an action id")
    rows = current_runtime().store.actions.actions(status=request.args.get("status"), room_id=request.args.get("room"),
                                    limit=limit, newest_first=True, before=before)
    return jsonify({"actions": rows, "next_before": rows[-1]["id"] if len(rows) == limit else None})


@bp.get("/api/rooms/<room_id>")
@admin_only
def room(room_id: str):
    story = current_runtime().store.history.room_story(room_id)
    if not story["deliveries"] and not story["room"]:
        abort(404, f"nothing recorded for room {room_id}")
    state = story.pop("room")
    return jsonify({"room": room_id, "state": state[0]["state"] if state else None,
                    "pending_timers": [t for t in story["timers"] if t["status"] == TimerStatus.PENDING],
                    "history": story})
