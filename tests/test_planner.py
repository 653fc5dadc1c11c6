"""service.planner: plan_event, fire_timer and recheck_timer, the pure decisions of the service."""

from __future__ import annotations

import json

import pytest

from service.events import Event, parse_event
from service.planner import (Cancel, EventPlan, PendingTimer, TimerPlan, action_key, fire_timer, plan_event,
                             recheck_timer)
from service.rooms import advance
from service.rules.loader import parse_rules

ROOM = "abcd-efgh-ijkl"
NOW = 1_700_000_000.0


def ev(event_type: str, session: str = "s-1", room: str = ROOM, **data) -> Event:
    return parse_event(json.dumps({"webhookType": event_type,
                                   "data": {"meetingId": room, "sessionId": session, **data}}).encode())


def joined(participant: str = "p1", session: str = "s-1", room: str = ROOM) -> Event:
    return ev("participant-joined", session, room, participantId=participant)


def left(participant: str = "p1", session: str = "s-1", room: str = ROOM) -> Event:
    return ev("participant-left", session, room, participantId=participant)


def ended(session: str = "s-1", room: str = ROOM) -> Event:
    return ev("session-ended", session, room, start="2022-07-05T15:55:35Z", end="2022-07-05T16:05:35Z")


def rules(rules_yaml: str, settings: str = ""):
    text = "version: 1\n"
    if settings:
        text += "settings:\n" + "".join(f"  {line}\n" for line in settings.splitlines())
    text += "rules:\n" + rules_yaml
    rule_set, problems = parse_rules(text, "t.yaml")
    assert problems == [], [str(p) for p in problems]
    return rule_set


CLOSE = """\
  - name: close
    on: session-ended
    action: deactivate
"""
CLOSE_DRY = CLOSE + "    dry_run: true\n"
# the room must stay empty for five minutes after the last leave
EMPTY = """\
  - name: empty
    on: participant-left
    when:
      room.participants: 0
    for: 5m
    action: deactivate
"""
EMPTY_DRY = EMPTY + "    dry_run: true\n"
END_SESSION = """\
  - name: stop
    on: session-ended
    confirm: active-participants
    action: end-session
"""
NEVER = """\
  - name: never
    on: session-ended
    when:
      room.id: nobody-here
    action: deactivate
  - name: unknowable
    on: session-ended
    when:
      participant.id: p1
    action: deactivate
"""

ROOM_IN_USE = advance(None, joined("p1"), NOW - 60)  # p1 is in the room
KEY_CLOSE = f"close|{ROOM}|s-1"
KEY_EMPTY = f"empty|{ROOM}|s-1"


def a_timer(rule_set, rule="empty", event=None, started_at=NOW, hold=300.0, **overrides) -> PendingTimer:
    event = event or left("p1")
    found = rule_set.rule(rule)
    fields = dict(key=action_key(rule, event.room_id, event.session_id), rule=rule,
                  fingerprint=found.fingerprint if found else "gone", room_id=event.room_id,
                  session_id=event.session_id, started_at=started_at, due_at=started_at + hold, trigger=event)
    fields.update(overrides)
    return PendingTimer(**fields)


# -- plan_event: one row per outcome of the planner's table ---------------------------------------

