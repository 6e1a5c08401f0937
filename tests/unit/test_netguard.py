from __future__ import annotations

import socket
import sys
import unicodedata
from collections.abc import AsyncIterator

import aiohttp
import pytest
import yarl
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult

from floodgate.errors import ValidationError
from floodgate.netguard import (
    _SPACE_OR_CONTROL,
    ForbiddenDestination,
    GuardedResolver,
    canonical_host,
    check_url_syntax,
    check_url_target,
    is_forbidden_address,
)

GOOD_URLS = [
    "https://hooks.example.com/floodgate",
    "http://hooks.example.com:8080/x?y=1#frag",
    "HTTPS://HOOKS.EXAMPLE.COM/",
    "https://bücher.example/hook",  # IDN
    "https://hooks.example.com./",  # trailing root dot
    "https://under_score.example.com/",
    "http://127.0.0.1:9000/",  # syntax only: the address is check_url_target's business
    "https://[2001:db8::1]/",
]

BAD_URLS = [
    (None, "must be a string"),
    (b"https://x.example/", "must be a string"),
    ("ftp://files.example/", "must be an http or https URL"),
    ("javascript:alert(1)", "must be an http or https URL"),
    ("hooks.example.com/path", "must be an http or https URL"),
    ("https:///path", "must include a host"),
    ("http:example.com", "must include a host"),
    ("https://user:pw@hooks.example.com/", "must not contain credentials"),
    ("https://hooks.example.com@169.254.169.254/", "must not contain credentials"),
    ("https://hooks.example.com/" + "a" * 2030, "must be at most 2048 characters"),
    ("https://hooks.example.com/a b", "must not contain whitespace or control characters"),
    ("https://hooks.example.com/\x00", "must not contain whitespace or control characters"),
    ("https://hooks.example.com:99999/", "is not a valid URL"),
    ("https://hooks.example.com:0/", "must not use port 0"),
    ("https://[::1/", "is not a valid URL"),
    ("http://2130706433/", "has an invalid host"),  # 127.0.0.1 as one number
    ("http://127.1/", "has an invalid host"),
    ("http://0x7f.0.0.1/", "has an invalid host"),
    ("http://1.2.3.4.5/", "has an invalid host"),
    ("http://a..example.com/", "has an invalid host"),
    ("http://-bad.example.com/", "has an invalid host"),
    ("http://%31%32%37.0.0.1/", "has an invalid host"),
    ("http://[fe80::1%25eth0]/", "has an invalid host"),  # zone ids pick an interface
]


@pytest.mark.parametrize("url", GOOD_URLS)
def test_good_url_syntax(url: str) -> None:
    check_url_syntax(url)


@pytest.mark.parametrize(("url", "message"), BAD_URLS, ids=[repr(u)[:40] for u, _ in BAD_URLS])
def test_bad_url_syntax(url: object, message: str) -> None:
    with pytest.raises(ValidationError) as info:
        check_url_syntax(url)
    [problem] = info.value.problems
    assert problem.field == "webhook_url"
    assert problem.message.startswith(message)


def test_every_unicode_space_and_control_character_is_refused_and_nothing_else() -> None:
    """The check is one regex scan: it refuses exactly what ``str.isspace`` and the C0 controls
    and DEL are, over the whole of Unicode (no-break and ideographic spaces, line separators...)."""
    refused = {ch for ch in map(chr, range(sys.maxunicode + 1)) if _SPACE_OR_CONTROL.search(ch)}
    expected = {ch for ch in map(chr, range(sys.maxunicode + 1)) if ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F}
    assert refused == expected
    assert {"\xa0", "\u2028", "\u3000", "\x7f", "\t"} <= refused
    for ch in ("\u3000", "\u2028", "\x1f"):
        with pytest.raises(ValidationError):
            check_url_syntax(f"https://hooks.example.com/a{ch}b")


def test_url_length_limit_is_inclusive() -> None:
    base = "https://hooks.example.com/"
    check_url_syntax(base + "a" * (2048 - len(base)))
    with pytest.raises(ValidationError):
        check_url_syntax(base + "a" * (2049 - len(base)))


def test_problem_names_the_given_field() -> None:
    with pytest.raises(ValidationError) as info:
        check_url_syntax("ftp://x.example/", "input.image_url")
    assert info.value.problems[0].field == "input.image_url"


