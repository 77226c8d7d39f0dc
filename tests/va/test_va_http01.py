"""http-01 (RFC 8555 §8.3) against real loopback HTTP servers."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cryptography import x509

from acme_ca.errors import Identifier, ProblemType
from acme_ca.model import ChallengeType
from acme_ca.va import VAConfig, ValidationAuthority, ValidationRequest, ValidationResult
from tests.va.va_servers import (
    KEY_AUTH,
    TOKEN,
    FakeResolver,
    HttpServer,
    Route,
    make_cert,
    server_context,
)

CHALLENGE_PATH = f"/.well-known/acme-challenge/{TOKEN}"


@pytest.fixture
async def server() -> AsyncIterator[HttpServer]:
    async with HttpServer() as s:
        yield s


def _config(server: HttpServer, **kw: object) -> VAConfig:
    base = VAConfig(
        http01_port=server.port,
        allow_private_addresses=True,
        connect_timeout=2.0,
        total_timeout=5.0,
    )
    return dataclasses.replace(base, **kw)  # type: ignore[arg-type]


def _resolver() -> FakeResolver:
    return FakeResolver(addresses={"example.com": ["127.0.0.1"], "other.example": ["127.0.0.1"]})


async def _validate(
    config: VAConfig,
    *,
    name: str = "example.com",
    kind: str = "dns",
    resolver: FakeResolver | None = None,
) -> ValidationResult:
    va = ValidationAuthority(config, resolver or _resolver())
    request = ValidationRequest(
        challenge_type=ChallengeType.HTTP_01,
        identifier=Identifier(type=kind, value=name),
        token=TOKEN,
        key_authorization=KEY_AUTH,
    )
    async with asyncio.timeout(15):
        return await va.validate(request)


async def test_valid(server: HttpServer) -> None:
    server.challenge(KEY_AUTH)
    result = await _validate(_config(server))
    assert result.error is None
    assert result.valid
    assert result.records == (
        {
            "url": f"http://example.com{CHALLENGE_PATH}",
            "hostname": "example.com",
            "port": str(server.port),
            "addressesResolved": ["127.0.0.1"],
            "addressUsed": "127.0.0.1",
        },
    )
    assert server.requests[0].host == "example.com"


async def test_trailing_whitespace_is_trimmed(server: HttpServer) -> None:
    server.challenge(KEY_AUTH + " \r\n\n")
    assert (await _validate(_config(server))).error is None


async def test_wrong_body_is_unauthorized(server: HttpServer) -> None:
    server.challenge("something else")
    result = await _validate(_config(server))
    assert result.error is not None
    assert result.error.type == ProblemType.UNAUTHORIZED
    assert "did not match" in result.error.detail
    assert '"something else"' in result.error.detail


async def test_leading_whitespace_is_not_trimmed(server: HttpServer) -> None:
    server.challenge(" " + KEY_AUTH)
    result = await _validate(_config(server))
    assert result.error is not None
    assert result.error.type == ProblemType.UNAUTHORIZED


async def test_404_is_unauthorized(server: HttpServer) -> None:
    result = await _validate(_config(server))
    assert result.error is not None
    assert result.error.type == ProblemType.UNAUTHORIZED
    assert result.error.detail == f"Invalid response from http://example.com{CHALLENGE_PATH}: 404"


async def test_redirect_is_followed_and_recorded(server: HttpServer) -> None:
    server.routes[CHALLENGE_PATH] = Route(
        status=302, headers=[("Location", "http://other.example/k?x=1")]
    )
    server.routes["/k?x=1"] = Route(body=KEY_AUTH.encode())
    resolver = _resolver()
    result = await _validate(_config(server), resolver=resolver)
    assert result.error is None
    assert [r["url"] for r in result.records] == [
        f"http://example.com{CHALLENGE_PATH}",
        "http://other.example/k?x=1",
    ]
    # Each hop is resolved again and sent with its own Host.
    assert resolver.lookups == ["example.com", "other.example"]
    assert [s.host for s in server.requests] == ["example.com", "other.example"]


async def test_relative_redirect(server: HttpServer) -> None:
    server.routes[CHALLENGE_PATH] = Route(status=301, headers=[("Location", "/moved")])
    server.routes["/moved"] = Route(body=KEY_AUTH.encode())
    result = await _validate(_config(server))
    assert result.error is None
    assert result.records[1]["url"] == "http://example.com/moved"


@pytest.mark.parametrize(
    ("host", "sni"),
    [
        ("other.example", "other.example"),
        # RFC 6066 §3: no SNI for an IP literal.
        ("127.0.0.1", None),
    ],
)
async def test_redirect_to_https_uses_sni_without_verifying(
    server: HttpServer, tmp_path: Path, host: str, sni: str | None
) -> None:
    cert = make_cert(tmp_path, names=[x509.DNSName("not-the-name.invalid")])
    async with HttpServer(server_context(cert)) as https:
        https.routes["/secure"] = Route(body=KEY_AUTH.encode())
        server.routes[CHALLENGE_PATH] = Route(
            status=307, headers=[("Location", f"https://{host}/secure")]
        )
        result = await _validate(_config(server, tlsalpn01_port=https.port))
        assert result.error is None, result.error
        assert https.sni == [sni]
        assert https.requests[0].host == host
        assert result.records[1]["port"] == str(https.port)


async def test_redirect_to_disallowed_port_is_refused(server: HttpServer) -> None:
    server.routes[CHALLENGE_PATH] = Route(
        status=302, headers=[("Location", "http://example.com:8080/x")]
    )
    result = await _validate(_config(server))
    assert result.error is not None
    assert result.error.type == ProblemType.CONNECTION
    assert "Invalid port in redirect target" in result.error.detail
    assert len(server.requests) == 1


async def test_redirect_to_other_scheme_is_refused(server: HttpServer) -> None:
    server.routes[CHALLENGE_PATH] = Route(status=302, headers=[("Location", "ftp://example.com/x")])
    result = await _validate(_config(server))
    assert result.error is not None
    assert result.error.type == ProblemType.CONNECTION
    assert "scheme" in result.error.detail


async def test_too_many_redirects(server: HttpServer) -> None:
    server.routes[CHALLENGE_PATH] = Route(status=302, headers=[("Location", "/loop")])
    server.routes["/loop"] = Route(status=302, headers=[("Location", "/loop")])
    result = await _validate(_config(server, max_redirects=3))
    assert result.error is not None
    assert result.error.type == ProblemType.CONNECTION
    assert "Too many redirects" in result.error.detail
    assert len(server.requests) == 4


async def test_private_ip_identifier_is_refused(server: HttpServer) -> None:
    server.challenge(KEY_AUTH)
    config = _config(server, allow_private_addresses=False)
    result = await _validate(config, name="127.0.0.1", kind="ip")
    assert result.error is not None
    assert result.error.type == ProblemType.CONNECTION
    assert server.connections == 0


async def test_redirect_hop_is_resolved_again(server: HttpServer) -> None:
    server.routes[CHALLENGE_PATH] = Route(
        status=302, headers=[("Location", "http://missing.example/x")]
    )
    result = await _validate(_config(server))
    assert result.error is not None
    assert result.error.type == ProblemType.DNS
    assert [r["hostname"] for r in result.records] == ["example.com", "missing.example"]


async def test_oversized_body_is_refused(server: HttpServer) -> None:
    server.challenge(KEY_AUTH + " " * 20000)
    result = await _validate(_config(server, max_body_bytes=1024))
    assert result.error is not None
    assert result.error.type == ProblemType.UNAUTHORIZED
    assert "larger than 1024 bytes" in result.error.detail


async def test_oversized_headers_are_refused(server: HttpServer) -> None:
    server.routes[CHALLENGE_PATH] = Route(body=KEY_AUTH.encode(), headers=[("X-Big", "a" * 5000)])
    result = await _validate(_config(server, max_header_bytes=4096))
    assert result.error is not None
    assert result.error.type == ProblemType.UNAUTHORIZED
    assert "headers larger" in result.error.detail


async def test_private_address_is_refused_by_default(server: HttpServer) -> None:
    server.challenge(KEY_AUTH)
    result = await _validate(_config(server, allow_private_addresses=False))
    assert result.error is not None
    assert result.error.type == ProblemType.CONNECTION
    assert result.error.detail == "No publicly routable IP address found for example.com"
    assert server.connections == 0
    assert result.records[0]["addressesResolved"] == ["127.0.0.1"]


async def test_ip_identifier_connects_directly(server: HttpServer) -> None:
    server.challenge(KEY_AUTH)
    resolver = FakeResolver()
    result = await _validate(_config(server), name="127.0.0.1", kind="ip", resolver=resolver)
    assert result.error is None
    assert resolver.lookups == []
    # RFC 8738 §7: the Host header is the address itself.
    assert server.requests[0].host == "127.0.0.1"
    assert result.records[0]["url"] == f"http://127.0.0.1{CHALLENGE_PATH}"


async def test_ipv6_identifier_host_is_bracketed() -> None:
    async with HttpServer(host="::1") as server:
        server.challenge(KEY_AUTH)
        result = await _validate(_config(server), name="::1", kind="ip")
    assert result.error is None, result.error
    assert server.requests[0].host == "[::1]"
    assert result.records[0]["url"] == f"http://[::1]{CHALLENGE_PATH}"


async def test_ipv6_first_then_ipv4_fallback(server: HttpServer) -> None:
    # Boulder's order: try the first IPv6 address, fall back to the first IPv4 one.
    server.challenge(KEY_AUTH)
    resolver = FakeResolver(addresses={"example.com": ["127.0.0.1", "::1"]})
    result = await _validate(_config(server), resolver=resolver)
    assert result.error is None, result.error
    assert result.records[0]["addressesTried"] == ["::1"]
    assert result.records[0]["addressUsed"] == "127.0.0.1"


async def test_dns_failure_is_dns_problem(server: HttpServer) -> None:
    result = await _validate(_config(server), name="missing.example")
    assert result.error is not None
    assert result.error.type == ProblemType.DNS
    assert "missing.example" in result.error.detail


async def test_connection_refused() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    config = VAConfig(http01_port=closed_port, allow_private_addresses=True, total_timeout=5.0)
    result = await _validate(config)
    assert result.error is not None
    assert result.error.type == ProblemType.CONNECTION
    assert "refused" in result.error.detail
    assert "Errno" not in result.error.detail


async def test_slow_server_hits_total_timeout(server: HttpServer) -> None:
    server.routes[CHALLENGE_PATH] = Route(body=KEY_AUTH.encode(), delay=3.0)
    result = await _validate(_config(server, total_timeout=0.3))
    assert result.error is not None
    assert result.error.type == ProblemType.CONNECTION
    assert "Timeout" in result.error.detail
    assert result.records[0]["addressUsed"] == "127.0.0.1"


# --- framings HttpServer does not send: raw responses from a tiny asyncio server ------------


@contextlib.asynccontextmanager
async def _raw_server(*chunks: bytes) -> AsyncIterator[tuple[VAConfig, list[bytes]]]:
    """Answers each connection with `chunks` (one write each), then closes it.

    Yields a config pointing http-01 at it and the request heads received.
    """
    heads: list[bytes] = []
    handlers: set[asyncio.Task[None]] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.add(task)
        try:
            heads.append(await reader.readuntil(b"\r\n\r\n"))
            for chunk in chunks:
                writer.write(chunk)
                await writer.drain()
                await asyncio.sleep(0.01)  # separate segments, to exercise reassembly
        except OSError:
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    config = VAConfig(
        http01_port=port, allow_private_addresses=True, connect_timeout=2.0, total_timeout=5.0
    )
    try:
        yield config, heads
    finally:
        server.close()
        await asyncio.gather(*handlers, return_exceptions=True)
        await server.wait_closed()


async def test_request_head_is_exact() -> None:
    body = KEY_AUTH.encode()
    head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n\r\n".encode()
    async with _raw_server(head + body) as (config, heads):
        result = await _validate(config)
    assert result.error is None, result.error
    assert heads == [
        f"GET {CHALLENGE_PATH} HTTP/1.1\r\n"
        "Host: example.com\r\n"
        "User-Agent: acme-ca-va (+RFC 8555 http-01)\r\n"
        "Accept: */*\r\n"
        "Accept-Encoding: identity\r\n"
        "Connection: close\r\n"
        "\r\n".encode()
    ]


async def test_chunked_body() -> None:
    body = KEY_AUTH.encode()
    async with _raw_server(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"%x\r\n%s\r\n" % (10, body[:10]),
        b"%x\r\n%s\r\n" % (len(body) - 10, body[10:]),
        b"0\r\n\r\n",
    ) as (config, _):
        result = await _validate(config)
    assert result.error is None, result.error


async def test_chunked_body_is_bounded_by_decoded_size() -> None:
    chunk = b"%x\r\n%s\r\n" % (600, b"a" * 600)
    async with _raw_server(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", chunk, chunk, b"0\r\n\r\n"
    ) as (config, _):
        result = await _validate(dataclasses.replace(config, max_body_bytes=1024))
    assert result.error is not None
    assert result.error.type == ProblemType.UNAUTHORIZED
    assert result.error.detail.endswith("body larger than 1024 bytes")


async def test_close_delimited_body() -> None:
    # No Content-Length and not chunked: the body ends where the connection does.
    body = KEY_AUTH.encode()
    async with _raw_server(b"HTTP/1.1 200 OK\r\n\r\n", body[:20], body[20:] + b"\n") as (
        config,
        _,
    ):
        result = await _validate(config)
    assert result.error is None, result.error


async def test_interim_response_is_skipped() -> None:
    body = KEY_AUTH.encode()
    async with _raw_server(
        b"HTTP/1.1 100 Continue\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body),
    ) as (config, _):
        result = await _validate(config)
    assert result.error is None, result.error


@pytest.mark.parametrize(
    "response",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 500\r\n\r\nshort",  # EOF before the end
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",
        b"HTTP/1.1 200 OK\r\nContent-Le",  # EOF in the headers
        b"SSH-2.0-OpenSSH_9.6\r\n",  # not HTTP
        b"",
    ],
)
async def test_broken_response_is_connection_problem(response: bytes) -> None:
    async with _raw_server(response) as (config, _):
        result = await _validate(config)
    assert result.error is not None
    assert result.error.type == ProblemType.CONNECTION
    assert result.error.detail == (
        f"Error getting validation data from http://example.com{CHALLENGE_PATH}"
    )


async def test_endless_header_is_refused() -> None:
    # Headers that never end are bounded by the bytes received, not by a complete line.
    async with _raw_server(b"HTTP/1.1 200 OK\r\nX-Big: ", *[b"a" * 4096] * 4) as (config, _):
        result = await _validate(dataclasses.replace(config, max_header_bytes=4096))
    assert result.error is not None
    assert result.error.type == ProblemType.UNAUTHORIZED
    assert result.error.detail.endswith("headers larger than 4096 bytes")


async def test_redirect_path_is_percent_encoded_on_the_wire(server: HttpServer) -> None:
    server.routes[CHALLENGE_PATH] = Route(status=302, headers=[("Location", "/a b/./c?q=x y")])
    server.routes["/a%20b/c?q=x%20y"] = Route(body=KEY_AUTH.encode())
    result = await _validate(_config(server))
    assert result.error is None, result.error
    assert server.requests[1].path == "/a%20b/c?q=x%20y"
