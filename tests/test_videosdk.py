"""VideoSDKClient, TokenSource, parse_retry_after and fetch_public_key against the fake API over real HTTP."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import format_datetime

import jwt
import pytest

from service.errors import KeyUnavailable
from service.videosdk import (TOKEN_RENEW_BEFORE, TOKEN_TTL, ApiResult, TokenSource, VideoSDKClient,
                              fetch_public_key, parse_retry_after)

from .conftest import API_KEY, Clock, SECRET
from .fakeapi import Reply, deactivate_answer

DEACTIVATE = "/v2/rooms/deactivate"
PUBLIC_KEY = "/v2/public/rsa-public-key"
T0 = 1_700_000_000.0  # a fixed "now" for the fake clocks


def make_client(base_url: str, *, timeout: float = 5.0, clock=None, secret: str = SECRET) -> VideoSDKClient:
    kwargs = {"clock": clock} if clock is not None else {}
    return VideoSDKClient(base_url, TokenSource(API_KEY, secret), timeout=timeout, **kwargs)


def raw_http(status: int, reason: str, body: bytes, content_type: str = "text/plain") -> bytes:
    """A complete HTTP answer written by hand, for bodies the fake's JSON replies cannot make."""
    return (f"HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body


def decode(token: str) -> dict:
    """The claims, checked against the secret with HS256 only; times not checked (fake clocks)."""
    return jwt.decode(token, SECRET, algorithms=["HS256"],
                      options={"verify_exp": False, "verify_iat": False})


# -- the request ------------------------------------------------------------------------


def test_deactivate_sends_room_id_with_a_bare_hs256_jwt(fake_api):
    client = make_client(fake_api.base_url)

    result = client.deactivate_room("abcd-efgh-ijkl")

    assert result.ok and result.status == 200
    [call] = fake_api.calls_to(DEACTIVATE)
    assert call.method == "POST"
    assert call.body == {"roomId": "abcd-efgh-ijkl"}
    assert call.headers["content-type"] == "application/json"
    assert call.auth_error is None
    token = call.headers["authorization"]
    assert not token.lower().startswith("bearer")
    assert token.count(".") == 2  # the JWT itself, nothing around it
    assert jwt.get_unverified_header(token)["alg"] == "HS256"
    claims = jwt.decode(token, SECRET, algorithms=["HS256"])  # also checks exp against real time
    assert set(claims) == {"apikey", "permissions", "version", "roles", "iat", "exp"}
    assert claims["apikey"] == API_KEY
    assert claims["permissions"] == ["allow_join", "allow_mod"]
    assert claims["version"] == 2
    assert claims["roles"] == ["crawler"]
    assert 0 < claims["exp"] - claims["iat"] <= 3600
    with pytest.raises(jwt.InvalidSignatureError):  # signed with the secret, not something else
        jwt.decode(token, "another-secret-" + "0" * 32, algorithms=["HS256"])


def test_token_is_reused_across_calls(fake_api):
    client = make_client(fake_api.base_url)

    results = [client.deactivate_room(room) for room in ("room-1", "room-2", "room-3")]

    assert [r.status for r in results] == [200, 200, 200]
    tokens = {c.headers["authorization"] for c in fake_api.calls_to(DEACTIVATE)}
    assert len(tokens) == 1
    assert fake_api.disabled_rooms == {"room-1", "room-2", "room-3"}


# Each row: seconds after the first token was minted -> whether token() mints a new one.
RENEWAL = [
    (0, False),                                      # same instant: the cached token
    (1, False),                                      # a second later: still cached
    (TOKEN_TTL - TOKEN_RENEW_BEFORE - 1, False),     # 61 s before expiry: still cached
    (TOKEN_TTL - TOKEN_RENEW_BEFORE, True),          # exactly 60 s before expiry: renewed
    (TOKEN_TTL - 1, True),                           # a second before expiry: renewed
    (TOKEN_TTL + 500, True),                         # long expired: renewed
]


@pytest.mark.parametrize("later, renewed", RENEWAL)
def test_token_renewed_only_within_a_minute_of_expiry(later, renewed):
    clock = Clock(T0)
    tokens = TokenSource(API_KEY, SECRET, clock=clock)
    first = tokens.token()
    assert decode(first)["iat"] == int(T0)
    assert decode(first)["exp"] == int(T0) + TOKEN_TTL

    clock.now = T0 + later
    second = tokens.token()

    assert (second != first) is renewed
    claims = decode(second)
    assert claims["iat"] == (int(T0 + later) if renewed else int(T0))
    assert claims["exp"] - claims["iat"] == TOKEN_TTL


def test_renewed_token_is_then_reused_until_its_own_renewal():
    clock = Clock(T0)
    tokens = TokenSource(API_KEY, SECRET, clock=clock)
    first = tokens.token()
    clock.now = T0 + TOKEN_TTL - TOKEN_RENEW_BEFORE
    second = tokens.token()
    clock.now += TOKEN_TTL - TOKEN_RENEW_BEFORE - 1
    third = tokens.token()

    assert first != second
    assert third == second


# -- answers that are HTTP ----------------------------------------------------------------


def test_200_answer_body_is_parsed(fake_api):
    result = make_client(fake_api.base_url).deactivate_room("abcd-efgh-ijkl")

    assert isinstance(result, ApiResult)
    assert result.ok
    assert result.error is None
    assert result.retry_after is None
    assert result.body == deactivate_answer("abcd-efgh-ijkl")  # the documented example, for this room
    assert result.body["meetingId"] == "abcd-efgh-ijkl" and result.body["disabled"] is True
    assert result.latency_ms >= 0


@dataclass
class ErrorCase:
    reply: Reply
    status: int
    error: str


ERROR_ANSWERS = {
    # JSON body with "message", the usual VideoSDK shape
    "json-message": ErrorCase(Reply(404, {"message": "Room not found"}), 404, "HTTP 404: Room not found"),
    # JSON body with "error"
    "json-error": ErrorCase(Reply(400, {"error": "roomId is required"}), 400, "HTTP 400: roomId is required"),
    # JSON body with "msg"
    "json-msg": ErrorCase(Reply(500, {"msg": "internal"}), 500, "HTTP 500: internal"),
    # "message" wins over "error" when both are strings
    "message-first": ErrorCase(Reply(409, {"message": "conflict", "error": "other"}), 409, "HTTP 409: conflict"),
    # a non-string "message" is skipped for the next key
    "non-string-message": ErrorCase(Reply(406, {"message": 7, "error": "upstream"}), 406, "HTTP 406: upstream"),
    # a JSON object with none of the keys: the raw text
    "json-no-known-key": ErrorCase(Reply(502, {"detail": "gateway"}), 502, 'HTTP 502: {"detail": "gateway"}'),
    # a JSON value that is not an object: the raw text
    "json-list": ErrorCase(Reply(422, ["bad"]), 422, 'HTTP 422: ["bad"]'),
    # plain text, newlines folded onto one line
    "plain-text": ErrorCase(Reply(garbage=raw_http(503, "Service Unavailable", b"upstream down\nretry later\n")),
                            503, "HTTP 503: upstream down retry later"),
    # HTML from a proxy in front of the API
    "html": ErrorCase(Reply(garbage=raw_http(502, "Bad Gateway", b"<h1>Bad Gateway</h1>", "text/html")),
                      502, "HTTP 502: <h1>Bad Gateway</h1>"),
    # an empty body: the status alone
    "empty-body": ErrorCase(Reply(garbage=raw_http(500, "Internal Server Error", b"")), 500, "HTTP 500"),
    # a credentials refusal is an answer like any other
    "401": ErrorCase(Reply(401, {"message": "invalid or expired token"}), 401, "HTTP 401: invalid or expired token"),
}


@pytest.mark.parametrize("case", ERROR_ANSWERS.values(), ids=ERROR_ANSWERS.keys())
def test_error_answers_become_results_with_a_one_line_error(fake_api, case):
    fake_api.script(DEACTIVATE, case.reply)

    result = make_client(fake_api.base_url).deactivate_room("room-1")

    assert result.status == case.status
    assert not result.ok
    assert result.error == case.error
    assert result.body is None
    assert "\n" not in result.error


def test_long_error_text_is_cut_to_300_characters(fake_api):
    fake_api.script(DEACTIVATE, Reply(500, {"message": "x" * 5000}))

    result = make_client(fake_api.base_url).deactivate_room("room-1")

    assert result.error == "HTTP 500: " + "x" * 300


def test_real_auth_failure_from_a_wrong_secret_is_a_401_result(fake_api):
    result = make_client(fake_api.base_url, secret="wrong-secret-" + "w" * 32).deactivate_room("room-1")

    assert result.status == 401
    assert result.error == "HTTP 401: invalid or expired token"
    assert fake_api.disabled_rooms == set()


# -- Retry-After ----------------------------------------------------------------------------

LATER = format_datetime(datetime.fromtimestamp(T0 + 120, timezone.utc), usegmt=True)
EARLIER = format_datetime(datetime.fromtimestamp(T0 - 120, timezone.utc), usegmt=True)

# Each row: the Retry-After header value -> seconds from T0, or None when unreadable.
RETRY_AFTER = [
    (None, None),                   # no header
    ("", None),                     # empty header
    ("7", 7.0),                     # delta-seconds
    ("0", 0.0),                     # come back now
    (" 12 ", 12.0),                 # surrounding blanks tolerated
    ("86400", 86400.0),             # large values pass through; the policy caps them
    ("-5", None),                   # negative: not delta-seconds, not a date
    ("1.5", None),                  # fractions are not delta-seconds
    ("soon", None),                 # words
    (LATER, 120.0),                 # an HTTP date two minutes ahead
    (EARLIER, 0.0),                 # an HTTP date in the past: now
    ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),  # the RFC's own example, long past
    ("Wed, 99 Foo 2015 07:28:00 GMT", None),  # a broken date
]


