"""Revocation (RFC 8555 §7.6)."""

from __future__ import annotations

import logging

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from acme_ca.errors import AcmeError, ProblemType, malformed, unauthorized
from acme_ca.model import Account, Certificate, RevocationReason
from acme_ca.ra.context import RAContext

log = logging.getLogger(__name__)

__all__ = ["RevocationService"]


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
        if cert.revoked_at is not None:
            raise AcmeError(type=ProblemType.ALREADY_REVOKED, detail="Certificate already revoked")
        if not await self._ctx.storage.revoke_certificate(cert.id, reason, self._ctx.clock.now()):
            raise AcmeError(type=ProblemType.ALREADY_REVOKED, detail="Certificate already revoked")
        log.info("revoked serial %s (%s), reason %s", cert.serial, cert.account_id, reason.name)
