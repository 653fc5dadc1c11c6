"""The service's processes as the sections start them: the Procfile's `web` and `worker` (or the
bare app in the web command's place), their environment, the fake VideoSDK API they call, and a
read-only look at their store (inbox depth, deliveries decided)."""

from __future__ import annotations

import re
import secrets
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .common import API_KEY, ROOT, SECRET, Proc, Processes, base_env, free_port, procfile, tail, wait_until_up


# The admin token of every process a bench starts: /readyz shows the inbox only to the admin.
# Made afresh for each run and never written to the results.
ADMIN_TOKEN = "bench-" + secrets.token_hex(16)
ADMIN_HEADERS = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def service_env(out: Path, signer_pem: Path, rules: Path, database_url: str, port: int, metrics: str,
                api_base: str = "http://127.0.0.1:9") -> tuple[dict, dict]:
    """(full environment, the settings worth showing) for a Procfile process."""
    shown = {
        "PORT": str(port), "HOST": "127.0.0.1",
        "DATABASE_URL": database_url,
        "RULES_FILE": str(rules),
        "VIDEOSDK_WEBHOOK_PUBLIC_KEY": str(signer_pem),
        "VIDEOSDK_API_BASE": api_base,
        "PROMETHEUS_MULTIPROC_DIR": str(out / metrics),
    }
    env = {**base_env(), **shown, "VIDEOSDK_API_KEY": API_KEY, "VIDEOSDK_SECRET_KEY": SECRET,
           "ADMIN_TOKEN": ADMIN_TOKEN}
    shown["VIDEOSDK_API_KEY"] = shown["VIDEOSDK_SECRET_KEY"] = shown["ADMIN_TOKEN"] = "(set)"
    return env, shown


def bare_command() -> str:
    """The Procfile's web command with only the app swapped for bench/bare_app.py."""
    web = procfile()["web"]
    app = "'service:create_app()'"
    if app not in web:
        raise RuntimeError(f"the Procfile's web command no longer names {app}: {web}")
    return web.replace(app, "'bench.bare_app:create_app()'")


def fake_api(public_pem: str):
    """tests/fakeapi.py's FakeVideoSDK, started, with Nagle off on its connections (see below)."""
    sys.path.insert(0, str(ROOT))
    from tests.fakeapi import FakeVideoSDK  # the tests' fake API, reused as it is

    fake = FakeVideoSDK(API_KEY, SECRET, public_pem)
    fake.start()
    # The fake writes an answer's head and body in two writes, on sockets that keep Nagle's
    # algorithm on: the body then waits for the client's delayed ACK, about 40 ms a call on Linux,
    # which would be measured as the service's. Turn Nagle off for its connections (the handler
    # class is made afresh by each start(), so this changes this instance only).
    fake._server.RequestHandlerClass.disable_nagle_algorithm = True
    # A worker stopped mid-connection is normal here; don't print its ConnectionResetError.
    fake._server.handle_error = lambda request, client_address: None
    return fake


@dataclass
class Service:
    """A web process (and, once started, its worker) on one store."""

    name: str
    env: dict
    shown: dict
    web: Proc
    worker: Proc | None = None


def start_web(name: str, out: Path, procs: Processes, pem: Path, rules: Path, database_url: str,
              api_base: str, commands: list[str], shown_url: str | None = None,
              extra_env: dict | None = None) -> Service:
    """The Procfile's web process, up (its /readyz answers 200)."""
    port = free_port()
    env, shown = service_env(out, pem, rules, database_url, port, f"metrics-{name}", api_base=api_base)
    env.update(extra_env or {})
    shown.update(extra_env or {})
    if shown_url:
        shown["DATABASE_URL"] = shown_url
    web = procs.start(f"{name}-web", procfile()["web"], env, port=port, shown_env=shown)
    wait_until_up(web)
    commands.append(f"{name}, web: `{web.describe()}`")
    return Service(name, env, shown, web)


def start_worker(service: Service, procs: Processes, commands: list[str], timeout: float = 60) -> Proc:
    """The Procfile's worker on the web process's store and settings, once it says it started."""
    shown = {k: v for k, v in service.shown.items() if k not in ("PORT", "HOST")}
    worker = procs.start(f"{service.name}-worker", procfile()["worker"], service.env, shown_env=shown)
    deadline = time.monotonic() + timeout
    while not re.search(r"worker \S+ started", tail(worker.log_path, 200)):
        if worker.popen.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the worker did not start:\n{tail(worker.log_path)}")
        time.sleep(0.1)
    service.worker = worker
    commands.append(f"{service.name}, worker: `{worker.describe()}`")
    return worker


def start_services(name: str, out: Path, procs: Processes, pem: Path, rules: Path, database_url: str,
                   api_base: str, commands: list[str], shown_url: str | None = None,
                   extra_env: dict | None = None) -> tuple[Proc, Proc]:
    """The Procfile's web and worker, on one store, pointed at the API at `api_base`; (web, worker)."""
    service = start_web(name, out, procs, pem, rules, database_url, api_base, commands, shown_url, extra_env)
    return service.web, start_worker(service, procs, commands)


@dataclass(frozen=True)
class StoreSample:
    at: float  # time.monotonic() in the bench process
    depth: int  # deliveries in the inbox, not yet decided
    oldest_age: float | None  # seconds the oldest of them has waited (None: the inbox is empty)
    decided: int  # deliveries recorded (decided) so far


class StoreWatch:
    """A read-only look at a service's store from the bench process, through the service's own
    Store (`inbox_stats`, `count_deliveries_since`): no SQL of the bench's own. Read transactions
    only: it never takes SQLite's write lock, so it does not slow the writers it watches (beyond
    the reads' own CPU)."""

    def __init__(self, database_url: str):
        from service.store import Store

        self._store = Store.from_url(database_url)

    def sample(self) -> StoreSample:
        depth, oldest = self._store.inbox.inbox_stats()
        decided = self._store.history.count_deliveries_since(0.0)
        return StoreSample(time.monotonic(), depth, max(0.0, time.time() - oldest) if oldest is not None else None,
                           decided)

    def wait_until_empty(self, timeout: float, every: float = 0.5) -> tuple[float | None, StoreSample]:
        """Seconds until the inbox was empty (None: still not after `timeout`), and the last sample."""
        started = time.monotonic()
        while True:
            last = self.sample()
            if last.depth == 0:
                return last.at - started, last
            if time.monotonic() - started > timeout:
                return None, last
            time.sleep(every)

    def close(self) -> None:
        self._store.close()
