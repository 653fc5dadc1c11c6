"""A fake VideoSDK REST API, served over real HTTP on loopback.

It checks the JWT the way the real API does (no `Bearer` prefix, HS256 with the
project secret, `apikey`, `version: 2`, role `crawler`; 401 or 403 otherwise),
serves a public key for webhook signatures, and answers scripted faults:
any status with headers, slow answers, dropped connections and bytes that are
not HTTP. Every request it sees is kept in `calls`.

Every default answer is built from a documented example in `videosdk_examples/`
(SOURCES.md there names each source), changing values only, never keys; where the
docs are silent, the answer says so in a comment. `tests/test_fakeapi.py` checks
that the two do not drift apart.
"""

from __future__ import annotations

import copy
import json
import socket
import threading
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs

import jwt


EXAMPLES = Path(__file__).with_name("videosdk_examples")


def example(name: str) -> dict:
    """A documented answer (`videosdk_examples/NAME.json`), fresh each time: the caller may change it."""
    return json.loads((EXAMPLES / f"{name}.json").read_text())


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def participant(participant_id: str, name: str | None = None) -> dict:
    """An active participant, as the documented examples list one."""
    entry = copy.deepcopy(example("active-participants.current")["data"][0]["participants"][0])
    entry.update(participantId=participant_id, name=name or participant_id)
    return entry


def active_participants_answer(session_id: str, room_id: str, listed: list[dict], shape: str) -> dict:
    """`GET /v2/sessions/{id}/participants/active`, in one of its two documented shapes."""
    if shape == "current":  # answers/active-participants.current.json: a page of sessions
        body = example("active-participants.current")
        session = body["data"][0]
        session.update(_id=session_id, roomId=room_id, participants=listed)
        return body
    if shape == "older":  # answers/active-participants.older.json: one session under data
        body = example("active-participants.older")
        body["data"].update(id=session_id, roomId=room_id, participants=listed)
        return body
    raise ValueError(f"unknown shape {shape!r}")


def live_sessions_answer(room_id: str, sessions: list[tuple[str, list[dict]]]) -> dict:
    """`GET /v2/sessions?roomId=…&status=ongoing`: documented as "a page like the one above"
    (the current active-participants page), so that page is the template; no session: empty data."""
    body = example("active-participants.current")
    template = body["data"][0]
    body["data"] = [{**copy.deepcopy(template), "_id": session_id, "roomId": room_id, "participants": listed}
                    for session_id, listed in sessions]
    body["pageInfo"].update(total=len(sessions), lastPage=1 if sessions else 0)
    return body


def end_session_answer(session_id: str, room_id: str, now: float) -> dict:
    """`POST /v2/sessions/end`: answers/end-session.json, the ended session."""
    body = example("end-session")
    body.update(id=session_id, roomId=room_id, end=_iso(now), participants=[])
    return body


def deactivate_answer(room_id: str, disabled: bool = True) -> dict:
    """`POST /v2/rooms/deactivate`: payloads/deactivate-response.json, the room with `disabled`.
    That example spells the room id `meetingId`, as the fake does."""
    body = example("deactivate-response")
    body.update(meetingId=room_id, disabled=disabled)
    return body


def error_body(message: str) -> dict:
    # VideoSDK does not specify its error bodies; `message` is what its SDK reads first.
    return {"message": message}


@dataclass
class Reply:
    status: int = 200
    body: object = None  # JSON-able; None: the default body for the path
    headers: dict = field(default_factory=dict)
    delay: float = 0.0  # seconds before answering
    garbage: bytes | None = None  # written instead of an HTTP answer, then the connection closes
    drop: bool = False  # close the connection without answering


@dataclass
class Call:
    method: str
    path: str
    headers: dict
    body: object
    status: int
    at: float
    auth_error: str | None = None
    params: dict = field(default_factory=dict)  # the query string's parameters


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        import sys

        if not isinstance(sys.exc_info()[1], ConnectionError):  # a client that hung up: expected
            super().handle_error(request, client_address)