# (rules, settings, event, room before, pending timers (rule names), acted keys, acts,
#  expected [(rule, outcome, due_at)])
PLAN_ROWS = [
    pytest.param(CLOSE, "", ended(), ROOM_IN_USE, [], set(), True, [("close", "scheduled", None)],
                 id="scheduled"),
    pytest.param(CLOSE, "", ended(), None, [], set(), False, [("close", "dry-run", None)],
                 id="dry-run-unverified-delivery-acts-false"),
    pytest.param(CLOSE_DRY, "", ended(), None, [], set(), True, [("close", "dry-run", None)],
                 id="dry-run-rule-dry_run"),
    pytest.param(CLOSE, "dry_run: true", ended(), None, [], set(), True, [("close", "dry-run", None)],
                 id="dry-run-settings-dry_run"),
    pytest.param(CLOSE, "", ended(), None, [], {KEY_CLOSE}, True, [("close", "duplicate", None)],
                 id="duplicate-acted-key"),
    pytest.param(CLOSE, "dry_run: true", ended(), None, [], {KEY_CLOSE}, False, [("close", "duplicate", None)],
                 id="duplicate-wins-over-dry-run"),
    pytest.param(CLOSE, "", ended(), None, [], {f"close|{ROOM}|s-0"}, True, [("close", "scheduled", None)],
                 id="acted-in-another-session-is-not-a-duplicate"),
    pytest.param(CLOSE, f"protect: [{ROOM}]", ended(), None, [], set(), True, [("close", "protected", None)],
                 id="protected-exact-id"),
    pytest.param(CLOSE, "protect: ['abcd-*', 'keep-me']", ended(), None, [], set(), True,
                 [("close", "protected", None)], id="protected-glob"),
    pytest.param(CLOSE, "protect: 'abcd-????-ijkl'", ended(), None, [], set(), True,
                 [("close", "protected", None)], id="protected-single-pattern"),
    pytest.param(CLOSE, "protect: ['keep-*', 'ABCD-*']", ended(), None, [], set(), True,
                 [("close", "scheduled", None)], id="protect-globs-not-matching-case-sensitive"),
    pytest.param(CLOSE, "protect: ['abcd-*']\ndry_run: true", ended(), None, [], {KEY_CLOSE}, False,
                 [("close", "protected", None)], id="protected-wins-over-duplicate-and-dry-run"),
    pytest.param(END_SESSION, "", ended(), None, [], set(), True, [("stop", "scheduled", None)],
                 id="end-session-action-scheduled"),
    # `for:` rules
    pytest.param(EMPTY, "", left("p1"), ROOM_IN_USE, [], set(), True, [("empty", "timer-started", NOW + 300)],
                 id="timer-started-due-now-plus-for"),
    pytest.param(EMPTY, "", left("p1"), ROOM_IN_USE, ["empty"], set(), True, [("empty", "timer-running", None)],
                 id="timer-running-when-pending"),
    pytest.param(EMPTY_DRY, "", left("p1"), ROOM_IN_USE, [], set(), False, [("empty", "timer-started", NOW + 300)],
                 id="timer-started-even-in-dry-run-decided-when-it-fires"),
    pytest.param(EMPTY, "", left("p1"), ROOM_IN_USE, [], {KEY_EMPTY}, True, [("empty", "duplicate", None)],
                 id="timer-rule-already-acted-is-duplicate-not-a-timer"),
    pytest.param(EMPTY, f"protect: [{ROOM}]", left("p1"), ROOM_IN_USE, [], set(), True,
                 [("empty", "protected", None)], id="timer-rule-on-protected-room-is-protected"),
    pytest.param(EMPTY, "", left("p1"), advance(ROOM_IN_USE, joined("p2"), NOW - 30), [], set(), True, [],
                 id="timer-rule-not-holding-no-timer"),
    # nothing for rules whose result is False or unknown
    pytest.param(NEVER, "", ended(), None, [], set(), True, [], id="false-and-unknown-rules-give-nothing"),
    pytest.param(CLOSE + EMPTY + NEVER, "", ended(), None, [], set(), True, [("close", "scheduled", None)],
                 id="only-rules-for-the-event-type"),
]


@pytest.mark.parametrize("rules_yaml, settings, event, room, pending, acted, acts, expected", PLAN_ROWS)
def test_plan_event_outcomes(rules_yaml, settings, event, room, pending, acted, acts, expected):
    rule_set = rules(rules_yaml, settings)
    timers = [a_timer(rule_set, name, event) for name in pending]
    plan = plan_event(rule_set, event, NOW, room, timers, set(acted), acts=acts)
    assert isinstance(plan, EventPlan)
    assert [(o.rule, o.outcome, o.due_at) for o in plan.outcomes] == expected
    assert plan.cancels == ()
    assert plan.room == advance(room, event, NOW)
    for outcome in plan.outcomes:
        rule = rule_set.rule(outcome.rule)
        assert outcome.key == action_key(rule.name, ROOM, "s-1") == f"{rule.name}|{ROOM}|s-1"
        assert (outcome.action, outcome.room_id, outcome.session_id) == (rule.action, ROOM, "s-1")
        assert outcome.confirm == rule.confirm
        assert outcome.fingerprint == rule.fingerprint != ""
        assert outcome.creates_action is (outcome.outcome in ("scheduled", "dry-run"))


