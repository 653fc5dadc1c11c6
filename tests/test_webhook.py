"""The HTTP contract of POST /webhooks/videosdk and the health checks, through Flask's test client."""

from __future__ import annotations

import base64
import hashlib
import json
import sqlite3
import time
from textwrap import dedent

import pytest

from service.store import Store

from .conftest import PAYLOADS, decide, decided, event_body

ENDED = event_body("session-ended", meetingId="abcd-efgh-ijkl", sessionId="s-1",
                   start="2022-07-05T15:55:35Z", end="2022-07-05T16:05:35Z")
OTHER = event_body("session-ended", meetingId="wxyz-wxyz-wxyz", sessionId="s-2")


def flip_one_byte(body: bytes) -> bytes:
    i = body.index(b"abcd")
    return body[:i] + b"x" + body[i + 1:]


def stored(app) -> dict[str, int]:
    store = app.extensions["roomwarden"].store
    return {"inbox": store.inbox.inbox_stats()[0], "deliveries": len(store.history.deliveries()), "actions": len(store.actions.actions())}


# (body, signature or a marker, expected status, a fragment of the error, or for a 202 what the
# decider makes of it: "acted", "unknown" (recorded, never acted on) or "kept" (a problem))
# signature: None means "sign the body correctly"; "omit" sends no header.
CASES = [
    # a known event, correctly signed: accepted and acted on
    pytest.param(ENDED, None, 202, "acted", id="accepted"),
    # an event type the service does not know: accepted, recorded, never acted on
    pytest.param(event_body("agent-session-started", meetingId="abcd-efgh-ijkl", id=3), None, 202,
                 "unknown", id="unknown-event-type"),
    # signatures: missing, not base64, empty after stripping, another body's, body changed after signing
    pytest.param(ENDED, "omit", 401, "missing videosdk-signature", id="no-signature"),
    pytest.param(ENDED, "not base64!!", 401, "not base64", id="garbled-signature"),
    pytest.param(ENDED, "   ", 401, "missing videosdk-signature", id="blank-signature"),
    pytest.param(ENDED, "other-body", 401, "does not match", id="another-body's-signature"),
    pytest.param(ENDED, "flipped", 401, "does not match", id="one-byte-changed"),
    pytest.param(ENDED, base64.b64encode(b"\0" * 256).decode(), 401, "does not match", id="zero-signature"),
    # bodies that are signed but not a webhook
    pytest.param(b"not json", None, 400, "not valid JSON", id="not-json"),
    pytest.param(b"\xff\xfe{}", None, 400, "not UTF-8", id="not-utf8"),
    pytest.param(b"", None, 400, "empty", id="empty-body"),
    pytest.param(b"[1, 2]", None, 400, "not a VideoSDK webhook", id="json-array"),
    pytest.param(b'{"data": {}}', None, 400, "not a VideoSDK webhook", id="no-webhookType"),
    pytest.param(b'{"webhookType": 5, "data": {}}', None, 400, "not a VideoSDK webhook", id="webhookType-number"),
    pytest.param(b'{"webhookType": "session-ended", "data": []}', None, 400, "not a VideoSDK webhook",
                 id="data-not-object"),
    # a known event type, signed, but missing a field or with one unreadable: kept (202), never decided on
    pytest.param(event_body("session-ended", sessionId="s-1"), None, 202, "kept",
                 id="session-ended-without-meetingId"),
    pytest.param(event_body("participant-left", meetingId="abcd-efgh-ijkl", sessionId="s"), None, 202,
                 "kept", id="participant-left-without-participantId"),
    pytest.param(event_body("session-ended", meetingId="a/b", sessionId="s"), None, 202,
                 "kept", id="room-id-with-slash"),
    pytest.param(b'{"webhookType": "session-ended", "data": {"meetingId": NaN}}', None, 400,
                 "not valid JSON", id="NaN"),
    pytest.param(b"[" * 30_000 + b"]" * 30_000, None, 400, None, id="deep-nesting"),
    # over 64 KiB, even when correctly signed
    pytest.param(event_body("session-ended", meetingId="abcd-efgh-ijkl", sessionId="s", pad="x" * 70_000),
                 None, 413, "64 KiB", id="too-large"),
]


