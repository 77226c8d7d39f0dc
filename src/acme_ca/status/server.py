"""Run the status listener: one per `acme-ca serve`, on its own thread and event loop.

`acme-ca serve --workers N` forks N ACME workers, each with its own app; the
status listener does not belong in them (N processes on one port need
SO_REUSEPORT, which also lets an unrelated second server silently share the
port). So the serving command binds the status socket itself, before the
workers start (a port in use fails the command at once), and serves it from a
thread of the parent process with its own database engines: exactly one
listener whatever N is. Its state is the database's, so it needs nothing from
the workers (see `acme_ca.status.crls` and `acme_ca.status.responder`).

It is plain HTTP for any relying party, and shares the process (its descriptors)
with the ACME listener or the supervisor, so it is capped and bounded as they are
(acme_ca.listener): at most `max_connections` open, and a connection that has not
completed a request within `request_timeout` of its start or of its last answer is
closed. uvicorn's own protocol bounds only the idle time after an answer: idle
connections, and one sending a header byte a second, were still open after 90 s,
and 500 of them left the ACME listener beside it unable to accept.

The metrics listener (`--metrics-listen`, docs/DEPLOYMENT.md) is served from the same
thread and event loop, capped and bounded the same way: like the status listener it
must be one per `serve`, in the process that can read every worker's values.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ipaddress
import logging
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvicorn
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from starlette.applications import Starlette
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from acme_ca.ca.bootstrap import INTERMEDIATE_CERT, INTERMEDIATE_KEY
from acme_ca.ca.ocsp import OcspSigner, ensure_ocsp_signer
from acme_ca.clock import Clock, SystemClock
from acme_ca.listener import ConnectionLimits, ListeningServer
from acme_ca.metrics.recorder import process_metrics
from acme_ca.status.app import create_status_app
from acme_ca.status.crls import CrlPublisher, CrlSettings
from acme_ca.status.responder import OcspResponder, OcspSettings
from acme_ca.status.urls import RevocationUrls
from acme_ca.storage.engine import Engines, create_engines
from acme_ca.storage.status import StatusStore

__all__ = ["StatusListener", "StatusService", "StatusSettings", "bind_listener", "build_status"]

log = logging.getLogger(__name__)

_START_TIMEOUT = 30.0
_STOP_TIMEOUT = 10.0


@dataclass(frozen=True, slots=True, kw_only=True)
class StatusSettings:
    data_dir: Path
    database_url: str
    base_url: str
    """The URL leaves name (`RevocationUrls.base`)."""
    ocsp: bool = True
    crl: CrlSettings = field(default_factory=CrlSettings)
    ocsp_settings: OcspSettings = field(default_factory=OcspSettings)
    log_level: str = "info"
    maintenance_interval: dt.timedelta = dt.timedelta(minutes=5)
    """How often CRLs are checked for rebuild and the OCSP signer for renewal."""
    limits: ConnectionLimits = field(default_factory=ConnectionLimits)
    request_timeout: float = 30.0
    """Seconds a connection may go without a complete request (from its start, or
    from its last answer)."""
    keep_alive_timeout: int = 5
    """Seconds an idle connection is kept after an answer (uvicorn's keep-alive)."""


def bind_listener(host: str, port: int) -> socket.socket:
    """A listening TCP socket (no SO_REUSEPORT: a port in use is an error)."""
    family = socket.AF_INET
    with contextlib.suppress(ValueError):
        if ipaddress.ip_address(host).version == 6:
            family = socket.AF_INET6
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(512)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(False)
    return sock


@dataclass(slots=True)
class StatusService:
    app: Starlette
    crls: CrlPublisher
    ocsp: OcspResponder | None
    engines: Engines
    settings: StatusSettings
    clock: Clock

    async def maintain(self) -> None:
        """One pass: rebuild aged CRLs, renew the OCSP signer when it nears expiry."""
        await self.crls.refresh()
        if self.ocsp is not None and await asyncio.to_thread(
            ensure_ocsp_signer, self.settings.data_dir, clock=self.clock
        ):
            self.ocsp.use_signer(OcspSigner.load(self.settings.data_dir))

    async def close(self) -> None:
        await self.engines.dispose()


async def build_status(settings: StatusSettings, *, clock: Clock | None = None) -> StatusService:
    clock = clock or SystemClock()
    data_dir = settings.data_dir
    issuer = x509.load_pem_x509_certificates((data_dir / INTERMEDIATE_CERT).read_bytes())[0]
    key = serialization.load_pem_private_key(
        (data_dir / INTERMEDIATE_KEY).read_bytes(), password=None
    )
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise ValueError(f"{data_dir / INTERMEDIATE_KEY}: unsupported issuer key type")
    engines = create_engines(settings.database_url, pool_size=4)
    status = StatusStore(engines, clock)
    crls = CrlPublisher(
        status=status,
        issuer=issuer,
        issuer_key=key,
        urls=RevocationUrls(settings.base_url),
        clock=clock,
        settings=settings.crl,
    )
    responder = None
    if settings.ocsp:
        ensure_ocsp_signer(data_dir, clock=clock)
        responder = OcspResponder(
            status=status,
            signer=OcspSigner.load(data_dir),
            clock=clock,
            settings=settings.ocsp_settings,
        )
    app = create_status_app(crls=crls, ocsp=responder, issuer=issuer, clock=clock)
    return StatusService(
        app=app, crls=crls, ocsp=responder, engines=engines, settings=settings, clock=clock
    )


class _StatusProtocol(HttpToolsProtocol):
    """uvicorn's protocol with a deadline for each request: armed when the connection
    opens and after each answer, disarmed once a request is read whole."""

    def __init__(
        self,
        *,
        config: uvicorn.Config,
        server_state: Any,
        app_state: dict[str, Any],
        request_timeout: float,
        on_closed: Callable[[], None],
    ) -> None:
        super().__init__(config=config, server_state=server_state, app_state=app_state)
        self._request_timeout = request_timeout
        self._on_closed = on_closed
        self._deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        try:
            super().connection_lost(exc)
        finally:
            self._on_closed()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._disarm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm()

    def _arm(self) -> None:
        if self._deadline is None:
            self._deadline = self.loop.call_later(self._request_timeout, self._expired)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self) -> None:
        self._deadline = None
        cycle = self.cycle
        if cycle is not None and not cycle.more_body and not cycle.response_complete:
            self._arm()  # a request read whole and being answered: not the client's delay
            return
        # Idle or half-read (slowloris): nothing is owed (RFC 9112 §9.5: a server may
        # close at any time).
        self.transport.close()


