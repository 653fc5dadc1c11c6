"""A room's story in time order: `python -m service explain ROOM_ID`.

Answers "why was this room (not) deactivated?" from what the store recorded:
every delivery for the room (one kept unread, with what could not be read),
each decision with its condition-by-condition trace, the timers started, fired
and cancelled (and by what), every attempt at VideoSDK, and a last line that
says how it ended.

`build` returns the story as structured entries (`Story`, `Entry`, `Line`): the
CLI prints `Story.text()`, and the dashboard's room page renders the same
entries as HTML.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timezone

from .events import SWEEP
from .rooms import RoomState
from .rules.conditions import Trace
from .rules.durations import format_duration
from .outcomes import ActionStatus, Decided, TimerStatus, holds_key


@dataclass(frozen=True)
class Line:
    """One line of an entry: its text, how far it is indented, and what it says."""

    text: str
    indent: int = 0  # spaces before the text, within its entry
    kind: str = "note"  # head | decision | condition | timer | cancel | note | error
    result: bool | None = None  # a condition's result (kind "condition")
    # What the line is about, for the dashboard's timeline to find it: "delivery:<id>",
    # "decision:<id>", "timer:<id>:start", "timer:<id>:end", "timer:<id>:note:<n>", "attempt:<id>".
    ref: str | None = None

    def render(self) -> str:
        return " " * self.indent + self.text


@dataclass(frozen=True)
class Entry:
    at: float
    order: int  # ties at the same time: deliveries, then timers, then attempts
    kind: str  # delivery | timer | attempt
    lines: tuple[Line, ...]

    @property
    def head(self) -> Line:
        return self.lines[0]

    @property
    def anchor(self) -> str:
        """The entry's id in the room page (its head's ref, as an HTML id)."""
        return "entry-" + (self.head.ref or f"{self.kind}-{self.at}").replace(":", "-")

    @property
    def body(self) -> tuple[Line, ...]:
        return self.lines[1:]


@dataclass(frozen=True)
class Story:
    """A room's story: a header, the entries in time order, and how it ended."""

    room_id: str
    header: str
    entries: tuple[Entry, ...]
    outcome: str

    def text(self) -> list[str]:
        """The story as `python -m service explain` prints it."""
        out = [self.header]
        for entry in self.entries:
            out.append(printed(entry, entry.head))
            out.extend(printed(entry, line) for line in entry.body)
        out.append(self.outcome)
        return out

    def refs(self) -> dict[str, tuple[Entry, Line]]:
        """Each line that is about something (its `ref`), with its entry."""
        return {line.ref: (entry, line) for entry in self.entries for line in entry.lines if line.ref}


def printed(entry: Entry, line: Line) -> str:
    """A line of an entry as `explain` prints it: the head after the entry's time, the rest under it."""
    if line is entry.head:
        return f"{when(entry.at)}  {line.render()}"
    return " " * 26 + line.render()


