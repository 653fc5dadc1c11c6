"""Faults, with the Procfile's own processes: kill -9 anywhere, an API that is down, a store
that goes away and comes back, and no webhook key at start-up.

1. Seeded kill -9 trials (ROOMWARDEN_FAULT_TRIALS, default 50; ROOMWARDEN_FAULT_SEED, the first
   seed; ROOMWARDEN_FAULT_PARALLEL trials at once, default 2): a client streams signed
   session-ended events (and repeats) at gunicorn, and at a random point a gunicorn worker, the
   gunicorn master with its workers, or the worker process is killed with SIGKILL and restarted
   (a worker kill is aimed between a call and its record, or at its decider mid-batch). Every 2xx
   must be in the store: decided, or still in the inbox while the worker is down; once settled,
   decided exactly once (one decision each, the inbox empty), every acknowledged room deactivated
   once (twice only when the kill fell between the call and its record), and nothing left
   pending. Totals go to test-artifacts/faults-summary.json.
2. The API answers 503 for a while: every action completes once it is back, once.
3. PostgreSQL behind a TCP proxy that is cut and restored: 503 with Retry-After while it is
   cut, nothing half written, 202 again afterwards without restarting anything; and a call made
   just as the store goes away is recorded once the store is back, not repeated.
4. The public-key endpoint down at start-up: signed deliveries kept unverified (202, never 503)
   and never acted on until a key can be had; then verified and decided, a forged one refused.
"""

from __future__ import annotations

import collections
import concurrent.futures
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests
from sqlalchemy import text

from service.errors import StoreUnavailable
from service.store import Store

from .conftest import API_KEY, ROOT, SECRET, SESSION_TIMES, ended
from .fakeapi import FakeVideoSDK, Reply
from .procs import Processes, free_port, service_env, wait_until_up

pytestmark = pytest.mark.e2e

TRIALS = int(os.environ.get("ROOMWARDEN_FAULT_TRIALS", "50"))
FIRST_SEED = int(os.environ.get("ROOMWARDEN_FAULT_SEED", "7100"))
PARALLEL = int(os.environ.get("ROOMWARDEN_FAULT_PARALLEL", "2"))  # trials run at once
SUMMARY = ROOT / "test-artifacts" / "faults-summary.json"
ADMIN_TOKEN = "admin-token-for-fault-tests-0123"  # /readyz details are the admin's
WEBHOOK = "/webhooks/videosdk"
DEACTIVATE = "/v2/rooms/deactivate"
KILL_TARGETS = ("gunicorn-worker", "gunicorn-master", "worker")
GIVE_UP_AFTER = 40.0  # seconds a sender keeps retrying one event, as VideoSDK would, then gives up


def _children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return sorted(int(p) for p in out.split())


def _gone(pid: int) -> bool:
    """Dead: no process, or a zombie (which holds no socket and runs no code)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return True


def _gunicorn_master(web: subprocess.Popen) -> int:
    """`shell=True` may leave a shell above the master (dash does not always exec)."""
    argv0 = Path(f"/proc/{web.pid}/cmdline").read_bytes().split(b"\0")[0]
    if os.path.basename(argv0) in (b"sh", b"dash", b"bash"):
        deadline = time.monotonic() + 10
        while not (kids := _children(web.pid)) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(kids) == 1, f"expected one gunicorn master under the shell, found {kids}"
        return kids[0]
    return web.pid


def _web_workers(master: int, count: int, timeout: float = 30) -> list[int]:
    """The master's worker processes, once `count` of them are running."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        kids = [pid for pid in _children(master) if not _gone(pid)]
        if len(kids) == count:
            return kids
        time.sleep(0.02)
    raise AssertionError(f"gunicorn master {master} does not have {count} workers: {_children(master)}")


def _wait_worker_started(process: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"worker exited with {process.returncode}:\n{Path(process.log_path).read_text()}")
        if "started" in Path(process.log_path).read_text(errors="replace"):
            return
        time.sleep(0.02)
    raise AssertionError(f"worker not started after {timeout}s:\n{Path(process.log_path).read_text()}")


# -- what became of a delivery, read from the store ---------------------------------------------


def wait_until_decided(store: Store, timeout: float) -> bool:
    """Bounded: True once the inbox is empty, every acknowledged delivery taken out and decided."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if store.inbox.inbox_stats()[0] == 0:
                return True
        except StoreUnavailable:  # SQLite locked past its timeout on a loaded machine: look again
            pass
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


def whereabouts(store: Store, ids) -> dict[str, str | None]:
    """Where each delivery is: "decided" (in `deliveries`), "inbox" (kept, not decided yet) or
    None: lost. The inbox is read first: the decider moves a row from it to `deliveries` in one
    transaction, so a row that moves meanwhile is seen in one or the other, never in neither."""
    with store.db.engine.connect() as conn:
        kept = {delivery for (delivery,) in conn.execute(text("SELECT id FROM inbox"))}
    return {delivery: "decided" if store.history.delivery(delivery) is not None else "inbox" if delivery in kept else None
            for delivery in ids}


def decided_as(store: Store) -> dict[str, list[str]]:
    """Every decided delivery, with the outcomes of its decision rows in the order made ([]: none).
    What the webhook's answer carried when it decided in the request."""
    outcomes: dict[str, list[str]] = {d["id"]: [] for d in store.history.deliveries(limit=1_000_000)}
    for decision in store.history.decisions():
        outcomes.setdefault(decision["delivery_id"], []).append(decision["outcome"])
    return outcomes