@pytest.mark.parametrize("value, expected", RETRY_AFTER)
def test_parse_retry_after(value, expected):
    assert parse_retry_after(value, T0) == expected


def test_parse_retry_after_superscript_digit_is_unreadable_not_a_crash():
    assert parse_retry_after("\u00b2", T0) is None


# Each row: the 429 answer's Retry-After header -> ApiResult.retry_after (client clock fixed at T0).
RETRY_AFTER_OVER_HTTP = [
    ({"Retry-After": "7"}, 7.0),        # seconds
    ({"Retry-After": LATER}, 120.0),    # an HTTP date, read against the client's clock
    ({}, None),                         # absent: the policy falls back to backoff
    ({"Retry-After": "later"}, None),   # unreadable
]


@pytest.mark.parametrize("headers, expected", RETRY_AFTER_OVER_HTTP)
def test_retry_after_reaches_the_result(fake_api, headers, expected):
    fake_api.script(DEACTIVATE, Reply(429, {"message": "rate limited"}, headers=headers))

    result = make_client(fake_api.base_url, clock=Clock(T0)).deactivate_room("room-1")

    assert result.status == 429
    assert result.retry_after == expected
    assert result.error == "HTTP 429: rate limited"


def test_unreadable_non_ascii_retry_after_does_not_raise(fake_api):
    fake_api.script(DEACTIVATE, Reply(429, {"message": "slow down"}, headers={"Retry-After": "\u00b2"}))

    result = make_client(fake_api.base_url).deactivate_room("room-1")

    assert result.status == 429
    assert result.retry_after is None


