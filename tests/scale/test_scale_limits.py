"""`acme-ca serve` against hostile connections, in one process and with a supervisor:
idle connections beyond `--max-connections` are closed at once and the server serves
again when they go; silent TLS handshakes, trickled headers and trickled bodies are cut
off while other clients are served; SIGTERM answers a request in flight (503) and the
order it was finalizing is not left stuck."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import signal
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from acme_ca.bench.client import AcmeProblem, build_csr
from acme_ca.bench.jws import generate_key
from tests.scale.conftest import Cluster
from tests.scale.scale_support import LOOPBACK, ServerProcess, db_facts, tls_context

pytestmark = [pytest.mark.slow]

CAP = 6


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def _connect(port: int) -> socket.socket:
    sock = socket.socket()
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (LOOPBACK, port))
    return sock


async def _closed_by_server(sock: socket.socket, within: float) -> float | None:
    """Seconds until the server closed `sock` (EOF or reset), None if not within."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        async with asyncio.timeout(within):
            while await loop.sock_recv(sock, 4096):
                pass
    except TimeoutError:
        return None
    except ConnectionResetError:
        pass
    return loop.time() - started


async def _directory(server: ServerProcess, data_dir: Path) -> int:
    async with httpx.AsyncClient(verify=tls_context(data_dir), timeout=10) as http:
        return (await http.get(f"https://{LOOPBACK}:{server.port}/directory")).status_code


async def _eventually_served(server: ServerProcess, data_dir: Path) -> None:
    for _ in range(50):  # at most about 10 s
        with contextlib.suppress(httpx.TransportError):
            if await _directory(server, data_dir) == 200:
                return
        await asyncio.sleep(0.2)
    raise AssertionError(f"{server.name} serves nothing after the flood")


@pytest.mark.parametrize("workers", [1, 2])
async def test_connections_beyond_the_cap_are_refused_and_served_again_after(
    cluster_factory: Callable[..., Cluster], tmp_path: Path, workers: int
) -> None:
    cluster = cluster_factory(f"sqlite:///{tmp_path / 'data' / 'acme-ca.db'}")
    (server,) = await cluster.start(
        1, workers=workers, log_level="info", extra_args=("--max-connections", str(CAP))
    )
    assert server.proc is not None
    await asyncio.sleep(0.5)  # the readiness probe's connection is gone
    baseline = _fds(server.proc.pid)
    # Idle TCP connections (no TLS handshake): all the places there are, per worker.
    held = [await _connect(server.port) for _ in range(CAP * workers)]
    refused: list[socket.socket] = []
    try:
        await asyncio.sleep(0.5)
        for _ in range(4):
            refused.append(await _connect(server.port))
            assert await _closed_by_server(refused[-1], within=5) is not None
        for sock in held:  # still open: the cap closes new connections, not old ones
            assert await _closed_by_server(sock, within=0.05) is None
        with pytest.raises(httpx.TransportError):  # a clean error, not a hang
            await _directory(server, cluster.data_dir)
    finally:
        for sock in held + refused:
            sock.close()
    await _eventually_served(server, cluster.data_dir)
    assert server.alive
    log = server.log.read_text(errors="replace")
    said = "connection limit reached" if workers == 1 else "every worker is at max_connections"
    assert said in log
    # Nothing kept (the supervisor kept a copy of each connection a full worker could
    # not receive, for good): a few descriptors of its own may come and go.
    for _ in range(50):
        if _fds(server.proc.pid) <= baseline + 4:
            break
        await asyncio.sleep(0.1)
    assert _fds(server.proc.pid) <= baseline + 4 < baseline + len(held) + len(refused)


async def _tls(port: int, data_dir: Path) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(LOOPBACK, port, ssl=tls_context(data_dir))


async def _trickle(
    port: int, data_dir: Path, head: bytes, rest: bytes, every: float
) -> tuple[bytes, float]:
    """TLS, `head` at once, then `rest` a byte every `every` seconds until the server
    answers or closes: what it said, and when, after the first byte."""
    reader, writer = await _tls(port, data_dir)
    loop = asyncio.get_running_loop()
    started = loop.time()
    answer = asyncio.ensure_future(reader.read(65536))
    try:
        writer.write(head)
        for i in range(len(rest)):
            if answer.done():
                break
            await asyncio.sleep(every)
            writer.write(rest[i : i + 1])
        with contextlib.suppress(ConnectionResetError, ssl.SSLError):
            await asyncio.wait_for(answer, 15)
        said = answer.result() if answer.done() and not answer.exception() else b""
        return said, loop.time() - started
    finally:
        answer.cancel()
        writer.close()


