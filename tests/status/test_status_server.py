"""The status listener's connection bounds: a cap, and a deadline for each request that
uvicorn's protocol alone does not set (idle and trickling connections were kept for
good). A small ASGI app stands in for the status app; one test runs the real listener."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import uvicorn

from acme_ca.listener import ConnectionLimits
from acme_ca.service import AcmeService
from acme_ca.status import StatusListener, StatusSettings, bind_listener
from acme_ca.status.server import _StatusServer


async def _app(scope: Any, receive: Any, send: Any) -> None:
    assert scope["type"] == "http"
    while (await receive()).get("more_body"):
        pass
    if scope["path"] == "/slow":
        await asyncio.sleep(1.0)
    headers = [(b"content-length", b"2")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": b"ok"})


@contextlib.asynccontextmanager
async def _serving(
    *, request_timeout: float, max_connections: int = 100
) -> AsyncIterator[tuple[int, _StatusServer]]:
    config = uvicorn.Config(_app, lifespan="off", log_level="warning", timeout_keep_alive=5)
    settings = StatusSettings(
        data_dir=Path("unused"),  # the server reads none of these
        database_url="",
        base_url="",
        limits=ConnectionLimits(max_connections=max_connections),
        request_timeout=request_timeout,
    )
    sock = bind_listener("127.0.0.1", 0)
    server = _StatusServer(config, settings, sock)
    serving = asyncio.create_task(server.serve())
    try:
        for _ in range(500):
            if server.started or serving.done():
                break
            await asyncio.sleep(0.01)
        yield sock.getsockname()[1], server
    finally:
        server.should_exit = True
        await asyncio.wait_for(serving, 10)
        sock.close()


async def _closed_after(
    port: int, send: bytes = b"", *, every: float = 0.0, within: float = 5.0
) -> tuple[float | None, bytes]:
    """Send `send` (a byte every `every` s if set); seconds until the server closed the
    connection (None if it did not `within`), and what it said."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    loop = asyncio.get_running_loop()
    started = loop.time()
    said = b""
    reading = asyncio.ensure_future(reader.read())
    try:
        if every:
            for i in range(len(send)):
                if reading.done():
                    break
                writer.write(send[i : i + 1])
                await asyncio.sleep(every)
        else:
            writer.write(send)
        try:
            said = await asyncio.wait_for(reading, within)
        except TimeoutError:
            return None, said
        except ConnectionResetError:
            pass
        return loop.time() - started, said
    finally:
        reading.cancel()
        writer.close()


def _get(path: str, extra: bytes = b"") -> bytes:
    return b"GET " + path.encode() + b" HTTP/1.1\r\nHost: x\r\n" + extra + b"\r\n"


async def test_idle_connection_is_closed_at_the_request_deadline() -> None:
    async with _serving(request_timeout=0.5) as (port, _):
        took, said = await _closed_after(port)
        assert took is not None
        assert 0.3 < took < 3.0  # before: kept for good (still open after 90 s, live)
        assert said == b""


async def test_trickled_headers_are_cut_at_the_request_deadline() -> None:
    async with _serving(request_timeout=0.5) as (port, _):
        took, said = await _closed_after(port, _get("/x", b"X-Pad: " + b"a" * 100), every=0.05)
        assert took is not None
        assert took < 3.0  # the trickle would take 6 s
        assert said == b""


async def test_requests_on_a_kept_connection_and_slow_answers_are_served() -> None:
    async with _serving(request_timeout=0.5) as (port, _):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for path in ("/a", "/slow", "/b"):  # /slow takes twice the request deadline
                writer.write(_get(path))
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
                assert head.startswith(b"HTTP/1.1 200")
                assert await asyncio.wait_for(reader.readexactly(2), 5) == b"ok"
                await asyncio.sleep(0.3)  # idle, within the deadline
        finally:
            writer.close()


async def test_connections_beyond_the_cap_are_closed_at_once() -> None:
    async with _serving(request_timeout=30, max_connections=2) as (port, server):
        held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(2)]
        try:
            for _ in range(100):
                if server.open_connections == 2:
                    break
                await asyncio.sleep(0.02)
            took, said = await _closed_after(port, _get("/x"))
            assert took is not None
            assert said == b""
        finally:
            for _, writer in held:
                writer.close()
        for _ in range(100):
            if server.open_connections == 0:
                break
            await asyncio.sleep(0.02)
        took, said = await _closed_after(port, _get("/x", b"Connection: close\r\n"))
        assert said.startswith(b"HTTP/1.1 200")


async def test_the_listener_as_serve_runs_it_closes_idle_connections(service: AcmeService) -> None:
    sock = bind_listener("127.0.0.1", 0)
    port = sock.getsockname()[1]
    listener = StatusListener(
        StatusSettings(
            data_dir=service.settings.data_dir,
            database_url=service.settings.database_url,
            base_url=service.settings.revocation_base_url,
            log_level="warning",
            request_timeout=0.5,
        ),
        sock,
    )
    await asyncio.to_thread(listener.start)
    try:
        took, _ = await _closed_after(port)
        assert took is not None
        assert took < 3.0
        _, said = await _closed_after(port, _get("/crl/none/0", b"Connection: close\r\n"))
        assert said.startswith(b"HTTP/1.1 404")
    finally:
        await asyncio.to_thread(listener.stop)
