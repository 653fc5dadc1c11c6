"""What the worker can do to a room, and what it may ask VideoSDK first: one registry entry per
action kind (ACTION_KINDS: its call, how its 2xx answer is read, what it means for the room) and
one per confirm check (CONFIRM_KINDS: its calls and what each answer means). The names and their
one-line docs are the rules' vocabulary, in rules/model.py (ACTIONS, CONFIRMS), which the loader
and docs/rules.md use; this module binds each name to its calls, and fails at import if the two
disagree. The actor (actor.py) looks each claim's kind and check up here.

A check answers a `Confirmation`: go ahead (with a note for the record), or stop with the result
and verdict to record. Anything unclear stops: a room is never acted on on a misread answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from . import answers
from .outcomes import Attempt
from .retrypolicy import RetryPolicy, Verdict
from .rooms import RoomState
from .rules.model import ACTIONS, CONFIRMS
from .store import ClaimedAction
from .store.history import History
from .videosdk import ApiResult, VideoSDKClient

ROOM_NOT_FOUND = (402, 404)  # deactivate's documented "room not found": as good as closed


@dataclass(frozen=True)
class Stop:
    """Not acting now: the attempt to record (a check's call and what it meant)."""
    result: ApiResult
    verdict: Verdict


@dataclass(frozen=True)
class Confirmation:
    note: str | None = None  # for the attempt's record: what the check saw
    stop: Stop | None = None  # None: go ahead


@dataclass
class Checker:
    """What a check and an action's follow-up may use."""
    client: VideoSDKClient
    history: History  # the room as roomwarden last recorded it
    policy: RetryPolicy
    rand: Callable[[], float]
    log_misread: Callable[[ClaimedAction, answers.Misread], None]

    def failed(self, result: ApiResult, claim: ClaimedAction) -> Confirmation:
        """A check's call that did not answer 2xx: retried as the policy says, never acted on."""
        verdict = self.policy.judge(result, claim.attempts, self.rand)
        return Confirmation(stop=Stop(result, Verdict(verdict.outcome, verdict.delay,
                                                      f"confirm check failed: {verdict.reason}",
                                                      verdict.credentials_problem)))

    def unreadable(self, misread: answers.Misread, result: ApiResult, claim: ClaimedAction) -> Confirmation:
        """A 2xx whose body is in no documented shape: retried like no answer at all (and the
        breaker counts it as a failure: an API that answers but says nothing usable is not healthy)."""
        self.log_misread(claim, misread)
        unreadable = ApiResult(None, result.latency_ms, f"confirm: {misread.message}")
        return Confirmation(stop=Stop(unreadable, self.policy.judge(unreadable, claim.attempts, self.rand)))


# -- the confirm checks --------------------------------------------------------------------------


def no_live_session(checker: Checker, claim: ClaimedAction) -> Confirmation:
    """Go ahead when VideoSDK lists no live session in the room. A listed session cancels (the
    room is in use: the sweep was wrong about it); no answer, an error or an answer in no
    documented shape is retried, never acted on."""
    listed = checker.client.live_sessions(claim.room_id)
    if not listed.ok:
        return checker.failed(listed, claim)
    live = answers.live_sessions(listed.body)
    if isinstance(live, answers.Misread):
        return checker.unreadable(live, listed, claim)
    if live:
        return Confirmation(stop=Stop(listed, Verdict(
            Attempt.CANCELLED, reason=f"confirm: VideoSDK lists live session {', '.join(live[:3])} in room "
                                      f"{claim.room_id}; not acted on")))
    return Confirmation(f"confirm: VideoSDK lists no live session in room {claim.room_id}")


def nobody_active(checker: Checker, claim: ClaimedAction) -> Confirmation:
    """Go ahead when nobody is active. Asks about the session whose event led to the action and,
    if roomwarden knows of a later live session in the room, about that one too: a room is never
    deactivated while anyone is in either."""
    sessions = [claim.session_id] if claim.session_id else []
    room = checker.history.room(claim.room_id)
    current = RoomState.from_dict(claim.room_id, room["state"]) if room else None
    if current is not None and current.session_active and current.session_id not in (None, *sessions):
        sessions.append(current.session_id)
    if not sessions:
        return Confirmation(stop=Stop(ApiResult(None, 0.0),
                                      Verdict(Attempt.CANCELLED, reason="confirm: no session to check")))
    notes = []
    for session in sessions:
        check = checker.client.active_participants(session)
        if check.status == 404:  # documented: "Session not found" or "No active participants found"
            notes.append(f"session {session} not found (404): nobody active")
            continue
        if not check.ok:
            return checker.failed(check, claim)
        count = answers.active_participants(check.body)
        if isinstance(count, answers.Misread):
            return checker.unreadable(count, check, claim)
        if count > 0:
            return Confirmation(stop=Stop(check, Verdict(
                Attempt.CANCELLED, reason=f"confirm: {count} participant(s) active in session {session}; "
                                          "not acted on")))
        notes.append(f"nobody active in session {session}")
    return Confirmation("confirm: " + "; ".join(notes))


@dataclass(frozen=True)
class ConfirmKind:
    name: str
    doc: str  # rules/model.py's CONFIRMS
    check: Callable[[Checker, ClaimedAction], Confirmation]


CONFIRM_KINDS = {kind.name: kind for kind in (
    ConfirmKind("active-participants", CONFIRMS["active-participants"], nobody_active),
    ConfirmKind("no-live-session", CONFIRMS["no-live-session"], no_live_session),
)}


# -- the action kinds ----------------------------------------------------------------------------


def session_already_ended(checker: Checker, claim: ClaimedAction, refused: ApiResult) -> str | None:
    """After a 406 from end-session: why the session counts as ended, or None if it may not be.

    VideoSDK answers 406 "Failed to end session" for a session that has already ended, it
    seems (inferred, not documented; docs/videosdk.md). The same status can mean a real
    failure, so the room's live sessions are listed: only when the session is not among
    them is the action done. Anything unclear leaves the 406 to the retry policy.
    """
    if refused.status != 406:
        return None
    listed = checker.client.live_sessions(claim.room_id)
    if not listed.ok:
        return None
    live = answers.live_sessions(listed.body)
    if isinstance(live, answers.Misread):
        checker.log_misread(claim, live)
        return None
    if claim.session_id:
        if claim.session_id in live:
            return None
        return f"session already ended: VideoSDK does not list {claim.session_id} as live"
    if live:
        return None
    return f"session already ended: VideoSDK lists no live session in room {claim.room_id}"


def end_session_already_done(checker: Checker, claim: ClaimedAction,
                             refused: ApiResult) -> tuple[str, answers.Reading] | None:
    ended = session_already_ended(checker, claim, refused)
    return None if ended is None else (ended, answers.Reading({"status": "ended"}))


@dataclass(frozen=True)
class ActionKind:
    name: str
    doc: str  # rules/model.py's ACTIONS
    call: Callable[[VideoSDKClient, ClaimedAction], ApiResult]
    read: Callable[[ClaimedAction, ApiResult], answers.Reading]  # what its 2xx answer said
    closes_room: Callable[[ApiResult], bool] = lambda result: False  # not swept again until a delivery
    # After a refusal: (a note, the reading to record) when the refusal means it is done already;
    # None leaves the refusal to the retry policy.
    already_done: Callable[[Checker, ClaimedAction, ApiResult], tuple[str, answers.Reading] | None] = (
        lambda *_: None)


ACTION_KINDS = {kind.name: kind for kind in (
    ActionKind("deactivate", ACTIONS["deactivate"],
               call=lambda client, action: client.deactivate_room(action.room_id),
               read=lambda action, result: answers.deactivated(result.body, action.room_id),
               closes_room=lambda result: result.ok or result.status in ROOM_NOT_FOUND),
    ActionKind("end-session", ACTIONS["end-session"],
               call=lambda client, action: client.end_session(action.room_id, action.session_id),
               read=lambda action, result: answers.session_ended(result.body),
               already_done=end_session_already_done),
)}

if set(ACTION_KINDS) != set(ACTIONS) or set(CONFIRM_KINDS) != set(CONFIRMS):  # pragma: no cover
    raise ImportError("service/acting.py and rules/model.py name different actions or checks")