def test_outcome_carries_confirm_action_and_trace():
    rule_set = rules(END_SESSION + EMPTY)
    [stop] = plan_event(rule_set, ended(), NOW, None, [], set(), acts=True).outcomes
    assert (stop.action, stop.confirm, stop.trace) == ("end-session", "active-participants", None)
    [timer] = plan_event(rule_set, left(), NOW, ROOM_IN_USE, [], set(), acts=True).outcomes
    assert timer.trace.result is True and timer.trace.field == "room.participants" and timer.trace.actual == 0


def test_plan_event_keeps_file_order_across_rules():
    rule_set = rules(CLOSE + END_SESSION + CLOSE.replace("name: close", "name: close-2"))
    plan = plan_event(rule_set, ended(), NOW, None, [], {f"stop|{ROOM}|s-1"}, acts=True)
    assert [(o.rule, o.outcome) for o in plan.outcomes] == [
        ("close", "scheduled"), ("stop", "duplicate"), ("close-2", "scheduled")]


def test_two_rooms_do_not_share_keys():
    rule_set = rules(CLOSE)
    plan = plan_event(rule_set, ended(room="other-room-1"), NOW, None, [], {KEY_CLOSE}, acts=True)
    [outcome] = plan.outcomes
    assert (outcome.key, outcome.outcome) == ("close|other-room-1|s-1", "scheduled")


# -- plan_event: pending timers are re-checked -----------------------------------------------------

def test_a_join_cancels_the_empty_timer_with_its_reason():
    rule_set = rules(EMPTY)
    room = advance(ROOM_IN_USE, left("p1"), NOW)
    started = plan_event(rule_set, left("p1"), NOW, ROOM_IN_USE, [], set(), acts=True)
    [outcome] = started.outcomes
    timer = a_timer(rule_set, started_at=NOW, event=left("p1"))
    assert (timer.key, timer.due_at) == (outcome.key, outcome.due_at)

    plan = plan_event(rule_set, joined("p1"), NOW + 60, room, [timer], set(), acts=True)
    assert plan.outcomes == ()  # the rule is on participant-left only
    [cancel] = plan.cancels
    assert isinstance(cancel, Cancel)
    assert cancel.key == KEY_EMPTY
    assert cancel.reason == "its condition stopped holding on participant-joined"
    assert cancel.trace.result is False and cancel.trace.actual == 1
    assert plan.room.participants == {"p1"}


@pytest.mark.parametrize("event, cancelled", [
    pytest.param(joined("p2"), True, id="someone-else-joins"),
    pytest.param(joined("p1", session="s-2"), True, id="a-new-session-with-someone-in-it"),
    pytest.param(ev("recording-stopped"), False, id="room-event-keeps-it"),
    pytest.param(ended(), False, id="session-ended-keeps-it-room-still-empty"),
    pytest.param(joined("p1", session="s-0"), False, id="late-join-from-an-older-session-keeps-it"),
])
def test_pending_timer_recheck_on_other_events(event, cancelled):
    rule_set = rules(EMPTY)
    room = advance(advance(None, joined("p1", "s-0"), NOW - 200), joined("p1"), NOW - 100)
    room = advance(room, left("p1"), NOW)
    plan = plan_event(rule_set, event, NOW + 10, room, [a_timer(rule_set)], set(), acts=True)
    assert [c.key for c in plan.cancels] == ([KEY_EMPTY] if cancelled else [])
    assert all(c.reason == f"its condition stopped holding on {event.type}" for c in plan.cancels)


def test_a_repeated_leave_while_the_timer_is_pending_is_timer_running_not_a_new_timer():
    rule_set = rules(EMPTY)
    room = advance(ROOM_IN_USE, left("p1"), NOW)
    plan = plan_event(rule_set, left("p1"), NOW + 30, room, [a_timer(rule_set)], set(), acts=True)
    assert plan.cancels == ()
    assert [(o.outcome, o.due_at) for o in plan.outcomes] == [("timer-running", None)]


