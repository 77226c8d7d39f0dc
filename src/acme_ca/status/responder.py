"""The OCSP responder (RFC 6960): status from the database, responses signed ahead and reused.

Each request reads its certificate's status row (one indexed lookup), so every
process answers with the database's current state: a revocation made anywhere is
seen by the next request everywhere. What is cached, per process, is the signed
response for (serial, CertID hash, status): it is reused until it is `refresh`
old, then signed again, so a response served is never older than `refresh` and
its nextUpdate is always at least `validity - refresh` ahead. A status change
(revocation) makes the cached response unusable at once. Requests with a nonce
(RFC 8954) get a response signed for them, never a cached one.
"""

from __future__ import annotations

import datetime as dt
from collections import OrderedDict
from dataclasses import dataclass

from cryptography.x509 import ocsp

from acme_ca.ca.ocsp import OcspQuery, OcspSigner, parse_request
from acme_ca.clock import Clock
from acme_ca.model import RevocationReason
from acme_ca.storage.status import StatusReader

__all__ = ["OcspAnswer", "OcspResponder", "OcspSettings"]

_State = tuple[ocsp.OCSPCertStatus, dt.datetime | None, RevocationReason | None]


@dataclass(frozen=True, slots=True, kw_only=True)
class OcspSettings:
    validity: dt.timedelta = dt.timedelta(hours=24)
    """nextUpdate - thisUpdate of each response."""
    refresh: dt.timedelta = dt.timedelta(hours=1)
    """Re-sign cached responses older than this."""
    max_age: dt.timedelta = dt.timedelta(minutes=5)
    """HTTP cache lifetime of GET responses."""
    cache_size: int = 100_000

    def __post_init__(self) -> None:
        if not dt.timedelta(0) < self.refresh < self.validity:
            raise ValueError("the OCSP refresh interval must be shorter than its validity")


@dataclass(frozen=True, slots=True, kw_only=True)
class OcspAnswer:
    der: bytes
    this_update: dt.datetime | None = None
    next_update: dt.datetime | None = None
    cacheable: bool = False
    """A successful response without a nonce: HTTP caches may keep it."""


@dataclass(frozen=True, slots=True, kw_only=True)
class _Signed:
    state: _State
    der: bytes
    this_update: dt.datetime
    next_update: dt.datetime


class OcspResponder:
    def __init__(
        self,
        *,
        status: StatusReader,
        signer: OcspSigner,
        clock: Clock,
        settings: OcspSettings = OcspSettings(),  # frozen: a shared default is safe
    ) -> None:
        self._status = status
        self._signer = signer
        self._clock = clock
        self.settings = settings
        self._cache: OrderedDict[tuple[int, str], _Signed] = OrderedDict()

    def use_signer(self, signer: OcspSigner) -> None:
        """Switch to a re-issued signing certificate; cached responses are dropped."""
        self._signer = signer
        self._cache.clear()

    async def respond(self, request_der: bytes) -> OcspAnswer:
        try:
            query = parse_request(request_der)
        except ValueError:
            return OcspAnswer(
                der=OcspSigner.unsuccessful(ocsp.OCSPResponseStatus.MALFORMED_REQUEST)
            )
        if not self._signer.knows_issuer(query):
            # RFC 6960 §2.3: not an issuer this responder answers for.
            return OcspAnswer(der=OcspSigner.unsuccessful(ocsp.OCSPResponseStatus.UNAUTHORIZED))
        state = await self._state(query.serial)
        now = self._clock.now()
        if query.nonce is not None:
            signed = self._sign(query, state, now, nonce=query.nonce)
            return OcspAnswer(
                der=signed.der, this_update=signed.this_update, next_update=signed.next_update
            )
        key = (query.serial, query.hash_algorithm.name)
        cached = self._cache.get(key)
        if (
            cached is None
            or cached.state != state
            or now - cached.this_update >= self.settings.refresh
        ):
            cached = self._sign(query, state, now, nonce=None)
            self._cache[key] = cached
            while len(self._cache) > self.settings.cache_size:
                self._cache.popitem(last=False)
        self._cache.move_to_end(key)
        return OcspAnswer(
            der=cached.der,
            this_update=cached.this_update,
            next_update=cached.next_update,
            cacheable=True,
        )

    async def _state(self, serial: int) -> _State:
        row = await self._status.certificate_status(format(serial, "x"))
        if row is None:
            # RFC 6960 §2.2: "unknown": this responder knows nothing of the serial.
            return (ocsp.OCSPCertStatus.UNKNOWN, None, None)
        if row.revoked_at is not None:
            return (ocsp.OCSPCertStatus.REVOKED, row.revoked_at, row.revocation_reason)
        return (ocsp.OCSPCertStatus.GOOD, None, None)

    def _sign(
        self, query: OcspQuery, state: _State, now: dt.datetime, *, nonce: bytes | None
    ) -> _Signed:
        status, revoked_at, reason = state
        this_update = now.replace(microsecond=0)
        next_update = this_update + self.settings.validity
        der = self._signer.sign(
            query,
            status=status,
            this_update=this_update,
            next_update=next_update,
            revoked_at=revoked_at,
            reason=reason,
            nonce=nonce,
        )
        return _Signed(state=state, der=der, this_update=this_update, next_update=next_update)