class _StatusServer(ListeningServer):
    def __init__(
        self,
        config: uvicorn.Config,
        settings: StatusSettings,
        sock: socket.socket,
        *,
        name: str = "status",
    ) -> None:
        sock.setblocking(False)
        connections = process_metrics().listener(name)
        super().__init__(config, settings.limits, sock, connections=connections)
        self._request_timeout = settings.request_timeout

    def make_protocol(self, on_closed: Callable[[], None]) -> asyncio.Protocol:
        return _StatusProtocol(
            config=self.config,
            server_state=self.server_state,
            app_state=self.lifespan.state,
            request_timeout=self._request_timeout,
            on_closed=on_closed,
        )


class StatusListener:
    """Serves the status app on `sock` from a daemon thread with its own event loop,
    and `metrics_app` (an ASGI app) on `metrics_sock` when given."""

    def __init__(
        self,
        settings: StatusSettings,
        sock: socket.socket,
        *,
        metrics_sock: socket.socket | None = None,
        metrics_app: Any = None,
    ) -> None:
        self._settings = settings
        self._sock = sock
        self._metrics_sock = metrics_sock
        self._metrics_app = metrics_app
        self._thread: threading.Thread | None = None
        self._servers: list[uvicorn.Server] = []
        self._started = threading.Event()
        self._error: BaseException | None = None

    def start(self) -> None:
        """Start serving; raise what kept it from starting (bad CA files, database)."""
        self._thread = threading.Thread(target=self._run, name="acme-ca-status", daemon=True)
        self._thread.start()
        if not self._started.wait(_START_TIMEOUT):
            raise TimeoutError("the status listener did not start")
        if self._error is not None:
            raise self._error

    def stop(self) -> None:
        for server in self._servers:
            server.should_exit = True
        if self._thread is not None:
            self._thread.join(_STOP_TIMEOUT)
        self._sock.close()
        if self._metrics_sock is not None:
            self._metrics_sock.close()

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # reported to start(), or logged once running
            if not self._started.is_set():
                self._error = exc
                self._started.set()
            else:
                log.exception("status listener failed")

    async def _main(self) -> None:
        service = await build_status(self._settings)
        try:
            await service.crls.refresh()  # the first fetch finds the shards signed
            servers = [_StatusServer(self._config(service.app), self._settings, self._sock)]
            if self._metrics_sock is not None:
                config = self._config(self._metrics_app)
                servers.append(
                    _StatusServer(config, self._settings, self._metrics_sock, name="metrics")
                )
            self._servers = list(servers)
            serving = asyncio.gather(*(server.serve() for server in servers))
            # The socket is listening already: connections wait in its backlog.
            self._started.set()
            interval = self._settings.maintenance_interval.total_seconds()
            while not serving.done():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(serving), timeout=interval)
                if not serving.done():
                    try:
                        await service.maintain()
                    except Exception:
                        log.exception("status maintenance pass failed")
            await serving
        finally:
            await service.close()

    def _config(self, app: Any) -> uvicorn.Config:
        return uvicorn.Config(
            app,
            lifespan="off",
            log_config=None,
            log_level=self._settings.log_level,
            access_log=False,
            timeout_keep_alive=self._settings.keep_alive_timeout,
            timeout_graceful_shutdown=2,
        )