def _wait_for_log(process: subprocess.Popen, text: str, timeout: float) -> bool:
    """Bounded: until `text` is in the process's log, looked at every millisecond or so."""
    deadline = time.monotonic() + timeout
    with open(process.log_path, "rb") as log:
        seen = b""
        while time.monotonic() < deadline:
            seen = seen[-len(text):] + log.read()
            if text.encode() in seen:
                return True
            time.sleep(0.001)
    return False


class Sender:
    """Posts signed bodies the way VideoSDK would: retried on no answer or 503 until a 2xx
    comes, or GIVE_UP_AFTER seconds have passed. Any other answer is kept as unexpected."""

    def __init__(self, base: str, sign, *, retry_pause: float = 0.05):
        self.base = base
        self.sign = sign
        self.retry_pause = retry_pause
        self.local = threading.local()
        self.sessions: list[requests.Session] = []

    def _session(self) -> requests.Session:
        if not hasattr(self.local, "http"):
            self.local.http = requests.Session()
            self.sessions.append(self.local.http)
        return self.local.http

    def close(self) -> None:
        """Close the kept-alive connections, so gunicorn can stop without waiting for them."""
        for session in self.sessions:
            session.close()

    def deliver(self, body: bytes) -> dict:
        record = {"status": None, "delivery": None, "verified": None, "no_answer": 0, "unavailable": 0,
                  "gave_up": False}
        headers = {"Content-Type": "application/json", "videosdk-signature": self.sign(body)}
        deadline = time.monotonic() + GIVE_UP_AFTER
        while True:
            try:
                response = self._session().post(self.base + WEBHOOK, data=body, headers=headers, timeout=10)
            except requests.RequestException:
                record["no_answer"] += 1
            else:
                if 200 <= response.status_code < 300:
                    # The answer says only that the delivery is kept: it is decided behind the
                    # request, and its decisions are read from the store (decided_as, below).
                    answer = response.json()
                    record.update(status=response.status_code, delivery=answer["delivery"],
                                  verified=answer["verified"])
                    return record
                if response.status_code != 503:
                    record.update(status=response.status_code, body=response.text[:300])
                    return record
                record["unavailable"] += 1
                if "Retry-After" not in response.headers:
                    record.update(status=503, body="503 without Retry-After")
                    return record
            if time.monotonic() > deadline:
                record["gave_up"] = True
                return record
            time.sleep(self.retry_pause)


# -- 1. kill -9 trials ---------------------------------------------------------------------------


class TrialFake(FakeVideoSDK):
    """The fake API, whose deactivate answers can be slowed by `delay` seconds, and whose
    `hold_nth` deactivate call (counting from 1) is held unanswered until `hold` is set. `entered`
    is set when that call has arrived: its worker has made the call and cannot have recorded it."""

    def __init__(self, *args):
        super().__init__(*args)
        self.delay = 0.0
        self.hold_nth: int | None = None
        self.hold = threading.Event()
        self.entered = threading.Event()
        self._count_lock = threading.Lock()
        self._count = 0

    def start(self) -> str:
        url = super().start()
        default = self._server.handle_error

        def handle_error(request, client_address):  # a killed client's connection: not an error
            if not isinstance(sys.exc_info()[1], ConnectionError):
                default(request, client_address)

        self._server.handle_error = handle_error
        return url

    def _default(self, method, path, headers, body, params=None):
        reply, auth_error = super()._default(method, path, headers, body, params)
        if path == DEACTIVATE:
            with self._count_lock:
                self._count += 1
                n = self._count
            reply.delay = self.delay
            if n == self.hold_nth:
                self.entered.set()
                self.hold.wait(30)
        return reply, auth_error


def _trial_env(workdir: Path, fake: FakeVideoSDK, rules_file: Path) -> dict[str, str]:
    return service_env(api_key=API_KEY, secret=SECRET, api_base=fake.base_url, rules_file=rules_file,
                       database_url=f"sqlite:///{workdir}/trial.db",
                       ACTION_LEASE_SECONDS="2.1",  # must exceed twice the timeout
                       PROMETHEUS_MULTIPROC_DIR=str(workdir / "metrics"))