def test_a_cancelled_timer_can_start_again_on_the_same_event():
    # the timer's rule tests the event (participant.id), so the trigger and the new event differ
    rule_set = rules("""\
  - name: host-left
    on: participant-left
    when:
      participant.id: host
    for: 1m
    action: deactivate
""")
    timer = a_timer(rule_set, "host-left", left("guest"), hold=60)  # a rule that changed since, say
    plan = plan_event(rule_set, left("host"), NOW, ROOM_IN_USE, [timer], set(), acts=True)
    assert [c.key for c in plan.cancels] == [f"host-left|{ROOM}|s-1"]
    assert [(o.outcome, o.due_at) for o in plan.outcomes] == [("timer-started", NOW + 60)]


def test_a_timer_whose_rule_is_gone_is_cancelled_with_the_rules_hash():
    old = rules(EMPTY)
    timer = a_timer(old)
    new = rules(CLOSE)
    plan = plan_event(new, ended(), NOW + 10, advance(ROOM_IN_USE, left("p1"), NOW), [timer], set(), acts=True)
    [cancel] = plan.cancels
    assert cancel.key == KEY_EMPTY
    assert cancel.reason == f"rule 'empty' is no longer in the rules ({new.short_hash})"
    assert new.short_hash and len(new.short_hash) == 12
    assert cancel.trace is None
    assert [(o.rule, o.outcome) for o in plan.outcomes] == [("close", "scheduled")]


@pytest.mark.parametrize("event", [
    pytest.param(parse_event(json.dumps({"webhookType": "agent-session-started",
                                         "data": {"meetingId": ROOM, "sessionId": "s-1"}}).encode()),
                 id="unknown-type"),
    pytest.param(parse_event(json.dumps({"webhookType": "call-ended", "data": {"meetingId": "x y"}}).encode()),
                 id="unknown-type-without-room"),
])
def test_nothing_for_unknown_events_not_even_cancels(event):
    rule_set = rules("  - {name: all, on: '*', action: deactivate}\n")
    timer = a_timer(rules(EMPTY))  # its rule is not in rule_set
    plan = plan_event(rule_set, event, NOW, ROOM_IN_USE, [timer], set(), acts=True)
    assert plan == EventPlan(ROOM_IN_USE, (), ())
    assert plan.room is ROOM_IN_USE


# -- fire_timer -----------------------------------------------------------------------------------

EMPTY_ROOM = advance(ROOM_IN_USE, left("p1"), NOW)
BUSY_ROOM = advance(EMPTY_ROOM, joined("p2"), NOW + 100)
DUE = NOW + 300

# (rules, settings, room at the due time, acted, acts, expected (verdict, outcome or None, reason))
FIRE_ROWS = [
    pytest.param(EMPTY, "", EMPTY_ROOM, set(), True, ("fire", "scheduled", "held for 5m"), id="fire-scheduled"),
    pytest.param(EMPTY, "", EMPTY_ROOM, set(), False, ("fire", "dry-run", "held for 5m"), id="fire-dry-run-acts-false"),
    pytest.param(EMPTY_DRY, "", EMPTY_ROOM, set(), True, ("fire", "dry-run", "held for 5m"),
                 id="fire-dry-run-rule-dry_run"),
    pytest.param(EMPTY, "dry_run: true", EMPTY_ROOM, set(), True, ("fire", "dry-run", "held for 5m"),
                 id="fire-dry-run-settings"),
    pytest.param(EMPTY, "", EMPTY_ROOM, {KEY_EMPTY}, True, ("fire", "duplicate", "held for 5m"),
                 id="fire-duplicate"),
    pytest.param(EMPTY, "protect: ['abcd-*']", EMPTY_ROOM, set(), True, ("fire", "protected", "held for 5m"),
                 id="fire-protected"),
    pytest.param(EMPTY, "", BUSY_ROOM, set(), True, ("cancel", None, "its condition no longer holds"),
                 id="cancel-condition-no-longer-holds"),
    pytest.param(EMPTY, "", None, set(), True, ("cancel", None, "its condition no longer holds"),
                 id="cancel-room-state-unknown"),
    pytest.param(EMPTY.replace("for: 5m", "for: 3m"), "", EMPTY_ROOM, set(), True,
                 ("fire", "scheduled", "held for 5m"), id="for-shrank-fires"),
    pytest.param(EMPTY.replace("    for: 5m\n", ""), "", EMPTY_ROOM, set(), True,
                 ("fire", "scheduled", "held for 5m"), id="for-removed-fires"),
    pytest.param(EMPTY.replace("participant-left", "[participant-left, session-ended]"), "", EMPTY_ROOM, set(), True,
                 ("fire", "scheduled", "held for 5m"), id="rule-still-applies-with-more-types"),
]


