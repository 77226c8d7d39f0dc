"""The serving protocol: HTTP/1.1 framing, limits and errors in front of `AcmeApp.handle`."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from cryptography import x509
from uvicorn.server import ServerState

from acme_ca.errors import AcmeError, ProblemType
from acme_ca.wfe.http_server import (
    MAX_HEADER_BYTES,
    AcmeHttpProtocol,
    HttpLimits,
    serialize_response,
)
from acme_ca.wfe.http_types import Request, Response
from acme_ca.wfe.responses import problem_response
from tests.va.va_servers import make_cert, server_context

MAX_BODY = 1024


@dataclass
class FakeHandler:
    """Echoes what it was given; the path chooses a behaviour."""

    seen: list[Request] = field(default_factory=list)
    max_body_bytes: int = MAX_BODY

    async def handle(self, request: Request) -> Response:
        self.seen.append(request)
        if request.path == "/slow":
            await asyncio.sleep(0.05)
        if request.path == "/hang":
            await asyncio.Event().wait()
        if request.path == "/boom":
            raise RuntimeError("handler bug")
        if request.path == "/empty":
            return Response(status_code=204)
        if request.path == "/big":
            return Response(b"x" * 65536)
        if request.path == "/inject":
            return Response(b"x", headers={"Location": "a\r\nSet-Cookie: x=1"})
        doc = {
            "method": request.method,
            "path": request.path,
            "query": request.query_string.decode(),
            "body": request.body.decode(),
            "client": request.client.host if request.client else None,
        }
        return Response(json.dumps(doc), media_type="application/json")

    def error_response(self, request: Request, error: AcmeError) -> Response:
        response = problem_response(error)
        response.headers["Replay-Nonce"] = "fake-nonce"
        return response


class FakeApp:
    def __init__(self, handler: FakeHandler) -> None:
        self.http_handler = handler

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError("the ASGI path is not used by the protocol")


@dataclass
class Served:
    port: int
    handler: FakeHandler
    state: ServerState


async def _serve(
    *,
    keep_alive: float = 5.0,
    forwarded_allow_ips: str = "127.0.0.1",
    tls: ssl.SSLContext | None = None,
    limits: HttpLimits | None = None,
) -> tuple[asyncio.Server, Served]:
    handler = FakeHandler()
    config = uvicorn.Config(
        FakeApp(handler),
        lifespan="off",
        timeout_keep_alive=int(keep_alive) if keep_alive >= 1 else 1,
        forwarded_allow_ips=forwarded_allow_ips,
        log_level="warning",
    )
    config.load()
    config.timeout_keep_alive = keep_alive  # type: ignore[assignment]
    state = ServerState()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: AcmeHttpProtocol(config, state, {}, limits=limits),
        sock=sock,
        ssl=tls,
        start_serving=True,
    )
    return server, Served(port=sock.getsockname()[1], handler=handler, state=state)


@contextlib.asynccontextmanager
async def _serving(**options: Any) -> AsyncIterator[Served]:
    server, info = await _serve(**options)
    try:
        yield info
    finally:
        server.close()
        await server.wait_closed()


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    async with _serving() as info:
        yield info


async def _exchange(port: int, data: bytes, *, wait: float = 3.0) -> bytes:
    """Send `data`, read until the server closes or `wait` seconds pass."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    received = b""
    try:
        async with asyncio.timeout(wait):
            while chunk := await reader.read(65536):
                received += chunk
    except (TimeoutError, ConnectionResetError):
        pass  # waited long enough, or the server dropped the connection (abort)
    writer.close()
    return received


def _responses(raw: bytes) -> list[tuple[int, dict[str, str], bytes]]:
    """Split a byte stream of HTTP/1.1 responses (Content-Length framed)."""
    out: list[tuple[int, dict[str, str], bytes]] = []
    while raw:
        head, _, rest = raw.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        size = int(headers.get("content-length", "0"))
        out.append((status, headers, rest[:size]))
        raw = rest[size:]
    return out


def _get(path: str, extra: str = "") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: x\r\n{extra}\r\n".encode()


def _post(path: str, body: bytes, extra: str = "") -> bytes:
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
    return head.encode() + body