FORBIDDEN = [
    "127.0.0.1",
    "127.255.255.254",
    "10.1.2.3",
    "172.16.0.1",
    "172.31.255.255",
    "192.168.1.1",
    "169.254.169.254",  # cloud metadata
    "169.254.0.1",
    "100.64.0.1",  # CGNAT start
    "100.127.255.255",  # CGNAT end
    "0.0.0.0",
    "0.1.2.3",
    "224.0.0.1",
    "239.255.255.250",
    "240.0.0.1",
    "255.255.255.255",
    "192.0.0.8",
    "192.0.2.1",
    "198.18.0.1",
    "::1",
    "::",
    "fe80::1",
    "fe80::1%eth0",
    "fc00::1",
    "fd12:3456::1",
    "fec0::1",
    "ff02::1",
    "ff0e::1",
    "2001:db8::1",
    "::ffff:127.0.0.1",  # IPv4-mapped
    "::ffff:169.254.169.254",
    "::ffff:10.0.0.1",
    "::ffff:100.64.0.1",
    "::127.0.0.1",  # IPv4-compatible (deprecated)
    "2002:7f00:1::1",  # 6to4 of 127.0.0.1
    "2002:a9fe:a9fe::1",  # 6to4 of 169.254.169.254
    "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
    "2001:0:4136:e378:8000:63bf:80ff:fffe",  # Teredo
    "not-an-ip",  # fail closed
    "",
]
ALLOWED = [
    "8.8.8.8",
    "1.1.1.1",
    "93.184.216.34",
    "100.63.255.255",  # just below CGNAT
    "100.128.0.0",  # just above CGNAT
    "172.32.0.1",
    "2606:4700:4700::1111",
    "::ffff:8.8.8.8",
    "2002:808:808::1",  # 6to4 of a public address
]


@pytest.mark.parametrize("ip", FORBIDDEN)
def test_forbidden_addresses(ip: str) -> None:
    assert is_forbidden_address(ip)


@pytest.mark.parametrize("ip", ALLOWED)
def test_allowed_addresses(ip: str) -> None:
    assert not is_forbidden_address(ip)


def test_accepts_ipaddress_objects() -> None:
    import ipaddress

    assert is_forbidden_address(ipaddress.ip_address("10.0.0.1"))
    assert not is_forbidden_address(ipaddress.ip_address("8.8.8.8"))


@pytest.mark.parametrize(
    "url", ["http://169.254.169.254/latest/meta-data", "http://[::1]:8080/", "http://[::ffff:7f00:1]/", "http://10.0.0.1/"]
)
def test_target_rejects_forbidden_ip_literals(url: str) -> None:
    with pytest.raises(ValidationError, match="private or reserved"):
        check_url_target(url, allow_private=False)
    check_url_target(url, allow_private=True)


@pytest.mark.parametrize("url", ["https://hooks.example.com/", "http://8.8.8.8/", "https://hooks.example.com./",
                                 "http://localhost.example.com/", "https://[2606:4700::1111]/"])
def test_target_leaves_public_names_and_addresses_alone(url: str) -> None:
    check_url_target(url, allow_private=False)


