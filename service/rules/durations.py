"""Durations as rules write them: `90s`, `5m`, `2h`, `1d`, combined as `1h30m`, or plain seconds."""

from __future__ import annotations

import math
import re

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
DURATION_FORM = re.compile(r"^(?:(\d+(?:\.\d+)?)([smhd]))+\Z")
_PART = re.compile(r"(\d+(?:\.\d+)?)([smhd])")


def parse_duration(value) -> float:
    """Seconds, from a number or a duration string. Raises ValueError with a readable message."""
    if isinstance(value, bool):
        raise ValueError("a duration is a number of seconds or a string such as 90s, 5m, 2h, 1d")
    if isinstance(value, (int, float)):
        try:
            seconds = float(value)
        except OverflowError:  # an int too large for a float
            seconds = math.inf
        if not math.isfinite(seconds) or seconds < 0:
            raise ValueError("a duration must be a finite number of seconds, not negative")
        return seconds
    if isinstance(value, str) and DURATION_FORM.match(value.strip()):
        seconds = float(sum(float(n) * _UNITS[u] for n, u in _PART.findall(value.strip())))
        if not math.isfinite(seconds):
            raise ValueError(f"{value!r} is too long a duration")
        return seconds
    raise ValueError(f"{value!r} is not a duration; write it as 90s, 5m, 2h, 1d or 1h30m")


def format_duration(seconds: float) -> str:
    """`330` -> `5m30s`; the inverse of parse_duration for whole seconds."""
    seconds = int(round(seconds))
    if seconds == 0:
        return "0s"
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        count, seconds = divmod(seconds, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)
