"""Accounts: creation, update, deactivation and key rollover (RFC 8555 §7.3)."""

from __future__ import annotations

import dataclasses
from typing import Any

from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes

from acme_ca.errors import AcmeError, ProblemType, account_not_valid, unauthorized
from acme_ca.model import Account, AccountStatus
from acme_ca.policy.keys import check_public_key, spki_sha256
from acme_ca.protocol.eab import ExternalAccountBinding
from acme_ca.protocol.messages import AccountUpdate, NewAccountRequest
from acme_ca.ra.context import RAContext, new_id
from acme_ca.ra.eab import EabBinder
from acme_ca.ra.ratelimits import RateLimiter
from acme_ca.storage.policy import PolicyStore

__all__ = ["AccountService"]


class AccountService:
    def __init__(self, ctx: RAContext) -> None:
        self._ctx = ctx
        policy_store = PolicyStore(ctx.storage.engines, ctx.clock)
        self._eab = EabBinder(policy_store, allow_many=ctx.settings.eab_bind_many)
        self._limits = RateLimiter(policy_store, ctx.settings.rate_limits)

    async def check_account_key(self, key: PublicKeyTypes) -> None:
        """Goodkey rules plus the blocklist of compromised keys."""
        check_public_key(key, self._ctx.key_policy)
        if await self._ctx.storage.is_key_blocked(spki_sha256(key)):
            raise AcmeError(
                type=ProblemType.BAD_PUBLIC_KEY,
                detail="Key is blocked: a certificate for it was revoked for keyCompromise",
            )

    async def new_account(
        self,
        *,
        jwk: dict[str, Any],
        thumbprint: str,
        public_key: PublicKeyTypes,
        request: NewAccountRequest,
        eab: ExternalAccountBinding | None = None,
        client_ip: str | None = None,
    ) -> tuple[Account, bool]:
        """The account for this key and whether it was created now (RFC 8555 §7.3.1)."""
        storage = self._ctx.storage
        existing = await storage.get_account_by_thumbprint(thumbprint)
        if existing is not None:
            if existing.status != AccountStatus.VALID:
                # RFC 8555 §7.3.6: no further requests authorized by this key, not even a
                # lookup; a POST from a deactivated account MUST get 401 unauthorized, as the
                # kid-signed ones do (the lookup was 403 and lacme, which starts every command
                # with it, showed the difference).
                raise account_not_valid(existing.status)
            return existing, False
        if request.only_return_existing:
            raise AcmeError(
                type=ProblemType.ACCOUNT_DOES_NOT_EXIST,
                detail="No account exists with the provided key",
            )
        if not request.terms_of_service_agreed:
            # RFC 8555 §7.3: the directory names terms of service, so agreement is
            # required (as Boulder and Pebble do).
            raise AcmeError(
                type=ProblemType.MALFORMED,
                detail="You must agree to the terms of service (termsOfServiceAgreed: true)",
            )
        await self.check_account_key(public_key)
        if self._ctx.settings.eab_required and eab is None:
            raise AcmeError(
                type=ProblemType.EXTERNAL_ACCOUNT_REQUIRED,
                detail="This CA requires an external account binding for new accounts",
            )
        now = self._ctx.clock.now()
        await self._limits.check_new_account(client_ip, now)
        if eab is not None:
            await self._eab.check(eab)
        account_id = new_id()
        if eab is not None:
            await self._eab.bind(eab.kid, account_id)
        account = Account(
            id=account_id,
            status=AccountStatus.VALID,
            jwk=jwk,
            thumbprint=thumbprint,
            contact=request.contact or (),
            tos_agreed=request.terms_of_service_agreed,
            tos_agreed_url=self._ctx.settings.terms_of_service,
            created_at=now,
            eab_kid=eab.kid if eab is not None else None,
        )
        stored = await storage.create_account(account)
        created = stored.id == account.id
        if created:
            await self._limits.record_new_account(client_ip, now)
            self._ctx.metrics.account_created()
        elif eab is not None:
            # The key registered concurrently through another request: unbind.
            await self._eab.release(eab.kid, account.id)
        return stored, created

    async def update_account(self, account: Account, update: AccountUpdate) -> Account:
        """RFC 8555 §7.3.2 and §7.3.6."""
        if update.deactivate:
            await self._ctx.storage.deactivate_account(account.id)
            return dataclasses.replace(account, status=AccountStatus.DEACTIVATED)
        changed = account
        if update.contact is not None:
            changed = dataclasses.replace(changed, contact=update.contact)
        if update.terms_of_service_agreed:
            # RFC 8555 §7.3.3: agreement to the terms in force now (false agrees to nothing).
            changed = dataclasses.replace(
                changed, tos_agreed=True, tos_agreed_url=self._ctx.settings.terms_of_service
            )
        if changed != account:
            await self._ctx.storage.update_account(changed)
        return changed

    async def change_key(
        self,
        account: Account,
        *,
        new_jwk: dict[str, Any],
        new_thumbprint: str,
        new_public_key: PublicKeyTypes,
        old_key_thumbprint: str,
    ) -> Account:
        """RFC 8555 §7.3.5 once the front end has verified both signatures."""
        if old_key_thumbprint != account.thumbprint:
            raise unauthorized("keyChange 'oldKey' is not the account's current key")
        if new_thumbprint == account.thumbprint:
            raise AcmeError(
                type=ProblemType.MALFORMED, detail="The new key is the account's current key"
            )
        await self.check_account_key(new_public_key)
        storage = self._ctx.storage
        holder = await storage.get_account_by_thumbprint(new_thumbprint)
        if holder is None:
            # Guarded on the key the request was verified with: of concurrent key
            # changes (or a key change and a deactivation) one wins, the others are
            # refused instead of each being told its new key is the account's.
            outcome = await storage.change_account_key(
                account.id, new_jwk, new_thumbprint, old_thumbprint=account.thumbprint
            )
            if outcome == "changed":
                return dataclasses.replace(account, jwk=new_jwk, thumbprint=new_thumbprint)
            if outcome == "stale":
                raise unauthorized(
                    "The account's key or status changed while this key change was made;"
                    " sign with its current key"
                )
        holder = holder or await storage.get_account_by_thumbprint(new_thumbprint)
        raise AcmeError(
            type=ProblemType.CONFLICT,
            detail="The new key is already in use by another account",
            extra={"account": holder.id} if holder else {},
        )
