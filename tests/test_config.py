"""Settings from the environment, and the signature verifier's key handling."""

from __future__ import annotations

import base64

import pytest

from service.config import Settings
from service.errors import ConfigError, KeyUnavailable, SignatureInvalid
from service.signature import SignatureVerifier, load_public_keys

from .conftest import Clock, sign_with


def test_defaults():
    settings = Settings.from_env({})
    assert settings.api_base == "https://api.videosdk.live"
    assert settings.webhook_verify is True and settings.dry_run is False
    assert str(settings.rules_file) == "rules.yaml"
    assert settings.database_url == "sqlite:///instance/roomwarden.db"


@pytest.mark.parametrize("env, fragment", [
    # booleans are strict: a typo must not silently turn verification off
    ({"WEBHOOK_VERIFY": "flase"}, "WEBHOOK_VERIFY='flase' is not a boolean"),
    ({"DRY_RUN": "maybe"}, "DRY_RUN='maybe' is not a boolean"),
    ({"VIDEOSDK_API_BASE": "ftp://x"}, "must start with https://"),
    ({"VIDEOSDK_TIMEOUT_SECONDS": "soon"}, "is not a number"),
    ({"VIDEOSDK_TIMEOUT_SECONDS": "nan"}, "must be at least"),
    ({"ACTION_MAX_ATTEMPTS": "0"}, "must be at least 1"),
    # a lease shorter than a call would let two workers make the same call
    ({"VIDEOSDK_TIMEOUT_SECONDS": "60", "ACTION_LEASE_SECONDS": "30"}, "must exceed"),
    ({"VIDEOSDK_WEBHOOK_PUBLIC_KEY": "/no/such/key.pem"}, "neither PEM text nor a readable file"),
])
def test_bad_settings_say_what_to_fix(env, fragment):
    with pytest.raises(ConfigError, match=None) as info:
        Settings.from_env(env)
    assert fragment in str(info.value)


def test_missing_credentials_refused_unless_dry_run():
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"VIDEOSDK_API_KEY": "k"}).require_credentials()
    assert str(info.value).startswith("VIDEOSDK_SECRET_KEY must be set")
    Settings.from_env({"DRY_RUN": "true"}).require_credentials()  # does not raise


def test_secrets_are_not_in_repr():
    settings = Settings.from_env({"VIDEOSDK_API_KEY": "key-123", "VIDEOSDK_SECRET_KEY": "hush-456"})
    assert "hush-456" not in repr(settings) and "key-123" not in repr(settings)


@pytest.mark.parametrize("flag, verify, dry, acts", [
    ("normal", "true", "false", True),
    ("dry run", "true", "true", False),
    ("unverified deliveries never act", "false", "false", False),
])
def test_acts(flag, verify, dry, acts):
    assert Settings.from_env({"WEBHOOK_VERIFY": verify, "DRY_RUN": dry}).acts is acts


def test_public_key_from_a_file_or_escaped_text(tmp_path, public_pem):
    path = tmp_path / "key.pem"
    path.write_text(public_pem)
    assert Settings.from_env({"VIDEOSDK_WEBHOOK_PUBLIC_KEY": str(path)}).webhook_public_key == public_pem
    escaped = public_pem.replace("\n", "\\n")
    assert Settings.from_env({"VIDEOSDK_WEBHOOK_PUBLIC_KEY": escaped}).webhook_public_key == public_pem


def test_a_bad_pinned_key_stops_start_up(make_app):
    with pytest.raises(ConfigError, match="VIDEOSDK_WEBHOOK_PUBLIC_KEY: unreadable PEM block"):
        make_app(VIDEOSDK_WEBHOOK_PUBLIC_KEY="-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----")


def test_unsupported_database_is_refused(make_app):
    with pytest.raises(ConfigError, match="unsupported database 'mysql'"):
        make_app(DATABASE_URL="mysql://x@localhost/db")


def test_in_memory_sqlite_is_refused(make_app):
    with pytest.raises(ConfigError, match="in-memory SQLite"):
        make_app(DATABASE_URL="sqlite://")


# -- the verifier ------------------------------------------------------------------------------


def test_load_public_keys_rejects_text_without_a_key():
    with pytest.raises(ValueError, match="no PEM public key"):
        load_public_keys("hello")


def test_verifier_fetches_once_and_caches(private_key, public_pem):
    fetches = []
    verifier = SignatureVerifier(fetch=lambda: fetches.append(1) or public_pem)
    for body in (b"a", b"b", b"c"):
        verifier.verify(body, sign_with(private_key, body))
    assert len(fetches) == 1


def test_verifier_retries_a_failed_fetch_after_a_pause(private_key, public_pem):
    clock, answers = Clock(1000.0), [KeyUnavailable("down"), public_pem]

    def fetch():
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    verifier = SignatureVerifier(fetch=fetch, clock=clock, retry_fetch_after=5)
    body = b"{}"
    with pytest.raises(KeyUnavailable, match="down"):
        verifier.verify(body, sign_with(private_key, body))
    with pytest.raises(KeyUnavailable):  # too soon: no second fetch yet
        verifier.verify(body, sign_with(private_key, body))
    assert len(answers) == 1
    clock.now += 6
    verifier.verify(body, sign_with(private_key, body))  # fetched, verified


def test_verifier_refetches_a_stale_key_when_a_signature_does_not_match(private_key, public_pem):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    old = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    old_pem = old.public_key().public_bytes(serialization.Encoding.PEM,
                                            serialization.PublicFormat.PKCS1).decode()
    clock, served = Clock(1000.0), [old_pem]
    verifier = SignatureVerifier(fetch=lambda: served[0], clock=clock, refetch_after=300)
    verifier.verify(b"x", sign_with(old, b"x"))
    served[0] = public_pem  # VideoSDK rotated its key
    with pytest.raises(SignatureInvalid):  # the cached key is fresh: no refetch for a bad signature
        verifier.verify(b"y", sign_with(private_key, b"y"))
    clock.now += 301
    verifier.verify(b"y", sign_with(private_key, b"y"))  # stale: refetched, now matches


def test_verifier_never_accepts_without_a_key(public_pem):
    verifier = SignatureVerifier(fetch=lambda: "no key here")
    with pytest.raises(KeyUnavailable, match="no PEM public key"):
        verifier.verify(b"{}", base64.b64encode(b"x" * 256).decode())


@pytest.mark.parametrize("env, fragment", [
    # values that would overflow, or never wake a sleeping loop, are refused at start
    ({"ACTION_MAX_ATTEMPTS": "inf"}, "must be at most"),
    ({"BREAKER_THRESHOLD": "1e400"}, "must be at most"),
    ({"WORKER_POLL_SECONDS": "1e300"}, "must be at most"),
    ({"RULES_RELOAD_SECONDS": "inf"}, "must be at most"),
    # counts are whole numbers
    ({"ACTION_MAX_ATTEMPTS": "2.5"}, "must be a whole number"),
    # a log level that does not exist is a typo, not INFO
    ({"LOG_LEVEL": "verbose"}, "LOG_LEVEL='verbose' is not a level"),
])
def test_out_of_range_settings_are_refused(env, fragment):
    with pytest.raises(ConfigError) as info:
        Settings.from_env(env)
    assert fragment in str(info.value)


def test_the_database_url_is_not_in_repr():
    settings = Settings.from_env({"DATABASE_URL": "postgresql://user:hunter2@db/x"})
    assert "hunter2" not in repr(settings)
