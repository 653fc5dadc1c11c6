"""The admin side: ADMIN_TOKEN, the read-only JSON API, and /metrics (also across real processes)."""

from __future__ import annotations

import re
import time

import pytest
import requests

from service.config import Settings
from service.errors import ConfigError

from .conftest import Clock, decide, ended, event_body, worker_beside
from .procs import wait_until_up

TOKEN = "admin-token-for-tests-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ENDPOINTS = ["/metrics", "/api/deliveries", "/api/actions", "/api/rooms/abcd-efgh-ijkl"]


@pytest.fixture
def admin_app(make_app):
    return make_app(ADMIN_TOKEN=TOKEN)


@pytest.mark.parametrize("path", ENDPOINTS)
def test_without_a_configured_token_the_admin_endpoints_are_off(client, path):
    assert client.get(path, headers=AUTH).status_code == 404


@pytest.mark.parametrize("path", ENDPOINTS)
@pytest.mark.parametrize("headers", [
    {},  # no credentials
    {"Authorization": "Bearer wrong-token-wrong-token-0000"},  # wrong token
    {"Authorization": TOKEN},  # the token without the Bearer scheme
    {"Authorization": f"Basic {TOKEN}"},  # another scheme
    {"Authorization": f"Bearer {TOKEN[:-1]}"},  # a prefix of the token
    {"Authorization": f"Bearer {TOKEN}x"},  # the token and more
])
def test_wrong_or_missing_credentials_get_401(admin_app, path, headers):
    response = admin_app.test_client().get(path, headers=headers)
    assert response.status_code == 401
    assert "ADMIN_TOKEN" in response.get_json()["error"] and TOKEN not in response.get_data(as_text=True)
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_the_webhook_and_health_checks_need_no_token(admin_app, sign):
    client = admin_app.test_client()
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code == 200
    body = ended("abcd-efgh-ijkl", "s-1")
    assert client.post("/webhooks/videosdk", data=body, headers={"videosdk-signature": sign(body)}).status_code == 202


def test_a_short_admin_token_is_refused_at_start():
    with pytest.raises(ConfigError, match="at least 16 characters"):
        Settings.from_env({"ADMIN_TOKEN": "short"})


def test_deliveries_newest_first_by_room_and_paged(admin_app, sign):
    client = admin_app.test_client()
    for i in range(5):
        body = ended("room-aaaa-0001", f"s{i}")
        client.post("/webhooks/videosdk", data=body, headers={"videosdk-signature": sign(body)})
        time.sleep(0.002)  # delivery ids order by the millisecond: two in one millisecond tie
    body = ended("room-bbbb-0002", "s-1")
    client.post("/webhooks/videosdk", data=body, headers={"videosdk-signature": sign(body)})
    decide(admin_app)  # as the worker does: a delivery is listed once decided

    page = client.get("/api/deliveries?room=room-aaaa-0001&limit=3", headers=AUTH).get_json()
    assert [d["session_id"] for d in page["deliveries"]] == ["s4", "s3", "s2"]
    rest = client.get(f"/api/deliveries?room=room-aaaa-0001&limit=3&before={page['next_before']}",
                      headers=AUTH).get_json()
    assert [d["session_id"] for d in rest["deliveries"]] == ["s1", "s0"] and rest["next_before"] is None
    everything = client.get("/api/deliveries", headers=AUTH).get_json()["deliveries"]
    assert len(everything) == 6 and everything[0]["room_id"] == "room-bbbb-0002"


@pytest.mark.parametrize("query", ["limit=many", "limit="])
def test_a_bad_limit_is_a_400(admin_app, query):
    response = admin_app.test_client().get(f"/api/deliveries?{query}", headers=AUTH)
    assert response.status_code == 400 and "limit" in response.get_json()["error"]


def test_actions_by_status(admin_app, sign, fake_api):
    client = admin_app.test_client()
    for room in ("room-aaaa-0001", "room-bbbb-0002"):
        body = ended(room, "s-1")
        client.post("/webhooks/videosdk", data=body, headers={"videosdk-signature": sign(body)})
    fake_api.missing_rooms.add("room-bbbb-0002")
    worker = worker_beside(admin_app)
    while worker.run_once():
        pass
    done = client.get("/api/actions?status=done", headers=AUTH).get_json()["actions"]
    failed = client.get("/api/actions?status=failed", headers=AUTH).get_json()["actions"]
    assert [a["room_id"] for a in done] == ["room-aaaa-0001"]
    assert [(a["room_id"], a["last_status"]) for a in failed] == [("room-bbbb-0002", 404)]


