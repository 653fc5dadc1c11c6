"""End to end: the Procfile's own commands as real processes, signed events over real HTTP,
and deactivate calls arriving at the fake VideoSDK API."""

from __future__ import annotations

import shlex
import time
from pathlib import Path

import pytest
import requests
import yaml

from service.store import Store

from .conftest import SESSION_TIMES, ended, event_body
from .fakeapi import Reply
from .procs import ROOT, procfile, wait_until_up

pytestmark = pytest.mark.e2e


def test_signed_events_become_deactivate_calls(processes, fake_api, sign, tmp_path):
    web = processes.start("web")
    base = f"http://127.0.0.1:{processes.env['PORT']}"
    wait_until_up(base, web)
    processes.start("worker")

    rooms = ["aaaa-bbbb-0001", "aaaa-bbbb-0002", "aaaa-bbbb-0003"]
    statuses = []
    with requests.Session() as http:
        def send(body: bytes, signature: str | None = None) -> int:
            return http.post(base + "/webhooks/videosdk", data=body, timeout=10, headers={
                "Content-Type": "application/json",
                "videosdk-signature": signature if signature is not None else sign(body)}).status_code

        for room in rooms:
            statuses.append(send(ended(room, "s-1", **SESSION_TIMES)))
            statuses.append(send(ended(room, "s-1", **SESSION_TIMES)))  # a repeated delivery
        statuses.append(send(event_body("participant-joined", meetingId="zzzz-zzzz-zzzz", sessionId="s",
                                        participantId="p1", participantName="Ann")))
        statuses.append(send(ended("forg-forg-forg", "s-1", **SESSION_TIMES),
                             signature=sign(ended("other-room", "s-1", **SESSION_TIMES))))
        statuses.append(send(b"{not json"))

    assert statuses == [202] * 6 + [202, 401, 400]
    assert fake_api.wait_for(lambda: sorted(fake_api.deactivations()) == rooms), fake_api.calls
    store = Store.from_url(processes.env["DATABASE_URL"])
    assert fake_api.wait_for(lambda: store.actions.counts() == {"done": 3}), store.actions.actions()
    assert len(store.history.deliveries()) == 7  # every 2xx, duplicates included; no 4xx
    assert all(a["attempts"] == 1 for a in store.actions.actions())
    # Each call carried a token the fake accepted, so nothing was retried for auth.
    assert all(c.auth_error is None for c in fake_api.calls_to("/v2/rooms/deactivate"))
    store.close()


def test_a_killed_worker_loses_nothing(processes, fake_api, sign):
    web = processes.start("web")
    base = f"http://127.0.0.1:{processes.env['PORT']}"
    wait_until_up(base, web)
    # The first call hangs longer than the client's timeout: the worker is mid-call when killed.
    fake_api.script("/v2/rooms/deactivate", Reply(200, delay=5))
    body = ended("kill-kill-0001", "s-1", **SESSION_TIMES)
    assert requests.post(base + "/webhooks/videosdk", data=body, timeout=10,
                         headers={"videosdk-signature": sign(body)}).status_code == 202

    first = processes.start("worker")
    # Killed as soon as its call arrives, well inside the client's timeout (a kill timed by polling
    # the store could come after the timeout, and the worker would have retried by then).
    assert fake_api.wait_for(lambda: "/v2/rooms/deactivate" in fake_api.arrivals, interval=0.01), \
        "the worker never called"
    assert _claimed(processes.env["DATABASE_URL"])
    processes.kill(first)  # kill -9, lease still held
    processes.start("worker")

    assert fake_api.wait_for(lambda: fake_api.deactivations() == ["kill-kill-0001"], timeout=30)
    store = Store.from_url(processes.env["DATABASE_URL"])
    assert fake_api.wait_for(lambda: store.actions.counts() == {"done": 1})
    [action] = store.actions.actions()
    assert action["attempts"] == 2  # the killed claim, then the one that succeeded
    store.close()


def shipped_rules(grace: str) -> str:
    """The shipped rules.yaml as it is, but for the grace period of its flagship rule (5m), which a
    test cannot wait out. Changed through the parsed YAML, not the text."""
    rules = yaml.safe_load((ROOT / "rules.yaml").read_text())
    for rule in rules["rules"]:  # PyYAML reads YAML 1.1, where the key `on` is the boolean true
        rule["on"] = rule.pop(True)
    [flagship] = [rule for rule in rules["rules"] if rule["name"] == "close-when-empty"]
    assert (flagship["for"], flagship["confirm"], flagship["action"]) == ("5m", "active-participants",
                                                                         "deactivate")
    flagship["for"] = grace
    return yaml.safe_dump(rules, sort_keys=False)


