"""Durable storage: the inbox, deliveries, decisions, the action outbox and its attempts.

SQLite by default (one file, WAL); PostgreSQL for deployments that span hosts.
All SQL is in this package: `store.py` composes a repository per kind of record over one
`Database` (database.py); the schema is in `tables.py`; `migrations.py` versions it.
"""

from .records import (AttemptRecord, ClaimedAction, DecisionOutcome, NewDelivery, PlanWrite, Receipt, TimerWrite)
from .store import Store, WebStore

__all__ = ["Store", "WebStore", "NewDelivery", "DecisionOutcome", "Receipt", "ClaimedAction",
           "AttemptRecord", "PlanWrite", "TimerWrite"]