def run_trial(seed: int, workdir: Path, public_pem: str, sign, rules_file: Path) -> dict:
    rng = random.Random(seed)
    target = rng.choice(KILL_TARGETS)
    mid_call = target == "worker" and rng.random() < 0.6  # aim the kill between call and record
    rooms = [f"t{seed}-{i:03d}-room" for i in range(rng.randint(20, 32))]
    events = [(room, False) for room in rooms]
    for room in rng.sample(rooms, rng.randint(2, 6)):  # repeats, each somewhere after the first
        events.insert(rng.randint(rooms.index(room) + 1, len(events)), (room, True))
    kill_after = rng.randint(2, len(events) - 4)  # acknowledged deliveries before the kill
    hold_nth = rng.randint(2, len(rooms) - 2) if mid_call else None  # or: kill during this API call
    pause = rng.uniform(0.0, 0.02)
    down_for = rng.uniform(0.0, 0.4)  # how long a killed process stays down
    # A worker kill not aimed at a call is aimed at its decider mid-batch: the worker is paused
    # (SIGSTOP) while a backlog builds up in the inbox, then let go, and killed as soon as it is seen
    # deciding the backlog, in one transaction. (No draw: each seed's choices are what they were.)
    mid_batch = target == "worker" and not mid_call
    trial = {"seed": seed, "target": target, "mid_call": mid_call, "mid_batch": mid_batch, "events": len(events),
             "rooms": len(rooms), "kill_after": None if mid_call else kill_after, "kill_in_call": hold_nth,
             "problems": []}
    problems = trial["problems"]

    workdir.mkdir(parents=True)
    fake = TrialFake(API_KEY, SECRET, public_pem)
    fake.start()
    procs = Processes(workdir, _trial_env(workdir, fake, rules_file))
    base = f"http://127.0.0.1:{procs.env['PORT']}"
    store = None
    try:
        web = procs.start("web")
        worker = procs.start("worker")  # at once: both migrate the fresh file, one after the other
        wait_until_up(base, web)
        store = Store.from_url(procs.env["DATABASE_URL"])  # the test's own look at the file
        fake.delay = 0.0 if mid_call else rng.choice([0.0, 0.0, 0.02])
        fake.hold_nth = hold_nth
        sender = Sender(base, sign)
        results: list[tuple[str, bool, dict]] = []
        lock = threading.Lock()
        queue = collections.deque(events)

        def send_all():
            while True:
                with lock:
                    if not queue:
                        return
                    room, repeat = queue.popleft()
                record = sender.deliver(ended(room, "s-1", **SESSION_TIMES))
                with lock:
                    results.append((room, repeat, record))

        if mid_batch:
            _wait_worker_started(worker)  # not paused holding the write lock of its migration
            os.killpg(worker.pid, signal.SIGSTOP)
        threads = [threading.Thread(target=send_all, daemon=True) for _ in range(2)]
        for thread in threads:
            thread.start()

        def acked() -> int:
            with lock:
                return sum(1 for _, _, r in results if r["delivery"])

        lost_at_kill: list[str] = []

        def look_after_kill(what: str) -> None:
            """Every delivery acknowledged so far is decided, or kept in the inbox for the decider."""
            with lock:
                so_far = [r["delivery"] for _, _, r in results if r["delivery"]]
            where = whereabouts(store, so_far)
            lost_at_kill.extend(d for d, w in where.items() if w is None)
            trial["in_inbox_after_kill"] = sum(1 for w in where.values() if w == "inbox")
            if lost_at_kill:
                problems.append(f"acknowledged deliveries neither decided nor in the inbox {what}: {lost_at_kill}")

        if mid_call:
            if not fake.entered.wait(60):
                problems.append(f"deactivate call {hold_nth} never arrived")
        else:
            deadline = time.monotonic() + 60
            while acked() < kill_after and time.monotonic() < deadline and any(t.is_alive() for t in threads):
                time.sleep(0.005)
            time.sleep(pause)

        if target == "gunicorn-worker":
            master = _gunicorn_master(web)
            victim = rng.choice(_web_workers(master, 2))
            os.kill(victim, signal.SIGKILL)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:  # the master forks a new one in its place
                kids = [pid for pid in _children(master) if not _gone(pid)]
                if len(kids) == 2 and victim not in kids:
                    break
                time.sleep(0.02)
            else:
                problems.append(f"gunicorn did not replace killed worker {victim}")
            trial["killed"] = [victim]
            look_after_kill("after a gunicorn worker was killed")
        elif target == "gunicorn-master":
            master = _gunicorn_master(web)
            old = [master, *_web_workers(master, 2)]
            procs.kill(web)  # SIGKILL to the whole process group: the master and its workers
            deadline = time.monotonic() + 10
            while not all(_gone(pid) for pid in old) and time.monotonic() < deadline:
                time.sleep(0.01)
            if not all(_gone(pid) for pid in old):
                problems.append(f"gunicorn processes survived kill -9: {[p for p in old if not _gone(p)]}")
            trial["killed"] = old
            look_after_kill("while gunicorn was down")
            time.sleep(down_for)
            web = procs.start("web")
            wait_until_up(base, web)
        else:
            if mid_batch:
                os.killpg(worker.pid, signal.SIGCONT)  # it takes the backlog in one batch...
                _wait_for_log(worker, '"logger": "roomwarden.decider"', timeout=10)  # ...and is killed
            procs.kill(worker)  # SIGKILL; with mid_call, its call has reached the API and is unanswered
            fake.hold.set()  # the API answers it (to nobody) and records the room deactivated
            trial["killed"] = [worker.pid]
            look_after_kill("while the worker (and its decider) was down")
            if mid_batch:
                # The decider logs each delivery as it decides it, inside the batch's transaction:
                # one logged and not in `deliveries` shows the kill fell in the batch and undid it.
                log = Path(worker.log_path).read_text(errors="replace")
                logged = set(re.findall(r'"delivery": "([0-9a-f]+)"', log))
                trial["decided_then_rolled_back"] = sum(1 for d in logged if store.history.delivery(d) is None)
            time.sleep(down_for)
            worker = procs.start("worker")

        for thread in threads:
            thread.join(GIVE_UP_AFTER * len(events))
        if any(t.is_alive() for t in threads):
            problems.append("senders did not finish")

        # -- what the client saw ------------------------------------------------------------
        acks = [(room, r) for room, _, r in results if r["delivery"]]
        unexpected = [(room, r) for room, _, r in results if not r["delivery"] and not r["gave_up"]]
        gave_up = [room for room, _, r in results if r["gave_up"]]
        if unexpected:
            problems.append(f"answers other than 2xx or 503: {unexpected[:3]}")
        if gave_up:
            problems.append(f"gave up on {len(gave_up)} events: {gave_up[:3]}")
        if len(results) != len(events):
            problems.append(f"{len(results)} of {len(events)} events were sent")
        unverified = [(room, r["verified"]) for room, r in acks if r["verified"] != "yes"]
        if unverified:
            problems.append(f"acknowledged without verifying: {unverified[:3]}")
        acked_rooms = {room for room, _ in acks}
        trial.update(acknowledged=len(acks), retried_no_answer=sum(r["no_answer"] for _, _, r in results),
                     retried_503=sum(r["unavailable"] for _, _, r in results))

        # -- what the store and the API saw ----------------------------------------------------
        # Decided behind the request: once the (restarted) worker's decider has emptied the
        # inbox, every acknowledged delivery is in `deliveries`, decided exactly once.
        if not wait_until_decided(store, 60):
            problems.append(f"inbox not emptied within 60 s: {store.inbox.inbox_stats()[0]} deliveries undecided")
        where = whereabouts(store, [r["delivery"] for _, r in acks])
        lost = sorted(set(lost_at_kill) | {d for d, w in where.items() if w is None})
        trial["lost"] = len(lost)
        if lost:
            problems.append(f"acknowledged deliveries missing from the store: {lost}")
        undecided = [d for d, w in where.items() if w == "inbox"]
        if undecided:
            problems.append(f"acknowledged deliveries still undecided in the inbox: {undecided[:3]}")
        outcomes = decided_as(store)
        bad_outcomes = [(room, r["delivery"], outcomes[r["delivery"]]) for room, r in acks
                        if r["delivery"] in outcomes and outcomes[r["delivery"]] not in (["scheduled"], ["duplicate"])]
        if bad_outcomes:
            problems.append(f"unexpected decisions: {bad_outcomes[:3]}")
        # Exactly once, for what was stored without its answer reaching the client too (a gunicorn
        # worker killed between the append and the answer): one decision row per delivery.
        not_once = {d: o for d, o in outcomes.items() if len(o) != 1}
        if not_once:
            problems.append(f"deliveries not decided exactly once: {dict(list(not_once.items())[:3])}")

        def settled() -> bool:
            calls = collections.Counter(fake.deactivations())
            actions = store.actions.actions(limit=10_000)
            return acked_rooms <= set(calls) and bool(actions) and all(
                a["status"] != "pending" for a in actions)

        if not fake.wait_for(settled, timeout=30):
            problems.append(f"not settled: actions {store.actions.counts()}, "
                            f"{len(acked_rooms - set(fake.deactivations()))} rooms not deactivated")
        actions = {a["room_id"]: a for a in store.actions.actions(limit=10_000)}
        counts = store.actions.counts()
        if counts != {"done": len(acked_rooms)}:
            problems.append(f"actions by status {counts}, expected {len(acked_rooms)} done and none pending")
        if set(actions) != acked_rooms:
            problems.append(f"actions for rooms never acknowledged or missing: "
                            f"{sorted(set(actions) ^ acked_rooms)[:3]}")
        calls = collections.Counter(fake.deactivations(status=None))
        if set(calls) - set(rooms):
            problems.append(f"deactivate calls for rooms never sent: {sorted(set(calls) - set(rooms))}")
        if any(c.status != 200 for c in fake.calls_to(DEACTIVATE)):
            problems.append("a deactivate call was not answered 200")
        missing = sorted(acked_rooms - set(calls))
        if missing:
            problems.append(f"acknowledged rooms never deactivated: {missing}")
        # A call is repeated only when a worker did not learn or record how the previous one went:
        # a claim with no recorded attempt (its worker was killed), or an attempt with no answer.
        repeated = sorted(room for room, n in calls.items() if n > 1)
        trial["repeated_calls"] = sum(calls[room] - 1 for room in repeated)
        after_kill = []
        for room, action in actions.items():
            recorded = store.actions.attempts(action["id"])
            unrecorded = action["attempts"] - len(recorded)
            unanswered = sum(1 for a in recorded if a["http_status"] is None)
            if unrecorded and target != "worker":
                problems.append(f"room {room}: {unrecorded} claim(s) never recorded, yet no worker was killed")
            if calls[room] - 1 > unrecorded + unanswered:
                problems.append(f"room {room} deactivated {calls[room]} times, but its action shows "
                                f"{action['attempts']} claims and attempts {[a['http_status'] for a in recorded]}")
            if calls[room] > 1 and unrecorded:
                after_kill.append(room)
        trial["repeated_after_kill"] = len(after_kill)
        if any(calls[room] > 2 for room in repeated):
            problems.append(f"a room was deactivated more than twice: {dict(calls)}")
        if len(after_kill) > 1:
            problems.append(f"one kill of a one-at-a-time worker repeated {len(after_kill)} calls: {after_kill}")
        if mid_call and len(after_kill) != 1:
            problems.append(f"the worker was killed after its call reached the API and before it was "
                            f"recorded, so exactly one call must be repeated; repeated: {repeated}")
    except Exception as exc:  # noqa: BLE001 - a trial that breaks is a failed trial, with its seed
        problems.append(f"trial raised {type(exc).__name__}: {exc}"[:2000])
    finally:
        fake.hold.set()
        if store is not None:
            store.close()
        for process in procs.running:
            if process.poll() is None:
                procs.kill(process)
        fake.stop()
    return trial