@pytest.mark.parametrize("body, signature, status, message", CASES)
def test_webhook_answers(app, client, sign, body, signature, status, message):
    headers = {"Content-Type": "application/json"}
    if signature is None:
        headers["videosdk-signature"] = sign(body)
    elif signature == "other-body":
        headers["videosdk-signature"] = sign(OTHER)
    elif signature == "flipped":
        headers["videosdk-signature"] = sign(body)
        body = flip_one_byte(body)
    elif signature != "omit":
        headers["videosdk-signature"] = signature

    response = client.post("/webhooks/videosdk", data=body, headers=headers)

    assert response.status_code == status, response.get_data(as_text=True)
    payload = response.get_json()
    assert isinstance(payload, dict)
    if status >= 400:
        assert "error" in payload and "Traceback" not in response.get_data(as_text=True)
        if message:
            assert message in payload["error"]
        assert stored(app) == {"inbox": 0, "deliveries": 0, "actions": 0}, "a refused delivery left rows behind"
    else:
        assert stored(app) == {"inbox": 1, "deliveries": 0, "actions": 0}  # accepted, not yet decided
        assert len(payload["delivery"]) == 27 and payload["verified"] == "yes"
        decide(app)  # as the worker does
        store = app.extensions["roomwarden"].store
        delivery = store.history.delivery(payload["delivery"])
        assert stored(app) == {"inbox": 0, "deliveries": 1, "actions": 1 if message == "acted" else 0}
        assert delivery["body"].encode() == body
        assert (delivery["known"], delivery["problem"] is not None) == {
            "acted": (True, False), "unknown": (False, False), "kept": (True, True)}[message]


def test_field_level_messages(post):
    response = post(b'{"webhookType": 5, "data": null}')  # the envelope is wrong: refused
    assert response.status_code == 400
    assert response.get_json()["fields"] == {"webhookType": ["Not a valid string."],
                                             "data": ["Field may not be null."]}


def test_field_level_messages_of_a_kept_body_are_its_problem(app, post):
    response = post(event_body("session-ended", meetingId=12, sessionId=None))
    assert response.status_code == 202
    problem = "data.meetingId: Not a valid string.; data.sessionId: Field may not be null."
    assert decided(app, response) == []
    assert app.extensions["roomwarden"].store.history.delivery(response.get_json()["delivery"])["problem"] == problem


def test_accepted_delivery_is_recorded_with_its_decision_and_action(app, post):
    response = post(ENDED)
    assert response.status_code == 202
    body = response.get_json()
    assert "decisions" not in body  # decided behind the request
    assert decided(app, response) == [{"rule": "close-after-session", "action": "deactivate",
                                       "outcome": "scheduled", "action_id": 1}]
    store = app.extensions["roomwarden"].store
    delivery = store.history.delivery(body["delivery"])
    assert delivery["body"].encode() == ENDED  # byte for byte, as signed
    assert delivery["body_sha256"] == hashlib.sha256(ENDED).hexdigest()
    assert delivery["verified"] is True and delivery["known"] is True
    assert delivery["rules_hash"] == app.extensions["roomwarden"].rules.current.sha256
    [decision] = store.history.decisions(delivery_id=body["delivery"])
    assert decision["action_key"] == "close-after-session|abcd-efgh-ijkl|s-1"
    [action] = store.actions.actions()
    assert (action["status"], action["room_id"], action["kind"]) == ("pending", "abcd-efgh-ijkl", "deactivate")


def test_repeated_delivery_never_schedules_a_second_action(app, post):
    outcomes = [decided(app, post(ENDED))[0]["outcome"] for _ in range(3)]
    assert outcomes == ["scheduled", "duplicate", "duplicate"]
    store = app.extensions["roomwarden"].store
    assert len(store.history.deliveries()) == 3  # each arrival is recorded...
    assert len(store.actions.actions()) == 1  # ...but acted on once


