"""Section 7: sweeps (issue 16), in this process: rooms swept per second and the store's statements
per room, at 10,000 and 100,000 known rooms (--quick: 1,000 and 10,000), on SQLite and on
PostgreSQL when one is configured.

For each store and size, a fresh store (`Store.from_url`, `migrate`) is seeded in bulk, then:

- the round: `Store.sweep_turn` called as `Worker.sweep_once` calls it (sweeps.CHUNK rooms a
  turn, sweeps.LEASE_SECONDS) until the round is finished, which appends one `sweep` to the
  inbox per open room;
- deciding: `Decider.decide_once` (the worker's decider, its default batch) until the inbox is
  empty; 1% of the rooms are quiet past the rule's threshold, so their sweeps schedule a
  deactivate (which stays pending: no worker acts and no API is called);
- for comparison, ordinary deliveries (`participant-left`, one per room, no rule applying) for
  some of the same rooms, put in the inbox the same way and decided by the same decider.

Statements are counted on the database driver's connections (see `Tally`), so that those the
store runs through service/store/driver.py, past SQLAlchemy, are counted too.
"""

from __future__ import annotations

import hashlib
import re
import sqlite3
import time
import timeit
from collections import Counter
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import event, func, insert, select

from service import sweeps
from service.accept import new_delivery_id
from service.actor import Actor
from service.decider import Decider
from service.retrypolicy import RetryPolicy
from service.rooms import RoomState
from service.rules.loader import parse_rules
from service.store import Store
from service.store.inbox import InboxItem
from service.store.tables import actions, decisions, deliveries, inbox, rooms
from service.worker import Worker

from .common import ThrowawayDatabase, event_body, fmt, load_average, log, table

FULL_SIZES = (10_000, 100_000)
QUICK_SIZES = (1_000, 10_000)
QUIET_EVERY = 100  # one room in this many has been quiet past the rule's threshold (1%)
RULE = "close-forgotten"
RULES = f"""\
version: 1
settings:
  sweep_every: 10m
rules:
  - name: {RULE}
    on: sweep
    when:
      room.quiet_for: {{gte: 2h}}
    confirm: no-live-session
    action: deactivate
"""
T0 = 1_793_000_000.0  # the clock's fixed reading during the round and the deciding (2026-10-26)
QUIET_AGE = 3 * 3600.0  # the quiet rooms were last heard from this long before T0 (> 2h)
BUSY_AGE = 600.0  # ... the others at most this long before (< 2h), spread over it
SEED_CHUNK = 5_000  # rows per INSERT while seeding
OWNER = "bench-sweep"
LATE_ROOM = "bench-late-room"  # not seeded: the room of a webhook delivery that comes after the round


class Clock:
    """The store's and the decider's clock: stays where it is put."""

    def __init__(self, now: float):
        self.now = now

    def __call__(self) -> float:
        return self.now


# -- counting statements ------------------------------------------------------------------------

_TX = ("BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE", "START", "END")
_WRITES = re.compile(r"\b(INSERT|UPDATE|DELETE)\b", re.IGNORECASE)
_PING = re.compile(r"^\s*(select\s+1\s*|;\s*)$", re.IGNORECASE)  # SQLAlchemy's pre-ping (psycopg: ";")


def kind(sql: str) -> str:
    """read (a SELECT, or a WITH that only reads), write (INSERT/UPDATE/DELETE, and PostgreSQL's
    `SELECT pg_notify`), tx (BEGIN ...), ping (SQLAlchemy's pool pre-ping) or other (PRAGMA)."""
    if _PING.match(sql):
        return "ping"
    head = (sql.split(None, 1) or [""])[0].upper()
    if head in _TX:
        return "tx"
    if head == "SELECT":
        return "write" if "pg_notify(" in sql else "read"
    if head == "WITH":
        return "write" if _WRITES.search(sql) else "read"
    if head == "PRAGMA":
        return "other"
    return "write"


