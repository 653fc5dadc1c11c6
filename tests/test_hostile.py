"""Hostile input against the real server: one gunicorn process (the Procfile's `web:` command,
WEB_CONCURRENCY=2, pinned webhook key), bytes written to real sockets, and the SQLite file read
before and after every request.

Every row of the table says what must come back. For each row: the status is the expected one and
never 5xx; no answer carries a traceback; an error the application answers is JSON with an
`error` message; a refused request wrote nothing (inbox, deliveries, decisions, actions, timers,
rooms). An accepted one (202) wrote exactly one inbox row, the body byte for byte, and nothing
else; then the worker's decider (built here, in the test process, over the server's SQLite file,
as `python -m service worker` builds it, so that each row is decided before the next is sent)
takes it out and records exactly one delivery, byte for byte: an unknown event type as not known;
a signed body of a known type with a field missing or unreadable as kept with its problem, and
nothing else written. Requests that gunicorn's HTTP parser refuses before the application runs
(bad Content-Length, header limits, ...) are answered by gunicorn in text/html: those rows are
marked `layer="gunicorn"` and checked for status, no traceback and no writes. At the end the
server must still be up, with its two original workers, and its log must hold no traceback.

"""

from __future__ import annotations

import base64
import gzip
import http.client
import json
import socket
import sqlite3
from collections import Counter
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

import pytest
import requests
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from service.config import Settings
from service.runtime import build_decider, build_verifier, load_rules_holder, open_store
from service.schemas import KNOWN_EVENTS

from .conftest import API_KEY, SECRET, TEST_RULES, sign_with
from .fakeapi import FakeVideoSDK
from .procs import Processes, service_env, wait_until_up

pytestmark = pytest.mark.e2e

PATH = "/webhooks/videosdk"
HEADER = "videosdk-signature"
TABLES = ("inbox", "deliveries", "decisions", "actions", "timers", "rooms")
MAX_BODY = 64 * 1024
SENT: Counter = Counter()  # what this module really sent, for the final report
SENT_ROWS: set[str] = set()  # the ids of the table's rows sent so far

# -- the server ----------------------------------------------------------------------------------


STARTUP: dict = {}  # a failed start, kept so that it is reported once and not retried per row


@pytest.fixture(scope="module")
def server(tmp_path_factory, public_pem, private_key, request):
    """The Procfile's `web:` command, once for the module, on a fresh SQLite file."""
    if "error" in STARTUP:
        pytest.fail(STARTUP["error"], pytrace=False)
    tmp = tmp_path_factory.mktemp("hostile")
    rules = tmp / "rules.yaml"
    rules.write_text(TEST_RULES)
    fake = FakeVideoSDK(API_KEY, SECRET, public_pem)
    fake.start()
    db = tmp / "hostile.db"
    env = service_env(api_key=API_KEY, secret=SECRET, api_base=fake.base_url, rules_file=rules,
                      database_url=f"sqlite:///{db}", VIDEOSDK_WEBHOOK_PUBLIC_KEY=public_pem)  # pinned: no fetch
    procs = Processes(tmp, env)
    try:
        web = procs.start("web")
        base = f"http://127.0.0.1:{env['PORT']}"
        try:
            wait_until_up(base, web)
        except AssertionError as exc:
            STARTUP["error"] = f"the web process did not start: {exc}"
            pytest.fail(STARTUP["error"], pytrace=False)
        other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        signer = SimpleNamespace(sign=lambda body: sign_with(private_key, body), key=private_key, other=other_key)
        # The worker's decider, over the file the web process migrated: no worker process, so that
        # what a request wrote can be seen before it is decided, and decided before the next row.
        settings = Settings.from_env(env)
        store = open_store(settings, migrate=False)
        decider = build_decider(settings, store, load_rules_holder(settings, store), build_verifier(settings))
        yield SimpleNamespace(web=web, base=base, port=int(env["PORT"]), db=db, signer=signer,
                              log=Path(web.log_path), fake=fake, decider=decider)
    finally:
        if "store" in locals():
            store.close()
        procs.stop_all()
        fake.stop()
        report(request.config, f"test_hostile: {SENT['requests']} hostile requests sent over real sockets "
                               f"({SENT['accepted']} accepted, {SENT['refused']} refused)")


def report(config, line: str) -> None:
    """A line on the terminal even under -q and output capture."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    capture = config.pluginmanager.get_plugin("capturemanager")
    if reporter is None or not SENT:
        return
    if capture is not None:
        with capture.global_and_fixture_disabled():
            reporter.write_line("\n" + line)
    else:
        reporter.write_line("\n" + line)


def counts(db: Path) -> dict[str, int]:
    con = sqlite3.connect(db, timeout=30)
    try:
        return {t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in TABLES}
    finally:
        con.close()


def stored(db: Path, delivery_id: str) -> tuple[str, bool, str | None] | None:
    """The stored delivery's (body, known, problem)."""
    con = sqlite3.connect(db, timeout=30)
    try:
        row = con.execute("SELECT body, known, problem FROM deliveries WHERE id = ?", (delivery_id,)).fetchone()
        return (row[0], bool(row[1]), row[2]) if row else None
    finally:
        con.close()


def waiting(db: Path, delivery_id: str) -> tuple[str, bool | None] | None:
    """The inbox row's (body, verified), while it waits to be decided."""
    con = sqlite3.connect(db, timeout=30)
    try:
        row = con.execute("SELECT body, verified FROM inbox WHERE id = ?", (delivery_id,)).fetchone()
        return (row[0], None if row[1] is None else bool(row[1])) if row else None
    finally:
        con.close()


