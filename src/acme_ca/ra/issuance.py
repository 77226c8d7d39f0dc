"""Finalization and issuance (RFC 8555 §7.4).

The order moves ready → processing in one guarded UPDATE that also records the CSR
and the serial and queues an issuance job, so two finalize requests (to any two
processes) cannot both proceed, and an issuance cut short by a crash is taken up
again with the same serial. The certificate and the order's `valid` status are
committed together before the client hears of them.
"""

from __future__ import annotations

import logging
from dataclasses import replace

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes

from acme_ca.ca import CertificateProfile, check_csr, load_csr
from acme_ca.errors import AcmeError, ProblemType, account_not_valid, server_internal, unauthorized
from acme_ca.model import Account, AccountStatus, Certificate, Order, OrderStatus
from acme_ca.policy.keys import spki_sha256
from acme_ca.protocol.jws import import_public_jwk, public_key_of
from acme_ca.ra.caa import CaaPolicy
from acme_ca.ra.context import RAContext, new_id
from acme_ca.ra.ratelimits import RateLimiter
from acme_ca.storage.policy import PolicyStore

__all__ = ["IssuanceService"]

log = logging.getLogger(__name__)


class IssuanceService:
    def __init__(self, ctx: RAContext) -> None:
        self._ctx = ctx
        self._caa = CaaPolicy(ctx)
        self._limits = RateLimiter(
            PolicyStore(ctx.storage.engines, ctx.clock), ctx.settings.rate_limits
        )

    async def finalize(
        self,
        account: Account,
        order: Order,
        csr_der: bytes,
        *,
        account_key: PublicKeyTypes | None = None,
    ) -> Order:
        """Check the CSR, issue, and return the order as it now is.

        `account_key` is the account's public key when the caller has it already
        (the front end verified the request with it).
        """
        ctx = self._ctx
        if order.account_id != account.id:
            raise unauthorized("Order belongs to another account")
        if order.status != OrderStatus.READY:
            # A deactivation since the request was verified cancelled the order.
            await self._require_valid_account(account.id)
            # RFC 8555 §7.4: finalize only a ready order.
            raise AcmeError(
                type=ProblemType.ORDER_NOT_READY,
                detail=f"Order is {order.status}, not ready; it cannot be finalized",
            )
        if account_key is None:
            account_key = public_key_of(import_public_jwk(account.jwk))
        csr = check_csr(
            csr_der,
            identifiers=order.identifiers,
            account_spki_sha256=spki_sha256(account_key),
            key_policy=ctx.key_policy,
        )
        if await ctx.storage.is_key_blocked(spki_sha256(csr.public_key())):
            raise AcmeError(
                type=ProblemType.BAD_CSR,
                detail="CSR key is blocked: a certificate for it was revoked for keyCompromise",
            )
        # Refused before the order is processing: it stays ready for another CSR.
        ctx.ca.check_must_staple(csr, self._profile(order))
        # RFC 8659 §3: CAA again for identifiers validated longer ago than the set age.
        await self._caa.recheck_order(order, ctx.clock.now())
        serial = format(ctx.ca.new_serial(), "x")
        lease = ctx.clock.now() + ctx.settings.job_lease
        if not await ctx.storage.begin_finalize(
            order.id, csr_der=csr_der, serial=serial, lease_until=lease
        ):
            await self._require_valid_account(account.id)
            current = await ctx.storage.get_order(order.id)
            status = current.status if current else "gone"
            raise AcmeError(
                type=ProblemType.ORDER_NOT_READY,
                detail=f"Order is {status}, not ready; it cannot be finalized",
            )
        processing = replace(order, status=OrderStatus.PROCESSING, csr_der=csr_der)
        issued = await self._issue(processing, serial, csr)
        if issued is not None:
            return issued
        final = await ctx.storage.get_order(order.id)
        assert final is not None
        return final

    async def _require_valid_account(self, account_id: str) -> None:
        """RFC 8555 §7.3.6: a deactivation that committed after the request was verified
        cancelled the account's orders; the answer is the deactivation's, as newOrder's."""
        owner = await self._ctx.storage.get_account(account_id)
        if owner is None or owner.status != AccountStatus.VALID:
            raise account_not_valid()

    async def issue(self, order_id: str) -> None:
        """Sign and store the certificate of a processing order; idempotent (job resumption)."""
        ctx = self._ctx
        order = await ctx.storage.get_order(order_id)
        if order is None or order.status != OrderStatus.PROCESSING:
            return
        serial = await ctx.storage.get_order_serial(order_id)
        if order.csr_der is None or serial is None:
            await ctx.storage.fail_order(order_id, server_internal("Order lost its CSR"))
            ctx.metrics.order_finalized(False)
            return
        await self._issue(order, serial, load_csr(order.csr_der))

    def _profile_name(self, order: Order) -> str:
        return order.profile or self._ctx.settings.default_profile

    def _profile(self, order: Order) -> CertificateProfile:
        return self._ctx.settings.profiles.get(self._profile_name(order), CertificateProfile())

    async def _issue(
        self, order: Order, serial: str, csr: x509.CertificateSigningRequest
    ) -> Order | None:
        """Sign with the recorded serial and store; the valid order, or None if not issued."""
        ctx = self._ctx
        profile = self._profile(order)
        try:
            # One signature is well under a millisecond for the default ECDSA
            # issuer: cheaper inline than a thread hop.
            issued = ctx.ca.issue(
                csr=csr,
                identifiers=order.identifiers,
                serial=int(serial, 16),
                not_before=order.not_before,
                not_after=order.not_after,
                profile=profile,
            )
        except AcmeError as exc:
            await ctx.storage.fail_order(order.id, exc)
            ctx.metrics.order_finalized(False)
            return None
        except Exception:
            log.exception("issuance of order %s failed", order.id)
            await ctx.storage.fail_order(order.id, server_internal("Issuance failed"))
            ctx.metrics.order_finalized(False)
            return None
        now = ctx.clock.now()
        certificate = Certificate(
            id=new_id(),
            serial=serial,
            account_id=order.account_id,
            order_id=order.id,
            identifiers=order.identifiers,
            pem_chains=issued.pem_chains,
            spki_sha256=issued.spki_sha256,
            not_before=issued.not_before,
            not_after=issued.not_after,
            issued_at=now,
        )
        # The rate-limit counters are bumped in the transaction that stores the
        # certificate: counted exactly once, whichever process finishes the job.
        counters = self._limits.issuance_counters(order.account_id, order.identifiers, now)
        if not await ctx.storage.finish_issuance(order.id, certificate, counters=counters):
            return None
        log.info("issued serial %s for order %s", serial, order.id)
        ctx.metrics.order_finalized(True)
        ctx.metrics.certificate_issued(self._profile_name(order))
        return replace(order, status=OrderStatus.VALID, certificate_id=certificate.id)
