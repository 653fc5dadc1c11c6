"""A fake VideoSDK REST API, served over real HTTP on loopback.

It checks the JWT the way the real API does (no `Bearer` prefix, HS256 with the
project secret, `apikey`, `version: 2`, role `crawler`; 401 or 403 otherwise),
serves a public key for webhook signatures, and answers scripted faults:
any status with headers, slow answers, dropped connections and bytes that are
not HTTP. Every request it sees is kept in `calls`.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt


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
        # session id -> participants reported active (GET /v2/sessions/{id}/participants/active)
        self.active: dict[str, list[dict]] = {}
        self.serve_public_key = True
        self._scripts: dict[str, deque[Reply]] = defaultdict(deque)
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    # -- scripting ---------------------------------------------------------------

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
        path = handler.path.split("?")[0]
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode("latin-1")
        headers = {k.lower(): v for k, v in handler.headers.items()}

        reply = self._next_reply(path)
        auth_error = None
        if reply is None:
            reply, auth_error = self._default(method, path, headers, body)
        if reply.delay:
            time.sleep(reply.delay)
        with self._lock:
            self.calls.append(Call(method, path, headers, body, reply.status if not (
                reply.garbage or reply.drop) else 0, time.time(), auth_error))
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

    def _default(self, method: str, path: str, headers: dict, body) -> tuple[Reply, str | None]:
        if method == "GET" and path == "/v2/public/rsa-public-key":
            if not self.serve_public_key:
                return Reply(503, {"message": "unavailable"}), None
            return Reply(200, {"publicKey": self.public_pem}), None
        problem = self.check_auth(headers.get("authorization"))
        if problem:
            return Reply(problem[0], {"message": problem[1]}), problem[1]
        if method == "POST" and path == "/v2/rooms/deactivate":
            room = body.get("roomId") if isinstance(body, dict) else None
            if not isinstance(room, str) or not room:
                return Reply(400, {"message": "roomId is required"}), None
            if room in self.missing_rooms:
                return Reply(404, {"message": "Room not found"}), None
            with self._lock:
                self.disabled_rooms.add(room)
            return Reply(200, {"roomId": room, "meetingId": room, "disabled": True}), None
        if method == "POST" and path == "/v2/sessions/end":
            room = body.get("roomId") if isinstance(body, dict) else None
            if not isinstance(room, str) or not room:
                return Reply(400, {"message": "roomId is required"}), None
            if room in self.missing_rooms:
                return Reply(404, {"message": "Room not found"}), None
            session = body.get("sessionId")
            with self._lock:
                if session:
                    self.ended_sessions.add(session)
                    self.active.pop(session, None)
            return Reply(200, {"roomId": room, "sessionId": session, "status": "ended"}), None
        parts = path.split("/")
        if method == "GET" and len(parts) == 6 and parts[1:3] == ["v2", "sessions"] and \
                parts[4:] == ["participants", "active"]:
            with self._lock:
                listed = list(self.active.get(parts[3], []))
            return Reply(200, {"data": listed, "pageInfo": {"total": len(listed)}}), None
        return Reply(404, {"message": f"no route {method} {path}"}), None