# -- requests as bytes -----------------------------------------------------------------------------

SIGNED = object()  # sign the body correctly
OMIT = object()  # no signature header at all


@dataclass
class Req:
    method: str
    raw: bytes  # every byte written to the socket
    body: bytes  # the body a 2xx must have stored
    shut: bool = False  # half-close the connection after writing


def chunked(body: bytes, size: int = 1024) -> bytes:
    out = bytearray()
    for i in range(0, len(body), size):
        piece = body[i:i + size]
        out += b"%x\r\n" % len(piece) + piece + b"\r\n"
    return bytes(out + b"0\r\n\r\n")


def http_request(body: bytes = b"", *, sig=SIGNED, content_type: str | None = "application/json",
                 framing="length", chunk: int = 1024, method: str = "POST", path: str = PATH,
                 headers: tuple = (), sent: bytes | None = None, payload: bytes | None = None,
                 shut: bool = False, version: str = "HTTP/1.1") -> Callable[[SimpleNamespace], Req]:
    """A request builder; signing happens when the row runs (the key is a fixture).

    sig: SIGNED, OMIT, a literal header value, or f(signer, body) -> header value.
    sent: the body bytes actually sent, when they differ from the signed `body`.
    framing: "length" (Content-Length), "chunked", None (no framing header), or an explicit
    Content-Length value. payload: the raw bytes after the header block, overriding framing.
    """

    def make(signer) -> Req:
        wire = body if sent is None else sent
        lines = [f"{method} {path} {version}", "Host: roomwarden.test", "User-Agent: hostile/1"]
        if sig is SIGNED:
            lines.append(f"{HEADER}: {signer.sign(body)}")
        elif callable(sig):
            lines.append(f"{HEADER}: {sig(signer, body)}")
        elif sig is not OMIT:
            lines.append(f"{HEADER}: {sig}")
        if content_type is not None:
            lines.append(f"Content-Type: {content_type}")
        lines.extend(f"{k}: {v(signer, body) if callable(v) else v}" for k, v in headers)
        data = wire
        if framing == "length":
            lines.append(f"Content-Length: {len(wire)}")
        elif framing == "chunked":
            lines.append("Transfer-Encoding: chunked")
            data = chunked(wire, chunk)
        elif framing is not None:
            lines.append(f"Content-Length: {framing}")
        if payload is not None:
            data = payload
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        return Req(method, head + data, wire, shut)

    return make


def raw_request(data: bytes, method: str = "POST", shut: bool = False) -> Callable[[SimpleNamespace], Req]:
    return lambda signer: Req(method, data, b"", shut)


def send(port: int, req: Req) -> tuple[http.client.HTTPResponse, bytes]:
    sock = socket.create_connection(("127.0.0.1", port), timeout=20)
    try:
        try:
            sock.sendall(req.raw)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server may answer (413) and close before reading everything: read the answer
        if req.shut:
            sock.shutdown(socket.SHUT_WR)
        response = http.client.HTTPResponse(sock, method=req.method)
        response.begin()  # skips "100 Continue"
        body = response.read()
        return response, body
    finally:
        sock.close()


# -- the table ----------------------------------------------------------------------------------------


@dataclass
class Case:
    id: str
    make: Callable[[SimpleNamespace], Req]
    status: int
    error: str | None = None  # a fragment of the JSON `error` message
    layer: str = "app"  # "gunicorn": refused by the HTTP parser before the app runs (text/html)
    stores: bool | None = None  # None: a 202 stores one delivery, anything else nothing
    problem: str | None = None  # kept unread: a fragment of the problem it is stored with once decided
    known: bool = True  # an accepted body's event type is one the service knows

    @property
    def accepted(self) -> bool:
        return self.stores if self.stores is not None else self.status == 202


def ev(event_type, data=None, **extra) -> bytes:
    return json.dumps({"webhookType": event_type, "data": data if data is not None else {}, **extra}).encode()


ROOM = "hstl-room-0001"
SESSION = "sess-0001"
PARTICIPANT = "part-0001"
REQUIRED, OPTIONAL = "required", "optional"
ROOM_FIELDS = {"meetingId": REQUIRED, "sessionId": REQUIRED}
PARTICIPANT_FIELDS = {**ROOM_FIELDS, "participantId": REQUIRED, "participantName": OPTIONAL}
SESSION_FIELDS = {**ROOM_FIELDS, "start": OPTIONAL, "end": OPTIONAL}
VALID_VALUES = {"meetingId": ROOM, "sessionId": SESSION, "participantId": PARTICIPANT,
                "participantName": "Ann Example", "start": "2026-11-26T10:00:00Z",
                "end": "2026-11-26T10:30:00Z"}
# One concrete event type for every known type or family (KNOWN_EVENTS), and the fields it needs.
EVENTS = {
    "participant-joined": PARTICIPANT_FIELDS,
    "participant-left": PARTICIPANT_FIELDS,
    "session-started": SESSION_FIELDS,
    "session-ended": SESSION_FIELDS,
    "participant-recording-started": PARTICIPANT_FIELDS,
    "participant-track-recording-stopped": PARTICIPANT_FIELDS,
    "recording-started": ROOM_FIELDS,
    "livestream-stopped": ROOM_FIELDS,
    "hls-playable": ROOM_FIELDS,
    "transcription-failed": ROOM_FIELDS,
    "merge-recording-started": ROOM_FIELDS,
}
WRONG_TYPES = [("int", 12), ("float", 1.5), ("object", {"id": "abcd-efgh-ijkl"}), ("array", ["abcd"]),
               ("null", None), ("true", True)]