def shape(sql: str) -> str:
    """A statement's text, shortened, to group counts by."""
    text = " ".join(sql.split())
    text = re.sub(r"\(\s*(\?|%s|\$\d+|%\(\w+\)s)(\s*,\s*(\?|%s|\$\d+|%\(\w+\)s))+\s*\)", "(...)", text)
    text = re.sub(r"__\[POSTCOMPILE_\w+\]", "(...)", text)
    text = re.sub(r"IN \((\?|%s)(, (\?|%s))*\)", "IN (...)", text)
    return text if len(text) <= 110 else text[:107] + "..."


@dataclass
class Tally:
    """Statements run on a store's connections while `on`.

    Counted where every statement goes, the DB-API connection: a sqlite3.Connection subclass
    (`factory`) and a psycopg cursor class (`cursor_factory`), set on the engine's new
    connections by a `do_connect` listener. A listener on SQLAlchemy's `before_cursor_execute`
    alone (also kept, as `sqlalchemy`) misses what service/store/driver.py runs on the driver's
    connection directly: most of the decider's statements. One `executemany` call is one
    statement (sqlite3 then steps it once per row, in process; psycopg pipelines it);
    `commits` are SQLAlchemy's commit events (transactions)."""

    on: bool = False
    kinds: Counter = field(default_factory=Counter)
    shapes: Counter = field(default_factory=Counter)
    sqlalchemy: int = 0
    commits: int = 0

    def add(self, sql: str) -> None:
        if self.on:
            self.kinds[kind(sql)] += 1
            self.shapes[shape(sql)] += 1

    def reset(self) -> None:
        self.kinds, self.shapes, self.sqlalchemy, self.commits = Counter(), Counter(), 0, 0

    def snapshot(self) -> dict:
        return {"kinds": Counter(self.kinds), "shapes": Counter(self.shapes), "sqlalchemy": self.sqlalchemy,
                "commits": self.commits}


def _sqlite_factory(tally: Tally):
    class CountingCursor(sqlite3.Cursor):
        def execute(self, sql, parameters=(), /):
            tally.add(sql)
            return super().execute(sql, parameters)

        def executemany(self, sql, seq_of_parameters, /):
            tally.add(sql)
            return super().executemany(sql, seq_of_parameters)

        def executescript(self, script, /):
            tally.add(script)
            return super().executescript(script)

    class CountingConnection(sqlite3.Connection):
        # sqlite3.Connection.execute makes its cursor in C, past `cursor()`: both go through here.
        def cursor(self, factory=CountingCursor):
            return super().cursor(factory)

        def execute(self, sql, parameters=(), /):
            return self.cursor().execute(sql, parameters)

        def executemany(self, sql, seq_of_parameters, /):
            return self.cursor().executemany(sql, seq_of_parameters)

    return CountingConnection


def _psycopg_cursor(tally: Tally):
    import psycopg

    class CountingCursor(psycopg.Cursor):
        def execute(self, query, *args, **kwargs):
            tally.add(query if isinstance(query, str) else str(query))
            return super().execute(query, *args, **kwargs)

        def executemany(self, query, *args, **kwargs):
            tally.add(query if isinstance(query, str) else str(query))
            return super().executemany(query, *args, **kwargs)

    return CountingCursor


def counted(store: Store) -> Tally:
    """Count the store's statements from now on (its pooled connections are replaced)."""
    tally = Tally()
    engine = store.db.engine
    if engine.dialect.name == "sqlite":
        factory = _sqlite_factory(tally)

        @event.listens_for(engine, "do_connect")
        def _sqlite(dialect, conn_rec, cargs, cparams):
            cparams["factory"] = factory
    else:
        cursor = _psycopg_cursor(tally)

        @event.listens_for(engine, "do_connect")
        def _pg(dialect, conn_rec, cargs, cparams):
            cparams["cursor_factory"] = cursor

    @event.listens_for(engine, "before_cursor_execute")
    def _seen(conn, cursor, statement, parameters, context, executemany):
        if tally.on:
            tally.sqlalchemy += 1

    @event.listens_for(engine, "commit")
    def _commit(conn):
        if tally.on:
            tally.commits += 1

    engine.dispose()
    return tally


