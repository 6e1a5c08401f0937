"""A lean HTTP/1.1 client for load generation: keep-alive connections, prebuilt request bytes,
minimal response parsing. On a 2-core machine the load generator shares the CPU with the system
under test; this costs a fraction of a general-purpose client per request, so more of the CPU
measures the server."""
from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from typing import cast


class HttpError(Exception):
    """The connection failed or closed before a full response arrived."""


def build_request(method: str, host: str, path: str, body: bytes = b"",
                  content_type: str = "application/json", headers: Mapping[str, str] | None = None) -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: {host}\r\n"
    for name, value in (headers or {}).items():
        head += f"{name}: {value}\r\n"
    if body or method in ("POST", "PUT"):
        head += f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
    return (head + "\r\n").encode() + body


@dataclass
class Response:
    status: int
    body: bytes
    keep_alive: bool


def parse_response(buf: bytes | bytearray, eof: bool = False) -> tuple[Response, int] | None:
    """A complete response at the start of ``buf`` and the bytes it used, or None if incomplete.

    Handles Content-Length, chunked bodies, and bodies ended by the connection closing (``eof``).
    """
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    lines = bytes(buf[:end]).split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/"):
        raise HttpError(f"not an HTTP response: {lines[0][:60]!r}")
    status = int(parts[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip().lower()
    keep_alive = headers.get(b"connection") != b"close" and parts[0] == b"HTTP/1.1"
    start = end + 4
    if b"content-length" in headers:
        stop = start + int(headers[b"content-length"])
        return (Response(status, bytes(buf[start:stop]), keep_alive), stop) if len(buf) >= stop else None
    if headers.get(b"transfer-encoding") == b"chunked":
        body, pos = bytearray(), start
        while True:
            line_end = buf.find(b"\r\n", pos)
            if line_end < 0:
                return None
            size = int(bytes(buf[pos:line_end]).split(b";")[0], 16)
            if size == 0:
                term = buf.find(b"\r\n\r\n", pos)  # the last chunk, then optional trailers
                return (Response(status, bytes(body), keep_alive), term + 4) if term >= 0 else None
            chunk_start = line_end + 2
            if len(buf) < chunk_start + size + 2:
                return None
            body += buf[chunk_start:chunk_start + size]
            pos = chunk_start + size + 2
    if status in (204, 304) or 100 <= status < 200:
        return Response(status, b"", keep_alive), start
    if eof:
        return Response(status, bytes(buf[start:]), False), len(buf)
    return None


class _Connection(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.waiter: asyncio.Future[Response] | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # a TCP connection's transport is a Transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        self._try_complete(eof=False)

    def _try_complete(self, eof: bool) -> None:
        if self.waiter is None or self.waiter.done():
            return
        try:
            parsed = parse_response(self.buf, eof)
        except (HttpError, ValueError) as exc:
            self.waiter.set_exception(HttpError(str(exc)))
            return
        if parsed is not None:
            response, used = parsed
            del self.buf[:used]
            self.waiter.set_result(response)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._try_complete(eof=True)
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(HttpError("connection closed before the response"))

    def send(self, raw: bytes) -> asyncio.Future[Response]:
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self.buf.clear()
        self.transport.write(raw)
        return self.waiter

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class Client:
    """Up to ``connections`` keep-alive connections to one host:port; requests beyond that wait."""

    def __init__(self, host: str, port: int, connections: int = 256) -> None:
        self.host, self.port, self.limit = host, port, connections
        self._idle: list[_Connection] = []
        self._open = 0
        self._waiters: list[asyncio.Future[None]] = []

    async def _acquire(self) -> _Connection:
        loop = asyncio.get_running_loop()
        while True:
            while self._idle:
                conn = self._idle.pop()
                if not conn.closed:
                    return conn
                self._open -= 1
            if self._open < self.limit:
                self._open += 1
                try:
                    _, conn = await loop.create_connection(_Connection, self.host, self.port)
                except BaseException:
                    self._open -= 1
                    self._wake()
                    raise
                return conn
            waiter = loop.create_future()
            self._waiters.append(waiter)
            await waiter

    def _wake(self) -> None:
        while self._waiters:
            waiter = self._waiters.pop(0)
            if not waiter.done():
                waiter.set_result(None)
                return

    def _release(self, conn: _Connection, reuse: bool) -> None:
        if reuse and not conn.closed:
            self._idle.append(conn)
        else:
            conn.close()
            self._open -= 1
        self._wake()

    async def request(self, raw: bytes, timeout: float) -> Response:
        """Send prebuilt request bytes; raises TimeoutError (waiting for a connection included)
        or HttpError."""
        async with asyncio.timeout(timeout):
            conn = await self._acquire()
            ok = False
            try:
                response = await conn.send(raw)
                ok = response.keep_alive
                return response
            finally:
                self._release(conn, ok)

    async def close(self) -> None:
        for conn in self._idle:
            conn.close()
        self._idle.clear()
        self._open = 0