# Every spelling of a private, loopback or link-local destination that needs no DNS to be one.
# "invalid host": a spelling WHATWG parsers read as IPv4 but ipaddress does not, refused outright.
PRIVATE_SPELLINGS = [
    ("http://127.0.0.1/", "private or reserved"),
    ("http://127.0.0.1./", "private or reserved"),  # trailing root dot
    ("http://169.254.169.254/latest/meta-data", "private or reserved"),
    ("http://169.254.169.254./latest/meta-data", "private or reserved"),
    ("http://10.0.0.1/", "private or reserved"),
    ("http://192.168.1.1/", "private or reserved"),
    ("http://172.16.0.1/", "private or reserved"),
    ("http://100.64.0.1/", "private or reserved"),  # CGNAT
    ("http://0.0.0.0/", "private or reserved"),
    ("http://2130706433/", "invalid host"),  # decimal
    ("http://017700000001/", "invalid host"),  # octal, one number
    ("http://0177.0.0.1/", "invalid host"),  # octal octet
    ("http://127.000.000.001/", "invalid host"),  # zero-padded octets
    ("http://0x7f000001/", "invalid host"),  # hex, one number
    ("http://0x7f.0.0.1/", "invalid host"),  # hex octet
    ("http://0xa9.0xfe.0xa9.0xfe/", "invalid host"),  # 169.254.169.254 in hex
    ("http://127.1/", "invalid host"),  # short form
    ("http://127.0.0.１/", "private or reserved"),  # full-width digit, IDNA-mapped to 127.0.0.1
    ("http://①②⑦.0.0.1/", "private or reserved"),  # circled digits, likewise
    # Segmented digits (U+1FBF0-9, Unicode 13): Python's IDNA 2003 codec predates them and leaves them
    # alone, yarl's UTS46 mapping (what aiohttp connects to) makes them ASCII digits.
    ("http://127.0.0.\U0001fbf1:8080/", "private or reserved"),
    ("http://\U0001fbf1\U0001fbf2\U0001fbf7.0.0.\U0001fbf1/", "private or reserved"),
    ("http://127.0.0.\U0001fbf1./", "private or reserved"),
    ("http://169.254.169.\U0001fbf2\U0001fbf5\U0001fbf4/latest/meta-data", "private or reserved"),
    ("http://\U0001fbf1\U0001fbf2\U0001fbf7.\U0001fbf1/", "invalid host"),  # 127.1 once mapped
    ("http://localhost/", "private or reserved"),
    ("http://LOCALHOST:8080/", "private or reserved"),
    ("http://localhost./", "private or reserved"),  # trailing dot
    ("http://ｌｏｃａｌｈｏｓｔ/", "private or reserved"),  # full-width letters
    ("http://api.localhost/", "private or reserved"),
    ("http://ip6-localhost/", "private or reserved"),
    ("http://[::1]:8080/", "private or reserved"),
    ("http://[0:0:0:0:0:0:0:1]/", "private or reserved"),  # long form
    ("http://[::]/", "private or reserved"),
    ("http://[::ffff:127.0.0.1]/", "private or reserved"),  # IPv4-mapped, dotted
    ("http://[::ffff:7f00:1]/", "private or reserved"),  # IPv4-mapped, hex
    ("http://[::ffff:169.254.169.254]/", "private or reserved"),
    ("http://[::127.0.0.1]/", "private or reserved"),  # IPv4-compatible (deprecated)
    ("http://[fe80::1]/", "private or reserved"),  # link-local
    ("http://[fd00::1]/", "private or reserved"),  # unique local
    ("http://[2002:7f00:1::]/", "private or reserved"),  # 6to4 of 127.0.0.1
    ("http://[64:ff9b::a9fe:a9fe]/", "private or reserved"),  # NAT64 of 169.254.169.254
    ("http://[2001:0:4136:e378:8000:63bf:3fff:fdd2]/", "private or reserved"),  # Teredo
]


@pytest.mark.parametrize(("url", "why"), PRIVATE_SPELLINGS)
def test_target_refuses_every_spelling_of_a_private_destination(url: str, why: str) -> None:
    with pytest.raises(ValidationError, match=why) as caught:
        check_url_target(url, allow_private=False, field="input.image_url")
    assert [p.field for p in caught.value.problems] == ["input.image_url"]


@pytest.mark.parametrize("url", ["http://localhost:8080/", "http://127.0.0.1./", "http://[::1]/"])
def test_allow_private_accepts_loopback(url: str) -> None:
    check_url_target(url, allow_private=True)


@pytest.mark.parametrize(("host", "canonical"), [
    ("LocalHost.", "localhost"), ("127.0.0.１", "127.0.0.1"), ("bücher.example", "xn--bcher-kva.example"),
    ("hooks.example.com", "hooks.example.com"), ("127.0.0.\U0001fbf1", "127.0.0.1"),
    ("straße.example", "xn--strae-oqa.example")])  # UTS46 keeps ß; IDNA 2003 made it "strasse"
def test_canonical_host(host: str, canonical: str) -> None:
    assert canonical_host(host) == canonical
    assert canonical_host(host) == canonical_host(yarl.URL(f"http://{host}/").raw_host or "")  # aiohttp's host


def _digit_lookalikes() -> list[str]:
    """Every character the client's mapping may turn into an ASCII digit, the segmented ones
    included. Read in the test, not at import: the scan of all of Unicode takes a second, and every
    test process that collects this file would pay it."""
    return [ch for ch in map(chr, range(0x80, sys.maxunicode + 1))
            if unicodedata.normalize("NFKC", ch) in set("0123456789")]


def test_no_digit_lookalike_spells_a_private_address() -> None:
    lookalikes = _digit_lookalikes()
    assert "\U0001fbf1" in lookalikes and "１" in lookalikes
    allowed = []
    for ch in lookalikes:
        for url in (f"http://127.0.0.{ch}/", f"http://169.254.169.{ch}/", f"http://10.{ch}.0.1/"):
            try:
                check_url_target(url, allow_private=False)
            except ValidationError:
                continue
            allowed.append(url)
    assert allowed == []