def test_unknown_event_is_recorded_and_never_acted_on(app, post):
    body = event_body("recording-quantum-leap", meetingId="rec-room-0001", sessionId="s")
    # "recording-*" covers it, and the rule would match: but the type is one the
    # service knows by its glob, so it is acted on. A truly unknown type is not:
    unknown = event_body("call-answered", meetingId="rec-room-0001", sessionId="s")
    assert post(body).status_code == 202
    response = post(unknown)
    assert response.status_code == 202
    store = app.extensions["roomwarden"].store
    assert store.history.delivery(response.get_json()["delivery"])["known"] is False and decided(app, response) == []
    assert [a["room_id"] for a in app.extensions["roomwarden"].store.actions.actions()] == ["rec-room-0001"]


@pytest.mark.parametrize("payload", sorted(p.name for p in PAYLOADS.glob("*.json")
                                           if p.name != "deactivate-response.json"))
def test_every_documented_payload_is_accepted(post, payload):
    response = post((PAYLOADS / payload).read_bytes())
    assert response.status_code == 202, response.get_json()


def test_type_is_accepted_for_webhookType(post):
    body = json.dumps({"type": "session-ended", "data": {"meetingId": "abcd-efgh-ijkl",
                                                          "sessionId": "s"}}).encode()
    assert post(body).status_code == 202


def test_method_not_allowed_is_json(client):
    response = client.get("/webhooks/videosdk")
    assert response.status_code == 405 and "error" in response.get_json()


def test_unexpected_error_is_a_json_500_without_a_trace(app, post, monkeypatch):
    def explode(*args, **kwargs):
        raise RuntimeError("secret internals")

    monkeypatch.setattr(app.extensions["roomwarden"].intake, "accept", explode)
    response = post(ENDED)
    assert response.status_code == 500
    text = response.get_data(as_text=True)
    assert "secret internals" not in text and "Traceback" not in text
    assert "retry" in response.get_json()["error"]


def test_locked_store_answers_503_and_recovers_without_restart(monkeypatch, make_app, env, sign, post):
    monkeypatch.setattr("service.store.database.SQLITE_BUSY_TIMEOUT_MS", 100)
    app = make_app()
    client = app.test_client()
    path = env["DATABASE_URL"].removeprefix("sqlite:///")
    locker = sqlite3.connect(path, isolation_level=None)
    locker.execute("BEGIN IMMEDIATE")
    try:
        response = client.post("/webhooks/videosdk", data=ENDED, headers={"videosdk-signature": sign(ENDED)})
        assert response.status_code == 503
        assert response.headers["Retry-After"].isdigit()
        assert "store unavailable" in response.get_json()["error"]
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    response = client.post("/webhooks/videosdk", data=ENDED, headers={"videosdk-signature": sign(ENDED)})
    assert response.status_code == 202
    decide(app)
    assert stored(app) == {"inbox": 0, "deliveries": 1, "actions": 1}


def test_public_key_is_fetched_from_the_api_and_cached(make_app, fake_api, sign):
    client = make_app().test_client()  # no VIDEOSDK_WEBHOOK_PUBLIC_KEY: fetch it
    for _ in range(3):
        assert client.post("/webhooks/videosdk", data=ENDED,
                           headers={"videosdk-signature": sign(ENDED)}).status_code == 202
    assert len(fake_api.calls_to("/v2/public/rsa-public-key")) == 1


def test_no_key_yet_keeps_the_delivery_and_verifies_it_once_a_key_can_be_had(make_app, fake_api, sign):
    """VideoSDK documents no retries: a 503 would lose the event. Kept unverified (202), it is
    neither decided nor acted on until a key can be had; then it is verified and decided."""
    fake_api.serve_public_key = False
    app = make_app()
    client = app.test_client()
    response = client.post("/webhooks/videosdk", data=ENDED, headers={"videosdk-signature": sign(ENDED)})
    assert response.status_code == 202 and response.get_json()["verified"] == "later"
    assert fake_api.base_url not in response.get_data(as_text=True)  # the address is for the log only
    later = event_body("session-ended", meetingId="abcd-efgh-ijkl", sessionId="s-2")
    assert client.post("/webhooks/videosdk", data=later,
                       headers={"videosdk-signature": sign(later)}).status_code == 202
    assert decide(app) == []  # still no key: both wait, in order
    assert stored(app) == {"inbox": 2, "deliveries": 0, "actions": 0}

    fake_api.serve_public_key = True
    runtime = app.extensions["roomwarden"]
    runtime.verifier._failed_at = None  # as if the fetch back-off (5 s) had passed
    assert [d.delivery_id for d in decide(app)][0] == response.get_json()["delivery"]
    assert stored(app) == {"inbox": 0, "deliveries": 2, "actions": 2}
    assert runtime.store.history.delivery(response.get_json()["delivery"])["verified"] is True


