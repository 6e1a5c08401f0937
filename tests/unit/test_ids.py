from __future__ import annotations

import base64
import hashlib
import hmac
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from floodgate import ids
from floodgate.errors import ConfigError
from floodgate.ids import (
    check_token,
    event_id,
    is_job_id,
    job_id_for_key,
    job_id_time,
    job_token,
    new_job_id,
)

SECRET = b"0123456789abcdef"
CROCKFORD = "0123456789abcdefghjkmnpqrstvwxyz"
JOB_ID = re.compile(r"^job_[0-9a-hjkmnp-tv-z]{26}$")
MAX_MS = 2**48 - 1


def crockford(value: int) -> str:
    """Reference encoder: 26 base32 digits, most significant first."""
    return "".join(CROCKFORD[(value >> (5 * i)) & 31] for i in reversed(range(26)))


def test_new_job_id_format() -> None:
    job_id = new_job_id()
    assert JOB_ID.match(job_id)
    assert is_job_id(job_id)


def test_new_job_id_layout() -> None:
    job_id = new_job_id(now_ms=1_700_000_000_000)
    value = int("".join(f"{CROCKFORD.index(c):05b}" for c in job_id[4:]), 2)
    assert value >> 80 == 1_700_000_000_000
    assert value < 2**128


def test_new_job_ids_are_unique() -> None:
    n = 100_000
    assert len({new_job_id() for _ in range(n)}) == n


def test_same_millisecond_ids_differ_in_random_bits() -> None:
    assert len({new_job_id(now_ms=5) for _ in range(1000)}) == 1000


@given(st.integers(0, MAX_MS - 1), st.integers(1, 10**6))
def test_ids_sort_by_time(earlier: int, gap: int) -> None:
    later = min(earlier + gap, MAX_MS)
    first, second = new_job_id(now_ms=earlier), new_job_id(now_ms=later)
    assert first < second
    assert job_id_time(first) == earlier and job_id_time(second) == later


def test_job_id_time_of_now_is_recent() -> None:
    import time

    assert abs(job_id_time(new_job_id()) - time.time() * 1000) < 5_000


@pytest.mark.parametrize("ms", [-1, 2**48])
def test_timestamp_must_fit(ms: int) -> None:
    with pytest.raises(ValueError):
        new_job_id(now_ms=ms)


@pytest.mark.parametrize(
    "value",
    ["", "job_", "job_" + "0" * 25, "job_" + "0" * 27, "evt_" + "0" * 26, "job_" + "i" * 26, "job_8" + "0" * 25, 42],
)
def test_is_job_id_rejects(value: object) -> None:
    assert not is_job_id(value)
    if isinstance(value, str):
        with pytest.raises(ValueError):
            job_id_time(value)


# --- idempotency-key job ids ------------------------------------------------------

def test_job_id_for_key_is_pinned() -> None:
    # Stored nowhere, so this value must never change: a retried request after a
    # deploy has to land on the same job.
    assert job_id_for_key(SECRET, "acme", "order-42") == "job_0000000000zfrsm7h6gnrbgj4f"


def test_job_id_for_key_matches_its_definition() -> None:
    message = b"floodgate/job-id-for-key/v1" + b"\x00\x00\x00\x04acme" + b"\x00\x00\x00\x08order-42"
    mac = hmac.new(SECRET, message, hashlib.sha256).digest()
    assert job_id_for_key(SECRET, "acme", "order-42") == "job_" + crockford(int.from_bytes(mac[:10], "big"))


def test_job_id_for_key_is_deterministic_and_well_formed() -> None:
    job_id = job_id_for_key(SECRET, "acme", "k1")
    assert job_id == job_id_for_key(SECRET, "acme", "k1")
    assert is_job_id(job_id)
    assert job_id_time(job_id) == 0
    assert job_id < new_job_id()


@pytest.mark.parametrize(
    ("secret", "tenant", "key"),
    [
        (SECRET, "globex", "k1"),
        (SECRET, "acme", "k2"),
        (b"fedcba9876543210", "acme", "k1"),
        (SECRET, "acmek", "1"),  # framing: the boundary between parts matters
        (SECRET, "acm", "ek1"),
    ],
)
def test_job_id_for_key_differs(secret: bytes, tenant: str, key: str) -> None:
    assert job_id_for_key(secret, tenant, key) != job_id_for_key(SECRET, "acme", "k1")


@pytest.mark.parametrize("secret", [b"", b"short", "0123456789abcdef"])
def test_weak_secret_is_config_error(secret: bytes) -> None:
    with pytest.raises(ConfigError):
        job_id_for_key(secret, "acme", "k")
    with pytest.raises(ConfigError):
        job_token(secret, "job_x")


