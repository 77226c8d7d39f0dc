"""What the handlers share."""

from __future__ import annotations

from dataclasses import dataclass, field

from acme_ca.metrics.recorder import NO_METRICS, Metrics
from acme_ca.nonces import NonceService
from acme_ca.protocol.urls import Urls
from acme_ca.ra import RegistrationAuthority
from acme_ca.storage.store import StorageReader
from acme_ca.wfe.gate import Gate

__all__ = ["DirectoryMeta", "FrontEnd"]


@dataclass(frozen=True, slots=True, kw_only=True)
class DirectoryMeta:
    """RFC 8555 §7.1.1 directory `meta` (and the profiles draft)."""

    terms_of_service: str | None = None
    website: str | None = None
    caa_identities: tuple[str, ...] = ()
    external_account_required: bool = False
    profiles: dict[str, str] = field(default_factory=dict)
    new_authz: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class FrontEnd:
    ra: RegistrationAuthority
    storage: StorageReader
    nonces: NonceService
    urls: Urls
    gate: Gate
    meta: DirectoryMeta
    orders_page_size: int = 100
    challenge_wait_seconds: float = 0.5
    """How long a challenge response waits for its validation before answering."""
    metrics: Metrics = NO_METRICS
