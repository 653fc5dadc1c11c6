"""The hot path's statements, compiled once and run on the database driver's own connection.

SQLAlchemy Core costs about 50 us a statement in Python on top of what the
database does (cache lookup, parameter processing, result wrapping): several
times the cost of a simple SQLite statement. A delivery runs about eight, so
the intake path compiles its statements once per store (`Compiled`) and runs
them with `run`, inside the transaction SQLAlchemy opened, on the same
connection. Errors come out as SQLAlchemy's own exception classes, and a
dropped connection is invalidated, as is one interrupted mid-statement (a
worker's timeout, ^C), exactly as if SQLAlchemy had run the statement, so
`guarded` and the callers see no difference. One thing differs: SQLAlchemy's
`handle_error` event does not fire for these statements (nothing here listens
for it). JSON values are serialized by the caller (`to_json`) and read back
with `Compiled.json`.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from typing import Any, Iterator, Mapping

from sqlalchemy import Connection
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql import ClauseElement


class Compiled:
    def __init__(self, statement: ClauseElement, dialect: Dialect, column_keys: list[str] | None = None):
        compiled = statement.compile(dialect=dialect, column_keys=column_keys)
        self.sql = compiled.string
        # Values written into the statement itself (status = 'pending') are bind parameters too.
        for bind in compiled.bind_names:
            if bind.expanding or bind.callable is not None:
                raise ValueError(f"{bind.key}: an expanding or computed parameter needs SQLAlchemy's own execute")
        self._fixed = {name: bind.value for bind, name in compiled.bind_names.items() if not bind.required}
        self._order = compiled.positiontup  # names in order for a positional style (SQLite's ?)
        # SQLite hands JSON back as text; psycopg parses PostgreSQL's json type itself.
        self.json = json.loads if dialect.name == "sqlite" else _same

    def params(self, values: Mapping[str, Any]):
        if self._fixed:
            values = {**self._fixed, **values}
        return values if self._order is None else tuple(values[name] for name in self._order)


def run(conn: Connection, statement: Compiled, values: Mapping[str, Any]):
    """Execute on the driver's connection; returns the driver's cursor."""
    with _driver_errors(conn, statement):
        return conn.connection.driver_connection.execute(statement.sql, statement.params(values))


def run_many(conn: Connection, statement: Compiled, values: list[Mapping[str, Any]]) -> None:
    """Execute once per set of values, as one call to the driver (psycopg pipelines them)."""
    with _driver_errors(conn, statement):
        conn.connection.driver_connection.cursor().executemany(statement.sql, [statement.params(v) for v in values])


@contextmanager
def _driver_errors(conn: Connection, statement: Compiled) -> Iterator[None]:
    """The driver's errors as SQLAlchemy's, so that store/guard.py tells an outage from a bug."""
    try:
        yield
    except conn.dialect.loaded_dbapi.Error as exc:
        dropped = conn.dialect.is_disconnect(exc, conn.connection.dbapi_connection, None)
        if dropped:
            conn.invalidate(exc)
        raise DBAPIError.instance(statement.sql, None, exc, conn.dialect.loaded_dbapi.Error,
                                  hide_parameters=True, connection_invalidated=dropped,
                                  dialect=conn.dialect) from exc
    except BaseException as exc:
        # Interrupted inside the driver (a worker's timeout, ^C): the connection's state is
        # unknown, so it must not go back to the pool. SQLAlchemy does the same for these.
        if not isinstance(exc, Exception) and not conn.closed:
            conn.invalidate(exc)
        raise


def to_json(value: Any) -> str:
    return json.dumps(value)


def _same(value):
    return value
