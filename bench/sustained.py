"""Section 2: sustained. The Procfile's web and worker together, at the highest rate the intake
took, for a minute: does the decider keep up, or does the inbox grow? (issue 14)

The rate is the real app's median closed-loop throughput from section 1 (same store), or, when
that section did not run, a short closed-loop measurement of the web process alone made here
first. The inbox's depth, its oldest undecided delivery's age and the deliveries decided so far
are read from the store every few seconds, through the service's own Store, read-only."""

from __future__ import annotations

import itertools
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

from . import loadgen
from .common import (BENCH, PATH, Processes, Signer, ThrowawayDatabase, fmt, http_request, load_average, log,
                     mixed_bodies, table, verdict)
from .services import StoreSample, StoreWatch, fake_api, start_web, start_worker


@dataclass
class SustainedConfig:
    duration: float  # seconds of load at the fixed rate
    sample_every: float  # seconds between looks at the store
    probe: float  # seconds of closed loop to find the intake's rate when section 1 gave none
    catch_up: float  # at most this many seconds waiting for the inbox to empty (before and after)
    connections: int = 64
    wrk_threads: int = 1
    bodies: int = 400
    growth_allowance: float = 1.0  # "does not grow": ends within this many seconds of intake


FULL = SustainedConfig(duration=60, sample_every=5, probe=10, catch_up=120)
QUICK = SustainedConfig(duration=10, sample_every=2, probe=3, catch_up=30)


@dataclass
class Outcome:
    store: str
    rate: float  # asked
    rate_source: str
    load: loadgen.LoadResult
    taken: float  # deliveries accepted (2xx) per second
    samples: list[StoreSample]
    load_started: float  # time.monotonic()
    load_ended: float
    emptied_after: float | None  # seconds after the load until the inbox was empty (None: not within catch_up)
    left: int  # depth when the bench stopped waiting
    backlog: tuple[int, float | None] | None = None  # the probe's deliveries, and seconds the worker took for them

    @property
    def decided_rate(self) -> float | None:
        first, last = self.samples[0], self.samples[-1]
        return (last.decided - first.decided) / (last.at - first.at) if last.at > first.at else None

    @property
    def trend(self) -> float | None:
        """The depth's least-squares slope over the run, in deliveries per second."""
        points = [(s.at, s.depth) for s in self.samples]
        if len(points) < 2:
            return None
        mean_t = sum(t for t, _ in points) / len(points)
        mean_d = sum(d for _, d in points) / len(points)
        spread = sum((t - mean_t) ** 2 for t, _ in points)
        return sum((t - mean_t) * (d - mean_d) for t, d in points) / spread if spread else None

    def grows(self, allowance: float) -> bool:
        """The inbox grows: it ends more than `allowance` seconds of intake deep, or its trend over the
        run adds up to more than that."""
        limit = self.taken * allowance
        duration = self.load_ended - self.load_started
        return self.samples[-1].depth > limit or (self.trend or 0.0) * duration > limit


def run(signer: Signer, out: Path, procs: Processes, config: SustainedConfig, pg_base: str | None,
        commands: list[str], rates: dict | None = None) -> tuple[list, str]:
    """`rates`: {store: req/s} the intake took in section 1; a store missing there is measured here."""
    rates = rates or {}
    outcomes = [_one_store("sqlite", f"sqlite:///{out}/sustained.db", None, signer, out, procs, config, commands,
                           rates.get("sqlite"))]
    if pg_base:
        database = ThrowawayDatabase(pg_base)
        try:
            outcomes.append(_one_store("postgresql", database.create(), database.shown, signer, out, procs, config,
                                       commands, rates.get("postgresql")))
        finally:
            database.drop()
    return _report(outcomes, config, loadgen.wrk_binary() is not None)


