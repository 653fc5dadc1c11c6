"""What an API answer means for its action: done, failed for good, retried when, or dead.

Pure: an API answer (anything shaped like `videosdk.ApiResult`), the attempt number and a random
source in; a `Verdict` out. It imports nothing of the HTTP client.

| answer                                   | verdict                                           |
|------------------------------------------|---------------------------------------------------|
| 2xx                                      | done                                              |
| 400, 402, 404, other 4xx not listed here | failed for good (bad request, room not found)     |
| 429                                      | retry after `Retry-After` (backoff if absent)     |
| 401, 403                                 | retry slowly: a credentials problem, logged loud  |
| 5xx, 406, 408, 409, 425; no HTTP answer  | retry with exponential backoff and jitter, or     |
|                                          | later if the answer's `Retry-After` says so       |
| any retry at attempt `max_attempts`      | dead: kept, never deleted, can be re-driven       |
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable, Protocol

from .outcomes import Attempt


class ApiAnswer(Protocol):
    """What the policy reads of an answer (videosdk.ApiResult has it)."""

    @property
    def status(self) -> int | None: ...  # None: no HTTP answer at all

    @property
    def retry_after(self) -> float | None: ...  # seconds, when the answer said when to come back

    @property
    def ok(self) -> bool: ...


PERMANENT = {400: "bad request", 402: "room not found", 404: "room not found"}
CREDENTIALS = {401, 403}
TRANSIENT_4XX = {406, 408, 409, 425}


@dataclass(frozen=True)
class Verdict:
    outcome: Attempt
    delay: float | None = None  # seconds until the next attempt, for retry
    reason: str | None = None
    credentials_problem: bool = False


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 10
    base_delay: float = 2.0
    max_delay: float = 600.0
    credentials_delay: float = 300.0
    max_retry_after: float = 3600.0

    def backoff(self, attempt: int, rand: Callable[[], float]) -> float:
        """Exponential in the attempt number, capped, with "equal jitter": half fixed, half random."""
        # The exponent is capped before the power: a huge attempt number must not overflow.
        ceiling = min(self.max_delay, self.base_delay * 2 ** min(max(0, attempt - 1), 64))
        return ceiling / 2 + rand() * ceiling / 2

    def judge(self, result: ApiAnswer, attempt: int, rand: Callable[[], float] = random.random) -> Verdict:
        status = result.status
        if result.ok:
            return Verdict(Attempt.DONE)
        if status in CREDENTIALS:
            verdict = Verdict(Attempt.RETRY, self.credentials_delay,
                              f"credentials refused (HTTP {status}): check VIDEOSDK_API_KEY and "
                              "VIDEOSDK_SECRET_KEY", credentials_problem=True)
        elif status == 429:
            delay = result.retry_after if result.retry_after is not None else self.backoff(attempt, rand)
            verdict = Verdict(Attempt.RETRY, min(max(delay, 0.0), self.max_retry_after), "rate limited")
        elif status is None or status >= 500 or status in TRANSIENT_4XX:
            delay = self.backoff(attempt, rand)
            if result.retry_after is not None:  # a 503 may say when to come back: honour it
                delay = min(max(result.retry_after, delay), self.max_retry_after)
            verdict = Verdict(Attempt.RETRY, delay, "transient failure")
        else:
            return Verdict(Attempt.FAILED, reason=PERMANENT.get(status, f"refused (HTTP {status})"))
        if attempt >= self.max_attempts:
            return Verdict(Attempt.DEAD, reason=f"gave up after {attempt} attempts: {verdict.reason}",
                           credentials_problem=verdict.credentials_problem)
        return verdict
