"""Challenge solvers for the benchmark client: an http-01 responder and a dns-01 driver.

The http-01 responder is a bare asyncio protocol serving
`/.well-known/acme-challenge/<token>` from a dict; it sits on the benchmark's hot
path, so it parses no more HTTP than a validation request needs. The dns-01 solver
only drives a challenge test server's management API (Pebble's challtestsrv API:
POST /set-txt and /clear-txt); it serves no DNS itself.
"""

from __future__ import annotations

import asyncio
import hashlib
from typing import Protocol, Self, cast

import httpx

from acme_ca.bench.jws import b64url

__all__ = ["ChallengeSolver", "Dns01Solver", "Http01Responder", "Http01Solver"]

_PREFIX = b"/.well-known/acme-challenge/"  # RFC 8555 §8.3
_MAX_HEAD = 16 * 1024


class _Http01Protocol(asyncio.Protocol):
    def __init__(self, responder: Http01Responder) -> None:
        self._responder = responder
        self._buf = b""
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement the interface without subclassing it.
        self._transport = cast(asyncio.Transport, transport)
        self._responder.connections.add(self._transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._transport is not None:
            self._responder.connections.discard(self._transport)

    def data_received(self, data: bytes) -> None:
        self._buf += data
        while (end := self._buf.find(b"\r\n\r\n")) >= 0:
            head, self._buf = self._buf[:end], self._buf[end + 4 :]
            if not self._answer(head):
                return
        if len(self._buf) > _MAX_HEAD:
            self._reply(431, b"", close=True)

    def _answer(self, head: bytes) -> bool:
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ")
        if len(parts) != 3 or parts[0] not in (b"GET", b"HEAD"):
            self._reply(400, b"", close=True)
            return False
        method, target, version = parts
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip().lower()
        if headers.get(b"content-length", b"0") != b"0" or b"transfer-encoding" in headers:
            self._reply(400, b"", close=True)  # a validation request has no body
            return False
        conn = headers.get(b"connection", b"")
        close = conn == b"close" or (version == b"HTTP/1.0" and conn != b"keep-alive")
        path = target.split(b"?", 1)[0]
        body: bytes | None = None
        if path.startswith(_PREFIX):
            key_auth = self._responder.tokens.get(path[len(_PREFIX) :].decode("ascii", "replace"))
            body = key_auth.encode("ascii") if key_auth is not None else None
        self._responder.served += 1
        if body is None:
            self._reply(404, b"", close=close, head=method == b"HEAD")
        else:
            self._reply(200, body, close=close, head=method == b"HEAD")
        return not close

    def _reply(self, status: int, body: bytes, *, close: bool, head: bool = False) -> None:
        assert self._transport is not None
        reason = {200: b"OK", 400: b"Bad Request", 404: b"Not Found", 431: b"Too Large"}[status]
        out = b"HTTP/1.1 %d %s\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n" % (
            status,
            reason,
            len(body),
        )
        out += b"Connection: close\r\n\r\n" if close else b"\r\n"
        self._transport.write(out if head else out + body)
        if close:
            self._transport.close()


class Http01Responder:
    """Serves key authorizations for http-01 (RFC 8555 §8.3) on one address."""

    def __init__(self, host: str = "127.0.0.1", port: int = 5002) -> None:
        self.host = host
        self.port = port
        self.tokens: dict[str, str] = {}
        self.served = 0
        self.connections: set[asyncio.Transport] = set()
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Http01Protocol(self), self.host, self.port, reuse_address=True
        )
        if self.port == 0:
            self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for transport in list(self.connections):  # Server.close_clients() is 3.13+
                transport.close()
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


class ChallengeSolver(Protocol):
    """Makes one challenge answerable, and cleans it up afterwards."""

    challenge_type: str

    async def present(self, identifier: str, token: str, key_authorization: str) -> None: ...

    async def cleanup(self, identifier: str, token: str) -> None: ...


class Http01Solver:
    challenge_type = "http-01"

    def __init__(self, responder: Http01Responder) -> None:
        self.responder = responder

    async def present(self, identifier: str, token: str, key_authorization: str) -> None:
        self.responder.tokens[token] = key_authorization

    async def cleanup(self, identifier: str, token: str) -> None:
        self.responder.tokens.pop(token, None)


def dns01_record_name(identifier: str) -> str:
    """`_acme-challenge.<domain>.`; a wildcard is validated at its base domain (RFC 8555 §8.4)."""
    return f"_acme-challenge.{identifier.removeprefix('*.').rstrip('.')}."


class Dns01Solver:
    """Sets TXT records through a challtestsrv management API (Pebble-compatible)."""

    challenge_type = "dns-01"

    def __init__(self, management_url: str, http: httpx.AsyncClient) -> None:
        self.base = management_url.rstrip("/")
        self.http = http

    async def present(self, identifier: str, token: str, key_authorization: str) -> None:
        value = b64url(hashlib.sha256(key_authorization.encode("ascii")).digest())
        resp = await self.http.post(
            f"{self.base}/set-txt", json={"host": dns01_record_name(identifier), "value": value}
        )
        resp.raise_for_status()

    async def cleanup(self, identifier: str, token: str) -> None:
        resp = await self.http.post(
            f"{self.base}/clear-txt", json={"host": dns01_record_name(identifier)}
        )
        resp.raise_for_status()