def valid_data(event_type: str) -> dict:
    return {name: VALID_VALUES[name] for name in EVENTS[event_type]}


def deep_body(depth: int, kind: str) -> bytes:
    """A signed-webhook-shaped body with an extra data field nested `depth` levels."""
    inner = ("[" * depth + "]" * depth) if kind == "array" else ('{"a":' * depth + "1" + "}" * depth)
    head = ev("session-ended", valid_data("session-ended"))[:-2]  # strip the closing "}}"
    return head + b', "nested": ' + inner.encode() + b"}}"


def padded(total: int) -> bytes:
    """A valid session-ended body of exactly `total` bytes."""
    base = ev("session-ended", {**valid_data("session-ended"), "pad": ""})
    body = ev("session-ended", {**valid_data("session-ended"), "pad": "x" * (total - len(base))})
    assert len(body) == total
    return body


def with_raw_field(event_type: str, name: str, raw_json: str) -> bytes:
    """A body whose `data.<name>` is written as raw JSON text (numbers json.dumps cannot make)."""
    data = {k: v for k, v in valid_data(event_type).items() if k != name}
    head = json.dumps({"webhookType": event_type, "data": data})[:-2]
    return f'{head}, "{name}": {raw_json}}}}}'.encode()


ENDED = ev("session-ended", valid_data("session-ended"))


def mangled(insert: bytes) -> bytes:
    """ENDED with raw bytes inserted inside the sessionId string."""
    return ENDED.replace(SESSION.encode(), b"sess-" + insert + b"0001")

