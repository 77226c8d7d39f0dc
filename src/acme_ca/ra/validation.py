"""Challenge responses and the validation jobs they start (RFC 8555 §7.5.1, §8)."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time

from acme_ca.errors import AcmeError, Identifier, ProblemType, SubProblem, malformed, unauthorized
from acme_ca.model import Account, Authorization, AuthzStatus, Challenge, ChallengeStatus
from acme_ca.protocol.keyauth import key_authorization
from acme_ca.ra.caa import CaaPolicy
from acme_ca.ra.context import RAContext
from acme_ca.ra.ratelimits import RateLimiter
from acme_ca.storage.policy import PolicyStore
from acme_ca.va import ValidationRequest

__all__ = ["ValidationService"]

log = logging.getLogger(__name__)


class ValidationService:
    def __init__(self, ctx: RAContext) -> None:
        self._ctx = ctx
        self._caa = CaaPolicy(ctx)
        self._limits = RateLimiter(
            PolicyStore(ctx.storage.engines, ctx.clock), ctx.settings.rate_limits
        )

    async def respond(self, account: Account, authz: Authorization, challenge: Challenge) -> bool:
        """Mark the challenge processing; True if a validation job was queued now.

        Responding again to a challenge that is already processing, valid or
        invalid is not an error (RFC 8555 §7.5.1): the current state is returned.
        """
        if authz.account_id != account.id:
            raise unauthorized("Authorization belongs to another account")
        if challenge.status != ChallengeStatus.PENDING:
            return False
        if authz.status != AuthzStatus.PENDING:
            # RFC 8555 §7.5.1: a deactivated or expired authz cannot be validated.
            raise malformed(f"Authorization is {authz.status} and cannot be validated")
        lease = self._ctx.clock.now() + self._ctx.settings.job_lease
        started = await self._ctx.storage.start_challenge(authz.id, challenge.id, lease_until=lease)
        if not started:
            fresh = await self._ctx.storage.get_authz(authz.id)
            if fresh is not None and fresh.status != AuthzStatus.PENDING:
                raise malformed(f"Authorization is {fresh.status} and cannot be validated")
        return started

    async def run(
        self, challenge_id: str, *, subject: tuple[Authorization, Account] | None = None
    ) -> Challenge | None:
        """Validate and record the result; the challenge as recorded, or None if another
        run had recorded one (safe to call twice: the store keeps the first).

        `subject` is the challenge's authorization and account as read by the caller that
        just started the challenge (saves reading them again); without it they are read.
        """
        ctx = self._ctx
        if subject is None:
            subject = await ctx.storage.get_validation_subject(challenge_id)
            if subject is None:
                return None
        authz, account = subject
        challenge = next((c for c in authz.challenges if c.id == challenge_id), None)
        if challenge is None:
            return None
        now = ctx.clock.now()
        if authz.status != AuthzStatus.PENDING:
            error: AcmeError | None = malformed(f"Authorization became {authz.status}")
            records: tuple[dict[str, object], ...] = ()
        else:
            # RFC 8659 §3: CAA is checked when the identifier is validated; the lookups
            # run alongside the challenge, as Boulder's do.
            started = time.perf_counter()
            result, caa_error = await asyncio.gather(
                ctx.va.validate(
                    ValidationRequest(
                        challenge_type=challenge.type,
                        identifier=authz.identifier,
                        token=challenge.token,
                        key_authorization=key_authorization(challenge.token, account.thumbprint),
                    )
                ),
                self._caa.check_authz(account.id, authz, challenge.type),
            )
            error = _with_identifier(result.error, authz.identifier) or caa_error
            records = result.records
            ctx.metrics.validation(challenge.type, error is None, time.perf_counter() - started)
            if caa_error is not None:
                ctx.metrics.caa_failure("validation")
            now = ctx.clock.now()
            if error is not None:
                await self._limits.record_failed_validation(account.id, authz.identifier, now)
        recorded = await ctx.storage.finish_validation(
            authz.id,
            challenge.id,
            error=error,
            records=records,
            now=now,
            valid_until=now + ctx.settings.valid_authz_lifetime,
        )
        log.info(
            "validation %s %s %s: %s",
            challenge.type,
            authz.identifier.value,
            challenge_id,
            "valid" if error is None else error,
        )
        if not recorded:
            return None
        return dataclasses.replace(
            challenge,
            status=ChallengeStatus.VALID if error is None else ChallengeStatus.INVALID,
            validated=now if error is None else None,
            error=error,
            validation_record=tuple(records),
        )


def _with_identifier(error: AcmeError | None, identifier: Identifier) -> AcmeError | None:
    """The challenge's problem, with a subproblem naming the identifier for the order."""
    if error is None or error.subproblems:
        return error
    if error.type == ProblemType.SERVER_INTERNAL:
        error = AcmeError(type=error.type, detail="Validation failed because of an internal error")
    return AcmeError(
        type=error.type,
        detail=error.detail,
        subproblems=(SubProblem(type=error.type, detail=error.detail, identifier=identifier),),
    )
