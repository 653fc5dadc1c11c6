"""Turn a database outage into `StoreUnavailable`; let every other error be the bug it is."""

from __future__ import annotations

import functools
from contextlib import contextmanager
from typing import Callable, Iterator

from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from ..errors import StoreUnavailable


@contextmanager
def outages() -> Iterator[None]:
    """Inside it, a database outage raises StoreUnavailable."""
    try:
        yield
    except (OperationalError, PoolTimeout) as exc:
        raise StoreUnavailable(f"store unavailable: {_reason(exc)}") from exc
    except DBAPIError as exc:
        if exc.connection_invalidated:
            raise StoreUnavailable(f"store unavailable: {_reason(exc)}") from exc
        raise


def guarded(method: Callable) -> Callable:
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        with outages():
            return method(self, *args, **kwargs)

    return wrapper


def _reason(exc: Exception) -> str:
    original = getattr(exc, "orig", None) or exc
    text = str(original).strip()
    return text.splitlines()[0][:200] if text else type(original).__name__
