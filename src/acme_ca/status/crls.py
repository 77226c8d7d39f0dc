"""The CRL publisher: signed shards, cached, rebuilt when revocations change or age.

Every request asks the database one cheap question, the revocation fingerprint
(count and latest time of all revocations, which only ever grow), so a
revocation made by any process on any host shows in the next CRL fetched from
every listener. The shards are rebuilt when that fingerprint changes, and on a
schedule (`refresh`, well before `nextUpdate`) so that expired entries leave and
relying parties never hold a CRL past its `nextUpdate`. Nothing is stored: each
listener signs its own copies; CRL numbers are times (see `acme_ca.ca.crl`).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
from dataclasses import dataclass

from cryptography import x509

from acme_ca.ca.bootstrap import IssuerKey
from acme_ca.ca.crl import RevokedEntry, build_crl, crl_number, issuer_id, shard_of
from acme_ca.clock import Clock
from acme_ca.status.urls import RevocationUrls
from acme_ca.storage.status import StatusReader

__all__ = ["CrlPublisher", "CrlSettings", "SignedCrl"]


@dataclass(frozen=True, slots=True, kw_only=True)
class CrlSettings:
    shards: int = 4
    validity: dt.timedelta = dt.timedelta(hours=24)
    """nextUpdate - thisUpdate."""
    refresh: dt.timedelta = dt.timedelta(hours=6)
    """Rebuild shards older than this even without a new revocation."""
    max_age: dt.timedelta = dt.timedelta(minutes=5)
    """HTTP cache lifetime: how long a cache may serve a CRL before asking again."""

    def __post_init__(self) -> None:
        if self.shards < 1:
            raise ValueError("crl shards must be at least 1")
        if not dt.timedelta(0) < self.refresh < self.validity:
            raise ValueError("the CRL refresh interval must be shorter than its validity")


@dataclass(frozen=True, slots=True, kw_only=True)
class SignedCrl:
    der: bytes
    shard: int
    number: int
    this_update: dt.datetime
    next_update: dt.datetime
    etag: str


class CrlPublisher:
    def __init__(
        self,
        *,
        status: StatusReader,
        issuer: x509.Certificate,
        issuer_key: IssuerKey,
        urls: RevocationUrls,
        clock: Clock,
        settings: CrlSettings = CrlSettings(),  # frozen: a shared default is safe
    ) -> None:
        self._status = status
        self._issuer = issuer
        self._key = issuer_key
        self._urls = urls
        self._clock = clock
        self.settings = settings
        self.issuer_id = issuer_id(issuer)
        self._crls: dict[int, SignedCrl] = {}
        self._fingerprint: tuple[int, int] | None = None
        self._built_at: dt.datetime | None = None
        self._lock = asyncio.Lock()

    async def get(self, shard: int) -> SignedCrl:
        """The current CRL of `shard`; KeyError for a shard that does not exist."""
        if not 0 <= shard < self.settings.shards:
            raise KeyError(shard)
        await self.refresh()
        return self._crls[shard]

    async def refresh(self, *, force: bool = False) -> bool:
        """Rebuild every shard if revocations changed or the shards aged; True if rebuilt."""
        async with self._lock:
            fingerprint = await self._status.revocation_fingerprint()
            now = self._clock.now()
            if (
                not force
                and fingerprint == self._fingerprint
                and self._built_at is not None
                and now - self._built_at < self.settings.refresh
            ):
                return False
            await self._rebuild(now)
            self._fingerprint = fingerprint
            return True

    async def _rebuild(self, now: dt.datetime) -> None:
        shards = self.settings.shards
        entries: list[list[RevokedEntry]] = [[] for _ in range(shards)]
        for row in await self._status.revoked_unexpired(now):
            serial = int(row.serial, 16)
            entries[shard_of(serial, shards)].append(
                RevokedEntry(serial=serial, revoked_at=row.revoked_at, reason=row.reason)
            )
        # Whole seconds: thisUpdate is encoded to the second (RFC 5280 §5.1.2.4).
        this_update = now.replace(microsecond=0)
        next_update = this_update + self.settings.validity
        number = max(crl_number(this_update), self._last_number() + 1)
        crls: dict[int, SignedCrl] = {}
        for shard in range(shards):
            der = build_crl(
                issuer=self._issuer,
                issuer_key=self._key,
                entries=entries[shard],
                this_update=this_update,
                next_update=next_update,
                shard_url=self._urls.crl(self.issuer_id, shard),
                number=number,
            )
            crls[shard] = SignedCrl(
                der=der,
                shard=shard,
                number=number,
                this_update=this_update,
                next_update=next_update,
                etag=hashlib.sha256(der).hexdigest()[:32],
            )
        self._crls = crls
        self._built_at = now

    def _last_number(self) -> int:
        # Two rebuilds within one second must still increase the number (RFC 5280 §5.2.3).
        return max((c.number for c in self._crls.values()), default=0)
