"""Section 2: rule evaluation, the pure engine alone: `service.rules.engine.evaluate(rule_set, facts,
traces=False)`, as the planner calls it
on rule sets loaded by `parse_rules` from generated YAML, timed with time.perf_counter."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, replace
from datetime import timezone

from service.events import parse_event
from service.rooms import advance
from service.rules.engine import evaluate
from service.rules.fields import Facts
from service.rules.loader import parse_rules
from service.schemas import DOCUMENTED_EVENT_TYPES

from .common import event_body, fmt, log, median, table, verdict

TARGET_ONE_TYPE_MS = 1.0
SIMILAR = 1.5  # "similar": the spread case within this factor of the one-type case

NOW = 1_793_000_000.0  # a fixed clock reading (2026-10-26, a Monday), so runs compare

# Conditions any known event can be tested on, as YAML flow mappings; {k} is filled per rule.
GENERAL = [
    "room.participants: {{lte: {k}}}",
    "room.id: {{matches: \"{k}$\"}}",
    "session.age: {{gte: 4h}}",
    "any: [{{room.sessions: {{gt: {k}}}}}, {{data.fileUrl: {{exists: true}}}}]",
    "not: {{now.weekday: {{in: [sat, sun]}}}}",
    "room.empty_for: {{gte: {k}m}}",
    "now.time: {{gte: \"09:00\", lt: \"18:00\"}}",
    "session.id: {{ne: \"s{k}\"}}",
    "room.id: {{in: [bench-{k}, bench-1{k}, bench-2{k}, bench-3{k}]}}",
    "data.meetingId: {{exists: true}}",
]
PARTICIPANT = [
    "participant.name: {{in: [Ada, Grace, Linus]}}",
    "participant.id: {{matches: \"^p[0-9]+$\"}}",
    "all: [{{participant.name: {{ne: Bob}}}}, {{room.participants: {{gte: {k}}}}}]",
]
SESSION_ENDED = ["session.duration: {{gte: {k}m}}"]


@dataclass
class Case:
    label: str
    rules_yaml: str
    events: list  # Facts
    target: str = ""
    key: str = ""


def _conditions(rng: random.Random, event_types: list[str]) -> str | None:
    pool = list(GENERAL)
    if all(t.startswith("participant-") and "recording" not in t for t in event_types):
        pool += PARTICIPANT * 2
    if event_types == ["session-ended"]:
        pool += SESSION_ENDED
    if rng.random() < 0.1:
        return None  # a rule without `when:`
    picked = rng.sample(pool, rng.randint(1, 3))
    keys, parts = set(), []
    for template in picked:
        key = template.split(":", 1)[0]
        if key in keys:
            continue
        keys.add(key)
        parts.append(template.format(k=rng.randint(0, 9)))
    return "{" + ", ".join(parts) + "}"


def rules_text(assignments: list[list[str]], seed: int, keep=None) -> str:
    """One rule per entry of `assignments` (its `on:` list), with generated conditions. With `keep`,
    only the rules whose `on:` it accepts, each exactly as it is in the whole set."""
    rng = random.Random(seed)
    lines = ["version: 1", "rules:"]
    for number, on in enumerate(assignments):
        when = _conditions(rng, on)
        action = "deactivate" if rng.random() < 0.8 else "end-session"
        if keep is not None and not keep(on):
            continue
        lines.append(f"  - name: r{number:05d}")
        lines.append("    on: [" + ", ".join(f'"{t}"' for t in on) + "]")
        if when:
            lines.append(f"    when: {when}")
        lines.append(f"    action: {action}")
    return "\n".join(lines) + "\n"


def event_for(event_type: str, number: int) -> bytes:
    room, session = f"bench-{number % 50}", f"s{number % 7}"
    if event_type.startswith(("participant-joined", "participant-left", "participant-recording",
                              "participant-track-recording")):
        return event_body(event_type, meetingId=room, sessionId=session, participantId=f"p{number % 5}",
                          participantName=["Ada", "Grace", "Linus", "Bob"][number % 4])
    if event_type in ("session-started", "session-ended"):
        return event_body(event_type, meetingId=room, sessionId=session, start="2026-10-26T08:00:00Z",
                          end="2026-10-26T08:4%d:00Z" % (number % 10))
    return event_body(event_type, meetingId=room, sessionId=session,
                      fileUrl=f"https://cdn.example/{number}.mp4" if number % 2 else None)


def facts_for(event_types: list[str], count: int) -> list[Facts]:
    facts = []
    for number in range(count):
        event = parse_event(event_for(event_types[number % len(event_types)], number))
        room = None
        if number % 3:  # most rooms have some history: a session and someone in it
            warm = parse_event(event_body("participant-joined", meetingId=event.room_id, sessionId="s-old",
                                          participantId="p9", participantName="Old"))
            room = advance(advance(None, parse_event(event_body(
                "session-started", meetingId=event.room_id, sessionId="s-old")), NOW - 3600), warm, NOW - 600)
        facts.append(Facts(event=event, now=NOW, room=advance(room, event, NOW), tz=timezone.utc))
    return facts


def _families() -> list[str]:
    """100 event types VideoSDK could send, 20 in each of five known families (all parse as known)."""
    return [f"{family}-{state}" for family in ("recording", "livestream", "hls", "transcription", "merge-recording")
            for state in [f"state{i:02d}" for i in range(20)]]


def build_cases(sizes: list[int], spread_types: int) -> list[Case]:
    documented = list(DOCUMENTED_EVENT_TYPES)
    rng = random.Random(1)
    cases = []
    for size in sizes:
        assignments = []
        for _ in range(size):
            roll = rng.random()
            if roll < 0.05:
                assignments.append([rng.choice(["recording-*", "participant-*", "hls-*", "*-stopped"])])
            elif roll < 0.20:
                assignments.append(rng.sample(documented, 2))
            else:
                assignments.append([rng.choice(documented)])
        case = Case(f"mixed: {size:,} rules over {len(documented)} event types (5% globs)",
                    rules_text(assignments, seed=size), facts_for(documented, 310))
        cases.append(case)
    cases.append(Case("1,000 rules all on one type (participant-left), events of that type",
                      rules_text([["participant-left"]] * 1000, seed=1000), facts_for(["participant-left"], 300),
                      target=f"<= {TARGET_ONE_TYPE_MS:g} ms", key="one-type"))
    families = _families()[:spread_types]
    spread = [[families[i % spread_types]] for i in range(spread_types * 100)]
    cases.append(Case(f"{spread_types * 100:,} rules spread over {spread_types} types (100 each), events of all "
                      "those types", rules_text(spread, seed=spread_types), facts_for(families, 300)))
    one_type = facts_for([families[0]], 300)
    cases.append(Case(f"the same {spread_types * 100:,} rules, events of one type ({families[0]}) only",
                      rules_text(spread, seed=spread_types), one_type, key="spread"))
    cases.append(Case("only that type's 100 rules (the same rules), the same events",
                      rules_text(spread, seed=spread_types, keep=lambda on: on == [families[0]]), one_type,
                      key="single"))
    return cases


def decide(rule_set, facts: Facts):
    """What the service does per event (planner.plan_event): every applicable rule tested, a trace
    built for those that match, on facts read afresh (Facts memoize field reads per event)."""
    return evaluate(rule_set, replace(facts, memo={}), traces=False)


def time_cases(pairs: list[tuple], runs: int, run_seconds: float) -> list[tuple[float, list[float], int]]:
    """For each (rule set, events): median seconds per event over `runs` runs of about `run_seconds`
    each (at least 20 events), and the number of events a run timed. Several are timed in turns,
    run by run, so a machine that slows down or speeds up meanwhile affects them alike."""
    plans = []
    for rule_set, facts in pairs:
        probe = facts[:20]
        for f in probe:  # warm up: fills the rule set's per-type index
            decide(rule_set, f)
        started = time.perf_counter()
        for f in probe:
            decide(rule_set, f)
        per_event = max((time.perf_counter() - started) / len(probe), 1e-7)
        wanted = max(len(probe), int(run_seconds / per_event))
        if wanted < len(facts):
            plans.append((rule_set, facts[:wanted], 1))
        else:
            plans.append((rule_set, facts, max(1, round(wanted / len(facts)))))
    results: list[list[float]] = [[] for _ in plans]
    for _ in range(runs):
        for index, (rule_set, events, passes) in enumerate(plans):
            started = time.perf_counter()
            for _ in range(passes):
                for f in events:
                    decide(rule_set, f)
            results[index].append((time.perf_counter() - started) / (passes * len(events)))
    return [(median(r), r, passes * len(events)) for r, (_, events, passes) in zip(results, plans)]


def run(quick: bool) -> tuple[list, str]:
    runs, run_seconds = (3, 0.2) if quick else (7, 1.5)
    sizes, spread_types = ([10, 100, 1_000], 20) if quick else ([10, 100, 1_000, 10_000], 100)
    rows, summary = [], []
    per_event = {}
    cases = build_cases(sizes, spread_types)
    loaded, parsed = [], {}
    for case in cases:
        if case.rules_yaml not in parsed:  # the same text twice: parse it once
            started = time.perf_counter()
            rule_set, problems = parse_rules(case.rules_yaml, "<bench>")
            if rule_set is None:
                raise RuntimeError(f"generated rules did not load: {problems[:3]}")
            parsed[case.rules_yaml] = (rule_set, time.perf_counter() - started)
        loaded.append(parsed[case.rules_yaml])
    timings = {}
    pair = [i for i, case in enumerate(cases) if case.key in ("spread", "single")]
    for index, case in enumerate(cases):
        if index not in pair:
            timings[index] = time_cases([(loaded[index][0], case.events)], runs, run_seconds)[0]
    for index, timing in zip(pair, time_cases([(loaded[i][0], cases[i].events) for i in pair], runs, run_seconds)):
        timings[index] = timing
    for index, case in enumerate(cases):
        rule_set, parse_s = loaded[index]
        applicable = sum(len(rule_set.rules_for(f.event.type)) for f in case.events) / len(case.events)
        matched = sum(sum(1 for r in decide(rule_set, f) if r.matched) for f in case.events) / len(case.events)
        seconds, all_runs, timed = timings[index]
        per_event[case.key or case.label] = seconds
        types = len({t for r in rule_set.rules for t in r.on})
        ok = None
        if case.target:
            ok = seconds * 1000 <= TARGET_ONE_TYPE_MS
            summary.append(["4. rules", "1,000 rules on one type, per event", fmt(seconds * 1000, 3) + " ms",
                            case.target, verdict(ok)])
        rows.append([case.label, f"{len(rule_set.rules):,}", types, fmt(applicable, 1), fmt(matched, 1),
                     f"{timed:,}", fmt(seconds * 1e6, 1),
                     fmt(min(all_runs) * 1e6, 1) + " - " + fmt(max(all_runs) * 1e6, 1),
                     case.target or "-", verdict(ok) if case.target else "-", fmt(parse_s, 2)])
        log(f"rules: {case.label}: {seconds * 1e6:,.1f} us/event ({applicable:.1f} rules apply)")
    spread, single = per_event["spread"], per_event["single"]
    ratio = spread / single if single else None
    rows.append(["cost follows the event's own type: the two rows above, all rules / own type's only",
                 "", "", "", "", "",
                 fmt(ratio, 2) + "x", "", f"<= {SIMILAR:g}x (similar)",
                 verdict(ratio <= SIMILAR if ratio is not None else None), ""])
    summary.append(["4. rules", f"one type's events: {spread_types * 100:,} rules over {spread_types} types vs only "
                    "that type's 100", fmt(ratio, 2) + "x", f"<= {SIMILAR:g}x",
                    verdict(ratio <= SIMILAR if ratio is not None else None)])
    quick_note = (" Quick mode leaves out the 10,000-rule mixed case and spreads 2,000 rules over 20 types "
                  "instead of 10,000 over 100 (parsing 10,000 rules takes most of a minute)." if quick else "")
    return summary, "\n".join([
        "## 4. Rule evaluation",
        "",
        "`service.rules.engine.evaluate(rule_set, facts, traces=False)` alone, as the planner calls it "
        "(every applicable rule tested; a condition-by-condition trace built for each rule that matches, "
        "the one its decision records; fresh Facts per event), in this process, on rule sets made by "
        "`parse_rules` from generated YAML (conditions mixed: `eq`/`in`/`ne`/`lte`/`gte`/`matches`/`exists` "
        "on room, session, participant, time and `data.` fields, under `all`/`any`/`not`; 10% of rules "
        "without `when:`). Events are parsed bodies with room state folded in, at a fixed clock reading; "
        "each case's events are of the types its rules name. "
        f"Each figure is the median over {runs} runs of about {run_seconds:g} s each (time.perf_counter "
        "around the events of a run, divided by their number), after a warm-up; the last two cases are "
        "timed in turns, run by run, so that the machine's ups and downs fall on both alike." + quick_note,
        "",
        table(["case", "rules", "types named", "rules applying per event", "matches per event",
               "events per run", "us per event (median)", "range over runs (us)", "target", "verdict",
               "parse s"], rows),
    ])
