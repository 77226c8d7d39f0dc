"""A lean keep-alive HTTP/1.1 client for the benchmark's ACME traffic.

The load generator shares the machine with the server it measures, so every
microsecond it spends is taken from the server. httpx's client, pool and stream
layers (with anyio and h11) cost the benchmark 7-8 ms of CPU per issuance, as much
as the server; this client is an `asyncio.Protocol` over httptools' C parser with a
small per-origin connection pool, one request at a time per connection, and costs
a fraction of that. It is a client for ACME servers, not a general one: no
redirects, cookies, proxies or compression.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, cast
from urllib.parse import urlsplit

import httptools

__all__ = [
    "Headers",
    "HttpClient",
    "HttpResponse",
    "PooledHttpClient",
    "TransportError",
]

_USER_AGENT = "acme-ca-bench"
_MAX_HEADERS_BYTES = 64 * 1024
_MAX_BODY_BYTES = 16 * 1024 * 1024


class TransportError(Exception):
    """No complete HTTP response: connect, TLS, reset, timeout or malformed framing."""


class Headers(Mapping[str, str]):
    """Response headers, case-insensitive; repeated fields kept in order."""

    __slots__ = ("_first", "_items")

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        self._items = [(name.lower(), value) for name, value in items]
        self._first: dict[str, str] = {}
        for name, value in self._items:
            self._first.setdefault(name, value)

    def __getitem__(self, name: str) -> str:
        return self._first[name.lower()]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._first

    def __iter__(self) -> Iterator[str]:
        return iter(self._first)

    def __len__(self) -> int:
        return len(self._first)

    def get_list(self, name: str, *, split_commas: bool = False) -> list[str]:
        """Every value of `name`; with `split_commas`, comma-separated lists split too."""
        key = name.lower()
        values = [value for item, value in self._items if item == key]
        if not split_commas:
            return values
        return [part.strip() for value in values for part in value.split(",")]

    def multi_items(self) -> list[tuple[str, str]]:
        return list(self._items)

    def __repr__(self) -> str:
        return f"Headers({self._items!r})"


@dataclass(frozen=True, slots=True)
class HttpResponse:
    status: int
    headers: Headers
    content: bytes

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", errors="replace")


class HttpClient(Protocol):
    """What the ACME client needs from HTTP: one request, one buffered response."""

    async def request(
        self, method: str, url: str, *, headers: Mapping[str, str], content: bytes | None
    ) -> HttpResponse: ...

    async def aclose(self) -> None: ...


class _Connection(asyncio.Protocol):
    """One HTTP/1.1 connection, one exchange at a time; a fresh parser per response."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.reusable = False
        self._waiter: asyncio.Future[HttpResponse] | None = None
        self._parser: httptools.HttpResponseParser | None = None
        self._head = False
        self._received = False
        self._headers_done = False
        self._headers: list[tuple[str, str]] = []
        self._header_bytes = 0
        self._body: list[bytes] = []
        self._body_bytes = 0
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    # -- asyncio.Protocol --------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement the interface without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.reusable = False
        if not self.lost.done():
            self.lost.set_result(None)
        if self._waiter is not None and not self._waiter.done():
            if exc is None and self._delimited_by_close():
                self._complete()  # RFC 9112 §6.3 item 8: the body ends with the connection
                return
            self._fail(f"connection closed before the response ended ({exc or 'EOF'})")

    def _delimited_by_close(self) -> bool:
        """Whether the response's head is in and declares neither a length nor chunking."""
        if not self._headers_done:
            return False
        names = {name.lower() for name, _ in self._headers}
        return "content-length" not in names and "transfer-encoding" not in names

    def data_received(self, data: bytes) -> None:
        if self._parser is None:
            return  # bytes nobody asked for: the connection will not be reused
        self._received = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail("unexpected protocol upgrade")
        except httptools.HttpParserError as exc:
            self._fail(f"malformed HTTP response: {exc}")

    def eof_received(self) -> bool | None:
        return None  # close; connection_lost settles a read-until-close body

    # -- httptools callbacks -----------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value)
        if self._header_bytes > _MAX_HEADERS_BYTES:
            self._fail("response headers too large")
            return
        self._headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        self._headers_done = True
        if self._head:
            self._complete()  # RFC 9110 §9.3.2: a HEAD response has no content

    def on_body(self, body: bytes) -> None:
        self._body_bytes += len(body)
        if self._body_bytes > _MAX_BODY_BYTES:
            self._fail("response body too large")
            return
        self._body.append(body)

    def on_message_complete(self) -> None:
        self._complete()

    # -- the exchange ------------------------------------------------------------

    @property
    def received_any(self) -> bool:
        return self._received

    def send(self, data: bytes, *, head: bool) -> asyncio.Future[HttpResponse]:
        assert self.transport is not None
        assert self._waiter is None
        self._waiter = asyncio.get_running_loop().create_future()
        self._parser = httptools.HttpResponseParser(self)
        self._head = head
        self._received = False
        self._headers_done = False
        self._headers = []
        self._header_bytes = 0
        self._body = []
        self._body_bytes = 0
        self.reusable = False
        self.transport.write(data)
        return self._waiter

    def _complete(self) -> None:
        parser, waiter = self._parser, self._waiter
        if parser is None or waiter is None:
            return
        self._parser = None
        self._waiter = None
        self.reusable = not self.closed and parser.should_keep_alive()
        if not waiter.done():
            response = HttpResponse(
                status=parser.get_status_code(),
                headers=Headers(self._headers),
                content=b"".join(self._body),
            )
            waiter.set_result(response)
        if not self.reusable:
            self.close()

    def _fail(self, why: str) -> None:
        waiter = self._waiter
        self._parser = None
        self._waiter = None
        if waiter is not None and not waiter.done():
            waiter.set_exception(TransportError(why))
        self.close()

    def close(self) -> None:
        self.reusable = False
        if self.transport is not None and not self.closed:
            self.closed = True
            self.transport.close()


