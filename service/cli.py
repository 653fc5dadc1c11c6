"""`python -m service COMMAND`: a thin command line over the library.

Exit codes: 0 success; 1 the thing checked is wrong (a rules file with errors,
an event that does not parse, a failing rule test); 2 the command could not
run (bad settings, store unreachable, bad arguments).
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

from . import ciformat, explain, logs, metrics, replay, ruletest, simulate
from .config import Settings
from .errors import PayloadInvalid, RoomwardenError, RulesError
from .events import read_envelope
from .outcomes import ActionStatus
from .rooms import RoomState
from .rules.durations import format_duration, parse_duration
from .rules.loader import load_rules
from .runtime import build_worker, load_rules_holder, open_store, watch_rules


def _default_rules() -> str:
    return os.environ.get("RULES_FILE") or "rules.yaml"


# -- rules -------------------------------------------------------------------------------------


def cmd_check(args) -> int:
    reports, failed = [], False
    files = args.files or [_default_rules()]
    for path in files:
        report = _check_one(path, args, named=len(files) > 1)
        failed = failed or not report["ok"]
        reports.append(report)
    if args.format == "json":
        print(ciformat.as_json({"ok": not failed, "strict": args.strict, "files": reports}))
    return 1 if failed else 0


def _relative(path: str) -> str:
    """A path as GitHub matches annotations to a pull request's files: relative to the checkout
    (the working directory) when it is inside it, as given otherwise."""
    absolute, here = os.path.abspath(path), os.getcwd()
    return os.path.relpath(absolute, here) if absolute.startswith(here + os.sep) else path


def _check_one(path: str, args, *, named: bool) -> dict:
    """Check one rules file: print its problems in the format asked, and say how it went (`named`:
    the failure lines name the file, one of several)."""
    try:
        rule_set = load_rules(path)
    except RulesError as exc:
        found, rule_set = exc.found, None
    else:
        found = list(rule_set.warnings)
    errors = [p for p in found if p.severity == "error"]
    warnings = [p for p in found if p.severity != "error"]
    failed = bool(errors) or bool(warnings and args.strict)
    if args.format != "json":
        for problem in found:
            print(ciformat.github(problem.severity, problem.message, file=_relative(problem.source), line=problem.line,
                                  col=problem.col) if args.format == "github" else problem)
    # The summary: on stdout for people; on stderr when stdout is for a machine, or on failure.
    summary = sys.stdout if args.format == "text" and not failed else sys.stderr
    which = f"{path}: " if named else ""
    if errors:
        print(f"{which}{len(errors)} error(s)", file=sys.stderr)
    elif failed:
        print(f"{which}{len(warnings)} warning(s), and --strict", file=sys.stderr)
    else:
        print(f"{path}: ok, {len(rule_set.rules)} rule(s), sha256 {rule_set.short_hash}"
              + (f", {len(warnings)} warning(s)" if warnings else ""), file=summary)
    return {"file": str(path), "ok": not failed, "errors": len(errors), "warnings": len(warnings),
            "rules": len(rule_set.rules) if rule_set else None, "sha256": rule_set.sha256 if rule_set else None,
            "problems": [ciformat.problem_dict(p) for p in found]}


def cmd_schema(args) -> int:
    """The JSON Schema of a rules file (docs/rules.schema.json is a copy of it)."""
    from .rules.schema import schema_text

    sys.stdout.write(schema_text())
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
        stored = _stored_room(read_envelope(raw)[1]) if args.from_store else None
        result = simulate.try_event(rule_set, raw, time.time(), stored, from_store=args.from_store)
    except PayloadInvalid as exc:
        print(f"invalid event: {exc.message}", file=sys.stderr)
        if exc.fields:
            print(json.dumps(exc.fields, indent=2), file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result.to_dict(), indent=2, default=str))
        return 0
    for line in result.lines():
        print(line)
    return 0


def _stored_room(room_id: str | None) -> RoomState | None:
    """The room as the store holds it (read only), for `simulate --from-store`."""
    if room_id is None:
        return None
    store = open_store(Settings.from_env(), migrate=False)
    try:
        row = store.history.room(room_id)
    finally:
        store.close()
    return None if row is None else RoomState.from_dict(room_id, row["state"] or {})


def cmd_test(args) -> int:
    if not args.files:
        args.files = sorted(str(p) for pattern in ("**/*.test.yaml", "**/*.test.yml") for p in Path().glob(pattern)
                            if ".git" not in p.parts)
        if not args.files:
            print("no rule test files (*.test.yaml) below this directory", file=sys.stderr)
            return 1
    runs, passed, failed, suites = [], 0, 0, []
    text = args.format == "text"
    for path in args.files:
        try:
            test_file = ruletest.load_tests(Path(path), Path(args.rules) if args.rules else None)
        except ruletest.TestFileError as exc:
            failed += 1
            suites.append({"name": path, "file": path, "error": str(exc), "cases": []})
            if text:
                print(f"ERROR {exc}")
            elif args.format == "github":
                print(ciformat.github("error", str(exc), file=_relative(path)))
            continue
        results = ruletest.run_file(test_file)
        runs.append((test_file, results))
        cases = []
        for result in results:
            failure = None if result.passed else "\n".join(result.diff())
            cases.append({"name": result.case.name, "line": result.case.line, "failure": failure,
                          "expected": [e.line() for e in result.case.expect],
                          "actual": [a.line() for a in result.actual]})
            passed, failed = passed + result.passed, failed + (not result.passed)
            if text:
                print(f"{'ok  ' if result.passed else 'FAIL'}  {path}: {result.case.name}")
                for line in ([] if result.passed else result.diff()):
                    print(f"      {line}")
            elif args.format == "github" and failure is not None:
                print(ciformat.github("error", f"test failed: {result.case.name}\n{failure}", file=_relative(path),
                                      line=result.case.line, title=f"rule test: {result.case.name}"))
        suites.append({"name": path, "file": path, "error": None, "cases": cases})
    missing = ruletest.uncovered(runs) if args.coverage else {}
    if args.coverage and text:
        for source, names in missing.items():
            print(f"not exercised by any test in {source}: {', '.join(names)}")
        if runs and not missing:
            print("every rule was exercised by a test")
    elif args.coverage and args.format == "github":
        for source, names in missing.items():
            print(ciformat.github("warning", f"not exercised by any test: {', '.join(names)}", file=_relative(source)))
    if args.format == "json":
        print(ciformat.as_json({"passed": passed, "failed": failed, "files": suites,
                                **({"not_exercised": missing} if args.coverage else {})}))
    if args.junit:
        Path(args.junit).write_bytes(ciformat.junit(suites))
    print(f"{passed} passed, {failed} failed", file=sys.stderr)
    return 1 if failed else 0


def _age(text: str) -> float:
    """A duration from the command line: `24h`, `7d`, or plain seconds."""
    try:
        return parse_duration(float(text))
    except ValueError:
        return parse_duration(text)


def cmd_replay(args) -> int:
    settings = Settings.from_env()
    try:
        window = _age(args.since)
    except ValueError as exc:
        print(f"replay: --since: {exc}", file=sys.stderr)
        return 2
    store = open_store(settings, migrate=False)
    candidate = load_rules(args.rules)
    current = load_rules(args.current or settings.rules_file)
    now = time.time()
    total = store.history.count_deliveries_since(now - window)
    show = args.progress if args.progress is not None else (total >= 1000 and sys.stderr.isatty())
    progress = _progress_bar(total) if show else None
    changes, count = replay.replay(store.history.deliveries_since(now - window), current, candidate, until=now,
                                   progress=progress)
    if progress is not None:
        print(file=sys.stderr)
    for change in changes:
        what = f"{change.event_type} delivery {change.source}" if change.event_type else change.source
        print(f"{explain.when(change.at)}  room {change.room_id}  {what}")
        print(f"    rule {change.rule}: {change.before or 'no decision'} -> {change.after or 'no decision'}")
    print(f"{count} deliveries replayed under {current.short_hash} (in force) and {candidate.short_hash} "
          f"({args.rules}): {len(changes)} decision(s) would change", file=sys.stderr)
    return 0


def _progress_bar(total: int):
    width, shown = 30, [-1]

    def show(done: int) -> None:
        percent = done * 100 // max(total, 1)
        if percent != shown[0]:
            shown[0] = percent
            filled = width * min(done, total) // max(total, 1)
            print(f"\rreplaying [{'#' * filled}{'.' * (width - filled)}] {percent:3d}% {done}/{total}",
                  end="", file=sys.stderr, flush=True)

    return show


# -- the store ----------------------------------------------------------------------------------


def cmd_explain(args) -> int:
    store = open_store(Settings.from_env(), migrate=False)
    rows = store.history.room_story(args.room)
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
    else:
        for line in explain.story(args.room, rows, time.time()):
            print(line)
    return 0 if rows["deliveries"] else 1


def cmd_actions(args) -> int:
    store = open_store(Settings.from_env(), migrate=False)
    rows = store.actions.actions(status=args.status, limit=args.limit, newest_first=True)
    for row in rows:
        print(f"{row['id']:>6}  {row['status']:<9} {row['kind']:<11} room={row['room_id']} "
              f"rule={row['rule']} attempts={row['attempts']}"
              + (f" last_error={row['last_error']!r}" if row["last_error"] else ""))
    print(f"{len(rows)} action(s)", file=sys.stderr)
    return 0


def cmd_retry(args) -> int:
    if not args.ids and not args.all_dead:
        print("retry: give action ids, or --all-dead", file=sys.stderr)
        return 2
    store = open_store(Settings.from_env(), migrate=False)
    ids = store.actions.redrive(None if args.all_dead else args.ids)
    for action_id in ids:
        print(f"action {action_id}: pending again, due now")
    for action_id in sorted(set(args.ids) - set(ids)):
        print(f"action {action_id}: not dead; left as it is", file=sys.stderr)
    return 0 if ids or args.all_dead else 1


def cmd_prune(args) -> int:
    settings = Settings.from_env()
    try:
        age = _age(args.older_than) if args.older_than else settings.retention_days * 86400
    except ValueError as exc:
        print(f"prune: --older-than: {exc}", file=sys.stderr)
        return 2
    if age <= 0:
        print("prune: RETENTION_DAYS is 0 (keep everything); give --older-than", file=sys.stderr)
        return 2
    removed = open_store(settings, migrate=False).history.prune(time.time() - age)
    print(f"pruned {removed} deliveries older than {format_duration(age)}; actions and what caused them are kept")
    return 0


def cmd_migrate(args) -> int:
    store = open_store(Settings.from_env())
    print(f"schema at version {store.db.schema_version()}")
    return 0


# -- processes ----------------------------------------------------------------------------------


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
        worker.recheck_timers()
        while worker.run_once():
            pass
        return 0
    watcher = watch_rules(settings, rules, store, on_reload=worker.rules_reloaded)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    signal.signal(signal.SIGHUP, lambda *_: watcher.request())
    try:
        worker.run(stop, settings.poll_interval)
    finally:
        watcher.stop()
        metrics.process_exit()
    return 0


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="python -m service",
                                  description="roomwarden: closes VideoSDK rooms by rule.")
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("worker", help="fire due timers and carry out queued actions (the Procfile's worker)")
    p.add_argument("--once", action="store_true", help="do all the work that is due, then exit")
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("check", help="validate rules files; one file:line:col: message per error")
    p.add_argument("files", nargs="*", metavar="RULES_FILE", help="default: $RULES_FILE or rules.yaml")
    p.add_argument("--strict", action="store_true", help="fail on warnings too")
    p.add_argument("--format", choices=ciformat.FORMATS, default="text",
                   help="text (default); github: GitHub Actions annotations; json")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("schema", help="print the JSON Schema of a rules file, for editors (docs/rules.schema.json)")
    p.set_defaults(func=cmd_schema)

    p = sub.add_parser("simulate", help="show which rules an event matches and why; no side effects")
    p.add_argument("event", metavar="EVENT_JSON", help="a JSON file, '-' for stdin, or the JSON itself")
    p.add_argument("--rules", metavar="FILE", help="default: $RULES_FILE or rules.yaml")
    p.add_argument("--json", action="store_true", help="print the decision trace as JSON")
    p.add_argument("--from-store", action="store_true",
                   help="try it on the room as the store ($DATABASE_URL) holds it, not a room with no "
                        "history (what a sweep would do: a sweep needs the room's last delivery)")
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser("test", help="run rule unit tests written in YAML, on a virtual clock")
    p.add_argument("files", nargs="*", metavar="FILE",
                   help="rule test files (default: every *.test.yaml and *.test.yml below this directory)")
    p.add_argument("--rules", metavar="FILE", help="test this rules file instead of the one each test names")
    p.add_argument("--coverage", action="store_true", help="list the rules no test exercised")
    p.add_argument("--format", choices=ciformat.FORMATS, default="text",
                   help="text (default); github: an annotation per failed test; json")
    p.add_argument("--junit", metavar="FILE", help="also write a JUnit XML report to FILE")
    p.set_defaults(func=cmd_test)

    p = sub.add_parser("replay", help="re-decide recorded deliveries under a candidate rules file")
    p.add_argument("--rules", metavar="CANDIDATE", required=True, help="the candidate rules file")
    p.add_argument("--since", default="24h", help="how far back to replay, as a duration (default 24h)")
    p.add_argument("--current", metavar="FILE", help="compare with this file (default: $RULES_FILE)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="a progress bar (default: on a terminal, for 1,000 deliveries or more)")
    p.set_defaults(func=cmd_replay)

    p = sub.add_parser("explain", help="a room's story: deliveries, decisions, timers, attempts, outcome")
    p.add_argument("room", metavar="ROOM_ID")
    p.add_argument("--json", action="store_true", help="print the records as JSON")
    p.set_defaults(func=cmd_explain)

    p = sub.add_parser("actions", help="list actions in the outbox")
    p.add_argument("--status", choices=[status.value for status in ActionStatus])
    p.add_argument("--limit", type=int, default=100)
    p.set_defaults(func=cmd_actions)

    p = sub.add_parser("retry", help="re-drive dead actions: pending again, due now")
    p.add_argument("ids", nargs="*", type=int, metavar="ID", help="action ids")
    p.add_argument("--all-dead", action="store_true", help="re-drive every dead action")
    p.set_defaults(func=cmd_retry)

    p = sub.add_parser("prune", help="delete old deliveries; the record of actions taken is kept")
    p.add_argument("--older-than", metavar="AGE", help="a duration such as 30d (default: RETENTION_DAYS)")
    p.set_defaults(func=cmd_prune)

    p = sub.add_parser("migrate", help="bring the database schema up to date")
    p.set_defaults(func=cmd_migrate)
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
