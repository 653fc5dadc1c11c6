"""Section 3: slow clients. The real web app (Procfile `web:`, gevent, SQLite) with hundreds of
connections stalled part-way through their requests: are `/healthz` and a signed delivery still
answered within a second? (issue 14: 200 stalled; issue 15: 500 mid-headers and 100 mid-body)

A stalled connection here is a client that sent part of a request and then nothing more, and
keeps its socket open: mid-headers (the request line and some headers, no blank line) or mid-body
(whole signed headers and half the body its Content-Length promises). Everything goes to
127.0.0.1; every loop is bounded; every socket is closed before the section returns."""

from __future__ import annotations

import http.client
import re
import resource
import selectors
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from .common import (BENCH, HEADER, PATH, ROOT, Processes, Signer, event_body, fmt, log, median, table, tail,
                     verdict)
from .services import start_web

TARGET_SECONDS = 1.0
PROBE_TIMEOUT = 10.0  # a probe not answered by then counts as failed, with this time


@dataclass
class SlowConfig:
    probes: int  # of each kind (/healthz, a signed delivery) per row
    rows: tuple = ((200, 0), (500, 100))  # (stalled mid-headers, stalled mid-body)


FULL = SlowConfig(probes=20)
QUICK = SlowConfig(probes=5)


@dataclass
class Stalled:
    kind: str  # headers | body
    sock: socket.socket
    opened: float  # time.monotonic()
    closed_after: float | None = None  # seconds after `opened` the server closed it (EOF or reset)
    answer: bytes | None = None  # what the server wrote before closing, if anything (first bytes)


@dataclass
class Probe:
    kind: str  # healthz | delivery
    ms: float
    status: int  # 0: no answer
    stalled_open: int  # stalled connections still open when it was sent


@dataclass
class RowResult:
    headers: int
    body: int
    stalled: list[Stalled] = field(default_factory=list)
    refused: int = 0  # stalled connections that could not even be opened
    open_seconds: float = 0.0  # time to open all the stalled connections
    probes: list[Probe] = field(default_factory=list)
    watched: float = 0.0  # seconds the stalled connections were watched for closing


def gunicorn_setting(name: str, default: float) -> float:
    """A plain `name = number` of gunicorn.conf.py (read as text: importing it has side effects)."""
    found = re.search(rf"^{name}\s*=\s*([0-9.]+)\s*$", (ROOT / "gunicorn.conf.py").read_text(), re.M)
    return float(found.group(1)) if found else default


def _raise_fd_limit(wanted: int) -> str:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        new = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
        return f"raised from {soft} to {new} (hard limit {hard})"
    return f"{soft} (no change needed)"


class Watcher(threading.Thread):
    """Notes when the server closes each stalled connection (EOF or reset), and what it wrote first."""

    def __init__(self, stalled: list[Stalled]):
        super().__init__(name="slow-clients-watcher", daemon=True)
        self.stalled = stalled
        self.selector = selectors.DefaultSelector()
        self.done = threading.Event()
        for item in stalled:
            item.sock.setblocking(False)
            self.selector.register(item.sock, selectors.EVENT_READ, item)

    def open_count(self) -> int:
        return sum(1 for item in self.stalled if item.closed_after is None)

    def run(self) -> None:
        while not self.done.is_set():
            if not self.selector.get_map():
                self.done.wait(0.1)
                continue
            for key, _ in self.selector.select(timeout=0.1):
                item: Stalled = key.data
                try:
                    data = item.sock.recv(65536)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""  # reset
                if data:
                    item.answer = item.answer or data[:40]
                    continue
                item.closed_after = time.monotonic() - item.opened
                self.selector.unregister(item.sock)

    def stop(self) -> None:
        self.done.set()
        self.join(timeout=10)
        self.selector.close()


