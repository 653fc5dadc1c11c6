"""End to end: the Procfile's own commands as real processes, signed events over real HTTP,
and deactivate calls arriving at the fake VideoSDK API."""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from service.store import Store

from .conftest import API_KEY, ROOT, SECRET, event_body
from .fakeapi import Reply

pytestmark = pytest.mark.e2e


def procfile() -> dict[str, str]:
    commands = {}
    for line in (ROOT / "Procfile").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, command = line.split(":", 1)
            commands[name.strip()] = command.strip()
    return commands


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Processes:
    """Starts Procfile commands the way a process manager would, and cleans up after."""

    def __init__(self, tmp_path: Path, env: dict[str, str]):
        self.tmp_path = tmp_path
        self.env = env
        self.running: list[subprocess.Popen] = []

    def start(self, name: str, **extra_env) -> subprocess.Popen:
        log = open(self.tmp_path / f"{name}-{len(self.running)}.log", "wb")
        process = subprocess.Popen(procfile()[name], shell=True, cwd=ROOT, env={**self.env, **extra_env},
                                   stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        process.log_path = log.name
        self.running.append(process)
        return process

    def kill(self, process: subprocess.Popen, sig=signal.SIGKILL) -> None:
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            pass
        process.wait(timeout=30)

    def stop_all(self) -> None:
        for process in self.running:
            if process.poll() is None:
                self.kill(process, signal.SIGTERM)


@pytest.fixture
def processes(tmp_path, fake_api, rules_file):
    venv_bin = str(Path(sys.executable).parent)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("VIDEOSDK_", "DATABASE_URL"))},
        "PATH": venv_bin + os.pathsep + os.environ.get("PATH", ""),
        "PORT": str(free_port()),
        "HOST": "127.0.0.1",
        "WEB_CONCURRENCY": "2",
        "VIDEOSDK_API_KEY": API_KEY,
        "VIDEOSDK_SECRET_KEY": SECRET,
        "VIDEOSDK_API_BASE": fake_api.base_url,
        "RULES_FILE": str(rules_file),
        "DATABASE_URL": f"sqlite:///{tmp_path}/e2e.db",
        "VIDEOSDK_TIMEOUT_SECONDS": "1",
        "ACTION_LEASE_SECONDS": "3",
        "WORKER_POLL_SECONDS": "0.05",
    }
    procs = Processes(tmp_path, env)
    yield procs
    procs.stop_all()


def wait_until_up(url: str, process: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"exited with {process.returncode}:\n{Path(process.log_path).read_text()}")
        try:
            if requests.get(url + "/readyz", timeout=1).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"not up after {timeout}s:\n{Path(process.log_path).read_text()}")


def ended(room: str, session: str = "s-1") -> bytes:
    return event_body("session-ended", meetingId=room, sessionId=session,
                      start="2026-11-26T10:00:00Z", end="2026-11-26T10:30:00Z")


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
            statuses.append(send(ended(room)))
            statuses.append(send(ended(room)))  # a repeated delivery
        statuses.append(send(event_body("participant-joined", meetingId="zzzz-zzzz-zzzz", sessionId="s",
                                        participantId="p1", participantName="Ann")))
        statuses.append(send(ended("forg-forg-forg"), signature=sign(ended("other-room"))))
        statuses.append(send(b"{not json"))

    assert statuses == [202] * 6 + [202, 401, 400]
    assert fake_api.wait_for(lambda: sorted(fake_api.deactivations()) == rooms), fake_api.calls
    store = Store.from_url(processes.env["DATABASE_URL"])
    assert fake_api.wait_for(lambda: store.counts() == {"done": 3}), store.actions()
    assert len(store.deliveries()) == 7  # every 2xx, duplicates included; no 4xx
    assert all(a["attempts"] == 1 for a in store.actions())
    # Each call carried a token the fake accepted, so nothing was retried for auth.
    assert all(c.auth_error is None for c in fake_api.calls_to("/v2/rooms/deactivate"))
    store.close()


def test_a_killed_worker_loses_nothing(processes, fake_api, sign):
    web = processes.start("web")
    base = f"http://127.0.0.1:{processes.env['PORT']}"
    wait_until_up(base, web)
    # The first call hangs longer than the client's timeout: the worker is mid-call when killed.
    fake_api.script("/v2/rooms/deactivate", Reply(200, delay=5))
    body = ended("kill-kill-0001")
    assert requests.post(base + "/webhooks/videosdk", data=body, timeout=10,
                         headers={"videosdk-signature": sign(body)}).status_code == 202

    first = processes.start("worker")
    assert fake_api.wait_for(lambda: _claimed(processes.env["DATABASE_URL"])), "the worker never claimed it"
    processes.kill(first)  # kill -9, lease still held
    processes.start("worker")

    assert fake_api.wait_for(lambda: fake_api.deactivations() == ["kill-kill-0001"], timeout=30)
    store = Store.from_url(processes.env["DATABASE_URL"])
    assert fake_api.wait_for(lambda: store.counts() == {"done": 1})
    [action] = store.actions()
    assert action["attempts"] == 2  # the killed claim, then the one that succeeded
    store.close()


def _claimed(url: str) -> bool:
    store = Store.from_url(url)
    try:
        return any(a["lease_owner"] for a in store.actions())
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
    web = processes.start("web", WEB_CONCURRENCY="3")
    base = f"http://127.0.0.1:{processes.env['PORT']}"
    wait_until_up(base, web)
    children = subprocess.run(["pgrep", "-P", str(_gunicorn_master(web.pid))], capture_output=True,
                              text=True).stdout.split()
    assert len(children) == 3


def _gunicorn_master(shell_pid: int) -> int:
    # `shell=True` may leave a shell (whose command line names gunicorn too) above the
    # master: the master is the process in the session with the most children.
    out = subprocess.run(["pgrep", "-s", str(shell_pid)], capture_output=True, text=True)
    parents = [int(Path(f"/proc/{pid}/stat").read_text().split()[3]) for pid in out.stdout.split()
               if Path(f"/proc/{pid}").exists()]
    return max(set(parents), key=parents.count)


def test_procfile_commands_are_the_documented_ones():
    commands = procfile()
    assert shlex.split(commands["worker"]) == ["python", "-m", "service", "worker"]
    assert "service:create_app()" in commands["web"] and commands["web"].startswith("gunicorn ")