@pytest.mark.parametrize("workers", [1, 2])
async def test_silent_handshakes_and_trickled_requests_are_cut_off(
    cluster_factory: Callable[..., Cluster], tmp_path: Path, workers: int
) -> None:
    cluster = cluster_factory(f"sqlite:///{tmp_path / 'data' / 'acme-ca.db'}")
    flags = (
        "--tls-handshake-timeout",
        "2",
        "--request-header-timeout",
        "1",
        "--request-timeout",
        "3",
    )
    (server,) = await cluster.start(1, workers=workers, extra_args=flags)
    silent = await _connect(server.port)
    try:
        head = b"GET /directory HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 200 + b"\r\n\r\n"
        body = b"POST /acme/new-order HTTP/1.1\r\nHost: x\r\nContent-Length: 200\r\n\r\n"
        handshake = asyncio.create_task(_closed_by_server(silent, within=20))
        headers = asyncio.create_task(
            _trickle(server.port, cluster.data_dir, head[:1], head[1:], 0.1)
        )
        slow_body = asyncio.create_task(
            _trickle(server.port, cluster.data_dir, body, b"x" * 200, 0.1)
        )
        await asyncio.sleep(0.5)
        for _ in range(3):  # others are served meanwhile
            assert await _directory(server, cluster.data_dir) == 200
        took = await handshake
        assert took is not None
        assert 1.0 < took < 10.0  # the handshake timeout (2 s), not asyncio's 60 s
        said, took = await headers
        assert said == b""
        assert 0.5 < took < 8.0  # the header deadline (1 s); the trickle would take 21 s
        said, took = await slow_body
        assert said == b""
        assert 2.0 < took < 10.0  # the request deadline (3 s); the body would take 20 s
    finally:
        silent.close()
    assert server.alive


@contextlib.contextmanager
def _writer_lock(database_file: Path) -> Iterator[None]:
    """Hold SQLite's cross-process writer lock (docs/DEPLOYMENT.md): writes wait."""
    fd = os.open(f"{database_file}.writelock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


@pytest.mark.parametrize("workers", [1, 2])
async def test_sigterm_answers_the_request_in_flight_and_leaves_no_order_stuck(
    cluster_factory: Callable[..., Cluster], tmp_path: Path, workers: int
) -> None:
    database_file = tmp_path / "data" / "acme-ca.db"
    database = f"sqlite:///{database_file}"
    cluster = cluster_factory(database)
    flags = ("--shutdown-timeout", "1")
    (server,) = await cluster.start(1, workers=workers, extra_args=flags)
    assert server.proc is not None
    client = await cluster.client([server.port])
    name = "shutdown.limits.test"
    order = await client.new_order([name])
    assert order.location is not None
    (authz_url,) = order.body["authorizations"]
    authz = (await client.post_as_get(authz_url)).body
    chall = next(c for c in authz["challenges"] if c["type"] == "http-01")
    cluster.challtestsrv.add_http01(chall["token"], client.key_authorization(chall["token"]))
    await client.respond_challenge(chall["url"])
    await client.poll(order.location, until={"ready"}, timeout=30, max_delay=0.3)
    await client.new_nonce()  # nonces need no writer lock; finalize's write does
    idle_reader, idle_writer = await _tls(server.port, cluster.data_dir)
    csr = build_csr(generate_key("p256"), [name])
    with _writer_lock(database_file):
        finalize = asyncio.create_task(client.finalize(order.body["finalize"], csr))
        await asyncio.sleep(1.0)
        assert not finalize.done()
        os.kill(server.proc.pid, signal.SIGTERM)
        with pytest.raises(AcmeProblem) as cut:
            await asyncio.wait_for(finalize, 20)
        assert await asyncio.wait_for(idle_reader.read(), 10) == b""  # closed, not kept
    idle_writer.close()
    assert cut.value.status == 503
    assert cut.value.type == "urn:ietf:params:acme:error:serverInternal"
    assert cut.value.headers.get("retry-after") == "5"
    started = time.monotonic()
    await asyncio.to_thread(server.proc.wait, 40)
    assert time.monotonic() - started < 40
    # Whether the cut finalize committed is unknown to the client, as after any 5xx: the
    # order is ready again or processing with its job, which the next start finishes.
    assert db_facts(database)["processing_orders"] in (0, 1)
    server.start()
    await server.wait_ready()
    state = await client.poll(order.location, until={"ready", "valid"}, timeout=30)
    if state.body["status"] == "ready":
        await client.finalize(order.body["finalize"], csr)
    final = await client.poll(order.location, until={"valid"}, timeout=30, max_delay=0.5)
    assert final.body["certificate"]
    facts = db_facts(database)
    assert facts["processing_orders"] == 0
    assert facts["jobs"] == 0
