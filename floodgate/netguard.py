"""SSRF guard for user-given URLs that Floodgate will POST to (webhooks).

Three layers, because each alone can be bypassed:

* :func:`check_url_syntax`: a clean http(s) URL, no credentials.
* :func:`check_url_target` at submission (every user-given URL: ``webhook_url``,
  ``input.image_url``) and again just before each request: rejects hosts that
  name a forbidden address without DNS, in any spelling (IP literals after
  IDNA mapping and without a trailing dot, ``localhost`` and ``*.localhost``).
  aiohttp never calls a resolver for an IP literal, so the resolver below
  cannot see ``http://169.254.169.254/``. The host judged is the one aiohttp
  connects to: yarl's parse of the URL, mapped with UTS46 (the ``idna``
  package), not Python's IDNA 2003 codec, whose older Unicode tables leave
  e.g. the segmented digit in ``127.0.0.\U0001fbf1`` alone where yarl makes it ``1``.
* :class:`GuardedResolver` at connect time: resolves, then drops forbidden
  addresses. Checking the name when the request is accepted is not enough:
  DNS can answer differently later (rebinding), so the check must happen on
  the addresses aiohttp actually connects to.

Send with ``allow_redirects=False``: a redirect to an IP literal would skip
the resolver, and a webhook receiver has no business redirecting us.
"""
from __future__ import annotations

import contextlib
import ipaddress
import re
import socket
from collections.abc import Callable
from urllib.parse import urlsplit

import yarl
from aiohttp.abc import AbstractResolver, ResolveResult

from floodgate.errors import Problem, ValidationError