# -- no HTTP answer ---------------------------------------------------------------------------


@dataclass
class NoAnswer:
    reply: Reply | None  # None: the client points at a closed port
    error_has: tuple[str, ...]
    timeout: float = 5.0


NO_ANSWERS = {
    # slower than the read timeout
    "timeout": NoAnswer(Reply(delay=1.0), ("timed out", "0.3s"), timeout=0.3),
    # nothing listening
    "refused": NoAnswer(None, ("connection failed",)),
    # bytes that are not HTTP, then the connection closes
    "garbage": NoAnswer(Reply(garbage=b"\x16\x03\x01 this is not http\r\n\r\n"), ("connection failed",)),
    # binary bytes with no line end at all
    "binary": NoAnswer(Reply(garbage=b"\x00\xff\x00\xff"), ("connection failed",)),
    # the connection is closed without a word
    "dropped": NoAnswer(Reply(drop=True), ("connection failed",)),
}


@pytest.mark.parametrize("case", NO_ANSWERS.values(), ids=NO_ANSWERS.keys())
def test_no_http_answer_is_status_none_with_a_reason(fake_api, closed_port, case):
    if case.reply is None:
        base = f"http://127.0.0.1:{closed_port}"
    else:
        base = fake_api.base_url
        fake_api.script(DEACTIVATE, case.reply)

    result = make_client(base, timeout=case.timeout).deactivate_room("room-1")

    assert result.status is None
    assert not result.ok
    assert result.body is None
    assert result.retry_after is None
    for part in case.error_has:
        assert part in result.error
    assert "\n" not in result.error
    assert SECRET not in result.error
    assert fake_api.disabled_rooms == set()


