"""The webhook's fast lane: a well-formed delivery accepted without Flask's request machinery.

Measured (bench/, issue 14): Flask's request context, routing, hooks and response objects cost
about as much per delivery as verifying, checking and appending it together, and kept the
intake at 0.33-0.42 of the bare app, against 0.60 asked. This WSGI layer, in front of the Flask
app, takes the common case alone: a POST to the webhook path with no query string, a
Content-Length within the limit and no Transfer-Encoding. It reads the body, calls the same
`Intake.accept`, and answers the 202 and writes the request line through the same functions
as the Flask route (web.accepted, web.log_request).

Under gevent, any POST to the webhook path must send its body within WEB_BODY_TIMEOUT_SECONDS
(TimedBody): a client stalled mid-body is answered 408 and its connection closed.

Everything else goes to the Flask route, untouched; and any delivery the lane does not accept
(a bad signature, a body that is not a webhook, a store that cannot write) is handed to the
Flask route too, with the bytes it read, so every refusal and failure is answered, logged and
counted in one place. A refused delivery is checked twice; an accepted one, once.
"""

from __future__ import annotations

import io
import time

from . import web
from .errors import BodyTimeout
from .signature import HEADER
from .store.offload import on_event_loop

_SIGNATURE = "HTTP_" + HEADER.upper().replace("-", "_")
_HEADERS = [("Content-Type", "application/json")]


class WebhookLane:
    def __init__(self, flask_wsgi, intake, body_timeout: float):
        self._flask = flask_wsgi
        self._intake = intake
        self._body_timeout = body_timeout

    def __call__(self, environ, start_response):
        if environ.get("PATH_INFO") == web.WEBHOOK and environ.get("REQUEST_METHOD") == "POST" and on_event_loop():
            # A body that does not arrive in time (a client stalled mid-body) would hold its
            # connection for good: the gevent worker has no timeout of its own for it.
            environ["wsgi.input"] = TimedBody(environ["wsgi.input"], self._body_timeout)
        length = _plain_delivery_length(environ)
        if length is None:
            return self._flask(environ, start_response)
        started = time.perf_counter()
        try:
            raw = environ["wsgi.input"].read(length)
        except BodyTimeout:  # the Flask route answers it (408), from the same expired stream
            return self._flask(environ, start_response)
        except Exception:  # noqa: BLE001 - a broken body: the Flask route says what is wrong with it
            raw = b""
        if len(raw) == length:
            try:
                item, event_type = self._intake.accept(raw, environ.get(_SIGNATURE))
            except Exception:  # noqa: BLE001 - refused or failed: answered by the Flask route, below
                pass
            else:
                body, fields = web.accepted(item, event_type)
                web.log_request("POST", web.WEBHOOK, 202, started, fields)
                start_response("202 ACCEPTED", [*_HEADERS, ("Content-Length", str(len(body)))])
                return [body]
        environ["wsgi.input"] = io.BytesIO(raw)  # the Flask route reads what this lane read
        return self._flask(environ, start_response)


class TimedBody:
    """The request body, to be read within `seconds` of the request's start, or BodyTimeout."""

    def __init__(self, stream, seconds: float):
        self._stream = stream
        self._seconds = seconds
        self._deadline = time.monotonic() + seconds

    def read(self, *args):
        return self._within(self._stream.read, *args)

    def readline(self, *args):
        return self._within(self._stream.readline, *args)

    def _within(self, read, *args):
        import gevent

        left = self._deadline - time.monotonic()
        expired = BodyTimeout(f"the request body did not arrive within {self._seconds:g} s")
        if left <= 0:
            raise expired
        with gevent.Timeout(left, expired):
            return read(*args)


def _plain_delivery_length(environ) -> int | None:
    """The body's declared length, for a request this lane takes; None for any other."""
    if (environ.get("PATH_INFO") != web.WEBHOOK or environ.get("REQUEST_METHOD") != "POST"
            or environ.get("QUERY_STRING") or environ.get("HTTP_TRANSFER_ENCODING")):
        return None
    declared = environ.get("CONTENT_LENGTH") or ""
    if not declared.isdigit() or int(declared) > web.MAX_BODY:
        return None
    return int(declared)
