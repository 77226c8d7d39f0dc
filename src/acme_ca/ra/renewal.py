"""Renewal: ACME Renewal Information windows, `replaces`, early-renewal marks (RFC 9773).

The suggested window follows Let's Encrypt (Boulder's `RenewalInfoSimple`): a
narrow window around two thirds of the validity period. A revoked certificate,
or one the operator marked with `acme-ca admin renew-early`, gets a window that
lies in the past: "renew now" (RFC 9773 §4.2).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509

from acme_ca.clock import Clock
from acme_ca.errors import AcmeError, Identifier, ProblemType, malformed, not_found, unauthorized
from acme_ca.model import Account
from acme_ca.protocol.ari import CertId, parse_cert_id
from acme_ca.ra.context import RAContext
from acme_ca.storage.status import CertificateStatus, StatusStore
from acme_ca.storage.store import Storage

__all__ = [
    "RenewalInfo",
    "RenewalService",
    "already_replaced",
    "immediate_window",
    "key_identifier_of",
    "normalize_serial",
    "suggested_window",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class RenewalInfo:
    start: dt.datetime
    end: dt.datetime
    retry_after: dt.timedelta
    renew_now: bool
    """True for a revoked or operator-marked certificate."""


def suggested_window(
    not_before: dt.datetime, not_after: dt.datetime
) -> tuple[dt.datetime, dt.datetime]:
    """Boulder's window: ideal renewal one third of the validity before notAfter, ±1%."""
    # RFC 5280 §4.1.2.5: notAfter is inclusive, hence the extra second of validity.
    validity = not_after + dt.timedelta(seconds=1) - not_before
    ideal = not_after - validity / 3
    margin = validity / 100
    return _seconds(ideal - margin), _seconds(ideal + margin)


def immediate_window(now: dt.datetime) -> tuple[dt.datetime, dt.datetime]:
    """A window wholly in the past (RFC 9773 §4.2: the client should renew at once)."""
    start = now - dt.timedelta(hours=1)
    return _seconds(start), _seconds(start + dt.timedelta(minutes=30))


def _seconds(value: dt.datetime) -> dt.datetime:
    return value.replace(microsecond=0)


def key_identifier_of(cert: x509.Certificate) -> bytes | None:
    """The AKI keyIdentifier: what RFC 9773 §4.1 certIDs carry."""
    try:
        aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    except x509.ExtensionNotFound:
        return None
    return aki.key_identifier


def already_replaced() -> AcmeError:
    """RFC 9773 §5: another order that is not invalid already replaces the certificate."""
    return AcmeError(
        type=ProblemType.ALREADY_REPLACED,
        detail="The certificate in 'replaces' was already replaced by another order",
    )


class RenewalService:
    def __init__(
        self, *, storage: Storage, status: StatusStore, clock: Clock, retry_after: dt.timedelta
    ) -> None:
        self._storage = storage
        self._status = status
        self._clock = clock
        self._retry_after = retry_after

    @classmethod
    def from_context(cls, ctx: RAContext) -> RenewalService:
        return cls(
            storage=ctx.storage,
            status=StatusStore(ctx.storage.engines, ctx.clock),
            clock=ctx.clock,
            retry_after=ctx.settings.ari_retry_after,
        )

    async def _find(self, cert_id: CertId) -> CertificateStatus | None:
        """The certificate a certID names, or None (unknown serial, or another issuer)."""
        found = await self._status.certificate_status(format(cert_id.serial, "x"))
        if found is None:
            return None
        leaf = x509.load_pem_x509_certificate(found.leaf_pem.encode("ascii"))
        if key_identifier_of(leaf) != cert_id.key_identifier:
            return None
        return found

    async def renewal_info(self, cert_id: CertId) -> RenewalInfo:
        """RFC 9773 §4.2; not_found for a certificate this CA did not issue."""
        found = await self._find(cert_id)
        if found is None:
            raise not_found("No certificate with this certID was issued here")
        renew_now = found.revoked_at is not None or found.renewal_marked_at is not None
        if renew_now:
            start, end = immediate_window(self._clock.now())
        else:
            start, end = suggested_window(found.not_before, found.not_after)
        return RenewalInfo(start=start, end=end, retry_after=self._retry_after, renew_now=renew_now)

    async def check_replaces(
        self, account: Account, replaces: str, identifiers: Sequence[Identifier]
    ) -> str:
        """RFC 9773 §5: validate newOrder's `replaces`; return the certID to record."""
        cert_id = parse_cert_id(replaces)
        found = await self._find(cert_id)
        if found is None:
            raise malformed("'replaces' names no certificate issued by this CA")
        if found.account_id != account.id:
            raise unauthorized("The certificate in 'replaces' belongs to another account")
        stored = await self._storage.get_certificate_by_serial(found.serial)
        assert stored is not None
        if not {(i.type, i.value) for i in stored.identifiers} & {
            (i.type, i.value) for i in identifiers
        }:
            raise malformed("The order shares no identifier with the certificate it replaces")
        canonical = str(cert_id)
        # Early and cheap; the insert decides (`Storage.create_order`), as two newOrders
        # may both pass here.
        if await self._status.replacement_exists(canonical, self._clock.now()):
            raise already_replaced()
        return canonical

    async def mark_early(
        self,
        *,
        serials: Sequence[str] | None = None,
        issuer: x509.Certificate | None = None,
        issued_before: dt.datetime | None = None,
        issued_after: dt.datetime | None = None,
    ) -> int:
        """Mark live certificates for renewal now; filters combine (all must match).

        `serials` are hex; `issuer` selects the certificates its key signed.
        Returns how many certificates were newly marked.
        """
        now = self._clock.now()
        if serials is None and issuer is None and issued_before is None and issued_after is None:
            raise ValueError("mark_early needs a serial, an issuer or a date range")
        if issuer is not None:
            wanted = _subject_key_identifier(issuer)
            leaves = await self._status.unexpired_leaves(
                now, issued_before=issued_before, issued_after=issued_after
            )
            chosen = [
                serial
                for serial, pem in leaves
                if key_identifier_of(x509.load_pem_x509_certificate(pem.encode("ascii"))) == wanted
            ]
            if serials is not None:
                allowed = {normalize_serial(s) for s in serials}
                chosen = [s for s in chosen if s in allowed]
            serials = chosen
        elif serials is not None:
            serials = [normalize_serial(s) for s in serials]
        return await self._status.mark_for_renewal(
            now=now, serials=serials, issued_before=issued_before, issued_after=issued_after
        )


def normalize_serial(text: str) -> str:
    """Hex as stored (`format(n, "x")`) from what operators paste: `0x`, colons, case."""
    digits = text.strip().lower().removeprefix("0x").replace(":", "")
    int(digits, 16)  # ValueError unless hex
    return digits.lstrip("0") or "0"


def _subject_key_identifier(cert: x509.Certificate) -> bytes:
    try:
        return cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    except x509.ExtensionNotFound:
        return x509.SubjectKeyIdentifier.from_public_key(cert.public_key()).digest
