"""VideoSDK's REST API, as far as this service uses it. All of `requests` lives here.

How it fails: `VideoSDKClient` calls never raise for a failed call. They return
an `ApiResult` whose `status` is the HTTP status, or None when no HTTP answer
came (timeout, refused connection, an answer that is not HTTP), and whose
`error` says why in a line that never holds a secret. The worker decides what
each result means (see `retrypolicy.py`), and `answers.py` reads what a 2xx body says. `fetch_public_key` raises `KeyUnavailable`.

Requests go through one `requests.Session` (pass your own to reuse connections
or to point it elsewhere) with explicit connect and read timeouts.
"""

from __future__ import annotations

import threading
import time
from urllib.parse import quote
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any, Callable

import jwt
import requests

from .errors import KeyUnavailable

USER_AGENT = "roomwarden/1"
TOKEN_TTL = 3600  # VideoSDK's own SDK mints one-hour server tokens...
TOKEN_RENEW_BEFORE = 60  # ...and renews them a minute before they expire
CONNECT_TIMEOUT = 5.0


class TokenSource:
    """Mints the HS256 JWT that VideoSDK's v2 REST API expects, and reuses it until near expiry."""

    def __init__(self, api_key: str, secret_key: str, clock: Callable[[], float] = time.time,
                 ttl: int = TOKEN_TTL):
        self._api_key = api_key
        self._secret = secret_key
        self._clock = clock
        self._ttl = ttl
        self._lock = threading.Lock()
        self._token: str | None = None
        self._expires = 0.0

    def token(self) -> str:
        with self._lock:
            now = self._clock()
            if self._token is None or now >= self._expires - TOKEN_RENEW_BEFORE:
                issued = int(now)
                claims = {
                    "apikey": self._api_key,
                    "permissions": ["allow_join", "allow_mod"],
                    "version": 2,
                    "roles": ["crawler"],
                    "iat": issued,
                    "exp": issued + self._ttl,
                }
                self._token = jwt.encode(claims, self._secret, algorithm="HS256")
                self._expires = issued + self._ttl
            return self._token

    def redact(self, text: str) -> str:
        """`text` without the secret, the token, or either part of the token that is not the same
        for every HS256 token (its claims and its signature), as an answer may echo them apart."""
        token = self._token or ""
        for secret in (self._secret, token, *token.split(".")[1:]):
            if secret:
                text = text.replace(secret, "[redacted]")
        return text


@dataclass(frozen=True)
class ApiResult:
    status: int | None  # None: no HTTP answer at all
    latency_ms: float
    error: str | None = None
    retry_after: float | None = None  # seconds, when the answer said when to come back
    body: Any = None
    closes_room: bool = False  # a deactivate answered done or "room not found" (set by the worker)

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