def run(signer: Signer, out: Path, procs: Processes, config: SlowConfig, commands: list[str]) -> tuple[list, str]:
    most = max(h + b for h, b in config.rows)
    fd_note = _raise_fd_limit(most + 256)  # before the web starts: it inherits the limit
    keepalive, timeout = gunicorn_setting("keepalive", 2), gunicorn_setting("timeout", 30)
    pem = out / "webhook-public.pem"
    pem.write_text(signer.public_pem)
    service = start_web("slow-clients", out, procs, pem, BENCH / "rules.yaml", f"sqlite:///{out}/slow-clients.db",
                        "http://127.0.0.1:9", commands)
    port = service.web.port
    results: list[RowResult] = []
    try:
        for number, (headers, body) in enumerate(config.rows):
            # Watched long enough to see what gunicorn does to each kind: its keep-alive timeout
            # bounds the wait for a request's headers (gevent worker); its `timeout` is the last
            # bound that could apply to a stalled body.
            hold = (timeout if body else keepalive) + 5
            log(f"slow clients: {headers} stalled mid-headers, {body} mid-body; {config.probes} probes of each "
                f"kind; watching them {hold:g} s")
            results.append(_row(port, signer, headers, body, config.probes, hold, f"r{number}"))
            if service.web.popen.poll() is not None:
                raise RuntimeError(f"the web process exited:\n{tail(service.web.log_path)}")
        after = _probe(port, "healthz", None, 0)
    finally:
        procs.stop(service.web)
    return _report(results, config, keepalive, timeout, fd_note, after)


