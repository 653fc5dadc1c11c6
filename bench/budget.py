"""Where one delivery's time goes: each stage of the real request, and the decider's work behind
it, timed alone, in one process.

Run by the ingest section (`python -m bench.budget` in a child process, so the service reads its
settings from an environment of its own); prints one JSON object. Everything is single-threaded
and in-process (Flask's test client, no sockets, no gunicorn), on a SQLite file with the service's
own settings (WAL, synchronous=FULL), so the figures are CPU and fsync costs per delivery, not
throughput. Each stage runs over every body, several rounds; the figure is the median round's
mean.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

HEADERS = "videosdk-signature"

# Stage names the ingest report reads back.
BARE = "bare app: whole request (Flask test client, JSON parsed, 204)"
SIGNATURE = "signature check (RSA-2048, PKCS#1 v1.5)"
ENVELOPE = "envelope check (JSON, then {webhookType: str, data: {...}}): all the request parses"
JSON_ONLY = "of which: JSON decoding alone (the bare app does it too)"
PARSE = "behind the request: full parse and validation of the event's data (json, marshmallow)"
STORE = "store: the request's inbox append alone (one-row transaction, commit and fsync)"
STORE_CPU = "of which: CPU time (the rest is waiting on the disk)"
FSYNC = "of which: one commit's fsync on this disk (a one-row transaction)"
FSYNC_CPU = "of which: that one-row transaction's CPU time (batched commits share it)"
PLAN = "behind the request: rules and planner, no store (each event as its room's first)"
DECIDE = "behind the request: the decider, per delivery (batches of 200: parse, rules, planner, one commit a batch)"


def _per_event_us(call, items, rounds: int) -> float:
    return _per_event_us_each(call, [items] * rounds)


def _per_event_us_each(call, rounds_items: list, clock=time.perf_counter) -> float:
    """The median round's mean; each round over its own list of items."""
    means = []
    for items in rounds_items:
        started = clock()
        for item in items:
            call(item)
        means.append((clock() - started) / len(items) * 1e6)
    return statistics.median(means)


def _fsync_us(directory: Path, count: int = 300, clock=time.perf_counter) -> float:
    """One tiny write transaction on a SQLite file set up as the service sets its own (WAL, FULL)."""
    path = directory / f"fsync-{clock.__name__}.sqlite3"
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = FULL")
    db.execute("CREATE TABLE t (x INTEGER)")

    def write(i):
        db.execute("BEGIN IMMEDIATE")
        db.execute("INSERT INTO t VALUES (?)", (i,))
        db.execute("COMMIT")

    try:
        return _per_event_us_each(write, [range(count)] * 3, clock)
    finally:
        db.close()


def measure(count: int, rounds: int) -> dict:
    from bench.common import Signer, mixed_bodies

    work = Path(tempfile.mkdtemp(prefix="roomwarden-budget-"))
    signer = Signer()
    (work / "key.pem").write_text(signer.public_pem)
    (work / "metrics").mkdir()
    os.environ.update({
        "DATABASE_URL": f"sqlite:///{work}/roomwarden.db",
        "RULES_FILE": str(Path(__file__).with_name("rules.yaml")),
        "VIDEOSDK_WEBHOOK_PUBLIC_KEY": str(work / "key.pem"),
        "VIDEOSDK_API_KEY": "bench", "VIDEOSDK_SECRET_KEY": "bench",
        "PROMETHEUS_MULTIPROC_DIR": str(work / "metrics"),
        "LOG_LEVEL": "INFO",
    })
    import logging

    from bench.bare_app import create_app as bare_app
    from service import create_app
    from service.accept import new_delivery_id
    from service.decider import Decider
    from service.events import parse_event, read_envelope
    from service.planner import plan_event
    from service.planrows import room_state
    from service.store.inbox import InboxItem

    app = create_app()
    log_file = open(work / "service.log", "w")  # the request's log line is still built and written
    for handler in logging.getLogger("roomwarden").handlers:
        handler.setStream(log_file)
    runtime = app.extensions["roomwarden"]
    bodies = mixed_bodies(count, f"budget-{os.getpid()}")
    signed = [(body, signer.sign(body)) for body in bodies]
    events = [(body, parse_event(body)) for body in bodies]
    rule_set = runtime.rules.current
    now = time.time()

    real, bare = app.test_client(), bare_app().test_client()

    def post_real(item):
        body, signature = item
        response = real.post("/webhooks/videosdk", data=body, headers={
            HEADERS: signature, "Content-Type": "application/json"})
        assert response.status_code in (200, 202), response.data

    def post_bare(item):
        response = bare.post("/webhooks/videosdk", data=item[0], headers={"Content-Type": "application/json"})
        assert response.status_code == 204

    def plan(item):
        _, event = item
        plan_event(rule_set, event, now, room_state(event.room_id, None) if event.room_id else None,
                   [], set(), acts=True)

    # The append and the decider get deliveries of their own, new ones each round, so that the
    # decider decides new rooms' lives (actions scheduled, timers started) rather than duplicates.
    def store_rounds(name: str) -> list:
        return [[(body, parse_event(body)) for body in mixed_bodies(count, f"budget-{name}{r}-{os.getpid()}")]
                for r in range(rounds)]

    def store(item):
        at = time.time()
        runtime.store.inbox.append(InboxItem(id=new_delivery_id(at), received_at=at, room_id=item[1].room_id,
                                       body=item[0].decode(), signature=None, verified=True))

    decider = Decider(runtime.store.inbox, lambda: rule_set, acts=True, verifier=None)

    def decide_rounds() -> float:
        """Each round: its own deliveries appended, then timed while the decider drains them
        (what the stages before appended is drained first, untimed)."""
        decider.drain()
        means = []
        for items in store_rounds("decide"):
            for item in items:
                store(item)
            started = time.perf_counter()
            decided = len(decider.drain())
            means.append((time.perf_counter() - started) / max(1, decided) * 1e6)
        return statistics.median(means)

    for call, items in ((post_real, signed[:50]), (post_bare, signed[:50])):  # warm up
        _per_event_us(call, items, 1)
    stages = {
        BARE: _per_event_us(post_bare, signed, rounds),
        "real app: whole request (Flask test client)": _per_event_us(post_real, signed, rounds),
        SIGNATURE: _per_event_us(lambda item: runtime.verifier.verify(item[0], item[1]), signed, rounds),
        ENVELOPE: _per_event_us(read_envelope, bodies, rounds),
        JSON_ONLY: _per_event_us(json.loads, bodies, rounds),
        STORE: _per_event_us_each(store, store_rounds("store")),
        STORE_CPU: _per_event_us_each(store, store_rounds("store-cpu"), clock=time.thread_time),
        FSYNC: _fsync_us(work),
        FSYNC_CPU: _fsync_us(work, clock=time.thread_time),
        PARSE: _per_event_us(parse_event, bodies, rounds),
        PLAN: _per_event_us(plan, events, rounds),
        DECIDE: decide_rounds(),
    }
    runtime.store.close()
    log_file.close()
    shutil.rmtree(work, ignore_errors=True)
    return {"events": count, "rounds": rounds, "stages_us": stages}


def main(argv: list[str]) -> int:
    count = int(argv[0]) if argv else 1000
    rounds = int(argv[1]) if len(argv) > 1 else 3
    print(json.dumps(measure(count, rounds)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
