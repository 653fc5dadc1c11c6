"""Turn a database outage into `StoreUnavailable`; let every other error be the bug it is."""

from __future__ import annotations

import functools
from typing import Callable

from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from ..errors import StoreUnavailable


def guarded(method: Callable) -> Callable:
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except (OperationalError, PoolTimeout) as exc:
            raise StoreUnavailable(f"store unavailable: {_reason(exc)}") from exc
        except DBAPIError as exc:
            if exc.connection_invalidated:
                raise StoreUnavailable(f"store unavailable: {_reason(exc)}") from exc
            raise

    return wrapper


def _reason(exc: Exception) -> str:
    original = getattr(exc, "orig", None) or exc
    text = str(original).strip()
    return text.splitlines()[0][:200] if text else type(original).__name__