# -- the store --------------------------------------------------------------------------------------


def rule_set():
    loaded, problems = parse_rules(RULES, "<bench sweep>")
    if loaded is None:
        raise RuntimeError(f"the sweep rules did not load: {[str(p) for p in problems]}")
    return loaded


def room_name(number: int) -> str:
    return f"bench-room-{number:06d}"


def seed(store: Store, count: int, rules_hash: str) -> set[str]:
    """`count` rooms, each with the one delivery it was last heard from (a participant-left after
    its session ended): one in QUIET_EVERY three hours before T0, the rest within BUSY_AGE of it.
    Bulk INSERTs of SEED_CHUNK rows, in one transaction. Returns the quiet rooms."""
    quiet = set()
    with store.db.engine.begin() as conn:
        for start in range(0, count, SEED_CHUNK):
            room_rows, delivery_rows = [], []
            for number in range(start, min(count, start + SEED_CHUNK)):
                room, session = room_name(number), f"s-{number:06d}"
                if number % QUIET_EVERY == 0:
                    quiet.add(room)
                    seen = T0 - QUIET_AGE
                else:
                    seen = T0 - 1 - (number * 7919 % int(BUSY_AGE))
                body = event_body("participant-left", meetingId=room, sessionId=session, participantId="p1",
                                  participantName="Ada").decode()
                delivery_id = new_delivery_id(seen)
                state = RoomState(room_id=room, session_id=session, session_started_at=seen - 1800,
                                  session_active=False, sessions=1, empty_since=seen,
                                  recent_sessions=(session,), last_seen_at=seen)
                room_rows.append({"room_id": room, "state": state.to_dict(), "updated_at": seen,
                                  "last_delivery_id": delivery_id, "closed_at": None})
                delivery_rows.append({
                    "id": delivery_id, "received_at": seen, "event_type": "participant-left", "room_id": room,
                    "session_id": session, "participant_id": "p1", "known": True, "verified": True,
                    "body_sha256": hashlib.sha256(body.encode()).hexdigest(), "body": body,
                    "rules_hash": rules_hash, "problem": None})
            conn.execute(insert(deliveries), delivery_rows)
            conn.execute(insert(rooms), room_rows)
    if store.db.engine.dialect.name == "postgresql":
        with store.db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("ANALYZE")  # as autovacuum would have, on a store this size
    else:
        store.db.engine.dispose()  # (no connection of the store's left inside a transaction)
        with closing(sqlite3.connect(store.db.engine.url.database)) as conn:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # the seeding's WAL: not the round's to write back
    return quiet


def put_deliveries(store: Store, count: int, at: float) -> None:
    """`count` ordinary deliveries in the inbox, one per room (the first rooms), as accepted."""
    with store.db.engine.begin() as conn:
        for start in range(0, count, SEED_CHUNK):
            conn.execute(insert(inbox), [
                {"id": new_delivery_id(at), "received_at": at, "room_id": room_name(number),
                 "body": event_body("participant-left", meetingId=room_name(number), sessionId=f"s-{number:06d}",
                                    participantId="p2", participantName="Grace").decode(),
                 "signature": None, "verified": True}
                for number in range(start, min(count, start + SEED_CHUNK))])


def count_rows(store: Store, query) -> int:
    with store.db.engine.connect() as conn:
        return conn.execute(query).scalar_one()


# -- one measurement ---------------------------------------------------------------------------------


@dataclass
class Phase:
    seconds: float
    cpu: float
    rooms: int
    counts: dict

    @property
    def rate(self) -> float | None:
        return self.rooms / self.seconds if self.seconds > 0 else None

    def per_room(self, what: str) -> float | None:
        return self.counts["kinds"][what] / self.rooms if self.rooms else None


def cpu_probe() -> float:
    """Microseconds for `sum(range(1000))`, best of 5 (as bench/__main__.py's): how fast a core runs
    Python right now; a larger figure is a busier machine."""
    return min(timeit.repeat("sum(range(1000))", number=2000, repeat=5)) / 2000 * 1e6