def when(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "Z"


def _trace_lines(trace: Trace, indent: int) -> list[Line]:
    return [Line(node.line(), indent + 2 * depth, "condition", node.result) for depth, node in trace.walk()]


def _decision_lines(decision: dict, actions_by_id: dict, indent: int) -> list[Line]:
    text = f"rule {decision['rule']}: {decision['outcome']}"
    action = actions_by_id.get(decision["action_id"])
    if action is not None and holds_key(decision["outcome"]):
        text += f" -> action #{action['id']} {action['kind']} ({action['status']})"
    lines = [Line(text, indent, "decision", ref=f"decision:{decision['id']}")]
    if decision.get("trace"):
        lines += _trace_lines(Trace.from_dict(decision["trace"]), indent + 2)
    return lines


def _started(decision: dict, timer: dict | None) -> list[Line]:
    """The timer a decision started, if it did."""
    if decision["outcome"] != Decided.TIMER_STARTED or timer is None:
        return []
    return [Line(f"timer #{timer['id']} due {when(timer['due_at'])}", 4, "timer", ref=f"timer:{timer['id']}:start")]


def story(room_id: str, rows: dict[str, list[dict]], now: float) -> list[str]:
    """The room's story as text lines; `rows` is what Store.room_story returned."""
    return build(room_id, rows, now).text()


def build(room_id: str, rows: dict[str, list[dict]], now: float) -> Story:
    """The room's story as entries (for the CLI's text and the dashboard's room page)."""
    actions_by_id = {a["id"]: a for a in rows["actions"]}
    decisions_by_delivery: dict[str, list[dict]] = {}
    decisions_by_timer: dict[int, list[dict]] = {}
    for decision in rows["decisions"]:
        if decision["timer_id"] is not None:
            decisions_by_timer.setdefault(decision["timer_id"], []).append(decision)
        else:
            decisions_by_delivery.setdefault(decision["delivery_id"], []).append(decision)
    started_by = {(t["delivery_id"], t["rule"]): t for t in rows["timers"]}
    cancelled_by: dict[str, list[dict]] = {}
    for timer in rows["timers"]:
        if timer["resolved_by"] is not None:
            cancelled_by.setdefault(timer["resolved_by"], []).append(timer)
    entries = []

    last_heard = None  # when the room's latest delivery before this one came (sweeps are not news)
    for delivery in sorted(rows["deliveries"], key=lambda d: (d["received_at"], d["id"])):
        if delivery["event_type"] == SWEEP and delivery["known"]:
            quiet = "" if last_heard is None else f", quiet for {format_duration(delivery['received_at'] - last_heard)}"
            lines = [Line(f"swept at {when(delivery['received_at'])}{quiet} [rules {delivery['rules_hash'][:12]}]",
                          0, "head", ref=f"delivery:{delivery['id']}")]
            for decision in decisions_by_delivery.get(delivery["id"], []):
                lines += _decision_lines(decision, actions_by_id, 2)
                lines += _started(decision, started_by.get((delivery["id"], decision["rule"])))
            if not decisions_by_delivery.get(delivery["id"]):
                lines[0] = replace(lines[0], text=lines[0].text + ": no rule matched")
            entries.append(Entry(delivery["received_at"], 0, "delivery", tuple(lines)))
            continue
        last_heard = delivery["received_at"]
        head = (f"delivery {delivery['id']} {delivery['event_type']}"
                + (f" participant={delivery['participant_id']}" if delivery["participant_id"] else "")
                + (f" session={delivery['session_id']}" if delivery["session_id"] else "")
                + f" [{'verified' if delivery['verified'] else 'UNVERIFIED'}, rules {delivery['rules_hash'][:12]}]")
        lines = [Line(head, 0, "head", ref=f"delivery:{delivery['id']}")]
        for decision in decisions_by_delivery.get(delivery["id"], []):
            lines += _decision_lines(decision, actions_by_id, 2)
            lines += _started(decision, started_by.get((delivery["id"], decision["rule"])))
        for timer in cancelled_by.get(delivery["id"], []):
            lines.append(Line(f"cancelled timer #{timer['id']} ({timer['rule']}): {timer['reason']}", 2, "cancel",
                              ref=f"timer:{timer['id']}:end"))
        problem = delivery.get("problem")
        if problem:
            lines.append(Line(f"{delivery['event_type']} (unreadable: {problem}): kept, not decided on", 2, "error"))
        elif not decisions_by_delivery.get(delivery["id"]) and delivery["known"]:
            lines.append(Line("no rule matched", 2))
        if not delivery["known"]:
            lines.append(Line("event type not known to roomwarden: recorded, never acted on", 2))
        entries.append(Entry(delivery["received_at"], 0, "delivery", tuple(lines)))

    for timer in rows["timers"]:
        for n, note in enumerate(timer.get("notes") or []):
            entries.append(Entry(note["at"], 1, "timer",
                                 (Line(f"timer #{timer['id']} ({timer['rule']}): {note['note']}", 0, "head",
                                       ref=f"timer:{timer['id']}:note:{n}"),)))
        if timer["status"] == TimerStatus.FIRED:
            lines = [Line(f"timer #{timer['id']} ({timer['rule']}) fired: {timer['reason']}", 0, "head",
                          ref=f"timer:{timer['id']}:end")]
            for decision in decisions_by_timer.get(timer["id"], []):
                lines += _decision_lines(decision, actions_by_id, 2)
            entries.append(Entry(timer["resolved_at"], 1, "timer", tuple(lines)))
        elif timer["status"] == TimerStatus.CANCELLED and timer["resolved_by"] is None:
            entries.append(Entry(timer["resolved_at"], 1, "timer",
                                 (Line(f"timer #{timer['id']} ({timer['rule']}) cancelled: {timer['reason']}",
                                       0, "head", ref=f"timer:{timer['id']}:end"),)))

    for attempt in rows["attempts"]:
        action = actions_by_id[attempt["action_id"]]
        status = f"HTTP {attempt['http_status']}" if attempt["http_status"] else "no answer"
        text = (f"action #{action['id']} {action['kind']} attempt {attempt['number']}: {status}, "
                f"{attempt['outcome']} ({attempt['latency_ms']:.0f} ms)")
        lines = [Line(text, 0, "head", ref=f"attempt:{attempt['id']}")]
        if attempt["note"]:
            lines.append(Line(attempt["note"], 2))
        if attempt.get("doubt"):  # a 2xx whose words leave the effect in doubt (docs/videosdk.md)
            lines.append(Line(f"DOUBTFUL: {attempt['doubt']}", 2, "error"))
        if attempt["error"]:
            lines.append(Line(attempt["error"], 2, "error"))
        if attempt["next_due_at"]:
            lines.append(Line(f"next attempt at {when(attempt['next_due_at'])}", 2))
        entries.append(Entry(attempt["started_at"], 2, "attempt", tuple(lines)))

    entries.sort(key=lambda e: (e.at, e.order))
    return Story(room_id, _header(room_id, rows, now), tuple(entries), _outcome(rows, now))


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
    done = [a for a in actions if a["kind"] == "deactivate" and a["status"] == ActionStatus.DONE]
    if done:
        a = done[0]
        text = f"outcome: deactivated at {when(a['updated_at'])} by rule {a['rule']} (action #{a['id']})"
        doubts = [t["doubt"] for t in rows["attempts"] if t["action_id"] == a["id"] and t.get("doubt")]
        return text + (f", but doubtful: {doubts[-1]}" if doubts else "")
    for status, text in ((ActionStatus.PENDING, "deactivation under way"),
                         (ActionStatus.DEAD, "deactivation gave up (dead)"),
                         (ActionStatus.FAILED, "deactivation failed for good"),
                         (ActionStatus.CANCELLED, "not deactivated: cancelled"),
                         (ActionStatus.DRY_RUN, "not deactivated: dry run, it would have been")):
        found = [a for a in actions if a["kind"] == "deactivate" and a["status"] == status]
        if found:
            a = found[0]
            detail = f": {a['last_error']}" if a["last_error"] else ""
            return f"outcome: {text} (action #{a['id']}, rule {a['rule']}, {a['attempts']} attempt(s)){detail}"
    pending = [t for t in rows["timers"] if t["status"] == TimerStatus.PENDING]
    if pending:
        t = pending[0]
        return f"outcome: not deactivated yet: timer #{t['id']} ({t['rule']}) is due {when(t['due_at'])}"
    if any(d["outcome"] == Decided.PROTECTED for d in rows["decisions"]):
        return "outcome: not deactivated: the room is protected (settings.protect)"
    if not rows["deliveries"]:
        return "outcome: nothing recorded for this room"
    cancelled = [t for t in rows["timers"] if t["status"] == TimerStatus.CANCELLED]
    if cancelled:
        return f"outcome: not deactivated: its last timer was cancelled ({cancelled[-1]['reason']})"
    if not rows["decisions"]:
        total = len(rows["deliveries"])
        unread = sum(1 for d in rows["deliveries"] if d.get("problem"))
        if unread == total:
            return f"outcome: not deactivated: none of its {total} deliveries could be read (kept, not decided on)"
        if unread:
            return (f"outcome: not deactivated: no rule matched any of its {total - unread} readable deliveries; "
                    f"{unread} kept unread, not decided on")
        return f"outcome: not deactivated: no rule matched any of its {total} deliveries"
    return "outcome: not deactivated"
