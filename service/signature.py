"""Check `videosdk-signature`: base64 of RSA PKCS#1 v1.5 / SHA-256 over the raw body bytes.

How it fails: `verify` raises `SignatureInvalid` (401) for a missing, garbled or
wrong signature, and `KeyUnavailable` when there is
no key to check with: none pinned and the fetch failed. It never accepts a body
it could not check.

Keys: any number may be pinned (`VIDEOSDK_WEBHOOK_PUBLIC_KEY`, several PEM
blocks allowed); without pins the key is fetched once and cached. VideoSDK's
rotation policy is unknown, so when no known key matches and the fetched key
is older than `refetch_after` seconds, it is fetched again before the body is
refused.
"""

from __future__ import annotations

import base64
import binascii
import re
import threading
import time
from typing import Callable

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from .errors import KeyUnavailable, SignatureInvalid

HEADER = "videosdk-signature"
_PEM_BLOCK = re.compile(r"-----BEGIN ([A-Z ]+)-----.+?-----END \1-----", re.S)


def load_public_keys(text: str) -> list[rsa.RSAPublicKey]:
    """Every RSA public key in PEM text (PKCS#1 or SubjectPublicKeyInfo). Raises ValueError."""
    keys = []
    for match in _PEM_BLOCK.finditer(text):
        try:
            key = serialization.load_pem_public_key(match.group(0).encode("ascii"))
        except (ValueError, UnsupportedAlgorithm, UnicodeEncodeError) as exc:
            raise ValueError(f"unreadable PEM block ({match.group(1)}): {exc}") from None
        if not isinstance(key, rsa.RSAPublicKey):
            raise ValueError(f"a {type(key).__name__} is not an RSA public key")
        keys.append(key)
    if not keys:
        raise ValueError("no PEM public key found (expected -----BEGIN RSA PUBLIC KEY-----)")
    return keys


def _matches(key: rsa.RSAPublicKey, signature: bytes, body: bytes) -> bool:
    try:
        key.verify(signature, body, padding.PKCS1v15(), hashes.SHA256())
        return True
    except (InvalidSignature, ValueError):
        return False


class SignatureVerifier:
    def __init__(self, pinned: list[rsa.RSAPublicKey] | None = None,
                 fetch: Callable[[], str] | None = None, *, clock: Callable[[], float] = time.monotonic,
                 refetch_after: float = 300.0, retry_fetch_after: float = 5.0):
        if not pinned and fetch is None:
            raise ValueError("a verifier needs pinned keys or a way to fetch one")
        self._pinned = list(pinned or ())
        self._fetch = fetch
        self._clock = clock
        self._refetch_after = refetch_after
        self._retry_fetch_after = retry_fetch_after
        self._lock = threading.Lock()
        self._fetched: list[rsa.RSAPublicKey] = []
        self._fetched_at: float | None = None
        self._failed_at: float | None = None
        self.last_error: str | None = None

    @property
    def has_key(self) -> bool:
        return bool(self._pinned or self._fetched)

    def verify(self, body: bytes, header: str | None) -> None:
        if not header or not header.strip():
            raise SignatureInvalid(f"missing {HEADER} header")
        try:
            signature = base64.b64decode(header.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise SignatureInvalid(f"{HEADER} is not base64") from None
        if not signature:
            raise SignatureInvalid(f"{HEADER} is empty")
        keys = self._keys()
        if any(_matches(key, signature, body) for key in keys):
            return
        if self._refresh(stale_only=True) and any(_matches(k, signature, body) for k in self._fetched):
            return
        raise SignatureInvalid(f"{HEADER} does not match the body")

    def _keys(self) -> list[rsa.RSAPublicKey]:
        if not self._fetched and self._fetch is not None:
            self._refresh(stale_only=False)
        keys = self._pinned + self._fetched
        if not keys:
            raise KeyUnavailable(f"no webhook public key yet: {self.last_error}")
        return keys

    def _refresh(self, *, stale_only: bool) -> bool:
        """Fetch the key again; True if a new fetch succeeded. Never more than one at a time."""
        if self._fetch is None:
            return False
        with self._lock:
            now = self._clock()
            if stale_only and (self._fetched_at is None or now - self._fetched_at < self._refetch_after):
                return False
            if not stale_only and self._fetched:
                return True  # another thread fetched it while we waited
            if self._failed_at is not None and now - self._failed_at < self._retry_fetch_after:
                return False
            try:
                self._fetched = load_public_keys(self._fetch())
            except (KeyUnavailable, ValueError) as exc:
                self._failed_at = now
                self.last_error = str(exc)
                return False
            self._fetched_at, self._failed_at, self.last_error = now, None, None
            return True
