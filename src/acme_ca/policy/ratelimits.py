"""Rate-limit rules (Boulder's `ratelimits`): which limits exist, their values, presets.

Pure: no I/O. The RA counts (through storage) and compares against these values;
this module only says what the limits are and how a request is keyed.
"""

from __future__ import annotations

import datetime as dt
import enum
import hashlib
import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from publicsuffixlist import PublicSuffixList

from acme_ca.errors import Identifier
from acme_ca.model import IdentifierType

__all__ = [
    "DEFAULT_LIMITS",
    "LETSENCRYPT_LIMITS",
    "PRESETS",
    "Limit",
    "LimitName",
    "RateLimits",
    "bucket_width",
    "name_set_key",
    "parse_period",
    "rate_limits_from_config",
    "registered_domain",
]

_PSL = PublicSuffixList(only_icann=True)


class LimitName(enum.StrEnum):
    """The kinds of limits Let's Encrypt publishes (letsencrypt.org/docs/rate-limits)."""

    NEW_ACCOUNTS_PER_IP = "newAccountsPerIP"
    NEW_ORDERS_PER_ACCOUNT = "newOrdersPerAccount"
    CERTIFICATES_PER_DOMAIN = "certificatesPerDomain"
    DUPLICATE_CERTIFICATES = "duplicateCertificates"
    FAILED_VALIDATIONS = "failedValidations"
    PENDING_AUTHORIZATIONS = "pendingAuthorizations"

    @property
    def config_key(self) -> str:
        return _CONFIG_KEYS[self]


_CONFIG_KEYS = {
    LimitName.NEW_ACCOUNTS_PER_IP: "new_accounts_per_ip",
    LimitName.NEW_ORDERS_PER_ACCOUNT: "new_orders_per_account",
    LimitName.CERTIFICATES_PER_DOMAIN: "certificates_per_domain",
    LimitName.DUPLICATE_CERTIFICATES: "duplicate_certificates",
    LimitName.FAILED_VALIDATIONS: "failed_validations",
    LimitName.PENDING_AUTHORIZATIONS: "pending_authorizations",
}
_BY_CONFIG_KEY = {v: k for k, v in _CONFIG_KEYS.items()} | {str(k): k for k in LimitName}

# Anchors of Let's Encrypt's page, which explains each kind of limit.
_DOC_ANCHORS = {
    LimitName.NEW_ACCOUNTS_PER_IP: "new-registrations-per-ip-address",
    LimitName.NEW_ORDERS_PER_ACCOUNT: "new-orders-per-account",
    LimitName.CERTIFICATES_PER_DOMAIN: "new-certificates-per-registered-domain",
    LimitName.DUPLICATE_CERTIFICATES: "new-certificates-per-exact-set-of-identifiers",
    LimitName.FAILED_VALIDATIONS: "authorization-failures-per-identifier-per-account",
    LimitName.PENDING_AUTHORIZATIONS: "pending-authorizations",
}
DEFAULT_DOC_URL = "https://letsencrypt.org/docs/rate-limits/"


@dataclass(frozen=True, slots=True, kw_only=True)
class Limit:
    """At most `count` events per sliding `period` (for pending authorizations: at once)."""

    count: int
    period: dt.timedelta

    def __post_init__(self) -> None:
        if self.count < 0:
            raise ValueError("a rate limit count must not be negative")
        if self.period <= dt.timedelta(0):
            raise ValueError("a rate limit period must be positive")


@dataclass(frozen=True, slots=True, kw_only=True)
class RateLimits:
    """The limits in force; a limit that is absent (or None) is not enforced."""

    limits: Mapping[LimitName, Limit | None] = field(default_factory=dict)
    account_overrides: Mapping[str, Mapping[LimitName, Limit | None]] = field(default_factory=dict)
    """Per account ID: limits that replace the general ones (None lifts the limit)."""
    doc_url: str = DEFAULT_DOC_URL

    def limit(self, name: LimitName, account_id: str | None = None) -> Limit | None:
        if account_id is not None:
            override = self.account_overrides.get(account_id)
            if override is not None and name in override:
                return override[name]
        return self.limits.get(name)

    def doc_link(self, name: LimitName) -> str:
        if self.doc_url == DEFAULT_DOC_URL:
            return f"{DEFAULT_DOC_URL}#{_DOC_ANCHORS[name]}"
        return self.doc_url


_HOUR = dt.timedelta(hours=1)
_DAY = dt.timedelta(days=1)

# Generous: a private CA's own fleet, benchmarks and test suites issuing thousands of
# certificates under one domain never meet these; they stop runaway clients.
DEFAULT_LIMITS = RateLimits(
    limits={
        LimitName.NEW_ACCOUNTS_PER_IP: Limit(count=100_000, period=3 * _HOUR),
        LimitName.NEW_ORDERS_PER_ACCOUNT: Limit(count=1_000_000, period=3 * _HOUR),
        LimitName.CERTIFICATES_PER_DOMAIN: Limit(count=1_000_000, period=7 * _DAY),
        LimitName.DUPLICATE_CERTIFICATES: Limit(count=100_000, period=7 * _DAY),
        LimitName.FAILED_VALIDATIONS: Limit(count=10_000, period=_HOUR),
        LimitName.PENDING_AUTHORIZATIONS: Limit(count=100_000, period=7 * _DAY),
    }
)

