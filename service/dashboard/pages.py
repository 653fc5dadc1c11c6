"""The dashboard's read-only pages: overview, rooms, a room's story, actions."""

from __future__ import annotations

import math
import os
import time

from flask import abort, redirect, render_template, request, url_for

from .. import explain, presence
from ..actor import REPORT_EVERY
from ..requestctx import current_runtime, id_arg
from ..outcomes import ActionStatus, TimerStatus
from . import bp, charts, present, timeline

PAGE = 50  # rows a page
STORY_ENTRIES = 500  # a room's story shows its latest entries, unless ?all=1
STATUSES = tuple(ActionStatus)
MINUTES = 24 * 60
SPARK_STEP, SPARK_BUCKETS = 300.0, 72  # the rooms list's sparklines: 6 h in 5-minute buckets
WORKERS_SINCE = 3600.0  # seconds: the overview lists the workers heard from within the last hour


@bp.get("/", strict_slashes=False)
def overview():
    runtime = current_runtime()
    now = time.time()
    since = (math.floor(now / 60) + 1) * 60 - MINUTES * 60  # the last 24 h, whole minutes, this one last
    series = runtime.store.pages.activity(since, MINUTES)
    counts = runtime.store.pages.decision_counts()
    rule_set = runtime.rules.current
    rules = [present.rule_row(rule, counts.get(rule.name, {})) for rule in rule_set.rules]
    in_force = {rule.name for rule in rule_set.rules}
    retired = sorted((name, sum(c.values())) for name, c in counts.items() if name not in in_force)
    return render_template(
        "dashboard/overview.html", rule_set=rule_set, holder=runtime.rules, rules=rules, retired=retired,
        loaded_at=present.at(runtime.rules.loaded_at),
        last_error_at=present.at(runtime.rules.last_error_at), pid=os.getpid(),
        stats=runtime.store.actions.outbox_stats(now), dry_run=not runtime.settings.acts,
        inbox=present.inbox(*runtime.store.inbox.inbox_stats(), now),
        sweep=present.sweep(runtime.store.pages.sweep_state(), rule_set.sweep_every, now),
        workers=[present.worker_row(w, now, stale_after=3 * REPORT_EVERY)
                 for w in runtime.store.pages.workers_seen(now - WORKERS_SINCE)],
        charts={
            "deliveries": charts.steps(series["deliveries"], since, title="Deliveries per minute"),
            "decisions": charts.steps(series["decisions"], since, title="Decisions per minute"),
            "actions": charts.steps(series["actions"], since, title="Actions per minute"),
            "latency": charts.dots(series["latency_avg"], series["latency_max"], since,
                                   title="Attempt latency"),
        },
        totals={name: sum(series[name]) for name in ("deliveries", "decisions", "actions", "attempts")})


@bp.get("/rooms")
def rooms():
    runtime = current_runtime()
    now = time.time()
    with_timers = request.args.get("timers") == "1"
    after = request.args.get("after") or None
    try:
        page, next_after = runtime.store.pages.rooms_page(limit=PAGE, after=after, with_timers=with_timers)
    except ValueError:
        abort(400, "after must be a rooms page cursor, as the 'older' link gives")
    rule_set = runtime.rules.current
    since = (math.floor(now / SPARK_STEP) + 1) * SPARK_STEP - SPARK_BUCKETS * SPARK_STEP  # this bucket last
    shown = [present.room_row(r, rule_set, now) for r in page]
    counts = runtime.store.pages.occupancy([r["id"] for r in shown], since, SPARK_STEP, SPARK_BUCKETS,
                                           now={r["id"]: r["participants"] for r in shown})
    sparks = {room["id"]: charts.sparkline(counts[room["id"]], hours=SPARK_BUCKETS * SPARK_STEP / 3600,
                                           title="In the room", now=room["participants"]) for room in shown}
    return render_template("dashboard/rooms.html", rooms=shown, sparks=sparks,
                           total=runtime.store.pages.count_rooms(with_timers=with_timers), with_timers=with_timers,
                           after=after, next_after=next_after, page_size=PAGE)


@bp.get("/room")
def find_room():
    """The rooms page's "open a room" box."""
    room_id = (request.args.get("id") or "").strip()
    if not room_id:
        return redirect(url_for(".rooms"), 303)
    return redirect(url_for(".room", room_id=room_id), 303)


@bp.get("/rooms/<room_id>")
def room(room_id: str):
    runtime = current_runtime()
    now = time.time()
    rows = runtime.store.history.room_story(room_id)
    if not rows["deliveries"] and not rows["room"]:
        abort(404, f"nothing recorded for room {room_id}")
    story = explain.build(room_id, rows, now)
    show_all = request.args.get("all") == "1"
    entries = story.entries if show_all else story.entries[-STORY_ENTRIES:]
    shown = {entry.anchor for entry in entries}
    everything = url_for(".room", room_id=room_id, all=1)

    def link(anchor: str) -> str:  # a mark's link: to its story entry, on this page or the whole story
        return f"#{anchor}" if anchor in shown else f"{everything}#{anchor}"

    retention = runtime.settings.retention_days  # before its horizon the record has holes: not folded
    since = now - retention * 86400 if retention > 0 else None
    folded = presence.fold(room_id, rows["deliveries"], since)
    picture = timeline.draw(story, rows, folded, now, link)
    rule_set = runtime.rules.current
    pending = [present.timer_row(t, rule_set, now) for t in rows["timers"] if t["status"] == TimerStatus.PENDING]
    return render_template("dashboard/room.html", story=story, entries=entries, timeline=picture,
                           timeline_notes=timeline.notes(folded),
                           hidden=len(story.entries) - len(entries),
                           protected=rule_set.settings.is_protected(room_id), timers=pending,
                           actions=rows["actions"])


@bp.get("/actions")
def actions():
    runtime = current_runtime()
    now = time.time()
    status = request.args.get("status") or None
    if status is not None and status not in STATUSES:
        abort(400, f"status must be one of {', '.join(STATUSES)}")
    before = id_arg("before", "an action id")
    page, next_before = runtime.store.pages.actions_page(status=status, limit=PAGE, before=before)
    counts = runtime.store.actions.counts()
    return render_template("dashboard/actions.html", actions=page, status=status, statuses=STATUSES,
                           counts=counts, total=sum(counts.values()), before=before,
                           next_before=next_before, countdown=lambda due: present.countdown(due, now))