@pytest.mark.parametrize("shape,nobody", [("current", "404"), ("current", "empty"), ("older", "empty")])
def test_the_shipped_flagship_rule_against_each_documented_answer(processes, fake_api, sign, rules_file,
                                                                  shape, nobody):
    """Two rooms empty out as their webhooks tell it. VideoSDK (answering in one documented shape)
    agrees for the first, which is deactivated after the grace period; for the second it lists
    someone whose join webhook never arrived, so it is left open."""
    rules_file.write_text(shipped_rules("2s"))
    fake_api.participants_shape, fake_api.nobody_answer = shape, nobody
    emptied, busy = "empt-ied0-room", "busy-busy-room"
    fake_api.set_active("sess-e", [], emptied)
    fake_api.set_active("sess-b", ["p-lost"], busy)  # in the room, as far as VideoSDK knows
    web = processes.start("web")
    base = f"http://127.0.0.1:{processes.env['PORT']}"
    wait_until_up(base, web)
    processes.start("worker")

    with requests.Session() as http:
        for room, session in ((emptied, "sess-e"), (busy, "sess-b")):
            for kind in ("participant-joined", "participant-left"):
                body = event_body(kind, meetingId=room, sessionId=session, participantId="p-1",
                                  participantName="Ann")
                answer = http.post(base + "/webhooks/videosdk", data=body, timeout=10,
                                   headers={"videosdk-signature": sign(body)})
                assert answer.status_code == 202, answer.text

    store = Store.from_url(processes.env["DATABASE_URL"])
    try:
        assert fake_api.wait_for(lambda: fake_api.deactivations() == [emptied], timeout=30), fake_api.calls
        assert fake_api.wait_for(lambda: {a["room_id"]: a["status"] for a in store.actions.actions()} ==
                                 {emptied: "done", busy: "cancelled"}, timeout=30), store.actions.actions()
        [cancelled] = store.actions.actions(room_id=busy)
        assert "confirm: 1 participant(s) active in session sess-b" in cancelled["last_error"]
        [done] = store.actions.actions(room_id=emptied)
        [attempt] = store.actions.attempts(done["id"])
        assert attempt["answer"] == {"disabled": True, "roomId": emptied} and attempt["doubt"] is None
    finally:
        store.close()
    assert fake_api.deactivations(status=None) == [emptied]  # the busy room was never called for


def _claimed(url: str) -> bool:
    store = Store.from_url(url)
    try:
        return any(a["lease_owner"] for a in store.actions.actions())
    finally:
        store.close()


@pytest.mark.parametrize("name", ["web", "worker"])
def test_missing_credentials_refuse_to_start_with_a_clear_message(processes, name):
    env = {"VIDEOSDK_API_KEY": "", "VIDEOSDK_SECRET_KEY": ""}
    process = processes.start(name, **env)
    assert process.wait(timeout=60) != 0
    output = Path(process.log_path).read_text()
    assert "VIDEOSDK_API_KEY and VIDEOSDK_SECRET_KEY must be set" in output
    assert "DRY_RUN" in output
    assert "Traceback" not in output


def test_bad_rules_refuse_to_start_with_line_numbers(processes, rules_file):
    rules_file.write_text("version: 1\nrules:\n  - name: x\n    on: session-ended\n    action: explode\n")
    process = processes.start("web")
    assert process.wait(timeout=60) != 0
    output = Path(process.log_path).read_text()
    assert f"{rules_file}:5:13: unknown action 'explode'" in output
    assert "Traceback" not in output


def test_procfile_honours_port_and_web_concurrency(processes):
    token = "admin-" + "e2e" * 8  # /readyz shows which process answered only to the admin
    web = processes.start("web", WEB_CONCURRENCY="3", ADMIN_TOKEN=token)
    base = f"http://127.0.0.1:{processes.env['PORT']}"  # PORT: where it must answer
    wait_until_up(base, web)
    headers = {"Connection": "close", "Authorization": f"Bearer {token}"}
    pids, deadline = set(), time.monotonic() + 60
    while len(pids) < 3 and time.monotonic() < deadline:  # new connections until each worker answered
        pids.add(requests.get(base + "/readyz", headers=headers, timeout=10).json()["pid"])
    assert len(pids) == 3
    for _ in range(30):  # and no fourth
        pids.add(requests.get(base + "/readyz", headers=headers, timeout=10).json()["pid"])
    assert len(pids) == 3


def test_procfile_commands_are_the_documented_ones():
    commands = procfile()
    assert shlex.split(commands["worker"]) == ["python", "-m", "service", "worker"]
    assert "service:create_app()" in commands["web"] and commands["web"].startswith("gunicorn ")


