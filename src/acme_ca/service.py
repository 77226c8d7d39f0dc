"""The composition root of a serving process: Settings in, an ASGI application out.

With the CLI, the only module that knows every component. Building is async (the
database, the nonce key), so the ASGI app builds its components at lifespan
startup: one set per worker process.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

from acme_ca.ca import CertificateAuthority
from acme_ca.clock import Clock, SystemClock
from acme_ca.config import Settings
from acme_ca.nonces import NonceService
from acme_ca.policy.identifiers import IdentifierPolicy
from acme_ca.policy.keys import KeyPolicy
from acme_ca.protocol.urls import Urls
from acme_ca.ra import RAContext, RASettings, RegistrationAuthority
from acme_ca.storage.engine import Engines, create_engines
from acme_ca.storage.migrate import upgrade
from acme_ca.storage.store import Storage
from acme_ca.va import VAConfig, ValidationAuthority
from acme_ca.wfe import DirectoryMeta, FrontEnd, Gate, create_app

__all__ = ["AcmeService", "build_service", "AcmeAsgiApp"]

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


@dataclass(slots=True)
class AcmeService:
    settings: Settings
    engines: Engines
    storage: Storage
    ra: RegistrationAuthority
    front_end: FrontEnd
    app: Any

    async def close(self) -> None:
        await self.ra.stop()
        await self.engines.dispose()


def default_caa_identity(settings: Settings) -> str:
    # RFC 8659 §4.2: an issuer domain name; derive one from the URL clients use.
    from urllib.parse import urlsplit

    return urlsplit(settings.base_url).hostname or "acme-ca.internal"


async def build_service(
    settings: Settings, *, clock: Clock | None = None, va: ValidationAuthority | None = None
) -> AcmeService:
    clock = clock or SystemClock()
    engines = create_engines(
        settings.database_url,
        pool_size=settings.db_pool_size,
        sqlite_synchronous=settings.sqlite_synchronous,
    )
    if settings.auto_migrate:
        await upgrade(engines)
    storage = Storage(engines, clock)
    urls = Urls(settings.base_url)
    ca = CertificateAuthority.load(settings.data_dir, clock=clock)
    va = va or ValidationAuthority(
        VAConfig(
            http01_port=settings.http_01_port,
            tlsalpn01_port=settings.tls_alpn_01_port,
            allow_private_addresses=settings.allow_private_addresses,
            dns_resolver=settings.dns_resolver_address,
        )
    )
    ra_settings = RASettings(eab_required=settings.eab_required)
    ra = RegistrationAuthority(
        RAContext(
            storage=storage,
            va=va,
            ca=ca,
            clock=clock,
            identifier_policy=IdentifierPolicy(),
            key_policy=KeyPolicy(),
            settings=ra_settings,
        )
    )
    nonces = await NonceService.create(storage, clock)
    front_end = FrontEnd(
        ra=ra,
        storage=storage,
        nonces=nonces,
        urls=urls,
        gate=Gate(storage=storage, nonces=nonces, urls=urls),
        meta=DirectoryMeta(
            terms_of_service=settings.terms_of_service or urls.terms_of_service,
            website=settings.website,
            caa_identities=settings.caa_identities or (default_caa_identity(settings),),
            external_account_required=settings.eab_required,
            profiles={
                name: f"{p.validity.days}-day certificate"
                for name, p in ra_settings.profiles.items()
            },
        ),
        root_pems=ca.root_pems,
    )
    return AcmeService(
        settings=settings,
        engines=engines,
        storage=storage,
        ra=ra,
        front_end=front_end,
        app=create_app(front_end),
    )


class AcmeAsgiApp:
    """ASGI app that builds its service at lifespan startup (one per worker process)."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._service: AcmeService | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if self._service is None:
            raise RuntimeError("acme-ca service used before lifespan startup")
        await self._service.app(scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    self._service = await build_service(self._settings)
                    self._service.ra.start()
                    await self._service.ra.resume_stale_jobs()
                except Exception as exc:
                    log.exception("startup failed")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self._service is not None:
                    await self._service.close()
                await send({"type": "lifespan.shutdown.complete"})
                return
