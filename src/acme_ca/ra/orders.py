"""Orders and authorizations: creation, reuse and deactivation (RFC 8555 §7.4, §7.5)."""

from __future__ import annotations

import datetime as dt

from acme_ca.errors import (
    AcmeError,
    Identifier,
    ProblemType,
    account_not_valid,
    malformed,
    unauthorized,
)
from acme_ca.model import (
    Account,
    Authorization,
    AuthzStatus,
    Challenge,
    ChallengeStatus,
    ChallengeType,
    IdentifierType,
    Order,
    OrderStatus,
)
from acme_ca.policy.identifiers import normalize_identifiers
from acme_ca.protocol.messages import NewOrderRequest
from acme_ca.ra.context import RAContext, new_id, new_token
from acme_ca.ra.ratelimits import RateLimiter
from acme_ca.ra.renewal import RenewalService, already_replaced
from acme_ca.storage.policy import PolicyStore

__all__ = ["OrderService"]


def challenge_types_for(identifier: Identifier, *, wildcard: bool) -> tuple[ChallengeType, ...]:
    if wildcard:
        # RFC 8555 §7.1.3: wildcards are proven over DNS only.
        return (ChallengeType.DNS_01,)
    if identifier.type == IdentifierType.IP:
        # RFC 8738 §7: no dns-01 for IP addresses.
        return (ChallengeType.HTTP_01, ChallengeType.TLS_ALPN_01)
    return (ChallengeType.HTTP_01, ChallengeType.DNS_01, ChallengeType.TLS_ALPN_01)


