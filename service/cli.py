"""`python -m service COMMAND`: a thin command line over the library.

Exit codes: 0 success; 1 the thing checked is wrong (a rules file with errors,
an event that does not parse); 2 the command could not run (bad settings,
store unreachable, bad arguments).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

from . import logs
from .config import Settings
from .errors import PayloadInvalid, RoomwardenError, RulesError
from .events import parse_event
from .rules.engine import evaluate
from .rules.fields import Facts
from .rules.loader import load_rules
from .runtime import build_worker, load_rules_holder, open_store, watch_rules


def _default_rules() -> str:
    return os.environ.get("RULES_FILE") or "rules.yaml"


def cmd_check(args) -> int:
    path = args.file or _default_rules()
    try:
        rule_set = load_rules(path)
    except RulesError as exc:
        for problem in exc.problems:
            print(problem)
        print(f"{len(exc.problems)} error(s)", file=sys.stderr)
        return 1
    print(f"{path}: ok, {len(rule_set.rules)} rule(s), sha256 {rule_set.short_hash}")
    return 0


def _read_event(source: str) -> bytes:
    if source == "-":
        return sys.stdin.buffer.read()
    if source.lstrip().startswith("{"):
        return source.encode("utf-8")
    return Path(source).read_bytes()


def cmd_simulate(args) -> int:
    rule_set = load_rules(args.rules or _default_rules())
    try:
        raw = _read_event(args.event)
    except OSError as exc:
        print(f"cannot read {args.event}: {exc.strerror}", file=sys.stderr)
        return 2
    try:
        event = parse_event(raw)
    except PayloadInvalid as exc:
        print(f"invalid event: {exc.message}", file=sys.stderr)
        if exc.fields:
            print(json.dumps(exc.fields, indent=2), file=sys.stderr)
        return 1
    results = evaluate(rule_set, Facts(event=event, now=time.time()))
    acting = event.known and bool(event.room_id)
    if args.json:
        print(json.dumps({
            "event": event.type, "room": event.room_id, "known": event.known,
            "rules": [{"rule": r.rule.name, "action": r.rule.action, "result": r.result,
                       "would_act": acting and r.matched,
                       "trace": r.trace.to_dict() if r.trace else None} for r in results],
        }, indent=2, default=str))
        return 0
    print(f"event {event.type} room={event.room_id} session={event.session_id}")
    if not event.known:
        print("  unknown event type: recorded, never acted on")
    if not results:
        print(f"  no rule in {rule_set.source} applies to {event.type}")
    for result in results:
        verdict = {True: "MATCH", False: "no match", None: "no match (unknown: a field is missing)"}
        act = f" -> would {result.rule.action} room {event.room_id}" if acting and result.matched else ""
        print(f"  rule {result.rule.name} (line {result.rule.line}): {verdict[result.result]}{act}")
        for line in (result.trace.lines(2) if result.trace else ["    yes (no conditions)"]):
            print(line)
    return 0


def cmd_worker(args) -> int:
    settings = Settings.from_env()
    logs.configure(settings.log_level)
    store = open_store(settings)
    rules = load_rules_holder(settings, store)
    worker = build_worker(settings, store, rules)
    if not settings.acts:
        print("worker: DRY_RUN is on (or WEBHOOK_VERIFY is off): timers fire as dry-run decisions, "
              "and no action is carried out", file=sys.stderr)
    if args.once:
        while worker.run_once():
            pass
        return 0
    watcher = watch_rules(settings, rules, store, on_reload=worker.rules_reloaded)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    signal.signal(signal.SIGHUP, lambda *_: watcher.request())
    worker.run(stop, settings.poll_interval)
    watcher.stop()
    return 0


def cmd_migrate(args) -> int:
    settings = Settings.from_env()
    store = open_store(settings)
    print(f"schema at version {store.schema_version()}")
    return 0


def cmd_actions(args) -> int:
    settings = Settings.from_env()
    store = open_store(settings)
    rows = store.actions(status=args.status, limit=args.limit)
    for row in rows:
        print(f"{row['id']:>6}  {row['status']:<8} {row['kind']:<10} room={row['room_id']} "
              f"rule={row['rule']} attempts={row['attempts']}"
              + (f" last_error={row['last_error']!r}" if row["last_error"] else ""))
    print(f"{len(rows)} action(s)", file=sys.stderr)
    return 0


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="python -m service",
                                  description="roomwarden: closes VideoSDK rooms by rule.")
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("worker", help="carry out queued actions (the Procfile's worker)")
    p.add_argument("--once", action="store_true", help="carry out every due action, then exit")
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("check", help="validate a rules file; one file:line:col: message per error")
    p.add_argument("file", nargs="?", metavar="RULES_FILE", help="default: $RULES_FILE or rules.yaml")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("simulate", help="show which rules an event matches and why; no side effects")
    p.add_argument("event", metavar="EVENT_JSON", help="a JSON file, '-' for stdin, or the JSON itself")
    p.add_argument("--rules", metavar="FILE", help="default: $RULES_FILE or rules.yaml")
    p.add_argument("--json", action="store_true", help="print the decision trace as JSON")
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser("migrate", help="bring the database schema up to date")
    p.set_defaults(func=cmd_migrate)

    p = sub.add_parser("actions", help="list actions in the outbox")
    p.add_argument("--status", choices=["pending", "done", "failed", "dead", "dry-run"])
    p.add_argument("--limit", type=int, default=100)
    p.set_defaults(func=cmd_actions)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except RulesError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 2
    except RoomwardenError as exc:
        print(f"roomwarden: {exc}", file=sys.stderr)
        return 2