def test_kept_unverified_then_failing_verification_is_refused_and_never_acted_on(make_app, fake_api, sign):
    fake_api.serve_public_key = False
    app = make_app()
    response = app.test_client().post("/webhooks/videosdk", data=ENDED,
                                      headers={"videosdk-signature": sign(OTHER)})  # another body's
    assert response.status_code == 202 and response.get_json()["verified"] == "later"
    fake_api.serve_public_key = True
    app.extensions["roomwarden"].verifier._failed_at = None  # as if the fetch back-off had passed
    [refused] = decide(app)
    assert refused.outcome == "refused"
    store = app.extensions["roomwarden"].store
    delivery = store.history.delivery(response.get_json()["delivery"])
    assert delivery["verified"] is False and delivery["problem"].startswith("refused: ")
    assert delivery["body"].encode() == ENDED  # kept as received
    assert store.history.decisions() == [] and store.actions.actions() == []


def test_pinned_keys_any_of_several(make_app, fake_api, public_pem, sign):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    other = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    app = make_app(VIDEOSDK_WEBHOOK_PUBLIC_KEY=other + public_pem)
    response = app.test_client().post("/webhooks/videosdk", data=ENDED,
                                      headers={"videosdk-signature": sign(ENDED)})
    assert response.status_code == 202
    assert fake_api.calls_to("/v2/public/rsa-public-key") == []  # pinned: never fetched


def test_verification_off_accepts_but_never_acts(make_app, fake_api):
    app = make_app(WEBHOOK_VERIFY="false")
    response = app.test_client().post("/webhooks/videosdk", data=ENDED)
    assert response.status_code == 202 and response.get_json()["verified"] == "off"
    assert decided(app, response)[0]["outcome"] == "dry-run"
    store = app.extensions["roomwarden"].store
    assert store.history.delivery(response.get_json()["delivery"])["verified"] is False
    assert store.actions.actions(status="pending") == []


def test_dry_run_records_decisions_and_schedules_nothing(make_app, sign):
    app = make_app(DRY_RUN="true", VIDEOSDK_API_KEY="", VIDEOSDK_SECRET_KEY="")
    response = app.test_client().post("/webhooks/videosdk", data=ENDED,
                                      headers={"videosdk-signature": sign(ENDED)})
    assert response.status_code == 202
    assert decided(app, response)[0]["outcome"] == "dry-run"
    assert [a["status"] for a in app.extensions["roomwarden"].store.actions.actions()] == ["dry-run"]


ADMIN_TOKEN = "admin-token-for-webhook-tests-0123"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def test_healthz(client):
    response = client.get("/healthz")
    assert response.status_code == 200 and response.get_json() == {"status": "ok"}


def test_readyz_reports_rules_in_force(make_app, rules_file):
    client = make_app(ADMIN_TOKEN=ADMIN_TOKEN).test_client()
    response = client.get("/readyz", headers=ADMIN)
    assert response.status_code == 200
    body = response.get_json()
    assert body["status"] == "ok" and body["store"] == "ok"
    assert body["rules"]["hash"] == hashlib.sha256(rules_file.read_bytes()).hexdigest()
    assert body["rules"]["count"] == 2
    assert body["webhook_verify"] is True and body["dry_run"] is False
    assert body["inbox"] == {"depth": 0, "oldest_age_seconds": None}