@pytest.mark.parametrize("url", ["https://bücher.example/hook", "https://straße.example/", "https://münchen.de/x",
                                 "https://例え.テスト/", "https://пример.рф/", "https://ＨＯＯＫＳ.example.com/",
                                 "https://xn--bcher-kva.example/"])
def test_internationalised_names_are_still_allowed(url: str) -> None:
    check_url_target(url, allow_private=False)


@pytest.mark.parametrize("url", ["http://a\u200bb.example/", "http://a＼b.example/", "http://bad\udcff.example/"])
def test_a_host_the_http_client_cannot_parse_is_refused(url: str) -> None:
    # The client refuses these (zero-width space, a full-width backslash, a lone surrogate as a raw
    # UTF-8 redirect decodes to); a host whose client form is unknown cannot have been checked.
    with pytest.raises(ValidationError, match="invalid host|not a valid URL"):
        check_url_syntax(url)


def test_target_still_checks_syntax() -> None:
    with pytest.raises(ValidationError, match="credentials"):
        check_url_target("http://u:p@hooks.example.com/", allow_private=True)


# --- GuardedResolver -------------------------------------------------------------

class FakeResolver(AbstractResolver):
    """Answers every name with fixed addresses; counts calls so rebinding can be simulated."""

    def __init__(self, *answers: list[str]) -> None:
        self.answers = list(answers)
        self.calls = 0
        self.closed = False

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        addresses = self.answers[min(self.calls, len(self.answers) - 1)]
        self.calls += 1
        return [
            ResolveResult(
                hostname=host,
                host=ip,
                port=port,
                family=socket.AF_INET6 if ":" in ip else socket.AF_INET,
                proto=0,
                flags=socket.AI_NUMERICHOST,
            )
            for ip in addresses
        ]

    async def close(self) -> None:
        self.closed = True


async def test_resolver_drops_forbidden_addresses() -> None:
    resolver = GuardedResolver(inner=FakeResolver(["10.0.0.1", "93.184.216.34", "::1", "2606:4700::1"]))
    result = await resolver.resolve("hooks.example.com", 443)
    assert [r["host"] for r in result] == ["93.184.216.34", "2606:4700::1"]
    assert result[0]["port"] == 443


async def test_resolver_raises_os_error_when_nothing_is_left() -> None:
    resolver = GuardedResolver(inner=FakeResolver(["127.0.0.1", "169.254.169.254"]))
    with pytest.raises(ForbiddenDestination, match=r"rebind\.example"):
        await resolver.resolve("rebind.example", 80)
    assert issubclass(ForbiddenDestination, OSError)  # what aiohttp's connector catches


async def test_resolver_checks_every_resolution() -> None:
    # DNS rebinding: public when the URL was accepted, internal at connect time.
    inner = FakeResolver(["93.184.216.34"], ["127.0.0.1"])
    resolver = GuardedResolver(inner=inner)
    assert await resolver.resolve("rebind.example", 80)
    with pytest.raises(ForbiddenDestination):
        await resolver.resolve("rebind.example", 80)


async def test_resolver_allow_private_passes_everything() -> None:
    resolver = GuardedResolver(allow_private=True, inner=FakeResolver(["127.0.0.1"]))
    assert [r["host"] for r in await resolver.resolve("localhost", 80)] == ["127.0.0.1"]


async def test_resolver_close_closes_inner() -> None:
    inner = FakeResolver(["8.8.8.8"])
    await GuardedResolver(inner=inner).close()
    assert inner.closed


async def test_default_inner_resolver_filters_real_lookups() -> None:
    resolver = GuardedResolver()
    try:
        with pytest.raises(ForbiddenDestination):
            await resolver.resolve("localhost", 80, family=socket.AF_INET)
    finally:
        await resolver.close()


@pytest.fixture
async def receiver() -> AsyncIterator[int]:
    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/hook", ok)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()


async def post_via(resolver: GuardedResolver, port: int) -> int:
    connector = aiohttp.TCPConnector(resolver=resolver, use_dns_cache=False)
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.post(f"http://hooks.example.test:{port}/hook", allow_redirects=False) as resp,
    ):
        return resp.status


async def test_aiohttp_refuses_a_name_that_resolves_to_loopback(receiver: int) -> None:
    with pytest.raises(aiohttp.ClientConnectorDNSError) as info:
        await post_via(GuardedResolver(inner=FakeResolver(["127.0.0.1"])), receiver)
    assert isinstance(info.value.os_error, ForbiddenDestination)


async def test_aiohttp_reaches_loopback_when_private_allowed(receiver: int) -> None:
    assert await post_via(GuardedResolver(allow_private=True, inner=FakeResolver(["127.0.0.1"])), receiver) == 200