def _row(port: int, signer: Signer, headers: int, body: int, probes: int, hold: float, tag: str) -> RowResult:
    result = RowResult(headers, body)
    deliveries = []
    for i in range(probes + body):
        raw = event_body("participant-joined", meetingId=f"slow-{tag}-{i:04d}", sessionId=f"s-{tag}-{i}",
                         participantId="p1", participantName="Ada")
        deliveries.append((raw, signer.sign(raw)))
    watcher = None
    started = time.monotonic()
    try:
        for i in range(headers + body):
            try:
                sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            except OSError:
                result.refused += 1
                continue
            item = Stalled("headers" if i < headers else "body", sock, time.monotonic())
            result.stalled.append(item)
            try:
                if item.kind == "headers":  # no blank line: the headers never end
                    sock.sendall(f"POST {PATH} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                                 "Content-Type: application/json\r\n".encode())
                else:  # the whole head, then half the body it promises
                    raw, signature = deliveries[probes + i - headers]
                    sock.sendall(f"POST {PATH} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                                 f"Content-Type: application/json\r\n{HEADER}: {signature}\r\n"
                                 f"Content-Length: {len(raw)}\r\n\r\n".encode() + raw[:len(raw) // 2])
            except OSError:
                item.closed_after = time.monotonic() - item.opened
        result.open_seconds = time.monotonic() - started
        watcher = Watcher(result.stalled)
        watcher.start()
        for i in range(probes):  # at once: a mid-headers stall lasts only until gunicorn gives up on it
            result.probes.append(_probe(port, "healthz", None, watcher.open_count()))
            result.probes.append(_probe(port, "delivery", deliveries[i], watcher.open_count()))
        while time.monotonic() - started < hold and watcher.open_count():
            time.sleep(0.2)
        result.watched = time.monotonic() - started
    finally:
        if watcher is not None:
            watcher.stop()
        for item in result.stalled:
            item.sock.close()
    return result


def _probe(port: int, kind: str, delivery: tuple[bytes, str] | None, stalled_open: int) -> Probe:
    """One request on a connection of its own, timed from connecting to the whole answer read."""
    started = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=PROBE_TIMEOUT)
    try:
        if delivery is None:
            conn.request("GET", "/healthz")
        else:
            conn.request("POST", PATH, body=delivery[0],
                         headers={"Content-Type": "application/json", HEADER: delivery[1]})
        answer = conn.getresponse()
        answer.read()
        status = answer.status
    except OSError:
        status = 0
    finally:
        conn.close()
    return Probe(kind, (time.perf_counter() - started) * 1000, status, stalled_open)


def _report(results: list[RowResult], config: SlowConfig, keepalive: float, timeout: float, fd_note: str,
            after: Probe) -> tuple[list, str]:
    expected = {"healthz": 200, "delivery": 202}
    rows, closing, summary = [], [], []
    for r in results:
        what = f"{r.headers} mid-headers" + (f" + {r.body} mid-body" if r.body else "")
        cells = []
        for kind in ("healthz", "delivery"):
            probes = [p for p in r.probes if p.kind == kind]
            times = [p.ms for p in probes]
            bad = [p for p in probes if p.status != expected[kind] or p.ms > TARGET_SECONDS * 1000]
            ok = bool(probes) and not bad
            worst = max(times) if times else None
            cells += [fmt(median(times), 1), fmt(worst, 1),
                      f"{len(probes) - len(bad)} / {len(probes)}"]
            summary.append(["3. slow clients", f"{what} stalled: {'/healthz' if kind == 'healthz' else 'a signed delivery'}, "
                            f"slowest of {len(probes)}", fmt(worst, 1) + " ms",
                            f"each answered ({expected[kind]}) within {TARGET_SECONDS * 1000:,.0f} ms", verdict(ok)])
        open_during = [p.stalled_open for p in r.probes]
        rows.append([what, f"{len(r.stalled):,}" + (f" ({r.refused} refused)" if r.refused else ""),
                     fmt(r.open_seconds, 2), f"{min(open_during, default=0):,} - {max(open_during, default=0):,}",
                     *cells])
        for kind in ("headers", "body"):
            mine = [s for s in r.stalled if s.kind == kind]
            if not mine:
                continue
            closed = [s.closed_after for s in mine if s.closed_after is not None]
            answered = sorted({s.answer.split(b"\r\n", 1)[0].decode(errors="replace") for s in mine if s.answer})
            closing.append([what, f"mid-{kind}", f"{len(mine):,}", f"{len(closed):,}",
                            f"{fmt(min(closed), 1)} / {fmt(median(closed), 1)} / {fmt(max(closed), 1)}" if closed else "n/a",
                            f"{sum(1 for s in mine if s.closed_after is not None and s.closed_after > timeout):,}",
                            "; ".join(answered) or "nothing", fmt(r.watched, 1)])
    return summary, "\n".join([
        "## 3. Slow clients: stalled connections against /healthz and a signed delivery",
        "",
        "The Procfile's `web` alone (gunicorn.conf.py: gevent, 2 workers, WEB_CONNECTIONS unset so up to 1,000 "
        "connections each), on SQLite; no worker runs (nothing here needs deciding). For each row the bench "
        "opens the stalled connections one after another: mid-headers ones send a request line and one "
        "header, never the blank line that ends them; mid-body ones send a whole signed delivery's headers "
        "and half the body their Content-Length promises. Then, at once, it sends "
        f"{config.probes} `GET /healthz` and {config.probes} signed deliveries, in turns, each on a new "
        f"connection, timed from connecting to the whole answer read (a probe unanswered after "
        f"{PROBE_TIMEOUT:g} s fails). Target: every one answered (200 and 202) within "
        f"{TARGET_SECONDS * 1000:,.0f} ms. Afterwards the stalled connections are watched until "
        f"gunicorn's keep-alive ({keepalive:g} s, which in the gevent worker bounds the wait for a request's "
        f"headers) plus 5 s for the first row, and until gunicorn's `timeout` ({timeout:g} s) plus 5 s for "
        "the second (or until the server has closed them all), to see which the server closes and when; "
        "then the bench closes them all. The bench "
        f"process's open-file limit: {fd_note}.",
        "",
        table(["stalled", "opened", "s to open them", "still open during the probes",
               "/healthz p50 ms", "/healthz max ms", "/healthz answered within 1 s",
               "delivery p50 ms", "delivery max ms", "delivery answered within 1 s"], rows),
        "",
        "### What the server did with the stalled connections",
        "",
        table(["row", "kind", "stalled", "closed by the server", "closed after s (min / median / max)",
               f"of them after gunicorn's timeout ({timeout:g} s)", "what it wrote first", "watched s"], closing),
        "",
        f"After the rows (the stalled connections closed): `/healthz` answered {after.status or 'nothing'} in "
        f"{after.ms:,.1f} ms.",
    ])
