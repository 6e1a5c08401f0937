"""Standard Webhooks signing: round trips, rotation, and one test per rejection reason."""
from __future__ import annotations

import base64
import hashlib
import hmac

import pytest
from hypothesis import given
from hypothesis import strategies as st

from floodgate import signing
from floodgate.errors import ConfigError, WebhookVerificationError

KEY = b"0123456789abcdef0123456789abcdef"
SECRET = "whsec_" + base64.b64encode(KEY).decode()
NOW = 1_700_000_000.0
BODY = b'{"type":"video.completed","data":{"id":"video_1"}}'


def headers(secret: str = SECRET, msg_id: str = "evt_1", body: bytes = BODY, now: float = NOW) -> dict[str, str]:
    return signing.signature_headers(secret, msg_id, body, now)


def test_golden_value_matches_an_independent_hmac() -> None:
    expected = base64.b64encode(hmac.new(KEY, b"evt_1.1700000000." + BODY, hashlib.sha256).digest()).decode()
    assert signing.sign(SECRET, "evt_1", 1_700_000_000, BODY) == "v1," + expected


def test_raw_string_secret_is_used_as_utf8_bytes() -> None:
    raw = "not-a-whsec-secret-ü"
    expected = base64.b64encode(hmac.new(raw.encode(), b"m.5.x", hashlib.sha256).digest()).decode()
    assert signing.sign(raw, "m", 5, b"x") == "v1," + expected


def test_signature_headers_carry_id_integer_timestamp_and_signature() -> None:
    out = headers(now=NOW + 0.9)
    assert out == {
        "webhook-id": "evt_1",
        "webhook-timestamp": "1700000000",
        "webhook-signature": signing.sign(SECRET, "evt_1", 1_700_000_000, BODY),
    }


def test_round_trip_verifies() -> None:
    signing.verify(SECRET, headers(), BODY, now=NOW)


def test_header_names_are_case_insensitive() -> None:
    mixed = {k.upper() if i % 2 else k.title(): v for i, (k, v) in enumerate(headers().items())}
    signing.verify(SECRET, mixed, BODY, now=NOW)


def test_rotation_any_listed_v1_signature_may_match() -> None:
    old = signing.new_secret()
    out = headers()
    out["webhook-signature"] = " ".join(
        [signing.sign(old, "evt_1", int(NOW), BODY), "v1a,c29tZXRoaW5n", out["webhook-signature"], "garbage"]
    )
    signing.verify(SECRET, out, BODY, now=NOW)
    signing.verify(old, out, BODY, now=NOW)


def test_timestamp_within_tolerance_either_side_is_accepted() -> None:
    signing.verify(SECRET, headers(), BODY, now=NOW + 300)
    signing.verify(SECRET, headers(), BODY, now=NOW - 300)