@pytest.mark.parametrize("rules_yaml, settings, room, acted, acts, expected", FIRE_ROWS)
def test_fire_timer(rules_yaml, settings, room, acted, acts, expected):
    rule_set = rules(rules_yaml, settings)
    plan = fire_timer(rule_set, a_timer(rule_set), DUE, room, set(acted), acts=acts)
    assert isinstance(plan, TimerPlan)
    verdict, outcome, reason = expected
    assert (plan.verdict, plan.reason) == (verdict, reason)
    assert plan.due_at is None
    if outcome is None:
        assert plan.outcome is None
        assert plan.trace is not None and plan.trace.result is not True
    else:
        assert plan.outcome.outcome == outcome
        assert (plan.outcome.rule, plan.outcome.key, plan.outcome.room_id) == ("empty", KEY_EMPTY, ROOM)
        assert plan.fingerprint == plan.outcome.fingerprint == rule_set.rule("empty").fingerprint
        assert plan.trace.result is True


def test_fire_timer_cancels_when_the_rule_was_removed():
    timer = a_timer(rules(EMPTY))
    new = rules(CLOSE)
    plan = fire_timer(new, timer, DUE, EMPTY_ROOM, set(), acts=True)
    assert (plan.verdict, plan.outcome) == ("cancel", None)
    assert plan.reason == f"rule 'empty' is no longer in the rules ({new.short_hash})"


def test_fire_timer_cancels_when_the_rule_no_longer_applies_to_the_trigger():
    timer = a_timer(rules(EMPTY))
    new = rules(EMPTY.replace("on: participant-left", "on: session-ended"))
    plan = fire_timer(new, timer, DUE, EMPTY_ROOM, set(), acts=True)
    assert (plan.verdict, plan.outcome) == ("cancel", None)
    assert plan.reason == "rule 'empty' no longer applies to participant-left"


def test_fire_timer_waits_longer_when_for_grew():
    timer = a_timer(rules(EMPTY))
    grown = rules(EMPTY.replace("for: 5m", "for: 10m"))
    plan = fire_timer(grown, timer, DUE, EMPTY_ROOM, set(), acts=True)
    assert (plan.verdict, plan.outcome) == ("wait", None)
    assert plan.due_at == NOW + 600
    assert plan.reason == "rule 'empty' now waits 10m"
    assert plan.fingerprint == grown.rule("empty").fingerprint != timer.fingerprint
    # at the new due time it fires
    later = fire_timer(grown, timer, NOW + 600, EMPTY_ROOM, set(), acts=True)
    assert (later.verdict, later.outcome.outcome, later.reason) == ("fire", "scheduled", "held for 10m")


def test_fire_timer_uses_the_trigger_session_for_the_key():
    rule_set = rules(EMPTY)
    timer = a_timer(rule_set, event=left("p1", "s-7"))
    room = advance(None, left("p1", "s-7"), NOW)
    plan = fire_timer(rule_set, timer, DUE, room, {KEY_EMPTY}, acts=True)
    assert (plan.outcome.key, plan.outcome.session_id, plan.outcome.outcome) == (
        f"empty|{ROOM}|s-7", "s-7", "scheduled")


# -- recheck_timer after a reload -----------------------------------------------------------------

def test_recheck_unchanged_rule_waits_unchanged():
    rule_set = rules(EMPTY)
    timer = a_timer(rule_set)
    plan = recheck_timer(rule_set, timer, NOW + 10, EMPTY_ROOM)
    assert (plan.verdict, plan.reason, plan.due_at, plan.fingerprint) == ("wait", "unchanged", DUE,
                                                                         timer.fingerprint)


