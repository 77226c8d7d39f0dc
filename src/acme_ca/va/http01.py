"""http-01 validation (RFC 8555 §8.3; IP identifiers RFC 8738 §7).

Fetches `http://<identifier>/.well-known/acme-challenge/<token>` from an
address the VA resolved and the address guard accepted, on the configured
port, with `Host` set to the identifier. Redirects are followed here, so that
every hop is re-resolved and re-checked and only the allowed schemes and ports
are used. Bodies, headers and time are bounded. Every failure is returned as
an `AcmeError`; nothing internal reaches its detail.

Each hop is one GET on one fresh connection, so this is a small HTTP/1.1
client (an `asyncio.Protocol` and httptools' C parser), not a general one:
httpx's client, pool and stream layers cost about 1 ms of CPU per validation
against a loopback server (~15% of the server's CPU under load); this costs
0.2-0.3 ms.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import json
import re
import ssl
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import quote, urljoin, urlsplit

import httptools

from acme_ca.errors import AcmeError, Identifier, ProblemType
from acme_ca.model import IdentifierType
from acme_ca.va.address_guard import IPAddress, refused, usable_addresses
from acme_ca.va.resolver import Resolver
from acme_ca.va.types import VAConfig, ValidationRequest

_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_DEFAULT_PORTS = {"http": 80, "https": 443}
_HOSTNAME = re.compile(r"^(?=.{1,253}$)[a-z0-9_-]{1,63}(\.[a-z0-9_-]{1,63})*$")
_USER_AGENT = "acme-ca-va (+RFC 8555 http-01)"


def _connection(detail: str) -> AcmeError:
    return AcmeError(type=ProblemType.CONNECTION, detail=detail)


def _unauthorized(detail: str) -> AcmeError:
    return AcmeError(type=ProblemType.UNAUTHORIZED, detail=detail)


def _quote(data: bytes, limit: int = 128) -> str:
    """A short printable rendering of untrusted response bytes for a problem detail."""
    text = data[:limit].decode("utf-8", errors="replace")
    return json.dumps(text + ("..." if len(data) > limit else ""))


@dataclass(frozen=True, slots=True)
class _Target:
    """One hop's logical URL; the connection goes to a resolved address instead."""

    scheme: str
    host: str
    """A lower-case hostname, or an IP address without brackets."""
    port: int
    path: str
    """Path plus query, starting with "/"."""

    @property
    def ip(self) -> IPAddress | None:
        return _ip_or_none(self.host)

    @property
    def authority(self) -> str:
        """host[:port] as in a URL or a Host header, the port only when not the default."""
        host = f"[{self.host}]" if isinstance(self.ip, ipaddress.IPv6Address) else self.host
        return host if self.port == _DEFAULT_PORTS[self.scheme] else f"{host}:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.authority}{self.path}"


@functools.lru_cache(maxsize=256)
def _ip_or_none(host: str) -> IPAddress | None:
    # Asked several times per hop (URL, Host header, SNI, the guard); a hostname takes
    # the ValueError path of `ip_address`, the slow one.
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _initial_target(identifier: Identifier, token: str) -> _Target:
    host = identifier.value.lower().rstrip(".")
    if identifier.type == IdentifierType.IP:
        host = ipaddress.ip_address(identifier.value).compressed
    return _Target(scheme="http", host=host, port=80, path=f"/.well-known/acme-challenge/{token}")


def _redirect_target(current: _Target, location: str, config: VAConfig) -> _Target:
    """The next hop, or a connection problem naming why the redirect is refused."""
    try:
        parts = urlsplit(urljoin(current.url, location.strip()))
        explicit_port = parts.port
    except ValueError:
        raise _connection(f"Invalid redirect target {location!r} from {current.url}") from None
    if parts.scheme not in _DEFAULT_PORTS:
        raise _connection(
            f"Invalid protocol scheme in redirect target from {current.url}: "
            'only "http" and "https" are supported'
        )
    port = explicit_port if explicit_port is not None else _DEFAULT_PORTS[parts.scheme]
    allowed = {80, 443, config.http01_port, config.tlsalpn01_port}
    if port not in allowed:
        raise _connection(
            f"Invalid port in redirect target from {current.url}: "
            f"only ports {', '.join(str(p) for p in sorted(allowed))} are supported, not {port}"
        )
    host = (parts.hostname or "").rstrip(".")
    try:
        host = ipaddress.ip_address(host).compressed
    except ValueError:
        if not _HOSTNAME.match(host):
            raise _connection(f"Invalid host in redirect target from {current.url}") from None
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return _Target(scheme=parts.scheme, host=host, port=port, path=path)


def _connect_port(target: _Target, config: VAConfig) -> int:
    # The logical ports 80 and 443 map to the configured ones, so tests (and
    # Boulder-style setups) can serve them on unprivileged ports.
    if target.port == 80:
        return config.http01_port
    if target.port == 443:
        return config.tlsalpn01_port
    return target.port


