"""The store: one database, and a repository over it for each kind of record and who uses it.

    Store
    ├── db          Database       (database.py)  connections, transactions, schema, health
    ├── inbox       Inbox          (inbox.py)     the request appends; the decider takes out, in order
    ├── timers      Timers         (timers.py)    firing due `for:` timers; re-checking them after a reload
    ├── outbox      Outbox         (outbox.py)    what is due; claiming actions, recording attempts
    ├── sweeps      Sweeps         (sweeps.py)    the sweep's turns: appending rooms' sweeps to the inbox
    ├── workers     Workers        (workers.py)   each worker's circuit breaker, as it reports it
    ├── actions     Actions        (actions.py)   actions as the operator sees them; re-driving dead ones
    ├── history     History        (history.py)   deliveries, decisions, rooms and timers; retention
    ├── pages       Pages          (pages.py)     the dashboard's paged reads
    └── rules_kept  RulesVersions  (rulesversions.py)  rules files that loaded: the fallback

`RoomWrites` (intake.py) writes a delivery and what was decided about it; the inbox, the timers
and the outbox share it inside their own transactions, and no process is handed it.

A process is handed what it uses: the worker's loop the whole store; the decider the inbox;
the actor the outbox and the workers' table; the web process a `WebStore`, which has no
outbox, timers or sweeps: the dashboard and the admin API cannot claim an action or fire a
timer. (Its inbox is the whole inbox, the decider's side included: the tests decide behind an
app's requests through it. Splitting the request's side from the decider's is left to do.)

How it fails: a database that is locked past its timeout, unreachable or restarting raises
`StoreUnavailable` (the HTTP layer answers 503); nothing is half-written, since each method is
one transaction.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

from sqlalchemy import Engine

from .actions import Actions
from .database import Database, make_engine
from .history import History
from .inbox import Inbox
from .intake import RoomWrites
from .outbox import Outbox
from .pages import Pages
from .rulesversions import RulesVersions
from .sweeps import Sweeps
from .timers import Timers
from .workers import Workers


class Store:
    def __init__(self, engine: Engine, clock: Callable[[], float] = time.time):
        self.db = db = Database(engine, clock)
        rooms = RoomWrites(db)
        self.inbox = Inbox(db, rooms)
        self.timers = Timers(db, rooms)
        self.outbox = Outbox(db, rooms)
        self.sweeps = Sweeps(db)
        self.workers = Workers(db)
        self.actions = Actions(db)
        self.history = History(db)
        self.pages = Pages(db)
        self.rules_kept = RulesVersions(db)

    @classmethod
    def from_url(cls, url: str, clock: Callable[[], float] = time.time) -> "Store":
        return cls(make_engine(url), clock)

    def close(self) -> None:
        self.inbox.close()
        self.db.close()

    def web(self) -> "WebStore":
        """What the web process uses: no outbox, timers or sweeps."""
        return WebStore(self.db, self.inbox, self.actions, self.history, self.pages, self.rules_kept, self.close)


@dataclass(frozen=True)
class WebStore:
    """The web process's store: the request appends to the inbox; /readyz, /metrics, the admin
    API and the dashboard read; an operator re-drives dead actions. Nothing in it claims an
    action, fires a timer or takes a sweep turn."""

    db: Database
    inbox: Inbox
    actions: Actions
    history: History
    pages: Pages
    rules_kept: RulesVersions
    close: Callable[[], None]