def test_recheck_description_only_change_is_unchanged():
    timer = a_timer(rules(EMPTY))
    described = rules(EMPTY.replace("    for: 5m\n", "    for: 5m\n    description: a new text\n"))
    plan = recheck_timer(described, timer, NOW + 10, BUSY_ROOM)  # not even re-evaluated
    assert (plan.verdict, plan.reason, plan.due_at) == ("wait", "unchanged", DUE)


def test_recheck_removed_rule_cancels():
    timer = a_timer(rules(EMPTY))
    new = rules(CLOSE)
    plan = recheck_timer(new, timer, NOW + 10, EMPTY_ROOM)
    assert plan.verdict == "cancel"
    assert plan.reason == f"rule 'empty' was removed in a reload ({new.short_hash})"


@pytest.mark.parametrize("changed_yaml, room, expected_due", [
    pytest.param(EMPTY.replace("for: 5m", "for: 10m"), EMPTY_ROOM, NOW + 600, id="for-grew-new-due"),
    pytest.param(EMPTY.replace("for: 5m", "for: 1m"), EMPTY_ROOM, NOW + 60, id="for-shrank-new-due"),
    pytest.param(EMPTY.replace("room.participants: 0", "room.participants: {lte: 0}"), EMPTY_ROOM, NOW + 300,
                 id="condition-changed-still-holds"),
    pytest.param(EMPTY.replace("    for: 5m\n", ""), EMPTY_ROOM, NOW, id="for-removed-due-now"),
    pytest.param(EMPTY.replace("action: deactivate", "action: end-session"), EMPTY_ROOM, NOW + 300,
                 id="action-changed"),
])
def test_recheck_changed_rule_that_still_holds_waits_with_a_note(changed_yaml, room, expected_due):
    timer = a_timer(rules(EMPTY))
    new = rules(changed_yaml)
    assert new.rule("empty").fingerprint != timer.fingerprint
    plan = recheck_timer(new, timer, NOW + 10, room)
    assert plan.verdict == "wait"
    assert plan.reason == f"rule 'empty' changed in a reload; re-checked, still holds ({new.short_hash})"
    assert plan.due_at == expected_due
    assert plan.fingerprint == new.rule("empty").fingerprint


@pytest.mark.parametrize("changed_yaml, room, reason", [
    pytest.param(EMPTY.replace("room.participants: 0", "room.participants: 5"), EMPTY_ROOM,
                 "rule 'empty' changed in a reload and its condition no longer holds", id="condition-now-false"),
    pytest.param(EMPTY.replace("for: 5m", "for: 10m"), BUSY_ROOM,
                 "rule 'empty' changed in a reload and its condition no longer holds", id="room-no-longer-empty"),
    pytest.param(EMPTY.replace("room.participants: 0", "participant.id: p1\n      session.duration: {gt: 1}"),
                 EMPTY_ROOM, "rule 'empty' changed in a reload and its condition no longer holds",
                 id="condition-now-unknown"),
    pytest.param(EMPTY.replace("on: participant-left", "on: session-ended"), EMPTY_ROOM,
                 "rule 'empty' changed in a reload and no longer applies to participant-left", id="on-changed"),
])
def test_recheck_changed_rule_that_no_longer_holds_cancels(changed_yaml, room, reason):
    timer = a_timer(rules(EMPTY))
    new = rules(changed_yaml)
    plan = recheck_timer(new, timer, NOW + 10, room)
    assert plan.verdict == "cancel"
    assert plan.reason == f"{reason} ({new.short_hash})"
    assert plan.outcome is None and plan.due_at is None


# -- a timer whose trigger no longer parses (validation tightened in an upgrade) ----------------------


def test_a_timer_whose_trigger_no_longer_parses_is_cancelled_not_fatal():
    rule_set = rules(EMPTY)
    timer = a_timer(rule_set, trigger=None)
    plan = plan_event(rule_set, joined("p2"), NOW + 10, None, [timer], set(), acts=True)
    assert [c.key for c in plan.cancels] == [KEY_EMPTY]
    assert "no longer parses" in plan.cancels[0].reason
    for decide in (lambda: fire_timer(rule_set, timer, NOW + 400, None, set(), acts=True),
                   lambda: recheck_timer(rule_set, timer, NOW + 10, None)):
        verdict = decide()
        assert verdict.verdict == "cancel" and "no longer parses" in verdict.reason


