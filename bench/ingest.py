"""Section 1: ingest. The real web app (Procfile `web:`) against a bare Flask app under the same
gunicorn settings, same machine, same run, same load generator, taking turns round by round.

The web request only verifies, checks the envelope and appends to the inbox (issue 14); the
worker process decides behind it. This section runs no worker: it measures what the intake
takes, and the inbox grows through the section (bench/sustained.py runs both)."""

from __future__ import annotations

import itertools
import json
import re
import subprocess
import sys
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from . import budget as budget_stages, loadgen
from .common import (BENCH, PATH, Processes, Signer, ThrowawayDatabase, base_env, cpu_seconds, fmt, free_port,
                     gunicorn_pids, http_request, load_average, log, median, mixed_bodies, procfile, table,
                     tail, verdict, wait_until_up)
from .services import ADMIN_HEADERS, bare_command, service_env

# Issue 14: real/bare >= 0.60 on SQLite (synchronous=FULL), >= 0.50 on PostgreSQL, the bare app on
# whichever worker class is faster.
TARGET_THROUGHPUT_RATIO = {"sqlite": 0.60, "postgresql": 0.50}
TARGET_P99_RATIO = 1.5
# The reference run of the bare app on the worker class gunicorn.conf.py used before issue 14.
# GUNICORN_CMD_ARGS overrides the config file's settings (gunicorn's documented order).
GTHREAD_ARGS = "--worker-class gthread --threads 4"
LAG_LIMIT = 0.25  # open loop: a generator whose own lateness (p99) passes this share of the bare p99 ...
LAG_FLOOR_MS = 2.0  # ... and this many ms is measuring itself as much as the apps


@dataclass
class IngestConfig:
    rounds: int
    duration: float  # seconds of each closed-loop measurement
    warmup: float
    fixed_rounds: int
    fixed_duration: float
    connections: int = 64  # issue 14: 64 connections
    wrk_threads: int = 1
    bodies: int = 400
    open_loop_connections: int = 64
    budget_events: int = 1000  # bench/budget.py: deliveries timed stage by stage, in one process
    drain: float = 15.0  # open loop: seconds after the last request is due before giving up on answers


FULL = IngestConfig(rounds=5, duration=10, warmup=3, fixed_rounds=3, fixed_duration=10)
QUICK = IngestConfig(rounds=2, duration=3, warmup=1, fixed_rounds=1, fixed_duration=3, drain=5.0,
                     budget_events=200)


@dataclass
class Target:
    name: str  # bare | bare-gthread | sqlite | postgresql
    label: str  # as the tables show it
    worker_class: str  # as gunicorn's log says it started ("Using worker: ...")
    proc: object
    closed: list = field(default_factory=list)  # LoadResult per round
    fixed: list = field(default_factory=list)
    cpu: list = field(default_factory=list)  # per closed round: (CPU us per answered request, busiest worker's share)
    inbox_at_end: int | None = None  # real apps: deliveries in the inbox after the section's load

    @property
    def is_bare(self) -> bool:
        return self.name.startswith("bare")

    def rps(self) -> float | None:
        return median([r.rps for r in self.closed])