async def test_keep_alive_answers_each_request_in_order(served: Served) -> None:
    raw = await _exchange(served.port, _get("/slow?a=1") + _post("/b", b"hi"), wait=0.5)
    answers = _responses(raw)
    assert [a[0] for a in answers] == [200, 200]
    assert json.loads(answers[0][2]) == {
        "method": "GET",
        "path": "/slow",
        "query": "a=1",
        "body": "",
        "client": "127.0.0.1",
    }
    assert json.loads(answers[1][2])["body"] == "hi"
    assert "connection" not in answers[0][1]


async def test_head_has_length_but_no_body(served: Served) -> None:
    raw = await _exchange(served.port, b"HEAD /x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    head, _, rest = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK")
    assert b"content-length: " in head
    assert b"content-length: 0" not in head
    assert rest == b""


async def test_no_content_has_neither_length_nor_body(served: Served) -> None:
    raw = await _exchange(served.port, _get("/empty", "Connection: close\r\n"))
    assert raw.startswith(b"HTTP/1.1 204 No Content\r\n")
    assert b"content-length" not in raw
    assert raw.endswith(b"\r\n\r\n")


async def test_percent_encoded_path_is_decoded(served: Served) -> None:
    raw = await _exchange(served.port, _get("/a%2Fb%20c", "Connection: close\r\n"))
    assert json.loads(_responses(raw)[0][2])["path"] == "/a/b c"


async def test_chunked_body_arrives_whole(served: Served) -> None:
    data = (
        b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"2\r\nab\r\n3\r\ncde\r\n0\r\n\r\n"
    )
    raw = await _exchange(served.port, data, wait=0.5)
    assert json.loads(_responses(raw)[0][2])["body"] == "abcde"


async def test_connection_close_is_honoured(served: Served) -> None:
    raw = await _exchange(served.port, _get("/x", "Connection: close\r\n") + _get("/never"))
    answers = _responses(raw)
    assert len(answers) == 1
    assert answers[0][1]["connection"] == "close"
    assert [r.path for r in served.handler.seen] == ["/x"]


async def test_pipelined_requests_before_connection_close_are_all_answered(
    served: Served,
) -> None:
    # The requests queued behind the one in flight when the last one said close were
    # each marked "close" too: the connection closed after the second answer.
    data = _get("/slow") + _get("/a") + _get("/b") + _get("/c", "Connection: close\r\n")
    answers = _responses(await _exchange(served.port, data))
    assert [a[0] for a in answers] == [200, 200, 200, 200]
    assert [json.loads(a[2])["path"] for a in answers] == ["/slow", "/a", "/b", "/c"]
    assert ["connection" in a[1] for a in answers] == [False, False, False, True]
    assert answers[3][1]["connection"] == "close"


async def test_http10_closes_after_the_answer(served: Served) -> None:
    raw = await _exchange(served.port, b"GET /x HTTP/1.0\r\n\r\n")
    assert _responses(raw)[0][1]["connection"] == "close"


def _problem(answer: tuple[int, dict[str, str], bytes], status: int) -> dict[str, Any]:
    assert answer[0] == status
    assert answer[1]["content-type"] == "application/problem+json"
    assert answer[1]["replay-nonce"] == "fake-nonce"
    doc: dict[str, Any] = json.loads(answer[2])
    assert doc["type"] == ProblemType.MALFORMED.value
    assert doc["status"] == status
    return doc


async def test_unparsable_request_is_a_malformed_problem_and_closes(served: Served) -> None:
    raw = await _exchange(served.port, b"NOT HTTP AT ALL\r\n\r\n")
    answers = _responses(raw)
    _problem(answers[0], 400)
    assert answers[0][1]["connection"] == "close"


@pytest.mark.parametrize("host", ["", "Host: a\r\nHost: b\r\n"], ids=["no host", "two hosts"])
async def test_http11_request_without_exactly_one_host_is_refused(
    served: Served, host: str
) -> None:
    """RFC 9112 §3.2: a server MUST answer 400 to an HTTP/1.1 request that lacks a Host
    header field or has more than one; both were served (seen on the live server)."""
    raw = await _exchange(served.port, f"GET /x HTTP/1.1\r\n{host}\r\n".encode())
    answers = _responses(raw)
    doc = _problem(answers[0], 400)
    assert "Host" in doc["detail"]
    assert answers[0][1]["connection"] == "close"
    assert served.handler.seen == []


