"""A circuit breaker for the VideoSDK API: stop calling while it keeps failing.

After `threshold` failures in a row (no answer, 5xx, 429, 401, 403) the circuit
opens: no action is claimed for `cooldown` seconds, so actions wait in the
outbox (none is dropped, none burns its attempts against a dead API). Then one
trial call is let through (half-open): a success closes the circuit, a failure
opens it again for twice as long, up to `max_cooldown`. Answers that show the
API working (2xx, and 4xx such as 404 that are about the room) close it.

With `probe_every`, an open circuit also probes the API on that fixed interval with a call that
changes nothing (the worker's `fetch_room`): the first answer that shows the API working closes
it, so actions flow again within `probe_every` of the API's return, however long the outage
and its cooldown have grown.

Each worker process has its own breaker; the state is not shared.
"""

from __future__ import annotations

import time
from typing import Callable, NamedTuple


PROBE_EVERY = 5.0  # seconds between an open circuit's probes: actions flow within this of the API's return


class BreakerView(NamedTuple):
    """What the breaker is doing, in seconds from now (its clock is its own): for the dashboard."""
    state: str  # closed | open | half-open
    failures: int  # in a row
    opened_ago: float | None  # since the circuit opened (None: closed)
    probe_in: float | None  # until the next probe (None: none planned)


def is_api_failure(status: int | None) -> bool:
    return status is None or status >= 500 or status in (401, 403, 429)


class CircuitBreaker:
    def __init__(self, threshold: int = 5, cooldown: float = 30.0, max_cooldown: float = 600.0,
                 clock: Callable[[], float] = time.monotonic, probe_every: float | None = None):
        self.threshold = threshold
        self.base_cooldown = cooldown
        self.max_cooldown = max_cooldown
        self.clock = clock
        self.failures = 0  # in a row
        self.opened_at: float | None = None
        self.cooldown = cooldown
        self._trial = False  # a half-open trial is out
        self.probe_every = probe_every  # None: no probes, only the half-open trial
        self.next_probe: float | None = None  # while open: when the API is probed next

    @property
    def state(self) -> str:
        if self.opened_at is None:
            return "closed"
        return "half-open" if self.clock() - self.opened_at >= self.cooldown else "open"

    def view(self) -> BreakerView:
        now = self.clock()
        if self.opened_at is None:
            return BreakerView("closed", self.failures, None, None)
        probe_in = None if self.next_probe is None else max(0.0, self.next_probe - now)
        return BreakerView(self.state, self.failures, now - self.opened_at, probe_in)

    def allow(self) -> bool:
        """Whether a call may be made now; in half-open state, only one trial at a time."""
        state = self.state
        if state == "closed":
            return True
        if state == "half-open" and not self._trial:
            self._trial = True
            return True
        return False

    def record_idle(self) -> None:
        """`allow` let a call through but none was made (nothing due, or no call needed)."""
        self._trial = False

    def record(self, status: int | None) -> None:
        """The answer to a call that `allow` let through."""
        self._trial = False
        if not is_api_failure(status):
            self.failures, self.opened_at, self.cooldown = 0, None, self.base_cooldown
            return
        self.failures += 1
        if self.opened_at is not None:  # a failed trial: open again, for longer
            self.cooldown = min(self.cooldown * 2, self.max_cooldown)
            self.opened_at = self.clock()
        elif self.failures >= self.threshold:
            self.opened_at = self.clock()
        if self.opened_at is not None and self.probe_every is not None:
            self.next_probe = self.clock() + self.probe_every

    def probe_due(self) -> bool:
        """Whether the open circuit's next probe of the API is due."""
        return self.opened_at is not None and self.next_probe is not None and self.clock() >= self.next_probe

    def probed(self, status: int | None) -> None:
        """The probe's answer: the API working closes the circuit; otherwise the next probe is
        `probe_every` from now (the cooldown is left as it is)."""
        if not is_api_failure(status):
            self.failures, self.opened_at, self.cooldown, self.next_probe = 0, None, self.base_cooldown, None
        elif self.probe_every is not None:
            self.next_probe = self.clock() + self.probe_every
