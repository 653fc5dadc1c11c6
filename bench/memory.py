"""Section 6: memory. Resident size (VmRSS, /proc/PID/status) of each gunicorn worker and of the
worker process while the Procfile's processes take N signed events (default 100,000), sampled
every `every` events, to show whether it stays flat. Since issue 14 the web processes only append
to the inbox and the worker process decides every event, so both are targets."""

from __future__ import annotations

import time
from pathlib import Path

from . import loadgen
from .common import (BENCH, Processes, Signer, event_body, fmt, gunicorn_pids, http_request, load_average,
                     log, python_pid, room_events, rss_mb, table, verdict)
from .services import StoreWatch, fake_api, start_services

TARGET_MB = 80.0
CONCURRENCY = 8


def event_stream():
    """Endless distinct bodies: rooms' whole lives (see common.room_events), a recording now and then."""
    room = 0
    while True:
        name, session = f"mem-{room:07d}", f"s{room:07d}"
        yield from room_events(name, session)
        if room % 5 == 0:
            yield event_body("recording-stopped", meetingId=name, sessionId=session, filePath=f"/encoded/{name}.mp4")
        room += 1


def run(signer: Signer, out: Path, procs: Processes, total: int, every: int, drain: float,
        commands: list[str]) -> tuple[list, str]:
    pem = out / "webhook-public.pem"
    pem.write_text(signer.public_pem)
    fake = fake_api(signer.public_pem)
    web = worker = watch = None
    url = f"sqlite:///{out}/memory.db"
    try:
        web, worker = start_services("memory", out, procs, pem, BENCH / "rules.yaml", url, fake.base_url, commands)
        watch = StoreWatch(url)
        master, workers = gunicorn_pids(web)
        worker_pid = python_pid(worker, "service worker")
        if master is None or not workers or worker_pid is None:
            raise RuntimeError(f"could not find the processes: master={master} workers={workers} "
                               f"worker={worker_pid}")
        log(f"memory: gunicorn master {master}, workers {workers}, worker process {worker_pid}")

        rows, finals = [], {}

        def sample(events: int, rate: float | None, errors: int | None, note: str = "") -> list:
            now_master, now_workers = gunicorn_pids(web)
            if now_workers != workers:
                note = (note + f" gunicorn workers changed: {workers} -> {now_workers}").strip()
            values = [rss_mb(pid) for pid in workers] + [rss_mb(worker_pid), rss_mb(master)]
            for key, value in zip([f"gunicorn worker {i + 1}" for i in range(len(workers))]
                                  + ["worker process", "gunicorn master"], values):
                finals.setdefault(key, []).append(value)
            depth = watch.sample().depth
            row = ([f"{events:,}"] + [fmt(v, 1) for v in values]
                   + [fmt(rate, 0), fmt(errors), fmt(depth), load_average(), note])
            rows.append(row)
            log(f"memory at {events:,} events: " + ", ".join(fmt(v, 1) for v in values) + " MB")
            return row

        sample(0, None, None, "after start-up, before any event")
        stream = event_stream()
        sent = 0
        port = web.port
        while sent < total:
            count = min(every, total - sent)
            bodies = [next(stream) for _ in range(count)]
            payloads = [http_request("127.0.0.1", port, b, signer.sign(b)) for b in bodies]
            result = loadgen.closed_loop("127.0.0.1", port, payloads, concurrency=CONCURRENCY, count=count)
            sent += count
            sample(sent, result.rps, result.errors)
        # The worker decides behind the web: sample once it has decided everything sent, then again later.
        waited, last = watch.wait_until_empty(timeout=max(60.0, total / 200))
        sample(sent, None, None, f"the inbox empty after {waited:.1f} s more (the worker caught up)" if waited is not None
               else f"the inbox still held {last.depth:,} after {max(60.0, total / 200):g} s more")
        time.sleep(drain)
        sample(sent, None, None, f"{drain:g} s later")
        calls = len(fake.calls_to("/v2/rooms/deactivate"))
        commands.append(f"memory, load: the Python client (bench/loadgen.py), closed loop, {CONCURRENCY} connections, "
                        f"{total:,} distinct signed bodies in chunks of {every:,}")
    finally:
        if watch is not None:
            watch.close()
        for proc in (worker, web):
            if proc is not None:
                procs.stop(proc)
        fake.stop()

    names = [f"gunicorn worker {i + 1}" for i in range(len(workers))] + ["worker process", "gunicorn master"]
    summary, verdicts = [], []
    for name in names:
        values = [v for v in finals.get(name, []) if v is not None]
        if not values:
            summary.append([name, "n/a", "n/a", "n/a", "n/a", "n/a", "n/a"])
            continue
        after_first = values[1] if len(values) > 2 else values[0]
        is_target = name != "gunicorn master"
        summary.append([name, fmt(values[0], 1), fmt(after_first, 1), fmt(values[-1], 1), fmt(max(values), 1),
                        fmt(values[-1] - after_first, 1),
                        verdict(max(values) <= TARGET_MB) if is_target else "(not a target)"])
        if is_target:
            verdicts.append(["6. memory", f"{name}, max VmRSS over {total:,} events", fmt(max(values), 1) + " MB",
                             f"<= {TARGET_MB:g} MB", verdict(max(values) <= TARGET_MB)])
    headers = (["events sent"] + [f"gunicorn worker {i + 1} MB" for i in range(len(workers))]
               + ["worker process MB", "gunicorn master MB", "req/s in chunk", "errors in chunk",
                  "inbox depth (undecided)", "load average", "note"])
    return verdicts, "\n".join([
        "## 6. Memory",
        "",
        f"The Procfile's `web` and `worker` on SQLite, rules from bench/rules.yaml (its `for: 5m` timers fire "
        f"during a long run), the fake VideoSDK API answering the worker. The web's gunicorn workers verify "
        f"each event and append it to the inbox; the worker process decides every one of them (and fires the "
        f"timers and makes the calls), so it is measured as a target too, with the inbox's depth beside each "
        f"sample, and sampled once more when the inbox is empty. {total:,} distinct signed events "
        f"(rooms' whole lives: session-started, two joins, two leaves, session-ended; a recording-stopped "
        f"every fifth room), sent in chunks of {every:,} by the Python client ({CONCURRENCY} connections, "
        f"closed loop), each chunk signed before it is sent. VmRSS from /proc/PID/status after each chunk. "
        f"The worker made {calls:,} deactivate calls.",
        "",
        table(["process", "at start MB", f"after {every:,} events MB", f"after {total:,} MB", "max MB",
               "growth since first chunk MB", f"<= {TARGET_MB:g} MB"], summary),
        "",
        "<details><summary>every sample</summary>",
        "",
        table(headers, rows),
        "",
        "</details>",
    ])