@pytest.mark.parametrize("request_line", [b"GET /x HTTP/2.0\r\nHost: x\r\n\r\n", b"GET /x\r\n\r\n"])
async def test_other_http_versions_are_refused(served: Served, request_line: bytes) -> None:
    """RFC 9110 §15.6.6: 505 for a version the server does not speak; the parser took an
    "HTTP/2.0" line and a bare request line (HTTP/0.9) for requests to serve."""
    answers = _responses(await _exchange(served.port, request_line))
    doc = _problem(answers[0], 505)
    assert "HTTP/1.1" in doc["detail"]
    assert answers[0][1]["connection"] == "close"
    assert served.handler.seen == []


@pytest.mark.parametrize("coding", [b"gzip, chunked", b"deflate,chunked"])
async def test_transfer_codings_other_than_chunked_are_refused(
    served: Served, coding: bytes
) -> None:
    """RFC 9112 §6.1: a transfer coding the server does not understand SHOULD get 501;
    "gzip, chunked" was read as plain chunked."""
    data = b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: " + coding + b"\r\n\r\n0\r\n\r\n"
    answers = _responses(await _exchange(served.port, data))
    _problem(answers[0], 501)
    assert served.handler.seen == []


async def test_chunked_trailer_fields_are_not_request_headers(served: Served) -> None:
    """RFC 9110 §6.5.1: a trailer is not merged into the header section."""
    data = (
        b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n0\r\nX-Trailer: 1\r\nContent-Type: text/evil\r\n\r\n"
    )
    answers = _responses(await _exchange(served.port, data))
    assert answers[0][0] == 200
    (request,) = served.handler.seen
    assert request.body == b"abc"
    assert request.headers.get("x-trailer") is None
    assert request.headers.get("content-type") is None


async def test_http10_request_needs_no_host(served: Served) -> None:
    raw = await _exchange(served.port, b"GET /x HTTP/1.0\r\n\r\n")
    assert _responses(raw)[0][0] == 200


async def test_unparsable_request_after_a_good_one_is_answered_after_it(served: Served) -> None:
    raw = await _exchange(served.port, _get("/slow") + b"\x00\x01 garbage\r\n\r\n")
    answers = _responses(raw)
    assert answers[0][0] == 200
    _problem(answers[1], 400)


async def test_unparsable_request_after_several_good_ones_is_answered_after_them(
    served: Served,
) -> None:
    data = _get("/slow") + _get("/a") + _get("/b") + b"\x00\x01 garbage\r\n\r\n"
    answers = _responses(await _exchange(served.port, data))
    assert [a[0] for a in answers[:3]] == [200, 200, 200]
    assert ["connection" in a[1] for a in answers[:3]] == [False, False, False]
    _problem(answers[3], 400)
    assert answers[3][1]["connection"] == "close"


async def test_declared_body_over_the_limit_is_refused_unread(served: Served) -> None:
    head = f"POST /big HTTP/1.1\r\nHost: x\r\nContent-Length: {MAX_BODY + 1}\r\n\r\n"
    raw = await _exchange(served.port, head.encode())
    doc = _problem(_responses(raw)[0], 413)
    assert str(MAX_BODY) in doc["detail"]
    assert served.handler.seen == []


async def test_chunked_body_over_the_limit_is_refused(served: Served) -> None:
    chunk = b"x" * (MAX_BODY + 1)
    data = (
        b"POST /big HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        + f"{len(chunk):x}\r\n".encode()
        + chunk
        + b"\r\n0\r\n\r\n"
    )
    raw = await _exchange(served.port, data)
    _problem(_responses(raw)[0], 413)
    assert served.handler.seen == []


async def test_body_at_the_limit_is_accepted(served: Served) -> None:
    raw = await _exchange(served.port, _post("/ok", b"y" * MAX_BODY, "Connection: close\r\n"))
    assert _responses(raw)[0][0] == 200