def test_client_is_usable_again_after_a_failed_call(fake_api):
    client = make_client(fake_api.base_url)
    fake_api.script(DEACTIVATE, Reply(drop=True))

    first = client.deactivate_room("room-1")
    second = client.deactivate_room("room-1")

    assert first.status is None
    assert second.status == 200
    assert fake_api.disabled_rooms == {"room-1"}


# -- secrets never in error text ---------------------------------------------------------------

# Each row: a reply built from (token, secret) that echoes a credential back.
ECHOES = {
    # the token echoed in a JSON "message", as an API saying "invalid token <token>" would
    "token-in-message": lambda token, secret: Reply(401, {"message": f"invalid token {token}"}),
    # the secret echoed in a JSON "error"
    "secret-in-error": lambda token, secret: Reply(500, {"error": f"cannot verify with {secret}"}),
    # both, in a JSON object with no known key: the raw text path
    "both-in-raw-json": lambda token, secret: Reply(502, {"detail": [token, secret]}),
    # both, in a plain-text body
    "both-in-plain-text": lambda token, secret: Reply(garbage=raw_http(
        400, "Bad Request", f"auth {token} secret {secret}".encode())),
    # the token as the first line of a non-HTTP answer: ends up in the exception text
    "token-as-garbage": lambda token, secret: Reply(garbage=f"{token} {secret}\r\n\r\n".encode()),
    # the token split at its dots, as an API that parses it and reports its parts might (issue 15)
    "token-in-parts": lambda token, secret: Reply(401, {"message": "bad parts: " + " / ".join(token.split("."))}),
}


@pytest.mark.parametrize("make_reply", ECHOES.values(), ids=ECHOES.keys())
@pytest.mark.attack("an API answer that echoes the token, whole or in parts, into errors and logs")
def test_error_text_never_holds_the_secret_or_the_token(fake_api, make_reply):
    client = make_client(fake_api.base_url)
    token = client.tokens.token()  # the same token the call will send: it is reused
    fake_api.script(DEACTIVATE, make_reply(token, SECRET))

    result = client.deactivate_room("room-1")

    [call] = fake_api.calls_to(DEACTIVATE)
    assert call.headers["authorization"] == token  # the echoed value is what was sent
    assert not result.ok
    assert result.error
    assert token not in result.error
    assert SECRET not in result.error
    assert "[redacted]" in result.error
    _, claims, signature = token.split(".")
    assert claims not in result.error and signature not in result.error  # nor either part alone


def test_secret_straddling_the_300_character_cut_is_not_leaked_in_part(fake_api):
    fake_api.script(DEACTIVATE, Reply(500, {"message": "x" * 280 + SECRET}))

    result = make_client(fake_api.base_url).deactivate_room("room-1")

    assert result.status == 500
    assert SECRET[:20] not in result.error  # "test-secret-" and 8 characters of the random part


def test_redact_replaces_secret_and_current_token():
    tokens = TokenSource(API_KEY, SECRET)
    token = tokens.token()

    text = tokens.redact(f"a {SECRET} b {token} c")

    assert text == "a [redacted] b [redacted] c"


# -- fetch_public_key --------------------------------------------------------------------------


