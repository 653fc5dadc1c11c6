"""Section 5: reaction time. From a signed session-ended arriving at the web process to the
deactivate call arriving at the fake VideoSDK API (tests/fakeapi.py, which records when each call
came in), with the Procfile's web and worker processes at their default settings. Since issue 14
the web only appends the event to the inbox; the worker decides it and then makes the call, so
the figure covers the append, the worker's wake-up, the decision and the call."""

from __future__ import annotations

from pathlib import Path

from . import loadgen
from .common import (Processes, Signer, ThrowawayDatabase, event_body, fmt, http_request, log, percentile, table,
                     verdict)
from .services import fake_api, start_services

TARGET_P50_MS = 50
TARGET_P99_MS = 250

RULES = """\
version: 1
rules:
  - name: close-after-session
    on: session-ended
    action: deactivate
"""


def default_poll_seconds() -> float:
    """The worker's WORKER_POLL_SECONDS default, as service/config.py has it."""
    from service.config import Settings

    return Settings.__dataclass_fields__["poll_interval"].default


def _one_store(store: str, url: str, shown_url: str | None, signer: Signer, out: Path, procs: Processes,
               duration: float, rate: float, commands: list[str]) -> tuple[list, list]:
    pem = out / "webhook-public.pem"
    pem.write_text(signer.public_pem)
    rules = out / "rules-reaction.yaml"
    rules.write_text(RULES)
    fake = fake_api(signer.public_pem)
    web = worker = None
    try:
        web, worker = start_services(f"reaction-{store}", out, procs, pem, rules, url, fake.base_url, commands,
                                     shown_url, None)
        port = web.port

        def payloads(prefix: str, count: int) -> tuple[list[str], list[bytes]]:
            rooms = [f"{prefix}-{store}-{i:05d}" for i in range(count)]
            bodies = [event_body("session-ended", meetingId=room, sessionId=f"s-{room}",
                                 start="2026-11-01T10:00:00Z", end="2026-11-01T10:30:00Z") for room in rooms]
            return rooms, [http_request("127.0.0.1", port, b, signer.sign(b)) for b in bodies]

        # Warm-up: the first call makes the worker's HTTP session and token; not measured.
        warm_rooms, warm = payloads("warm", 10)
        loadgen.open_loop("127.0.0.1", port, warm, rate=rate, concurrency=8)
        fake.wait_for(lambda: set(warm_rooms) <= set(fake.deactivations()), timeout=30)

        count = max(1, int(rate * duration))
        rooms, requests = payloads("rx", count)
        log(f"reaction ({store}): {count} events at {rate:g}/s")
        result, samples = loadgen.open_loop("127.0.0.1", port, requests, rate=rate, concurrency=8)
        fake.wait_for(lambda: set(rooms) <= set(fake.deactivations()), timeout=60)
        first_call = {}
        for call in fake.calls_to("/v2/rooms/deactivate"):
            room = (call.body or {}).get("roomId")
            if room not in first_call:
                first_call[room] = call.at
        reactions = []
        for room, sample in zip(rooms, samples):
            if sample is not None and sample.status and room in first_call:
                reactions.append((first_call[room] - sample.sent_wall) * 1000)
        missing = count - len(reactions)
        p50, p99 = percentile(reactions, 50), percentile(reactions, 99)
        log(f"reaction ({store}): p50 {fmt(p50)} ms, p99 {fmt(p99)} ms, {missing} without a call")
        ok50 = p50 is not None and p50 <= TARGET_P50_MS and not missing
        ok99 = p99 is not None and p99 <= TARGET_P99_MS and not missing
        summary = [["5. reaction", f"p50, {store}", fmt(p50, 1) + " ms", f"<= {TARGET_P50_MS} ms", verdict(ok50)],
                   ["5. reaction", f"p99, {store}", fmt(p99, 1) + " ms", f"<= {TARGET_P99_MS} ms", verdict(ok99)]]
        return summary, [store, count, fmt(result.sent_rate, 1), f"{fmt(result.p50_ms, 1)} / {fmt(result.p99_ms, 1)}",
                fmt(p50, 1), verdict(ok50), fmt(p99, 1), verdict(ok99),
                fmt(max(reactions) if reactions else None, 1), missing, result.errors]
    finally:
        for proc in (worker, web):
            if proc is not None:
                procs.stop(proc)
        fake.stop()


def run(signer: Signer, out: Path, procs: Processes, duration: float, pg_base: str | None,
        commands: list[str], rate: float = 50.0) -> tuple[list, str]:
    summary, row = _one_store("sqlite", f"sqlite:///{out}/reaction.db", None, signer, out, procs, duration, rate,
                              commands)
    rows = [row]
    if pg_base:
        database = ThrowawayDatabase(pg_base)
        try:
            more, row = _one_store("postgresql", database.create(), database.shown, signer, out, procs,
                                   duration, rate, commands)
            summary += more
            rows.append(row)
        finally:
            database.drop()
    return summary, "\n".join([
        "## 5. Reaction: signed event in, deactivate call out",
        "",
        f"The Procfile's `web` and `worker` processes (WORKER_POLL_SECONDS unset: its default, "
        f"{default_poll_seconds():g} s). The web process appends each event to the inbox and answers 202; "
        "the worker decides it and then calls the API: on SQLite an idle worker looks at the inbox every "
        "poll (a read-only query), on PostgreSQL it also waits on LISTEN, woken at once by the append's "
        "NOTIFY. One rule (`close-after-session`: on session-ended, deactivate, no `for:`, no `confirm:`), the "
        f"fake VideoSDK API of tests/fakeapi.py in the bench process. {int(rate * duration)} signed "
        f"session-ended events, each for its own room, at {rate:g} per second for {duration:g} s (open loop, "
        "after 10 unmeasured warm-up events). Reaction = when the fake API received the room's deactivate "
        "call minus when the event's request was written to the socket (one clock: both in this process).",
        "",
        table(["store", "events", "sent /s", "webhook answer p50 / p99 ms", "reaction p50 ms",
               f"p50 <= {TARGET_P50_MS} ms", "reaction p99 ms", f"p99 <= {TARGET_P99_MS} ms",
               "max ms", "events without a call", "webhook errors (no answer, or >= 400)"], rows),
    ])