async def test_headers_over_the_limit_are_refused(served: Served) -> None:
    filler = "X-Filler: " + "a" * MAX_HEADER_BYTES + "\r\n"
    raw = await _exchange(served.port, _get("/x", filler))
    _problem(_responses(raw)[0], 431)
    assert served.handler.seen == []


async def test_expect_100_continue_gets_an_interim_answer(served: Served) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
    writer.write(
        b"POST /e HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n"
    )
    interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2)
    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    writer.write(b"ok")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2)
    assert head.startswith(b"HTTP/1.1 200 OK")
    writer.close()


async def test_handler_error_is_server_internal_without_detail(served: Served) -> None:
    raw = await _exchange(served.port, _get("/boom"))
    answer = _responses(raw)[0]
    assert answer[0] == 500
    assert answer[1]["connection"] == "close"
    doc = json.loads(answer[2])
    assert doc["type"] == ProblemType.SERVER_INTERNAL.value
    assert "handler bug" not in doc["detail"]
    assert "request id" in doc["detail"]


async def test_header_injection_in_a_response_is_refused(served: Served) -> None:
    raw = await _exchange(served.port, _get("/inject"))
    assert _responses(raw)[0][0] == 500
    assert b"Set-Cookie" not in raw


async def test_forwarded_for_is_trusted_from_an_allowed_proxy(served: Served) -> None:
    raw = await _exchange(
        served.port, _get("/x", "X-Forwarded-For: 203.0.113.9\r\nConnection: close\r\n")
    )
    assert json.loads(_responses(raw)[0][2])["client"] == "203.0.113.9"


async def test_forwarded_for_is_ignored_from_anyone_else() -> None:
    async with _serving(forwarded_allow_ips="10.9.9.9") as info:
        raw = await _exchange(
            info.port, _get("/x", "X-Forwarded-For: 203.0.113.9\r\nConnection: close\r\n")
        )
        assert json.loads(_responses(raw)[0][2])["client"] == "127.0.0.1"


async def test_idle_keep_alive_connection_is_closed() -> None:
    async with _serving(keep_alive=0.2) as info:
        raw = await _exchange(info.port, _get("/x"), wait=3.0)
        assert len(_responses(raw)) == 1  # then the server closed it, well before 3 s


async def test_keep_alive_deadline_moves_back_after_a_slow_request() -> None:
    # The header deadline (10 s) replaced the idle one while the request was read;
    # once answered, the idle deadline (0.2 s here) holds again.
    async with _serving(keep_alive=0.2) as info:
        reader, writer = await asyncio.open_connection("127.0.0.1", info.port)
        writer.write(b"GET /x HTTP/1.1\r\nHost: x\r\n")
        await asyncio.sleep(0.4)  # past the first idle deadline, mid-request
        writer.write(b"\r\n")
        await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2)
        loop = asyncio.get_running_loop()
        answered = loop.time()
        async with asyncio.timeout(3):
            while await reader.read(65536):
                pass
        assert loop.time() - answered < 1.5
        writer.close()


async def test_half_read_request_is_dropped() -> None:
    async with _serving(limits=HttpLimits(request_timeout=0.3)) as info:
        loop = asyncio.get_running_loop()
        started = loop.time()
        raw = await _exchange(
            info.port, b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nab"
        )
        assert raw == b""
        assert loop.time() - started < 2.0  # dropped, not kept until the 3 s wait
        assert info.handler.seen == []