def tenth_rates(marks: list[tuple[int, float]]) -> tuple[float | None, float | None]:
    """Rooms per second over the batches that decided the first tenth of the rooms, and the last
    tenth (batch boundaries: slightly more than a tenth each)."""
    total, (_, start), (_, end) = marks[-1][0], marks[0], marks[-1]
    if total < 10:
        return None, None
    first = next((n, t) for n, t in marks if n >= total / 10)
    last = [(n, t) for n, t in marks if n <= total - total / 10][-1]
    return (first[0] / (first[1] - start) if first[1] > start else None,
            (total - last[0]) / (end - last[1]) if end > last[1] else None)


def _phase(tally: Tally, rooms_: int, work) -> tuple[Phase, object]:
    tally.reset()
    tally.on = True
    cpu, started = time.process_time(), time.perf_counter()
    try:
        result = work()
    finally:
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
        tally.on = False
    return Phase(seconds, cpu, rooms_, tally.snapshot()), result


@dataclass
class Measured:
    store: str
    rooms: int
    quiet: int
    seed_s: float
    round: Phase
    decide: Phase
    turns: int
    batches: int
    reference: Phase | None
    checks: list[tuple[str, bool]]
    load: str  # the load average before the round / after the reference deliveries
    probe_us: float  # the CPU probe just before deciding
    tenths: tuple[float | None, float | None]  # rooms decided per second in the first and the last tenth
    waited: float | None  # seconds a delivery appended after the round waited to be decided
    waited_worker: float | None = None  # the same, under the worker's loop, appended as a round starts

    @property
    def ok(self) -> bool:
        return all(ok for _, ok in self.checks)


