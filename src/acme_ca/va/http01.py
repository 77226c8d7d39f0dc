"""http-01 validation (RFC 8555 §8.3; IP identifiers RFC 8738 §7).

Fetches `http://<identifier>/.well-known/acme-challenge/<token>` from an
address the VA resolved and the address guard accepted, on the configured
port, with `Host` set to the identifier. Redirects are followed here, not by
httpx, so that every hop is re-resolved and re-checked and only the allowed
schemes and ports are used. Bodies, headers and time are bounded. Every
failure is returned as an `AcmeError`; nothing internal reaches its detail.
"""

from __future__ import annotations

import ipaddress
import json
import re
import ssl
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx

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
        try:
            return ipaddress.ip_address(self.host)
        except ValueError:
            return None

    @property
    def authority(self) -> str:
        """host[:port] as in a URL or a Host header, the port only when not the default."""
        host = f"[{self.host}]" if isinstance(self.ip, ipaddress.IPv6Address) else self.host
        return host if self.port == _DEFAULT_PORTS[self.scheme] else f"{host}:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.authority}{self.path}"


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


def _caused_by(exc: BaseException, kind: type[BaseException]) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, kind):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _connect_problem(exc: httpx.HTTPError, target: _Target) -> AcmeError:
    if isinstance(exc, httpx.ConnectTimeout):
        return _connection(f"Timeout during connect to {target.url} (likely firewall problem)")
    if _caused_by(exc, ssl.SSLError):
        return AcmeError(type=ProblemType.TLS, detail=f"TLS handshake with {target.url} failed")
    if _caused_by(exc, ConnectionRefusedError):
        return _connection(f"Connection refused by {target.url}")
    return _connection(f"Error connecting to {target.url}")


def _transfer_problem(exc: httpx.HTTPError, target: _Target) -> AcmeError:
    if isinstance(exc, httpx.TimeoutException):
        return _connection(
            f"Timeout after connect to {target.url} (your server may be slow or overloaded)"
        )
    return _connection(f"Error getting validation data from {target.url}")


def _unverified_context() -> ssl.SSLContext:
    # Like Boulder, https hops do not verify the certificate: http-01 proves
    # control by the body, and a redirect to https is only a transport. Built
    # once: loading a trust store costs milliseconds and none is needed here.
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    tls.check_hostname = False
    tls.verify_mode = ssl.CERT_NONE
    return tls


_TLS = _unverified_context()


def _client(config: VAConfig) -> httpx.AsyncClient:
    tls = _TLS
    return httpx.AsyncClient(
        follow_redirects=False,
        trust_env=False,  # never route validation through an environment proxy
        verify=tls,
        http2=False,
        timeout=httpx.Timeout(config.total_timeout, connect=config.connect_timeout),
        limits=httpx.Limits(max_connections=1, max_keepalive_connections=0),
    )


@dataclass(frozen=True, slots=True)
class _Response:
    status: int
    location: str | None
    body: bytes


async def _fetch(
    client: httpx.AsyncClient,
    target: _Target,
    address: IPAddress,
    port: int,
    config: VAConfig,
) -> _Response:
    """One GET of `target` at `address:port`; raises httpx errors or AcmeError."""
    literal = f"[{address}]" if isinstance(address, ipaddress.IPv6Address) else str(address)
    extensions: dict[str, Any] = {}
    if target.scheme == "https" and target.ip is None:
        extensions["sni_hostname"] = target.host
    headers = {
        "Host": target.authority,
        "User-Agent": _USER_AGENT,
        "Accept": "*/*",
        # Raw bytes only: a compressed body could expand past every bound.
        "Accept-Encoding": "identity",
    }
    url = f"{target.scheme}://{literal}:{port}{target.path}"
    async with client.stream("GET", url, headers=headers, extensions=extensions) as response:
        header_bytes = sum(len(k) + len(v) + 4 for k, v in response.headers.raw)
        if header_bytes > config.max_header_bytes:
            raise _unauthorized(
                f"Invalid response from {target.url}: headers larger than "
                f"{config.max_header_bytes} bytes"
            )
        if response.status_code in _REDIRECT_STATUSES:
            return _Response(
                status=response.status_code,
                location=response.headers.get("location"),
                body=b"",
            )
        if response.status_code != 200:
            return _Response(status=response.status_code, location=None, body=b"")
        body = bytearray()
        async for chunk in response.aiter_raw():
            body += chunk
            if len(body) > config.max_body_bytes:
                raise _unauthorized(
                    f"Invalid response from {target.url}: body larger than "
                    f"{config.max_body_bytes} bytes"
                )
        return _Response(status=200, location=None, body=bytes(body))


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
    async with _client(config) as client:
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
                    response = await _fetch(client, target, address, port, config)
                    break
                except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                    problem = _connect_problem(exc, target)  # try the next family
                except httpx.HTTPError as exc:
                    return _transfer_problem(exc, target)
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