@dataclass(frozen=True, slots=True)
class _Origin:
    scheme: str
    host: str
    port: int

    @property
    def authority(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"


def _split(url: str) -> tuple[_Origin, str]:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise TransportError(f"not an http(s) URL: {url!r}")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return _Origin(parts.scheme, parts.hostname, port), target


class PooledHttpClient:
    """Keep-alive connections per origin, at most `max_connections` in use at once.

    A request that fails on a reused connection before any byte of the answer
    arrived is sent once more on a new one: the server may have closed the idle
    connection just as we wrote (RFC 9112 §9.3.1 lets a client retry then).
    """

    def __init__(
        self,
        *,
        verify: str | bool | ssl.SSLContext = True,
        timeout: float = 30.0,
        max_connections: int = 8,
    ) -> None:
        self._ssl = _tls_context(verify)
        self._timeout = timeout
        self._idle: dict[_Origin, list[_Connection]] = {}
        self._slots = asyncio.Semaphore(max_connections)
        self._open: set[_Connection] = set()

    async def request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str],
        content: bytes | None = None,
    ) -> HttpResponse:
        origin, target = _split(url)
        data = _request_bytes(method, origin, target, headers, content)
        head = method == "HEAD"
        async with self._slots:
            try:
                async with asyncio.timeout(self._timeout):
                    return await self._exchange(origin, data, head=head)
            except TimeoutError:
                raise TransportError(f"no response from {url} in {self._timeout}s") from None

    async def _exchange(self, origin: _Origin, data: bytes, *, head: bool) -> HttpResponse:
        conn = self._take_idle(origin)
        if conn is not None:
            try:
                return await self._on(conn, origin, data, head=head)
            except TransportError:
                if conn.received_any:
                    raise
        return await self._on(await self._connect(origin), origin, data, head=head)

    async def _on(
        self, conn: _Connection, origin: _Origin, data: bytes, *, head: bool
    ) -> HttpResponse:
        try:
            response = await conn.send(data, head=head)
        except BaseException:
            conn.close()
            self._open.discard(conn)
            raise
        if conn.reusable:
            self._idle.setdefault(origin, []).append(conn)
        else:
            self._open.discard(conn)
        return response

    def _take_idle(self, origin: _Origin) -> _Connection | None:
        idle = self._idle.get(origin)
        while idle:
            conn = idle.pop()
            if not conn.closed and conn.reusable:
                return conn
            self._open.discard(conn)
        return None

    async def _connect(self, origin: _Origin) -> _Connection:
        loop = asyncio.get_running_loop()
        tls: dict[str, Any] = {}
        if origin.scheme == "https":
            tls = {"ssl": self._ssl, "server_hostname": origin.host}
        try:
            _, conn = await loop.create_connection(_Connection, origin.host, origin.port, **tls)
        except (OSError, ssl.SSLError) as exc:
            raise TransportError(f"cannot connect to {origin.authority}: {exc}") from exc
        self._open.add(conn)
        return conn

    async def aclose(self) -> None:
        """Close every connection and wait (briefly) until each is gone, TLS included."""
        conns = list(self._open)
        self._open.clear()
        self._idle.clear()
        for conn in conns:
            conn.close()
        if conns:
            # A TLS close ends with close_notify, after this call returns.
            await asyncio.wait([conn.lost for conn in conns], timeout=1.0)


def _tls_context(verify: str | bool | ssl.SSLContext) -> ssl.SSLContext:
    if isinstance(verify, ssl.SSLContext):
        return verify
    if isinstance(verify, str):
        return ssl.create_default_context(cafile=verify)
    context = ssl.create_default_context()
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def _request_bytes(
    method: str,
    origin: _Origin,
    target: str,
    headers: Mapping[str, str],
    content: bytes | None,
) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", f"Host: {origin.authority}"]
    names = {name.lower() for name in headers}
    if "user-agent" not in names:
        lines.append(f"User-Agent: {_USER_AGENT}")
    if "accept" not in names:
        lines.append("Accept: */*")
    for name, value in headers.items():
        if "\r" in value or "\n" in value or "\r" in name or "\n" in name:
            raise ValueError(f"header {name!r} holds a line break")
        lines.append(f"{name}: {value}")
    body = content or b""
    if content is not None or method in ("POST", "PUT"):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