def test_kill_minus_nine_anywhere_loses_no_acknowledged_delivery(tmp_path, public_pem, sign, rules_file):
    seeds = [FIRST_SEED + i for i in range(TRIALS)]
    print(f"\nkill -9 trials: {TRIALS}, seeds {seeds[0]}..{seeds[-1]} "
          f"(rerun one with ROOMWARDEN_FAULT_SEED=<seed> ROOMWARDEN_FAULT_TRIALS=1)")
    trials = []
    with concurrent.futures.ThreadPoolExecutor(PARALLEL) as pool:  # independent: own files, ports, fake
        futures = [pool.submit(run_trial, seed, tmp_path / f"trial-{seed}", public_pem, sign, rules_file)
                   for seed in seeds]
        for future in concurrent.futures.as_completed(futures):
            trial = future.result()
            trials.append(trial)
            print(f"  seed {trial['seed']}: kill {trial['target']}{' mid-call' if trial['mid_call'] else ''}"
                  f"{' mid-batch' if trial['mid_batch'] else ''}, "
                  f"{trial.get('acknowledged', '?')} acked, lost {trial.get('lost', '?')}, "
                  f"repeated calls {trial.get('repeated_calls', '?')}"
                  f"{', PROBLEMS: ' + '; '.join(trial['problems']) if trial['problems'] else ''}", flush=True)

    trials.sort(key=lambda t: t["seed"])
    failed = [t for t in trials if t["problems"]]
    totals = {
        "trials": len(trials),
        "seeds": seeds,
        "kills": dict(collections.Counter(t["target"] for t in trials)),
        "kills_between_call_and_record": sum(t["mid_call"] for t in trials),
        "kills_aimed_at_a_deciding_batch": sum(t["mid_batch"] for t in trials),
        "kills_that_undid_a_deciding_batch": sum(1 for t in trials if t.get("decided_then_rolled_back")),
        "deliveries_acknowledged": sum(t.get("acknowledged", 0) for t in trials),
        "deliveries_lost": sum(t.get("lost", 0) for t in trials),
        "repeated_calls": sum(t.get("repeated_calls", 0) for t in trials),
        "repeated_calls_after_kill_between_call_and_record": sum(t.get("repeated_after_kill", 0) for t in trials),
        "trials_with_a_repeated_call": sum(1 for t in trials if t.get("repeated_calls")),
        "retries_after_no_answer": sum(t.get("retried_no_answer", 0) for t in trials),
        "retries_after_503": sum(t.get("retried_503", 0) for t in trials),
        "failed_trials": [t["seed"] for t in failed],
    }
    SUMMARY.parent.mkdir(parents=True, exist_ok=True)
    SUMMARY.write_text(json.dumps({**totals, "per_trial": trials}, indent=2) + "\n")
    print("summary:", json.dumps({k: v for k, v in totals.items() if k != "seeds"}))

    assert not failed, "\n".join(f"seed {t['seed']} ({t['target']}): {'; '.join(t['problems'])}" for t in failed)
    assert totals["deliveries_lost"] == 0
    assert totals["deliveries_acknowledged"] >= sum(t["rooms"] for t in trials)  # each room, plus repeats
    # Each kill aimed between a call and its record repeated that one call; no other kind of kill did.
    after_kill = totals["repeated_calls_after_kill_between_call_and_record"]
    assert totals["kills_between_call_and_record"] <= after_kill <= totals["kills"].get("worker", 0)
    if TRIALS >= 20:  # the seeds cover every kind of kill, and the client saw the outages
        assert set(totals["kills"]) == set(KILL_TARGETS), totals["kills"]
        assert totals["kills_between_call_and_record"] > 0
        assert totals["retries_after_no_answer"] > 0


