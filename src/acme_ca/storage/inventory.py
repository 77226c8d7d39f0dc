"""What was issued: certificates chosen by serial, account, name and status, for the
operator (`admin certificates`, `admin revoke`).

Every query starts from an index: serials (unique), a name's authorizations
(`ix_authzs_identifier`, or `ix_authzs_reuse` with an account, then the orders they
belong to), the revoked certificates (`ix_certificates_revoked_at`), an account's
range of `ix_certificates_account` (account_id, id), or the primary key walked newest
first (ids lead with their creation time). A query with no serial, account or name
must have a limit, so that nothing reads all certificates. Reads only: revocation is
the RA's (`Storage.revoke_certificate`).
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, Select, select

from acme_ca.errors import Identifier
from acme_ca.model import RevocationReason
from acme_ca.storage import codec
from acme_ca.storage.engine import Engines
from acme_ca.storage.schema import authzs, certificates, order_authzs

__all__ = [
    "CertificateFilter",
    "CertificateRecord",
    "CertificateState",
    "Inventory",
    "Only",
]

# Keeps IN lists well under every driver's bound-parameter limit.
_CHUNK = 500

_COLUMNS = (
    certificates.c.id,
    certificates.c.serial,
    certificates.c.account_id,
    certificates.c.identifiers,
    certificates.c.spki_sha256,
    certificates.c.not_before,
    certificates.c.not_after,
    certificates.c.issued_at,
    certificates.c.revoked_at,
    certificates.c.revocation_reason,
)


class CertificateState(enum.StrEnum):
    VALID = "valid"
    EXPIRED = "expired"
    REVOKED = "revoked"
    """Revoked, expired or not: a revocation outranks expiry."""


class Only(enum.StrEnum):
    REVOKED = "revoked"
    LIVE = "live"
    """Neither revoked nor expired."""


@dataclass(frozen=True, slots=True, kw_only=True)
class CertificateRecord:
    """A certificate row without its PEM."""

    id: str
    serial: str
    account_id: str
    identifiers: tuple[Identifier, ...]
    spki_sha256: str
    not_before: dt.datetime
    not_after: dt.datetime
    issued_at: dt.datetime
    revoked_at: dt.datetime | None
    revocation_reason: RevocationReason | None

    def state(self, now: dt.datetime) -> CertificateState:
        if self.revoked_at is not None:
            return CertificateState.REVOKED
        # As the CRLs and renew-early judge it (`storage.status`).
        return CertificateState.VALID if self.not_after > now else CertificateState.EXPIRED


@dataclass(frozen=True, slots=True, kw_only=True)
class CertificateFilter:
    """Filters combine: a certificate must match all that are set."""

    serials: tuple[str, ...] | None = None
    """Lower-case hex as stored (`ra.renewal.normalize_serial`)."""
    account_id: str | None = None
    name: Identifier | None = None
    """As the certificate names it: a wildcard is `dns` `*.example.com`."""
    only: Only | None = None

    @property
    def selective(self) -> bool:
        """Whether an index narrows the rows before any limit does."""
        return self.serials is not None or self.account_id is not None or self.name is not None


def _id(record: CertificateRecord) -> tuple[str]:
    return (record.id,)


def _revoked_then_id(record: CertificateRecord) -> tuple[int, str]:
    revoked = record.revoked_at
    return (codec.to_us(revoked) if revoked is not None else 0, record.id)


def _record(row: Any) -> CertificateRecord:
    reason = row.revocation_reason
    return CertificateRecord(
        id=row.id,
        serial=row.serial,
        account_id=row.account_id,
        identifiers=codec.identifiers_from_json(row.identifiers),
        spki_sha256=row.spki_sha256,
        not_before=codec.from_us(row.not_before),
        not_after=codec.from_us(row.not_after),
        issued_at=codec.from_us(row.issued_at),
        revoked_at=codec.opt_from_us(row.revoked_at),
        revocation_reason=RevocationReason(reason) if reason is not None else None,
    )


class Inventory:
    def __init__(self, engines: Engines) -> None:
        self._engines = engines

    async def find(
        self, wanted: CertificateFilter, *, now: dt.datetime, limit: int | None
    ) -> tuple[list[CertificateRecord], bool]:
        """The matching certificates, newest first (by issuance; with `Only.REVOKED` by
        revocation), at most `limit`, and whether more matched. `limit=None` (all of
        them) needs a serial, account or name."""
        if limit is None and not wanted.selective:
            raise ValueError("listing certificates needs a serial, account or name, or a limit")
        if limit is not None and limit < 1:
            raise ValueError("limit must be positive")
        by_revocation = wanted.only is Only.REVOKED
        if wanted.serials is not None or wanted.name is not None:
            # Few rows, bounded by the serials given or by the name's history: read all,
            # then order here. (With ORDER BY ... LIMIT a planner may walk the primary
            # key instead, past every certificate issued since.)
            found: dict[str, CertificateRecord] = {}
            # Driven from the serials' or the name's index, never the account's.
            where = self._where(wanted, now, account_index=False)
            for query in self._bounded(wanted, where):
                for record in await self._rows(query):
                    found[record.id] = record
            ordered = sorted(found.values(), key=_revoked_then_id if by_revocation else _id)
            ordered.reverse()
            if limit is None:
                return ordered, False
            return ordered[:limit], len(ordered) > limit
        # Revoked ones come from `ix_certificates_revoked_at`, newest revocation first: no
        # more rows than a CRL rebuild reads, however many the account has.
        where = self._where(wanted, now, account_index=not by_revocation)
        order = certificates.c.revoked_at if by_revocation else certificates.c.id
        newest: Select[Any] = select(*_COLUMNS).where(*where).order_by(order.desc())
        if limit is not None:
            newest = newest.limit(limit + 1)
        rows = await self._rows(newest)
        if limit is None:
            return rows, False
        return rows[:limit], len(rows) > limit

    @staticmethod
    def _where(
        wanted: CertificateFilter, now: dt.datetime, *, account_index: bool
    ) -> list[ColumnElement[bool]]:
        """Without `account_index`, the account is written so that no index serves it
        (`|| ''`): the query is driven from another one, and SQLite would otherwise
        read all of the account's certificates for each row of it."""
        clauses: list[ColumnElement[bool]] = []
        if wanted.account_id is not None:
            account = certificates.c.account_id
            clauses.append((account if account_index else account.concat("")) == wanted.account_id)
        if wanted.only is Only.REVOKED:
            clauses.append(certificates.c.revoked_at.is_not(None))
        elif wanted.only is Only.LIVE:
            # `+ 0`: not from `ix_certificates_revoked_at`, where SQLite would find nearly
            # every certificate under NULL, then sort them.
            clauses.append((certificates.c.revoked_at + 0).is_(None))
            clauses.append(certificates.c.not_after > codec.to_us(now))
        return clauses

    @staticmethod
    def _bounded(
        wanted: CertificateFilter, where: Sequence[ColumnElement[bool]]
    ) -> list[Select[Any]]:
        if wanted.name is not None:
            # RFC 8555 §7.1.4: a wildcard's authorization names the base domain.
            value = wanted.name.value
            wildcard = value.startswith("*.")
            source = authzs.join(order_authzs, order_authzs.c.authz_id == authzs.c.id).join(
                certificates, certificates.c.order_id == order_authzs.c.order_id
            )
            base = (
                select(*_COLUMNS)
                .select_from(source)
                .where(
                    authzs.c.identifier_value == value.removeprefix("*."),
                    authzs.c.identifier_type == wanted.name.type,
                    authzs.c.wildcard == wildcard,
                    *where,
                )
            )
            if wanted.account_id is not None:
                # An order only ever holds its own account's authorizations: the account's
                # authorizations of the name (`ix_authzs_reuse`) hold its certificates.
                base = base.where(authzs.c.account_id == wanted.account_id)
        else:
            base = select(*_COLUMNS).where(*where)
        if wanted.serials is None:
            return [base]
        serials = list(dict.fromkeys(wanted.serials))
        return [
            base.where(certificates.c.serial.in_(serials[i : i + _CHUNK]))
            for i in range(0, len(serials), _CHUNK)
        ]

    async def _rows(self, query: Select[Any]) -> list[CertificateRecord]:
        async with self._engines.reader.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [_record(r) for r in rows]