def measure(label: str, url: str, count: int, reference_count: int) -> Measured:
    clock = Clock(T0)
    store = Store.from_url(url, clock)
    try:
        store.db.migrate()
        loaded = rule_set()
        started = time.perf_counter()
        quiet = seed(store, count, loaded.sha256)
        seed_s = time.perf_counter() - started
        log(f"sweep ({label}, {count:,} rooms): seeded in {seed_s:.1f} s")
        tally = counted(store)
        load_before = load_average()
        decider = Decider(store.inbox, lambda: loaded, acts=True, verifier=None, clock=clock)

        def round_():
            turns, appended, last = 0, 0, None
            while True:
                turn = store.sweeps.sweep_turn(OWNER, loaded.sweep_every, sweeps.CHUNK, sweeps.LEASE_SECONDS)
                turns += 1
                if turn is None:  # not this owner's to do: never here, with one owner and a still clock
                    return turns, appended, last
                appended += turn.appended
                last = turn
                if turn.finished or turns > count // sweeps.CHUNK + 10:
                    return turns, appended, last

        watch: dict = {}  # the late delivery's id, and when it was decided

        def decide():
            batches, decided, marks = 0, 0, [(0, time.perf_counter())]
            while True:
                done = decider.decide_once()
                if not done:
                    return batches, decided, marks  # (the last, empty look is not counted as a batch)
                batches += 1
                decided += len(done)
                marks.append((decided, time.perf_counter()))
                if any(d.delivery_id == watch.get("id") for d in done):
                    watch["decided"] = marks[-1][1]

        round_phase, (turns, appended, last) = _phase(tally, count, round_)
        in_inbox = count_rows(store, select(func.count()).select_from(inbox))
        log(f"sweep ({label}, {count:,} rooms): round {round_phase.seconds:.2f} s, {appended:,} appended")
        probe = cpu_probe()
        # A webhook delivery that comes once the round is in the inbox, through the intake's own
        # append (group commit; its connection is not counted): how long it waits to be decided.
        late = InboxItem(id=new_delivery_id(clock()), received_at=clock(), room_id=LATE_ROOM, body=event_body(
            "participant-left", meetingId=LATE_ROOM, sessionId="s-late", participantId="p1").decode(),
                         signature=None, verified=True)
        store.inbox.append(late)
        watch["id"], appended_at = late.id, time.perf_counter()
        decide_phase, (batches, decided, marks) = _phase(tally, count, decide)
        waited = watch["decided"] - appended_at if "decided" in watch else None
        tenths = tenth_rates(marks)
        log(f"sweep ({label}, {count:,} rooms): decided {decided:,} in {decide_phase.seconds:.2f} s; a delivery "
            f"appended after the round waited {fmt(waited, 2)} s")

        swept = count_rows(store, select(func.count()).select_from(deliveries)
                           .where(deliveries.c.event_type == "sweep"))
        left = count_rows(store, select(func.count()).select_from(inbox))
        scheduled = count_rows(store, select(func.count()).select_from(decisions)
                               .where(decisions.c.rule == RULE, decisions.c.outcome == "scheduled"))
        all_decisions = count_rows(store, select(func.count()).select_from(decisions))
        with store.db.engine.connect() as conn:
            pending = set(conn.execute(select(actions.c.room_id).where(actions.c.status == "pending",
                                                                       actions.c.rule == RULE)).scalars())
        checks = [
            (f"sweeps appended {appended:,} = rooms {count:,}", appended == count == in_inbox),
            (f"round finished, {getattr(last, 'rooms', 0):,} rooms",
             bool(last and last.finished and last.rooms == count)),
            (f"sweeps decided (recorded as deliveries) {swept:,} = {count:,}, and the late delivery",
             swept == count and decided == count + 1 and waited is not None),
            (f"inbox empty after ({left:,})", left == 0),
            (f"decisions {all_decisions:,} = scheduled {scheduled:,} = quiet {len(quiet):,}",
             all_decisions == scheduled == len(quiet)),
            (f"pending deactivates {len(pending):,}, for exactly the quiet rooms", pending == quiet),
        ]

        reference = None
        if reference_count:
            clock.now = T0 + 60
            put_deliveries(store, reference_count, clock.now)
            reference, (_, ref_decided, _) = _phase(tally, reference_count, decide)
            ref_left = count_rows(store, select(func.count()).select_from(inbox))
            checks.append((f"reference deliveries decided {ref_decided:,} = {reference_count:,}, inbox empty",
                           ref_decided == reference_count and ref_left == 0))
            log(f"sweep ({label}, {count:,} rooms): {reference_count:,} deliveries decided in "
                f"{reference.seconds:.2f} s")
        # Under the worker's own loop (Worker.run_once: a round's next chunk is appended only
        # once the last is decided), a delivery that comes just after the next round starts.
        clock.now = T0 + loaded.sweep_every + 120
        actor = Actor(store, None, RetryPolicy(), lambda: loaded, lease_seconds=30.0, worker_id=OWNER,
                      clock=clock)
        worker = Worker(store, lambda: loaded, actor, decider=decider, acts=False, clock=clock)
        worker.run_once()  # the round starts: its first chunk
        later = InboxItem(id=new_delivery_id(clock()), received_at=clock(), room_id=LATE_ROOM, body=event_body(
            "participant-joined", meetingId=LATE_ROOM, sessionId="s-late-2", participantId="p2").decode(),
                          signature=None, verified=True)
        store.inbox.append(later)
        appended_at, waited_worker, passes = time.perf_counter(), None, 0
        still = select(inbox.c.seq).where(inbox.c.id == later.id)
        while worker.run_once() and passes < 4 * count:
            passes += 1
            with store.db.engine.connect() as conn:
                gone = conn.execute(still).first() is None
            if waited_worker is None and gone:
                waited_worker = time.perf_counter() - appended_at
        state = store.pages.sweep_state()
        checks.append((f"under the worker's loop: the late delivery decided, round 2 finished with "
                       f"{state['rooms']:,} rooms (the seeded ones and round 1's late one), inbox empty",
                       waited_worker is not None and state["round"] == 2 and state["finished_at"] is not None
                       and state["rooms"] == count + 1 and count_rows(store, select(func.count()).select_from(inbox)) == 0))
        log(f"sweep ({label}, {count:,} rooms): under the worker's loop a delivery appended as round 2 started "
            f"waited {fmt(waited_worker, 3)} s")
        for text, ok in checks:
            if not ok:
                log(f"sweep ({label}, {count:,} rooms): CHECK FAILED: {text}")
        return Measured(label, count, len(quiet), seed_s, round_phase, decide_phase, turns, batches, reference,
                        checks, f"{load_before} / {load_average()}", probe, tenths, waited, waited_worker)
    finally:
        store.close()


