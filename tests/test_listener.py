"""The capped accept path: connections beyond the cap closed at once, handshakes bounded,
every place given back, and the process's open-file limit fitted to the cap."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from cryptography import x509

from acme_ca.listener import ConnectionLimits, ListeningServer, listen
from tests.va.va_servers import make_cert


class _Hello(asyncio.Protocol):
    """Says hello and keeps the connection open until the client closes it."""

    def __init__(self, on_closed: Callable[[], None]) -> None:
        self._on_closed = on_closed

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.write(b"hello")  # type: ignore[attr-defined]

    def connection_lost(self, exc: Exception | None) -> None:
        self._on_closed()


class _HelloServer(ListeningServer):
    def make_protocol(self, on_closed: Callable[[], None]) -> asyncio.Protocol:
        return _Hello(on_closed)


async def _no_app(scope: Any, receive: Any, send: Any) -> None:
    raise AssertionError("no ASGI app is served here")


@contextlib.asynccontextmanager
async def _serving(limits: ConnectionLimits, **tls: Any) -> AsyncIterator[_HelloServer]:
    config = uvicorn.Config(_no_app, lifespan="off", log_level="warning", **tls)
    listener = listen("127.0.0.1", 0)
    server = _HelloServer(config, limits, listener)
    serving = asyncio.create_task(server.serve())
    try:
        await _wait_for(lambda: server.started or serving.done())
        yield server
    finally:
        server.should_exit = True
        await asyncio.wait_for(serving, 10)
        listener.close()


def _port(server: _HelloServer) -> int:
    port: int = server._listener.getsockname()[1]
    return port


async def _hello(port: int) -> tuple[bytes, asyncio.StreamWriter]:
    """What the server says first (b"" if it closed the connection), and the writer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        said = await asyncio.wait_for(reader.read(5), 3)
    except ConnectionResetError:
        said = b""
    return said, writer


async def _wait_for(condition: Callable[[], bool], seconds: float = 5.0) -> None:
    for _ in range(int(seconds / 0.02)):
        if condition():
            return
        await asyncio.sleep(0.02)
    assert condition()


async def test_connections_beyond_the_cap_are_closed_and_taken_again_after() -> None:
    async with _serving(ConnectionLimits(max_connections=3)) as server:
        port = _port(server)
        held = [await _hello(port) for _ in range(3)]
        assert [said for said, _ in held] == [b"hello"] * 3
        refused = [await _hello(port) for _ in range(5)]
        assert [said for said, _ in refused] == [b""] * 5  # closed at once, not queued
        assert server.open_connections == 3
        assert server._refusals.total == 5
        held[0][1].close()
        await _wait_for(lambda: server.open_connections == 2)
        said, writer = await _hello(port)
        assert said == b"hello"
        for _, w in [*held[1:], *refused, (said, writer)]:
            w.close()
        await _wait_for(lambda: server.open_connections == 0)


@pytest.fixture
def tls_files(tmp_path: Path) -> dict[str, str]:
    cert, key = make_cert(tmp_path, names=[x509.DNSName("localhost")])
    return {"ssl_certfile": str(cert), "ssl_keyfile": str(key)}


async def test_handshakes_count_and_are_bounded(tls_files: dict[str, str]) -> None:
    limits = ConnectionLimits(max_connections=2, handshake_timeout=0.5)
    async with _serving(limits, **tls_files) as server:
        port = _port(server)
        silent = socket.create_connection(("127.0.0.1", port))  # no ClientHello, ever
        garbage = socket.create_connection(("127.0.0.1", port))
        garbage.sendall(b"GET / HTTP/1.1\r\n\r\n")  # not TLS: the handshake fails
        try:
            await _wait_for(lambda: server.open_connections > 0)
            # Both places come back: the failed handshake at once, the silent one at
            # its timeout; then a real client is served.
            await _wait_for(lambda: server.open_connections == 0)
            assert server._refusals.total == 0
        finally:
            silent.close()
            garbage.close()
        client = ssl.create_default_context()
        client.check_hostname = False
        client.verify_mode = ssl.CERT_NONE
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client)
        assert await asyncio.wait_for(reader.read(5), 3) == b"hello"
        writer.close()


