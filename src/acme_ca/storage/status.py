"""Queries for certificate status: CRLs, OCSP, renewal information (RFC 9773).

`StatusReader` is what the status listener and the front end may use; the
writes (`mark_for_renewal`) are the RA's. Revocation itself stays in
`Storage.revoke_certificate`: a revoked row is never un-revoked, which is what
makes `revocation_fingerprint` a sound change detector.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from sqlalchemy import BigInteger, ColumnElement, and_, exists, func, insert, literal, or_, select

from acme_ca.clock import Clock
from acme_ca.model import OrderStatus, RevocationReason
from acme_ca.storage import codec
from acme_ca.storage.engine import Engines
from acme_ca.storage.schema import certificates, orders, renewal_marks

__all__ = [
    "CertificateStatus",
    "RevokedCertificate",
    "StatusReader",
    "StatusStore",
]

# Keeps IN lists well under every driver's bound-parameter limit.
_CHUNK = 500


@dataclass(frozen=True, slots=True, kw_only=True)
class CertificateStatus:
    serial: str
    account_id: str
    not_before: dt.datetime
    not_after: dt.datetime
    revoked_at: dt.datetime | None
    revocation_reason: RevocationReason | None
    renewal_marked_at: dt.datetime | None
    leaf_pem: str = field(repr=False)
    """The certificate itself (first PEM block of the default chain)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RevokedCertificate:
    serial: str
    revoked_at: dt.datetime
    reason: RevocationReason


class StatusReader(Protocol):
    async def certificate_status(self, serial: str) -> CertificateStatus | None: ...
    async def revocation_fingerprint(self) -> tuple[int, int]: ...
    async def revoked_unexpired(self, now: dt.datetime) -> list[RevokedCertificate]: ...
    async def replacement_exists(self, cert_id: str, now: dt.datetime) -> bool: ...


class StatusStore:
    def __init__(self, engines: Engines, clock: Clock) -> None:
        self._engines = engines
        self._clock = clock

    # ---- reads ---------------------------------------------------------------

    async def certificate_status(self, serial: str) -> CertificateStatus | None:
        query = (
            select(
                certificates.c.serial,
                certificates.c.account_id,
                certificates.c.not_before,
                certificates.c.not_after,
                certificates.c.revoked_at,
                certificates.c.revocation_reason,
                renewal_marks.c.marked_at,
                certificates.c.pem_chains,
            )
            .select_from(
                certificates.outerjoin(
                    renewal_marks, renewal_marks.c.serial == certificates.c.serial
                )
            )
            .where(certificates.c.serial == serial)
        )
        async with self._engines.reader.connect() as conn:
            row = (await conn.execute(query)).first()
        if row is None:
            return None
        return CertificateStatus(
            serial=row.serial,
            account_id=row.account_id,
            not_before=codec.from_us(row.not_before),
            not_after=codec.from_us(row.not_after),
            revoked_at=codec.opt_from_us(row.revoked_at),
            revocation_reason=(
                RevocationReason(row.revocation_reason)
                if row.revocation_reason is not None
                else None
            ),
            renewal_marked_at=codec.opt_from_us(row.marked_at),
            leaf_pem=json.loads(row.pem_chains)[0],
        )

    async def revocation_fingerprint(self) -> tuple[int, int]:
        """(count, latest revocation time) of all revocations: changes iff one is added."""
        query = select(
            func.count().label("n"), func.max(certificates.c.revoked_at).label("latest")
        ).where(certificates.c.revoked_at.is_not(None))
        async with self._engines.reader.connect() as conn:
            row = (await conn.execute(query)).first()
        assert row is not None  # an aggregate always yields one row
        return int(row.n), int(row.latest or 0)

    async def revoked_unexpired(self, now: dt.datetime) -> list[RevokedCertificate]:
        """Revoked certificates still within validity (RFC 5280 §3.3: later ones may go)."""
        query = select(
            certificates.c.serial, certificates.c.revoked_at, certificates.c.revocation_reason
        ).where(
            certificates.c.revoked_at.is_not(None),
            certificates.c.not_after > codec.to_us(now),
        )
        async with self._engines.reader.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [
            RevokedCertificate(
                serial=r.serial,
                revoked_at=codec.from_us(r.revoked_at),
                reason=RevocationReason(r.revocation_reason or 0),
            )
            for r in rows
        ]

    async def replacement_exists(self, cert_id: str, now: dt.datetime) -> bool:
        """RFC 9773 §5: an order that names `cert_id` in `replaces` and is not invalid
        (valid or processing, or pending/ready and unexpired: as `codec` reads orders)."""
        live = or_(
            orders.c.status.in_([OrderStatus.VALID, OrderStatus.PROCESSING]),
            and_(
                orders.c.status.in_([OrderStatus.PENDING, OrderStatus.READY]),
                orders.c.expires > codec.to_us(now),
            ),
        )
        query = select(exists().where(orders.c.replaces == cert_id, live))
        async with self._engines.reader.connect() as conn:
            return bool((await conn.execute(query)).scalar_one())

    async def unexpired_leaves(
        self,
        now: dt.datetime,
        *,
        issued_before: dt.datetime | None = None,
        issued_after: dt.datetime | None = None,
    ) -> list[tuple[str, str]]:
        """(serial, leaf PEM) of unrevoked, unexpired certificates issued in the range."""
        query = select(certificates.c.serial, certificates.c.pem_chains).where(
            *self._live(now, issued_before, issued_after)
        )
        async with self._engines.reader.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [(r.serial, json.loads(r.pem_chains)[0]) for r in rows]

    @staticmethod
    def _live(
        now: dt.datetime, before: dt.datetime | None, after: dt.datetime | None
    ) -> list[ColumnElement[bool]]:
        clauses = [
            certificates.c.revoked_at.is_(None),
            certificates.c.not_after > codec.to_us(now),
        ]
        if before is not None:
            clauses.append(certificates.c.not_before < codec.to_us(before))
        if after is not None:
            clauses.append(certificates.c.not_before >= codec.to_us(after))
        return clauses

    # ---- writes (the RA's) ---------------------------------------------------

    async def mark_for_renewal(
        self,
        *,
        now: dt.datetime,
        serials: Sequence[str] | None = None,
        issued_before: dt.datetime | None = None,
        issued_after: dt.datetime | None = None,
    ) -> int:
        """Mark unrevoked, unexpired certificates (by serial and/or notBefore range) for
        early renewal; certificates already marked keep their first mark. Returns how
        many were newly marked."""
        clauses = self._live(now, issued_before, issued_after)
        clauses.append(
            ~exists().where(renewal_marks.c.serial == certificates.c.serial)  # keep first mark
        )
        marked = literal(codec.to_us(now), BigInteger)
        chunks: list[Sequence[str] | None] = (
            [serials[i : i + _CHUNK] for i in range(0, len(serials), _CHUNK)]
            if serials is not None
            else [None]
        )
        total = 0
        async with self._engines.writer.begin() as conn:
            for chunk in chunks:
                where = list(clauses)
                if chunk is not None:
                    where.append(certificates.c.serial.in_(list(chunk)))
                # RETURNING, not rowcount: drivers differ on rowcount for INSERT ... SELECT.
                result = await conn.execute(
                    insert(renewal_marks)
                    .from_select(
                        ["serial", "marked_at"],
                        select(certificates.c.serial, marked).where(*where),
                    )
                    .returning(renewal_marks.c.serial)
                )
                total += len(result.all())
        return total