def test_a_room_with_its_state_timers_and_history(make_app, rules_file, sign):
    rules_file.write_text("version: 1\nrules:\n  - name: empty\n    on: participant-left\n"
                          "    when: {room.participants: 0}\n    for: 5m\n    action: deactivate\n")
    app = make_app(ADMIN_TOKEN=TOKEN)
    client = app.test_client()
    for kind in ("participant-joined", "participant-left"):
        body = event_body(kind, meetingId="abcd-efgh-ijkl", sessionId="s1", participantId="ann")
        assert client.post("/webhooks/videosdk", data=body, headers={"videosdk-signature": sign(body)}).status_code == 202
    decide(app)
    room = client.get("/api/rooms/abcd-efgh-ijkl", headers=AUTH).get_json()
    assert room["state"]["participants"] == [] and room["state"]["session_id"] == "s1"
    [timer] = room["pending_timers"]
    assert timer["rule"] == "empty" and timer["status"] == "pending"
    assert [d["event_type"] for d in room["history"]["deliveries"]] == ["participant-joined", "participant-left"]
    assert [d["outcome"] for d in room["history"]["decisions"]] == ["timer-started"]
    assert client.get("/api/rooms/none-none-none", headers=AUTH).status_code == 404


def sample(text: str, name: str, **labels) -> float | None:
    """The value of one sample in Prometheus text; None if it is not there."""
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        match = re.match(rf"^{re.escape(name)}(?:{{(.*)}})? (\S+)$", line)
        if match and ",".join(sorted((match.group(1) or "").split(","))) == wanted:
            return float(match.group(2))
    return None


def metric(text: str, name: str, **labels) -> float:
    """The value of one sample in Prometheus text, 0 if absent."""
    value = sample(text, name, **labels)
    return 0.0 if value is None else value


def test_metrics_count_what_happened(admin_app, sign):
    client = admin_app.test_client()
    # The delivery arrives an hour ago by the intake's clock, so the inbox's oldest age is known
    # to be at least an hour when scraped, whatever the scrape's own timing.
    admin_app.extensions["roomwarden"].intake.clock = Clock(time.time() - 3600)
    before = client.get("/metrics", headers=AUTH).get_data(as_text=True)
    body = ended("abcd-efgh-ijkl", "s-1")
    assert client.post("/webhooks/videosdk", data=body, headers={"videosdk-signature": sign(body)}).status_code == 202
    client.post("/webhooks/videosdk", data=body, headers={"videosdk-signature": "AAAA"})
    accepted = client.get("/metrics", headers=AUTH).get_data(as_text=True)
    decide(admin_app)  # what the worker does next
    text = client.get("/metrics", headers=AUTH).get_data(as_text=True)

    # The request: accepted into the inbox, verified, nothing decided yet.
    delta = lambda now, name, **labels: metric(now, name, **labels) - metric(before, name, **labels)  # noqa: E731
    assert delta(accepted, "roomwarden_accepted_total", verified="yes") == 1
    assert delta(accepted, "roomwarden_accepted_total", verified="later") == 0
    assert delta(accepted, "roomwarden_deliveries_total", event="session-ended", outcome="accepted") == 0
    assert delta(accepted, "roomwarden_signature_failures_total") == 1
    assert delta(accepted, "roomwarden_rejections_total", status="401") == 1
    assert metric(accepted, "roomwarden_inbox_depth") == 1  # read from the store when scraped
    assert metric(accepted, "roomwarden_inbox_oldest_age_seconds") >= 3600
    assert metric(accepted, "roomwarden_queue_depth") == 0
    # Decided: counted by the decider, and the inbox is empty.
    assert delta(text, "roomwarden_accepted_total", verified="yes") == 1
    assert delta(text, "roomwarden_deliveries_total", event="session-ended", outcome="accepted") == 1
    assert delta(text, "roomwarden_decisions_total", rule="close-after-session", outcome="scheduled") == 1
    assert metric(text, "roomwarden_inbox_depth") == 0
    assert re.search(r"^roomwarden_inbox_oldest_age_seconds 0\.0$", text, re.M)  # nothing waits
    assert metric(text, "roomwarden_queue_depth") == 1
    assert metric(text, "roomwarden_pending_timers") == 0
    assert metric(text, "roomwarden_actions", status="pending") == 1