OTHER = ev("session-ended", {**valid_data("session-ended"), "meetingId": "othr-room-0002"})
FLIPPED = ENDED.replace(ROOM.encode(), b"hstl-room-0009")
BIG = ev("session-ended", {**valid_data("session-ended"), "pad": "x" * (70 * 1024)})


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def _cases() -> list[Case]:
    c: list[Case] = []
    add = c.append

    # -- the baseline: what must work -----------------------------------------------------------
    add(Case("baseline-signed-session-ended", http_request(ENDED), 202))
    add(Case("baseline-unknown-event-type", http_request(ev("call-answered", {"meetingId": ROOM})), 202,
             known=False))

    # -- malformed JSON, signed (400) and unsigned (401: the signature is checked first) ----------
    malformed = {
        "open-brace": b"{", "not-json": b"{not json", "unterminated": ENDED[:-1], "trailing-garbage": ENDED + b" x",
        "two-documents": ENDED + ENDED, "single-quotes": ENDED.replace(b'"', b"'"),
        "trailing-comma": ENDED[:-2] + b",}}", "comment": b"// hi\n" + ENDED, "json-null": b"null",
        "json-true": b"true", "json-number": b"1", "json-string": b'"session-ended"', "json-array": b"[]",
        "array-of-webhook": b"[" + ENDED + b"]", "raw-control-char-in-string": mangled(b"\x01"),
        "bare-word": b"session-ended", "xml": b"<webhook/>",
    }
    for name, body in malformed.items():
        add(Case(f"malformed-{name}-signed", http_request(body), 400))
        add(Case(f"malformed-{name}-unsigned", http_request(body, sig=OMIT), 401, "missing videosdk-signature"))
    # duplicate keys: the last wins, so this is a session-ended with nothing in it, kept unread
    duplicate = b'{"webhookType":"call-x","data":{},"webhookType":"session-ended"}'
    add(Case("malformed-duplicate-keys-last-wins-signed", http_request(duplicate), 202,
             problem="data.meetingId: Missing data for required field.; data.sessionId: Missing data"))
    add(Case("malformed-duplicate-keys-last-wins-unsigned", http_request(duplicate, sig=OMIT), 401,
             "missing videosdk-signature"))
    add(Case("malformed-garbage-signature", http_request(b"{not json", sig="Zm9v"), 401, "does not match"))

    # -- not UTF-8 ---------------------------------------------------------------------------------
    not_utf8 = {
        "ff-fe": b"\xff\xfe{}", "latin-1": mangled("é".encode("latin-1")),
        "utf-16": ENDED.decode().encode("utf-16"), "utf-8-bom": b"\xef\xbb\xbf" + ENDED,
        "overlong-slash": mangled(b"\xc0\xaf"), "encoded-surrogate": mangled(b"\xed\xa0\x80"),
        "truncated-sequence": mangled(b"\xe2\x82"), "nul-bytes": b"\x00" * 16,
        "gzip-content-encoding": gzip.compress(ENDED),
    }
    for name, body in not_utf8.items():
        headers = (("Content-Encoding", "gzip"),) if name.startswith("gzip") else ()
        expected = "not valid JSON" if name == "utf-8-bom" else None
        add(Case(f"encoding-{name}-signed", http_request(body, headers=headers), 400, expected))
        add(Case(f"encoding-{name}-unsigned", http_request(body, sig=OMIT, headers=headers), 401))
    add(Case("encoding-ff-fe-message", http_request(b"\xff\xfe{}"), 400, "not UTF-8"))

    # -- nesting -------------------------------------------------------------------------------------
    for depth in (990, 1000, 5000, 30000):
        add(Case(f"nesting-array-{depth}-signed", http_request(deep_body(depth, "array")), 400, "nested too deeply"))
    for depth in (990, 1000, 5000, 10000):
        add(Case(f"nesting-object-{depth}-signed", http_request(deep_body(depth, "object")), 400, "nested too deeply"))
    add(Case("nesting-bare-arrays-30000", http_request(b"[" * 30000 + b"]" * 30000), 400))
    add(Case("nesting-bare-arrays-unsigned", http_request(b"[" * 30000 + b"]" * 30000, sig=OMIT), 401))
    add(Case("nesting-array-500-is-fine", http_request(deep_body(500, "array")), 202))
    add(Case("nesting-object-500-is-fine", http_request(deep_body(500, "object")), 202))

    # -- numbers ---------------------------------------------------------------------------------------
    digits5000 = "1" * 5000
    for where, event_type in (("data-extra", "session-ended"), ("meetingId", "session-ended"),
                              ("participantId", "participant-left")):
        name = "x" if where == "data-extra" else where
        add(Case(f"number-5000-digit-int-{where}", http_request(with_raw_field(event_type, name, digits5000)), 400,
                 "not valid JSON"))
        for literal in ("1e999", "-1e999", "NaN", "Infinity", "-Infinity"):
            add(Case(f"number-{literal}-{where}", http_request(with_raw_field(event_type, name, literal)), 400,
                     "not valid JSON"))
    add(Case("number-5000-digit-int-top-level", http_request(ENDED[:-1] + b', "n": ' + digits5000.encode() + b"}"),
             400, "not valid JSON"))
    add(Case("number-5000-digit-int-unsigned", http_request(with_raw_field("session-ended", "x", digits5000),
                                                            sig=OMIT), 401))
    add(Case("number-NaN-unsigned", http_request(with_raw_field("session-ended", "x", "NaN"), sig=OMIT), 401))
    for literal, label in (("9" * 4000, "4000-digit-int"), ("1e308", "1e308"), ("1e-999", "underflow"),
                           ("-0.0", "negative-zero"), ("123456789012345678901234567890.5e-3", "long-float")):
        add(Case(f"number-{label}-extra-is-accepted", http_request(with_raw_field("session-ended", "x", literal)), 202))

    # -- wrong types for every field of every known event --------------------------------------------
    for event_type, fields in EVENTS.items():
        for name, need in fields.items():
            for label, value in WRONG_TYPES:
                data = {**valid_data(event_type), name: value}
                ok = need == OPTIONAL and value is None
                add(Case(f"type-{event_type}-{name}-{label}", http_request(ev(event_type, data)),
                         202, problem=None if ok else f"data.{name}: "))
    for label, value in WRONG_TYPES + [("empty", ""), ("uppercase", "Session-Ended"), ("space", "session ended"),
                                       ("too-long", "a" * 101), ("slash", "session/ended")]:
        add(Case(f"type-webhookType-{label}", http_request(json.dumps({"webhookType": value, "data": {}}).encode()),
                 400, "not a VideoSDK webhook"))
    for label, value in [("string", "x"), ("int", 1), ("array", []), ("null", None), ("true", True)]:
        add(Case(f"type-data-{label}", http_request(json.dumps({"webhookType": "session-ended", "data": value}).encode()),
                 400, "not a VideoSDK webhook"))
    for label, value in [("with-slash", "a/b"), ("with-space", "a b"), ("newline", "abcd\n"), ("too-long", "a" * 129),
                         ("empty", ""), ("leading-dash", "-abc"), ("unicode", "ábcd")]:
        add(Case(f"value-meetingId-{label}", http_request(ev("session-ended", {**valid_data("session-ended"),
                                                                               "meetingId": value})), 202,
                 problem="data.meetingId: Not a valid id."))
    add(Case("value-participantId-empty", http_request(ev("participant-left", {**valid_data("participant-left"),
                                                                               "participantId": ""})), 202,
             problem="data.participantId: Length must be between 1 and 256."))
    add(Case("value-participantId-too-long", http_request(ev("participant-left", {
        **valid_data("participant-left"), "participantId": "p" * 257})), 202,
        problem="data.participantId: Length must be between 1 and 256."))
    add(Case("value-participantName-too-long", http_request(ev("participant-left", {
        **valid_data("participant-left"), "participantName": "n" * 513})), 202,
        problem="data.participantName: Longer than maximum length 512."))
    add(Case("value-start-too-long", http_request(ev("session-started", {
        **valid_data("session-started"), "start": "2" * 65})), 202,
        problem="data.start: Longer than maximum length 64."))
    for label, stamp in (("garbage", "yesterday"), ("sixty-minutes", "2022-07-05T15:60:35Z"), ("empty", ""),
                         ("year-0", "0000-01-01T00:00:00Z"), ("far-offset", "9999-12-31T23:59:59-23:59")):
        add(Case(f"value-start-unreadable-is-accepted-{label}", http_request(ev("session-ended", {
            **valid_data("session-ended"), "start": stamp, "end": stamp})), 202))
    add(Case("value-participantId-surrogate-pair-is-accepted", http_request(
        ev("participant-left", {**valid_data("participant-left"), "participantId": "p-\U0001F600"})), 202))
    for label, raw in (("lone-high", '"\\ud800"'), ("lone-low", '"a\\udfff"')):
        add(Case(f"value-participantId-{label}-surrogate", http_request(
            with_raw_field("participant-joined", "participantId", raw)), 400))
    add(Case("value-unknown-event-wrong-types-recorded", http_request(
        ev("call-answered", {"meetingId": 12, "sessionId": None, "participantId": []})), 202, known=False))

    # -- missing fields: a signed body of a known type is accepted (202), kept, never decided on --------
    for event_type, fields in EVENTS.items():
        for name, need in fields.items():
            data = {k: v for k, v in valid_data(event_type).items() if k != name}
            add(Case(f"missing-{event_type}-{name}", http_request(ev(event_type, data)),
                     202,
                     problem=None if need == OPTIONAL else f"data.{name}: Missing data for required field."))
    add(Case("missing-webhookType", http_request(json.dumps({"data": valid_data("session-ended")}).encode()), 400))
    add(Case("missing-data", http_request(json.dumps({"webhookType": "session-ended"}).encode()), 400))
    add(Case("missing-everything", http_request(b"{}"), 400, "not a VideoSDK webhook"))
    add(Case("alias-type-for-webhookType", http_request(json.dumps({"type": "session-ended",
                                                                      "data": valid_data("session-ended")}).encode()),
             202))

    # -- extra fields are accepted and stored as sent --------------------------------------------------
    for event_type in EVENTS:
        data = {**valid_data(event_type), "fileUrl": None, "fileDetails": [{"filePath": "/x", "fileUrl": "u"}],
                "kind": "video", "ünïcödé": "\u2028\u0000\x7f", "nested": {"a": [1, 2.5, True, None, {"b": []}]}}
        add(Case(f"extra-fields-{event_type}", http_request(ev(event_type, data, id=7, ts="2026")), 202))
    add(Case("extra-participant-fields-on-session-event-ignored", http_request(ev("session-ended", {
        **valid_data("session-ended"), "participantId": 12, "participantName": {"x": 1}})), 202))
    add(Case("extra-top-level-only", http_request(ev("session-ended", valid_data("session-ended"),
                                                     webhookId=None, extra={"deep": [[[]]]})), 202))
    # a NUL (or any control character) in an id would end up in the store's columns: the body is kept
    # (as sent: the NUL is a JSON escape in it), the id is not
    add(Case("value-participantId-with-nul", http_request(
        ev("participant-left", {**valid_data("participant-left"), "participantId": "p\u0000q"})), 202,
        problem="data.participantId: Must not contain control characters."))

    # -- empty bodies -----------------------------------------------------------------------------------
    add(Case("empty-body-signed", http_request(b""), 400, "empty"))
    add(Case("empty-body-unsigned", http_request(b"", sig=OMIT), 401, "missing videosdk-signature"))
    add(Case("empty-body-no-content-length", http_request(b"", framing=None), 400, "empty"))
    add(Case("whitespace-body-signed", http_request(b" \r\n\t "), 400, "empty"))

    # -- Content-Type does not matter for a signed body: it is read raw and parsed as JSON -------------
    for label, ctype in (("text-plain", "text/plain"), ("none", None), ("multipart", "multipart/form-data; boundary=xyz"),
                         ("form-urlencoded", "application/x-www-form-urlencoded"),
                         ("json-latin1-charset", "application/json; charset=latin-1"), ("garbage", "???"),
                         ("octet-stream", "application/octet-stream")):
        add(Case(f"content-type-{label}-signed-json", http_request(ENDED, content_type=ctype), 202))
    add(Case("content-type-form-urlencoded-form-body", http_request(b"webhookType=session-ended&data=x",
                                                                     content_type="application/x-www-form-urlencoded"),
             400, "not valid JSON"))
    add(Case("content-type-multipart-real-multipart-body", http_request(
        b"--xyz\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\n1\r\n--xyz--\r\n",
        content_type="multipart/form-data; boundary=xyz"), 400, "not valid JSON"))
    add(Case("content-type-multipart-unsigned", http_request(ENDED, sig=OMIT, content_type="multipart/form-data; b=x"),
             401))

    # -- size --------------------------------------------------------------------------------------------
    add(Case("size-70KiB-signed", http_request(BIG), 413, "64 KiB"))
    add(Case("size-70KiB-unsigned", http_request(BIG, sig=OMIT), 413, "64 KiB"))  # size is known before reading
    add(Case("size-65537-bytes", http_request(padded(MAX_BODY + 1)), 413, "64 KiB"))
    add(Case("size-exactly-64KiB-is-accepted", http_request(padded(MAX_BODY)), 202))
    add(Case("size-declared-1GB-small-body", http_request(ENDED, framing="1000000000", shut=True), 413, "64 KiB"))
    add(Case("size-chunked-exactly-64KiB-is-accepted", http_request(padded(MAX_BODY), framing="chunked", chunk=1000),
             202))
    add(Case("size-chunked-70KiB-signed", http_request(BIG, framing="chunked", chunk=512), 413, "64 KiB"))
    add(Case("size-chunked-70KiB-unsigned", http_request(BIG, sig=OMIT, framing="chunked", chunk=1024), 413, "64 KiB"))
    add(Case("size-chunked-65537-bytes-signed", http_request(padded(MAX_BODY + 1), framing="chunked", chunk=4096),
             413, "64 KiB"))

    # -- framing -----------------------------------------------------------------------------------------
    add(Case("framing-chunked-tiny-chunks", http_request(ENDED, framing="chunked", chunk=7), 202))
    add(Case("framing-chunked-one-byte-chunks", http_request(ENDED, framing="chunked", chunk=1), 202))
    add(Case("framing-chunked-extension", http_request(ENDED, framing=None, headers=(("Transfer-Encoding", "chunked"),),
                                                       payload=b"%x;foo=bar\r\n" % len(ENDED) + ENDED + b"\r\n0\r\n\r\n"),
             202))
    add(Case("framing-chunked-trailer", http_request(ENDED, framing=None, headers=(("Transfer-Encoding", "chunked"),),
                                                     payload=b"%x\r\n" % len(ENDED) + ENDED + b"\r\n0\r\nX-T: 1\r\n\r\n"),
             202))
    add(Case("framing-chunked-unsigned", http_request(ENDED, sig=OMIT, framing="chunked", chunk=10), 401))
    add(Case("framing-chunked-truncated-then-eof", http_request(
        ENDED, framing=None, headers=(("Transfer-Encoding", "chunked"),),
        payload=b"%x\r\n" % (len(ENDED) + 10) + ENDED, shut=True), 400))
    add(Case("framing-chunked-no-last-chunk-then-eof", http_request(
        ENDED, framing=None, headers=(("Transfer-Encoding", "chunked"),),
        payload=b"%x\r\n" % len(ENDED) + ENDED + b"\r\n", shut=True), 400))
    add(Case("framing-chunked-bad-size", http_request(ENDED, framing=None, headers=(("Transfer-Encoding", "chunked"),),
                                                      payload=b"zz\r\nabc\r\n0\r\n\r\n"), 400))
    add(Case("framing-chunked-missing-crlf", http_request(
        ENDED, framing=None, headers=(("Transfer-Encoding", "chunked"),),
        payload=b"%x\r\n" % len(ENDED) + ENDED + b"XX0\r\n\r\n"), 400))
    add(Case("framing-chunked-bad-extension", http_request(
        ENDED, framing=None, headers=(("Transfer-Encoding", "chunked"),),
        payload=b"%x;\x01\r\n" % len(ENDED) + ENDED + b"\r\n0\r\n\r\n"), 400))
    add(Case("framing-content-length-not-a-number", http_request(ENDED, framing="abc"), 400, layer="gunicorn"))
    add(Case("framing-content-length-negative", http_request(ENDED, framing="-5"), 400, layer="gunicorn"))
    add(Case("framing-content-length-and-chunked", http_request(ENDED, framing=None, headers=(
        ("Content-Length", str(len(ENDED))), ("Transfer-Encoding", "chunked")), payload=chunked(ENDED)), 400,
        layer="gunicorn"))
    add(Case("framing-two-content-lengths", http_request(ENDED, headers=(("Content-Length", str(len(ENDED) + 1)),)),
             400, layer="gunicorn"))
    add(Case("framing-transfer-encoding-gzip-only", http_request(ENDED, framing=None,
                                                                 headers=(("Transfer-Encoding", "gzip"),)),
             400, layer="gunicorn"))
    add(Case("framing-chunked-twice", http_request(ENDED, framing=None, headers=(("Transfer-Encoding", "chunked, chunked"),),
                                                   payload=chunked(ENDED)), 400, layer="gunicorn"))
    # Content-Length smaller than the signed body: only a prefix is read, which the signature does not cover.
    add(Case("framing-content-length-too-small", http_request(ENDED, framing=str(len(ENDED) - 5)), 401,
             "does not match"))
    # Content-Length larger than the body, then EOF: the signature covers every byte that came.
    add(Case("framing-content-length-too-large-then-eof", http_request(ENDED, framing=str(len(ENDED) + 50), shut=True),
             400))
    # an incomplete body is refused as such before its signature is looked at
    add(Case("framing-content-length-too-large-unsigned-then-eof", http_request(
        ENDED, sig=OMIT, framing=str(len(ENDED) + 50), shut=True), 400, "ended after"))
    add(Case("framing-expect-100-continue", http_request(ENDED, headers=(("Expect", "100-continue"),)), 202))
    add(Case("framing-http-1.0", http_request(ENDED, version="HTTP/1.0"), 202))
    add(Case("framing-lf-only-line-endings", raw_request(b"POST " + PATH.encode() + b" HTTP/1.1\nHost: x\n"
                                                         b"Content-Length: 2\n\n{}"), 400, layer="gunicorn"))
    add(Case("framing-not-http", raw_request(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40 + b"\r\n\r\n"),
             400, layer="gunicorn"))

    # -- signatures ----------------------------------------------------------------------------------
    sigs = {
        "missing": (OMIT, "missing videosdk-signature"),
        "empty": ("", "missing videosdk-signature"),
        "whitespace": ("   \t ", "missing videosdk-signature"),
        "not-base64": ("not base64!!", "not base64"),
        "padding-only": ("====", "not base64"),
        "unpadded": (lambda s, b: s.sign(b).rstrip("="), None),
        "urlsafe-alphabet": (lambda s, b: base64.urlsafe_b64encode(base64.b64decode(s.sign(b))).decode().replace(
            "=", "") + "-_", "not base64"),
        "space-inside": (lambda s, b: s.sign(b)[:20] + " " + s.sign(b)[20:], "not base64"),
        "non-ascii": ("sïgnätürë", "not base64"),
        "zeros": (_b64(b"\0" * 256), "does not match"),
        "short": (_b64(b"abc"), "does not match"),
        "too-long": (_b64(b"\1" * 512), "does not match"),
        "8000-chars": ("A" * 8000, "does not match"),
        "truncated": (lambda s, b: _b64(base64.b64decode(s.sign(b))[:-1]), "does not match"),
        "another-body": (lambda s, b: s.sign(OTHER), "does not match"),
        "trailing-newline-added-to-signed-bytes": (lambda s, b: s.sign(b + b"\n"), "does not match"),
        "other-key": (lambda s, b: sign_with(s.other, b), "does not match"),
        "pss-padding": (lambda s, b: _b64(s.key.sign(b, padding.PSS(padding.MGF1(hashes.SHA256()), 32),
                                                     hashes.SHA256())), "does not match"),
        "sha1": (lambda s, b: _b64(s.key.sign(b, padding.PKCS1v15(), hashes.SHA1())), "does not match"),
        "sha512": (lambda s, b: _b64(s.key.sign(b, padding.PKCS1v15(), hashes.SHA512())), "does not match"),
        "two-signatures-joined": (lambda s, b: s.sign(b) + "," + s.sign(b), "not base64"),
        "hex-instead-of-base64": (lambda s, b: base64.b64decode(s.sign(b)).hex(), "does not match"),
    }
    for label, (sig, fragment) in sigs.items():
        add(Case(f"signature-{label}", http_request(ENDED, sig=sig), 401, fragment))
    add(Case("signature-one-byte-changed", http_request(ENDED, sent=FLIPPED), 401, "does not match"))
    add(Case("signature-newline-appended-to-sent-body", http_request(ENDED, sent=ENDED + b"\n"), 401, "does not match"))
    add(Case("signature-body-reserialized", http_request(ENDED, sent=json.dumps(json.loads(ENDED), indent=1).encode()),
             401, "does not match"))
    add(Case("signature-duplicate-header", http_request(ENDED, headers=((HEADER, "x" * 10),)), 401, "not base64"))
    # gunicorn drops header names with underscores (they would alias the dashed name in the environ).
    add(Case("signature-header-with-underscore", http_request(ENDED, sig=OMIT, headers=(
        ("videosdk_signature", lambda s, b: s.sign(b)),)), 401, "missing videosdk-signature"))
    add(Case("signature-header-nul", raw_request(
        b"POST " + PATH.encode() + b" HTTP/1.1\r\nHost: x\r\n" + HEADER.encode() + b": ab\x00cd\r\n"
        b"Content-Length: 2\r\n\r\n{}"), 400, layer="gunicorn"))
    add(Case("signature-header-obsolete-folding", raw_request(
        b"POST " + PATH.encode() + b" HTTP/1.1\r\nHost: x\r\n" + HEADER.encode() + b": abcd\r\n efgh\r\n"
        b"Content-Length: 2\r\n\r\n{}"), 400, layer="gunicorn"))
    add(Case("signature-header-too-large", http_request(ENDED, sig="A" * 9000), 431, layer="gunicorn"))
    add(Case("signature-header-name-case", http_request(ENDED, sig=OMIT, headers=(
        ("VideoSDK-SIGNATURE", lambda s, b: s.sign(b)),)), 202))
    add(Case("signature-surrounding-whitespace-is-accepted", http_request(ENDED, sig=lambda s, b: "  " + s.sign(b) + "\t"),
             202))
    add(Case("signature-valid-on-invalid-json", http_request(b'{"webhookType": "session-ended", "data": {'), 400,
             "not valid JSON"))
    add(Case("signature-valid-on-non-webhook", http_request(b'{"hello": "world"}'), 400, "not a VideoSDK webhook"))
    add(Case("signature-of-other-body-on-invalid-json", http_request(b"{not json", sig=lambda s, b: s.sign(ENDED)), 401,
             "does not match"))
    add(Case("too-many-headers", http_request(ENDED, headers=tuple((f"X-H{i}", "1") for i in range(120))), 431,
             layer="gunicorn"))

    # -- methods and URLs -------------------------------------------------------------------------------
    for method in ("GET", "PUT", "PATCH", "DELETE", "TRACE", "FOO"):
        add(Case(f"method-{method}", http_request(b"", method=method, content_type=None), 405, "not allowed"))
    add(Case("method-GET-with-signed-body", http_request(ENDED, method="GET"), 405, "not allowed"))
    add(Case("method-PUT-with-signed-body", http_request(ENDED, method="PUT"), 405, "not allowed"))
    add(Case("method-HEAD", http_request(b"", method="HEAD", content_type=None), 405))
    # Flask answers OPTIONS itself (200, Allow header, empty body); nothing is read or stored.
    add(Case("method-OPTIONS", http_request(ENDED, method="OPTIONS"), 200, stores=False))
    add(Case("url-query-string", http_request(ENDED, path=PATH + "?a=1&b=%ff&c"), 202))
    add(Case("url-query-string-unsigned", http_request(ENDED, sig=OMIT, path=PATH + "?videosdk-signature=x"), 401))
    add(Case("url-percent-encoded-path", http_request(ENDED, path="/webhooks/videosd%6B"), 202))
    add(Case("url-trailing-slash", http_request(ENDED, path=PATH + "/"), 404))
    add(Case("url-dot-segments", http_request(ENDED, path="/webhooks/../webhooks/videosdk"), 404))
    add(Case("url-upper-case", http_request(ENDED, path=PATH.upper()), 404))
    add(Case("url-request-line-too-long", http_request(ENDED, path=PATH + "?" + "q" * 5000), 414, layer="gunicorn"))
    return c


