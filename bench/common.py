"""What every section shares: keys and signed bodies, the Procfile's processes, RSS, the machine,
a throwaway PostgreSQL database, percentiles and tables."""

from __future__ import annotations

import base64
import json
import os
import platform
import shlex
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # the tests' process helpers, as the tests run the Procfile
    sys.path.insert(0, str(ROOT))

from tests.procs import free_port, procfile  # noqa: E402  (re-exported for the sections)
BENCH = ROOT / "bench"
API_KEY = "bench-api-key"
SECRET = "bench-secret-" + uuid.uuid4().hex
HEADER = "videosdk-signature"
PATH = "/webhooks/videosdk"


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- keys and bodies ------------------------------------------------------------------------------


class Signer:
    """A key pair that signs like VideoSDK: RSA 2048, PKCS#1 v1.5, SHA-256, base64 (tests/conftest.py)."""

    def __init__(self):
        self.private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.public_pem = self.private_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.PKCS1).decode()

    def sign(self, body: bytes) -> str:
        return base64.b64encode(self.private_key.sign(body, padding.PKCS1v15(), hashes.SHA256())).decode()


def event_body(event_type: str, **data) -> bytes:
    return json.dumps({"webhookType": event_type, "data": data}, separators=(",", ":")).encode()


def room_events(room: str, session: str, when: str = "2026-11-01T10:00:00.000+00:00") -> list[bytes]:
    """A room's ordinary life: a session starts, two people join and leave, the session ends."""
    ended = when.replace("T10:", "T10:3")
    return [
        event_body("session-started", meetingId=room, sessionId=session, start=when),
        event_body("participant-joined", meetingId=room, sessionId=session, participantId="p1",
                   participantName="Ada"),
        event_body("participant-joined", meetingId=room, sessionId=session, participantId="p2",
                   participantName="Grace"),
        event_body("participant-left", meetingId=room, sessionId=session, participantId="p1",
                   participantName="Ada"),
        event_body("participant-left", meetingId=room, sessionId=session, participantId="p2",
                   participantName="Grace"),
        event_body("session-ended", meetingId=room, sessionId=session, start=when, end=ended),
    ]


def mixed_bodies(count: int, prefix: str) -> list[bytes]:
    """`count` distinct bodies, a few rooms' lives interleaved (plus a recording event now and then)."""
    bodies: list[bytes] = []
    room = 0
    while len(bodies) < count:
        name, session = f"{prefix}-{room:06d}", f"s{room:06d}"
        bodies.extend(room_events(name, session))
        if room % 5 == 0:
            bodies.append(event_body("recording-stopped", meetingId=name, sessionId=session,
                                     filePath=f"/encoded/{name}.mp4"))
        room += 1
    return bodies[:count]


def http_request(host: str, port: int, body: bytes, signature: str) -> bytes:
    """The raw bytes of one signed webhook POST over a keep-alive connection."""
    head = (f"POST {PATH} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
            f"{HEADER}: {signature}\r\nContent-Length: {len(body)}\r\n\r\n")
    return head.encode("ascii") + body


# -- processes ---------------------------------------------------------------------------------


def base_env() -> dict[str, str]:
    """The bench's own environment, less anything that would change what the Procfile runs:
    the service's settings come only from what each section sets."""
    dropped = ("VIDEOSDK_", "DATABASE_URL", "WEB_CONCURRENCY", "WEB_THREADS", "WORKER_POLL_SECONDS",
               "RULES_", "DRY_RUN", "WEBHOOK_VERIFY", "ACTION_", "PROMETHEUS_MULTIPROC_DIR", "LOG_LEVEL",
               "PORT", "HOST", "ADMIN_TOKEN", "RETENTION_DAYS", "BREAKER_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(dropped)}
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    return env


@dataclass
class Proc:
    name: str
    command: str
    env: dict
    log_path: Path
    popen: subprocess.Popen
    port: int | None = None
    shown_env: dict = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def describe(self) -> str:
        settings = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(self.shown_env.items()))
        return f"{settings} {self.command}".strip()