# --- tokens --------------------------------------------------------------------------

def test_token_is_pinned_and_long_enough() -> None:
    token = job_token(SECRET, "job_01hzzzzzzzzzzzzzzzzzzzzzzz")
    assert token == "UBlvRJ2KhUb1FKa82vNE1y4DOvCFMBci3WHIz6PMswY"
    assert re.fullmatch(r"[A-Za-z0-9_-]+", token)
    assert len(base64.urlsafe_b64decode(token + "=")) * 8 >= 128


def test_token_checks() -> None:
    job_id = new_job_id()
    token = job_token(SECRET, job_id)
    assert check_token(SECRET, job_id, token)
    assert not check_token(SECRET, new_job_id(), token)
    assert not check_token(b"fedcba9876543210", job_id, token)
    assert not check_token(SECRET, job_id, token[:-1])
    assert not check_token(SECRET, job_id, token[:-1] + ("A" if token[-1] != "A" else "B"))
    assert not check_token(SECRET, job_id, token + "A")
    assert not check_token(SECRET, job_id, "")
    assert not check_token(SECRET, job_id, "é" * 43)
    assert not check_token(SECRET, job_id, "\ud800")
    assert not check_token(SECRET, job_id, None)
    assert not check_token(SECRET, job_id, token.encode())


class _Spy:
    """Stands in for ``hmac.compare_digest``: records each comparison, then makes it."""

    def __init__(self) -> None:
        self.calls: list[tuple[bytes, bytes]] = []
        self.real = hmac.compare_digest

    def __call__(self, a: bytes, b: bytes) -> bool:
        self.calls.append((a, b))
        return self.real(a, b)


@pytest.mark.parametrize("kind", ["right", "wrong", "other job's", "short"])
def test_tokens_are_compared_by_the_constant_time_function_alone(monkeypatch: pytest.MonkeyPatch, kind: str) -> None:
    """Every token check goes through ``hmac.compare_digest`` exactly once, with the whole
    expected and the whole given token, and its answer is the check's answer: no other
    comparison (``==``, a prefix test, an early length check) decides first and leaks timing."""
    spy = _Spy()
    monkeypatch.setattr(vars(ids)["hmac"], "compare_digest", spy)
    job_id = new_job_id()
    right = job_token(SECRET, job_id)
    given = {"right": right, "wrong": "x" * len(right), "other job's": job_token(SECRET, new_job_id()),
             "short": right[:5]}[kind]
    result = check_token(SECRET, job_id, given)
    assert spy.calls == [(right.encode(), given.encode())]
    assert result is (kind == "right")


def test_the_comparison_is_the_standard_librarys_constant_time_one() -> None:
    """What ``ids`` calls is the standard library's C implementation (OpenSSL's CRYPTO_memcmp,
    or _operator's fallback), not something that shadows it."""
    import types

    assert vars(ids)["hmac"] is hmac
    assert isinstance(hmac.compare_digest, types.BuiltinFunctionType)
    assert hmac.compare_digest.__module__ in ("_hashlib", "_operator")


@given(st.text(min_size=1, max_size=40), st.text(min_size=1, max_size=40))
def test_a_token_is_bound_to_its_job(a: str, b: str) -> None:
    """The token of job A never opens job B, whatever the two ids are (framing keeps ``a`` and
    ``b`` apart even when one is a prefix of the other)."""
    if a == b:
        return
    assert check_token(SECRET, a, job_token(SECRET, a))
    assert not check_token(SECRET, b, job_token(SECRET, a))


def test_token_is_not_the_keyed_job_id_mac() -> None:
    # Same secret, different purpose: one must not be derivable from the other.
    assert job_token(SECRET, "acme") != job_id_for_key(SECRET, "acme", "")


# --- event ids ------------------------------------------------------------------------

def test_event_id_is_deterministic() -> None:
    assert event_id("job_x", "queued", 0) == event_id("job_x", "queued", 0) == "evt_0r3sxbaxpx311wka5xmggq0dpg"
    assert event_id("job_x", "queued", 0) == event_id("job_x", "queued", "0")
    assert re.fullmatch(r"evt_[0-9a-hjkmnp-tv-z]{26}", event_id("a"))


@pytest.mark.parametrize(
    "parts",
    [("job_x", "queued", 1), ("job_y", "queued", 0), ("job_xqueued", "0"), ("job_x", "queued", 0, ""), ()],
)
def test_event_id_differs(parts: tuple[str | int, ...]) -> None:
    assert event_id(*parts) != event_id("job_x", "queued", 0)
