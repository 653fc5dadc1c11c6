"""A circuit breaker for the VideoSDK API: stop calling while it keeps failing.

After `threshold` failures in a row (no answer, 5xx, 429, 401, 403) the circuit
opens: no action is claimed for `cooldown` seconds, so actions wait in the
outbox (none is dropped, none burns its attempts against a dead API). Then one
trial call is let through (half-open): a success closes the circuit, a failure
opens it again for twice as long, up to `max_cooldown`. Answers that show the
API working (2xx, and 4xx such as 404 that are about the room) close it.

Each worker process has its own breaker; the state is not shared.
"""

from __future__ import annotations

import time
from typing import Callable


def is_api_failure(status: int | None) -> bool:
    return status is None or status >= 500 or status in (401, 403, 429)


class CircuitBreaker:
    def __init__(self, threshold: int = 5, cooldown: float = 30.0, max_cooldown: float = 600.0,
                 clock: Callable[[], float] = time.monotonic):
        self.threshold = threshold
        self.base_cooldown = cooldown
        self.max_cooldown = max_cooldown
        self.clock = clock
        self.failures = 0  # in a row
        self.opened_at: float | None = None
        self.cooldown = cooldown
        self._trial = False  # a half-open trial is out

    @property
    def state(self) -> str:
        if self.opened_at is None:
            return "closed"
        return "half-open" if self.clock() - self.opened_at >= self.cooldown else "open"

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
