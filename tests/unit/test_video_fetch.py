"""The video fetcher against hand-written local HTTP servers: redirects to hosts that only the HTTP
client's URL parser reads as IP literals, and error text that never carries a signed query.

127.0.0.1 stands for the provider's public file server (the guard is told it is public);
127.0.0.2 is a loopback trap that must never see a connection.
"""
from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import AsyncIterator, Callable

import aiohttp
import pytest
from aiohttp.abc import AbstractResolver, ResolveResult

from connectors.storage.fetch import VideoFetcher, guarded_fetch_session
from floodgate.errors import StorageError
from floodgate.netguard import GuardedResolver, IPAddress

VIDEO = b"\x00\x00\x00\x18ftypmp42" + bytes(range(64))
SIGNED_QUERY = "X-Amz-Credential=AKIAEXAMPLE%2F20250101&X-Amz-Signature=deadbeefcafe"


def public_only_loopback(address: IPAddress) -> bool:
    """Calls 127.0.0.1 public (the provider listens there); forbids every other private address."""
    return address != ipaddress.ip_address("127.0.0.1") and not address.is_global


class RawServer:
    """An HTTP/1.1 server written by hand, so a Location header leaves as raw UTF-8 bytes (aiohttp's
    own server would pass it through yarl first) and a response can be malformed on purpose.
    ``answer`` maps the request line to the raw response; every connection is counted."""

    def __init__(self, answer: Callable[[bytes], bytes]) -> None:
        self.answer = answer
        self.connections = 0
        self.request_lines: list[bytes] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            line = head.split(b"\r\n", 1)[0]
            self.request_lines.append(line)
            writer.write(self.answer(line))
            await writer.drain()
        finally:
            writer.close()


async def serve(server: RawServer, host: str) -> tuple[asyncio.Server, int]:
    listening = await asyncio.start_server(server.handle, host, 0)
    return listening, listening.sockets[0].getsockname()[1]


def redirect(location: str) -> bytes:
    return (b"HTTP/1.1 302 Found\r\nLocation: " + location.encode() +
            b"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")


def video() -> bytes:
    return (b"HTTP/1.1 200 OK\r\nContent-Type: video/mp4\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
            % len(VIDEO) + VIDEO)


@pytest.fixture
async def trap() -> AsyncIterator[tuple[RawServer, int]]:
    server = RawServer(lambda line: video())
    listening, port = await serve(server, "127.0.0.2")
    try:
        yield server, port
    finally:
        listening.close()
        await listening.wait_closed()


@pytest.fixture
async def fetcher() -> AsyncIterator[VideoFetcher]:
    async with guarded_fetch_session(allow_private=False, forbidden=public_only_loopback) as session:
        yield VideoFetcher(session, allow_private=False, max_bytes=1_000_000, forbidden=public_only_loopback)


async def read_all(fetcher: VideoFetcher, url: str) -> bytes:
    async with fetcher.open(url) as download:
        return b"".join([chunk async for chunk in download.chunks()])


# U+1FBF0-9 SEGMENTED DIGIT ZERO-NINE: aiohttp's URL parser (yarl, UTS46) maps them to ASCII digits,
# so these name 127.0.0.2 as an IP literal, which aiohttp connects to without asking the resolver.
TRAP_SPELLINGS = ["http://127.0.0.\U0001fbf2:{trap}/v.mp4",
                  "http://\U0001fbf1\U0001fbf2\U0001fbf7.0.0.\U0001fbf2:{trap}/v.mp4",
                  "http://127.0.0.2:{trap}/v.mp4"]  # the plain spelling, for comparison


@pytest.mark.parametrize("target", TRAP_SPELLINGS)
async def test_a_redirect_to_a_private_literal_in_any_digits_is_never_followed(
        trap: tuple[RawServer, int], fetcher: VideoFetcher, target: str) -> None:
    trap_server, trap_port = trap
    provider = RawServer(lambda line: redirect(target.format(trap=trap_port)))
    listening, port = await serve(provider, "127.0.0.1")
    try:
        with pytest.raises(StorageError, match="private or reserved") as caught:
            await read_all(fetcher, f"http://127.0.0.1:{port}/start")
    finally:
        listening.close()
        await listening.wait_closed()
    assert not caught.value.retriable
    assert provider.request_lines == [b"GET /start HTTP/1.1"]
    assert trap_server.connections == 0


@pytest.mark.parametrize("target", TRAP_SPELLINGS[:2])
async def test_a_private_literal_in_segmented_digits_is_refused_before_connecting(
        trap: tuple[RawServer, int], fetcher: VideoFetcher, target: str) -> None:
    trap_server, trap_port = trap
    with pytest.raises(StorageError, match="private or reserved"):
        await read_all(fetcher, target.format(trap=trap_port))
    assert trap_server.connections == 0


async def test_segmented_digits_are_read_as_the_address_they_spell(fetcher: VideoFetcher) -> None:
    # Not refused for being unusual: spelling the allowed provider address, the redirect is followed.
    provider = RawServer(lambda line: video() if b"/v.mp4" in line else redirect(f"http://127.0.0.\U0001fbf1:{port}/v.mp4"))
    listening, port = await serve(provider, "127.0.0.1")
    try:
        assert await read_all(fetcher, f"http://127.0.0.1:{port}/start") == VIDEO
    finally:
        listening.close()
        await listening.wait_closed()
    assert provider.request_lines == [b"GET /start HTTP/1.1", b"GET /v.mp4 HTTP/1.1"]


# --- error text never carries the signed query ------------------------------------------------

class NeverAnswers(AbstractResolver):
    """A resolver that hangs, so the connection attempt times out."""

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async def close(self) -> None:
        return None


async def test_a_connection_timeout_names_the_host_but_not_the_signed_query() -> None:
    connector = aiohttp.TCPConnector(resolver=GuardedResolver(inner=NeverAnswers()))
    async with aiohttp.ClientSession(connector=connector, trust_env=False,
                                     timeout=aiohttp.ClientTimeout(connect=0.05)) as session:
        fetcher = VideoFetcher(session, allow_private=False, max_bytes=1000)
        with pytest.raises(StorageError) as caught:
            await read_all(fetcher, f"https://bucket.video.test/out.mp4?{SIGNED_QUERY}#t=1")
    assert isinstance(caught.value.__cause__, aiohttp.ConnectionTimeoutError)
    assert "X-Amz-Signature" in str(caught.value.__cause__)  # aiohttp's own text quotes the URL
    assert caught.value.retriable
    assert "bucket.video.test" in str(caught.value)
    for secret in ("?", "X-Amz", "deadbeefcafe", "AKIAEXAMPLE", "#t=1"):
        assert secret not in str(caught.value)


async def test_a_malformed_response_names_the_host_but_not_the_signed_query(fetcher: VideoFetcher) -> None:
    provider = RawServer(lambda line: b"HTTP/1.1 200 OK\r\nContent-Type video/mp4\r\n\r\n")  # header lacks ':'
    listening, port = await serve(provider, "127.0.0.1")
    try:
        with pytest.raises(StorageError) as caught:
            await read_all(fetcher, f"http://127.0.0.1:{port}/out.mp4?{SIGNED_QUERY}")
    finally:
        listening.close()
        await listening.wait_closed()
    assert isinstance(caught.value.__cause__, aiohttp.ClientResponseError)
    assert "X-Amz-Signature" in str(caught.value.__cause__)  # "..., url='http://...?X-Amz-...'"
    assert f"127.0.0.1:{port}" in str(caught.value)
    for secret in ("?", "X-Amz", "deadbeefcafe", "AKIAEXAMPLE"):
        assert secret not in str(caught.value)