class Processes:
    """Starts commands in their own sessions, and stops exactly those sessions."""

    def __init__(self, out: Path):
        self.out = out
        self.running: list[Proc] = []

    def start(self, name: str, command: str, env: dict, *, port: int | None = None,
              shown_env: dict | None = None) -> Proc:
        log_path = self.out / f"{name}.log"
        handle = open(log_path, "ab")
        popen = subprocess.Popen(command, shell=True, cwd=ROOT, env=env, stdout=handle,
                                 stderr=subprocess.STDOUT, start_new_session=True)
        handle.close()
        proc = Proc(name, command, env, log_path, popen, port, shown_env or {})
        self.running.append(proc)
        return proc

    def stop(self, proc: Proc, timeout: float = 30) -> None:
        if proc.popen.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                proc.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.popen.wait(timeout=10)
        # The shell may have exited while its children live on in the session: end them too.
        for pid in session_pids(proc.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if proc in self.running:
            self.running.remove(proc)

    def stop_all(self) -> None:
        for proc in list(self.running):
            self.stop(proc)


def wait_until_up(proc: Proc, path: str = "/readyz", timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    url = f"http://127.0.0.1:{proc.port}{path}"
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode}:\n{tail(proc.log_path)}")
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{proc.name} not up after {timeout}s:\n{tail(proc.log_path)}")


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _stat(pid: int) -> tuple[int, int] | None:
    """(ppid, session id) of a process, from /proc/PID/stat."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()
    return int(fields[1]), int(fields[3])


def cpu_seconds(pid: int) -> float | None:
    """User plus system CPU time a process has used so far, from /proc/PID/stat."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def session_pids(sid: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _stat(int(entry))
            if stat and stat[1] == sid:
                pids.append(int(entry))
    return pids


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def gunicorn_pids(proc: Proc) -> tuple[int | None, list[int]]:
    """(master, workers) of a gunicorn started as `proc`."""
    pids = session_pids(proc.pid)
    parents = {pid: (_stat(pid) or (0, 0))[0] for pid in pids}
    gunicorns = [pid for pid in pids if "gunicorn" in cmdline(pid) and not _is_shell(pid)]
    masters = [pid for pid in gunicorns if parents.get(pid) not in gunicorns]
    master = masters[0] if masters else None
    workers = sorted(pid for pid in gunicorns if parents.get(pid) == master)
    return master, workers


def _is_shell(pid: int) -> bool:
    """The `sh -c` that runs a Procfile command (when the shell did not exec it)."""
    return Path(cmdline(pid).split(" ")[0]).name in ("sh", "bash", "dash")


def python_pid(proc: Proc, needle: str) -> int | None:
    for pid in session_pids(proc.pid):
        if needle in cmdline(pid) and not _is_shell(pid):
            return pid
    return None


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


# -- PostgreSQL ----------------------------------------------------------------------------------


def postgres_base_url() -> str | None:
    for name in ("BENCH_POSTGRES_URL", "ROOMWARDEN_TEST_POSTGRES_URL"):
        value = os.environ.get(name)
        if value:
            return value
    return None


class ThrowawayDatabase:
    """CREATE DATABASE roomwarden_bench_<random> on the server; DROP ... WITH (FORCE) after."""

    def __init__(self, base: str):
        from sqlalchemy.engine import make_url

        self.admin = make_url(base).set(drivername="postgresql")
        self.name = f"roomwarden_bench_{uuid.uuid4().hex[:12]}"
        self.url = self.admin.set(database=self.name).render_as_string(hide_password=False)
        self.shown = self.admin.set(database=self.name).render_as_string(hide_password=True)

    def _admin(self):
        import psycopg

        return psycopg.connect(self.admin.render_as_string(hide_password=False), autocommit=True,
                               connect_timeout=5)

    def create(self) -> str:
        with self._admin() as conn:
            conn.execute(f'CREATE DATABASE "{self.name}"')
        return self.url

    def drop(self) -> None:
        try:
            with self._admin() as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
        except Exception as exc:  # noqa: BLE001 - report, never mask the run's own result
            log(f"could not drop {self.name}: {exc}")


# -- figures ----------------------------------------------------------------------------------------


def percentile(values, q: float) -> float | None:
    """The q-th percentile (0..100), nearest-rank on sorted values."""
    data = sorted(values)
    if not data:
        return None
    rank = max(1, min(len(data), int(-(-q * len(data) // 100))))
    return data[rank - 1]


def median(values) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("PASS" if ok else "MISS")


def fmt(value, digits: int = 1, unit: str = "") -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:,.{digits}f}{unit}"
    return f"{value:,}{unit}"


def table(headers: list[str], rows: list[list]) -> str:
    """A Markdown table, aligned for reading as plain text too."""
    cells = [[str(c) for c in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    return "\n".join([line(cells[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
                     + [line(r) for r in cells[1:]])


# -- the machine -------------------------------------------------------------------------------------


def machine() -> dict[str, str]:
    info = {}
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
        models = [l.split(":", 1)[1].strip() for l in cpuinfo.splitlines() if l.startswith("model name")]
        info["CPU"] = models[0] if models else platform.processor() or "unknown"
    except OSError:
        info["CPU"] = platform.processor() or "unknown"
    info["cores"] = f"{os.cpu_count()} logical (usable by this process: {len(os.sched_getaffinity(0))})"
    try:
        meminfo = Path("/proc/meminfo").read_text().splitlines()
        total = next(int(l.split()[1]) for l in meminfo if l.startswith("MemTotal:"))
        info["memory"] = f"{total / 1024 / 1024:.1f} GiB"
    except (OSError, StopIteration):
        info["memory"] = "unknown"
    info["Python"] = f"{platform.python_version()} ({sys.executable})"
    info["OS"] = f"{platform.system()} {platform.release()}"
    try:
        info["load average at start"] = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        pass
    versions = []
    from importlib.metadata import PackageNotFoundError, version

    for package in ("gunicorn", "Flask", "SQLAlchemy", "psycopg", "cryptography"):
        try:
            versions.append(f"{package} {version(package)}")
        except PackageNotFoundError:
            pass
    info["packages"] = ", ".join(versions)
    return info


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"
