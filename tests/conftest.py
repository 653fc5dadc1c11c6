"""Shared fixtures: keys that sign like VideoSDK, the fake API, apps on real SQLite files,
and a real PostgreSQL database when `ROOMWARDEN_TEST_POSTGRES_URL` names a server."""

from __future__ import annotations

import base64
import json
import os
import secrets
import socket
import uuid
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from service.app import create_app
from service.config import Settings
from service.runtime import build_decider, build_worker, open_store

from .fakeapi import FakeVideoSDK
from .procs import Processes, service_env

ROOT = Path(__file__).resolve().parent.parent
PAYLOADS = ROOT / "examples"
API_KEY = "test-api-key"
T0 = 1_700_000_000.0  # the tests' "now" on a fake clock: a fixed epoch second
SECRET = "test-secret-" + secrets.token_hex(16)  # unique per run, so a leak test can search for it
PG_ENV = "ROOMWARDEN_TEST_POSTGRES_URL"

# The rules most tests build on, each written once.
RULES_HEAD = """\
version: 1
rules:
"""
SESSION_RULE = """\
  - name: close-after-session
    on: session-ended
    action: deactivate
"""
# a room left empty for 5 minutes
EMPTY_RULE = """\
  - name: close-when-empty
    on: participant-left
    when:
      room.participants: 0
    for: 5m
    action: deactivate
"""

TEST_RULES = RULES_HEAD + SESSION_RULE + """\
  - name: close-long-recordings
    on: "recording-*"
    when:
      room.id: {matches: "^rec-"}
    action: deactivate
"""


@pytest.fixture(scope="session")
def private_key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="session")
def public_pem(private_key) -> str:
    # PKCS#1, the form VideoSDK serves (-----BEGIN RSA PUBLIC KEY-----).
    return private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.PKCS1).decode()


class Clock:
    """A clock the test moves by hand; pass it where the service takes a clock."""

    def __init__(self, now: float):
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now


def sign_with(private_key, body: bytes) -> str:
    return base64.b64encode(private_key.sign(body, padding.PKCS1v15(), hashes.SHA256())).decode()


@pytest.fixture(scope="session")
def sign(private_key):
    return lambda body: sign_with(private_key, body)


def event_body(event_type: str, **data) -> bytes:
    return json.dumps({"webhookType": event_type, "data": data}).encode()


def joined(room: str, who: str, session: str = "s1") -> bytes:
    return event_body("participant-joined", meetingId=room, sessionId=session, participantId=who)


def left(room: str, who: str, session: str = "s1") -> bytes:
    return event_body("participant-left", meetingId=room, sessionId=session, participantId=who)


SESSION_TIMES = {"start": "2026-11-26T10:00:00Z", "end": "2026-11-26T10:30:00Z"}  # as the documented example has


def ended(room: str, session: str = "s1", **times: str) -> bytes:
    """A session-ended body; `**SESSION_TIMES` adds its start and end."""
    return event_body("session-ended", meetingId=room, sessionId=session, **times)


@pytest.fixture
def fake_api(public_pem):
    fake = FakeVideoSDK(API_KEY, SECRET, public_pem)
    fake.start()
    yield fake
    fake.stop()


@pytest.fixture
def closed_port() -> int:
    """A loopback port with nothing listening: connections to it are refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def rules_file(tmp_path) -> Path:
    path = tmp_path / "rules.yaml"
    path.write_text(TEST_RULES)
    return path


@pytest.fixture
def env(tmp_path, fake_api, rules_file) -> dict[str, str]:
    """The environment of a deployed service, pointed at the fake API and a fresh SQLite file."""
    return {
        "VIDEOSDK_API_KEY": API_KEY,
        "VIDEOSDK_SECRET_KEY": SECRET,
        "VIDEOSDK_API_BASE": fake_api.base_url,
        "RULES_FILE": str(rules_file),
        "DATABASE_URL": f"sqlite:///{tmp_path}/roomwarden.db",
        "VIDEOSDK_TIMEOUT_SECONDS": "2",
        "ACTION_LEASE_SECONDS": "5",
        "WORKER_POLL_SECONDS": "0.05",
    }


@pytest.fixture
def make_app(env):
    apps = []

    def make(**overrides):
        app = create_app(Settings.from_env({**env, **overrides}))
        app.config["TESTING"] = True
        apps.append(app)
        return app

    yield make
    for app in apps:
        for store in app.extensions.get("roomwarden-worker-stores", ()):
            store.close()
        app.extensions["roomwarden"].close()


def worker_beside(app):
    """A worker over the app's database and rules, with a store of its own as the worker process
    opens one: the web process's store (a WebStore) has no outbox, timers or sweeps."""
    runtime = app.extensions["roomwarden"]
    store = open_store(runtime.settings)
    app.extensions.setdefault("roomwarden-worker-stores", []).append(store)  # closed with the app
    return build_worker(runtime.settings, store, runtime.rules)


