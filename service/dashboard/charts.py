"""Charts as inline SVG, drawn on the server: no script, no library, nothing fetched.

`steps` draws a count per minute as a filled step line; `dots` draws a value per
minute (attempt latency: the average and the slowest) as dots, leaving minutes
without a value empty. Both take one value per minute from `since`, label the
x axis with UTC hours and the y axis with the peak, and carry a text summary
for screen readers. Paths only change where the value does, so a quiet day is
a few bytes, and a busy one at most a few per minute.
"""

from __future__ import annotations

import math
from datetime import datetime, timezone

from markupsafe import Markup, escape

WIDTH, HEIGHT = 720, 110  # the plot area
LEFT, RIGHT, TOP, BOTTOM = 48, 8, 10, 20  # margins for the labels
TICK_HOURS = 3


def _n(value: float) -> str:
    """A coordinate, short: one decimal at most."""
    text = f"{value:.1f}"
    return text[:-2] if text.endswith(".0") else text


def _number(value: float) -> str:
    if value >= 100 or float(value).is_integer():
        return f"{value:,.0f}"
    return f"{value:,.1f}"


def _frame(values_count: int, since: float, top: float, unit: str, title: str, summary: str,
           body: str) -> Markup:
    full_w, full_h = LEFT + WIDTH + RIGHT, TOP + HEIGHT + BOTTOM
    parts = [f'<svg class="chart" viewBox="0 0 {full_w} {full_h}" role="img" '
             f'aria-label="{escape(title)}: {escape(summary)}" xmlns="http://www.w3.org/2000/svg">',
             f"<title>{escape(title)}: {escape(summary)}</title>"]
    base = TOP + HEIGHT
    parts.append(f'<line class="chart-grid" x1="{LEFT}" y1="{TOP}" x2="{LEFT + WIDTH}" y2="{TOP}"/>')
    parts.append(f'<line class="chart-axis" x1="{LEFT}" y1="{base}" x2="{LEFT + WIDTH}" y2="{base}"/>')
    parts.append(f'<text class="chart-label" x="{LEFT - 4}" y="{TOP + 4}" text-anchor="end">'
                 f"{escape(_number(top))}{escape(unit)}</text>")
    parts.append(f'<text class="chart-label" x="{LEFT - 4}" y="{base}" text-anchor="end">0</text>')
    span = values_count * 60
    first = math.ceil(since / 3600) * 3600
    for tick in range(int(first), int(since + span) + 1, 3600):
        hour = datetime.fromtimestamp(tick, timezone.utc).hour
        if hour % TICK_HOURS:
            continue
        x = LEFT + (tick - since) / span * WIDTH
        parts.append(f'<line class="chart-grid" x1="{_n(x)}" y1="{TOP}" x2="{_n(x)}" y2="{base}"/>')
        parts.append(f'<text class="chart-label" x="{_n(x)}" y="{base + 14}" text-anchor="middle">'
                     f"{hour:02d}:00</text>")
    parts.append(body)
    parts.append("</svg>")
    return Markup("".join(parts))


def steps(values: list[int], since: float, *, title: str, unit: str = "/min") -> Markup:
    """Counts per minute as a filled step chart."""
    count = len(values)
    peak = max(values, default=0)
    total = sum(values)
    summary = (f"{total:,} in the last {count // 60} h, at most {peak:,} a minute" if total
               else f"none in the last {count // 60} h")
    if not total:
        return _frame(count, since, 1, unit, title, summary,
                      f'<text class="chart-empty" x="{LEFT + WIDTH / 2}" y="{TOP + HEIGHT / 2}" '
                      f'text-anchor="middle">nothing in the last {count // 60} h</text>')
    step = WIDTH / count
    base = TOP + HEIGHT
    path, previous = [f"M{LEFT} {base}"], 0
    for i, value in enumerate(values):
        if value != previous:
            y = base - value / peak * HEIGHT
            path.append(f"H{_n(LEFT + i * step)}V{_n(y)}")
            previous = value
    path.append(f"H{LEFT + WIDTH}V{base}Z")
    return _frame(count, since, peak, unit, title, summary,
                  f'<path class="chart-area" d="{"".join(path)}"/>')


def dots(average: list[float | None], slowest: list[float | None], since: float, *, title: str,
         unit: str = " ms") -> Markup:
    """A value per minute as dots: the slowest in a light tone, the average in a dark one."""
    count = len(average)
    seen = [v for v in slowest if v is not None]
    if not seen:
        return _frame(count, since, 1, unit, title, "no attempts in the last 24 h",
                      f'<text class="chart-empty" x="{LEFT + WIDTH / 2}" y="{TOP + HEIGHT / 2}" '
                      f'text-anchor="middle">no attempts in the last {count // 60} h</text>')
    peak = max(seen) or 1.0
    step = WIDTH / count
    base = TOP + HEIGHT

    def path(series: list[float | None]) -> str:
        return "".join(f"M{_n(LEFT + (i + 0.5) * step)} {_n(base - v / peak * HEIGHT)}h0"
                       for i, v in enumerate(series) if v is not None)

    averages = [v for v in average if v is not None]
    summary = (f"{len(seen)} minute(s) with attempts; average {_number(sum(averages) / len(averages))} ms, "
               f"slowest {_number(max(seen))} ms")
    return _frame(count, since, peak, unit, title, summary,
                  f'<path class="chart-dots chart-dots-max" d="{path(slowest)}"/>'
                  f'<path class="chart-dots chart-dots-avg" d="{path(average)}"/>')


SPARK_W, SPARK_H = 120, 24


def sparkline(values: list[int | None], *, hours: float, title: str, now: int | None = None) -> Markup:
    """A small head-count chart for a table cell: one value per bucket (its peak), None where
    nothing is known (drawn as a dashed base line); the peak fills the height. `now`: the count
    the room's state holds, for the summary (a bucket's peak is not the count now)."""
    known = [v for v in values if v is not None]
    peak = max(known, default=0)
    hours_text = _number(hours)
    if not known:
        summary = f"no head counts recorded in the last {hours_text} h"
    else:
        summary = (f"at most {peak:,} in the last {hours_text} h"
                   + (f", {now:,} now" if now is not None else ""))
    parts = [f'<svg class="spark" viewBox="0 0 {SPARK_W} {SPARK_H}" role="img" aria-label="{escape(title)}: '
             f'{escape(summary)}" xmlns="http://www.w3.org/2000/svg"><title>{escape(title)}: {escape(summary)}</title>']
    base, step = SPARK_H - 1, SPARK_W / max(len(values), 1)
    parts.append(f'<line class="spark-base" x1="0" y1="{base}" x2="{SPARK_W}" y2="{base}"/>')
    if not peak:
        css = "spark-none" if not known else "spark-area"
        parts.append(f'<line class="{css}" x1="0" y1="{base}" x2="{SPARK_W}" y2="{base}"/>')
    else:
        path, previous, started = [], None, False
        for i, value in enumerate(values):
            if value is None:
                continue
            if not started:
                path.append(f"M{_n(i * step)} {base}")
                started = True
            if value != previous:
                path.append(f"H{_n(i * step)}V{_n(base - value / peak * (SPARK_H - 3))}")
                previous = value
        path.append(f"H{SPARK_W}V{base}Z")
        parts.append(f'<path class="spark-area" d="{"".join(path)}"/>')
    parts.append("</svg>")
    return Markup("".join(parts))
