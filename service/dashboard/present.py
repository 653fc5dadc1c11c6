"""How the dashboard shows things: times, durations, conditions, rules, rooms and timers (pure)."""

from __future__ import annotations

from datetime import datetime, timezone

from ..rooms import RoomState
from ..rules.conditions import text as condition_text
from ..rules.durations import format_duration
from ..rules.model import Rule, RuleSet
from ..outcomes import MAKES_ACTION



def at(seconds: float | None) -> str:
    """A time as UTC, to the second."""
    if seconds is None:
        return ""
    return datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


def iso(seconds: float) -> str:
    """A time for a `datetime` attribute: ISO 8601, UTC, to the millisecond."""
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def ago(seconds: float | None, now: float) -> str:
    if seconds is None:
        return ""
    return f"{format_duration(max(0.0, now - seconds))} ago"


def countdown(due: float, now: float) -> str:
    """What a countdown shows before its script takes over: `in 4m12s`, or `due 3s ago`."""
    left = due - now
    return f"in {format_duration(left)}" if left >= 0 else f"due {format_duration(-left)} ago"



def rule_row(rule: Rule, counts: dict[str, int]) -> dict:
    """A rule in force, with how often it was decided on and how often it fired."""
    return {
        "name": rule.name, "line": rule.line, "description": rule.description, "on": ", ".join(rule.on),
        "action": rule.action, "when": condition_text(rule.when),
        "for": format_duration(rule.for_seconds) if rule.for_seconds is not None else None,
        "confirm": rule.confirm, "dry_run": rule.dry_run,
        "fired": sum(counts.get(outcome, 0) for outcome in MAKES_ACTION),
        "decisions": sum(counts.values()),
        "outcomes": sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])),
    }


def timer_row(timer: dict, rule_set: RuleSet, now: float) -> dict:
    """A pending timer: when it is due, and what would cancel it."""
    rule = rule_set.rule(timer["rule"])
    if rule is None:
        cancels = f"rule {timer['rule']} is no longer in the rules: cancelled at its next check"
    elif rule.when is None:
        cancels = "only a change to the rule: it has no conditions"
    else:
        cancels = f"an event after which this no longer holds: {condition_text(rule.when)}"
    return {"id": timer["id"], "rule": timer["rule"], "action": timer["action"], "due_at": timer["due_at"],
            "due": at(timer["due_at"]), "due_iso": iso(timer["due_at"]),
            "countdown": countdown(timer["due_at"], now), "cancels": cancels,
            "started": at(timer["started_at"])}


def room_row(row: dict, rule_set: RuleSet, now: float) -> dict:
    """A room as the rooms list shows it, from its stored state."""
    state = RoomState.from_dict(row["room_id"], row["state"] or {})
    actions = row.get("actions", [])
    return {
        "id": row["room_id"], "participants": len(state.participants),
        "session": state.session_id, "live": state.session_active, "sessions": state.sessions,
        "empty_for": (format_duration(now - state.empty_since)
                      if not state.participants and state.empty_since is not None else None),
        "protected": rule_set.settings.is_protected(row["room_id"]),
        "timers": [timer_row(t, rule_set, now) for t in row.get("timers", [])],
        "actions": [{"id": a["id"], "kind": a["kind"], "status": a["status"]} for a in actions[-3:]],
        "more_actions": max(0, len(actions) - 3),
        "updated": at(row["updated_at"]), "updated_ago": ago(row["updated_at"], now),
    }


def inbox(depth: int, oldest: float | None, now: float) -> dict:
    """The inbox card: how many deliveries wait to be decided, and for how long the oldest has."""
    return {"depth": depth, "oldest": format_duration(max(0.0, now - oldest)) if oldest is not None else None}


def worker_row(row: dict, now: float, stale_after: float) -> dict:
    """A worker's circuit breaker as it last reported it; `stale` once it has not reported for
    `stale_after` seconds (stopped, or cut off from the store)."""
    return {"worker_id": row["worker_id"], "state": row["breaker_state"], "failures": row["breaker_failures"],
            "opened": ago(row["breaker_opened_at"], now) if row["breaker_opened_at"] is not None else "",
            "next_probe": countdown(row["next_probe_at"], now) if row["next_probe_at"] is not None else "",
            "seen": ago(row["seen_at"], now), "stale": now - row["seen_at"] > stale_after,
            "started": at(row["started_at"])}


def sweep(state: dict | None, every: float | None, now: float) -> dict | None:
    """The sweeps card: None when no rule is `on: sweep`; else how often, and the last round as the
    store records it (its number, when it started, finished or is still running, rooms swept so
    far, when the next is due)."""
    if every is None:
        return None
    card = {"every": format_duration(every), "round": None}
    if state is None or not state["round"]:
        return card  # no round yet: the worker starts one on its next pass
    running = state["finished_at"] is None
    card.update(round=state["round"], rooms=state["rooms"], started=ago(state["started_at"], now),
                finished=None if running else ago(state["finished_at"], now), running=running,
                next=countdown(state["next_at"], now) if state["next_at"] > now else "due now")
    return card

