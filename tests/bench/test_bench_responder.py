"""The http-01 responder over real sockets, and the dns-01 solver against a management API."""

from __future__ import annotations

import asyncio
import json

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from acme_ca.bench.responder import Dns01Solver, Http01Responder, Http01Solver, dns01_record_name
from tests.bench.bench_fakes import serving


async def test_serves_known_tokens_and_404s_the_rest() -> None:
    async with Http01Responder("127.0.0.1", 0) as responder:
        await Http01Solver(responder).present("a.test", "tok", "tok.thumb")
        base = f"http://127.0.0.1:{responder.port}/.well-known/acme-challenge"
        async with httpx.AsyncClient(timeout=5) as http:
            ok = await http.get(f"{base}/tok")
            missing = await http.get(f"{base}/other")
            elsewhere = await http.get(f"http://127.0.0.1:{responder.port}/tok")
        assert (ok.status_code, ok.text) == (200, "tok.thumb")
        assert missing.status_code == 404
        assert elsewhere.status_code == 404


async def test_cleanup_removes_the_token() -> None:
    async with Http01Responder("127.0.0.1", 0) as responder:
        solver = Http01Solver(responder)
        await solver.present("a.test", "tok", "tok.thumb")
        await solver.cleanup("a.test", "tok")
        url = f"http://127.0.0.1:{responder.port}/.well-known/acme-challenge/tok"
        async with httpx.AsyncClient(timeout=5) as http:
            assert (await http.get(url)).status_code == 404


async def _exchange(port: int, raw: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    await writer.drain()
    async with asyncio.timeout(5):
        data = await reader.read()  # until the server closes
    writer.close()
    return data


async def test_keep_alive_then_close_on_request() -> None:
    async with Http01Responder("127.0.0.1", 0) as responder:
        responder.tokens["t"] = "t.k"
        path = b"/.well-known/acme-challenge/t"
        first = b"GET %s HTTP/1.1\r\nHost: a\r\n\r\n" % path
        last = b"GET %s HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n" % path
        data = await _exchange(responder.port, first + last)
        assert data.count(b"HTTP/1.1 200 OK") == 2
        assert data.endswith(b"Connection: close\r\n\r\nt.k")


async def test_refuses_other_methods_and_bodies() -> None:
    async with Http01Responder("127.0.0.1", 0) as responder:
        post = await _exchange(responder.port, b"POST / HTTP/1.1\r\nHost: a\r\n\r\n")
        body = await _exchange(
            responder.port, b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc"
        )
        assert post.startswith(b"HTTP/1.1 400")
        assert body.startswith(b"HTTP/1.1 400")


async def test_head_has_no_body() -> None:
    async with Http01Responder("127.0.0.1", 0) as responder:
        responder.tokens["t"] = "t.k"
        raw = b"HEAD /.well-known/acme-challenge/t HTTP/1.0\r\n\r\n"
        data = await _exchange(responder.port, raw)
        assert data.startswith(b"HTTP/1.1 200")
        assert data.endswith(b"\r\n\r\n")


def test_dns01_record_name_strips_wildcard() -> None:
    # RFC 8555 §8.4; RFC 8555 §7.1.3: a wildcard's authorization names the base domain.
    assert dns01_record_name("a.test") == "_acme-challenge.a.test."
    assert dns01_record_name("*.a.test") == "_acme-challenge.a.test."


async def test_dns01_solver_drives_the_management_api() -> None:
    calls: list[tuple[str, dict[str, str]]] = []

    async def record(request: Request) -> Response:
        calls.append((request.url.path, json.loads(await request.body())))
        return Response(status_code=200)

    app = Starlette(
        routes=[
            Route("/set-txt", record, methods=["POST"]),
            Route("/clear-txt", record, methods=["POST"]),
        ]
    )
    async with serving(app) as base, httpx.AsyncClient(timeout=5) as http:
        solver = Dns01Solver(base, http)
        await solver.present("a.test", "tok", "tok.thumb")
        await solver.cleanup("a.test", "tok")
    assert calls == [
        # base64url(SHA-256("tok.thumb"))
        (
            "/set-txt",
            {
                "host": "_acme-challenge.a.test.",
                "value": "sYAwVrqDtVOuJZvAHurSAYPoEt5fFV_C4bdSOOW-o5Y",
            },
        ),
        ("/clear-txt", {"host": "_acme-challenge.a.test."}),
    ]