class FakeVideoSDK:
    def __init__(self, api_key: str, secret: str, public_pem: str):
        self.api_key = api_key
        self.secret = secret
        self.public_pem = public_pem
        self.calls: list[Call] = []
        self.missing_rooms: set[str] = set()
        self.disabled_rooms: set[str] = set()
        self.ended_sessions: set[str] = set()
        # session id -> participants reported active (GET /v2/sessions/{id}/participants/active);
        # a session listed here is live, and `session_rooms` says which room it is in.
        self.active: dict[str, list[dict]] = {}
        self.session_rooms: dict[str, str] = {}
        # Which documented shape the active-participants answer takes: "current" or "older".
        self.participants_shape = "current"
        # How "nobody there" is answered: "404" (documented: "No active participants found") or
        # "empty" (a 200 listing no participants: the other reading of silent docs).
        self.nobody_answer = "404"
        # The deactivate answer's `disabled` (documented: true); a test may make it say false.
        self.deactivate_says_disabled = True
        self.serve_public_key = True
        # Whether the key endpoint asks for a token is undocumented: the fake takes none by default
        # (its path says public), and a test can make it ask for one (the server SDK sends one).
        self.public_key_needs_auth = False
        self._scripts: dict[str, deque[Reply]] = defaultdict(deque)
        self.arrivals: list[str] = []  # the path of each request as it arrives, before any delay
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    # -- scripting ---------------------------------------------------------------

    def set_active(self, session_id: str, participants: list, room_id: str = "abcd-efgh-ijkl") -> None:
        """The session is live in `room_id`, with these participants (ids, or documented entries)."""
        with self._lock:
            self.active[session_id] = [participant(p) if isinstance(p, str) else p for p in participants]
            self.session_rooms[session_id] = room_id

    def script(self, path: str, *replies: Reply) -> None:
        """Answer the next requests to `path` with `replies`, in order; then the default."""
        with self._lock:
            self._scripts[path].extend(replies)

    def _next_reply(self, path: str) -> Reply | None:
        with self._lock:
            queue = self._scripts.get(path)
            return queue.popleft() if queue else None

    def calls_to(self, path: str) -> list[Call]:
        with self._lock:
            return [c for c in self.calls if c.path == path]

    def session_ends(self, *, status: int | None = 200) -> list[tuple[str, str | None]]:
        """(roomId, sessionId) of end-session calls (by default only those answered 200)."""
        return [(c.body.get("roomId"), c.body.get("sessionId")) for c in self.calls_to("/v2/sessions/end")
                if status is None or c.status == status]

    def deactivations(self, *, status: int | None = 200) -> list[str]:
        """Room ids of deactivate calls (by default only those answered 200)."""
        return [c.body.get("roomId") for c in self.calls_to("/v2/rooms/deactivate")
                if status is None or c.status == status]

    def wait_for(self, predicate, timeout: float = 20.0, interval: float = 0.05) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(interval)
        return predicate()

    # -- auth, as the real API does it ---------------------------------------------

    def check_auth(self, header: str | None) -> tuple[int, str] | None:
        if not header:
            return 401, "authorization token missing"
        if header.lower().startswith("bearer "):
            return 401, "invalid token"  # the real API takes the bare JWT
        try:
            claims = jwt.decode(header, self.secret, algorithms=["HS256"],
                                options={"require": ["exp", "iat"]})
        except jwt.InvalidTokenError:
            return 401, "invalid or expired token"
        if claims.get("apikey") != self.api_key:
            return 401, "invalid apikey"
        if claims.get("version") != 2 or "crawler" not in (claims.get("roles") or []):
            return 403, "the v2 API needs version 2 and the crawler role"
        if claims["exp"] - claims["iat"] > 24 * 3600:
            return 401, "token lifetime too long"
        return None

    # -- the server ------------------------------------------------------------------

    def start(self) -> str:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # else every answer waits ~40 ms for a delayed ACK

            def log_message(self, *args):
                pass

            def do_GET(self):
                fake._handle(self, "GET")

            def do_POST(self):
                fake._handle(self, "POST")

        self._server = _QuietServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True).start()
        return self.base_url

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def stop(self) -> None:
        if self._server:
            self._server.shutdown()
            self._server.server_close()

    def _handle(self, handler: BaseHTTPRequestHandler, method: str) -> None:
        try:
            self._answer(handler, method)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (a timeout under test); nothing to answer

    def _answer(self, handler: BaseHTTPRequestHandler, method: str) -> None:
        path, _, query = handler.path.partition("?")
        params = {key: values[-1] for key, values in parse_qs(query).items()}
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode("latin-1")
        headers = {k.lower(): v for k, v in handler.headers.items()}

        with self._lock:
            self.arrivals.append(path)
        reply = self._next_reply(path)
        auth_error = None
        if reply is None:
            reply, auth_error = self._default(method, path, headers, body, params)
        if reply.delay:
            time.sleep(reply.delay)
        with self._lock:
            self.calls.append(Call(method, path, headers, body, reply.status if not (
                reply.garbage or reply.drop) else 0, time.time(), auth_error, params))
        if reply.garbage is not None or reply.drop:
            if reply.garbage:
                handler.wfile.write(reply.garbage)
                handler.wfile.flush()
            handler.close_connection = True
            try:
                handler.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        payload = json.dumps(reply.body if reply.body is not None else {}).encode()
        handler.send_response(reply.status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(payload)))
        for name, value in reply.headers.items():
            handler.send_header(name, value)
        handler.end_headers()
        handler.wfile.write(payload)

    def _default(self, method: str, path: str, headers: dict, body, params: dict | None = None
                 ) -> tuple[Reply, str | None]:
        params = params or {}
        if method == "GET" and path == "/v2/public/rsa-public-key":
            if not self.serve_public_key:
                return Reply(503, error_body("unavailable")), None
            if self.public_key_needs_auth and (problem := self.check_auth(headers.get("authorization"))):
                return Reply(problem[0], error_body(problem[1])), problem[1]
            # Documented: {"publicKey": "<PEM>"}, with no auth (shared/videosdk/README.md).
            return Reply(200, {"publicKey": self.public_pem}), None
        problem = self.check_auth(headers.get("authorization"))
        if problem:
            return Reply(problem[0], error_body(problem[1])), problem[1]
        if method == "POST" and path == "/v2/rooms/deactivate":
            room = body.get("roomId") if isinstance(body, dict) else None
            if not isinstance(room, str) or not room:
                return Reply(400, error_body("roomId is required")), None
            if room in self.missing_rooms:  # documented: 402 or 404 for a room not found
                return Reply(404, error_body("Room not found")), None
            with self._lock:
                if self.deactivate_says_disabled:
                    self.disabled_rooms.add(room)
            # Undocumented: what deactivating a room already disabled answers; the fake answers
            # as the first time, and the service reads either answer (docs/videosdk.md).
            return Reply(200, deactivate_answer(room, self.deactivate_says_disabled)), None
        if method == "POST" and path == "/v2/sessions/end":
            room = body.get("roomId") if isinstance(body, dict) else None
            if not isinstance(room, str) or not room:
                return Reply(400, error_body("roomId is required")), None
            if room in self.missing_rooms:
                return Reply(404, error_body("Room not found")), None
            session = body.get("sessionId")
            with self._lock:
                live = [s for s, r in self.session_rooms.items() if r == room and s in self.active]
                target = session or (live[0] if live else None)
                if target is None or target in self.ended_sessions:
                    # Inferred, not documented: a session already ended answers 406. (A session the
                    # fake was not told of is taken as live: tests name sessions freely.)
                    return Reply(406, error_body("Failed to end session")), None
                self.ended_sessions.add(target)
                self.active.pop(target, None)
            return Reply(200, end_session_answer(target, room, time.time())), None
        if method == "GET" and path == "/v2/sessions":
            room = params.get("roomId")
            if not room:
                return Reply(400, error_body("roomId is required")), None
            with self._lock:
                live = [(s, list(self.active[s])) for s, r in self.session_rooms.items()
                        if r == room and s in self.active]
            return Reply(200, live_sessions_answer(room, live)), None
        parts = path.split("/")
        if method == "GET" and len(parts) == 4 and parts[1:3] == ["v2", "rooms"]:
            room = parts[3]
            if room in self.missing_rooms:  # documented: 402 or 404 for a room not found
                return Reply(404, error_body("Room not found")), None
            with self._lock:
                disabled = room in self.disabled_rooms
            # Documented: "the room object, with disabled" (shared/videosdk/README.md); its one
            # example is deactivate's answer, the same room object (videosdk_examples/SOURCES.md).
            return Reply(200, deactivate_answer(room, disabled)), None
        if method == "GET" and len(parts) == 6 and parts[1:3] == ["v2", "sessions"] and \
                parts[4:] == ["participants", "active"]:
            session = parts[3]
            with self._lock:
                known = session in self.active
                listed = list(self.active.get(session, []))
                room = self.session_rooms.get(session, "abcd-efgh-ijkl")
            if not known:  # documented: 404 "Session not found"
                return Reply(404, error_body("Session not found")), None
            if not listed and self.nobody_answer == "404":  # documented: 404 "No active participants found"
                return Reply(404, error_body("No active participants found")), None
            return Reply(200, active_participants_answer(session, room, listed, self.participants_shape)), None
        return Reply(404, error_body(f"no route {method} {path}")), None