def run(signer: Signer, out: Path, procs: Processes, config: IngestConfig, pg_base: str | None,
        commands: list[str], found: dict | None = None) -> tuple[list, str]:
    """`found`, when given, gets "intake_rps": {store: the real app's median closed-loop req/s}
    (the sustained section's rate)."""
    pem = out / "webhook-public.pem"
    pem.write_text(signer.public_pem)
    rules = BENCH / "rules.yaml"
    bodies = mixed_bodies(config.bodies, "ing")
    signatures = [signer.sign(b) for b in bodies]
    script = loadgen.write_wrk_script(out / "ingest.lua", bodies, signatures)
    use_wrk = loadgen.wrk_binary() is not None
    fixed_wrk2 = loadgen.wrk_binary(rate=True) is not None

    database = ThrowawayDatabase(pg_base) if pg_base else None
    targets: list[Target] = []
    try:
        specs = [("bare", "bare app, gevent (gunicorn.conf.py)", bare_command(), f"sqlite:///{out}/ingest-bare.db", {}),
                 ("bare-gthread", "bare app, gthread x4", bare_command(), f"sqlite:///{out}/ingest-bare-gthread.db",
                  {"GUNICORN_CMD_ARGS": GTHREAD_ARGS}),
                 ("sqlite", "real, sqlite", procfile()["web"], f"sqlite:///{out}/ingest-sqlite.db", {})]
        if database is not None:
            specs.append(("postgresql", "real, postgresql", procfile()["web"], database.create(), {}))
        for name, label, command, url, extra in specs:
            port = free_port()
            env, shown = service_env(out, pem, rules, url, port, f"metrics-ingest-{name}")
            env.update(extra)
            shown.update(extra)
            if name == "postgresql":
                shown["DATABASE_URL"] = database.shown
            proc = procs.start(f"ingest-{name}", command, env, port=port, shown_env=shown)
            targets.append(Target(name, label, "", proc))
            commands.append(f"ingest, {label}: `{proc.describe()}`")
        for target in targets:
            wait_until_up(target.proc, "/healthz" if target.is_bare else "/readyz")
            target.worker_class = _worker_class(target)
        if targets[1].worker_class != "gthread" or any(t.worker_class != targets[0].worker_class
                                                        for t in targets if t.name != "bare-gthread"):
            raise RuntimeError("the apps do not run on the worker classes meant: "
                               + ", ".join(f"{t.name}: {t.worker_class}" for t in targets))
        _check_accepted(targets, bodies[0], signatures[0])

        def closed(target: Target, duration: float) -> loadgen.LoadResult:
            url = f"http://127.0.0.1:{target.proc.port}{PATH}"
            if use_wrk:
                return loadgen.run_wrk(url, script, duration=duration, connections=config.connections,
                                       threads=config.wrk_threads)
            payloads = [http_request("127.0.0.1", target.proc.port, b, s) for b, s in zip(bodies, signatures)]
            return loadgen.closed_loop("127.0.0.1", target.proc.port, payloads,
                                       concurrency=config.connections, duration=duration)

        log(f"ingest: warm-up, {config.warmup:g}s each ({'wrk' if use_wrk else 'python client'})")
        for target in targets:
            closed(target, config.warmup)
        for number in range(config.rounds):
            order = targets if number % 2 == 0 else targets[::-1]
            for target in order:
                _, workers = gunicorn_pids(target.proc)
                before = {pid: cpu_seconds(pid) for pid in workers}
                result = closed(target, config.duration)
                used = [cpu_seconds(pid) - before[pid] for pid in workers
                        if before[pid] is not None and cpu_seconds(pid) is not None]
                target.closed.append(result)
                if used and result.ok:
                    target.cpu.append((sum(used) / result.ok * 1e6, max(used) / sum(used) if sum(used) else None))
                log(f"ingest round {number + 1}/{config.rounds} {target.name}: {result.rps:,.0f} req/s, "
                    f"p50 {result.p50_ms:.2f} ms, p99 {result.p99_ms:.2f} ms, errors {result.errors}, "
                    f"worker CPU {' + '.join(f'{u:.1f}' for u in used)} s (load {load_average()})")
        commands.append(f"ingest, closed loop: `{targets[0].closed[0].command}` (URL: each app's port)")

        # The bare app on whichever worker class is faster is the reference (issue 14).
        reference = max((t for t in targets if t.is_bare), key=lambda t: t.rps() or 0.0)
        fixed_targets = [reference] + [t for t in targets if not t.is_bare]
        rate = max(1.0, (reference.rps() or 0.0) / 2)
        for number in range(config.fixed_rounds):
            order = fixed_targets if number % 2 == 0 else fixed_targets[::-1]
            for target in order:
                if fixed_wrk2:
                    url = f"http://127.0.0.1:{target.proc.port}{PATH}"
                    result = loadgen.run_wrk(url, script, duration=config.fixed_duration,
                                             connections=config.open_loop_connections, threads=config.wrk_threads,
                                             rate=rate)
                else:
                    count = max(1, int(rate * config.fixed_duration))
                    pairs = itertools.islice(itertools.cycle(zip(bodies, signatures)), count)
                    payloads = [http_request("127.0.0.1", target.proc.port, b, s) for b, s in pairs]
                    result, _ = loadgen.open_loop("127.0.0.1", target.proc.port, payloads, rate=rate,
                                                  concurrency=config.open_loop_connections,
                                                  drain=config.drain)
                target.fixed.append(result)
                _settle(target)  # an overrun server still holds requests the client gave up on
                log(f"ingest fixed rate {rate:,.0f}/s round {number + 1}/{config.fixed_rounds} {target.name}: "
                    f"sent {fmt(result.sent_rate, 0)}/s, p50 {fmt(result.p50_ms, 2)} ms, "
                    f"p99 {fmt(result.p99_ms, 2)} ms, errors {result.errors}")
        commands.append(f"ingest, fixed rate: `{fixed_targets[0].fixed[0].command}`")
        for target in targets:
            if not target.is_bare:
                target.inbox_at_end = _inbox_depth(target)
        if found is not None:
            found["intake_rps"] = {t.name: t.rps() for t in targets if not t.is_bare}
        for target in targets:  # the budget runs alone, on a quiet machine
            procs.stop(target.proc)
        budget = _budget(config, commands)
        return _report(targets, reference, config, use_wrk, fixed_wrk2, rate, budget)
    finally:
        for target in targets:
            procs.stop(target.proc)
        if database is not None:
            database.drop()