@pytest.mark.parametrize("token", [None, ADMIN_TOKEN])
@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer not-the-admin-token-0123456789"},
                                     {"Authorization": ADMIN_TOKEN}])
@pytest.mark.attack("read the rules file's errors and path from /readyz")
def test_readyz_without_the_admin_token_says_only_ready_and_which_rules(make_app, rules_file, token, headers):
    """Issue 15, 'also': anyone could read a failed reload's message (fragments of the rules
    file) and its absolute path on /readyz. Without the token: ready or not, hash and count."""
    app = make_app(**({"ADMIN_TOKEN": token} if token else {}))
    rules_file.write_text("rules:\n  - name: secret-rule-name\n    on: nonsense\n")
    assert app.extensions["roomwarden"].watcher.check(force=True) is False  # fails; the last good rules stay
    response = app.test_client().get("/readyz", headers=headers)
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok", "rules": {
        "hash": app.extensions["roomwarden"].rules.current.sha256, "count": 2}}
    if token:  # the details are still there for the admin
        detailed = app.test_client().get("/readyz", headers=ADMIN).get_json()
        assert "a rule needs 'action:'" in detailed["rules"]["last_error"]
        assert str(rules_file) in detailed["rules"]["last_error"]  # what anyone could read before
        assert str(rules_file) in detailed["rules"]["source"]


def test_readyz_shows_the_inbox_waiting_as_information_not_failure(make_app, sign):
    app = make_app(ADMIN_TOKEN=ADMIN_TOKEN)
    client = app.test_client()
    assert client.post("/webhooks/videosdk", data=ENDED, headers={"videosdk-signature": sign(ENDED)}).status_code == 202
    response = client.get("/readyz", headers=ADMIN)
    assert response.status_code == 200 and response.get_json()["status"] == "ok"
    inbox = response.get_json()["inbox"]
    assert inbox["depth"] == 1 and inbox["oldest_age_seconds"] >= 0
    decide(app)
    assert client.get("/readyz", headers=ADMIN).get_json()["inbox"] == {"depth": 0, "oldest_age_seconds": None}


def test_readyz_is_503_when_the_store_is_unreachable(make_app):
    app = make_app(ADMIN_TOKEN=ADMIN_TOKEN)
    runtime = app.extensions["roomwarden"]
    runtime.store = Store.from_url("postgresql://postgres@127.0.0.1:1/none")
    response = app.test_client().get("/readyz", headers=ADMIN)
    assert response.status_code == 503
    assert response.get_json()["status"] == "unavailable"
    assert "store unavailable" in response.get_json()["store"]
    anonymous = app.test_client().get("/readyz")
    assert anonymous.status_code == 503 and anonymous.get_json()["status"] == "unavailable"


@pytest.mark.parametrize("how", ["deleted", "replaced", "directory-recreated"])
@pytest.mark.attack("delete or replace the SQLite file under a running service")
def test_a_database_file_deleted_under_the_running_service_is_refused_not_written_into(make_app, sign, how,
                                                                                        caplog):
    """Issue 15, item 1: deleted while the service ran, the file lived on under the pooled
    connections, deliveries kept getting 202 and /readyz said ok, and the next start had
    nothing. Now each delivery gets 503, /readyz is 503, and the log says why, once."""
    import shutil
    from pathlib import Path

    from sqlalchemy.engine import make_url

    app = make_app(ADMIN_TOKEN=ADMIN_TOKEN)
    client = app.test_client()
    path = Path(make_url(app.extensions["roomwarden"].settings.database_url).database)
    assert client.post("/webhooks/videosdk", data=ENDED, headers={"videosdk-signature": sign(ENDED)}).status_code == 202
    if how == "directory-recreated":
        saved = path.parent.with_name(path.parent.name + "-moved")
        shutil.move(path.parent, saved)
        path.parent.mkdir()
    else:
        for name in (path.name, path.name + "-wal", path.name + "-shm"):
            path.with_name(name).unlink(missing_ok=True)
        if how == "replaced":
            path.write_bytes(b"")

    with caplog.at_level("ERROR", logger="roomwarden.store"):
        for _ in range(3):
            refused = client.post("/webhooks/videosdk", data=ENDED, headers={"videosdk-signature": sign(ENDED)})
            assert refused.status_code == 503 and refused.headers["Retry-After"]
        ready = client.get("/readyz", headers=ADMIN)
    assert ready.status_code == 503 and ready.get_json()["store"] == "store unavailable"
    [logged] = [r.getMessage() for r in caplog.records if r.name == "roomwarden.store"]
    assert str(path) in logged and "while in use" in logged


