"""The composition root of a serving process: Settings in, an ASGI application out.

With the CLI, the only module that knows every component. Building is async (the
database, the nonce key), so the ASGI app builds its components at lifespan
startup: one set per worker process.
"""

from __future__ import annotations

import datetime as dt
import gc
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

from acme_ca.ca import CertificateAuthority
from acme_ca.ca.profiles import profile_description, profiles_from_config
from acme_ca.clock import Clock, SystemClock
from acme_ca.config import Settings
from acme_ca.metrics.recorder import NO_METRICS, Metrics, PrometheusMetrics, process_metrics
from acme_ca.nonces import NonceService
from acme_ca.policy.identifiers import IdentifierPolicy
from acme_ca.policy.keys import KeyPolicy
from acme_ca.policy.ratelimits import rate_limits_from_config
from acme_ca.protocol.urls import Urls
from acme_ca.ra import RAContext, RASettings, RegistrationAuthority
from acme_ca.status.urls import RevocationUrls
from acme_ca.storage.engine import Engines, create_engines
from acme_ca.storage.migrate import upgrade
from acme_ca.storage.store import Storage
from acme_ca.va import VAConfig, ValidationAuthority
from acme_ca.wfe import DirectoryMeta, FrontEnd, Gate, RequiredTerms, create_app

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
    # RFC 8659 §4.2: an issuer domain name; derive one from the URL clients use, unless
    # that is an IP address or a single label, which no CAA record could name.
    import ipaddress
    from urllib.parse import urlsplit

    host = (urlsplit(settings.base_url).hostname or "").rstrip(".").lower()
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if "." in host:
            return host
    return "acme-ca.internal"


def _identifier_policy(settings: Settings) -> IdentifierPolicy:
    import ipaddress

    if not settings.ip_ranges:
        return IdentifierPolicy(allow_ip=settings.ip_identifiers)
    ranges = tuple(ipaddress.ip_network(r, strict=False) for r in settings.ip_ranges)
    return IdentifierPolicy(allow_ip=settings.ip_identifiers, ip_ranges=ranges)


async def build_service(
    settings: Settings,
    *,
    clock: Clock | None = None,
    va: ValidationAuthority | None = None,
    metrics: Metrics | None = None,
) -> AcmeService:
    """The components of one serving process. `metrics`: what they record into; by
    default a recorder of their own (in memory) when `settings.metrics`."""
    clock = clock or SystemClock()
    if metrics is None:
        metrics = PrometheusMetrics() if settings.metrics else NO_METRICS
    engines = create_engines(
        settings.database_url,
        pool_size=settings.db_pool_size,
        sqlite_synchronous=settings.sqlite_synchronous,
    )
    if settings.auto_migrate:
        await upgrade(engines)
    storage = Storage(engines, clock)
    urls = Urls(settings.base_url)
    # Leaves name the status listener (docs/REVOCATION.md): their CRL shard, OCSP, issuer.
    status_urls = RevocationUrls(settings.revocation_base_url)
    ca = CertificateAuthority.load(
        settings.data_dir,
        clock=clock,
        issuer_url=status_urls.issuer_template,
        crl_url=status_urls.crl_template,
        ocsp_url=status_urls.ocsp if settings.ocsp else None,
        crl_shards=settings.crl_shards,
    )
    caa_identities = settings.caa_identities or (default_caa_identity(settings),)
    terms_url = settings.terms_of_service or urls.terms_of_service
    # RFC 8555 §7.3.3: accounts from before agreements were recorded agreed to the terms
    # in force when a process first started after the upgrade (the first one stores it).
    legacy_terms = await storage.get_or_create_setting("legacy_terms_of_service", terms_url)
    va = va or ValidationAuthority(
        VAConfig(
            http01_port=settings.http_01_port,
            tlsalpn01_port=settings.tls_alpn_01_port,
            allow_private_addresses=settings.allow_private_addresses,
            dns_resolver=settings.dns_resolver_address,
            caa_identities=caa_identities,
        )
    )
    ra_settings = RASettings(
        eab_required=settings.eab_required,
        eab_bind_many=settings.eab_bind_many,
        caa_recheck_after=dt.timedelta(hours=settings.caa_recheck_hours),
        account_url_prefix=urls.account_prefix,
        rate_limits=rate_limits_from_config(settings.rate_limits, settings.rate_limit_rules),
        profiles=profiles_from_config(settings.profiles, settings.default_profile),
        default_profile=settings.default_profile,
        new_authz=settings.new_authz,
        job_lease=dt.timedelta(seconds=settings.job_lease_seconds),
        ari_retry_after=dt.timedelta(seconds=settings.ari_retry_after),
        terms_of_service=terms_url,
    )
    # One policy for account keys at the RA and for the JWS algorithms at the gate.
    key_policy = KeyPolicy()
    ra = RegistrationAuthority(
        RAContext(
            storage=storage,
            va=va,
            ca=ca,
            clock=clock,
            identifier_policy=_identifier_policy(settings),
            key_policy=key_policy,
            settings=ra_settings,
            metrics=metrics,
        )
    )
    nonces = await NonceService.create(storage, clock)
    front_end = FrontEnd(
        ra=ra,
        storage=storage,
        nonces=nonces,
        urls=urls,
        gate=Gate(
            storage=storage,
            nonces=nonces,
            urls=urls,
            terms=RequiredTerms(url=terms_url, legacy=legacy_terms)
            if settings.require_terms_reagreement
            else None,
            algorithms=key_policy.jws_algorithms,
        ),
        meta=DirectoryMeta(
            terms_of_service=terms_url,
            website=settings.website,
            caa_identities=caa_identities,
            external_account_required=settings.eab_required,
            profiles={name: profile_description(p) for name, p in ra_settings.profiles.items()},
            new_authz=settings.new_authz,
        ),
        metrics=metrics,
    )
    return AcmeService(
        settings=settings,
        engines=engines,
        storage=storage,
        ra=ra,
        front_end=front_end,
        app=create_app(front_end),
    )


def _tune_gc() -> None:
    """Move what startup made out of the collector's way and collect young objects less
    often: a request allocates a few hundred short-lived objects, and the default
    threshold (700) runs a collection every few requests."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)


class AcmeAsgiApp:
    """ASGI app that builds its service at lifespan startup (one per worker process)."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._service: AcmeService | None = None

    @property
    def http_handler(self) -> Any:
        """The front end's app, which the serving protocol calls directly
        (`wfe/http_server.py`); None before lifespan startup."""
        return None if self._service is None else self._service.app

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
                    # The process's recorder: the listener records into it too.
                    self._service = await build_service(self._settings, metrics=process_metrics())
                    # Look for stale jobs at least twice per lease (DESIGN.md, State and scale).
                    lease = self._settings.job_lease_seconds
                    self._service.ra.start(maintenance_interval=min(5.0, lease / 2))
                    await self._service.ra.resume_stale_jobs()
                except Exception as exc:
                    log.exception("startup failed")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                _tune_gc()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self._service is not None:
                    await self._service.close()
                await send({"type": "lifespan.shutdown.complete"})
                return
