"""Revocation (RFC 8555 §7.6), by ACME request and by the operator (`admin revoke`).

Both end in `record_revocation`, one guarded UPDATE of the certificate row: the CRLs,
OCSP answers, renewalInfo and the key blocklist (`Storage.is_key_blocked`, for
keyCompromise) all read that row, so an operator's revocation shows there exactly as
an ACME one does.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import enum
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from acme_ca.clock import Clock
from acme_ca.errors import AcmeError, Identifier, ProblemType, malformed, unauthorized
from acme_ca.model import Account, Certificate, RevocationReason
from acme_ca.ra.context import SUBSCRIBER_REASONS, RAContext
from acme_ca.storage.inventory import CertificateFilter, CertificateRecord, Inventory, Only
from acme_ca.storage.store import Storage

log = logging.getLogger(__name__)

__all__ = [
    "OPERATOR_REASONS",
    "OperatorRevocation",
    "OperatorRevocationService",
    "RevocationOutcome",
    "RevocationService",
    "operator_reason",
    "reason_name",
    "record_revocation",
]

# RFC 5280 §5.3.1, the ASN.1 names.
_NAMES = {
    RevocationReason.UNSPECIFIED: "unspecified",
    RevocationReason.KEY_COMPROMISE: "keyCompromise",
    RevocationReason.CA_COMPROMISE: "cACompromise",
    RevocationReason.AFFILIATION_CHANGED: "affiliationChanged",
    RevocationReason.SUPERSEDED: "superseded",
    RevocationReason.CESSATION_OF_OPERATION: "cessationOfOperation",
    RevocationReason.CERTIFICATE_HOLD: "certificateHold",
    RevocationReason.REMOVE_FROM_CRL: "removeFromCRL",
    RevocationReason.PRIVILEGE_WITHDRAWN: "privilegeWithdrawn",
    RevocationReason.AA_COMPROMISE: "aACompromise",
}

# The RA's default ACME set (what root programs allow for a subscriber certificate).
# Boulder's admin tool allows these but affiliationChanged, which its certificates,
# naming no organisation, cannot need; acme-ca's ACME clients may use it, so its
# operator may too. Left out: cACompromise and aACompromise (not about a leaf),
# certificateHold and removeFromCRL (a revocation here is never undone).
OPERATOR_REASONS: frozenset[RevocationReason] = SUBSCRIBER_REASONS

# Revocations sent at once; on SQLite those queued together commit together.
_BATCH = 64


def reason_name(reason: RevocationReason) -> str:
    return _NAMES[reason]


def operator_reason(name: str) -> RevocationReason:
    """An RFC 5280 reason name (any case) the operator may use; ValueError otherwise."""
    for reason in OPERATOR_REASONS:
        if _NAMES[reason].lower() == name.strip().lower():
            return reason
    allowed = ", ".join(_NAMES[r] for r in sorted(OPERATOR_REASONS))
    raise ValueError(f"revocation reason {name!r} is not allowed; allowed: {allowed}")


async def record_revocation(
    storage: Storage,
    *,
    cert_id: str,
    serial: str,
    account_id: str,
    reason: RevocationReason,
    now: dt.datetime,
    by: str,
) -> bool:
    """Revoke the stored certificate; False if it was already revoked. Every revocation
    goes through here. keyCompromise also blocks the key: the blocklist is the revoked
    rows themselves."""
    if not await storage.revoke_certificate(cert_id, reason, now):
        return False
    log.info("revoked serial %s (%s), reason %s, by %s", serial, account_id, reason.name, by)
    return True


class RevocationService:
    def __init__(self, ctx: RAContext) -> None:
        self._ctx = ctx

    def _reason(self, code: int | None) -> RevocationReason:
        if code is None:
            return RevocationReason.UNSPECIFIED
        try:
            reason = RevocationReason(code)
        except ValueError:
            reason = None
        if reason is None or reason not in self._ctx.settings.revocation_reasons:
            allowed = sorted(int(r) for r in self._ctx.settings.revocation_reasons)
            raise AcmeError(
                type=ProblemType.BAD_REVOCATION_REASON,
                detail=f"Revocation reason {code} is not allowed; allowed: {allowed}",
            )
        return reason

    async def _find(self, certificate_der: bytes) -> Certificate:
        try:
            cert = x509.load_der_x509_certificate(certificate_der)
        except ValueError as exc:
            raise malformed("The certificate to revoke is not valid DER") from exc
        stored = await self._ctx.storage.get_certificate_by_serial(format(cert.serial_number, "x"))
        if stored is None:
            raise AcmeError(type=ProblemType.NOT_FOUND, detail="Certificate not found")
        leaf = x509.load_pem_x509_certificate(stored.pem_chains[0].encode("ascii"))
        if leaf.public_bytes(serialization.Encoding.DER) != certificate_der:
            # Same serial, different bytes: not a certificate we issued.
            raise AcmeError(type=ProblemType.NOT_FOUND, detail="Certificate not found")
        return stored

    async def revoke_by_account(
        self, account: Account, certificate_der: bytes, reason_code: int | None
    ) -> None:
        """Signed with an account key (`kid`): the orderer, or holder of all its authzs."""
        reason = self._reason(reason_code)
        cert = await self._find(certificate_der)
        if cert.account_id != account.id and not await self._ctx.storage.has_valid_authzs(
            account.id, cert.identifiers, self._ctx.clock.now()
        ):
            raise unauthorized(
                "The account neither ordered this certificate nor holds valid "
                "authorizations for all of its identifiers"
            )
        await self._revoke(cert, reason)

    async def revoke_by_certificate_key(
        self, key_spki_sha256: str, certificate_der: bytes, reason_code: int | None
    ) -> None:
        """Signed with the certificate's own key (`jwk`), RFC 8555 §7.6."""
        reason = self._reason(reason_code)
        cert = await self._find(certificate_der)
        if cert.spki_sha256 != key_spki_sha256:
            raise unauthorized("The request is not signed by the certificate's key")
        await self._revoke(cert, reason)

    async def _revoke(self, cert: Certificate, reason: RevocationReason) -> None:
        if cert.revoked_at is not None or not await record_revocation(
            self._ctx.storage,
            cert_id=cert.id,
            serial=cert.serial,
            account_id=cert.account_id,
            reason=reason,
            now=self._ctx.clock.now(),
            by="ACME request",
        ):
            raise AcmeError(type=ProblemType.ALREADY_REVOKED, detail="Certificate already revoked")
        self._ctx.metrics.revocation(reason_name(reason))