def _one_store(store: str, url: str, shown_url: str | None, signer: Signer, out: Path, procs: Processes,
               config: SustainedConfig, commands: list[str], rate: float | None) -> Outcome:
    pem = out / "webhook-public.pem"
    pem.write_text(signer.public_pem)
    bodies = mixed_bodies(config.bodies, f"sus-{store}")
    signatures = [signer.sign(b) for b in bodies]
    use_wrk = loadgen.wrk_binary() is not None
    fake = fake_api(signer.public_pem)  # bench/rules.yaml's actions go somewhere that answers
    service = watch = None
    try:
        service = start_web(f"sustained-{store}", out, procs, pem, BENCH / "rules.yaml", url, fake.base_url,
                            commands, shown_url)
        port = service.web.port
        watch = StoreWatch(url)
        payloads = [http_request("127.0.0.1", port, b, s) for b, s in zip(bodies, signatures)]
        backlog = None
        if rate is None:
            log(f"sustained ({store}): no rate from section 1; measuring the intake alone for {config.probe:g} s")
            if use_wrk:
                probe = loadgen.run_wrk(f"http://127.0.0.1:{port}{PATH}",
                                        loadgen.write_wrk_script(out / f"sustained-{store}-probe.lua", bodies,
                                                                 signatures),
                                        duration=config.probe, connections=config.connections,
                                        threads=config.wrk_threads)
            else:
                probe = loadgen.closed_loop("127.0.0.1", port, payloads, concurrency=config.connections,
                                            duration=config.probe)
            rate, source = probe.rps, f"measured here, {config.probe:g} s closed loop, web alone"
            backlog = (watch.sample().depth, None)
        else:
            source = "section 1's median"
        if not rate or rate < 1:
            raise RuntimeError(f"no usable rate for {store}: {rate}")
        start_worker(service, procs, commands)
        if backlog is not None:  # the probe's deliveries: decided before the measured run starts
            took, last = watch.wait_until_empty(config.catch_up, every=0.2)
            backlog = (backlog[0], took)
            if took is None:
                log(f"sustained ({store}): {last.depth:,} of the probe's deliveries still undecided; going on")

        samples: list[StoreSample] = []
        stop = threading.Event()

        def look():
            while not stop.is_set():
                samples.append(watch.sample())
                stop.wait(config.sample_every)

        log(f"sustained ({store}): {rate:,.0f}/s for {config.duration:g} s, web and worker (load {load_average()})")
        sampler = threading.Thread(target=look, name="sustained-sampler", daemon=True)
        sampler.start()
        started = time.monotonic()
        try:
            if use_wrk:
                script = loadgen.write_wrk_script(out / f"sustained-{store}.lua", bodies, signatures,
                                                  rate_per_thread=rate / config.wrk_threads)
                result = loadgen.run_wrk(f"http://127.0.0.1:{port}{PATH}", script, duration=config.duration,
                                         connections=config.connections, threads=config.wrk_threads)
                result = replace(result, offered_rate=rate, sent_rate=result.requests / result.duration)
            else:
                count = max(1, int(rate * config.duration))
                result, _ = loadgen.open_loop("127.0.0.1", port, list(itertools.islice(itertools.cycle(payloads), count)),
                                              rate=rate, concurrency=config.connections, drain=5.0)
        finally:
            ended = time.monotonic()
            stop.set()
            sampler.join(timeout=60)
        samples.append(watch.sample())  # the first look was made as the load began, this one as it ended
        emptied, last = watch.wait_until_empty(config.catch_up, every=0.2)
        outcome = Outcome(store, rate, source, result, result.rps, samples, started, ended, emptied, last.depth,
                          backlog)
        log(f"sustained ({store}): took {outcome.taken:,.0f}/s, decided {fmt(outcome.decided_rate, 0)}/s, depth "
            f"{samples[0].depth:,} -> {max(s.depth for s in samples):,} -> {samples[-1].depth:,}, errors {result.errors}")
        commands.append(f"sustained, {store}, load: `{result.command}`")
        return outcome
    finally:
        if watch is not None:
            watch.close()
        if service is not None:
            for proc in (service.worker, service.web):
                if proc is not None:
                    procs.stop(proc)
        fake.stop()