# -- 2. the API down for a while -------------------------------------------------------------------


def test_api_down_then_back_completes_every_action_once(processes, fake_api, sign, tmp_path):
    failures = 8
    fake_api.script(DEACTIVATE, *[Reply(503, {"message": "maintenance"}) for _ in range(failures)])
    processes.env["PROMETHEUS_MULTIPROC_DIR"] = str(tmp_path / "metrics")
    web = processes.start("web")
    base = f"http://127.0.0.1:{processes.env['PORT']}"
    wait_until_up(base, web)
    # A short circuit-breaker cooldown (where the service has one), so the test is not slow.
    processes.start("worker", BREAKER_COOLDOWN_SECONDS="0.3")

    rooms = [f"down-down-{i:04d}" for i in range(4)]
    sender = Sender(base, sign)
    records = [sender.deliver(ended(room, "s-1", **SESSION_TIMES)) for room in rooms]
    sender.close()
    assert [r["status"] for r in records] == [202] * len(rooms)  # accepted while the API is down

    store = Store.from_url(processes.env["DATABASE_URL"])
    try:
        assert fake_api.wait_for(lambda: store.actions.counts() == {"done": len(rooms)}, timeout=90), \
            (store.actions.counts(), [(c.path, c.status) for c in fake_api.calls])
        statuses = [c.status for c in fake_api.calls_to(DEACTIVATE)]
        assert statuses.count(503) == failures  # the outage was really seen...
        assert sorted(fake_api.deactivations()) == rooms  # ...and then each room once, with a 200
        made = len(fake_api.calls_to(DEACTIVATE))
        time.sleep(1.0)  # the worker keeps polling: nothing more is called
        assert len(fake_api.calls_to(DEACTIVATE)) == made == failures + len(rooms)
        for action in store.actions.actions():
            recorded = store.actions.attempts(action["id"])
            # Every call recorded, in order: the 503s, then the one 200; claims match records.
            assert [a["http_status"] for a in recorded][-1] == 200
            assert set(a["http_status"] for a in recorded[:-1]) <= {503}
            assert action["attempts"] == len(recorded)
            assert [a["outcome"] for a in recorded] == ["retry"] * (len(recorded) - 1) + ["done"]
        assert sum(len(store.actions.attempts(a["id"])) for a in store.actions.actions()) == failures + len(rooms)
    finally:
        store.close()


# -- 3. the store unreachable, then back -------------------------------------------------------------