def parse_retry_after(value: str | None, now: float) -> float | None:
    """`Retry-After` as seconds from now: delta-seconds or an HTTP date; None if unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - now)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def _error_text(response: requests.Response, redact: Callable[[str], str]) -> str:
    """VideoSDK's error bodies are not specified: read message/error/msg if JSON, else text.

    Secrets are redacted before the text is cut, so a cut never leaves part of one.
    """
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        for key in ("message", "error", "msg"):
            if isinstance(body.get(key), str):
                return f"HTTP {response.status_code}: {redact(body[key])[:300]}"
    text = redact((response.text or "").strip().replace("\n", " "))
    return f"HTTP {response.status_code}: {text[:300]}" if text else f"HTTP {response.status_code}"


class VideoSDKClient:
    def __init__(self, base_url: str, tokens: TokenSource, *, session: requests.Session | None = None,
                 timeout: float = 30.0, clock: Callable[[], float] = time.time):
        self.base_url = base_url.rstrip("/")
        self.tokens = tokens
        self.session = session or requests.Session()
        self.timeout = (min(CONNECT_TIMEOUT, timeout), timeout)
        self.clock = clock

    def deactivate_room(self, room_id: str) -> ApiResult:
        """`POST /v2/rooms/deactivate`: the room can never be joined again."""
        return self._call("POST", "/v2/rooms/deactivate", {"roomId": room_id})

    def end_session(self, room_id: str, session_id: str | None) -> ApiResult:
        """`POST /v2/sessions/end`: ends the room's live session (this one, if given)."""
        body = {"roomId": room_id, **({"sessionId": session_id} if session_id else {})}
        return self._call("POST", "/v2/sessions/end", body)

    def active_participants(self, session_id: str) -> ApiResult:
        """`GET /v2/sessions/{sessionId}/participants/active`; read it with `answers.active_participants`."""
        return self._call("GET", f"/v2/sessions/{quote(session_id, safe='')}/participants/active", None)

    def live_sessions(self, room_id: str) -> ApiResult:
        """`GET /v2/sessions?roomId=...&status=ongoing`, as the server SDK finds a room's live session;
        read it with `answers.live_sessions`. A room has at most one live session; a few more per
        page cost nothing and make a second one visible rather than hidden."""
        return self._call("GET", "/v2/sessions", None, params={"roomId": room_id, "status": "ongoing",
                                                              "perPage": 5})

    def fetch_room(self, room_id: str) -> ApiResult:
        """`GET /v2/rooms/{roomId}`: the room object. Changes nothing: the breaker's probe."""
        return self._call("GET", f"/v2/rooms/{quote(room_id, safe='')}", None)

    def _call(self, method: str, path: str, body: dict | None, params: dict | None = None) -> ApiResult:
        started = time.perf_counter()

        def elapsed() -> float:
            return round((time.perf_counter() - started) * 1000, 3)

        headers = {"Authorization": self.tokens.token(), "Content-Type": "application/json",
                   "User-Agent": USER_AGENT}
        try:
            response = self.session.request(method, self.base_url + path, json=body, headers=headers,
                                            params=params, timeout=self.timeout, allow_redirects=False)
            content = response.content  # read it all inside the try: a body can time out too
        except requests.Timeout:
            return ApiResult(None, elapsed(), f"timed out after {self.timeout[1]:g}s")
        except requests.ConnectionError as exc:
            return ApiResult(None, elapsed(), f"connection failed: {_first_line(exc, self.tokens.redact)}")
        except requests.RequestException as exc:
            return ApiResult(None, elapsed(), f"bad answer: {_first_line(exc, self.tokens.redact)}")
        latency = elapsed()
        retry_after = parse_retry_after(response.headers.get("Retry-After"), self.clock())
        if 200 <= response.status_code < 300:
            try:
                parsed = response.json() if content else None
            except ValueError:
                parsed = None
            return ApiResult(response.status_code, latency, None, retry_after, parsed)
        return ApiResult(response.status_code, latency, _error_text(response, self.tokens.redact),
                         retry_after)


def _first_line(exc: Exception, redact: Callable[[str], str] = lambda text: text) -> str:
    text = redact(str(exc).strip())
    return (text.splitlines()[0] if text else type(exc).__name__)[:300]


def fetch_public_key(base_url: str, *, session: requests.Session | None = None,
                     timeout: float = 10.0, tokens: TokenSource | None = None) -> str:
    """`GET /v2/public/rsa-public-key`: the PEM that VideoSDK signs webhooks with.

    Whether the endpoint needs a token is undocumented (its path says public; VideoSDK's server
    SDK sends one): with `tokens`, one is sent, so either reading works (docs/videosdk.md).
    Raises KeyUnavailable when it cannot be fetched or the answer holds no PEM.
    """
    url = base_url.rstrip("/") + "/v2/public/rsa-public-key"
    headers = {"User-Agent": USER_AGENT}
    if tokens is not None:
        headers["Authorization"] = tokens.token()
    try:
        response = (session or requests).get(url, timeout=(CONNECT_TIMEOUT, timeout), headers=headers)
        response.raise_for_status()
        key = response.json().get("publicKey")
    except (requests.RequestException, ValueError, AttributeError) as exc:
        text = _first_line(exc, tokens.redact) if tokens is not None else _first_line(exc)
        raise KeyUnavailable(f"cannot fetch the webhook public key from {url}: {text}") from None
    if not isinstance(key, str) or "-----BEGIN" not in key:
        raise KeyUnavailable(f"{url} answered without a PEM publicKey")
    return key