@pytest.mark.attack("delete or replace the SQLite file under a running service")
def test_a_start_on_a_new_sqlite_store_where_one_was_is_said_in_the_log_and_on_readyz(make_app, caplog):
    """Issue 15, item 1: the next start after the file was lost created an empty store without
    a word. The first start on a machine stays silent and leaves a marker beside the file; a
    start on a new store where the marked one was logs an error (every process that starts says
    it) and /readyz shows it, as information; deleting the marker accepts the new store."""
    from pathlib import Path

    from sqlalchemy.engine import make_url

    with caplog.at_level("ERROR", logger="roomwarden"):
        first = make_app(ADMIN_TOKEN=ADMIN_TOKEN)
    path = Path(make_url(first.extensions["roomwarden"].settings.database_url).database)
    marker = path.with_name(path.name + ".store")
    assert marker.exists() and [r for r in caplog.records if r.levelname == "ERROR"] == []
    assert "store_identity" not in first.test_client().get("/readyz", headers=ADMIN).get_json()
    again = make_app(ADMIN_TOKEN=ADMIN_TOKEN)  # the same store again: silent
    assert "store_identity" not in again.test_client().get("/readyz", headers=ADMIN).get_json()
    assert [r for r in caplog.records if r.levelname == "ERROR"] == []

    first.extensions["roomwarden"].close()
    again.extensions["roomwarden"].close()
    for name in (path.name, path.name + "-wal", path.name + "-shm"):
        path.with_name(name).unlink(missing_ok=True)
    with caplog.at_level("ERROR", logger="roomwarden"):
        lost = make_app(ADMIN_TOKEN=ADMIN_TOKEN)
    [said] = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert f"{path} is a new store, but the store created" in said and str(marker) in said
    ready = lost.test_client().get("/readyz", headers=ADMIN)
    assert ready.status_code == 200 and ready.get_json()["store_identity"].startswith("a new store where")
    assert str(path) not in ready.get_data(as_text=True)  # the path is for the log, not for anyone

    marker.unlink()  # starting afresh, knowingly
    caplog.clear()
    with caplog.at_level("ERROR", logger="roomwarden"):
        accepted = make_app(ADMIN_TOKEN=ADMIN_TOKEN)
    assert [r for r in caplog.records if r.levelname == "ERROR"] == []
    assert "store_identity" not in accepted.test_client().get("/readyz", headers=ADMIN).get_json()


@pytest.mark.attack("make the SQLite store unwritable (its writers' lock file cannot be opened)")
def test_a_writers_lock_file_that_cannot_be_opened_is_503_and_readyz_says_so(app, client, sign):
    """Issue 15, item 5: a store error that is not "the server is down" (here the SQLite
    writers' lock file cannot be opened) answered 500 with a traceback and /readyz stayed 200.
    Now 503 with Retry-After, /readyz 503, and both recover once the cause is gone."""
    from pathlib import Path

    from sqlalchemy.engine import make_url

    lock = Path(make_url(app.extensions["roomwarden"].settings.database_url).database + "-writers.lock")
    lock.unlink(missing_ok=True)
    lock.mkdir()  # os.open(..., O_RDWR) on it fails, as on a file the service may not write

    refused = client.post("/webhooks/videosdk", data=ENDED, headers={"videosdk-signature": sign(ENDED)})
    assert refused.status_code == 503 and refused.headers["Retry-After"]
    assert client.get("/readyz").status_code == 503

    lock.rmdir()
    assert client.post("/webhooks/videosdk", data=ENDED, headers={"videosdk-signature": sign(ENDED)}).status_code == 202
    assert client.get("/readyz").status_code == 200