@pytest.mark.parametrize("name", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_rejects_missing_header(name: str) -> None:
    out = headers()
    del out[name]
    with pytest.raises(WebhookVerificationError, match=f"^missing header: {name}$"):
        signing.verify(SECRET, out, BODY, now=NOW)


def test_rejects_empty_header_as_missing() -> None:
    out = headers()
    out["webhook-id"] = ""
    with pytest.raises(WebhookVerificationError, match="^missing header: webhook-id"):
        signing.verify(SECRET, out, BODY, now=NOW)


@pytest.mark.parametrize("value", ["soon", "1.5", "-10", "+1700000000", "1_700_000_000", "１７",
                                   "0" * (signing.MAX_TIMESTAMP_DIGITS + 1),  # short enough for int(), still refused
                                   "9" * 5000],  # past int()'s 4,300-digit limit: ValueError if it got there
                         ids=["word", "fraction", "negative", "plus", "underscores", "fullwidth", "13-digits",
                              "5000-digits"])
def test_rejects_bad_timestamp_format(value: str) -> None:
    out = headers()
    out["webhook-timestamp"] = value
    with pytest.raises(WebhookVerificationError, match="^bad timestamp format"):
        signing.verify(SECRET, out, BODY, now=NOW)


def test_rejects_timestamp_too_old() -> None:
    with pytest.raises(WebhookVerificationError, match="^timestamp too old"):
        signing.verify(SECRET, headers(), BODY, now=NOW + 301)


def test_rejects_timestamp_too_new() -> None:
    with pytest.raises(WebhookVerificationError, match="^timestamp too new"):
        signing.verify(SECRET, headers(), BODY, now=NOW - 301)


def test_tolerance_is_configurable() -> None:
    with pytest.raises(WebhookVerificationError, match="^timestamp too old"):
        signing.verify(SECRET, headers(), BODY, now=NOW + 11, tolerance=10)


def test_rejects_tampered_body() -> None:
    with pytest.raises(WebhookVerificationError, match="^no matching signature$"):
        signing.verify(SECRET, headers(), BODY + b" ", now=NOW)


def test_rejects_wrong_secret() -> None:
    with pytest.raises(WebhookVerificationError, match="^no matching signature$"):
        signing.verify(signing.new_secret(), headers(), BODY, now=NOW)


def test_rejects_signature_replayed_under_another_id() -> None:
    out = headers()
    out["webhook-id"] = "evt_2"
    with pytest.raises(WebhookVerificationError, match="^no matching signature$"):
        signing.verify(SECRET, out, BODY, now=NOW)


def test_a_webhook_id_that_is_not_utf8_is_verified_over_the_bytes_sent() -> None:
    """aiohttp hands such a header over with its bytes surrogate-escaped; they are what was signed."""
    msg_id = b"evt_\xff".decode("utf-8", "surrogateescape")
    signed = b"evt_\xff." + str(int(NOW)).encode() + b"." + BODY
    good = "v1," + base64.b64encode(hmac.new(KEY, signed, hashlib.sha256).digest()).decode()
    out = {"webhook-id": msg_id, "webhook-timestamp": str(int(NOW)), "webhook-signature": good}
    signing.verify(SECRET, out, BODY, now=NOW)
    with pytest.raises(WebhookVerificationError, match="^no matching signature$"):
        signing.verify(SECRET, {**out, "webhook-signature": headers()["webhook-signature"]}, BODY, now=NOW)


@pytest.mark.parametrize("value", ["v2,abc", "nonsense", "v1,***", "v1"])
def test_rejects_header_without_a_usable_v1_entry(value: str) -> None:
    out = headers()
    out["webhook-signature"] = value
    with pytest.raises(WebhookVerificationError, match="^no matching signature$"):
        signing.verify(SECRET, out, BODY, now=NOW)


def test_new_secret_is_whsec_base64_of_random_bytes() -> None:
    first, second = signing.new_secret(), signing.new_secret()
    assert first.startswith("whsec_") and first != second
    assert len(base64.b64decode(first.removeprefix("whsec_"), validate=True)) == 32
    with pytest.raises(ValueError):
        signing.new_secret(8)


def test_malformed_whsec_secret_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        signing.sign("whsec_not base64!", "m", 1, b"")


@given(
    key=st.binary(min_size=1, max_size=64),
    msg_id=st.text(st.characters(blacklist_categories=["Cs"]), min_size=1, max_size=40).filter(
        lambda s: s == s.strip() and s != ""
    ),
    body=st.binary(max_size=256),
    now=st.integers(min_value=0, max_value=4_000_000_000),
)
def test_property_round_trip_and_single_bit_tamper(key: bytes, msg_id: str, body: bytes, now: int) -> None:
    secret = "whsec_" + base64.b64encode(key).decode()
    out = signing.signature_headers(secret, msg_id, body, now)
    signing.verify(secret, out, body, now=now)
    tampered = bytes([body[0] ^ 1]) + body[1:] if body else b"x"
    with pytest.raises(WebhookVerificationError):
        signing.verify(secret, out, tampered, now=now)


# --- rotation: old and new secret both accepted within the window, the old one refused after -----

NEW = signing.new_secret()
OLD = signing.new_secret()
UNTIL = NOW + 3600


def ring() -> signing.SecretRing:
    return signing.rotation(NEW, OLD, "2023-11-14T23:13:20Z")  # NOW + 3600, as an ISO instant


def test_rotation_window_parses_iso_and_unix_seconds() -> None:
    assert ring().previous_until == UNTIL
    assert signing.rotation(NEW, OLD, UNTIL).previous_until == UNTIL


def test_rotation_old_secret_accepted_within_the_window() -> None:
    signing.verify(ring(), headers(secret=OLD), BODY, now=NOW)
    signing.verify(ring(), headers(secret=OLD, now=UNTIL - 1), BODY, now=UNTIL - 1)


def test_rotation_old_secret_refused_after_the_window() -> None:
    for at in (UNTIL, UNTIL + 1, UNTIL + 86_400):
        with pytest.raises(WebhookVerificationError, match="no matching signature"):
            signing.verify(ring(), headers(secret=OLD, now=at), BODY, now=at)


def test_rotation_new_secret_accepted_within_and_after_the_window() -> None:
    for at in (NOW, UNTIL, UNTIL + 86_400):
        signing.verify(ring(), headers(secret=NEW, now=at), BODY, now=at)


def test_rotation_a_third_secret_is_refused() -> None:
    with pytest.raises(WebhookVerificationError, match="no matching signature"):
        signing.verify(ring(), headers(secret=signing.new_secret()), BODY, now=NOW)


def test_a_sender_with_a_ring_signs_with_every_active_secret() -> None:
    within = signing.signature_headers(ring(), "evt_1", BODY, NOW)
    assert len(within["webhook-signature"].split()) == 2
    for secret in (OLD, NEW):  # a receiver that knows either one verifies
        signing.verify(secret, within, BODY, now=NOW)
    after = signing.signature_headers(ring(), "evt_1", BODY, UNTIL)
    assert after["webhook-signature"] == signing.sign(NEW, "evt_1", int(UNTIL), BODY)


@pytest.mark.parametrize(("previous", "until", "message"), [
    (OLD, None, "needs previous_webhook_secret_until"),
    (None, UNTIL, "previous_webhook_secret is not"),
    (OLD, "2023-11-14T23:13:20", "needs a UTC offset"),
    (OLD, "tomorrow", "not an ISO 8601 instant"),
    ("whsec_%%%", UNTIL, "not valid base64"),
], ids=["no-until", "no-previous", "naive-instant", "not-an-instant", "bad-base64"])  # OLD is random
def test_rotation_config_fails_loudly(previous: str | None, until: str | float | None, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        signing.rotation(NEW, previous, until, where="providers.kling.connection")


def test_at_most_max_signatures_entries_are_checked() -> None:
    """A header stuffed with forged entries costs a bounded number of comparisons; the real
    signature past the cap is not looked at."""
    good = headers()["webhook-signature"]
    forged = signing.sign(signing.new_secret(), "evt_1", int(NOW), BODY)
    stuffed = {**headers(), "webhook-signature": " ".join([forged] * signing.MAX_SIGNATURES + [good])}
    with pytest.raises(WebhookVerificationError, match="no matching signature"):
        signing.verify(SECRET, stuffed, BODY, now=NOW)
    within = {**headers(), "webhook-signature": " ".join([forged] * (signing.MAX_SIGNATURES - 1) + [good])}
    signing.verify(SECRET, within, BODY, now=NOW)
