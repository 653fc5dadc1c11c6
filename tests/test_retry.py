"""RetryPolicy: what each API answer means for its action. Pure: no I/O, a deterministic rand."""

from __future__ import annotations

import pytest

from service.retrypolicy import RetryPolicy, Verdict
from service.videosdk import ApiResult

POLICY = RetryPolicy()  # max_attempts 10, base 2 s, cap 600 s, credentials 300 s, Retry-After cap 3600 s
HALF = lambda: 0.5  # noqa: E731  backoff = 3/4 of the ceiling
CREDENTIALS_REASON = "check VIDEOSDK_API_KEY and VIDEOSDK_SECRET_KEY"


def answer(status: int | None, retry_after: float | None = None) -> ApiResult:
    return ApiResult(status, 12.5, None if status is not None and 200 <= status < 300 else "why",
                     retry_after)


def backoff(attempt: int) -> float:
    """What POLICY.backoff gives with HALF, written out: 3/4 of min(600, 2 * 2**(attempt-1))."""
    return min(600.0, 2.0 * 2 ** max(0, attempt - 1)) * 0.75


# Each row: (status, retry_after, attempt) -> the exact Verdict, for an attempt below max_attempts.
JUDGE = {
    # 2xx: done
    "200": ((200, None, 1), Verdict("done")),
    "201": ((201, None, 3), Verdict("done")),
    "204": ((204, None, 1), Verdict("done")),
    "299": ((299, None, 1), Verdict("done")),
    # 2xx with a Retry-After is still done
    "200-retry-after": ((200, 30.0, 1), Verdict("done")),
    # 400: bad request, failed for good
    "400": ((400, None, 1), Verdict("failed", reason="bad request")),
    # 402: VideoSDK's "room not found" (a customRoomId, say), failed for good
    "402": ((402, None, 1), Verdict("failed", reason="room not found")),
    # 404: room not found, failed for good
    "404": ((404, None, 2), Verdict("failed", reason="room not found")),
    # other 4xx not listed: failed for good, naming the status
    "405": ((405, None, 1), Verdict("failed", reason="refused (HTTP 405)")),
    "410": ((410, None, 1), Verdict("failed", reason="refused (HTTP 410)")),
    "413": ((413, None, 1), Verdict("failed", reason="refused (HTTP 413)")),
    "418": ((418, None, 1), Verdict("failed", reason="refused (HTTP 418)")),
    "422": ((422, None, 1), Verdict("failed", reason="refused (HTTP 422)")),
    "451": ((451, None, 1), Verdict("failed", reason="refused (HTTP 451)")),
    # a Retry-After on a permanent refusal changes nothing
    "404-retry-after": ((404, 5.0, 1), Verdict("failed", reason="room not found")),
    # 406 (upstream fetch failure), 408, 409 (conflict), 425: transient, backoff
    "406": ((406, None, 1), Verdict("retry", backoff(1), "transient failure")),
    "408": ((408, None, 2), Verdict("retry", backoff(2), "transient failure")),
    "409": ((409, None, 3), Verdict("retry", backoff(3), "transient failure")),
    "425": ((425, None, 4), Verdict("retry", backoff(4), "transient failure")),
    # 429 with Retry-After: exactly that delay
    "429-retry-after": ((429, 7.0, 1), Verdict("retry", 7.0, "rate limited")),
    # 429 with Retry-After 0: now
    "429-retry-after-0": ((429, 0.0, 1), Verdict("retry", 0.0, "rate limited")),
    # 429 with a negative Retry-After (cannot come from the client, but guarded): now
    "429-negative": ((429, -5.0, 1), Verdict("retry", 0.0, "rate limited")),
    # 429 without Retry-After: backoff
    "429-no-retry-after": ((429, None, 1), Verdict("retry", backoff(1), "rate limited")),
    "429-no-retry-after-5": ((429, None, 5), Verdict("retry", backoff(5), "rate limited")),
    # 429 with a huge Retry-After: capped at max_retry_after
    "429-huge": ((429, 10_000_000.0, 1), Verdict("retry", 3600.0, "rate limited")),
    # 429 with an infinite Retry-After (a 400-digit header): capped too
    "429-infinite": ((429, float("inf"), 1), Verdict("retry", 3600.0, "rate limited")),
    # 429 just under the cap: kept
    "429-under-cap": ((429, 3599.0, 1), Verdict("retry", 3599.0, "rate limited")),
    # 401: credentials, slow fixed delay, flagged
    "401": ((401, None, 1), Verdict("retry", 300.0, "credentials refused (HTTP 401): " + CREDENTIALS_REASON,
                                    credentials_problem=True)),
    # 403: wrong role or version, same treatment
    "403": ((403, None, 4), Verdict("retry", 300.0, "credentials refused (HTTP 403): " + CREDENTIALS_REASON,
                                    credentials_problem=True)),
    # a Retry-After on 401 does not shorten the credentials delay
    "401-retry-after": ((401, 1.0, 1), Verdict("retry", 300.0, "credentials refused (HTTP 401): "
                                               + CREDENTIALS_REASON, credentials_problem=True)),
    # 5xx: transient, backoff
    "500": ((500, None, 1), Verdict("retry", backoff(1), "transient failure")),
    "502": ((502, None, 2), Verdict("retry", backoff(2), "transient failure")),
    "503": ((503, None, 3), Verdict("retry", backoff(3), "transient failure")),
    "504": ((504, None, 6), Verdict("retry", backoff(6), "transient failure")),
    "599": ((599, None, 1), Verdict("retry", backoff(1), "transient failure")),
    # 5xx with Retry-After: honoured, as for 429
    "503-retry-after": ((503, 120.0, 1), Verdict("retry", 120.0, "transient failure")),
    # no HTTP answer (timeout, refused, garbage): transient, backoff
    "none": ((None, None, 1), Verdict("retry", backoff(1), "transient failure")),
    "none-9": ((None, None, 9), Verdict("retry", backoff(9), "transient failure")),
}