# -- a deep data value in a matching rule's trace (found in a review) -------------------------------

DEEP_ROOM = "abcd-efgh-ijkl"


def test_a_deep_data_value_in_a_matching_trace_gets_2xx_or_4xx_never_500(make_app, tmp_path, sign):
    rules = tmp_path / "deep.yaml"
    rules.write_text(dedent("""\
        version: 1
        rules:
          - name: any-payload
            on: "recording-*"
            when:
              data.x: {exists: true}
            action: deactivate
    """))
    client = make_app(RULES_FILE=str(rules)).test_client()
    answers = {}
    for depth in range(900, 1001):
        body = ('{"webhookType":"recording-stopped","data":{"meetingId":"%s","sessionId":"s1","x":%s%s}}'
                % (DEEP_ROOM, "[" * depth, "]" * depth)).encode()
        status = client.post("/webhooks/videosdk", data=body, headers={
            "Content-Type": "application/json", "videosdk-signature": sign(body)}).status_code
        answers[depth] = status
        if status == 400:  # too deep to parse: every deeper body is refused the same way
            break
    assert 400 in answers.values()  # the scan reached the parser's own limit
    assert {d: s for d, s in answers.items() if s >= 500} == {}


# -- a signed body of a known type missing a field it needs: kept, never decided on -----------------

KEPT_ROOM, KEPT_SESSION = "kept-room-0001", "s-kept"

# Rules that would decide on any event they were shown: a join starts a timer that any other
# event cancels, and any other event acts at once. So an unreadable body that reached the
# planner would leave a decision, an action or a cancelled timer behind.
DECIDE_ON_ANYTHING = """\
version: 1
rules:
  - name: while-joined
    on: "*"
    when:
      event: participant-joined
    for: 1h
    action: deactivate
  - name: at-once
    on: "*"
    when:
      not:
        event: participant-joined
    action: deactivate
"""

# One body per family of KNOWN_EVENTS: (type, its data less a field roomwarden needs, that field,
# the problem it is kept with, the session id kept on the delivery row). meetingId is always there
# and valid, so the delivery is found by its room.
UNREADABLE = [
    pytest.param("participant-joined", {"sessionId": KEPT_SESSION, "participantName": "Ann"},
                 {"participantId": "p2"}, "data.participantId: Missing data for required field.", KEPT_SESSION,
                 id="participant-joined"),
    pytest.param("participant-left", {"sessionId": KEPT_SESSION}, {"participantId": "p1"},
                 "data.participantId: Missing data for required field.", KEPT_SESSION, id="participant-left"),
    pytest.param("session-started", {"start": "2022-07-05T15:55:35Z"}, {"sessionId": KEPT_SESSION},
                 "data.sessionId: Missing data for required field.", None, id="session-started"),
    pytest.param("session-ended", {"start": "2022-07-05T15:55:35Z", "end": "2022-07-05T16:05:35Z"},
                 {"sessionId": KEPT_SESSION}, "data.sessionId: Missing data for required field.", None,
                 id="session-ended"),
    pytest.param("participant-recording-stopped",
                 {"sessionId": KEPT_SESSION, "kind": "video", "fileDetails": [{"filePath": "a", "fileUrl": None}]},
                 {"participantId": "p1"}, "data.participantId: Missing data for required field.", KEPT_SESSION,
                 id="participant-recording"),
    pytest.param("participant-track-recording-started", {"sessionId": KEPT_SESSION, "kind": "audio"},
                 {"participantId": "p1"}, "data.participantId: Missing data for required field.", KEPT_SESSION,
                 id="participant-track-recording"),
    pytest.param("recording-stopped", {"filePath": "/r.mp4", "fileUrl": None}, {"sessionId": KEPT_SESSION},
                 "data.sessionId: Missing data for required field.", None, id="recording"),
    pytest.param("livestream-started", {}, {"sessionId": KEPT_SESSION},
                 "data.sessionId: Missing data for required field.", None, id="livestream"),
    pytest.param("hls-playable", {"playbackHlsUrl": "https://h/p.m3u8", "livestreamUrl": "https://h/l.m3u8"},
                 {"sessionId": KEPT_SESSION}, "data.sessionId: Missing data for required field.", None, id="hls"),
    # VideoSDK documents no payload for transcription-completed: here, only an id and the room
    pytest.param("transcription-completed", {"id": "tr-1"}, {"sessionId": KEPT_SESSION},
                 "data.sessionId: Missing data for required field.", None, id="transcription"),
    pytest.param("merge-recording-completed", {"id": "mr-1"}, {"sessionId": KEPT_SESSION},
                 "data.sessionId: Missing data for required field.", None, id="merge-recording"),
]