class TcpProxy:
    """A TCP relay on loopback. `cut()` closes every relayed connection and stops listening, so
    new connections are refused; `restore()` listens on the same port again."""

    def __init__(self, target: tuple[str, int]):
        self.target = target
        self.port = free_port()
        self._lock = threading.Lock()
        self._pairs: set[tuple[socket.socket, socket.socket]] = set()
        self._listener: socket.socket | None = None
        self._acceptor: threading.Thread | None = None
        self.up = False

    def start(self) -> "TcpProxy":
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        listener.settimeout(0.05)
        self._listener, self.up = listener, True
        self._acceptor = threading.Thread(target=self._accept, args=(listener,), daemon=True)
        self._acceptor.start()
        return self

    restore = start

    def _accept(self, listener: socket.socket) -> None:
        while self.up:
            try:
                client, _ = listener.accept()
            except socket.timeout:
                continue
            except OSError:
                break
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            client.settimeout(None)
            upstream.settimeout(None)
            pair = (client, upstream)
            with self._lock:
                relay = self.up
                if relay:
                    self._pairs.add(pair)
            if not relay:  # cut meanwhile. (Closed outside the lock: _close takes it, and it is no RLock.)
                self._close(pair)
                break
            for src, dst in (pair, pair[::-1]):
                threading.Thread(target=self._pump, args=(src, dst, pair), daemon=True).start()
        listener.close()

    def _pump(self, src: socket.socket, dst: socket.socket, pair) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        self._close(pair)

    def _close(self, pair) -> None:
        with self._lock:
            self._pairs.discard(pair)
        for sock in pair:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def cut(self) -> None:
        self.up = False
        self._acceptor.join(5)  # the acceptor closes the listener as it leaves
        with self._lock:
            pairs = list(self._pairs)
        for pair in pairs:
            self._close(pair)

    def refuses(self) -> bool:
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=2).close()
            return False
        except ConnectionRefusedError:
            return True


def _pg_rows(url: str, sql: str, *args) -> list[tuple]:
    import psycopg

    with psycopg.connect(url, connect_timeout=5) as conn:
        return conn.execute(sql, args or None).fetchall()