@pytest.fixture
def app(make_app):
    return make_app()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def clock():
    """A fake clock standing at T0; the test moves it."""
    return Clock(T0)


@pytest.fixture
def store(tmp_path, clock):
    """A migrated store in a fresh SQLite file, on `clock` (test_store's runs on both databases)."""
    from service.store import Store

    store = Store.from_url(f"sqlite:///{tmp_path}/store.db", clock)
    store.db.migrate()
    yield store
    store.close()


def ingest(store, delivery, plan):
    """A delivery through the store's real path, with `plan` standing in for the planner: appended
    to the inbox, then taken out in a decider's transaction (`Inbox.deciding`), where `plan` is
    handed the room's locked state, pending timers and action keys, and what it returns is
    recorded with the delivery. A delivery kept unread (`problem`) is recorded without asking
    `plan`, as the decider does. Rows of other deliveries are left for their own callers."""
    from service.store.inbox import InboxItem

    store.inbox.append(InboxItem(id=delivery.id, received_at=delivery.received_at, room_id=delivery.room_id,
                                 body=delivery.body, signature=None, verified=delivery.verified))
    return decide_appended(store, delivery, plan)


def decide_appended(store, delivery, plan):
    """The decider's part of `ingest`, for a delivery already in the inbox (appended, or left there
    by a failed try: the retry a decider makes)."""
    while True:
        with store.inbox.deciding(10_000) as batch:
            for row in batch.rows:
                if row.id != delivery.id:
                    batch.keep(row)
                    continue
                room_id = delivery.room_id if delivery.known else None
                if delivery.problem is not None:
                    write = None
                elif room_id is None:
                    write = plan(None, [], set())
                else:
                    write = plan(*batch.room_inputs(room_id))
                return batch.record(row, delivery, write)
        # another caller's transaction holds this row's room (PostgreSQL): take turns


def deliver(store, rules, raw: bytes, *, at: float, verified: bool | None = True, acts: bool = True):
    """One delivery through the real pipeline behind the request: into the inbox as the web
    request leaves it (received at `at`), then decided by the real Decider with the rule set
    `rules` (a RuleSet, or a callable returning one). Returns the delivery's Receipt."""
    from service.accept import new_delivery_id
    from service.decider import Decider
    from service.events import read_envelope
    from service.store.inbox import InboxItem

    _, room_id = read_envelope(raw)
    item = InboxItem(id=new_delivery_id(at), received_at=at, room_id=room_id, body=raw.decode("utf-8"),
                     signature=None, verified=verified)
    store.inbox.append(item)
    current = rules if callable(rules) else (lambda: rules)
    decided = {d.delivery_id: d for d in Decider(store.inbox, current, acts=acts, verifier=None).drain()}
    return decided[item.id].receipt


def decide(app) -> list:
    """Decide what the app's inbox holds, as the worker's decider does, until nothing is left it
    can take. Returns what became of each delivery (decider.Decided)."""
    runtime = app.extensions["roomwarden"]
    return build_decider(runtime.settings, runtime.store, runtime.rules, runtime.verifier).drain()


def decided(app, response) -> list[dict]:
    """The decisions made about the delivery a 202 names, once decided: rule, action, outcome and
    action id, as the webhook's answer carried them before deciding moved behind the request."""
    decide(app)
    store = app.extensions["roomwarden"].store
    return [{"rule": d["rule"], "action": d["action"], "outcome": d["outcome"], "action_id": d["action_id"]}
            for d in store.history.decisions(delivery_id=response.get_json()["delivery"])]


@pytest.fixture
def post(app, client, sign):
    """POST a signed body to the webhook, as VideoSDK would, then let the decider take it, as the
    worker would: what the delivery decided is in the store when this returns."""

    def post(body: bytes, *, signature: str | None = None, **headers):
        headers.setdefault("Content-Type", "application/json")
        headers["videosdk-signature"] = sign(body) if signature is None else signature
        response = client.post("/webhooks/videosdk", data=body, headers=headers)
        if response.status_code == 202:
            decide(app)
        return response

    return post