MAX_URL_CHARS = 2048

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Beyond the ipaddress flags: ranges whose flags vary across Python patch
# releases, or that embed an IPv4 address we must look inside.
_EXTRA_FORBIDDEN = tuple(
    ipaddress.ip_network(net)
    for net in (
        "0.0.0.0/8",  # "this network"; Linux routes 0.x to loopback
        "100.64.0.0/10",  # CGNAT shared address space
        "192.0.0.0/24",  # IETF protocol assignments
        "192.0.2.0/24",
        "198.18.0.0/15",
        "198.51.100.0/24",
        "203.0.113.0/24",
        "240.0.0.0/4",
        "255.255.255.255/32",
        "64:ff9b:1::/48",  # local-use NAT64
        "100::/64",  # discard
        "2001::/23",  # IETF protocol assignments (incl. Teredo, handled below)
        "2001:db8::/32",
        "fc00::/7",
        "fec0::/10",  # deprecated site-local
    )
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_HOST_LABEL = re.compile(r"(?!-)[a-z0-9_-]{1,63}(?<!-)")
_NUMERIC_LABEL = re.compile(r"(0x[0-9a-f]*|[0-9]+)")
_SPACE_OR_CONTROL = re.compile(r"[\s\x00-\x1f\x7f]")
"""Whitespace (``\\s`` on a str is ``str.isspace``'s set, Unicode's spaces included) or a control
character: one regex scan, where a generator over every character cost ~40 µs a URL."""
# Names every resolver answers with loopback without asking DNS (the reserved ".localhost" zone,
# and the loopback aliases of common hosts files).
_LOOPBACK_NAMES = frozenset({"localhost", "ip6-localhost", "ip6-loopback"})


class ForbiddenDestination(OSError):
    """A host resolved only to forbidden addresses.

    An ``OSError`` because aiohttp wraps resolver ``OSError`` s into
    ``ClientConnectorDNSError`` (``exc.os_error`` is this); callers should
    treat it as permanent, not retry it.
    """


def check_url_syntax(url: object, field: str = "webhook_url") -> None:
    """Raise :class:`ValidationError` (naming ``field``) unless ``url`` is a plain http(s) URL.

    Requires a host, forbids userinfo, whitespace/control characters and
    non-canonical numeric IPv4 hosts (``2130706433``, ``127.1``, ``0x7f.1``),
    and caps the length at 2048 characters.
    """
    _parse(url, field)


def check_url_target(url: object, *, allow_private: bool, field: str = "webhook_url",
                     forbidden: Callable[[IPAddress], bool] | None = None) -> None:
    """:func:`check_url_syntax`, plus reject an IP-literal host that is forbidden (unless ``allow_private``).

    Call before each request: IP literals never reach :class:`GuardedResolver`. ``forbidden``
    replaces :func:`is_forbidden_address` (tests that must call a loopback server "public").
    """
    host = _parse(url, field)
    if allow_private:
        return
    if host in _LOOPBACK_NAMES or host.endswith(".localhost"):
        raise ValidationError(Problem(field, "must not point to a private or reserved address"))
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return  # a name: GuardedResolver checks what it resolves to
    if (forbidden or is_forbidden_address)(address):
        raise ValidationError(Problem(field, "must not point to a private or reserved address"))


def canonical_host(host: str) -> str:
    """``host`` as a resolver and a connector see it: mapped as yarl (hence aiohttp) maps it (UTS46:
    full-width, circled and segmented digits and letters become ASCII), lower case, no trailing root
    dot. An unmappable host comes back as it was."""
    name = host.lower()
    if not name.isascii():
        # yarl's own encoder, not a copy of it: a copy would drift from the client on an upgrade,
        # which is this module's bug to avoid. _parse has refused an unmappable host already.
        with contextlib.suppress(ValueError):
            name = yarl.URL.build(scheme="http", host=name).raw_host or name
    return name[:-1] if name.endswith(".") else name


def is_forbidden_address(ip: str | IPAddress) -> bool:
    """True if ``ip`` must not be connected to: not a public unicast address.

    Covers loopback, private, link-local (incl. 169.254.169.254), multicast,
    reserved, unspecified, CGNAT 100.64/10, documentation ranges, and IPv6
    forms that embed such an IPv4 address (mapped, 6to4, Teredo, NAT64).
    Unparseable input is forbidden (fail closed).
    """
    try:
        address = ipaddress.ip_address(ip) if isinstance(ip, str) else ip
    except ValueError:
        return True
    if isinstance(address, ipaddress.IPv6Address):
        address = ipaddress.IPv6Address(address.packed)  # drop any %scope: it does not change the range
        embedded = _embedded_ipv4(address)
        if embedded is not None and is_forbidden_address(embedded):
            return True
        if address.ipv4_mapped is not None:
            return False  # the mapped IPv4 address was public
    return (
        address.is_loopback
        or address.is_private
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
        or not address.is_global
        or any(address in net for net in _EXTRA_FORBIDDEN if net.version == address.version)
    )


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    if address in _NAT64:
        return ipaddress.IPv4Address(address.packed[-4:])
    return None


class GuardedResolver(AbstractResolver):
    """An aiohttp resolver that never hands out a forbidden address.

    Wraps ``inner`` (default: aiohttp's ``DefaultResolver``, created on first
    use because it needs a running loop). When every resolved address is
    forbidden, raises :class:`ForbiddenDestination`, which aiohttp turns into
    ``ClientConnectorDNSError``. ``allow_private=True`` disables filtering
    for dev and tests that post to loopback receivers.

    Use as ``aiohttp.TCPConnector(resolver=GuardedResolver(...))``.
    """

    def __init__(self, allow_private: bool = False, inner: AbstractResolver | None = None,
                 forbidden: Callable[[IPAddress], bool] | None = None) -> None:
        self._allow_private = allow_private
        self._inner = inner
        self._forbidden = forbidden or is_forbidden_address

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        if self._inner is None:
            from aiohttp.resolver import DefaultResolver

            self._inner = DefaultResolver()
        results = await self._inner.resolve(host, port, family)
        if self._allow_private:
            return results
        allowed = [r for r in results if not _forbids(self._forbidden, r["host"])]
        if not allowed:
            raise ForbiddenDestination(None, f"{host} resolves only to private or reserved addresses")
        return allowed

    async def close(self) -> None:
        if self._inner is not None:
            await self._inner.close()


def _forbids(forbidden: Callable[[IPAddress], bool], host: str) -> bool:
    try:
        return forbidden(ipaddress.ip_address(host))
    except ValueError:
        return True  # not an address: fail closed


def _parse(url: object, field: str) -> str:
    """Check ``url`` (see :func:`check_url_syntax`); return its host as :func:`canonical_host` has it."""

    def bad(message: str) -> ValidationError:
        return ValidationError(Problem(field, message))

    if not isinstance(url, str):
        raise bad("must be a string")
    if len(url) > MAX_URL_CHARS:
        raise bad(f"must be at most {MAX_URL_CHARS} characters")
    if _SPACE_OR_CONTROL.search(url):
        raise bad("must not contain whitespace or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port  # raises for a non-numeric or out-of-range port
    except ValueError as exc:
        raise bad(f"is not a valid URL ({exc})") from None
    if parts.scheme.lower() not in ("http", "https"):
        raise bad("must be an http or https URL")
    if "@" in parts.netloc:
        raise bad("must not contain credentials")
    host = parts.hostname
    if not host:
        raise bad("must include a host")
    if port == 0:
        raise bad("must not use port 0")
    bracketed = parts.netloc.startswith("[")
    try:
        # What aiohttp connects to: it parses the URL string with yarl.URL and uses raw_host.
        client_host = yarl.URL(url).raw_host or ""
    except ValueError as exc:  # UnicodeError included: a host yarl cannot map, so cannot request
        raise bad(f"is not a valid URL ({exc})") from None
    if not _valid_host(host, bracketed=bracketed) or not _same_host(host, client_host, bracketed=bracketed):
        raise bad("has an invalid host")
    return canonical_host(client_host)


def _same_host(host: str, client_host: str, *, bracketed: bool) -> bool:
    """Whether urlsplit's host and the HTTP client's are one host, so that what was checked (the
    client's) is the host named in the URL. A disagreement means the two parsers split or map the
    URL differently; either reading could be the one another consumer of the URL acts on."""
    if bracketed:
        try:
            return ipaddress.ip_address(host) == ipaddress.ip_address(client_host)
        except ValueError:
            return False
    return canonical_host(host) == canonical_host(client_host)


def _valid_host(host: str, *, bracketed: bool) -> bool:
    if bracketed:
        try:
            return ipaddress.ip_address(host).version == 6 and "%" not in host
        except ValueError:
            return False
    ascii_name = canonical_host(host)
    if not ascii_name.isascii():
        return False  # unmappable
    labels = ascii_name.split(".")
    # WHATWG URL parsers read a host whose last label is numeric as IPv4 (127.1, 0x7f.1, 2130706433),
    # and aiohttp skips the resolver for any host of digits and dots: accept only the canonical
    # dotted quad, so what we check is what gets connected to. Checked after the client's mapping,
    # which turns full-width, circled and segmented digits ("127.0.0.１") into ASCII ones.
    if _NUMERIC_LABEL.fullmatch(labels[-1]):
        try:
            return ipaddress.ip_address(ascii_name).version == 4
        except ValueError:
            return False
    return len(ascii_name) <= 253 and all(_HOST_LABEL.fullmatch(label) for label in labels)


__all__ = [
    "MAX_URL_CHARS",
    "canonical_host",
    "ForbiddenDestination",
    "GuardedResolver",
    "check_url_syntax",
    "check_url_target",
    "is_forbidden_address",
]