def test_postgres_cut_and_restored_without_restarting(processes, fake_api, sign, pg_url, tmp_path):
    from sqlalchemy.engine import make_url

    real = make_url(pg_url)
    proxy = TcpProxy((real.host or "127.0.0.1", real.port or 5432)).start()
    via_proxy = real.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    processes.env.update(DATABASE_URL=via_proxy, PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "metrics"))
    http, sender = requests.Session(), None
    try:
        web = processes.start("web", ADMIN_TOKEN=ADMIN_TOKEN)
        base = f"http://127.0.0.1:{processes.env['PORT']}"
        wait_until_up(base, web)
        worker = processes.start("worker")
        _wait_worker_started(worker)
        master = _gunicorn_master(web)
        web_workers = _web_workers(master, 2)
        sender = Sender(base, sign)

        def post_once(room: str) -> requests.Response:
            body = ended(room, "s-1", **SESSION_TIMES)
            return http.post(base + WEBHOOK, data=body, timeout=30, headers={
                "Content-Type": "application/json", "videosdk-signature": sign(body)})

        acknowledged: list[str] = []  # every delivery id a 2xx answered

        def deliver_all(rooms: list[str]) -> list[int]:
            records = [sender.deliver(ended(room, "s-1", **SESSION_TIMES)) for room in rooms]
            acknowledged.extend(r["delivery"] for r in records if r["delivery"])
            return [r["status"] for r in records]

        before = [f"pg-before-{i}" for i in range(3)]
        assert deliver_all(before) == [202] * 3

        # A stream that runs across the cut and the restore: each event posted once.
        stream: list[tuple[str, int | str, str | None]] = []
        stop = threading.Event()

        def stream_events():
            local = requests.Session()
            i = 0
            while not stop.is_set():
                room, body = f"pg-stream-{i:04d}", ended(f"pg-stream-{i:04d}", "s-1", **SESSION_TIMES)
                i += 1
                try:
                    r = local.post(base + WEBHOOK, data=body, timeout=30, headers={
                        "Content-Type": "application/json", "videosdk-signature": sign(body)})
                    stream.append((room, r.status_code, r.headers.get("Retry-After")))
                    if r.status_code == 202:
                        acknowledged.append(r.json()["delivery"])
                except requests.RequestException as exc:
                    stream.append((room, f"no answer: {type(exc).__name__}", None))
                time.sleep(0.01)
            local.close()

        streamer = threading.Thread(target=stream_events, daemon=True)
        streamer.start()
        time.sleep(0.3)

        proxy.cut()
        assert proxy.refuses()
        cut_rooms = [f"pg-cut-{i}" for i in range(6)]
        during = []
        for room in cut_rooms:
            r = post_once(room)
            during.append((r.status_code, r.headers.get("Retry-After"), r.json().get("error", "")))
            time.sleep(0.1)
        assert all(status == 503 for status, _, _ in during), during
        assert all(retry_after and int(retry_after) > 0 for _, retry_after, _ in during), during
        ready = http.get(base + "/readyz", timeout=30, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
        assert ready.status_code == 503 and ready.json()["store"] != "ok"
        time.sleep(1.0)  # the worker meets the outage too

        proxy.restore()
        first = None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            r = post_once(cut_rooms[0])
            if r.status_code == 202:
                first = r
                acknowledged.append(r.json()["delivery"])
                break
            assert r.status_code == 503, (r.status_code, r.text)
            time.sleep(0.2)
        assert first is not None, "deliveries were not accepted again within 30 s of the store coming back"
        time.sleep(0.3)
        stop.set()
        streamer.join(60)

        # Nothing was restarted: the same master, web workers and worker process serve on.
        assert web.poll() is None and worker.poll() is None
        assert _gunicorn_master(web) == master and _web_workers(master, 2) == web_workers

        # Only 202 and 503 (with Retry-After) were ever answered; never another 5xx, never silence.
        assert {status for _, status, _ in stream} <= {202, 503}, collections.Counter(s for _, s, _ in stream)
        assert all(ra for _, status, ra in stream if status == 503)
        assert any(status == 503 for _, status, _ in stream), "the stream never met the outage"
        assert any(status == 202 for _, status, _ in stream[-5:]), stream[-5:]

        # Decided behind the request: the worker's decider, past the outage too, empties the inbox.
        def inbox_depth() -> int:
            return _pg_rows(pg_url, "SELECT count(*) FROM inbox")[0][0]

        assert fake_api.wait_for(lambda: inbox_depth() == 0, timeout=60), f"{inbox_depth()} still undecided"

        # Nothing half written: what a 503 answered was not stored (cut rooms), and every stored
        # delivery has its decision, its action and its room, whole.
        stored_cut = dict(_pg_rows(pg_url, "SELECT room_id, count(*) FROM deliveries "
                                           "WHERE room_id LIKE 'pg-cut-%' GROUP BY room_id"))
        assert stored_cut == {cut_rooms[0]: 1}, stored_cut  # only the one retried after the restore
        orphans = _pg_rows(pg_url, """
            SELECT d.id, d.room_id FROM deliveries d
            WHERE (SELECT count(*) FROM decisions c WHERE c.delivery_id = d.id) != 1
               OR NOT EXISTS (SELECT 1 FROM actions a WHERE a.room_id = d.room_id)
               OR NOT EXISTS (SELECT 1 FROM rooms r WHERE r.room_id = d.room_id)""")
        assert orphans == []
        assert _pg_rows(pg_url, """
            SELECT a.id::text FROM actions a WHERE NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.id = a.delivery_id)
            UNION ALL SELECT r.room_id FROM rooms r
            WHERE NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.id = r.last_delivery_id)""") == []

        # A 503 whose transaction did commit (the connection was cut as the commit's answer came
        # back) is possible, and harmless: the retry is one more delivery, its decision a duplicate.
        stored = {room for (room,) in _pg_rows(pg_url, "SELECT DISTINCT room_id FROM deliveries")}
        committed_503 = sorted(stored & {room for room, status, _ in stream if status != 202})

        # The sender retries whatever got a 503: all accepted now, and each room acted on once.
        retried = cut_rooms[1:] + [room for room, status, _ in stream if status != 202]
        assert deliver_all(retried) == [202] * len(retried)
        accepted = set(before + cut_rooms + [room for room, _, _ in stream])
        assert fake_api.wait_for(lambda: set(fake_api.deactivations()) == accepted, timeout=60), \
            sorted(accepted ^ set(fake_api.deactivations()))
        assert fake_api.wait_for(lambda: _pg_rows(pg_url, "SELECT status, count(*) FROM actions GROUP BY status")
                                 == [("done", len(accepted))], timeout=30)
        # Once each, even for a call made just as the store went away: the worker holds its
        # result until the store is back (see the next test), and no other worker could claim it.
        calls = collections.Counter(fake_api.deactivations(status=None))
        assert {room: n for room, n in calls.items() if n > 1} == {}
        recorded = dict(_pg_rows(pg_url, "SELECT a.room_id, count(t.id) FROM actions a "
                                         "LEFT JOIN attempts t ON t.action_id = a.id GROUP BY a.room_id"))
        assert set(recorded.values()) == {1}, recorded
        # Settled: every acknowledged delivery decided, each exactly once, and nothing left undecided.
        assert inbox_depth() == 0
        decided_count = dict(_pg_rows(pg_url, "SELECT d.id, count(c.id) FROM deliveries d "
                                              "LEFT JOIN decisions c ON c.delivery_id = d.id GROUP BY d.id"))
        assert set(acknowledged) <= set(decided_count), sorted(set(acknowledged) - set(decided_count))
        assert {d: n for d, n in decided_count.items() if n != 1} == {}
        print(f"\nstore cut: {len(stream)} streamed, {sum(s == 503 for _, s, _ in stream)} answered 503 "
              f"({len(committed_503)} of them committed all the same), {len(accepted)} rooms deactivated, "
              "no call repeated")
        assert web.poll() is None and worker.poll() is None and _web_workers(master, 2) == web_workers
    finally:
        http.close()
        if sender is not None:
            sender.close()
        proxy.cut()


def test_a_call_made_just_before_the_store_goes_away_is_recorded_not_repeated(
        processes, public_pem, sign, pg_url, tmp_path):
    from sqlalchemy.engine import make_url

    fake = TrialFake(API_KEY, SECRET, public_pem)
    fake.start()
    fake.hold_nth = 1  # the API answers the first deactivate only once the test says so
    real = make_url(pg_url)
    proxy = TcpProxy((real.host or "127.0.0.1", real.port or 5432)).start()
    via_proxy = real.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    lease = 4.5
    processes.env.update(DATABASE_URL=via_proxy, VIDEOSDK_API_BASE=fake.base_url,
                         VIDEOSDK_TIMEOUT_SECONDS="2", ACTION_LEASE_SECONDS=str(lease),
                         PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "metrics"))
    try:
        web = processes.start("web")
        base = f"http://127.0.0.1:{processes.env['PORT']}"
        wait_until_up(base, web)
        sender = Sender(base, sign)
        assert sender.deliver(ended("lost-lost-0001", "s-1", **SESSION_TIMES))["status"] == 202
        sender.close()
        worker = processes.start("worker")
        assert fake.entered.wait(30), "the worker never called the API"
        proxy.cut()  # the call is at the API: the worker has made it and not recorded it
        fake.hold.set()  # ...and the API answers 200, well within the worker's timeout
        assert fake.wait_for(lambda: fake.deactivations() == ["lost-lost-0001"], timeout=10)
        time.sleep(lease + 1.0)  # the outage outlasts the lease
        proxy.restore()
        assert fake.wait_for(lambda: _pg_rows(pg_url, "SELECT status FROM actions") == [("done",)], timeout=30)
        time.sleep(0.5)
        assert worker.poll() is None
        [(claims,)] = _pg_rows(pg_url, "SELECT attempts FROM actions")
        recorded = [status for (status,) in _pg_rows(pg_url, "SELECT http_status FROM attempts ORDER BY id")]
        # The worker held the API's answer: it should record it once the store is back, not call again.
        # (Today: two calls, two claims, and only the second call's attempt recorded.)
        assert (fake.deactivations(status=None), claims, recorded) == (["lost-lost-0001"], 1, [200])
    finally:
        proxy.cut()
        fake.hold.set()
        processes.stop_all()
        fake.stop()