async def test_stalled_tls_request_frees_its_connection_at_once(tmp_path: Path) -> None:
    # A client that handshakes, sends half a request and then nothing (not even a TLS
    # close_notify) is aborted at the deadline, not kept for a graceful TLS shutdown.
    tls = server_context(make_cert(tmp_path, names=[x509.DNSName("localhost")]))
    async with _serving(tls=tls, limits=HttpLimits(request_timeout=0.3)) as info:
        client = ssl.create_default_context()
        client.check_hostname = False
        client.verify_mode = ssl.CERT_NONE
        raw = await asyncio.to_thread(socket.create_connection, ("127.0.0.1", info.port))
        wrapped = await asyncio.to_thread(client.wrap_socket, raw, server_hostname="localhost")
        try:
            wrapped.sendall(b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nab")
            await asyncio.sleep(0.1)
            assert len(info.state.connections) == 1
            loop = asyncio.get_running_loop()
            started = loop.time()
            for _ in range(100):  # at most 5 s
                if not info.state.connections:
                    break
                await asyncio.sleep(0.05)
            assert not info.state.connections
            assert loop.time() - started < 2.0
        finally:
            wrapped.close()


async def _trickle(port: int, head: bytes, body: bytes, *, every: float) -> tuple[bytes, float]:
    """Send `head` at once and then `body` a byte every `every` seconds, until the server
    answers or closes; what arrived and how long after the first byte."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    loop = asyncio.get_running_loop()
    started = loop.time()
    answer = asyncio.ensure_future(reader.read(65536))
    try:
        writer.write(head)
        for i in range(len(body)):
            if answer.done():
                break
            await asyncio.sleep(every)
            writer.write(body[i : i + 1])
        with contextlib.suppress(ConnectionResetError):
            await asyncio.wait_for(answer, 5)
        received = answer.result() if not answer.exception() else b""
        return received, loop.time() - started
    finally:
        answer.cancel()
        writer.close()


async def test_headers_sent_byte_by_byte_are_cut_at_the_header_deadline() -> None:
    # Slowloris: each byte comes before any idle timeout would fire; the header
    # deadline runs from the first byte and is not moved by later ones.
    limits = HttpLimits(header_timeout=0.5, request_timeout=10.0)
    async with _serving(keep_alive=5.0, limits=limits) as info:
        head = _get("/x", "X-Pad: " + "a" * 100 + "\r\n")
        received, took = await _trickle(info.port, head[:1], head[1:], every=0.05)
        assert received == b""
        assert 0.4 < took < 3.0  # well before the 10 s request deadline and the 7 s trickle
        assert info.handler.seen == []


async def test_body_slower_than_its_length_is_cut_at_the_request_deadline() -> None:
    limits = HttpLimits(header_timeout=0.3, request_timeout=1.0)
    async with _serving(limits=limits) as info:
        head = b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n"
        received, took = await _trickle(info.port, head, b"b" * 100, every=0.05)
        assert received == b""
        assert 0.9 < took < 3.5  # the body would have taken 5 s
        assert info.handler.seen == []


async def test_body_may_outlast_the_header_deadline_within_the_request_deadline() -> None:
    limits = HttpLimits(header_timeout=0.3, request_timeout=5.0)
    async with _serving(limits=limits) as info:
        head = b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\nConnection: close\r\n\r\n"
        received, _ = await _trickle(info.port, head, b"b" * 10, every=0.08)
        assert _responses(received)[0][0] == 200
        assert json.loads(_responses(received)[0][2])["body"] == "b" * 10


async def test_other_clients_are_answered_while_slow_clients_trickle() -> None:
    limits = HttpLimits(header_timeout=1.0, request_timeout=1.0)
    async with _serving(limits=limits) as info:
        head = _get("/x", "X-Pad: " + "a" * 100 + "\r\n")
        slow = [
            asyncio.create_task(_trickle(info.port, head[:1], head[1:], every=0.05))
            for _ in range(20)
        ]
        await asyncio.sleep(0.2)
        for _ in range(5):
            raw = await _exchange(info.port, _get("/y", "Connection: close\r\n"), wait=2.0)
            assert _responses(raw)[0][0] == 200
        results = await asyncio.gather(*slow)
        assert all(received == b"" for received, _ in results)
        assert [r.path for r in info.handler.seen] == ["/y"] * 5


async def test_answer_cut_short_by_shutdown_is_a_503_and_closes(served: Served) -> None:
    # What uvicorn's graceful shutdown does: shutdown() on every connection, then,
    # when its timeout is up, cancel the answers still running.
    reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
    writer.write(_get("/hang"))
    for _ in range(100):
        if served.state.tasks:
            break
        await asyncio.sleep(0.01)
    for connection in list(served.state.connections):
        connection.shutdown()
    for task in list(served.state.tasks):
        task.cancel()
    raw = await asyncio.wait_for(reader.read(), 3)  # the server closes after the answer
    writer.close()
    ((status, headers, body),) = _responses(raw)
    assert status == 503
    assert headers["retry-after"] == "5"
    assert headers["connection"] == "close"
    assert headers["content-type"] == "application/problem+json"
    assert headers["replay-nonce"] == "fake-nonce"
    assert json.loads(body)["type"] == "urn:ietf:params:acme:error:serverInternal"


def _small_buffer_connection(port: int) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.setblocking(False)
    return sock


async def _read_all(sock: socket.socket, wait: float) -> tuple[bytes, bool]:
    """What arrives within `wait` seconds, and whether the server reset or closed."""
    loop = asyncio.get_running_loop()
    received = b""
    try:
        async with asyncio.timeout(wait):
            while chunk := await loop.sock_recv(sock, 1 << 20):
                received += chunk
    except TimeoutError:
        return received, False
    except ConnectionResetError:
        pass
    return received, True


async def test_client_that_reads_no_answers_is_dropped() -> None:
    # Pipelined requests whose answers are never read: writing paused, the queue
    # waited, and no deadline ran (each complete request disarms it): held forever.
    server, info = await _serve(keep_alive=60.0, limits=HttpLimits(request_timeout=0.5))
    sock = _small_buffer_connection(info.port)
    try:
        loop = asyncio.get_running_loop()
        await loop.sock_sendall(sock, _get("/big") * 400)  # 26 MB of answers
        await asyncio.sleep(2.0)
        received, ended = await _read_all(sock, wait=3.0)
        assert ended
        assert received.count(b"HTTP/1.1 200") < 400
    finally:
        sock.close()
        server.close()
        await server.wait_closed()


async def test_client_that_reads_its_answers_slowly_is_kept() -> None:
    server, info = await _serve(keep_alive=60.0, limits=HttpLimits(request_timeout=0.5))
    sock = _small_buffer_connection(info.port)
    try:
        loop = asyncio.get_running_loop()
        await loop.sock_sendall(sock, _get("/big") * 40 + _get("/x", "Connection: close\r\n"))
        received = b""
        for _ in range(8):  # a little every 0.25 s: writing resumes each time
            await asyncio.sleep(0.25)
            received += (await _read_all(sock, wait=0.05))[0]
        rest, ended = await _read_all(sock, wait=5.0)
        assert ended
        assert (received + rest).count(b"HTTP/1.1 200") == 41
    finally:
        sock.close()
        server.close()
        await server.wait_closed()


async def test_request_half_read_behind_a_slow_answer_is_dropped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The request deadline passed while /slow was answered: the timer was dropped
    # then, and the half-read request after it held the connection forever.
    monkeypatch.setattr("acme_ca.wfe.http_server._BUSY_RECHECK", 0.1)
    server, info = await _serve(
        keep_alive=60.0, limits=HttpLimits(header_timeout=0.02, request_timeout=0.02)
    )
    try:
        loop = asyncio.get_running_loop()
        started = loop.time()
        raw = await _exchange(info.port, _get("/slow") + b"GET /x HTTP/1.1\r\nHo", wait=3.0)
        assert [a[0] for a in _responses(raw)] == [200]
        assert loop.time() - started < 2.0
    finally:
        server.close()
        await server.wait_closed()


async def test_client_gone_mid_body_reaches_no_handler(served: Served) -> None:
    _reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
    writer.write(b"POST /half HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc")
    await writer.drain()
    writer.close()
    await asyncio.sleep(0.1)
    assert served.handler.seen == []
    raw = await _exchange(served.port, _get("/after", "Connection: close\r\n"))
    assert _responses(raw)[0][0] == 200


async def test_upgrade_is_not_offered(served: Served) -> None:
    raw = await _exchange(served.port, _get("/x", "Connection: Upgrade\r\nUpgrade: h2c\r\n"))
    answers = _responses(raw)
    assert len(answers) == 1
    assert answers[0][0] in (200, 400)
    assert answers[0][1]["connection"] == "close"


def test_serialized_answer_is_one_buffer_with_length() -> None:
    data = serialize_response(
        Response(b"abc", status_code=201, headers={"Location": "/x"}),
        head=False,
        keep_alive=True,
        default_headers=[(b"date", b"today")],
    )
    assert data == (
        b"HTTP/1.1 201 Created\r\ndate: today\r\nlocation: /x\r\ncontent-length: 3\r\n\r\nabc"
    )
