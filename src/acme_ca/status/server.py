"""Run the status listener: one per `acme-ca serve`, on its own thread and event loop.

`acme-ca serve --workers N` forks N ACME workers, each with its own app; the
status listener does not belong in them (N processes on one port need
SO_REUSEPORT, which also lets an unrelated second server silently share the
port). So the serving command binds the status socket itself, before the
workers start (a port in use fails the command at once), and serves it from a
thread of the parent process with its own database engines: exactly one
listener whatever N is. Its state is the database's, so it needs nothing from
the workers (see `acme_ca.status.crls` and `acme_ca.status.responder`).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ipaddress
import logging
import socket
import threading
from dataclasses import dataclass, field
from pathlib import Path

import uvicorn
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from starlette.applications import Starlette

from acme_ca.ca.bootstrap import INTERMEDIATE_CERT, INTERMEDIATE_KEY
from acme_ca.ca.ocsp import OcspSigner, ensure_ocsp_signer
from acme_ca.clock import Clock, SystemClock
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


class StatusListener:
    """Serves the status app on `sock` from a daemon thread with its own event loop."""

    def __init__(self, settings: StatusSettings, sock: socket.socket) -> None:
        self._settings = settings
        self._sock = sock
        self._thread: threading.Thread | None = None
        self._server: uvicorn.Server | None = None
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
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(_STOP_TIMEOUT)
        self._sock.close()

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
            config = uvicorn.Config(
                service.app,
                lifespan="off",
                log_config=None,
                log_level=self._settings.log_level,
                access_log=False,
                timeout_graceful_shutdown=2,
            )
            server = uvicorn.Server(config)
            self._server = server
            serving = asyncio.create_task(server.serve(sockets=[self._sock]))
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