# Let's Encrypt's published values (letsencrypt.org/docs/rate-limits, 2025).
LETSENCRYPT_LIMITS = RateLimits(
    limits={
        LimitName.NEW_ACCOUNTS_PER_IP: Limit(count=10, period=3 * _HOUR),
        LimitName.NEW_ORDERS_PER_ACCOUNT: Limit(count=300, period=3 * _HOUR),
        LimitName.CERTIFICATES_PER_DOMAIN: Limit(count=50, period=7 * _DAY),
        LimitName.DUPLICATE_CERTIFICATES: Limit(count=5, period=7 * _DAY),
        LimitName.FAILED_VALIDATIONS: Limit(count=5, period=_HOUR),
        LimitName.PENDING_AUTHORIZATIONS: Limit(count=300, period=7 * _DAY),
    }
)

PRESETS: Mapping[str, RateLimits] = {
    "default": DEFAULT_LIMITS,
    "letsencrypt": LETSENCRYPT_LIMITS,
    "off": RateLimits(),
}

_PERIOD = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")


def parse_period(value: Any) -> dt.timedelta:
    """`3h`, `7d`, `1h30m`, `90s`, or an integer number of seconds."""
    if isinstance(value, int) and not isinstance(value, bool):
        return dt.timedelta(seconds=value)
    match = _PERIOD.fullmatch(value) if isinstance(value, str) and value else None
    if match is None:
        raise ValueError(f"bad rate limit period {value!r}; use e.g. '3h', '7d', '90s'")
    days, hours, minutes, seconds = (int(g or 0) for g in match.groups())
    return dt.timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)


def _parse_limits(table: Mapping[str, Any], *, where: str) -> dict[LimitName, Limit | None]:
    out: dict[LimitName, Limit | None] = {}
    for key, value in table.items():
        name = _BY_CONFIG_KEY.get(key)
        if name is None:
            raise ValueError(f"{where}: unknown rate limit {key!r}")
        if value is None or value is False or value == "off":
            out[name] = None
            continue
        if not isinstance(value, Mapping) or set(value) - {"count", "period"}:
            raise ValueError(f"{where}.{key}: expected {{count = N, period = '3h'}} or 'off'")
        count = value.get("count")
        if not isinstance(count, int) or isinstance(count, bool):
            raise ValueError(f"{where}.{key}.count must be an integer")
        out[name] = Limit(count=count, period=parse_period(value.get("period", "3h")))
    return out


def rate_limits_from_config(preset: str, rules: Mapping[str, Any] | None = None) -> RateLimits:
    """A preset, with the limits of `rules` replacing its own.

    `rules` is the `[rate_limit_rules]` TOML table: limit keys (`new_orders_per_account =
    {count = 1000, period = "3h"}`, or `"off"`), `doc_url`, and `accounts.<account-id>`
    tables of per-account overrides. Raises `ValueError` on anything else.
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown rate limit preset {preset!r}; known: {', '.join(PRESETS)}")
    base = PRESETS[preset]
    rules = dict(rules or {})
    doc_url = rules.pop("doc_url", base.doc_url)
    if not isinstance(doc_url, str):
        raise ValueError("rate_limit_rules.doc_url must be a string")
    accounts = rules.pop("accounts", {})
    if not isinstance(accounts, Mapping):
        raise ValueError("rate_limit_rules.accounts must be a table of account IDs")
    overrides = {
        str(account): _parse_limits(table, where=f"rate_limit_rules.accounts.{account}")
        for account, table in accounts.items()
        if isinstance(table, Mapping)
    }
    if len(overrides) != len(accounts):
        raise ValueError("each rate_limit_rules.accounts entry must be a table")
    limits = dict(base.limits) | _parse_limits(rules, where="rate_limit_rules")
    return RateLimits(limits=limits, account_overrides=overrides, doc_url=doc_url)


def registered_domain(identifier: Identifier) -> str:
    """The key of "certificates per registered domain": eTLD+1, or the IP (IPv6: its /64)."""
    if identifier.type == IdentifierType.IP:
        address = ipaddress.ip_address(identifier.value)
        if address.version == 6:
            return str(ipaddress.ip_network(f"{address}/64", strict=False))
        return str(address)
    name = identifier.value.removeprefix("*.").lower()
    # Names under an unlisted private TLD (.internal, .test) count under their last two labels.
    return _PSL.privatesuffix(name) or name


def name_set_key(identifiers: Iterable[Identifier]) -> str:
    """The key of "duplicate certificates": a digest of the exact set of identifiers."""
    names = sorted({f"{i.type}:{i.value.lower()}" for i in identifiers})
    return hashlib.sha256("\n".join(names).encode()).hexdigest()


def bucket_width(period: dt.timedelta) -> dt.timedelta:
    """Counters are kept in 12 buckets per period: a sliding window within 1/12 of it."""
    return max(dt.timedelta(seconds=1), period / 12)
