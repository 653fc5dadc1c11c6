"""python -m bench [--quick] [--only SECTIONS] [--events N] [--out FILE] [--keep]

Runs the benchmarks of issues 7, 14 and 16 (ingest, sustained intake and deciding, slow clients, rule
evaluation, reaction, memory, sweeps, dashboard pages), prints their tables and writes them, with the machine, the
commands and the date, to bench/RESULTS.md (--quick: bench/out/RESULTS-quick.md, so a check run never
overwrites the figures of record). Use bench/run, which sets up .venv first.
"""

from __future__ import annotations

import argparse
import datetime
import os
import shutil
import signal
import sys
import time
import timeit
import traceback
from pathlib import Path

from . import ingest, memory, pages, reaction, rules_eval, slow_clients, sustained, sweep
from .common import BENCH, ROOT, Processes, Signer, log, machine, postgres_base_url, table

# In the order they run (and are numbered): sustained takes the rate ingest measured.
SECTIONS = ("ingest", "sustained", "slow_clients", "rules", "reaction", "memory", "sweep", "pages")


def cpu_probe() -> float:
    """Microseconds for `sum(range(1000))`, best of 5: how fast one core runs Python right now."""
    return min(timeit.repeat("sum(range(1000))", number=2000, repeat=5)) / 2000 * 1e6


