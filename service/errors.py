"""The one exception tree of roomwarden.

    RoomwardenError
    ├── ConfigError          settings missing or invalid; the process refuses to start
    ├── RulesError           a rules file failed to load; carries every problem found
    ├── DeliveryRejected     a webhook delivery refused with a 4xx; carries the status
    │   ├── SignatureInvalid     401: missing, garbled or wrong `videosdk-signature`
    │   ├── RequestRejected      400: a body that could not be read whole (broken framing)
    │   └── PayloadInvalid       400: not UTF-8, not JSON, or not `{"webhookType": str, "data": {...}}`
    └── Unavailable          a dependency is down: 503 (VideoSDK documents no retries: a loss)
        ├── KeyUnavailable       no webhook public key yet (fetch failed, none pinned): the body
        │                        is kept unverified (accept.py), never refused for it
        └── StoreUnavailable     the database is locked or unreachable

A body of a known event type whose `data` lacks a field the service needs is
not an error: it is kept unread and never decided on (`Event.problem`, events.py).

Outbound API calls do not raise: they return an `ApiResult` (see `videosdk.py`),
because every outcome, failures included, is data the worker records.
"""

from __future__ import annotations


class RoomwardenError(Exception):
    """Base of every error this package raises on purpose."""


class ConfigError(RoomwardenError):
    """A setting is missing or invalid. The message says what to set."""


class RulesError(RoomwardenError):
    """A rules file failed to load.

    `found` holds each error with its place (rules.loader.Problem: file, line, col, message), in
    file order; `problems` the same as `file:line:col: message` strings.
    """

    def __init__(self, found: list):
        self.found = list(found)
        self.problems = [str(problem) for problem in self.found]
        super().__init__("\n".join(self.problems))


class DeliveryRejected(RoomwardenError):
    """A delivery the service refuses. `status` is the HTTP status to answer."""

    status = 400

    def __init__(self, message: str, *, fields: dict | None = None):
        self.message = message
        self.fields = fields
        super().__init__(message)


class SignatureInvalid(DeliveryRejected):
    status = 401


class RequestRejected(DeliveryRejected):
    status = 400


class PayloadInvalid(DeliveryRejected):
    status = 400


class Unavailable(RoomwardenError):
    """Something the service needs is down: answer 503. VideoSDK documents no retries, so the
    delivery may be lost; the caller counts and logs it (docs/videosdk.md)."""

    status = 503
    retry_after = 5


class KeyUnavailable(Unavailable):
    pass


class StoreUnavailable(Unavailable):
    pass


class BodyTimeout(Exception):
    """A request body that did not arrive within WEB_BODY_TIMEOUT_SECONDS (lane.TimedBody): 408."""