# -- the section ------------------------------------------------------------------------------------


def _per(value: float | None) -> str:
    return fmt(value, 3) if value is not None else "n/a"


def _row(m: Measured) -> list:
    total = m.round.seconds + m.decide.seconds
    failed = [text for text, ok in m.checks if not ok]
    return [
        m.store, f"{m.rooms:,}", f"{m.quiet:,}", fmt(m.seed_s, 1),
        fmt(m.round.seconds, 2), fmt(m.round.rate, 0), _per(m.round.per_room("read")), _per(m.round.per_room("write")),
        fmt(m.decide.seconds, 2), fmt(m.decide.rate, 0), f"{fmt(m.tenths[0], 0)} / {fmt(m.tenths[1], 0)}",
        _per(m.decide.per_room("read")),
        _per(m.decide.per_room("write")),
        fmt(m.rooms / total if total else None, 0), fmt(m.waited, 2), fmt(m.waited_worker, 3),
        f"{m.round.counts['commits']:,} / {m.decide.counts['commits']:,}",
        f"{fmt(100 * m.round.cpu / m.round.seconds, 0)}% / {fmt(100 * m.decide.cpu / m.decide.seconds, 0)}%",
        "ok" if m.ok else "**FAILED: " + "; ".join(failed) + "**",
        fmt(m.probe_us, 1), m.load,
    ]


def _reference_row(m: Measured) -> list:
    ref = m.reference
    ratio = (m.decide.rate / ref.rate) if ref and ref.rate and m.decide.rate else None
    return [m.store, f"{m.rooms:,}", f"{ref.rooms:,}", fmt(ref.seconds, 2), fmt(ref.rate, 0),
            _per(ref.per_room("read")), _per(ref.per_room("write")), fmt(m.decide.rate, 0),
            _per(m.decide.per_room("read")), _per(m.decide.per_room("write")), fmt(ratio, 2) + "x"]


def _breakdown(m: Measured) -> list[list]:
    rows = []
    for name, phase in (("round", m.round), ("deciding", m.decide)):
        for text, number in sorted(phase.counts["shapes"].items(), key=lambda item: -item[1]):
            what = kind(text)
            if what in ("tx", "ping", "other"):  # (in the notes below the tables)
                continue
            rows.append([name, what, f"`{text}`", f"{number:,}", _per(number / m.rooms)])
    return rows


def _extras(m: Measured) -> str:
    parts = []
    for name, phase in (("round", m.round), ("deciding", m.decide)):
        kinds = phase.counts["kinds"]
        total = sum(kinds.values())
        parts.append(f"{name}: {total:,} statements ({kinds['read']:,} reads, {kinds['write']:,} writes, "
                     f"{kinds['tx']:,} BEGIN, {kinds['ping']:,} pool pings, {kinds['other']:,} other), "
                     f"{phase.counts['sqlalchemy']:,} of them seen by SQLAlchemy's before_cursor_execute")
    return f"{m.store}, {m.rooms:,} rooms: " + "; ".join(parts) + f"; {m.turns} turns, {m.batches} batches"