async def test_shutdown_cancels_handshakes_and_gives_their_places_back(
    tls_files: dict[str, str],
) -> None:
    limits = ConnectionLimits(max_connections=5, handshake_timeout=60)
    async with _serving(limits, **tls_files) as server:
        silent = [socket.create_connection(("127.0.0.1", _port(server))) for _ in range(3)]
        try:
            await _wait_for(lambda: server.open_connections == 3)
            server.should_exit = True
            await _wait_for(lambda: not server.started or server.open_connections == 0)
            assert server.open_connections == 0  # long before the 60 s handshake timeout
        finally:
            for sock in silent:
                sock.close()


_FIT = """
import json, resource, sys
from acme_ca.listener import ConnectionLimits, fit_limits
soft, hard = (int(v) for v in sys.argv[1:3])
resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
fitted = fit_limits(ConnectionLimits(max_connections=1000), listeners=2)
print(json.dumps([fitted.max_connections, resource.getrlimit(resource.RLIMIT_NOFILE)[0]]))
"""


@pytest.mark.parametrize(
    ("soft", "hard", "expected"),
    [
        (256, 4096, [1000, 2128]),  # raised to what two listeners of 1000 need
        (256, 400, [136, 400]),  # raised to the hard limit; fewer connections
    ],
)
def test_open_file_limit_is_fitted_to_the_cap(soft: int, hard: int, expected: list[int]) -> None:
    # In a child: the limits of the test process stay as they are.
    result = subprocess.run(
        [sys.executable, "-c", _FIT, str(soft), str(hard)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert json.loads(result.stdout) == expected
    if expected[0] < 1000:
        assert "open-file limit (400)" in result.stderr


_EMFILE = """
import asyncio, resource, socket, sys
import uvicorn
from acme_ca.listener import ConnectionLimits, ListeningServer, listen

class Hello(asyncio.Protocol):
    def __init__(self, on_closed):
        self.on_closed = on_closed
    def connection_made(self, transport):
        transport.write(b"hello")
    def connection_lost(self, exc):
        self.on_closed()

class Server(ListeningServer):
    def make_protocol(self, on_closed):
        return Hello(on_closed)

async def app(scope, receive, send):
    pass

async def main():
    config = uvicorn.Config(app, lifespan="off", log_level="warning")
    listener = listen("127.0.0.1", 0)
    # A cap the descriptors cannot honour: accept itself fails (EMFILE).
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
    server = Server(config, ConnectionLimits(max_connections=1000), listener)
    serving = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    print(listener.getsockname()[1], flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    print(server.open_connections, flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    server.should_exit = True
    await serving

asyncio.run(main())
"""


async def test_out_of_descriptors_pauses_accepting_and_recovers() -> None:
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _EMFILE,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert child.stdin is not None
    assert child.stdout is not None
    held: list[asyncio.StreamWriter] = []
    try:
        port = int(await asyncio.wait_for(child.stdout.readline(), 30))
        for _ in range(100):  # more than the child can hold
            with contextlib.suppress(OSError):
                held.append((await asyncio.open_connection("127.0.0.1", port))[1])
        await asyncio.sleep(1.0)
        child.stdin.write(b"\n")
        open_then = int(await asyncio.wait_for(child.stdout.readline(), 10))
        assert 0 < open_then < 64
        for writer in held:
            writer.close()
        held.clear()
        await asyncio.sleep(1.0)  # the pause (0.5 s) is over and descriptors are free
        said, writer = await _hello(port)
        writer.close()
        assert said == b"hello"
        child.stdin.write(b"\n")
        await asyncio.wait_for(child.wait(), 30)
        stderr = await child.stderr.read() if child.stderr else b""
        assert child.returncode == 0, stderr.decode()
        assert b"cannot accept" in stderr
    finally:
        for writer in held:
            writer.close()
        if child.returncode is None:
            child.kill()
            await child.wait()
