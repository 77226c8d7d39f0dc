"""Rate-limit rules: presets, the TOML form, keys and buckets (pure)."""

from __future__ import annotations

import datetime as dt

import pytest

from acme_ca.errors import Identifier
from acme_ca.policy.ratelimits import (
    DEFAULT_LIMITS,
    LETSENCRYPT_LIMITS,
    Limit,
    LimitName,
    bucket_width,
    name_set_key,
    parse_period,
    rate_limits_from_config,
    registered_domain,
)


def _dns(value: str) -> Identifier:
    return Identifier(type="dns", value=value)


def test_letsencrypt_preset_has_the_published_values() -> None:
    limit = LETSENCRYPT_LIMITS.limit
    assert limit(LimitName.NEW_ACCOUNTS_PER_IP) == Limit(count=10, period=dt.timedelta(hours=3))
    assert limit(LimitName.NEW_ORDERS_PER_ACCOUNT) == Limit(count=300, period=dt.timedelta(hours=3))
    assert limit(LimitName.CERTIFICATES_PER_DOMAIN) == Limit(count=50, period=dt.timedelta(days=7))
    assert limit(LimitName.DUPLICATE_CERTIFICATES) == Limit(count=5, period=dt.timedelta(days=7))
    assert limit(LimitName.FAILED_VALIDATIONS) == Limit(count=5, period=dt.timedelta(hours=1))


def test_default_preset_is_generous() -> None:
    for name in LimitName:
        limit = DEFAULT_LIMITS.limit(name)
        assert limit is not None
        assert limit.count >= 10_000


def test_off_preset_has_no_limits() -> None:
    off = rate_limits_from_config("off")
    assert all(off.limit(name) is None for name in LimitName)


def test_rules_replace_preset_values_and_add_account_overrides() -> None:
    limits = rate_limits_from_config(
        "letsencrypt",
        {
            "new_orders_per_account": {"count": 1000, "period": "1h30m"},
            "duplicateCertificates": "off",
            "doc_url": "https://pki.corp.example/limits",
            "accounts": {"acct1": {"new_orders_per_account": {"count": 5, "period": 60}}},
        },
    )
    assert limits.limit(LimitName.NEW_ORDERS_PER_ACCOUNT) == Limit(
        count=1000, period=dt.timedelta(minutes=90)
    )
    assert limits.limit(LimitName.DUPLICATE_CERTIFICATES) is None
    assert limits.limit(LimitName.NEW_ORDERS_PER_ACCOUNT, "acct1") == Limit(
        count=5, period=dt.timedelta(seconds=60)
    )
    assert limits.limit(LimitName.NEW_ORDERS_PER_ACCOUNT, "acct2") == Limit(
        count=1000, period=dt.timedelta(minutes=90)
    )
    assert limits.doc_link(LimitName.FAILED_VALIDATIONS) == "https://pki.corp.example/limits"
    assert "#new-orders-per-account" in DEFAULT_LIMITS.doc_link(LimitName.NEW_ORDERS_PER_ACCOUNT)


@pytest.mark.parametrize(
    ("preset", "rules", "message"),
    [
        ("strict", {}, "preset"),
        ("default", {"orders": {"count": 1}}, "unknown rate limit"),
        ("default", {"new_orders_per_account": {"count": "many"}}, "integer"),
        ("default", {"new_orders_per_account": {"count": 1, "period": "soon"}}, "period"),
        ("default", {"new_orders_per_account": {"count": 1, "every": "1h"}}, "expected"),
        ("default", {"new_orders_per_account": {"count": -1}}, "negative"),
        ("default", {"accounts": ["a"]}, "table"),
        ("default", {"doc_url": 5}, "doc_url"),
    ],
)
def test_bad_rules_are_refused(preset: str, rules: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        rate_limits_from_config(preset, rules)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("3h", dt.timedelta(hours=3)),
        ("7d", dt.timedelta(days=7)),
        ("90s", dt.timedelta(seconds=90)),
        ("1d12h", dt.timedelta(hours=36)),
        (600, dt.timedelta(minutes=10)),
    ],
)
def test_parse_period(text: str | int, expected: dt.timedelta) -> None:
    assert parse_period(text) == expected


def test_registered_domain() -> None:
    assert registered_domain(_dns("a.b.example.com")) == "example.com"
    assert registered_domain(_dns("*.www.example.co.uk")) == "example.co.uk"
    assert registered_domain(_dns("host.team.internal")) == "team.internal"
    assert registered_domain(Identifier(type="ip", value="192.0.2.7")) == "192.0.2.7"
    assert registered_domain(Identifier(type="ip", value="2001:db8::1")) == "2001:db8::/64"


def test_name_set_key_ignores_order_and_case() -> None:
    a = name_set_key([_dns("A.example.com"), _dns("b.example.com")])
    b = name_set_key([_dns("b.example.com"), _dns("a.example.com")])
    assert a == b
    assert a != name_set_key([_dns("a.example.com")])


def test_bucket_width_is_a_twelfth_of_the_period() -> None:
    assert bucket_width(dt.timedelta(hours=3)) == dt.timedelta(minutes=15)
    assert bucket_width(dt.timedelta(seconds=2)) == dt.timedelta(seconds=1)