class OrderService:
    def __init__(self, ctx: RAContext) -> None:
        self._ctx = ctx
        self._policy_store = PolicyStore(ctx.storage.engines, ctx.clock)
        self._limits = RateLimiter(self._policy_store, ctx.settings.rate_limits)
        self._renewal = RenewalService.from_context(ctx)

    def _check_validity_window(
        self, request: NewOrderRequest, now: dt.datetime, profile_name: str
    ) -> None:
        profile = self._ctx.settings.profiles[profile_name]
        start = request.not_before or now
        if (
            request.not_before is not None
            and request.not_before < now - self._ctx.settings.max_backdate
        ):
            raise malformed("notBefore is too far in the past")
        if (
            request.not_before is not None
            and request.not_before > now + self._ctx.settings.order_lifetime
        ):
            raise malformed("notBefore is too far in the future")
        if request.not_after is not None:
            if request.not_after <= start:
                raise malformed("notAfter must be later than notBefore")
            if request.not_after - start > profile.validity:
                raise malformed(
                    f"The requested validity exceeds the maximum of "
                    f"{profile.validity.days} days for profile {profile_name!r}"
                )

    def _profile_name(self, requested: str | None) -> str:
        settings = self._ctx.settings
        if requested is None:
            return settings.default_profile
        if requested not in settings.profiles:
            raise AcmeError(
                type=ProblemType.INVALID_PROFILE,
                detail=f"Unknown profile {requested!r}; offered: {', '.join(settings.profiles)}",
            )
        return requested

    async def new_order(self, account: Account, request: NewOrderRequest) -> Order:
        ctx = self._ctx
        now = ctx.clock.now()
        identifiers = normalize_identifiers(request.identifiers, ctx.identifier_policy)
        profile = self._profile_name(request.profile)
        self._check_validity_window(request, now, profile)
        # RFC 9773 §5: the certificate this order replaces, checked and recorded.
        replaces = (
            await self._renewal.check_replaces(account, request.replaces, identifiers)
            if request.replaces is not None
            else None
        )
        max_names = ctx.settings.profiles[profile].max_names
        if len(identifiers) > max_names:
            raise AcmeError(
                type=ProblemType.REJECTED_IDENTIFIER,
                detail=f"Profile {profile!r} allows at most {max_names} identifiers per order",
            )
        await self._limits.check_new_order(
            account.id, identifiers, now, new_authzs=len(identifiers)
        )
        order, new_authzs = await self._plan_order(
            account, request, identifiers, profile=profile, replaces=replaces, now=now, reuse=True
        )
        outcome = await ctx.storage.create_order(order, new_authzs)
        if outcome == "authz gone":
            # A reused authorization was deactivated (or failed) while this order was
            # made: the order would be born invalid. Made again with new ones.
            order, new_authzs = await self._plan_order(
                account,
                request,
                identifiers,
                profile=profile,
                replaces=replaces,
                now=now,
                reuse=False,
            )
            outcome = await ctx.storage.create_order(order, new_authzs)
        if outcome == "account deactivated":
            # RFC 8555 §7.3.6: deactivated after this request was verified.
            raise account_not_valid()
        if outcome == "replaced":
            raise already_replaced()
        assert outcome == "created", outcome
        if not new_authzs:
            # Every authz was reused: the order may already be ready.
            await ctx.storage.settle_order(order.id)
            stored = await ctx.storage.get_order(order.id)
            assert stored is not None
            return stored
        return order

    async def _plan_order(
        self,
        account: Account,
        request: NewOrderRequest,
        identifiers: tuple[Identifier, ...],
        *,
        profile: str,
        replaces: str | None,
        now: dt.datetime,
        reuse: bool,
    ) -> tuple[Order, list[Authorization]]:
        """The order and the authorizations to make for it: with `reuse`, the
        account's live pending or valid ones are taken where there are any."""
        ctx = self._ctx
        authz_ids: list[str] = []
        new_authzs: list[Authorization] = []
        expiries: list[dt.datetime] = []
        for identifier in identifiers:
            wildcard = identifier.type == IdentifierType.DNS and identifier.value.startswith("*.")
            base = Identifier(type=identifier.type, value=identifier.value.removeprefix("*."))
            reused = (
                await ctx.storage.find_reusable_authz(
                    account.id, base, wildcard=wildcard, valid_after=now + ctx.settings.reuse_margin
                )
                if reuse
                else None
            )
            if reused is not None:
                authz_ids.append(reused.id)
                expiries.append(reused.expires)
                continue
            authz = self._new_authz(account, base, wildcard=wildcard, now=now)
            new_authzs.append(authz)
            authz_ids.append(authz.id)
            expiries.append(authz.expires)
        order = Order(
            id=new_id(),
            account_id=account.id,
            status=OrderStatus.PENDING,
            identifiers=identifiers,
            authz_ids=tuple(authz_ids),
            # An order lives no longer than its shortest-lived authorization.
            expires=min([now + ctx.settings.order_lifetime, *expiries]),
            not_before=request.not_before,
            not_after=request.not_after,
            profile=profile if request.profile is not None else None,
            replaces=replaces,
            created_at=now,
        )
        return order, new_authzs

    async def new_authz(
        self, account: Account, identifier: Identifier
    ) -> tuple[Authorization, bool]:
        """Pre-authorization (RFC 8555 §7.4.1): the authz, and whether it was created now.

        A live pending or valid authorization for the identifier is returned instead
        of a second one.
        """
        ctx = self._ctx
        if not ctx.settings.new_authz:
            raise malformed("Pre-authorization (newAuthz) is not enabled on this CA")
        if identifier.type == IdentifierType.DNS and identifier.value.startswith("*."):
            # RFC 8555 §7.4.1: wildcards cannot be pre-authorized.
            raise malformed("Wildcard identifiers cannot be pre-authorized; use newOrder")
        (normalized,) = normalize_identifiers((identifier,), ctx.identifier_policy)
        now = ctx.clock.now()
        reused = await ctx.storage.find_reusable_authz(
            account.id, normalized, wildcard=False, valid_after=now + ctx.settings.reuse_margin
        )
        if reused is not None:
            return reused, False
        await self._limits.check_new_authz(account.id, normalized, now)
        authz = self._new_authz(account, normalized, wildcard=False, now=now)
        if not await self._policy_store.create_authz(authz):
            # RFC 8555 §7.3.6: deactivated after this request was verified.
            raise account_not_valid()
        return authz, True

    def _new_authz(
        self, account: Account, identifier: Identifier, *, wildcard: bool, now: dt.datetime
    ) -> Authorization:
        authz_id = new_id()
        return Authorization(
            id=authz_id,
            account_id=account.id,
            identifier=identifier,
            status=AuthzStatus.PENDING,
            expires=now + self._ctx.settings.pending_authz_lifetime,
            wildcard=wildcard,
            challenges=tuple(
                Challenge(
                    id=new_id(),
                    authz_id=authz_id,
                    type=kind,
                    token=new_token(),
                    status=ChallengeStatus.PENDING,
                )
                for kind in challenge_types_for(identifier, wildcard=wildcard)
            ),
            created_at=now,
        )

    async def deactivate_authz(self, account: Account, authz: Authorization) -> Authorization:
        if authz.account_id != account.id:
            raise unauthorized("Authorization belongs to another account")
        if authz.status not in (AuthzStatus.PENDING, AuthzStatus.VALID):
            # RFC 8555 §7.5.2: only pending or valid authorizations can be deactivated.
            raise malformed(f"Cannot deactivate an authorization that is {authz.status}")
        await self._ctx.storage.deactivate_authz(authz.id)
        stored = await self._ctx.storage.get_authz(authz.id)
        assert stored is not None
        return stored