def test_every_known_family_has_an_unreadable_case():
    from fnmatch import fnmatchcase

    from service.schemas import KNOWN_EVENTS

    types = [case.values[0] for case in UNREADABLE]
    assert [p for p, _ in KNOWN_EVENTS if not any(fnmatchcase(t, p) for t in types)] == []


def _scrape(client) -> str:
    return client.get("/metrics", headers=ADMIN).get_data(as_text=True)


def _count(text: str, event: str, outcome: str) -> float:
    wanted = f'roomwarden_deliveries_total{{event="{event}",outcome="{outcome}"}} '
    return sum(float(line[len(wanted):]) for line in text.splitlines() if line.startswith(wanted))


@pytest.mark.parametrize("event_type, data, missing, problem, session", UNREADABLE)
def test_a_known_type_missing_a_field_is_kept_and_never_decided_on(make_app, tmp_path, sign, database_url,
                                                                     event_type, data, missing, problem, session):
    from service import explain

    rules = tmp_path / "anything.yaml"
    rules.write_text(DECIDE_ON_ANYTHING)
    app = make_app(RULES_FILE=str(rules), DATABASE_URL=database_url,
                   ADMIN_TOKEN=ADMIN["Authorization"].removeprefix("Bearer "))
    client = app.test_client()
    store = app.extensions["roomwarden"].store

    def post(body: bytes):
        return client.post("/webhooks/videosdk", data=body, headers={
            "Content-Type": "application/json", "videosdk-signature": sign(body)})

    # The room first: a live session, someone in it, and the join's timer pending.
    joined = event_body("participant-joined", meetingId=KEPT_ROOM, sessionId=KEPT_SESSION, participantId="p1")
    assert [d["outcome"] for d in decided(app, post(joined))] == ["timer-started"]

    def recorded():
        return {"room": store.history.room(KEPT_ROOM), "timers": store.history.timers(), "decisions": store.history.decisions(),
                "actions": store.actions.actions()}

    before, scraped = recorded(), _scrape(client)
    body = event_body(event_type, meetingId=KEPT_ROOM, **data)

    response = post(body)

    assert response.status_code == 202, response.get_json()
    answer = response.get_json()
    assert answer == {"delivery": answer["delivery"], "event": event_type, "verified": "yes"}
    assert decided(app, response) == []
    delivery = store.history.delivery(answer["delivery"])
    assert delivery["body"].encode() == body  # byte for byte, as signed
    assert delivery["body_sha256"] == hashlib.sha256(body).hexdigest()
    assert (delivery["problem"], delivery["event_type"], delivery["known"], delivery["verified"]) == (
        problem, event_type, True, True)
    assert (delivery["room_id"], delivery["session_id"]) == (KEPT_ROOM, session)
    # Not decided on: no decision, no action, no timer started or cancelled, the room's state untouched.
    assert recorded() == before
    assert before["timers"][0]["status"] == "pending"
    assert _count(_scrape(client), event_type, "unreadable") - _count(scraped, event_type, "unreadable") == 1
    text = explain.story(KEPT_ROOM, store.history.room_story(KEPT_ROOM), time.time())
    assert f"{event_type} (unreadable: {problem}): kept, not decided on" in [line.strip() for line in text]

    # The same body with the field given is decided on: the rules above were live all along.
    readable = post(event_body(event_type, meetingId=KEPT_ROOM, **data, **missing))
    assert readable.status_code == 202 and decided(app, readable) != []