@pytest.mark.parametrize("given, expected", JUDGE.values(), ids=JUDGE.keys())
def test_judge(given, expected):
    status, retry_after, attempt = given

    verdict = POLICY.judge(answer(status, retry_after), attempt, HALF)

    assert verdict == expected


def test_credentials_verdict_says_what_to_check():
    verdict = POLICY.judge(answer(401), 1, HALF)

    assert verdict.credentials_problem
    assert "credentials" in verdict.reason
    assert "VIDEOSDK_SECRET_KEY" in verdict.reason


def test_only_credentials_answers_are_flagged():
    flagged = {status for status in [None, *range(200, 600)]
               if POLICY.judge(answer(status), 1, HALF).credentials_problem}

    assert flagged == {401, 403}


def test_custom_delays_are_used():
    policy = RetryPolicy(credentials_delay=42.0, max_retry_after=10.0)

    assert policy.judge(answer(403), 1, HALF).delay == 42.0
    assert policy.judge(answer(429, 11.0), 1, HALF).delay == 10.0
    assert policy.judge(answer(429, 9.0), 1, HALF).delay == 9.0


# -- backoff -----------------------------------------------------------------------------------

# Each row: (attempt, rand value) -> delay, for the default policy (base 2 s, cap 600 s).
BACKOFF = [
    (1, 0.0, 1.0),       # ceiling 2: half fixed, no random part
    (1, 1.0, 2.0),       # ceiling 2: the whole ceiling at the top of the random range
    (1, 0.5, 1.5),       # ceiling 2: halfway
    (2, 0.0, 2.0),       # ceiling 4
    (3, 0.0, 4.0),       # ceiling 8
    (4, 0.5, 12.0),      # ceiling 16
    (9, 0.0, 256.0),     # ceiling 512
    (10, 0.0, 300.0),    # ceiling 1024 capped at 600
    (10, 1.0, 600.0),    # never above the cap
    (30, 0.5, 450.0),    # far past the cap: still capped
    (0, 0.0, 1.0),       # attempt 0 counts as the first
]


@pytest.mark.parametrize("attempt, rand_value, delay", BACKOFF)
def test_backoff(attempt, rand_value, delay):
    assert POLICY.backoff(attempt, lambda: rand_value) == delay


def test_backoff_grows_until_the_cap_then_stays():
    delays = [POLICY.backoff(attempt, HALF) for attempt in range(1, 16)]

    assert delays[:9] == [1.5, 3.0, 6.0, 12.0, 24.0, 48.0, 96.0, 192.0, 384.0]  # doubles
    assert delays[9:] == [450.0] * 6  # 3/4 of the 600 s cap
    assert all(a <= b for a, b in zip(delays, delays[1:]))


