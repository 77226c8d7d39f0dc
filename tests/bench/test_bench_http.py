"""The benchmark's keep-alive HTTP/1.1 client against scripted raw servers."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import ssl
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from cryptography import x509

from acme_ca.bench.http import Headers, PooledHttpClient, TransportError
from tests.va.va_servers import make_cert, server_context

# A handler gets the request head (up to the blank line) and the body; it answers raw
# bytes, or None to close the connection without answering.
Handler = Callable[[bytes, bytes], bytes | None]


class RawServer:
    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.heads: list[bytes] = []
        self.writers: list[asyncio.StreamWriter] = []
        self.close_after_answer = False

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.append(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self.heads.append(head)
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                body = await reader.readexactly(length)
                answer = self.handler(head, body)
                if answer is None:
                    break
                writer.write(answer)
                await writer.drain()
                if self.close_after_answer:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@contextlib.asynccontextmanager
async def raw_server(
    handler: Handler, tls: ssl.SSLContext | None = None
) -> AsyncIterator[tuple[RawServer, str]]:
    raw = RawServer(handler)
    server = await asyncio.start_server(raw.serve, "127.0.0.1", 0, ssl=tls)
    port = server.sockets[0].getsockname()[1]
    scheme = "https" if tls else "http"
    try:
        yield raw, f"{scheme}://127.0.0.1:{port}"
    finally:
        server.close()
        for writer in raw.writers:
            writer.close()
            with contextlib.suppress(ConnectionError, ssl.SSLError):
                await writer.wait_closed()


def ok(body: bytes = b"{}", *extra: bytes) -> bytes:
    head = [b"HTTP/1.1 200 OK", b"Content-Length: %d" % len(body), *extra]
    return b"\r\n".join(head) + b"\r\n\r\n" + body


async def test_keeps_the_connection_alive_between_requests() -> None:
    async with raw_server(lambda head, body: ok(b"hello")) as (raw, base):
        client = PooledHttpClient(timeout=5)
        for _ in range(3):
            response = await client.request("GET", f"{base}/x", headers={}, content=None)
            assert (response.status, response.content) == (200, b"hello")
        await client.aclose()
    assert raw.connections == 1


async def test_sends_host_content_length_and_given_headers() -> None:
    async with raw_server(lambda head, body: ok(body)) as (raw, base):
        client = PooledHttpClient(timeout=5)
        response = await client.request(
            "POST",
            f"{base}/p?q=1",
            headers={"Content-Type": "application/jose+json"},
            content=b"abc",
        )
        await client.aclose()
    assert response.content == b"abc"
    lines = raw.heads[0].split(b"\r\n")
    assert lines[0] == b"POST /p?q=1 HTTP/1.1"
    assert b"Content-Type: application/jose+json" in lines
    assert b"Content-Length: 3" in lines
    assert any(line.startswith(b"Host: 127.0.0.1:") for line in lines)


async def test_head_response_has_no_body_and_the_connection_stays_usable() -> None:
    def handler(head: bytes, body: bytes) -> bytes:
        if head.startswith(b"HEAD"):
            return b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nReplay-Nonce: n1\r\n\r\n"
        return ok(b"after")

    async with raw_server(handler) as (raw, base):
        client = PooledHttpClient(timeout=5)
        nonce = await client.request("HEAD", f"{base}/nonce", headers={}, content=None)
        after = await client.request("GET", f"{base}/x", headers={}, content=None)
        await client.aclose()
    assert (nonce.content, nonce.headers["replay-nonce"]) == (b"", "n1")
    assert after.content == b"after"
    assert raw.connections == 1


async def test_reads_a_chunked_body() -> None:
    chunked = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
    )
    async with raw_server(lambda head, body: chunked) as (_, base):
        client = PooledHttpClient(timeout=5)
        response = await client.request("GET", f"{base}/", headers={}, content=None)
        await client.aclose()
    assert response.content == b"abcde"


async def test_connection_close_is_honoured() -> None:
    async with raw_server(lambda head, body: ok(b"x", b"Connection: close")) as (raw, base):
        client = PooledHttpClient(timeout=5)
        await client.request("GET", f"{base}/", headers={}, content=None)
        await client.request("GET", f"{base}/", headers={}, content=None)
        await client.aclose()
    assert raw.connections == 2


async def test_an_idle_connection_closed_by_the_server_is_replaced() -> None:
    async with raw_server(lambda head, body: ok(b"x")) as (raw, base):
        client = PooledHttpClient(timeout=5)
        await client.request("GET", f"{base}/", headers={}, content=None)
        for writer in raw.writers:
            writer.close()  # the server's keep-alive timeout
        await asyncio.sleep(0.05)
        response = await client.request("GET", f"{base}/", headers={}, content=None)
        await client.aclose()
    assert response.content == b"x"
    assert raw.connections == 2


async def test_a_connection_closed_mid_response_is_an_error_and_not_retried() -> None:
    partial = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"
    async with raw_server(lambda head, body: partial) as (raw, base):
        raw.close_after_answer = True
        client = PooledHttpClient(timeout=5)
        with pytest.raises(TransportError, match="closed before the response ended"):
            await client.request("GET", f"{base}/", headers={}, content=None)
        await client.aclose()
    assert raw.connections == 1


async def test_malformed_response_is_a_transport_error() -> None:
    async with raw_server(lambda head, body: b"NOT HTTP AT ALL\r\n\r\n") as (_, base):
        client = PooledHttpClient(timeout=5)
        with pytest.raises(TransportError):
            await client.request("GET", f"{base}/", headers={}, content=None)
        await client.aclose()


async def test_no_answer_times_out() -> None:
    writers: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        await reader.read()
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = PooledHttpClient(timeout=0.2)
    with pytest.raises(TransportError, match="no response"):
        await client.request("GET", f"http://127.0.0.1:{port}/", headers={}, content=None)
    await client.aclose()
    server.close()
    for writer in writers:
        writer.close()
        await writer.wait_closed()


async def test_refused_connection_is_a_transport_error() -> None:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    client = PooledHttpClient(timeout=2)
    with pytest.raises(TransportError, match="cannot connect"):
        await client.request("GET", f"http://127.0.0.1:{port}/", headers={}, content=None)


async def test_https_with_a_ca_bundle_and_refused_without(tmp_path: Path) -> None:
    cert = make_cert(tmp_path, names=[x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    async with raw_server(lambda head, body: ok(b"tls"), server_context(cert)) as (_, base):
        trusting = PooledHttpClient(verify=str(cert[0]), timeout=5)
        response = await trusting.request("GET", f"{base}/", headers={}, content=None)
        await trusting.aclose()
        assert response.content == b"tls"
        strict = PooledHttpClient(timeout=5)
        with pytest.raises(TransportError, match="cannot connect"):
            await strict.request("GET", f"{base}/", headers={}, content=None)
        await strict.aclose()


def test_headers_are_case_insensitive_and_keep_repeats() -> None:
    headers = Headers([("Link", '<a>;rel="up"'), ("link", '<b>;rel="alternate", <c>;rel="up"')])
    assert headers["LINK"] == '<a>;rel="up"'
    assert "Link" in headers
    assert headers.get("missing") is None
    assert headers.get_list("link", split_commas=True) == [
        '<a>;rel="up"',
        '<b>;rel="alternate"',
        '<c>;rel="up"',
    ]


async def test_a_header_value_with_a_line_break_is_refused() -> None:
    client = PooledHttpClient(timeout=1)
    with pytest.raises(ValueError, match="line break"):
        await client.request("GET", "http://127.0.0.1:9/", headers={"X": "a\r\nb"}, content=None)


async def test_a_body_delimited_by_the_close_of_the_connection() -> None:
    # RFC 9112 §6.3: no Content-Length and no chunking: the body ends with the connection.
    async with raw_server(lambda head, body: b"HTTP/1.1 200 OK\r\n\r\nuntil close") as (raw, base):
        raw.close_after_answer = True
        client = PooledHttpClient(timeout=5)
        response = await client.request("GET", f"{base}/", headers={}, content=None)
        await client.aclose()
    assert (response.status, response.content) == (200, b"until close")