def _worker_class(target: Target) -> str:
    """The worker class gunicorn says it started ("Using worker: gevent")."""
    found = re.search(r"Using worker: (\S+)", tail(target.proc.log_path, 400))
    return found.group(1) if found else "unknown"


def _inbox_depth(target: Target) -> int | None:
    """The real app's inbox depth, from its /readyz (information there, never a failure)."""
    try:
        ready = urllib.request.Request(f"http://127.0.0.1:{target.proc.port}/readyz", headers=ADMIN_HEADERS)
        with urllib.request.urlopen(ready, timeout=30) as answer:
            return json.loads(answer.read()).get("inbox", {}).get("depth")
    except (OSError, ValueError):
        return None


def _budget(config: IngestConfig, commands: list[str]) -> dict:
    command = [sys.executable, "-m", "bench.budget", str(config.budget_events), "3"]
    log(f"ingest: where a delivery's time goes ({config.budget_events} deliveries, in one process)")
    done = subprocess.run(command, cwd=BENCH.parent, env=base_env(), capture_output=True, text=True,
                          timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"bench.budget failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    commands.append(f"ingest, stage by stage: `python -m bench.budget {config.budget_events} 3`")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _settle(target: Target, timeout: float = 120) -> None:
    """Wait until the app answers a health check within 100 ms, three times running."""
    import http.client
    import time

    deadline, quick = time.monotonic() + timeout, 0
    while quick < 3 and time.monotonic() < deadline:
        started = time.monotonic()
        try:
            conn = http.client.HTTPConnection("127.0.0.1", target.proc.port, timeout=30)
            conn.request("GET", "/healthz")
            conn.getresponse().read()
            conn.close()
        except OSError:
            pass
        quick = quick + 1 if time.monotonic() - started < 0.1 else 0
        time.sleep(0.2)


def _check_accepted(targets: list[Target], body: bytes, signature: str) -> None:
    """One signed delivery each, before measuring: the bare apps answer 204, the real apps 202 with
    the delivery's id (issue 14: accepted into the inbox, decided behind)."""
    for target in targets:
        request = urllib.request.Request(f"http://127.0.0.1:{target.proc.port}{PATH}", data=body, method="POST",
                                         headers={"Content-Type": "application/json",
                                                  "videosdk-signature": signature})
        with urllib.request.urlopen(request, timeout=10) as answer:
            status, text = answer.status, answer.read()
        if target.is_bare:
            if status != 204:
                raise RuntimeError(f"{target.name} answered {status} to a signed delivery")
        elif status != 202 or "delivery" not in json.loads(text or b"{}"):
            raise RuntimeError(f"{target.name} answered {status} {text[:200]!r} to a signed delivery "
                               "(expected 202 with the delivery's id)")


def _report(targets: list[Target], reference: Target, config: IngestConfig, use_wrk: bool, fixed_wrk2: bool,
            rate: float, budget: dict) -> tuple[list, str]:
    bare = reference
    b_rps = bare.rps()
    b_p50 = median([r.p50_ms for r in bare.closed])
    b_p99 = median([r.p99_ms for r in bare.closed])
    b_fixed = median([r.p99_ms for r in bare.fixed])
    rows_bare, rows_max, rows_fixed, rows_rounds, summary = [], [], [], [], []
    stages = budget["stages_us"]
    bare_us = stages[budget_stages.BARE]
    b_cpu = median([c for c, _ in bare.cpu])
    signature_us = stages[budget_stages.SIGNATURE]
    envelope_us = max(0.0, stages[budget_stages.ENVELOPE] - stages[budget_stages.JSON_ONLY])
    checks_us = signature_us + envelope_us
    append_cpu_us = stages[budget_stages.STORE_CPU]
    decide_us = stages[budget_stages.DECIDE]
    base_us = b_cpu if b_cpu else bare_us  # the bare request's CPU under gunicorn; else in one process
    ceiling = base_us / (base_us + checks_us)  # the no-store ceiling
    for target in targets:
        if target.is_bare:
            rows_bare.append([target.label, target.worker_class, fmt(target.rps(), 0),
                              fmt(median([r.p50_ms for r in target.closed]), 2),
                              fmt(median([r.p99_ms for r in target.closed]), 2),
                              sum(r.errors for r in target.closed),
                              "**reference** (the faster)" if target is bare else ""])
    rows_cpu = []
    for target in targets:
        cpu = median([c for c, _ in target.cpu])
        share = median([b for _, b in target.cpu if b is not None])
        rows_cpu.append([target.label, fmt(target.rps(), 0), fmt(cpu, 0),
                         fmt(b_cpu / cpu if (cpu and b_cpu) else None, 2),
                         f"{share:.0%}" if share is not None else "n/a"])
    for target in targets:
        if target.is_bare:
            continue
        wanted = TARGET_THROUGHPUT_RATIO[target.name]
        rps = target.rps()
        p50 = median([r.p50_ms for r in target.closed])
        p99 = median([r.p99_ms for r in target.closed])
        ratio = rps / b_rps if b_rps else None
        errors = sum(r.errors for r in target.closed)
        rows_max.append([target.label, fmt(b_rps, 0), fmt(rps, 0), fmt(ratio, 2), f">= {wanted:.2f}",
                         verdict(ratio >= wanted if ratio else None), fmt(ceiling, 2),
                         f"{fmt(b_p50, 2)} / {fmt(p50, 2)}", fmt(p50 / b_p50 if b_p50 else None, 2),
                         f"{fmt(b_p99, 2)} / {fmt(p99, 2)}", fmt(p99 / b_p99 if b_p99 else None, 2),
                         f"{sum(r.errors for r in bare.closed)} / {errors}", fmt(target.inbox_at_end)])
        summary.append(["1. ingest", f"throughput real/bare ({bare.worker_class}), {target.name}", fmt(ratio, 2),
                        f">= {wanted:.2f}", verdict(ratio >= wanted if ratio else None)])
        f99 = median([r.p99_ms for r in target.fixed])
        fratio = f99 / b_fixed if (f99 is not None and b_fixed) else None
        sent_b = median([r.sent_rate for r in bare.fixed])
        sent_r = median([r.sent_rate for r in target.fixed])
        lag_b = max((r.lag_p99_ms or 0.0 for r in bare.fixed), default=0.0)
        lag_r = max((r.lag_p99_ms or 0.0 for r in target.fixed), default=0.0)
        behind = (lag_b > max(LAG_FLOOR_MS, LAG_LIMIT * (b_fixed or 0.0))
                  or lag_r > max(LAG_FLOOR_MS, LAG_LIMIT * (f99 or 0.0)))
        fixed_verdict = verdict(fratio <= TARGET_P99_RATIO if fratio is not None else None)
        if behind:
            fixed_verdict += " (unreliable: the generator fell behind)"
        rows_fixed.append([target.label, fmt(rate, 0), f"{fmt(sent_b, 0)} / {fmt(sent_r, 0)}",
                           f"{fmt(median([r.p50_ms for r in bare.fixed]), 2)} / "
                           f"{fmt(median([r.p50_ms for r in target.fixed]), 2)}",
                           fmt(b_fixed, 2), fmt(f99, 2), fmt(fratio, 2), f"<= {TARGET_P99_RATIO:.1f}",
                           fixed_verdict, f"{fmt(lag_b, 1)} / {fmt(lag_r, 1)}",
                           f"{sum(r.errors for r in bare.fixed)} / {sum(r.errors for r in target.fixed)}"])
        summary.append(["1. ingest", f"p99 real/bare at {rate:,.0f}/s (half the bare max), {target.name}",
                        fmt(fratio, 2), f"<= {TARGET_P99_RATIO:.1f}", fixed_verdict])
    summary.append(["1. ingest", "no-store ceiling: bare / (bare + signature + envelope check), CPU per request",
                    fmt(ceiling, 2), "(none: the throughput ratios aim at it)", "reference"])
    for target in targets:
        for number, result in enumerate(target.closed, 1):
            rows_rounds.append([target.name, f"closed {number}", fmt(result.rps, 0), fmt(result.p50_ms, 2),
                                fmt(result.p99_ms, 2), result.errors])
        for number, result in enumerate(target.fixed, 1):
            rows_rounds.append([target.name, f"fixed {number}", f"sent {fmt(result.sent_rate, 0)}",
                                fmt(result.p50_ms, 2), fmt(result.p99_ms, 2), result.errors])

    generator = (f"wrk, {config.wrk_threads} thread(s), {config.connections} connections" if use_wrk
                 else f"the Python client (bench/loadgen.py, {loadgen.event_loop_name()}), {config.connections} connections (wrk not installed, or BENCH_NO_WRK set)")
    fixed_how = (f"wrk2 -R {rate:.0f}" if fixed_wrk2 else
                 f"the Python client (bench/loadgen.py, {loadgen.event_loop_name()}) in open loop at {rate:,.0f} requests/s (wrk has no fixed-rate "
                 f"mode and there is no wrk2), up to {config.open_loop_connections} connections; latency "
                 "counts from each request's scheduled send time, so queueing behind a slow answer is included; "
                 f"errors are requests still unanswered {config.drain:g} s after the last was due (they count in "
                 "the latencies with the time they had waited by then), or answered >= 400. "
                 f"'Generator lag' is how late the client itself was in putting requests out (p99): it adds "
                 f"to the latencies, so when it passes {LAG_LIMIT:.0%} of the p99 it adds to (and {LAG_FLOOR_MS:g} ms) "
                 "the row is marked unreliable")
    targets_text = " and ".join(f"{TARGET_THROUGHPUT_RATIO[t.name]:.2f} ({t.name})" for t in targets if not t.is_bare)
    return summary, "\n".join([
        "## 1. Ingest: real app vs bare Flask app",
        "",
        "The real app and the bare app under the Procfile's `web:` command (gunicorn.conf.py: the gevent "
        "worker, WEB_CONCURRENCY and WEB_CONNECTIONS unset, so 2 workers of up to 1,000 connections each, "
        "keep-alive, no access log), and once more the bare app on gunicorn's gthread worker, 4 threads "
        f"(`GUNICORN_CMD_ARGS='{GTHREAD_ARGS}'`, which overrides the file), for reference. Target: the real "
        f"app's throughput is at least {targets_text} of the bare app's on whichever worker class is "
        f"faster (here: {bare.worker_class}). Signed bodies ({config.bodies} distinct, pre-signed), signature "
        "verification on with the key pinned (VIDEOSDK_WEBHOOK_PUBLIC_KEY), durable inbox (SQLite WAL "
        "synchronous=FULL, group commit; PostgreSQL when configured). The bare app (bench/bare_app.py) "
        "parses the JSON and answers 204; the real app verifies, checks the envelope, appends the body to "
        "the inbox and answers 202 with the delivery's id. **No worker runs in this section**: nothing is "
        "decided, so the inbox only grows (its depth at the end is in the table); the databases are not "
        "dropped between rounds, so later rounds append to a larger inbox table. Section 2 runs the worker "
        "beside the web. All apps run at once and take turns, "
        f"{config.rounds} rounds of {config.duration:g} s each, alternating the order, after a "
        f"{config.warmup:g} s warm-up each. Load: {generator}, closed loop (each connection sends its next "
        "request when the last is answered). Figures are medians over the rounds.",
        "",
        "### The bare app, by worker class",
        "",
        table(["app", "worker class", "req/s", "p50 ms", "p99 ms", "errors", ""], rows_bare),
        "",
        "### Maximum throughput (closed loop)",
        "",
        table(["app", f"bare ({bare.worker_class}) req/s", "real req/s", "ratio real/bare", "target", "verdict",
               "no-store ceiling", "p50 ms bare / real", "p50 ratio", "p99 ms bare / real", "p99 ratio",
               "errors bare / real", "inbox depth at the end"], rows_max),
        "",
        f"### Latency at half the bare maximum rate ({rate:,.0f} requests/s)",
        "",
        f"{fixed_how}. {config.fixed_rounds} round(s) of {config.fixed_duration:g} s each, medians; the bare "
        f"app here is the reference ({bare.worker_class}).",
        "",
        table(["app", "rate asked /s", "rate sent /s bare / real", "p50 ms bare / real", "p99 ms bare",
               "p99 ms real", "p99 ratio", "target", "verdict", "generator lag p99 ms bare / real",
               "errors bare / real"], rows_fixed),
        "",
        "### Where one delivery's time goes (one process, no load)",
        "",
        f"bench/budget.py: {budget['events']:,} of the same kind of deliveries through each stage alone, in one "
        "process and one thread (Flask's test client, no sockets, no gunicorn), on a SQLite file set up as "
        f"the service sets its own; the median of {budget['rounds']} rounds' means. Each stage is timed on "
        "its own, so they overlap (the append includes its commit's fsync) and do not sum to the whole "
        "request; what the whole real request costs beyond its parts is Flask's dispatch, the request's log "
        "line, the metrics and the JSON answer. The stages marked 'behind the request' run in the worker "
        "process, not in the web request.",
        "",
        table(["stage", "us per delivery", "x the bare app's whole request"],
              [[name, fmt(us, 0), fmt(us / bare_us, 2)] for name, us in stages.items()]),
        "",
        "### CPU per request under load",
        "",
        "CPU time (user + system, from /proc) that all of an app's gunicorn workers used during each "
        "closed-loop round, divided by the requests answered 2xx in it; medians over the rounds. 'Busiest "
        "worker' is the share of that CPU used by one worker: wrk's keep-alive connections are accepted by "
        "whichever worker wakes first, so one worker may do most of the work. The real app's group commit "
        "runs on a thread of gevent's pool inside the worker, so its CPU is counted here too.",
        "",
        table(["app", "req/s", "CPU us per request", f"bare ({bare.worker_class}) / this (CPU)", "busiest worker"],
              rows_cpu),
        "",
        "**The no-store ceiling.** When the machine's cores are the limit, throughput follows CPU per "
        f"request. The reference bare request costs {fmt(base_us, 0)} us of CPU"
        f"{' under gunicorn (the table above)' if b_cpu else ' (in one process: no gunicorn CPU figure)'}. "
        "Every delivery also needs its signature verified and its envelope checked before it is answered (a "
        "forged body gets a 401 and a malformed one a 400, never a 2xx): "
        f"{fmt(signature_us, 0)} + {fmt(envelope_us, 0)} us in the stage table, the envelope check counted "
        "beyond the JSON decoding that the bare app does too. If storing cost nothing, the real app could "
        f"reach at most {fmt(base_us, 0)} / ({fmt(base_us, 0)} + {fmt(checks_us, 0)}) = **{fmt(ceiling, 2)}** of "
        "the bare app's throughput: the no-store ceiling, beside each ratio above. The gap between a ratio "
        "and the ceiling is what the inbox append and the real app's own work per request (its log line, "
        "metrics, the JSON answer) cost. For scale, the append alone uses "
        f"{fmt(append_cpu_us, 0)} us of CPU a delivery in one thread (a transaction each; under load, group "
        "commit shares one transaction and its fsync among the requests waiting); the decider takes "
        f"{fmt(decide_us, 0)} us a delivery (wall time, batches of 200) in the worker process, which this "
        "section does not run.",
        "",
        "<details><summary>every round</summary>",
        "",
        table(["app", "round", "req/s", "p50 ms", "p99 ms", "errors"], rows_rounds),
        "",
        "</details>",
    ])
