"""A room's story as a picture: inline SVG drawn on the server, no script (pure).

Rows, top to bottom, on one time axis:

- sessions, as bands from start to end;
- how many were in the room, as a step area;
- a lane per participant, a bar for each stay (joined to left), while there are at
  most `LANES` of them; beyond that the lanes collapse into the count above, and a
  line says so;
- a lane per rule's `for:` timers, each a span from start to fire or cancel, ended by
  a mark for how it ended;
- marks for the room's deliveries, its decisions, the sweeps that looked at it and
  the attempts at VideoSDK, shaped and coloured by outcome;
- "now", as a line (or, when now is far past the story, a note at the right edge).

Every mark carries an SVG `<title>` (what hovering shows) holding the line
`python -m service explain` prints for it, and links to that entry in the story
below. Marks in one column a few pixels wide (and bars too thin to tell apart) are
drawn as one, whose title lists the weightiest of them and how many more: the
picture's size grows with its width, not with the room's history, so a room with
thousands of deliveries stays readable and small.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timezone

from markupsafe import Markup, escape

from .. import explain
from ..events import SWEEP
from ..outcomes import Decided, TimerStatus, makes_action
from ..presence import Presence, Span
from ..rules.durations import format_duration

WIDTH = 960
LABEL = 140  # the lanes' names, left of the plot
PLOT = WIDTH - LABEL - 20
AXIS = 42  # the range, the time axis's labels, then the rows
LANES = 24  # participant lanes drawn; past this, the lanes collapse into the head count
BIN = 5.0  # pixels: marks closer than this are drawn as one
MERGED_TITLES = 5  # lines a merged mark's title lists before "and N more" (they are most of a big room's picture)
DAY = 86400
TICKS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, DAY,
         2 * DAY, 7 * DAY, 14 * DAY, 28 * DAY, 91 * DAY, 182 * DAY, 365 * DAY, 730 * DAY, 1825 * DAY)
MAX_TICKS = 8
MIN_SPAN = 10.0  # seconds: the shortest axis


@dataclass(frozen=True)
class Mark:
    at: float
    kind: str  # its CSS class: mark-<kind>
    entry: explain.Entry  # the story entry it links to
    line: explain.Line  # the line it shows
    rank: int = 0  # which kind a merged mark takes (and whose line comes first): the highest

    @property
    def title(self) -> str:
        """The line as explain prints it (made only for the marks whose titles are drawn)."""
        return explain.printed(self.entry, self.line).strip()


@dataclass(frozen=True)
class Scale:
    start: float
    end: float
    beyond: float | None  # how far past `end` now is, when the axis stops short of it
    before: float | None = None  # how far before `start` now is (a clock behind the story's)

    def x(self, t: float) -> float:
        return LABEL + (min(max(t, self.start), self.end) - self.start) / (self.end - self.start) * PLOT


def _n(value: float) -> str:
    text = f"{value:.1f}"
    return text[:-2] if text.endswith(".0") else text


def draw(story: explain.Story, rows: dict[str, list[dict]], presence: Presence, now: float,
         link) -> Markup:
    """The timeline as one <svg>. `link(anchor)` is the href that shows a story entry (the
    page may hide the earliest entries; the link then asks for all of them)."""
    refs = story.refs()
    scale = _scale(story, presence, now)
    out: list[str] = []
    y = AXIS

    def title(ref: str) -> str | None:
        found = refs.get(ref)
        return explain.printed(*found).strip() if found else None

    def anchor(ref: str) -> str:
        found = refs.get(ref)
        return found[0].anchor if found else ""

    def href(ref: str) -> str:
        found = anchor(ref)
        return link(found) if found else ""

    def lane_label(text: str, top: float, height: float, css: str = "tl-label") -> None:
        out.append(f'<text class="{css}" x="{LABEL - 8}" y="{_n(top + height / 2 + 4)}" text-anchor="end">'
                   f"{escape(_clip(text, 20))}</text>")

    # Sessions.
    height = 14
    lane_label("sessions", y, height)
    out.extend(_bars([_bar(scale, band, "tl-session", now, _titles(title, band, "session"),
                           href(f"delivery:{band.start_delivery}")) for band in presence.sessions], y + 1, height - 2))
    y += height + 6

    # Head count.
    height = 36
    peak = presence.peak
    lane_label(f"in the room (≤{peak})", y, height)
    out.append(_count_area(scale, presence, y, height, now))
    y += height + 6

    # Participants.
    people = presence.participants
    if len(people) > LANES:
        lane_label(f"{len(people):,} participants", y, 14, "tl-label tl-collapsed")
        out.append(f'<text class="tl-note" x="{LABEL}" y="{y + 11}">lanes collapsed into the count above: '
                   f"more than {LANES} participants</text>")
        y += 20
    else:
        by_who: dict[str, list[Span]] = {}
        for stay in presence.stays:
            by_who.setdefault(stay.who, []).append(stay)
        for who in people:
            lane_label(who, y, 10, "tl-label tl-person")
            out.extend(_bars([_bar(scale, stay, "tl-stay", now, _titles(title, stay, "participant"),
                                   href(f"delivery:{stay.start_delivery}")) for stay in by_who[who]], y, 10))
            y += 13
        y += 3

    # Timers, a lane per rule.
    timers_by_rule: dict[str, list[dict]] = {}
    for timer in rows["timers"]:
        timers_by_rule.setdefault(timer["rule"], []).append(timer)
    for rule, timers in timers_by_rule.items():
        lane_label(f"timer {rule}", y, 12, "tl-label tl-timer-label")
        spans, ends = [], []
        for timer in timers:
            end = None  # pending: the span runs to now
            if timer["status"] != TimerStatus.PENDING:  # resolved (a resolved one without a time: a point)
                end = timer["resolved_at"] if timer["resolved_at"] is not None else timer["started_at"]
            start_title = title(f"timer:{timer['id']}:start")
            end_title = title(f"timer:{timer['id']}:end")
            css = {TimerStatus.FIRED: "fired", TimerStatus.CANCELLED: "cancelled"}.get(timer["status"], "pending")
            span = Span(str(timer["id"]), timer["started_at"], end, timer["delivery_id"], None)
            spans.append(_bar(scale, span, f"tl-timer tl-timer-{css}", now,
                              "\n".join(filter(None, (start_title, end_title))) or None,
                              href(f"timer:{timer['id']}:start"), {"fired": 2, "cancelled": 1}.get(css, 0)))
            found = refs.get(f"timer:{timer['id']}:end")
            if end is not None and found is not None:
                ends.append(Mark(end, f"timer-{css}", *found, 2 if css == "fired" else 1))
        out.extend(_bars(spans, y + 3, 6))
        out.extend(_marks(scale, ends, y + 6, link))
        y += 16

    # Deliveries, decisions, sweeps, attempts.
    marks = _story_marks(story, rows)

    for name, kind in (("deliveries", "delivery"), ("decisions", "decision"), ("sweeps", "sweep"),
                       ("attempts", "attempt")):
        row = marks[kind]
        if not row and kind == "sweep":
            continue
        lane_label(name, y, 14)
        out.append(f'<line class="tl-rail" x1="{LABEL}" y1="{y + 7}" x2="{LABEL + PLOT}" y2="{y + 7}"/>')
        out.extend(_marks(scale, row, y + 7, link))
        y += 18

    return _frame(scale, story, presence, now, y, "".join(out))


def notes(presence: Presence) -> list[str]:
    """What the picture leaves out or cannot vouch for, said under it."""
    out = []
    if presence.left_out:
        out.append(f"The lanes start at {explain.when(presence.since)}, the retention horizon (RETENTION_DAYS): "
                   f"retention may have pruned deliveries before it, and what it kept would tell a wrong story "
                   f"({presence.left_out:,} deliveries, listed in the story below). Anyone already in the room "
                   f"then has no lane for that stay; the head count is the decider's, and counts them.")
    if presence.disagree:
        out.append(f"The lanes disagree with the head count the decider wrote after {presence.disagree:,} "
                   f"deliveries (the first: {presence.first_disagreement}): a hole in the record, or deliveries "
                   f"the store cannot put in order. The count drawn is the decider's.")
    return out


def _scale(story: explain.Story, presence: Presence, now: float) -> Scale:
    """From the story's first moment to now; or, when now is far past the story (more than half
    its length again), to just past its last moment, with a note of how far now is."""
    times = [e.at for e in story.entries] + [s.start for s in presence.stays]
    times += [s.end for s in presence.stays if s.end is not None]
    if not times:
        return Scale(now - MIN_SPAN, now, None)
    first, last = min(times), max(times)
    length = max(last - first, MIN_SPAN)
    end = max(now, last) if now - last <= length * 0.5 else last + length * 0.05
    end = max(end, first + MIN_SPAN)
    start = first - (end - first) * 0.02
    return Scale(start, end, now - end if now > end else None, start - now if now < start else None)


def _frame(scale: Scale, story: explain.Story, presence: Presence, now: float, height: float,
           body: str) -> Markup:
    total = height + 6
    span = scale.end - scale.start
    step = next((s for s in TICKS if span / s <= MAX_TICKS), TICKS[-1])
    fmt = "%H:%M:%S" if step < 60 else "%H:%M" if step < DAY else "%m-%d" if step < 28 * DAY else "%Y-%m"
    summary = (f"room {story.room_id} from {explain.when(scale.start)} to {explain.when(scale.end)}: "
               f"{len(presence.sessions)} session(s), {len(presence.participants)} participant(s), "
               f"at most {presence.peak} at once; {len(story.entries)} story entries")
    parts = [f'<svg class="timeline" viewBox="0 0 {WIDTH} {_n(total)}" role="group" '
             f'aria-label="{escape(summary)}" xmlns="http://www.w3.org/2000/svg">',
             f"<desc>{escape(summary)}</desc>",
             f'<text class="tl-range" x="{LABEL}" y="13">{escape(explain.when(scale.start))} to '
             f"{escape(explain.when(scale.end))} (UTC)</text>"]
    first = math.ceil(scale.start / step) * step
    tick = first
    while tick <= scale.end:
        x = _n(scale.x(tick))
        label = datetime.fromtimestamp(tick, timezone.utc).strftime(fmt)
        parts.append(f'<line class="tl-grid" x1="{x}" y1="{AXIS - 6}" x2="{x}" y2="{_n(height)}"/>'
                     f'<text class="tl-tick" x="{x}" y="{AXIS - 9}" text-anchor="middle">{label}</text>')
        tick += step
    parts.append(body)
    if scale.before is not None:
        parts.append(f'<text class="tl-now-label" x="{LABEL}" y="{_n(height + 4)}">'
                     f"← now is {escape(format_duration(scale.before))} before the picture begins (a clock behind?)"
                     f"<title>now: {escape(explain.when(now))}</title></text>")
    elif scale.beyond is None:
        x = _n(scale.x(now))
        parts.append(f'<line class="tl-now" x1="{x}" y1="{AXIS - 4}" x2="{x}" y2="{_n(height)}">'
                     f"<title>now: {escape(explain.when(now))}</title></line>"
                     f'<text class="tl-now-label" x="{x}" y="{_n(height + 4)}" text-anchor="middle">now</text>')
    else:
        parts.append(f'<text class="tl-now-label" x="{LABEL + PLOT}" y="12" text-anchor="end">'
                     f"now is {escape(format_duration(scale.beyond))} later →"
                     f"<title>now: {escape(explain.when(now))}</title></text>")
    parts.append("</svg>")
    return Markup("".join(parts))


def _clip(text: str, size: int) -> str:
    return text if len(text) <= size else text[: size - 1] + "…"


def _titles(title, span: Span, what: str) -> str | None:
    began = title(f"delivery:{span.start_delivery}")
    ended = title(f"delivery:{span.end_delivery}") if span.end_delivery else None
    if began is None and ended is None:
        return None
    still = "" if span.end is not None else f"({what} still in the room)" if what == "participant" else \
        f"({what} still live)"
    return "\n".join(filter(None, (began, ended, still)))


def _link(href: str, inner: str, title: str | None) -> str:
    head = f"<title>{escape(title)}</title>" if title else ""
    if not href:
        return f"<g>{head}{inner}</g>"
    return f'<a href="{escape(href)}">{head}{inner}</a>'


@dataclass(frozen=True)
class Bar:
    x1: float
    x2: float  # drawn at least MIN_BAR wide
    width: float  # as wide as the span is at this scale (what decides whether it merges)
    css: str
    title: str | None
    href: str
    rank: int = 0  # which class a merged bar takes, and whose title and link come first: the highest


MIN_BAR = 1.5  # pixels: the thinnest bar drawn


def _bar(scale: Scale, span: Span, css: str, now: float, title: str | None, href: str, rank: int = 0) -> Bar:
    x1 = scale.x(span.start)
    x2 = scale.x(span.end if span.end is not None else now)
    return Bar(x1, max(x2, x1 + MIN_BAR), x2 - x1, css + (" tl-open" if span.end is None else ""), title,
               href, rank)


def _bars(bars: list[Bar], top: float, height: float) -> list[str]:
    """A lane's bars, each a rect with its title and link. Bars too thin to tell apart (narrower
    than MIN_BAR; than BIN, when the lane has more than 60) that begin within that many pixels of
    the first of a run are drawn as one, no wider than twice that, whose title lists the
    weightiest few and how many there are; wider bars are drawn each on its own. A lane costs at
    most its width over that many pixels in merged bars, and its gaps stay visible."""
    gap = MIN_BAR if len(bars) <= 60 else BIN
    runs: list[list[Bar]] = []
    for bar in sorted(bars, key=lambda b: b.x1):
        thin = bar.width < gap
        if runs and thin and runs[-1][0].width < gap and bar.x1 - runs[-1][0].x1 < gap:
            runs[-1].append(bar)
        else:
            runs.append([bar])
    out = []
    for run in runs:
        x1, x2 = run[0].x1, max(b.x2 for b in run)
        run.sort(key=lambda b: (-b.rank, b.x1))  # the weightiest first: its colour, title and link
        lead = run[0]
        if len(run) == 1:
            css, title = lead.css, lead.title
        else:
            shown = [b.title for b in run[:MERGED_TITLES // 2] if b.title]
            more = len(run) - len(shown)
            css = lead.css + " tl-merged"
            title = f"{len(run)} here:\n" + "\n".join(shown) + (f"\n… and {more} more" if more else "")
        rect = (f'<rect class="{css}" x="{_n(x1)}" y="{_n(top)}" width="{_n(x2 - x1)}" '
                f'height="{_n(height)}"/>')
        out.append(_link(lead.href, rect, title))
    return out


def _marks(scale: Scale, marks: list[Mark], middle: float, link) -> list[str]:
    """Marks on a row, each a shape by kind; the marks in one column BIN pixels wide are drawn as
    one (at their mean), whose title lists the weightiest few and how many there are."""
    bins: dict[int, list[Mark]] = {}
    for mark in marks:
        bins.setdefault(int(scale.x(mark.at) // BIN), []).append(mark)
    out = []
    for group in bins.values():
        group.sort(key=lambda m: (-m.rank, m.at))  # the weightiest first: its colour, line and link
        lead = group[0]
        x = scale.x(lead.at) if len(group) == 1 else sum(scale.x(m.at) for m in group) / len(group)
        if len(group) == 1:
            text = lead.title
            radius = 3.5
        else:
            shown = [m.title for m in group[:MERGED_TITLES]]
            more = len(group) - len(shown)
            text = f"{len(group)} marks here:\n" + "\n".join(shown) + (f"\n… and {more} more" if more else "")
            radius = 5
        shape = (f'<circle class="mark mark-{lead.kind}{" mark-many" if len(group) > 1 else ""}" '
                 f'cx="{_n(x)}" cy="{_n(middle)}" r="{radius}"/>')
        out.append(_link(link(lead.entry.anchor), shape, text))
    return out


def _count_area(scale: Scale, presence: Presence, top: float, height: float, now: float) -> str:
    """The head count as a step area, one step a pixel at most: each pixel column drawn at the
    most that were in the room during it, so a busy room's path has the plot's width, not a
    step per delivery, and no peak is lost."""
    base = top + height
    peak = presence.peak
    out = [f'<line class="tl-rail" x1="{LABEL}" y1="{_n(base)}" x2="{LABEL + PLOT}" y2="{_n(base)}"/>']
    if not presence.counts or not peak:
        return "".join(out)
    columns: dict[int, int] = {}
    ends = [at for at, _ in presence.counts[1:]] + [max(now, presence.counts[-1][0])]
    for (at, count), until in zip(presence.counts, ends):
        for column in range(int(scale.x(at)), int(scale.x(until)) + 1):
            if count > columns.get(column, -1):
                columns[column] = count
    first = min(columns)
    path, previous = [f"M{first} {_n(base)}"], None
    for column in range(first, max(columns) + 1):
        count = columns.get(column, 0)
        if count != previous:
            path.append(f"H{column}V{_n(base - count / peak * height)}")
            previous = count
    path.append(f"H{max(columns) + 1}V{_n(base)}Z")
    now_count = presence.counts[-1][1]
    out.append(f'<path class="tl-count" d="{"".join(path)}"><title>in the room: at most {peak} at once, '
               f"{now_count} at the end</title></path>")
    return "".join(out)


def _story_marks(story: explain.Story, rows: dict[str, list[dict]]) -> dict[str, list[Mark]]:
    """The marks of the story's deliveries, decisions, sweeps and attempts, from explain's lines."""
    deliveries = {d["id"]: d for d in rows["deliveries"]}
    decisions = {d["id"]: d for d in rows["decisions"]}
    attempts = {a["id"]: a for a in rows["attempts"]}
    marks: dict[str, list[Mark]] = {"delivery": [], "decision": [], "sweep": [], "attempt": []}
    for entry in story.entries:
        for line in entry.lines:
            if not line.ref:
                continue
            kind, _, key = line.ref.partition(":")
            if kind == "delivery":
                d = deliveries.get(key)
                if d is None:
                    continue
                if d["event_type"] == SWEEP:
                    marks["sweep"].append(Mark(entry.at, "sweep", entry, line))
                else:
                    css = ("unread" if d.get("problem") else "unverified" if not d["verified"]
                           else "delivery" if d["known"] else "unknown")
                    marks["delivery"].append(Mark(entry.at, css, entry, line,
                                                  2 if css in ("unread", "unverified") else 0))
            elif kind == "decision":
                outcome = decisions[int(key)]["outcome"]
                css, rank = (("act", 3) if makes_action(outcome) else ("started", 2)
                             if outcome == Decided.TIMER_STARTED else ("quiet", 0))
                marks["decision"].append(Mark(entry.at, css, entry, line, rank))
            elif kind == "attempt":
                outcome = attempts[int(key)]["outcome"]
                css, rank = {"done": ("done", 1), "retry": ("retry", 2)}.get(outcome, ("failed", 3))
                marks["attempt"].append(Mark(entry.at, css, entry, line, rank))
    return marks