def _report(outcomes: list[Outcome], config: SustainedConfig, use_wrk: bool) -> tuple[list, str]:
    rows, details, summary = [], [], []
    for o in outcomes:
        depths = [s.depth for s in o.samples]
        ages = [s.oldest_age for s in o.samples if s.oldest_age is not None]
        grows = o.grows(config.growth_allowance)
        ok = verdict(not grows)
        short = o.taken < 0.9 * o.rate
        if short:
            ok += f" (the intake took {o.taken / o.rate:.0%} of the rate asked)"
        rows.append([o.store, f"{o.rate:,.0f} ({o.rate_source})", fmt(o.taken, 0), o.load.errors,
                     fmt(o.decided_rate, 0), f"{depths[0]:,} / {max(depths):,} / {depths[-1]:,}",
                     fmt(o.trend, 1), f"{fmt(max(ages) if ages else None, 2)} / {fmt(o.samples[-1].oldest_age, 2)}",
                     fmt(o.emptied_after, 1) if o.emptied_after is not None
                     else f"not within {config.catch_up:g} s ({o.left:,} left)",
                     "" if o.backlog is None else f"{o.backlog[0]:,} in {fmt(o.backlog[1], 1)} s", ok])
        summary.append(["2. sustained", f"inbox depth start / max / end over {config.duration:g} s at "
                        f"{o.rate:,.0f}/s asked ({o.taken:,.0f}/s taken, {fmt(o.decided_rate, 0)}/s decided), {o.store}",
                        f"{depths[0]:,} / {max(depths):,} / {depths[-1]:,}",
                        f"does not grow (ends <= {config.growth_allowance:g} s of intake, no upward trend)", ok])
        for s in o.samples:
            details.append([o.store, fmt(s.at - o.load_started, 1), f"{s.depth:,}", fmt(s.oldest_age, 2),
                            f"{s.decided - o.samples[0].decided:,}"])
    how = (f"wrk ({config.wrk_threads} thread, {config.connections} connections) with a Lua script that paces "
           "it: each connection, when free, takes the next slot of a fixed schedule at the rate asked (wrk has "
           "no fixed-rate mode, and there is no wrk2); a server slower than the rate keeps every connection "
           "busy, and then the rate taken is lower than the rate asked" if use_wrk else
           f"the Python client (bench/loadgen.py) in open loop, up to {config.connections} connections")
    return summary, "\n".join([
        "## 2. Sustained: web and worker together at the intake's rate",
        "",
        f"The Procfile's `web` and `worker` on one store (SQLite, then PostgreSQL when configured; a new "
        f"database each), rules from bench/rules.yaml, the fake VideoSDK API answering the worker's calls. "
        f"For {config.duration:g} s the web takes signed deliveries ({config.bodies} distinct bodies, in turn) "
        f"at a fixed rate: the highest rate the intake took (section 1's median for that store, or measured "
        f"here when section 1 did not run: then the probe's deliveries are decided before the run starts). "
        f"Load: {how}. Every {config.sample_every:g} s the bench reads the inbox's depth, its oldest undecided "
        "delivery's age and the number of deliveries decided (recorded with their decisions) from the store, "
        "read-only, through the service's Store. 'Rate taken' counts the 2xx answers; 'rate decided' is the "
        "deliveries recorded per second between the first and the last look. Verdict: PASS when the inbox "
        f"does not grow: it ends no deeper than {config.growth_allowance:g} s of intake and its least-squares "
        f"trend over the run adds up to no more than that. Rows per fsync are not reported: the service does "
        "not count its group commits, and tracing its syscalls would slow what is measured.",
        "",
        table(["store", "rate asked /s", "rate taken /s", "errors", "rate decided /s", "inbox depth start / max / end",
               "depth trend /s", "oldest undecided age max / end s", "inbox empty after the load, s",
               "probe's backlog decided", "verdict"], rows),
        "",
        "<details><summary>every look at the store</summary>",
        "",
        table(["store", "s into the load", "inbox depth", "oldest undecided age s", "decided since the first look"],
              details),
        "",
        "</details>",
    ])