class RevocationOutcome(enum.StrEnum):
    REVOKED = "revoked"
    WOULD_REVOKE = "would_revoke"
    """A dry run: it would have been revoked."""
    ALREADY_REVOKED = "already_revoked"
    NOT_FOUND = "not_found"


@dataclass(frozen=True, slots=True, kw_only=True)
class OperatorRevocation:
    serial: str
    outcome: RevocationOutcome
    certificate: CertificateRecord | None
    """As read before revoking (None for an unknown serial); an already revoked one
    carries its first revocation's time and reason."""


class OperatorRevocationService:
    """Revocation by the operator: no account or certificate key, any certificate."""

    def __init__(self, *, storage: Storage, inventory: Inventory, clock: Clock) -> None:
        self._storage = storage
        self._inventory = inventory
        self._clock = clock

    async def revoke_serials(
        self, serials: Sequence[str], reason: RevocationReason, *, dry_run: bool = False
    ) -> list[OperatorRevocation]:
        """One outcome per distinct serial (hex as stored), in the order given; unknown
        and already revoked serials are reported, not raised."""
        wanted = tuple(dict.fromkeys(serials))
        found, _ = await self._inventory.find(
            CertificateFilter(serials=wanted), now=self._clock.now(), limit=None
        )
        by_serial = {r.serial: r for r in found}
        outcomes = await self._apply(list(by_serial.values()), reason, dry_run=dry_run)
        done = {o.serial: o for o in outcomes}
        return [
            done.get(s)
            or OperatorRevocation(serial=s, outcome=RevocationOutcome.NOT_FOUND, certificate=None)
            for s in wanted
        ]

    async def revoke_live(
        self,
        *,
        account_id: str | None = None,
        name: Identifier | None = None,
        reason: RevocationReason,
        dry_run: bool = False,
    ) -> list[OperatorRevocation]:
        """Every live (unrevoked, unexpired) certificate of the account and/or name."""
        if account_id is None and name is None:
            raise ValueError("revoke_live needs an account or a name")
        found, _ = await self._inventory.find(
            CertificateFilter(account_id=account_id, name=name, only=Only.LIVE),
            now=self._clock.now(),
            limit=None,
        )
        return await self._apply(found, reason, dry_run=dry_run)

    async def _apply(
        self, records: Sequence[CertificateRecord], reason: RevocationReason, *, dry_run: bool
    ) -> list[OperatorRevocation]:
        if reason not in OPERATOR_REASONS:
            raise ValueError(f"revocation reason {reason.name} is not allowed")
        outcomes: list[OperatorRevocation] = []
        for i in range(0, len(records), _BATCH):
            batch = records[i : i + _BATCH]
            outcomes += await asyncio.gather(*(self._one(r, reason, dry_run) for r in batch))
        return outcomes

    async def _one(
        self, record: CertificateRecord, reason: RevocationReason, dry_run: bool
    ) -> OperatorRevocation:
        def outcome(kind: RevocationOutcome, seen: CertificateRecord) -> OperatorRevocation:
            return OperatorRevocation(serial=record.serial, outcome=kind, certificate=seen)

        if record.revoked_at is not None:
            return outcome(RevocationOutcome.ALREADY_REVOKED, record)
        if dry_run:
            return outcome(RevocationOutcome.WOULD_REVOKE, record)
        if await record_revocation(
            self._storage,
            cert_id=record.id,
            serial=record.serial,
            account_id=record.account_id,
            reason=reason,
            now=self._clock.now(),
            by="the operator",
        ):
            return outcome(RevocationOutcome.REVOKED, record)
        # Revoked by someone else since it was read: that revocation stands.
        now = self._clock.now()
        again, _ = await self._inventory.find(
            CertificateFilter(serials=(record.serial,)), now=now, limit=1
        )
        return outcome(RevocationOutcome.ALREADY_REVOKED, again[0] if again else record)
