"""Rate limits: count in the database, compare with `policy.ratelimits`, refuse with 429.

Counts live in the database, so limits hold across processes. The checks of a
new order cost two reads (one statement counting the account's recent orders and
pending authorizations through indexes, capped at the limit; one summing a few
counter rows); issuance adds one upsert. Check and record are separate steps, so
concurrent requests may overshoot a limit by the number in flight, as Boulder's do.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import math
from collections.abc import Mapping, Sequence

from acme_ca.errors import AcmeError, Identifier, ProblemType
from acme_ca.model import IdentifierType
from acme_ca.policy.ratelimits import (
    Limit,
    LimitName,
    RateLimits,
    bucket_width,
    name_set_key,
    registered_domain,
)
from acme_ca.storage import codec
from acme_ca.storage.policy import CounterTotal, PolicyStore

__all__ = ["RateLimiter"]

_MIN_RETRY = dt.timedelta(seconds=1)
_PURGE_INTERVAL = dt.timedelta(minutes=10)


def _us(delta: dt.timedelta) -> int:
    return delta // dt.timedelta(microseconds=1)


def _ip_key(address: str) -> str:
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return address[:64]
    return registered_domain(Identifier(type=IdentifierType.IP, value=address))


class RateLimiter:
    def __init__(self, store: PolicyStore, limits: RateLimits) -> None:
        self._store = store
        self._limits = limits
        self._next_purge: dt.datetime | None = None

    @property
    def limits(self) -> RateLimits:
        return self._limits

    # ---- refusals --------------------------------------------------------------------

    def _refuse(self, name: LimitName, limit: Limit, detail: str, retry: dt.timedelta) -> AcmeError:
        seconds = max(1, math.ceil(max(retry, _MIN_RETRY).total_seconds()))
        return AcmeError(
            type=ProblemType.RATE_LIMITED,
            detail=f"{detail}: limit {name} is {limit.count} per {_span(limit.period)}; "
            f"retry after {seconds} seconds",
            headers={
                # RFC 8555 §6.6: Retry-After, and a link to the limit's documentation.
                "Retry-After": str(seconds),
                "Link": f'<{self._limits.doc_link(name)}>;rel="help"',
            },
        )

    # ---- counters --------------------------------------------------------------------

    @staticmethod
    def _bucket(limit: Limit, now: dt.datetime) -> int:
        width = _us(bucket_width(limit.period))
        now_us = codec.to_us(now)
        return now_us - now_us % width

    @staticmethod
    def _first_bucket(limit: Limit, now: dt.datetime) -> int:
        # Buckets that started before the window are not counted: the window is
        # lenient by at most one bucket (1/12 of the period).
        width = _us(bucket_width(limit.period))
        start = codec.to_us(now) - _us(limit.period)
        return -(-start // width) * width

    async def _check_counters(
        self, checks: Sequence[tuple[LimitName, Limit, str, str]], now: dt.datetime
    ) -> None:
        """Each check: (limit, its value, counter key, what to name in the refusal)."""
        totals = await self._store.counter_totals(
            [(name, key, self._first_bucket(limit, now)) for name, limit, key, _ in checks]
        )
        self._compare(checks, totals, now)

    def _compare(
        self,
        checks: Sequence[tuple[LimitName, Limit, str, str]],
        totals: Mapping[tuple[str, str], CounterTotal],
        now: dt.datetime,
    ) -> None:
        for name, limit, key, what in checks:
            total = totals[(name, key)]
            if total.count >= limit.count:
                oldest = codec.from_us(total.oldest_bucket or codec.to_us(now))
                raise self._refuse(name, limit, what, oldest + limit.period - now)

    async def _bump(self, items: Sequence[tuple[LimitName, Limit, str]], now: dt.datetime) -> None:
        by_bucket: dict[int, list[tuple[str, str]]] = {}
        for name, limit, key in items:
            by_bucket.setdefault(self._bucket(limit, now), []).append((str(name), key))
        for bucket, pairs in by_bucket.items():
            await self._store.bump_counters(pairs, bucket=bucket)

    # ---- accounts --------------------------------------------------------------------

    async def check_new_account(self, client_ip: str | None, now: dt.datetime) -> None:
        limit = self._limits.limit(LimitName.NEW_ACCOUNTS_PER_IP)
        if limit is None or client_ip is None:
            return
        key = _ip_key(client_ip)
        await self._check_counters(
            [(LimitName.NEW_ACCOUNTS_PER_IP, limit, key, f"Too many new accounts from {key}")],
            now,
        )

    async def record_new_account(self, client_ip: str | None, now: dt.datetime) -> None:
        limit = self._limits.limit(LimitName.NEW_ACCOUNTS_PER_IP)
        if limit is not None and client_ip is not None:
            await self._bump([(LimitName.NEW_ACCOUNTS_PER_IP, limit, _ip_key(client_ip))], now)

    # ---- orders and authorizations ---------------------------------------------------

    async def _check_activity(
        self, account_id: str, now: dt.datetime, *, orders: bool, new_authzs: int
    ) -> None:
        orders_limit = self._limits.limit(LimitName.NEW_ORDERS_PER_ACCOUNT, account_id)
        pending_limit = self._limits.limit(LimitName.PENDING_AUTHORIZATIONS, account_id)
        if not orders:
            orders_limit = None
        if orders_limit is None and pending_limit is None:
            return
        recent, pending = await self._store.account_activity(
            account_id,
            orders_since=now - (orders_limit.period if orders_limit else dt.timedelta(0)),
            orders_cap=orders_limit.count if orders_limit else 0,
            now=now,
        )
        if orders_limit is not None and recent.count >= orders_limit.count:
            # The cap makes `oldest` the order whose ageing out frees a slot.
            retry = (recent.oldest or now) + orders_limit.period - now
            raise self._refuse(
                LimitName.NEW_ORDERS_PER_ACCOUNT,
                orders_limit,
                "Too many new orders for this account",
                retry,
            )
        if pending_limit is not None and new_authzs and pending.count >= pending_limit.count:
            # Pending authorizations free up as they are validated, deactivated or expire.
            retry = min((pending.oldest or now) - now, dt.timedelta(minutes=5))
            raise self._refuse(
                LimitName.PENDING_AUTHORIZATIONS,
                pending_limit,
                f"Too many pending authorizations ({pending.count}) for this account",
                retry,
            )

    def _failed_validation_checks(
        self, account_id: str, identifiers: Sequence[Identifier]
    ) -> list[tuple[LimitName, Limit, str, str]]:
        limit = self._limits.limit(LimitName.FAILED_VALIDATIONS, account_id)
        if limit is None:
            return []
        return [
            (
                LimitName.FAILED_VALIDATIONS,
                limit,
                _failure_key(account_id, i),
                f"Too many failed validations for {i.value.removeprefix('*.')} on this account",
            )
            for i in identifiers
        ]

    async def check_new_order(
        self,
        account_id: str,
        identifiers: Sequence[Identifier],
        now: dt.datetime,
        *,
        new_authzs: int = 1,
    ) -> None:
        """Every limit a new order meets; `rateLimited` for the first one exceeded."""
        await self._check_activity(account_id, now, orders=True, new_authzs=new_authzs)
        checks = self._failed_validation_checks(account_id, identifiers)
        duplicate = self._limits.limit(LimitName.DUPLICATE_CERTIFICATES, account_id)
        per_domain = self._limits.limit(LimitName.CERTIFICATES_PER_DOMAIN, account_id)
        set_key = name_set_key(identifiers)
        if duplicate is not None:
            checks.append(
                (
                    LimitName.DUPLICATE_CERTIFICATES,
                    duplicate,
                    set_key,
                    "Too many certificates already issued for this exact set of identifiers",
                )
            )
        domain_checks: list[tuple[LimitName, Limit, str, str]] = []
        if per_domain is not None:
            domain_checks = [
                (
                    LimitName.CERTIFICATES_PER_DOMAIN,
                    per_domain,
                    domain,
                    f"Too many certificates already issued for {domain}",
                )
                for domain in sorted({registered_domain(i) for i in identifiers})
            ]
        if not checks and not domain_checks:
            return
        # One query for every counter this order meets.
        totals = await self._store.counter_totals(
            [
                (name, key, self._first_bucket(limit, now))
                for name, limit, key, _ in (*checks, *domain_checks)
            ]
        )
        if duplicate is not None and totals[(LimitName.DUPLICATE_CERTIFICATES, set_key)].count:
            # A renewal of an exact set is exempt from the per-domain limit (as at Let's
            # Encrypt): that limit slows new names, not renewals.
            domain_checks = []
        self._compare([*checks, *domain_checks], totals, now)

    async def check_new_authz(
        self, account_id: str, identifier: Identifier, now: dt.datetime
    ) -> None:
        await self._check_activity(account_id, now, orders=False, new_authzs=1)
        checks = self._failed_validation_checks(account_id, [identifier])
        if checks:
            await self._check_counters(checks, now)

    async def record_failed_validation(
        self, account_id: str, identifier: Identifier, now: dt.datetime
    ) -> None:
        limit = self._limits.limit(LimitName.FAILED_VALIDATIONS, account_id)
        if limit is not None:
            key = _failure_key(account_id, identifier)
            await self._bump([(LimitName.FAILED_VALIDATIONS, limit, key)], now)

    def issuance_counters(
        self, account_id: str, identifiers: Sequence[Identifier], now: dt.datetime
    ) -> list[tuple[str, str, int]]:
        """The (limit, key, bucket) counters one issuance adds, for the issuing transaction."""
        return sorted(
            {
                (str(name), key[:255], self._bucket(limit, now))
                for name, limit, key in self._issuance_items(account_id, identifiers)
            }
        )

    def _issuance_items(
        self, account_id: str, identifiers: Sequence[Identifier]
    ) -> list[tuple[LimitName, Limit, str]]:
        items: list[tuple[LimitName, Limit, str]] = []
        duplicate = self._limits.limit(LimitName.DUPLICATE_CERTIFICATES, account_id)
        if duplicate is not None:
            items.append((LimitName.DUPLICATE_CERTIFICATES, duplicate, name_set_key(identifiers)))
        per_domain = self._limits.limit(LimitName.CERTIFICATES_PER_DOMAIN, account_id)
        if per_domain is not None:
            items.extend(
                (LimitName.CERTIFICATES_PER_DOMAIN, per_domain, domain)
                for domain in {registered_domain(i) for i in identifiers}
            )
        return items

    async def purge(self, now: dt.datetime) -> int:
        """Drop counter rows older than the longest period in force (at most every 10 min)."""
        if self._next_purge is not None and now < self._next_purge:
            return 0
        self._next_purge = now + _PURGE_INTERVAL
        periods = [lim.period for lim in self._limits.limits.values() if lim is not None]
        periods += [
            lim.period
            for table in self._limits.account_overrides.values()
            for lim in table.values()
            if lim is not None
        ]
        if not periods:
            return 0
        horizon = now - max(periods) - max(bucket_width(p) for p in periods)
        return await self._store.purge_counters(before_bucket_us=codec.to_us(horizon))


def _failure_key(account_id: str, identifier: Identifier) -> str:
    return f"{account_id}:{identifier.type}:{identifier.value.removeprefix('*.')}"


def _span(period: dt.timedelta) -> str:
    seconds = int(period.total_seconds())
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds % size == 0:
            count = seconds // size
            return f"{count} {unit}{'s' if count != 1 else ''}"
    return f"{seconds} seconds"