# -- 4. no webhook key at start-up ---------------------------------------------------------------------


def test_no_key_at_start_keeps_deliveries_unverified_then_verifies_and_decides_them(
        processes, fake_api, sign, tmp_path):
    fake_api.serve_public_key = False
    processes.env["PROMETHEUS_MULTIPROC_DIR"] = str(tmp_path / "metrics")
    processes.env.pop("VIDEOSDK_WEBHOOK_PUBLIC_KEY", None)  # nothing pinned: the key must be fetched
    web = processes.start("web")
    base = f"http://127.0.0.1:{processes.env['PORT']}"
    wait_until_up(base, web)  # it starts without the key
    worker = processes.start("worker")
    _wait_worker_started(worker)

    rooms = [f"keyk-keyk-{i:04d}" for i in range(3)]
    forged_room = "keyk-forg-0001"
    http = requests.Session()

    def post_once(body: bytes, signature: str) -> requests.Response:
        return http.post(base + WEBHOOK, data=body, timeout=30, headers={
            "Content-Type": "application/json", "videosdk-signature": signature})

    def forge() -> requests.Response:  # a well-formed signature, but over another body
        return post_once(ended(forged_room, "s-1", **SESSION_TIMES), sign(ended("other", "s-1", **SESSION_TIMES)))

    # No key: every signed body is kept, unverified (VideoSDK documents no retries: a 503 would
    # lose it), a forged one too, since nothing can tell them apart yet.
    accepted = {}
    for room in rooms:
        r = post_once(ended(room, "s-1", **SESSION_TIMES), sign(ended(room, "s-1", **SESSION_TIMES)))
        assert (r.status_code, r.json().get("verified")) == (202, "later"), (r.status_code, r.text)
        accepted[room] = r.json()["delivery"]
    r = forge()
    assert (r.status_code, r.json().get("verified")) == (202, "later"), (r.status_code, r.text)
    forged = [r.json()["delivery"]]
    key_fetches = fake_api.calls_to("/v2/public/rsa-public-key")
    assert key_fetches and all(c.status == 503 for c in key_fetches)  # it did try, and was refused
    store = Store.from_url(processes.env["DATABASE_URL"])
    try:
        # The worker runs, and still nothing is decided or called while no key can be had.
        fetches = len(key_fetches)
        assert fake_api.wait_for(lambda: len(fake_api.calls_to("/v2/public/rsa-public-key")) > fetches,
                                 timeout=30), "nothing tried the key endpoint again"
        time.sleep(0.5)
        assert store.history.deliveries() == [] and store.inbox.has_undecided()
        assert store.inbox.inbox_stats()[0] == len(rooms) + 1
        assert fake_api.deactivations(status=None) == []

        fake_api.serve_public_key = True
        # The worker fetches the key, verifies what it kept, and decides it: each room deactivated.
        assert wait_until_decided(store, 60), f"{store.inbox.inbox_stats()[0]} deliveries still undecided"
        assert any(c.status == 200 for c in fake_api.calls_to("/v2/public/rsa-public-key"))
        assert {d["id"] for d in store.history.deliveries()} == set(accepted.values()) | set(forged)
        for room, delivery in accepted.items():
            row = store.history.delivery(delivery)
            assert (row["room_id"], bool(row["verified"]), row["problem"]) == (room, True, None), row
            assert [d["outcome"] for d in store.history.decisions(delivery_id=delivery)] == ["scheduled"], room
        assert fake_api.wait_for(lambda: sorted(fake_api.deactivations()) == rooms, timeout=30)

        # Once the web processes have the key, a forged signature is refused for what it is: 401.
        # (Each gunicorn worker fetches its own key, so one may still keep a forged body, unverified,
        # for a moment: the decider then refuses it like the first.)
        deadline = time.monotonic() + 30
        while True:
            r = forge()
            if r.status_code != 202 or time.monotonic() > deadline:
                break
            assert r.json().get("verified") == "later", r.text
            forged.append(r.json()["delivery"])
            time.sleep(0.2)
        assert r.status_code == 401, (r.status_code, r.text)

        # Every forged body kept while no key could be had is recorded as refused, never acted on.
        assert wait_until_decided(store, 60), f"{store.inbox.inbox_stats()[0]} deliveries still undecided"
        for delivery in forged:
            row = store.history.delivery(delivery)
            assert row is not None, f"forged delivery {delivery} lost"
            assert row["room_id"] == forged_room and not row["verified"], row
            assert (row["problem"] or "").startswith("refused: "), row["problem"]
            assert store.history.decisions(delivery_id=delivery) == []
        assert store.history.decisions(room_id=forged_room) == [] and store.history.room(forged_room) is None
        assert store.actions.actions(room_id=forged_room) == []
        time.sleep(0.5)  # a late call would show up here
        assert sorted(fake_api.deactivations(status=None)) == rooms  # each once, the forged room never
    finally:
        http.close()
        store.close()
