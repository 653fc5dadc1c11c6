"""Issue 18: ruamel.yaml against the loader's own YAML 1.2 reading (PyYAML's SafeLoader with YAML 1.2
core scalars, rules/loader.py), for what the loader needs: every scalar read as YAML 1.2 reads
it, a line and column on every node, duplicate keys caught, readable syntax errors, and speed on
a 10,000-rule file (1 MiB, the most a rules file may be).

Run: .venv/bin/python -m pip install ruamel.yaml==0.19.1 && .venv/bin/python bench/prototypes/yaml12.py
Not part of the tests, and ruamel.yaml is not a dependency: this measures whether to switch.
"""

from __future__ import annotations

import io
import statistics
import sys
import time
from pathlib import Path

import yaml
from ruamel.yaml import YAML
from ruamel.yaml.error import MarkedYAMLError

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from service.rules.loader import _Loader, parse_rules, read_yaml  # noqa: E402

# Scalars whose reading differs between YAML 1.1 and 1.2, and the YAML 1.2 core schema's answer.
SCALARS = [
    ("on", "on"), ("off", "off"), ("yes", "yes"), ("no", "no"), ("y", "y"), ("n", "n"),
    ("true", True), ("False", False), ("TRUE", True),
    ("017", 17), ("0o17", 15), ("0x1F", 31), ("1_000", "1_000"), ("1:30", "1:30"),
    ("2026-01-05", "2026-01-05"), ("1e3", 1000.0), ("+12", 12), (".inf", float("inf")),
    ("~", None), ("null", None), ("5m", "5m"), ("09:00", "09:00"),
]

BROKEN = {
    "a tab for indent": "version: 1\nrules:\n\t- name: a\n",
    "an unclosed flow mapping": "version: 1\nrules:\n  - {name: a, on: x\n",
    "a bad indent": "version: 1\nrules:\n  - name: a\n   on: x\n",
    "an unclosed quote": "version: 1\nrules:\n  - name: \"a\n",
    "a duplicate key": "version: 1\nversion: 1\nrules: []\n",
}


def ruamel_yaml() -> YAML:
    y = YAML(typ="safe", pure=True)  # pure: the C reader has no YAML 1.2 resolver and no node marks
    y.version = (1, 2)
    return y


def ruamel_compose(text: str):
    return YAML(typ="rt").compose(io.StringIO(text))  # nodes with start_mark, as the loader walks


def scalars() -> list[tuple[str, object, object, object]]:
    y = ruamel_yaml()
    rows = []
    for text, want in SCALARS:
        ours = read_yaml(f"k: {text}")["k"]
        theirs = y.load(f"k: {text}")["k"]
        rows.append((text, want, ours, theirs))
    return rows


def errors() -> list[tuple[str, str, str]]:
    rows = []
    for what, text in BROKEN.items():
        _, problems = parse_rules(text, "rules.yaml")
        ours = str(problems[0]) if problems else "(accepted)"
        try:
            ruamel_yaml().load(text)
            theirs = "(accepted)"
        except MarkedYAMLError as exc:
            mark = exc.problem_mark
            theirs = f"{mark.line + 1}:{mark.column + 1}: {exc.problem}"
        except Exception as exc:  # noqa: BLE001 - what kind it raises is part of the finding
            theirs = f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
        rows.append((what, ours, theirs))
    return rows


def big_file(rules: int = 10_000) -> str:
    lines = ["version: 1", "settings:", "  protect: ['demo-*']", "rules:"]
    for n in range(rules):
        lines += [f"  - name: rule-{n}", f"    on: participant-left", "    when:",
                  f"      room.participants: {{lte: {n % 7}}}", f"      room.id: {{matches: '^r{n}-'}}",
                  "    for: 5m", "    confirm: active-participants", "    action: deactivate"]
    return "\n".join(lines) + "\n"


def timed(fn, text: str, rounds: int = 3) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn(text)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    print("| scalar | YAML 1.2 | the loader | ruamel.yaml 1.2 |\n|---|---|---|---|")
    for text, want, ours, theirs in scalars():
        mark = lambda got: repr(got) + ("" if got == want and type(got) is type(want) else " **differs**")  # noqa: E731
        print(f"| `{text}` | {want!r} | {mark(ours)} | {mark(theirs)} |")
    print("\n| broken file | the loader | ruamel.yaml |\n|---|---|---|")
    for what, ours, theirs in errors():
        print(f"| {what} | {ours} | {theirs} |")
    text = big_file()
    print(f"\n10,000 rules, {len(text):,} bytes, median of 3:")
    print(f"- compose, PyYAML + the loader's 1.2 resolvers: {timed(lambda t: yaml.compose(t, Loader=_Loader), text):.2f} s")
    print(f"- compose, ruamel.yaml (round trip, pure Python): {timed(ruamel_compose, text):.2f} s")
    print(f"- the whole loader (compose, read, compile): {timed(lambda t: parse_rules(t), text):.2f} s")


if __name__ == "__main__":
    main()
