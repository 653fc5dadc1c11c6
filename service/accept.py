"""What a webhook request does, and all it does: verify, check the envelope, append to the inbox.

No rule, no room lock, no planner: those run behind, in the decider (decider.py). When
`accept` returns, the delivery is durable in the inbox and will be decided exactly once.

How it fails: `SignatureInvalid` (401) for a body that fails verification against a key we
have; `PayloadInvalid` (400) for a body that is not JSON or not `{"webhookType": str,
"data": {...}}`; `StoreUnavailable` (503) when the inbox cannot be written, the only 5xx.
When no public key can be had, the body is kept unverified (`verified=None`) and the
decider verifies it once a key can be had: VideoSDK documents no retries, so refusing it
would lose it.
"""

from __future__ import annotations

import secrets
import time
from typing import Callable

from .errors import KeyUnavailable
from .events import read_envelope
from .signature import SignatureVerifier
from .store.inbox import Inbox, InboxItem


def new_delivery_id(now: float) -> str:
    """Time-ordered and unguessable: milliseconds in hex, then 64 random bits."""
    return f"{int(now * 1000):011x}{secrets.token_hex(8)}"


class Intake:
    def __init__(self, inbox: Inbox, verifier: SignatureVerifier | None, clock: Callable[[], float] = time.time):
        self.inbox = inbox  # all a request writes
        self.verifier = verifier  # None: verification is off (WEBHOOK_VERIFY=false)
        self.clock = clock

    def accept(self, raw: bytes, signature: str | None) -> tuple[InboxItem, str]:
        """The inbox row written, and the body's event type."""
        verified: bool | None = False
        if self.verifier is not None:
            try:
                self.verifier.verify(raw, signature)  # before parsing anything
                verified = True
            except KeyUnavailable:
                verified = None  # kept, to be verified once a key can be had
        event_type, room_id = read_envelope(raw)
        now = self.clock()
        item = InboxItem(id=new_delivery_id(now), received_at=now, room_id=room_id, body=raw.decode("utf-8"),
                         signature=signature, verified=verified)  # a header is at most 8 KiB (gunicorn.conf.py)
        self.inbox.append(item)
        return item, event_type
