"""Several `acme-ca serve` processes on one database, and a client that spreads over them.

Every process is started in a session of its own (`start_new_session`), so that it and
any uvicorn workers it forks are stopped together through its PID, never by name.
The client signs every JWS with the cluster's external URL (the gate compares the JWS
`url` with external URL + path) and `RotatingTransport` delivers each request to the
next backend, as a load balancer would.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import httpx
from cryptography import x509
from sqlalchemy import create_engine, text

from acme_ca.bench.client import AcmeClient, AcmeProblem, PollFailed, build_csr
from acme_ca.bench.jws import generate_key
from acme_ca.storage.engine import normalize_url
from acme_ca.testing import ChallengeTestServer

__all__ = [
    "ACME_CA",
    "EXTERNAL_URL",
    "FlowResult",
    "Http01Responder",
    "RotatingTransport",
    "ServerProcess",
    "SlowHttp01Responder",
    "TcpProxy",
    "db_facts",
    "free_port",
    "init_ca",
    "run_flow",
    "run_flows",
    "tail",
    "tls_context",
]

ACME_CA = Path(sys.executable).parent / "acme-ca"
LOOPBACK = "127.0.0.1"
# Nobody connects here: clients sign with it and the transport picks the backend.
EXTERNAL_URL = "https://acme.test"
STARTUP_TIMEOUT = 60.0
_STOP_TIMEOUT = 10.0

T = TypeVar("T")


class Http01Responder(Protocol):
    def add_http01(self, token: str, content: str) -> None: ...


class SlowHttp01Responder:
    """An http-01 responder that answers after `delay` seconds (RFC 8555 §8.3).

    It stretches every validation, so that a process killed at random is likely to
    die with a validation in flight.
    """

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.requests = 0
        self._counted = asyncio.Event()
        self._contents: dict[str, str] = {}
        self._server: asyncio.Server | None = None

    def add_http01(self, token: str, content: str) -> None:
        self._contents[token] = content

    @property
    def port(self) -> int:
        assert self._server is not None
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, LOOPBACK, 0)

    async def wait_for_requests(self, count: int) -> None:
        while self.requests < count:
            self._counted.clear()
            await self._counted.wait()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request_line = await asyncio.wait_for(reader.readline(), timeout=10)
            while (await asyncio.wait_for(reader.readline(), timeout=10)) not in (b"\r\n", b""):
                pass
            self.requests += 1
            self._counted.set()
            parts = request_line.decode("latin-1").split()
            token = parts[1].rsplit("/", 1)[-1] if len(parts) >= 2 else ""
            await asyncio.sleep(self.delay)
            body = self._contents.get(token, "").encode()
            status = b"200 OK" if body else b"404 Not Found"
            writer.write(
                b"HTTP/1.1 " + status + b"\r\nContent-Type: text/plain\r\n"
                b"Content-Length: "
                + str(len(body)).encode()
                + b"\r\nConnection: close\r\n\r\n"
                + body
            )
            await writer.drain()
        except (OSError, TimeoutError):
            pass
        finally:
            writer.close()


class TcpProxy:
    """A TCP relay to the database that the test can cut and restore: what a database
    failover looks like to the CA (connections drop, new ones fail, then succeed)."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.port = free_port()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._relay, LOOPBACK, self.port)

    async def cut(self) -> None:
        """Refuse new connections and drop the open ones."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.close()
            return
        self._writers |= {writer, up_writer}

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (OSError, asyncio.IncompleteReadError):
                pass
            finally:
                dst.transport.abort()

        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))
        self._writers -= {writer, up_writer}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return f"({path} does not exist)"


def init_ca(data_dir: Path, database: str) -> None:
    """`acme-ca init`: CA material and schema, once, before any server starts."""
    subprocess.run(
        [str(ACME_CA), "init", "--data-dir", str(data_dir), "--database", database],
        check=True,
        capture_output=True,
        timeout=120,
    )


def tls_context(data_dir: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(data_dir / "root.pem"))


@dataclass(slots=True, kw_only=True)
class ServerProcess:
    """One `acme-ca serve` (with its workers, if any) on 127.0.0.1:port."""

    name: str
    port: int
    data_dir: Path
    database: str
    log: Path
    challtestsrv: ChallengeTestServer
    external_url: str = EXTERNAL_URL
    job_lease_seconds: int = 3
    workers: int = 1
    log_level: str = "warning"
    http01_port: int | None = None
    """Where the VA fetches http-01 responses; default: the challenge test server's."""
    extra_args: tuple[str, ...] = ()
    """More `acme-ca serve` flags (limits, timeouts)."""
    revocation_port: int = field(default_factory=free_port)
    metrics_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0

    def argv(self) -> list[str]:
        return [
            str(ACME_CA),
            "serve",
            "--data-dir",
            str(self.data_dir),
            "--database",
            self.database,
            "--listen",
            f"{LOOPBACK}:{self.port}",
            "--external-url",
            self.external_url,
            "--dns-resolver",
            f"{LOOPBACK}:{self.challtestsrv.dns_port}",
            "--http-01-port",
            str(self.http01_port or self.challtestsrv.http01_port),
            "--allow-private-addresses",
            "--job-lease-seconds",
            str(self.job_lease_seconds),
            "--workers",
            str(self.workers),
            "--revocation-listen",
            f"{LOOPBACK}:{self.revocation_port}",
            # One URL for the whole cluster: it goes into every certificate.
            "--revocation-url",
            "http://status.acme.test",
            "--metrics-listen",
            f"{LOOPBACK}:{self.metrics_port}",
            "--log-level",
            self.log_level,
            *self.extra_args,
        ]

    def start(self) -> None:
        assert not self.alive, f"{self.name} is already running"
        env = {**os.environ, "ACME_CA_DB_POOL_SIZE": "4"}  # many processes, one server
        with self.log.open("ab") as out:
            out.write(f"---- start {self.starts} ----\n".encode())
            out.flush()
            self.proc = subprocess.Popen(
                self.argv(),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.log.parent,
                env=env,
                start_new_session=True,
            )
        self.starts += 1

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    async def wait_ready(self, timeout: float = STARTUP_TIMEOUT) -> None:  # noqa: ASYNC109
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient(verify=tls_context(self.data_dir), timeout=2) as http:
            while time.monotonic() < deadline:
                if not self.alive:
                    code = self.proc.returncode if self.proc else None
                    raise RuntimeError(f"{self.name} exited ({code}):\n{tail(self.log)}")
                with contextlib.suppress(httpx.TransportError):
                    resp = await http.get(f"https://{LOOPBACK}:{self.port}/directory")
                    if resp.status_code == 200:
                        return
                await asyncio.sleep(0.2)
        raise TimeoutError(f"{self.name} not ready after {timeout}s:\n{tail(self.log)}")

    def _signal_group(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        # The process leads its own session: its group is exactly what we started.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)

    def kill(self) -> None:
        """SIGKILL: no shutdown handler runs, in-flight work is simply lost."""
        if self.proc is None:
            return
        self._signal_group(signal.SIGKILL)
        self.proc.wait(timeout=_STOP_TIMEOUT)

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self._signal_group(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=_STOP_TIMEOUT)
        # Workers of a multi-process server outlive a dead parent: sweep the group.
        self._signal_group(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=_STOP_TIMEOUT)


class RotatingTransport(httpx.AsyncBaseTransport):
    """Sends request i to backend i mod n, keeping the URL's path (and so the JWS `url`).

    A refused connection moves on to the next backend at once, as a load balancer's
    health check would; an error after the request went out is the caller's.
    """

    def __init__(
        self, ports: Sequence[int], verify: ssl.SSLContext, *, keepalive: bool = True
    ) -> None:
        self.ports = list(ports)
        self.served: list[int] = []
        self._next = 0
        limits = httpx.Limits() if keepalive else httpx.Limits(max_keepalive_connections=0)
        self._inner = httpx.AsyncHTTPTransport(verify=verify, limits=limits)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        for _ in range(3 * len(self.ports)):
            port = self.ports[self._next % len(self.ports)]
            self._next += 1
            request.url = request.url.copy_with(scheme="https", host=LOOPBACK, port=port)
            try:
                response = await self._inner.handle_async_request(request)
            except httpx.ConnectError:
                await asyncio.sleep(0.05)
                continue
            self.served.append(port)
            return response
        raise httpx.ConnectError("no backend accepted the connection", request=request)

    async def aclose(self) -> None:
        await self._inner.aclose()


@dataclass(slots=True)
class FlowResult:
    name: str
    order_url: str | None = None
    status: str | None = None
    serial: int | None = None
    retries: int = 0
    problems: list[str] = field(default_factory=list)


_RETRYABLE_PROBLEMS = {"urn:ietf:params:acme:error:badNonce"}


async def _retrying(result: FlowResult, step: Callable[[], Awaitable[T]], deadline: float) -> T:
    """Run one step of the flow again after a transport failure or a 5xx, until `deadline`.

    These are what a crash of the serving process looks like to a client; the request
    is signed anew each time (a fresh nonce), as RFC 8555 §6.5 asks.
    """
    while True:
        try:
            return await step()
        except httpx.TransportError as exc:
            why = f"transport: {type(exc).__name__}"
        except AcmeProblem as problem:
            if problem.status < 500 and problem.type not in _RETRYABLE_PROBLEMS:
                raise
            why = f"{problem.status} {problem.type}"
        result.retries += 1
        result.problems.append(why)
        if time.monotonic() > deadline:
            raise TimeoutError(f"{result.name}: gave up after {why}")
        await asyncio.sleep(0.2)


async def run_flow(
    client: AcmeClient,
    name: str,
    cts: Http01Responder,
    *,
    timeout: float = 120.0,  # noqa: ASYNC109
    tolerate_failures: bool = False,
) -> FlowResult:
    """newOrder → http-01 → finalize → certificate, for one name.

    With `tolerate_failures`, transport errors and 5xx are retried, and a finalize
    that finds the order already processing (its first delivery got through before
    the process died) goes on to poll, as RFC 8555 §7.4 allows.
    """
    result = FlowResult(name)
    deadline = time.monotonic() + timeout

    async def step(fn: Callable[[], Awaitable[T]]) -> T:
        if tolerate_failures:
            return await _retrying(result, fn, deadline)
        return await fn()

    def remaining() -> float:
        return max(1.0, deadline - time.monotonic())

    order = await step(lambda: client.new_order([name]))
    order_url = order.location
    assert order_url is not None
    result.order_url = order_url
    for authz_url in order.body["authorizations"]:
        authz = (await step(functools.partial(client.post_as_get, authz_url))).body
        chall = next(c for c in authz["challenges"] if c["type"] == "http-01")
        cts.add_http01(chall["token"], client.key_authorization(chall["token"]))
        await step(functools.partial(client.respond_challenge, chall["url"]))

        async def authz_valid(url: str = authz_url) -> object:
            return await client.poll(url, until={"valid"}, timeout=remaining(), max_delay=0.5)

        await step(authz_valid)
    await step(lambda: client.poll(order_url, until={"ready"}, timeout=remaining(), max_delay=0.5))
    csr = build_csr(generate_key("p256"), [name])
    try:
        await step(lambda: client.finalize(order.body["finalize"], csr))
    except AcmeProblem as problem:
        if not (tolerate_failures and problem.type.endswith(":orderNotReady")):
            raise
        result.problems.append("finalize: order already processing")
    try:
        final = await step(
            lambda: client.poll(order_url, until={"valid"}, timeout=remaining(), max_delay=0.5)
        )
    except PollFailed as failed:
        result.status = failed.status
        return result
    result.status = "valid"
    pem = (await step(lambda: client.download_certificate(final.body["certificate"]))).content
    leaf = x509.load_pem_x509_certificates(pem)[0]
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == [name]
    result.serial = leaf.serial_number
    return result


async def run_flows(
    clients: Sequence[AcmeClient],
    names: Iterable[str],
    cts: Http01Responder,
    *,
    pause: float = 0.0,
    **flow_args: Any,
) -> list[FlowResult | BaseException]:
    """One flow per name; each client runs its flows one after another, `pause` apart."""
    queue: asyncio.Queue[str] = asyncio.Queue()
    for n in names:
        queue.put_nowait(n)
    results: list[FlowResult | BaseException] = []

    async def worker(client: AcmeClient) -> None:
        while not queue.empty():
            name = queue.get_nowait()
            try:
                results.append(await run_flow(client, name, cts, **flow_args))
            except Exception as exc:
                results.append(exc)
            await asyncio.sleep(pause)

    await asyncio.gather(*(worker(c) for c in clients))
    return results


def db_facts(database: str) -> dict[str, Any]:
    """What the database says after a run: counts that must be zero, and the orders."""
    engine = create_engine(normalize_url(database))
    try:
        with engine.connect() as conn:

            def scalar(sql: str) -> int:
                return int(conn.execute(text(sql)).scalar_one())

            return {
                "orders": {
                    row.id: (row.status, row.certificate_id)
                    for row in conn.execute(text("SELECT id, status, certificate_id FROM orders"))
                },
                "certificates": {
                    row.order_id: row.id
                    for row in conn.execute(text("SELECT id, order_id FROM certificates"))
                },
                "jobs": scalar("SELECT count(*) FROM jobs"),
                "processing_orders": scalar(
                    "SELECT count(*) FROM orders WHERE status = 'processing'"
                ),
                "processing_challenges": scalar(
                    "SELECT count(*) FROM challenges WHERE status = 'processing'"
                ),
                "certificates_per_order_max": scalar(
                    "SELECT coalesce(max(n), 0) FROM"
                    " (SELECT count(*) AS n FROM certificates GROUP BY order_id) AS c"
                ),
                "duplicate_serials": scalar(
                    "SELECT count(*) FROM (SELECT serial FROM certificates"
                    " GROUP BY serial HAVING count(*) > 1) AS d"
                ),
            }
    finally:
        engine.dispose()