# -- PostgreSQL ----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def pg_database():
    """A throwaway database on the configured server, dropped at the end of the run."""
    base = os.environ.get(PG_ENV)
    if not base:
        pytest.skip(f"{PG_ENV} is not set: no PostgreSQL server configured for the tests")
    import psycopg
    from sqlalchemy.engine import make_url

    name = f"roomwarden_test_{uuid.uuid4().hex[:12]}"
    admin = make_url(base).set(drivername="postgresql")
    try:
        with psycopg.connect(admin.render_as_string(hide_password=False), autocommit=True,
                             connect_timeout=5) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError as exc:
        pytest.fail(f"{PG_ENV}={base} is set but the server cannot be used: {exc}")
    url = admin.set(database=name).render_as_string(hide_password=False)
    yield url
    with psycopg.connect(admin.render_as_string(hide_password=False), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def pg_url(pg_database) -> str:
    """The test database, emptied: each test starts from no schema at all."""
    import psycopg

    with psycopg.connect(pg_database, autocommit=True) as conn:
        conn.execute("DROP SCHEMA public CASCADE")
        conn.execute("CREATE SCHEMA public")
    return pg_database


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path) -> str:
    """Each store test runs on a real SQLite file and on a real PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/store.db"
    return request.getfixturevalue("pg_url")


CHROMIUM = "/usr/bin/chromium"  # Debian's; bin/test installs it, Playwright never downloads one
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def browser():
    """Debian's chromium through Playwright, for the dashboard's browser tests; skipped, with the
    reason, when it is missing or does not start."""
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing (bin/test installs Debian's chromium with apt-get when it can)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        pytest.skip(f"playwright is not installed: {exc}")
    with sync_playwright() as playwright:
        try:
            chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        except Exception as exc:  # noqa: BLE001 - whatever stops the browser, say it and skip
            pytest.skip(f"{CHROMIUM} does not start: {str(exc).splitlines()[0]}")
        yield chromium
        chromium.close()


@pytest.fixture
def make_store(database_url):
    """Stores on the test database (SQLite and PostgreSQL, by `database_url`), each with its own
    engine, on a Clock at T0 unless given one; all closed at teardown."""
    from service.store import Store

    made: list = []

    def make(clock=None, *, migrate: bool = True, url: str | None = None):
        store = Store.from_url(url or database_url, clock or Clock(T0))
        made.append(store)
        if migrate:
            store.db.migrate()
        return store

    yield make
    for store in made:
        store.close()


@pytest.fixture
def processes(tmp_path, fake_api, rules_file):
    """Starts Procfile commands against the fake API and a fresh SQLite file; stops them after."""
    env = service_env(api_key=API_KEY, secret=SECRET, api_base=fake_api.base_url, rules_file=rules_file,
                      database_url=f"sqlite:///{tmp_path}/e2e.db",
                      PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "metrics"))
    procs = Processes(tmp_path, env)
    yield procs
    procs.stop_all()


# -- the attacks tried (issue 15): what each test marked `attack` found, for docs/reliability.md ---

ATTACKS_FILE = ROOT / "test-artifacts" / "attacks.json"
_ATTACKS: dict[str, dict] = {}  # attack -> {"tests": {node id: outcome}}


_COLLECTED_FILES: set[str] = set()


def pytest_collection_modifyitems(config, items):
    for item in items:
        _COLLECTED_FILES.add(item.path.name)
        marker = item.get_closest_marker("attack")
        if marker is not None:
            _ATTACKS.setdefault(marker.args[0], {"tests": {}})["tests"][item.nodeid] = "not run"


def pytest_runtest_logreport(report):
    for attack in _ATTACKS.values():
        if report.nodeid in attack["tests"] and (report.when == "call" or report.outcome != "passed"):
            if attack["tests"][report.nodeid] in ("not run", "passed"):  # a later failure is kept
                attack["tests"][report.nodeid] = report.outcome


def pytest_sessionfinish(session):
    """Written only when every marked test was collected (a whole run), so that a partial run
    never overwrites the figures of record with a part of them."""
    every_file = {path.name for path in (ROOT / "tests").glob("test_*.py")}
    if not _ATTACKS or _COLLECTED_FILES != every_file or session.config.option.keyword or \
            session.config.option.markexpr:
        return
    summary = {}
    for name, attack in sorted(_ATTACKS.items()):
        outcomes = list(attack["tests"].values())
        summary[name] = {"tests": len(outcomes), **{o: outcomes.count(o) for o in sorted(set(outcomes))},
                         "held": all(o == "passed" for o in outcomes)}
    ATTACKS_FILE.parent.mkdir(parents=True, exist_ok=True)
    ATTACKS_FILE.write_text(json.dumps(summary, indent=2) + "\n")