def test_metrics_add_up_every_process(processes, sign, fake_api):
    """Two gunicorn workers and the worker process count separately; /metrics from any
    gunicorn worker shows the sum (prometheus_client's multiprocess mode)."""
    web = processes.start("web", WEB_CONCURRENCY="2", ADMIN_TOKEN=TOKEN)
    base = f"http://127.0.0.1:{processes.env['PORT']}"
    wait_until_up(base, web)
    processes.start("worker", ADMIN_TOKEN=TOKEN)
    rooms = [f"room-mmmm-{i:04d}" for i in range(12)]
    for room in rooms:  # new connections, so both gunicorn workers take some
        body = ended(room, "s-1")
        assert requests.post(base + "/webhooks/videosdk", data=body, timeout=10, headers={
            "videosdk-signature": sign(body), "Connection": "close"}).status_code == 202
    assert fake_api.wait_for(lambda: len(fake_api.deactivations()) == len(rooms))

    def scrape():
        return requests.get(base + "/metrics", headers={**AUTH, "Connection": "close"}, timeout=10).text

    assert fake_api.wait_for(lambda: metric(scrape(), "roomwarden_attempts_total",
                                            kind="deactivate", outcome="done") == len(rooms))
    pids = {requests.get(base + "/readyz", headers={**AUTH, "Connection": "close"}, timeout=5).json()["pid"]
            for _ in range(20)}
    assert len(pids) == 2, "both gunicorn workers should have answered"
    for _ in range(6):  # whichever worker answers, the totals are the same
        text = scrape()
        assert metric(text, "roomwarden_accepted_total", verified="yes") == len(rooms)  # the web processes
        assert metric(text, "roomwarden_deliveries_total", event="session-ended", outcome="accepted") == len(rooms)
        assert metric(text, "roomwarden_attempts_total", kind="deactivate", outcome="done") == len(rooms)
        assert metric(text, "roomwarden_attempt_latency_seconds_count", kind="deactivate") == len(rooms)
        assert metric(text, "roomwarden_queue_depth") == 0
        assert metric(text, "roomwarden_inbox_depth") == 0  # every delivery decided (each room was acted on)


def test_every_metric_family_is_exported_at_zero_from_the_first_scrape(processes):
    """Issue 15: an `increase(...)` alert needs a series before its first increment. A fresh web
    process, before any delivery, already exports each known label value at 0 (each rule's
    decisions among them)."""
    web = processes.start("web", WEB_CONCURRENCY="1", ADMIN_TOKEN=TOKEN)
    base = f"http://127.0.0.1:{processes.env['PORT']}"
    wait_until_up(base, web)
    text = requests.get(base + "/metrics", headers=AUTH, timeout=10).text

    zero = {
        ("roomwarden_accepted_total", (("verified", "yes"),)),
        ("roomwarden_accepted_total", (("verified", "later"),)),
        ("roomwarden_rejections_total", (("status", "401"),)),
        ("roomwarden_rejections_total", (("status", "503"),)),
        ("roomwarden_signature_failures_total", ()),
        ("roomwarden_deliveries_total", (("event", "participant-left"), ("outcome", "accepted"))),
        ("roomwarden_deliveries_total", (("event", "session-ended"), ("outcome", "refused"))),
        ("roomwarden_decisions_total", (("rule", "close-after-session"), ("outcome", "scheduled"))),
        ("roomwarden_timers_total", (("verdict", "fire"),)),
        ("roomwarden_attempts_total", (("kind", "deactivate"), ("outcome", "dead"))),
        ("roomwarden_attempts_total", (("kind", "end-session"), ("outcome", "done"))),
        ("roomwarden_doubtful_answers_total", (("kind", "deactivate"),)),
        ("roomwarden_attempt_latency_seconds_count", (("kind", "deactivate"),)),
        ("roomwarden_rules_reloads_total", (("result", "failure"),)),
    }
    for name, labels in sorted(zero):
        assert sample(text, name, **dict(labels)) == 0.0, (name, labels)  # present, at 0 (None: absent)


def test_actions_newest_first_and_paged(admin_app, sign):
    client = admin_app.test_client()
    for i in range(5):
        body = ended(f"room-page-{i:04d}", "s-1")
        client.post("/webhooks/videosdk", data=body, headers={"videosdk-signature": sign(body)})
    decide(admin_app)
    page = client.get("/api/actions?limit=3", headers=AUTH).get_json()
    assert [a["room_id"] for a in page["actions"]] == ["room-page-0004", "room-page-0003", "room-page-0002"]
    rest = client.get(f"/api/actions?limit=3&before={page['next_before']}", headers=AUTH).get_json()
    assert [a["room_id"] for a in rest["actions"]] == ["room-page-0001", "room-page-0000"]
    assert rest["next_before"] is None
    assert client.get("/api/actions?before=x", headers=AUTH).status_code == 400


def test_a_reload_sets_the_old_rules_hash_to_0(admin_app, rules_file):
    from service.rules.loader import load_rules

    runtime = admin_app.extensions["roomwarden"]
    old = runtime.rules.current.short_hash
    rules_file.write_text(rules_file.read_text() + "# changed\n")
    runtime.rules.replace(load_rules(rules_file))
    text = admin_app.test_client().get("/metrics", headers=AUTH).get_data(as_text=True)
    assert metric(text, "roomwarden_rules_info", hash=old) == 0
    assert metric(text, "roomwarden_rules_info", hash=runtime.rules.current.short_hash) == 1
