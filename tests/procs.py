"""Running the Procfile's commands as real processes, the way a process manager would."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent


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


def service_env(*, api_key: str, secret: str, api_base: str, rules_file: Path, database_url: str,
                **more: str) -> dict[str, str]:
    """The environment the Procfile's processes get in a test: this one's, less any VideoSDK or
    database setting, with this virtualenv first on PATH, a free port on loopback, two web
    workers, the fake API's address and credentials, short timeouts; `more` adds or overrides."""
    import sys

    return {
        **{k: v for k, v in os.environ.items() if not k.startswith(("VIDEOSDK_", "DATABASE_URL"))},
        "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""),
        "PORT": str(free_port()),
        "HOST": "127.0.0.1",
        "WEB_CONCURRENCY": "2",
        "VIDEOSDK_API_KEY": api_key,
        "VIDEOSDK_SECRET_KEY": secret,
        "VIDEOSDK_API_BASE": api_base,
        "RULES_FILE": str(rules_file),
        "DATABASE_URL": database_url,
        "VIDEOSDK_TIMEOUT_SECONDS": "1",
        "ACTION_LEASE_SECONDS": "3",
        "WORKER_POLL_SECONDS": "0.05",
        **more,
    }


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
        # The whole process group, even when its leader (the shell) has gone: its children
        # may live on, and must not outlive the test.
        for process in self.running:
            self.kill(process, signal.SIGTERM)
        deadline = time.monotonic() + 20
        for process in self.running:
            while _group_alive(process.pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if _group_alive(process.pid):
                self.kill(process, signal.SIGKILL)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def wait_until_up(url: str, process: subprocess.Popen, timeout: float = 120) -> None:
    # Generous: the machines are shared, and a loaded one boots gunicorn workers slowly.
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"exited with {process.returncode}:\n{Path(process.log_path).read_text()}")
        try:
            if requests.get(url + "/readyz", timeout=5).status_code == 200:
                return
        except requests.RequestException:  # not listening yet, or a slow answer on a loaded machine
            pass
        time.sleep(0.1)
    raise AssertionError(f"not up after {timeout}s:\n{Path(process.log_path).read_text()}")