CASES = _cases()


def _params():
    for case in CASES:
        yield pytest.param(case, id=case.id)


def test_the_table_covers_every_known_event_type():
    for pattern, _ in KNOWN_EVENTS:
        assert any(fnmatchcase(name, pattern) for name in EVENTS), f"no row for events matching {pattern!r}"
    assert len({case.id for case in CASES}) == len(CASES), "row ids must be unique"


@pytest.mark.parametrize("case", list(_params()))
@pytest.mark.attack("malformed, oversized, forged and smuggling HTTP requests to real gunicorn")
def test_hostile_input(server, case: Case):
    req = case.make(server.signer)
    server.decider.drain()  # what a failed row before left undecided is not this row's
    before = counts(server.db)
    response, body = send(server.port, req)
    after = counts(server.db)
    _count(case, response)

    text = body.decode("utf-8", "replace")
    head = "\r\n".join(f"{k}: {v}" for k, v in response.getheaders())
    assert "Traceback" not in text and "Traceback" not in head, text
    assert response.status < 500, f"{response.status}: {text[:500]}"
    assert response.status == case.status, f"{response.status}: {text[:500]}"

    if case.layer == "gunicorn":
        # Refused by gunicorn's HTTP parser: the app never ran, so the answer is gunicorn's HTML page.
        assert response.getheader("Content-Type", "").startswith("text/html")
    elif req.method == "HEAD":
        assert body == b""
    elif case.status >= 400:
        assert response.getheader("Content-Type", "").startswith("application/json"), text
        payload = json.loads(body)
        assert isinstance(payload, dict) and isinstance(payload.get("error"), str) and payload["error"], payload
        if case.error:
            assert case.error in payload["error"], payload
    if case.id == "method-OPTIONS":
        assert "POST" in response.getheader("Allow", "")

    if case.accepted:
        payload = json.loads(body)
        assert set(payload) == {"delivery", "event", "verified"} and payload["verified"] == "yes", payload
        # All the request wrote: one inbox row, the body byte for byte; nothing decided yet.
        assert after == {**before, "inbox": before["inbox"] + 1}, f"{before} -> {after}"
        assert waiting(server.db, payload["delivery"]) == (req.body.decode("utf-8"), True), "not kept byte for byte"
        # Then the worker's decider takes it out, and records it as one delivery.
        [done] = server.decider.drain()
        assert (done.delivery_id, done.event_type) == (payload["delivery"], payload["event"])
        decided = counts(server.db)
        assert decided["inbox"] == before["inbox"] and decided["deliveries"] == before["deliveries"] + 1, decided
        kept_body, known, problem = stored(server.db, payload["delivery"])
        assert kept_body == req.body.decode("utf-8"), "not stored byte for byte"
        assert known is case.known
        if case.problem is not None:
            assert problem is not None and case.problem in problem, problem
            assert done.outcome == "unreadable" and not done.receipt.decisions
            assert decided == {**before, "deliveries": before["deliveries"] + 1}, "an unreadable body was decided on"
        else:
            assert problem is None and done.outcome == ("accepted" if case.known else "ignored"), (problem, done)
    else:
        assert after == before, f"a refused request wrote rows: {before} -> {after}"