def test_a_stored_timer_reads_an_unparseable_trigger_as_none():
    row = PendingTimer.from_row(dict(id=1, key=KEY_EMPTY, rule="empty", fingerprint="f", room_id=ROOM,
                                     session_id="s-1", action="deactivate", delivery_id="d", started_at=NOW,
                                     due_at=NOW + 300, trigger_verified=True,
                                     trigger_body='{"webhookType": "participant-left", "data": {}}'))
    assert row.trigger is None


def test_a_stored_timer_parses_each_trigger_once_per_process():
    # Every delivery for a room reads its pending timers again, inside the room's write lock:
    # the trigger is parsed once and the same immutable Event comes back after that.
    body = ('{"webhookType": "participant-left", "data": {"meetingId": "cache-room", "sessionId": "s-9", '
            '"participantId": "p-1", "participantName": "A"}}')

    def row(id_):
        return PendingTimer.from_row(dict(id=id_, key=KEY_EMPTY, rule="empty", fingerprint="f",
                                          room_id="cache-room", session_id="s-9", action="deactivate",
                                          delivery_id="d", started_at=NOW, due_at=NOW + 300, trigger_body=body,
                                          trigger_verified=True))

    first, second = row(1).trigger, row(2).trigger
    assert first is not None and first.room_id == "cache-room" and first.participant_id == "p-1"
    assert second is first
    with pytest.raises(TypeError):
        first.data["meetingId"] = "other"  # shared, so it must not be writable

    # A large body is parsed each time instead: 512 of them kept could be a process's memory.
    from service.planner import CACHED_TRIGGER_MAX

    padding = "x" * CACHED_TRIGGER_MAX
    body = body.replace('"A"', f'"A", "note": "{padding}"')
    large, again = row(3).trigger, row(4).trigger
    assert large is not None and again is not None and large.room_id == again.room_id == "cache-room"
    assert again is not large


# -- now.time between a timer's start and its due time (found in a review) --


def test_an_unrelated_event_in_between_does_not_cancel_a_timer_on_now_time():
    from datetime import datetime, timezone
    from textwrap import dedent

    def ev(event_type, session="s1", **data):
        return parse_event(json.dumps({"webhookType": event_type,
                                       "data": {"meetingId": ROOM, "sessionId": session, **data}}).encode())

    rule_set, problems = parse_rules(dedent("""\
        version: 1
        rules:
          - name: office-hours-empty
            on: participant-left
            when:
              room.participants: 0
              now.time: {gte: "09:00", lt: "17:00"}
            for: 1d
            confirm: active-participants
            action: deactivate
    """), "rules.yaml")
    assert problems == []
    monday_10 = datetime(2026, 1, 5, 10, 0, tzinfo=timezone.utc).timestamp()
    room = advance(None, ev("participant-joined", participantId="ann"), monday_10 - 60)
    leave = ev("participant-left", participantId="ann")
    started = plan_event(rule_set, leave, monday_10, room, [], set(), acts=True)
    [outcome] = started.outcomes
    assert outcome.outcome == "timer-started"
    timer = PendingTimer(key=action_key("office-hours-empty", ROOM, "s1"), rule="office-hours-empty",
                         fingerprint=rule_set.rules[0].fingerprint, room_id=ROOM, session_id="s1",
                         started_at=monday_10, due_at=outcome.due_at, trigger=leave)
    # Without anything in between, the timer fires when due (Tuesday 10:00: inside the hours).
    assert fire_timer(rule_set, timer, outcome.due_at, started.room, set(), acts=True).verdict == "fire"
    # An unrelated event for the room at 20:00 Monday changes nothing about the room...
    between = plan_event(rule_set, ev("recording-stopped"), monday_10 + 10 * 3600, started.room, [timer],
                         set(), acts=True)
    assert between.room.participants == frozenset()
    # ...so, with now.time checked only at start and when due, it must not cancel the timer.
    assert between.cancels == ()
