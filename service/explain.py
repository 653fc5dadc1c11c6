"""A room's story in time order: `python -m service explain ROOM_ID`.

Answers "why was this room (not) deactivated?" from what the store recorded:
every delivery for the room, each decision with its condition-by-condition
trace, the timers started, fired and cancelled (and by what), every attempt at
VideoSDK, and a last line that says how it ended.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

from .rooms import RoomState
from .rules.conditions import Trace
from .rules.durations import format_duration


@dataclass(frozen=True)
class Entry:
    at: float
    order: int  # ties at the same time: deliveries, then timers, then attempts
    lines: tuple[str, ...]


def when(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "Z"


def _decision_lines(decision: dict, actions_by_id: dict) -> list[str]:
    text = f"rule {decision['rule']}: {decision['outcome']}"
    action = actions_by_id.get(decision["action_id"])
    if action is not None and decision["outcome"] in ("scheduled", "dry-run", "duplicate"):
        text += f" -> action #{action['id']} {action['kind']} ({action['status']})"
    lines = [text]
    if decision.get("trace"):
        lines += ["  " + line for line in Trace.from_dict(decision["trace"]).lines()]
    return lines


def story(room_id: str, rows: dict[str, list[dict]], now: float) -> list[str]:
    """The room's story as text lines; `rows` is what Store.room_story returned."""
    actions_by_id = {a["id"]: a for a in rows["actions"]}
    decisions_by_delivery: dict[str, list[dict]] = {}
    decisions_by_timer: dict[int, list[dict]] = {}
    for decision in rows["decisions"]:
        if decision["timer_id"] is not None:
            decisions_by_timer.setdefault(decision["timer_id"], []).append(decision)
        else:
            decisions_by_delivery.setdefault(decision["delivery_id"], []).append(decision)
    started_by = {(t["delivery_id"], t["rule"]): t for t in rows["timers"]}
    entries = []

    for delivery in rows["deliveries"]:
        head = (f"delivery {delivery['id']} {delivery['event_type']}"
                + (f" participant={delivery['participant_id']}" if delivery["participant_id"] else "")
                + (f" session={delivery['session_id']}" if delivery["session_id"] else "")
                + f" [{'verified' if delivery['verified'] else 'UNVERIFIED'}, rules {delivery['rules_hash'][:12]}]")
        lines = [head]
        for decision in decisions_by_delivery.get(delivery["id"], []):
            lines += ["  " + line for line in _decision_lines(decision, actions_by_id)]
            timer = started_by.get((delivery["id"], decision["rule"]))
            if decision["outcome"] == "timer-started" and timer is not None:
                lines.append(f"    timer #{timer['id']} due {when(timer['due_at'])}")
        for timer in rows["timers"]:
            if timer["resolved_by"] == delivery["id"]:
                lines.append(f"  cancelled timer #{timer['id']} ({timer['rule']}): {timer['reason']}")
        if not decisions_by_delivery.get(delivery["id"]) and delivery["known"]:
            lines.append("  no rule matched")
        if not delivery["known"]:
            lines.append("  event type not known to roomwarden: recorded, never acted on")
        entries.append(Entry(delivery["received_at"], 0, tuple(lines)))

    for timer in rows["timers"]:
        for note in timer.get("notes") or []:
            entries.append(Entry(note["at"], 1, (f"timer #{timer['id']} ({timer['rule']}): {note['note']}",)))
        if timer["status"] == "fired":
            lines = [f"timer #{timer['id']} ({timer['rule']}) fired: {timer['reason']}"]
            for decision in decisions_by_timer.get(timer["id"], []):
                lines += ["  " + line for line in _decision_lines(decision, actions_by_id)]
            entries.append(Entry(timer["resolved_at"], 1, tuple(lines)))
        elif timer["status"] == "cancelled" and timer["resolved_by"] is None:
            entries.append(Entry(timer["resolved_at"], 1,
                                 (f"timer #{timer['id']} ({timer['rule']}) cancelled: {timer['reason']}",)))

    for attempt in rows["attempts"]:
        action = actions_by_id[attempt["action_id"]]
        status = f"HTTP {attempt['http_status']}" if attempt["http_status"] else "no answer"
        text = (f"action #{action['id']} {action['kind']} attempt {attempt['number']}: {status}, "
                f"{attempt['outcome']} ({attempt['latency_ms']:.0f} ms)")
        lines = [text] + [f"  {part}" for part in (attempt["note"], attempt["error"]) if part]
        if attempt["next_due_at"]:
            lines.append(f"  next attempt at {when(attempt['next_due_at'])}")
        entries.append(Entry(attempt["started_at"], 2, tuple(lines)))

    out = [_header(room_id, rows, now)]
    for entry in sorted(entries, key=lambda e: (e.at, e.order)):
        out.append(f"{when(entry.at)}  {entry.lines[0]}")
        out.extend(" " * 26 + line for line in entry.lines[1:])
    out.append(_outcome(rows, now))
    return out


def _header(room_id: str, rows: dict, now: float) -> str:
    if not rows["room"]:
        return f"room {room_id}: no state recorded"
    state = RoomState.from_dict(room_id, rows["room"][0]["state"])
    parts = [f"{state.sessions} session(s) seen", f"{len(state.participants)} participant(s) in it now"]
    if state.session_id:
        parts.append(f"session {state.session_id} {'live' if state.session_active else 'ended'}")
    if not state.participants and state.empty_since is not None:
        parts.append(f"empty for {format_duration(now - state.empty_since)}")
    return f"room {room_id}: " + ", ".join(parts)


def _outcome(rows: dict, now: float) -> str:
    actions = rows["actions"]
    done = [a for a in actions if a["kind"] == "deactivate" and a["status"] == "done"]
    if done:
        a = done[0]
        return f"outcome: deactivated at {when(a['updated_at'])} by rule {a['rule']} (action #{a['id']})"
    for status, text in (("pending", "deactivation under way"), ("dead", "deactivation gave up (dead)"),
                         ("failed", "deactivation failed for good"), ("cancelled", "not deactivated: cancelled"),
                         ("dry-run", "not deactivated: dry run, it would have been")):
        found = [a for a in actions if a["kind"] == "deactivate" and a["status"] == status]
        if found:
            a = found[0]
            detail = f": {a['last_error']}" if a["last_error"] else ""
            return f"outcome: {text} (action #{a['id']}, rule {a['rule']}, {a['attempts']} attempt(s)){detail}"
    pending = [t for t in rows["timers"] if t["status"] == "pending"]
    if pending:
        t = pending[0]
        return f"outcome: not deactivated yet: timer #{t['id']} ({t['rule']}) is due {when(t['due_at'])}"
    if any(d["outcome"] == "protected" for d in rows["decisions"]):
        return "outcome: not deactivated: the room is protected (settings.protect)"
    if not rows["deliveries"]:
        return "outcome: nothing recorded for this room"
    cancelled = [t for t in rows["timers"] if t["status"] == "cancelled"]
    if cancelled:
        return f"outcome: not deactivated: its last timer was cancelled ({cancelled[-1]['reason']})"
    if not rows["decisions"]:
        return f"outcome: not deactivated: no rule matched any of its {len(rows['deliveries'])} deliveries"
    return "outcome: not deactivated"