def run(quick: bool, out: Path, pg_base: str | None) -> tuple[list, str]:
    sizes = QUICK_SIZES if quick else FULL_SIZES
    reference_cap = 2_000 if quick else 10_000
    stores: list[tuple[str, object]] = [("sqlite", None)]
    if pg_base:
        stores.append(("postgresql", pg_base))
    results: list[Measured] = []
    for label, base in stores:
        for count in sizes:
            if base is None:
                path = out / f"sweep-{count}.db"
                results.append(measure(label, f"sqlite:///{path}", count, min(count, reference_cap)))
            else:
                database = ThrowawayDatabase(base)
                try:
                    results.append(measure(label, database.create(), count, min(count, reference_cap)))
                finally:
                    database.drop()

    summary = []
    largest = max(sizes)
    for m in results:
        if m.rooms != largest:
            continue
        total = m.round.seconds + m.decide.seconds
        summary.append(["7. sweep", f"rooms swept per second, round + deciding, {m.store}, {m.rooms:,} rooms",
                        fmt(m.rooms / total if total else None, 0) + " /s", "none (issue 16 sets none)", "n/a"])
        summary.append(["7. sweep", f"store reads per room, round + deciding, {m.store}, {m.rooms:,} rooms",
                        fmt((m.round.counts["kinds"]["read"] + m.decide.counts["kinds"]["read"]) / m.rooms, 2),
                        "none (should not grow with rooms)", "n/a"])
        summary.append(["7. sweep", f"a webhook delivery appended after the round waited, {m.store}, "
                        f"{m.rooms:,} rooms", fmt(m.waited, 1) + " s", "none", "n/a"])
        summary.append(["7. sweep", f"a webhook delivery appended as a round starts waited, under the worker's "
                        f"loop, {m.store}, {m.rooms:,} rooms", fmt(m.waited_worker, 3) + " s",
                        "none (about one chunk)", "n/a"])
    summary.append(["7. sweep", "checks: every room swept and decided once, deactivates scheduled for the quiet "
                    "rooms only", f"{sum(m.ok for m in results)} of {len(results)} runs",
                    "all", "PASS" if all(m.ok for m in results) else "FAIL"])

    per_store = []
    headers = ["store", "rooms", "quiet (1%)", "seed s", "round s", "round rooms/s", "round reads/room",
               "round writes/room", "decide s", "decide rooms/s", "decide rooms/s, first / last tenth",
               "decide reads/room", "decide writes/room", "total rooms/s", "a delivery after the round waited s",
               "a delivery as a round starts waited s (worker loop)",
               "transactions round / decide",
               "bench CPU round / decide", "checks", "CPU probe us", "load avg before / after"]
    for label, _ in stores:
        mine = [m for m in results if m.store == label]
        per_store += [f"### {label}", "", table(headers, [_row(m) for m in mine]), ""]
    references = [m for m in results if m.reference is not None]
    breakdowns = []
    for label, _ in stores:
        biggest = max((m for m in results if m.store == label), key=lambda m: m.rooms)
        breakdowns += [f"Statements by text, {label}, {biggest.rooms:,} rooms (per room swept):", "",
                       table(["phase", "kind", "statement", "count", "per room"], _breakdown(biggest)), ""]
    quick_note = " Quick mode: 1,000 and 10,000 rooms, and at most 2,000 reference deliveries." if quick else ""
    text = "\n".join([
        "## 7. Sweeps: rooms swept per second, store statements per room",
        "",
        "In this process, no gunicorn and no API: for each store (SQLite: a file, WAL, `synchronous=FULL`, as "
        "the service opens it; PostgreSQL: a throwaway `roomwarden_bench_*` database) and each number of "
        "known rooms, a fresh store (`Store.from_url`, `migrate`) is seeded by bulk INSERTs (5,000 rows a "
        "statement, one transaction; then PostgreSQL is ANALYZEd, as autovacuum would have, and SQLite's WAL "
        "checkpointed, so that neither lands in the timings): each room with its "
        "state (its session ended, nobody in it) and the one delivery it was last heard from. One room in "
        f"{QUIET_EVERY} was heard from 3 h before the clock's reading, the others less than 10 min before. The "
        "rules: one rule `on: sweep`, `when: room.quiet_for: {gte: 2h}`, `confirm: no-live-session`, "
        "`action: deactivate`, `sweep_every: 10m`. The clock (the store's and the decider's) stands still "
        "during the run, so \"quiet for\" is the same every time.",
        "",
        f"- **Round**: `Store.sweep_turn` as `Worker.sweep_once` calls it ({sweeps.CHUNK} rooms a turn, one "
        "transaction each) until the round is finished: one `sweep` appended to the inbox per open room.",
        "- **Decide**: the worker's `Decider` (batch of 200, `decide_once`) until the inbox is empty. The "
        "quiet rooms' sweeps schedule a deactivate, which stays pending: no worker acts, no API is called, "
        "so `confirm` is never asked. Just before, one webhook delivery (`participant-left`, a room not "
        "seeded) is appended through the intake's own `Store.append`, as a delivery that comes once the "
        "round is in the inbox; \"a delivery after the round waited\" is the time from its append to the end "
        "of the batch that decided it (its few statements are in the deciding's counts): the wait behind a "
        "whole round in the inbox, which the worker no longer lets happen.",
        f"- **Under the worker's loop**: then the clock moves past the next round's time and `Worker.run_once` "
        f"runs (no API client: nothing is acted on). Its first pass starts round 2 and appends one chunk; one "
        f"webhook delivery is appended at once, and \"as a round starts waited\" is the time until it has left "
        f"the inbox (one lookup by id per pass, inside the timing). The worker appends a round's next chunk "
        f"only once the last chunk's last sweep has left the inbox, or its decider finds nothing more it can "
        f"take (`Worker.sweep_once`), so the delivery waits behind about one chunk ({sweeps.CHUNK} sweeps).",
        "- **Statements** are counted on the database driver's connections (a sqlite3 connection class; a "
        "psycopg cursor class), not only by a `before_cursor_execute` listener: the decider's hot path runs "
        "its statements on the driver's connection (service/store/driver.py), past SQLAlchemy's events. "
        "Reads are SELECTs (PostgreSQL's advisory-lock SELECT among them), writes everything else "
        "(`SELECT pg_notify` included); BEGIN, pool pre-pings and PRAGMAs are in neither, and are counted in "
        "the notes below. One `executemany` call counts as one statement (sqlite3 steps it once per row in "
        "this process; psycopg pipelines it). Transactions are SQLAlchemy's commits.",
        "- **Checks** beside the figures: sweeps appended = rooms, the round finished with every room, "
        "sweeps recorded as decided deliveries = rooms (a decision row is recorded only for a rule that "
        "matched, so the decisions are checked against the quiet rooms), decisions = scheduled = quiet "
        "rooms, the pending deactivates exactly the quiet rooms', the inbox empty after; a failed check is "
        "marked in its row.",
        "- **Reference**: then, ordinary deliveries (`participant-left`, no rule applies: the rules are on "
        "`sweep` only) for the first rooms, bulk-inserted into the inbox as accepted, decided by the same "
        "decider, to compare deciding a sweep with deciding a delivery in the same store.",
        "",
        "Rates are rooms over wall time (time.perf_counter); \"first / last tenth\" are the decider's rate "
        "over the batches that decided the first and the last tenth of the rooms (a store that slows down as "
        "it fills shows here; a machine that got busier too: see the load average, before the round and after "
        "the reference deliveries, and the CPU probe, `sum(range(1000))` as in the Machine list, taken just "
        "before deciding). \"bench CPU\" is this process's CPU time over that wall time (on PostgreSQL the "
        "server's own CPU is not in it). No target: issue 16 names none. "
        "Read rooms/s for how long a round and its deciding keep the worker from other deliveries, and "
        "reads/writes per room for whether the cost per room stays flat as rooms grow." + quick_note,
        "",
        *per_store,
        "Reference, ordinary deliveries decided by the same decider in the same store:",
        "",
        table(["store", "rooms", "deliveries", "decide s", "deliveries/s", "reads/delivery", "writes/delivery",
               "sweeps/s (above)", "reads/sweep", "writes/sweep", "sweeps/s / deliveries/s"],
              [_reference_row(m) for m in references]),
        "",
        *breakdowns,
        "Statement counts: " + "; ".join(_extras(m) for m in results) + ".",
    ])
    return summary, text