def _count(case: Case, response) -> None:
    SENT_ROWS.add(case.id)
    SENT["requests"] += 1
    SENT["accepted" if 200 <= response.status < 300 and case.accepted else "refused"] += 1


@pytest.fixture(scope="module")
def after_the_table(server):
    """The server once every row of the table has been sent to it: the rows that ran as tests
    are not sent again, and the rest (all of them, when a summary test runs alone) are sent
    here, so that each summary test checks what the whole table did."""
    for case in CASES:
        if case.id not in SENT_ROWS:
            response, _ = send(server.port, case.make(server.signer))
            _count(case, response)
            server.decider.drain()
    assert SENT_ROWS == {case.id for case in CASES}
    return server


def _log_tracebacks(server) -> list[str]:
    text = server.log.read_text(errors="replace")
    return [line for line in text.splitlines() if "Traceback" in line]


@pytest.mark.attack("malformed, oversized, forged and smuggling HTTP requests to real gunicorn")
def test_server_survived_the_table(after_the_table):
    server = after_the_table
    assert server.web.poll() is None, "gunicorn exited"
    assert requests.get(server.base + "/healthz", timeout=10).status_code == 200
    assert requests.get(server.base + "/readyz", timeout=10).status_code == 200
    # A signed delivery still works after everything above.
    assert requests.post(server.base + PATH, data=ENDED, timeout=10,
                         headers={HEADER: server.signer.sign(ENDED)}).status_code == 202
    log = server.log.read_text(errors="replace")
    # No worker died (a segfault or a timeout would boot a replacement).
    assert log.count("Booting worker") == 2, log[-3000:]
    assert "WORKER TIMEOUT" not in log
    # The key was pinned: nothing was fetched.
    assert server.fake.calls_to("/v2/public/rsa-public-key") == []


@pytest.mark.attack("malformed, oversized, forged and smuggling HTTP requests to real gunicorn")
def test_log_has_no_traceback(after_the_table):
    assert _log_tracebacks(after_the_table) == []