def _candidates(addresses: list[IPAddress]) -> list[IPAddress]:
    """Boulder's choice: the first IPv6 address, then the first IPv4 one as fallback."""
    v6 = next((a for a in addresses if isinstance(a, ipaddress.IPv6Address)), None)
    v4 = next((a for a in addresses if isinstance(a, ipaddress.IPv4Address)), None)
    return [a for a in (v6, v4) if a is not None]


def _unverified_context() -> ssl.SSLContext:
    # Like Boulder, https hops do not verify the certificate: http-01 proves
    # control by the body, and a redirect to https is only a transport. Built
    # once: loading a trust store costs milliseconds and none is needed here.
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    tls.check_hostname = False
    tls.verify_mode = ssl.CERT_NONE
    return tls


_TLS = _unverified_context()

# The request-target as a general client would send it (WHATWG path and query
# percent-encode sets): a redirect's path may hold spaces, controls or non-ASCII.
_PATH_SAFE = "".join(c for c in map(chr, range(0x21, 0x7F)) if c not in '"#<>?`{}')
_QUERY_SAFE = "".join(c for c in map(chr, range(0x21, 0x7F)) if c not in '"#<>')
_LONE_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")
# Room beyond `max_header_bytes`, in the raw bytes received before the final
# headers are complete, for the status line (and any 1xx responses).
_STATUS_LINE_ROOM = 1024


def _request_target(path: str) -> str:
    path, sep, query = path.partition("?")
    segments = path.split("/")
    if "." in segments or ".." in segments:  # RFC 3986 §5.2.4
        kept: list[str] = []
        for segment in segments:
            if segment == "..":
                if kept and kept != [""]:
                    kept.pop()
            elif segment != ".":
                kept.append(segment)
        path = "/".join(kept) or "/"
    path = quote(_LONE_PERCENT.sub("%25", path), safe=_PATH_SAFE)
    return path + sep + quote(_LONE_PERCENT.sub("%25", query), safe=_QUERY_SAFE)


def _request(target: _Target) -> bytes:
    return (
        f"GET {_request_target(target.path)} HTTP/1.1\r\n"
        f"Host: {target.authority}\r\n"
        f"User-Agent: {_USER_AGENT}\r\n"
        "Accept: */*\r\n"
        # Raw bytes only: a compressed body could expand past every bound.
        "Accept-Encoding: identity\r\n"
        "Connection: close\r\n"
        "\r\n"
    ).encode("ascii")


@dataclass(frozen=True, slots=True)
class _Response:
    status: int
    location: str | None
    body: bytes


class _HopError(Exception):
    """One hop failed: its problem, and whether it failed while connecting."""

    def __init__(self, problem: AcmeError, *, connecting: bool) -> None:
        self.problem = problem
        self.connecting = connecting


class _Stop(Exception):
    """Raised in a parser callback to stop parsing once the outcome is set."""


class _GetProtocol(asyncio.Protocol):
    """One GET on one connection: sends the request, parses and bounds the response.

    The outcome goes to `done`: a `_Response`, an `AcmeError` for a bound, or a
    `_HopError` for a broken, malformed or timed-out transfer.
    """

    def __init__(self, target: _Target, config: VAConfig, done: asyncio.Future[_Response]) -> None:
        self._target = target
        self._max_header_bytes = config.max_header_bytes
        self._max_body_bytes = config.max_body_bytes
        self._done = done
        self._parser = httptools.HttpResponseParser(self)
        self._status = 0  # the final status, once that response's headers are complete
        self._received = 0
        self._header_bytes = 0
        self._locations: list[bytes] = []
        self._delimited = False  # Content-Length or Transfer-Encoding: EOF is not the end
        self._body = bytearray()

    def _finish(self, outcome: _Response | Exception) -> None:
        if self._done.done():
            pass
        elif isinstance(outcome, _Response):
            self._done.set_result(outcome)
        else:
            self._done.set_exception(outcome)

    def _broken(self) -> _HopError:
        detail = f"Error getting validation data from {self._target.url}"
        return _HopError(_connection(detail), connecting=False)

    def _too_large(self, what: str, limit: int) -> AcmeError:
        return _unauthorized(
            f"Invalid response from {self._target.url}: {what} larger than {limit} bytes"
        )

    def expire(self) -> None:
        detail = (
            f"Timeout after connect to {self._target.url} (your server may be slow or overloaded)"
        )
        self._finish(_HopError(_connection(detail), connecting=False))

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        cast(asyncio.WriteTransport, transport).write(_request(self._target))

    def data_received(self, data: bytes) -> None:
        if self._done.done():
            return
        try:
            self._parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade):
            self._finish(self._broken())  # a no-op after _Stop: the outcome is set
            return
        if not self._status:
            self._received += len(data)
            if self._received > self._max_header_bytes + _STATUS_LINE_ROOM:
                self._finish(self._too_large("headers", self._max_header_bytes))

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is None and self._status == 200 and not self._delimited:
            self._finish(_Response(status=200, location=None, body=bytes(self._body)))
        if not self._done.done():  # the usual end of a good answer: nothing to build
            self._finish(self._broken())

    # httptools callbacks

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value.rstrip(b" \t")) + 4
        if self._header_bytes > self._max_header_bytes:
            self._finish(self._too_large("headers", self._max_header_bytes))
            raise _Stop
        lower = name.lower()
        if lower == b"location":
            self._locations.append(value.strip(b" \t"))
        elif lower in (b"content-length", b"transfer-encoding"):
            self._delimited = True

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            # An interim response: the final one follows on this connection.
            self._header_bytes = 0
            self._locations.clear()
            self._delimited = False
            return
        self._status = status
        if status == 200:
            return
        location: str | None = None
        if status in _REDIRECT_STATUSES and self._locations:
            raw = b", ".join(self._locations)
            try:
                location = raw.decode("utf-8")
            except UnicodeDecodeError:
                location = raw.decode("latin-1")
        self._finish(_Response(status=status, location=location, body=b""))
        raise _Stop

    def on_body(self, body: bytes) -> None:
        self._body += body
        if len(self._body) > self._max_body_bytes:
            self._finish(self._too_large("body", self._max_body_bytes))
            raise _Stop

    def on_message_complete(self) -> None:
        if not self._status:
            return  # the end of an interim response
        self._finish(_Response(status=200, location=None, body=bytes(self._body)))
        raise _Stop


