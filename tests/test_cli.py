"""`python -m service ...` as a user runs it: real subprocesses, real files."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from .conftest import PAYLOADS, ROOT, SECRET, event_body


def run(*args: str, env: dict | None = None, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("VIDEOSDK_", "DATABASE_URL", "RULES_FILE"))}
    return subprocess.run([sys.executable, "-m", "service", *args], cwd=ROOT, env={**base, **(env or {})},
                          input=stdin, capture_output=True, timeout=60)


def test_check_accepts_the_shipped_rules():
    result = run("check", "rules.yaml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.decode().startswith("rules.yaml: ok, ")


def test_check_reads_RULES_FILE_by_default(rules_file):
    result = run("check", env={"RULES_FILE": str(rules_file)})
    assert result.returncode == 0 and str(rules_file) in result.stdout.decode()


# A rules file with two mistakes, at lines 6 and 7 (test_ciformat checks the other formats on it).
BAD = ("version: 1\n"
       "rules:\n"
       "  - name: a\n"
       "    on: session-ended\n"
       "    when:\n"
       "      room.idd: x\n"
       "      session.duration: {gte_: 5}\n"
       "    action: deactivate\n")


def test_check_prints_one_line_per_error_and_exits_1(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(BAD +
                    "  - name: a\n"
                    "    on: session-ended\n"
                    "    action: deactivate\n")
    result = run("check", str(path))
    assert result.returncode == 1
    assert result.stdout.decode().splitlines() == [
        f"{path}:6:7: unknown field 'room.idd'; did you mean 'room.id'?",
        f"{path}:7:26: unknown operator 'gte_'; did you mean 'gte'?",
    ]  # the duplicate name is not reported: the first rule with that name did not load


def test_check_missing_file(tmp_path):
    result = run("check", str(tmp_path / "nope.yaml"))
    assert result.returncode == 1
    assert result.stdout.decode().startswith(f"{tmp_path}/nope.yaml:1:1: cannot read the rules file")


def test_simulate_shows_the_trace_and_changes_nothing(tmp_path):
    db = tmp_path / "untouched.db"
    result = run("simulate", str(PAYLOADS / "participant-left.json"), "--rules", "rules.yaml",
                 env={"DATABASE_URL": f"sqlite:///{db}"})
    assert result.returncode == 0, result.stderr
    out = result.stdout.decode()
    assert "rule close-when-empty (line" in out
    assert "MATCH -> would start a timer: deactivate room jvsg-8rjn-j304 in 5m" in out
    assert "yes room.participants eq 0  (actual: 0)" in out
    assert not db.exists()  # no side effects: not even a database file


def test_simulate_json_from_stdin(rules_file):
    body = event_body("session-ended", meetingId="rec-room-0001", sessionId="s")
    rules_file.write_text("version: 1\nrules:\n  - name: long\n    on: session-ended\n"
                          "    when: {session.duration: {gte: 60}}\n    action: deactivate\n")
    result = run("simulate", "-", "--json", "--rules", str(rules_file), stdin=body)  # no start/end
    assert result.returncode == 0
    [rule] = json.loads(result.stdout)["rules"]
    assert rule["result"] is None and rule["outcome"] is None  # duration unknown: never acts


def test_simulate_shows_protected_rooms_would_not_be_acted_on():
    body = event_body("participant-left", meetingId="demo-room-1", sessionId="s", participantId="p")
    result = run("simulate", "-", "--rules", "rules.yaml", stdin=body)
    assert "MATCH -> protected: would not act" in result.stdout.decode()


def test_simulate_inline_json_of_an_unknown_event():
    result = run("simulate", '{"webhookType": "call-started", "data": {}}', "--rules", "rules.yaml")
    assert result.returncode == 0
    assert "unknown event type: recorded, never acted on" in result.stdout.decode()


def test_simulate_rejects_a_body_that_is_not_a_webhook_with_field_messages():
    result = run("simulate", '{"webhookType": "session-ended"}', "--rules", "rules.yaml")
    assert result.returncode == 1
    assert "not a VideoSDK webhook" in result.stderr.decode()
    assert '"data"' in result.stderr.decode() and "Missing data" in result.stderr.decode()


def test_simulate_shows_a_known_event_missing_a_field_is_kept_and_never_decided_on():
    # What the service does with it: accepts it (202), then its decider keeps it and evaluates no
    # rule, as close-after-session would otherwise match any session-ended.
    result = run("simulate", '{"webhookType": "session-ended", "data": {"sessionId": "s"}}',
                 "--rules", "rules.yaml")
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode().splitlines() == [
        "event session-ended room=None session=s",
        "  unreadable (data.meetingId: Missing data for required field.): kept, never decided on",
    ]


def test_check_warns_on_a_type_videosdk_does_not_document_with_the_nearest_name(tmp_path):
    path = tmp_path / "typo.yaml"
    path.write_text("version: 1\nrules:\n  - name: a\n    on: participant-leftt\n    action: deactivate\n"
                    "  - name: b\n    on: agent-session-started\n    action: deactivate\n")
    result = run("check", str(path))
    assert result.returncode == 0  # warnings fail only with --strict
    assert result.stdout.decode().splitlines()[:2] == [
        f"{path}:4:9: warning: 'participant-leftt': VideoSDK documents no such type, and roomwarden does not "
        "act on it: events of unknown types are recorded but never acted on; did you mean 'participant-left'?",
        f"{path}:7:9: warning: 'agent-session-started': VideoSDK documents no such type (it names the "
        "agent-session-* family, with shapes unknown), and roomwarden does not act on it: events of unknown "
        "types are recorded but never acted on",
    ]
    assert run("check", str(path), "--strict").returncode == 1


def test_simulate_with_bad_rules_exits_2_with_positions(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("version: 1\nrules:\n  - name: x\n    on: session-ended\n    action: nope\n")
    result = run("simulate", str(PAYLOADS / "session-ended.json"), "--rules", str(path))
    assert result.returncode == 2
    assert f"{path}:5:13: unknown action 'nope'" in result.stderr.decode()


def test_worker_refuses_to_start_without_credentials(tmp_path, rules_file):
    result = run("worker", "--once", env={"DATABASE_URL": f"sqlite:///{tmp_path}/w.db"})
    assert result.returncode == 2
    assert "VIDEOSDK_API_KEY and VIDEOSDK_SECRET_KEY must be set" in result.stderr.decode()
    assert b"Traceback" not in result.stderr


def test_worker_once_decides_the_inbox_and_delivers_due_actions(app, client, sign, fake_api, env):
    # Posted without deciding: `worker --once` does all that is due, the inbox first.
    body = event_body("session-ended", meetingId="abcd-efgh-ijkl", sessionId="s")
    answer = client.post("/webhooks/videosdk", data=body, headers={"videosdk-signature": sign(body)})
    assert answer.status_code == 202
    store = app.extensions["roomwarden"].store
    assert store.inbox.inbox_stats()[0] == 1 and store.history.delivery(answer.get_json()["delivery"]) is None
    result = run("worker", "--once", env=env)
    assert result.returncode == 0, result.stderr
    assert store.inbox.inbox_stats() == (0, None)
    assert [d["outcome"] for d in store.history.decisions(delivery_id=answer.get_json()["delivery"])] == ["scheduled"]
    assert fake_api.deactivations() == ["abcd-efgh-ijkl"]
    listing = run("actions", "--status", "done", env=env)
    assert "room=abcd-efgh-ijkl rule=close-after-session attempts=1" in listing.stdout.decode()


def test_migrate_reports_the_version(tmp_path):
    result = run("migrate", env={"DATABASE_URL": f"sqlite:///{tmp_path}/m.db", "DRY_RUN": "1"})
    assert result.returncode == 0 and result.stdout.decode().strip() == "schema at version 6"


@pytest.mark.parametrize("args", [[], ["nope"], ["simulate"]])
def test_usage_errors_exit_2(args):
    assert run(*args).returncode == 2


def test_secrets_never_reach_cli_output(app, post, fake_api, env):
    post(event_body("session-ended", meetingId="abcd-efgh-ijkl", sessionId="s"))
    outputs = [run("worker", "--once", env={**env, "LOG_LEVEL": "DEBUG"}), run("actions", env=env)]
    for result in outputs:
        assert SECRET.encode() not in result.stdout + result.stderr
    # the API key alone is not secret, but the token made from it is: never printed
    token_calls = fake_api.calls_to("/v2/rooms/deactivate")
    assert token_calls and all(c.headers["authorization"].encode() not in outputs[0].stderr for c in token_calls)


@pytest.mark.parametrize("args", [["explain", "abcd-efgh-ijkl"], ["actions"], ["retry", "--all-dead"],
                                  ["prune", "--older-than", "1d"],
                                  ["replay", "--rules", "rules.yaml", "--current", "rules.yaml"]])
def test_commands_that_read_the_store_neither_create_nor_migrate_it(tmp_path, args):
    db = tmp_path / "typo.db"
    result = run(*args, env={"DATABASE_URL": f"sqlite:///{db}", "DRY_RUN": "1"})
    assert result.returncode == 2
    assert f"no database at {db}" in result.stderr.decode()
    assert not db.exists()


def test_commands_that_read_the_store_refuse_an_older_schema(tmp_path):
    import sqlite3

    db = tmp_path / "old.db"
    sqlite3.connect(db).close()  # a database file, but no schema at all
    result = run("actions", env={"DATABASE_URL": f"sqlite:///{db}", "DRY_RUN": "1"})
    assert result.returncode == 2
    assert "run python -m service migrate" in result.stderr.decode()
