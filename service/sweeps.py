"""Sweeps: time as a trigger, for the rooms whose closing webhook never came.

VideoSDK documents no webhook retries, so one lost `participant-left` or `session-ended` can
leave a room open for good, and rules that run only when a delivery arrives cannot notice.
Every `settings.sweep_every` (when some rule is `on: sweep`) one worker at a time appends a
`sweep` event to the inbox for each room roomwarden knows and has not closed; the decider
decides it like any delivery, with the rules `on: sweep` only (see planner.py), and a rule's
`confirm: no-live-session` asks VideoSDK before anything is called. This module names the
sweep's rows: ids no delivery can have, and the bodies the decider reads.
"""

from __future__ import annotations

import hashlib
import json

from .events import SWEEP

SWEEP_MARK = "s"  # the 12th character of a sweep's id; a delivery's id is hex there (accept.py)
CHUNK = 500  # rooms appended to the inbox per transaction of a round
LEASE_SECONDS = 60.0  # a round's owner holds it this long after its last chunk; then another may carry it on


def sweep_id(now: float, round_: int, room_id: str) -> str:
    """32 characters, ordered by time like a delivery's id, unique per round and room."""
    digest = hashlib.sha256(f"{round_}|{room_id}".encode()).hexdigest()[:20]
    return f"{int(now * 1000):011x}{SWEEP_MARK}{digest}"


def is_sweep_id(delivery_id: str) -> bool:
    return len(delivery_id) == 32 and delivery_id[11] == SWEEP_MARK


def sweep_body(room_id: str, round_: int) -> str:
    return json.dumps({"webhookType": SWEEP, "data": {"meetingId": room_id, "round": round_}},
                      separators=(",", ":"))