@pytest.mark.attack("stall connections mid-headers and mid-body")
def test_a_client_stalled_mid_body_is_answered_408_and_closed_after_the_body_timeout(processes, sign):
    """Issue 15, item 2: a half-sent body held its connection until the client left (gunicorn's
    gevent worker has no timeout for it). With WEB_BODY_TIMEOUT_SECONDS=1, a delivery stalled
    mid-body (Content-Length: the fast lane) and one stalled mid-chunk (the Flask route) are
    each answered 408 and closed by the server; each is counted in roomwarden_slow_bodies_total;
    a delivery sent whole is accepted as ever."""
    import socket

    token = "a-test-admin-token-0123456789"
    web = processes.start("web", WEB_BODY_TIMEOUT_SECONDS="1", ADMIN_TOKEN=token)
    port = int(processes.env["PORT"])
    base = f"http://127.0.0.1:{port}"
    wait_until_up(base, web)
    heads = [
        b"POST /webhooks/videosdk HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n{\"we",
        b"POST /webhooks/videosdk HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n10\r\n{\"webhookT",
    ]
    answers = []
    for head in heads:
        with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
            sock.sendall(head)
            started = time.monotonic()
            received = b""
            while chunk := sock.recv(65536):  # until the server closes the connection
                received += chunk
            answers.append((received.split(b"\r\n", 1)[0], time.monotonic() - started, received))
    for status_line, waited, received in answers:
        assert status_line.split(b" ")[1] == b"408", received[:300]
        assert b"did not arrive within 1 s" in received
        assert 0.5 <= waited < 4, waited  # closed by the server after the body timeout (before keep-alive's 5 s)
    body = ended("slow-body-room", "s-1", **SESSION_TIMES)
    assert requests.post(base + "/webhooks/videosdk", data=body, timeout=20,
                         headers={"videosdk-signature": sign(body)}).status_code == 202
    metrics = requests.get(base + "/metrics", headers={"Authorization": f"Bearer {token}"}, timeout=10).text
    assert "roomwarden_slow_bodies_total 2.0" in metrics


@pytest.mark.attack("stall connections mid-headers and mid-body")
def test_stalled_clients_do_not_stop_health_checks_or_deliveries(processes, fake_api, sign):
    """Clients that send half a request and stall hold no thread (gevent: a greenlet each): with
    50 of them on 2 gunicorn workers, /healthz and a signed delivery are still answered. (Under the
    former thread-per-request model, 8 stalled clients stopped both. How fast: bench/.)"""
    import socket

    web = processes.start("web")
    port = int(processes.env["PORT"])
    base = f"http://127.0.0.1:{port}"
    wait_until_up(base, web)
    stalled = []
    try:
        for i in range(50):
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            if i % 2:  # mid-headers
                sock.sendall(b"POST /webhooks/videosdk HTTP/1.1\r\nHost: x\r\n")
            else:  # mid-body: the headers promise more than is sent
                sock.sendall(b"POST /webhooks/videosdk HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n{\"we")
            stalled.append(sock)
        body = ended("stal-led0-room", "s-1", **SESSION_TIMES)
        with requests.Session() as http:
            assert http.get(base + "/healthz", timeout=20).status_code == 200
            answer = http.post(base + "/webhooks/videosdk", data=body, timeout=20,
                               headers={"videosdk-signature": sign(body)})
            assert answer.status_code == 202, answer.text
    finally:
        for sock in stalled:
            sock.close()


SWEEP_E2E_RULES = """\
version: 1
settings:
  sweep_every: 1s
  protect: ["keep-*"]
rules:
  - name: close-forgotten
    on: sweep
    when:
      room.quiet_for: {gte: 2s}
    confirm: no-live-session
    action: deactivate
"""


def test_a_room_whose_leave_was_dropped_is_closed_by_a_sweep_the_api_confirms(processes, fake_api, sign,
                                                                              rules_file):
    """Issue 16, done when: three rooms hear a join and then nothing (their leave webhooks were
    lost). A sweep every second finds each quiet for 2 s; VideoSDK lists no live session for the
    first, which is deactivated; it lists one for the second, which is left open; the third is
    protected and never asked about."""
    rules_file.write_text(SWEEP_E2E_RULES)
    dropped, live, protected = "drop-ped0-room", "live-live-room", "keep-prot-room"
    fake_api.set_active("sess-l", ["p-1"], live)  # VideoSDK: someone is still in this one
    web = processes.start("web")
    base = f"http://127.0.0.1:{processes.env['PORT']}"
    wait_until_up(base, web)
    processes.start("worker")

    with requests.Session() as http:
        for room in (dropped, live, protected):
            body = event_body("participant-joined", meetingId=room, sessionId="sess-l" if room == live else "s-1",
                              participantId="p-1", participantName="Ann")
            answer = http.post(base + "/webhooks/videosdk", data=body, timeout=10,
                               headers={"videosdk-signature": sign(body)})
            assert answer.status_code == 202, answer.text

    store = Store.from_url(processes.env["DATABASE_URL"])
    try:
        assert fake_api.wait_for(lambda: fake_api.deactivations() == [dropped], timeout=60), fake_api.calls
        assert fake_api.wait_for(lambda: {a["room_id"]: a["status"] for a in store.actions.actions()} ==
                                 {dropped: "done", live: "cancelled"}, timeout=30), store.actions.actions()
        [cancelled] = store.actions.actions(room_id=live)
        assert "VideoSDK lists live session sess-l" in cancelled["last_error"]
        assert store.history.room(dropped)["closed_at"] is not None  # and is never swept again
        swept = [d for d in store.history.decisions(room_id=protected)]
        assert swept and all(d["outcome"] != "scheduled" for d in swept), swept
    finally:
        store.close()
    asked = [c.params.get("roomId") for c in fake_api.calls_to("/v2/sessions")]
    assert protected not in asked and dropped in asked and live in asked
    assert fake_api.deactivations(status=None) == [dropped]
