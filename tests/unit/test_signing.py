"""Signing: exact-bytes HMAC, domain separation, rotation, reasons, and no key leaks."""

from __future__ import annotations

import hashlib
import hmac
import json
import pathlib
import pickle

import pytest
from hypothesis import given
from hypothesis import strategies as st

from murmur.errors import ConfigurationError
from murmur.signing import RESULT_DOMAIN, TASK_DOMAIN, Keyring, Reason, is_expired, key_id

VECTORS = json.loads((pathlib.Path(__file__).parents[1] / "vectors" / "wire_v1.json").read_text())
KEY = b"k" * 32


def test_vectors_match_the_documented_algorithm() -> None:
    key = bytes.fromhex(VECTORS["key_hex"])
    ring = Keyring(key)
    assert ring.signing_kid == VECTORS["kid"] == hashlib.sha256(key).hexdigest()[:8]
    task = VECTORS["task"]["body"].encode()
    assert ring.sign(task)[0] == VECTORS["task"]["signature"]
    assert ring.verify(task, VECTORS["task"]["signature"], VECTORS["kid"]).ok
    result = VECTORS["result"]["body"].encode()
    assert ring.sign(result, RESULT_DOMAIN)[0] == VECTORS["result"]["signature"]
    # Independent computation, as a publisher in another language would do it.
    assert (
        hmac.new(key, b"murmur/v1/task\n" + task, hashlib.sha256).hexdigest()
        == VECTORS["task"]["signature"]
    )
    tampered = VECTORS["tampered_task"]
    assert ring.verify(tampered["body"].encode(), tampered["signature"]).reason == Reason.MISMATCH


@given(
    key=st.binary(min_size=1, max_size=200),  # past the 64-byte block: hashed first
    body=st.binary(max_size=2048),
    domain=st.sampled_from([TASK_DOMAIN, RESULT_DOMAIN, b"murmur/v1/task\n", b"other\n"]),
)
def test_signatures_are_hmac_sha256_over_domain_and_body(
    key: bytes, body: bytes, domain: bytes
) -> None:
    expected = hmac.new(key, domain + body, hashlib.sha256).hexdigest()
    ring = Keyring(key)
    assert ring.sign(body, domain)[0] == expected
    assert ring.verify(body, expected, domain=domain).ok


@given(body=st.binary(min_size=1, max_size=512), data=st.data())
def test_flipping_any_byte_breaks_the_signature(body: bytes, data: st.DataObject) -> None:
    ring = Keyring(KEY)
    sig, kid = ring.sign(body)
    assert ring.verify(body, sig, kid).ok
    i = data.draw(st.integers(0, len(body) - 1))
    bit = data.draw(st.integers(0, 7))
    flipped = body[:i] + bytes([body[i] ^ (1 << bit)]) + body[i + 1 :]
    verdict = ring.verify(flipped, sig, kid)
    assert not verdict.ok and verdict.reason == Reason.MISMATCH


@given(body=st.binary(max_size=256))
def test_a_result_signature_never_verifies_as_a_task(body: bytes) -> None:
    ring = Keyring(KEY)
    sig, kid = ring.sign(body, RESULT_DOMAIN)
    assert not ring.verify(body, sig, kid, TASK_DOMAIN).ok
    assert ring.verify(body, sig, kid, RESULT_DOMAIN).ok


def test_rotation_new_and_old_then_old_dropped() -> None:
    old, new = b"old-key-" * 4, b"new-key-" * 4
    by_old, by_new = Keyring(old), Keyring(new)
    body = b'{"task": 1}'
    during = Keyring((new, old))
    assert during.signing_kid == key_id(new)
    for signer in (by_old, by_new):
        assert during.verify(body, *signer.sign(body)).ok
    after = Keyring(new)
    verdict = after.verify(body, *by_old.sign(body))
    assert not verdict.ok and verdict.reason in (Reason.UNKNOWN_KID, Reason.MISMATCH)
    sig_old, _ = by_old.sign(body)
    assert after.verify(body, sig_old, None).reason == Reason.MISMATCH


def test_reasons() -> None:
    ring = Keyring({"main": KEY})
    sig, kid = ring.sign(b"x")
    assert kid == "main"
    assert ring.verify(b"x", None).reason == Reason.MISSING
    assert ring.verify(b"x", "").reason == Reason.MISSING
    assert ring.verify(b"x", "zz").reason == Reason.MALFORMED
    assert ring.verify(b"x", sig.upper()).reason == Reason.MALFORMED
    assert ring.verify(b"x", sig, "other").reason == Reason.UNKNOWN_KID
    assert ring.verify(b"y", sig, "main").reason == Reason.MISMATCH
    assert ring.verify(b"x", sig.encode(), b"main").ok


def test_keys_never_leak() -> None:
    secret = b"super-secret-key-material-123456"
    ring = Keyring((secret, b"another-secret-key-material-0000"))
    for text in (repr(ring), str(ring), repr(ring._keys), str(ring.kids)):
        assert "secret" not in text and secret.hex() not in text
    with pytest.raises(TypeError, match="pickled"):
        pickle.dumps(ring)


@pytest.mark.parametrize(
    "bad",
    [b"", (), [], (b"ok", b""), {"kid": b""}, "a-string-key", {"bad kid!": b"k"}, (b"k", b"k")],
)
def test_bad_keys_are_clear_errors(bad: object) -> None:
    with pytest.raises(ConfigurationError):
        Keyring(bad)  # type: ignore[arg-type]


def test_empty_key_message_says_why() -> None:
    with pytest.raises(ConfigurationError, match="empty"):
        Keyring(b"")
    with pytest.raises(ConfigurationError, match="empty keyring"):
        Keyring(())
    with pytest.raises(ConfigurationError, match=r"bytes\.fromhex"):
        Keyring("deadbeef")  # type: ignore[arg-type]


def test_parse_env_spec() -> None:
    ring = Keyring.parse("new:" + (b"n" * 32).hex() + ", " + (b"o" * 32).hex())
    assert ring.kids == ("new", key_id(b"o" * 32))
    with pytest.raises(ConfigurationError, match="not hex"):
        Keyring.parse("kid:zz")
    with pytest.raises(ConfigurationError, match="no key"):
        Keyring.parse(" , ")


def test_expiry_allows_clock_skew() -> None:
    assert not is_expired(None, 10**12)
    assert not is_expired(1000, 5000, skew_ms=5000)
    assert is_expired(1000, 6001, skew_ms=5000)
