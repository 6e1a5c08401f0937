from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest

from floodgate.videolinks import LinkVerdict, VideoLinks, link_key

JOB = "job_01jb0000000000000000000000"
LINKS = VideoLinks(b"k" * 32, ttl=60.0)


def query(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


def test_a_link_made_now_is_valid_until_it_expires() -> None:
    url = LINKS.url("https://api.example/", JOB, now=1000.0)
    assert url.startswith(f"https://api.example/v1/videos/{JOB}?expires=1060&sig=")
    q = query(url)
    assert LINKS.check(JOB, q["expires"], q["sig"], now=1059.9) is LinkVerdict.VALID
    assert LINKS.check(JOB, q["expires"], q["sig"], now=1060.0) is LinkVerdict.EXPIRED


def test_a_link_is_bound_to_its_job_its_expiry_and_the_key() -> None:
    q = query(LINKS.url("http://a", JOB, now=1000.0))
    other_job = JOB[:-1] + "1"
    assert LINKS.check(other_job, q["expires"], q["sig"], now=1000) is LinkVerdict.FORGED
    assert LINKS.check(JOB, "99999999", q["sig"], now=1000) is LinkVerdict.FORGED  # stretched expiry
    assert VideoLinks(b"x" * 32).check(JOB, q["expires"], q["sig"], now=1000) is LinkVerdict.FORGED


def test_a_forged_link_is_refused_as_forged_even_when_it_would_have_expired() -> None:
    q = query(LINKS.url("http://a", JOB, now=1000.0))
    sig = ("A" if q["sig"][0] != "A" else "B") + q["sig"][1:]
    assert LINKS.check(JOB, q["expires"], sig, now=10**9) is LinkVerdict.FORGED


@pytest.mark.parametrize(("expires", "sig"), [
    (None, "x" * 43), ("1060", None), ("", "x" * 43), ("-5", "x" * 43), ("1e9", "x" * 43), ("１０６０", "x" * 43),
    ("1" * 13, "x" * 43), ("1060", "short"), ("1060", "x" * 44)])
def test_malformed_links(expires: str | None, sig: str | None) -> None:
    assert LINKS.check(JOB, expires, sig, now=0) is LinkVerdict.MALFORMED


def test_signatures_are_unguessable_and_distinct_per_job() -> None:
    sigs = {LINKS.signature(f"job_{i}", 1060) for i in range(200)}
    assert len(sigs) == 200 and all(len(s) == 43 for s in sigs)


def test_the_key_is_the_link_secret_or_derived_from_the_server_secret() -> None:
    assert link_key("link", "server") == b"link"
    derived = link_key("", "server")
    assert len(derived) == 32 and derived != b"server" and derived == link_key("", "server")
    assert link_key("", "other") != derived