def _interrupted(*_):
    raise KeyboardInterrupt  # so every `finally` stops its processes and drops its databases


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="bench/run", description=__doc__.split("\n\n")[1])
    parser.add_argument("--quick", action="store_true", help="each section briefly (a few minutes in all)")
    parser.add_argument("--only", default=",".join(SECTIONS),
                        help=f"comma-separated sections to run (default: all of {', '.join(SECTIONS)})")
    parser.add_argument("--events", type=int, default=int(os.environ.get("BENCH_EVENTS") or 0) or None,
                        help="events for the memory section (default 100,000; --quick 5,000; env BENCH_EVENTS)")
    parser.add_argument("--out", type=Path, help="the results file (default bench/RESULTS.md; "
                                                 "--quick: bench/out/RESULTS-quick.md)")
    parser.add_argument("--keep", action="store_true", help="keep bench/out/run-*/ (logs, databases, Lua script)")
    args = parser.parse_args(argv)
    asked = [s.strip().replace("-", "_") for s in args.only.split(",") if s.strip()]
    unknown = set(asked) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown section(s): {', '.join(sorted(unknown))}")
    args.sections = [s for s in SECTIONS if s in asked]  # always in the order above
    return args


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    signal.signal(signal.SIGTERM, _interrupted)
    mode = "quick" if args.quick else "full"
    started = datetime.datetime.now().astimezone()
    run_dir = BENCH / "out" / f"run-{started:%Y%m%d-%H%M%S}"
    run_dir.mkdir(parents=True, exist_ok=True)
    out_file = args.out or (BENCH / "out" / "RESULTS-quick.md" if args.quick else BENCH / "RESULTS.md")
    events = args.events or (5_000 if args.quick else 100_000)
    every = max(1, events // (5 if args.quick else 10))
    pg_base = postgres_base_url()
    info = machine()
    probe_start = cpu_probe()
    log(f"{mode} run; sections {', '.join(args.sections)}; PostgreSQL: {'yes' if pg_base else 'no'}; "
        f"files in {run_dir.relative_to(ROOT)}")

    signer = Signer()
    procs = Processes(run_dir)
    commands: list[str] = []
    summary: list[list] = []
    parts: list[str] = []
    found: dict = {}  # figures one section hands to a later one (ingest's rates, for sustained)
    failed = False
    try:
        for section in args.sections:
            section_start = time.monotonic()
            log(f"section {section}: starting")
            try:
                if section == "ingest":
                    rows, text = ingest.run(signer, run_dir, procs, ingest.QUICK if args.quick else ingest.FULL,
                                            pg_base, commands, found)
                elif section == "sustained":
                    rows, text = sustained.run(signer, run_dir, procs,
                                               sustained.QUICK if args.quick else sustained.FULL, pg_base,
                                               commands, found.get("intake_rps"))
                elif section == "slow_clients":
                    rows, text = slow_clients.run(signer, run_dir, procs,
                                                  slow_clients.QUICK if args.quick else slow_clients.FULL, commands)
                elif section == "rules":
                    rows, text = rules_eval.run(args.quick)
                elif section == "reaction":
                    rows, text = reaction.run(signer, run_dir, procs, 5.0 if args.quick else 30.0, pg_base,
                                              commands)
                elif section == "memory":
                    rows, text = memory.run(signer, run_dir, procs, events, every, 3.0 if args.quick else 10.0,
                                            commands)
                elif section == "sweep":
                    rows, text = sweep.run(args.quick, run_dir, pg_base)
                else:
                    rows, text = pages.run(args.quick, run_dir, pg_base)
            except KeyboardInterrupt:
                raise
            except Exception:  # noqa: BLE001 - one section failing must not hide the others
                failed = True
                rows, text = [[section, "section failed", "", "", "ERROR"]], (
                    f"## {section}: FAILED\n\n```\n{traceback.format_exc()}```")
                log(f"section {section} failed:\n{traceback.format_exc()}")
            summary += rows
            parts.append(text + f"\n\n(section took {time.monotonic() - section_start:,.0f} s)")
            print("\n" + parts[-1] + "\n", flush=True)
    finally:
        procs.stop_all()

    finished = datetime.datetime.now().astimezone()
    probe_end = cpu_probe()
    command = os.environ.get("BENCH_COMMAND") or "python -m bench " + " ".join(sys.argv[1:])
    document = "\n".join([
        "# roomwarden benchmarks",
        "",
        f"- date: {started:%Y-%m-%d %H:%M:%S %Z} to {finished:%H:%M:%S} ({(finished - started).seconds // 60} min)",
        f"- mode: **{mode}**" + (" (brief runs to check that everything works; not figures of record)"
                                  if args.quick else ""),
        f"- command: `{command}` (from the repository root; bench/run sets up .venv with requirements-test.txt "
        "and bench/requirements.txt, installs wrk when it can, then runs `python -m bench`)",
        f"- git: {_git_head()}",
        "",
        "## Machine",
        "",
        *[f"- {key}: {value}" for key, value in info.items()],
        f"- load generator: {shutil.which('wrk') or 'wrk not installed (the Python client stands in)'}"
        f"{'; wrk2: ' + shutil.which('wrk2') if shutil.which('wrk2') else '; no wrk2'}",
        f"- CPU speed probe (`sum(range(1000))`, best of 5, one core): {probe_start:.1f} us at the start, "
        f"{probe_end:.1f} us at the end; a busy machine shows here as a larger figure, and every timing "
        "below is slower by about as much",
        f"- PostgreSQL: {_shown_pg(pg_base)}",
        "",
        "## Targets",
        "",
        table(["section", "figure", "value", "target", "verdict"], summary),
        "",
        *[p + "\n" for p in parts],
        "## Commands",
        "",
        "Every service process was started from the repository root by `sh -c` with the Procfile's command "
        "(or, for the bare app, that command with the app swapped) and these settings in its environment "
        "(the bench's own environment otherwise, less any roomwarden setting):",
        "",
        *[f"- {c}" for c in commands],
        "",
    ])
    out_file.parent.mkdir(parents=True, exist_ok=True)
    out_file.write_text(document)
    log(f"wrote {out_file.relative_to(ROOT) if out_file.is_relative_to(ROOT) else out_file}")
    print("\n" + table(["section", "figure", "value", "target", "verdict"], summary), flush=True)
    if not args.keep and not failed:
        shutil.rmtree(run_dir, ignore_errors=True)
    elif failed:
        log(f"kept {run_dir.relative_to(ROOT)} (logs of the failed section)")
    return 1 if failed else 0


def _git_head() -> str:
    import subprocess

    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return f"{head}{' with uncommitted changes' if dirty else ''}"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _shown_pg(url: str | None) -> str:
    if not url:
        return "not configured (set BENCH_POSTGRES_URL or ROOMWARDEN_TEST_POSTGRES_URL); SQLite only"
    from sqlalchemy.engine import make_url

    return (f"{make_url(url).render_as_string(hide_password=True)} (a throwaway database is created on it "
            "for each use and dropped after)")


if __name__ == "__main__":
    sys.exit(main())