def test_backoff_stays_within_half_and_whole_ceiling():
    for attempt in range(1, 40):
        ceiling = min(600.0, 2.0 * 2 ** (attempt - 1))
        low = POLICY.backoff(attempt, lambda: 0.0)
        high = POLICY.backoff(attempt, lambda: 0.999999)
        assert low == ceiling / 2
        assert ceiling / 2 <= high < ceiling


def test_backoff_with_sdk_like_settings():
    policy = RetryPolicy(base_delay=1.0, max_delay=8.0)  # VideoSDK's SDK: 1, 2, 4, 8 s capped

    assert [policy.backoff(a, lambda: 1.0) for a in range(1, 7)] == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]


def test_judge_passes_its_rand_to_backoff():
    low = POLICY.judge(answer(500), 3, lambda: 0.0)
    high = POLICY.judge(answer(500), 3, lambda: 1.0)

    assert (low.delay, high.delay) == (4.0, 8.0)


def test_judge_defaults_to_a_real_random_source_within_bounds():
    delays = {POLICY.judge(answer(None), 2).delay for _ in range(50)}

    assert all(2.0 <= d <= 4.0 for d in delays)
    assert len(delays) > 1  # jittered


def test_backoff_does_not_overflow_for_a_large_max_attempts():
    policy = RetryPolicy(max_attempts=5000)  # ACTION_MAX_ATTEMPTS has no upper bound

    verdict = policy.judge(answer(500), 1100, HALF)

    assert verdict == Verdict("retry", 450.0, "transient failure")


# -- dead at max_attempts -----------------------------------------------------------------------

SMALL = RetryPolicy(max_attempts=3)

# Each row: an answer -> (verdict outcome at attempt 2, at attempt 3 = max, at attempt 4 > max).
AT_THE_LIMIT = {
    # retryable answers die at max_attempts
    "500": (answer(500), ("retry", "dead", "dead")),
    "none": (answer(None), ("retry", "dead", "dead")),
    "409": (answer(409), ("retry", "dead", "dead")),
    "429": (answer(429, 7.0), ("retry", "dead", "dead")),
    "429-no-header": (answer(429), ("retry", "dead", "dead")),
    "401": (answer(401), ("retry", "dead", "dead")),
    "403": (answer(403), ("retry", "dead", "dead")),
    # answers that are not retried are never dead
    "200": (answer(200), ("done", "done", "done")),
    "400": (answer(400), ("failed", "failed", "failed")),
    "402": (answer(402), ("failed", "failed", "failed")),
    "404": (answer(404), ("failed", "failed", "failed")),
    "422": (answer(422), ("failed", "failed", "failed")),
}


@pytest.mark.parametrize("result, outcomes", AT_THE_LIMIT.values(), ids=AT_THE_LIMIT.keys())
def test_dead_at_max_attempts_for_retryable_answers_only(result, outcomes):
    got = tuple(SMALL.judge(result, attempt, HALF).outcome for attempt in (2, 3, 4))

    assert got == outcomes


# Each row: a retryable answer -> the reason and flag its dead verdict carries.
DEAD_VERDICTS = {
    # transient: says how many attempts and why
    "500": (answer(500), Verdict("dead", reason="gave up after 3 attempts: transient failure")),
    # rate limited
    "429": (answer(429, 7.0), Verdict("dead", reason="gave up after 3 attempts: rate limited")),
    # credentials: the flag survives, so the worker still logs it loud
    "401": (answer(401), Verdict("dead", reason="gave up after 3 attempts: credentials refused (HTTP 401): "
                                 + CREDENTIALS_REASON, credentials_problem=True)),
}


@pytest.mark.parametrize("result, expected", DEAD_VERDICTS.values(), ids=DEAD_VERDICTS.keys())
def test_dead_verdict_has_no_delay_and_says_why(result, expected):
    verdict = SMALL.judge(result, 3, HALF)

    assert verdict == expected
    assert verdict.delay is None


def test_max_attempts_one_means_no_retry_at_all():
    policy = RetryPolicy(max_attempts=1)

    assert policy.judge(answer(503), 1, HALF).outcome == "dead"
    assert policy.judge(answer(200), 1, HALF).outcome == "done"