def test_fetch_public_key_returns_the_pem(fake_api, public_pem):
    key = fetch_public_key(fake_api.base_url)

    assert key == public_pem
    assert key.startswith("-----BEGIN RSA PUBLIC KEY-----")
    [call] = fake_api.calls_to(PUBLIC_KEY)
    assert call.method == "GET"


def test_the_key_endpoint_works_whether_or_not_it_asks_for_a_token(fake_api, public_pem):
    """Undocumented either way (docs/videosdk.md): with credentials a token goes along, and the
    endpoint answers; without, an endpoint that asks for one is refused, and says so."""
    fake_api.public_key_needs_auth = True
    with pytest.raises(KeyUnavailable, match="401"):
        fetch_public_key(fake_api.base_url)
    tokens = TokenSource(API_KEY, SECRET)
    assert fetch_public_key(fake_api.base_url, tokens=tokens) == public_pem
    refused, fetched = fake_api.calls_to(PUBLIC_KEY)
    assert "authorization" not in refused.headers and fetched.auth_error is None
    assert fetched.headers["authorization"] == tokens.token()  # a bare JWT, as for the REST calls


# Each row: how the key endpoint fails -> a phrase the KeyUnavailable message holds.
KEY_FAILURES = {
    # the endpoint answers 503
    "503": (lambda fake: setattr(fake, "serve_public_key", False), "cannot fetch"),
    # 200 without a PEM in publicKey
    "not-pem": (lambda fake: fake.script(PUBLIC_KEY, Reply(200, {"publicKey": "hello"})), "without a PEM"),
    # 200 without publicKey at all
    "no-key": (lambda fake: fake.script(PUBLIC_KEY, Reply(200, {"other": 1})), "without a PEM"),
    # publicKey that is not a string
    "non-string": (lambda fake: fake.script(PUBLIC_KEY, Reply(200, {"publicKey": ["-----BEGIN"]})),
                   "without a PEM"),
    # 200 whose JSON is not an object
    "json-list": (lambda fake: fake.script(PUBLIC_KEY, Reply(200, ["-----BEGIN"])), "cannot fetch"),
    # 200 whose body is not JSON
    "not-json": (lambda fake: fake.script(PUBLIC_KEY, Reply(garbage=raw_http(200, "OK", b"-----BEGIN"))),
                 "cannot fetch"),
    # not HTTP at all
    "garbage": (lambda fake: fake.script(PUBLIC_KEY, Reply(garbage=b"nope\r\n\r\n")), "cannot fetch"),
    # the connection dropped
    "dropped": (lambda fake: fake.script(PUBLIC_KEY, Reply(drop=True)), "cannot fetch"),
}


@pytest.mark.parametrize("arrange, phrase", KEY_FAILURES.values(), ids=KEY_FAILURES.keys())
def test_fetch_public_key_unavailable(fake_api, arrange, phrase):
    arrange(fake_api)

    with pytest.raises(KeyUnavailable) as raised:
        fetch_public_key(fake_api.base_url)

    assert phrase in str(raised.value)
    assert PUBLIC_KEY in str(raised.value)


def test_fetch_public_key_refused(closed_port):
    with pytest.raises(KeyUnavailable) as raised:
        fetch_public_key(f"http://127.0.0.1:{closed_port}")

    assert "cannot fetch" in str(raised.value)
    assert str(closed_port) in str(raised.value)


def test_fetch_public_key_timeout(fake_api):
    fake_api.script(PUBLIC_KEY, Reply(delay=1.0))

    with pytest.raises(KeyUnavailable):
        fetch_public_key(fake_api.base_url, timeout=0.3)


def test_the_service_fetches_the_key_with_its_token(fake_api, make_app, sign):
    """Through the app as deployed: a key endpoint that asks for a token still gives the key."""
    from .conftest import event_body

    fake_api.public_key_needs_auth = True
    client = make_app().test_client()
    body = event_body("session-ended", meetingId="abcd-efgh-ijkl", sessionId="s-1")
    answer = client.post("/webhooks/videosdk", data=body, headers={"videosdk-signature": sign(body)})
    assert answer.status_code == 202, answer.get_json()
    [fetch] = fake_api.calls_to(PUBLIC_KEY)
    assert (fetch.status, fetch.auth_error) == (200, None)