def _connect_problem(exc: OSError, target: _Target) -> AcmeError:
    if isinstance(exc, TimeoutError):
        return _connection(f"Timeout during connect to {target.url} (likely firewall problem)")
    if isinstance(exc, ssl.SSLError):
        return AcmeError(type=ProblemType.TLS, detail=f"TLS handshake with {target.url} failed")
    if isinstance(exc, ConnectionRefusedError):
        return _connection(f"Connection refused by {target.url}")
    return _connection(f"Error connecting to {target.url}")


async def _fetch(target: _Target, address: IPAddress, port: int, config: VAConfig) -> _Response:
    """One GET of `target` at `address:port`; raises `_HopError` or `AcmeError`."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[_Response] = loop.create_future()
    protocol = _GetProtocol(target, config, done)
    tls: ssl.SSLContext | None = None
    sni: str | None = None
    if target.scheme == "https":
        # SNI names the host, never an IP literal; "" sends none.
        tls, sni = _TLS, (target.host if target.ip is None else "")
    try:
        async with asyncio.timeout(config.connect_timeout):
            transport, _ = await loop.create_connection(
                lambda: protocol, str(address), port, ssl=tls, server_hostname=sni
            )
    except OSError as exc:  # TimeoutError and ssl.SSLError included
        raise _HopError(_connect_problem(exc, target), connecting=True) from None
    timer = loop.call_later(config.total_timeout, protocol.expire)
    try:
        return await done
    finally:
        timer.cancel()
        transport.close()


async def validate_http01(
    request: ValidationRequest,
    *,
    config: VAConfig,
    resolver: Resolver,
    records: list[dict[str, Any]],
) -> AcmeError | None:
    """Check an http-01 challenge; append one record per hop to `records`.

    Returns None when the body matches the key authorization, else the problem.
    Precondition: the token is base64url and the identifier has no "*." prefix.
    """
    target = _initial_target(request.identifier, request.token)
    expected = request.key_authorization.encode("utf-8")
    redirects = 0
    while True:
        port = _connect_port(target, config)
        record: dict[str, Any] = {
            "url": target.url,
            "hostname": target.host,
            "port": str(port),
            "addressesResolved": [],
        }
        records.append(record)
        ip = target.ip
        addresses = [ip] if ip is not None else await resolver.addresses(target.host)
        record["addressesResolved"] = [str(a) for a in addresses]
        usable = usable_addresses(addresses, allow_private=config.allow_private_addresses)
        if not usable:
            return refused(target.host)

        response: _Response | None = None
        problem: AcmeError | None = None
        tried: list[str] = []
        for address in _candidates(usable):
            record["addressUsed"] = str(address)
            tried.append(str(address))
            try:
                response = await _fetch(target, address, port, config)
                break
            except _HopError as exc:
                if not exc.connecting:
                    return exc.problem
                problem = exc.problem  # try the next family
        if len(tried) > 1:
            record["addressesTried"] = tried[:-1]
        if response is None:
            assert problem is not None
            return problem

        if response.status in _REDIRECT_STATUSES:
            redirects += 1
            if redirects > config.max_redirects:
                return _connection(f"Too many redirects (more than {config.max_redirects})")
            if not response.location:
                return _connection(f"Redirect from {target.url} has no Location")
            target = _redirect_target(target, response.location, config)
            continue
        if response.status != 200:
            return _unauthorized(f"Invalid response from {target.url}: {response.status}")
        # RFC 8555 §8.3: the server SHOULD ignore whitespace at the end of the body.
        body = response.body.rstrip()
        if body != expected:
            return _unauthorized(
                "The key authorization file from the server did not match this "
                f"challenge. Expected {_quote(expected)} (got {_quote(body)})"
            )
        return None
