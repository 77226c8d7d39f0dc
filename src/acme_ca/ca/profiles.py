"""Certificate profiles (draft-ietf-acme-profiles): the shipped set and the TOML form.

A profile names the shape of a leaf; the RA picks one per order and the issuer
applies it. No I/O: configuration arrives as plain tables.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from acme_ca.ca.authority import CertificateProfile

__all__ = ["DEFAULT_PROFILES", "profile_description", "profiles_from_config"]

# The three profiles Let's Encrypt offers (letsencrypt.org/docs/profiles). No commas
# in the descriptions: `acme.sh --list-profiles` splits the directory's "profiles"
# object at every comma and showed the pieces as profiles of their own.
DEFAULT_PROFILES: Mapping[str, CertificateProfile] = {
    "classic": CertificateProfile(
        name="classic",
        validity=dt.timedelta(days=90),
        description="90-day certificate with serverAuth and clientAuth; common name; "
        "CRL and OCSP pointers",
    ),
    "tlsserver": CertificateProfile(
        name="tlsserver",
        validity=dt.timedelta(days=90),
        client_auth=False,
        include_common_name=False,
        description="90-day TLS server certificate: serverAuth only; no common name",
    ),
    "shortlived": CertificateProfile(
        name="shortlived",
        # Let's Encrypt's short-lived certificates last 160 hours (under 7 days).
        validity=dt.timedelta(hours=160),
        client_auth=False,
        include_common_name=False,
        revocation_pointers=False,
        description="160-hour (about 7-day) TLS server certificate without CRL or OCSP "
        "pointers: it expires before revocation would matter",
    ),
}

_KEYS = frozenset(
    {
        "validity_days",
        "validity_hours",
        "client_auth",
        "common_name",
        "revocation_pointers",
        "max_names",
        "description",
    }
)


def profile_description(profile: CertificateProfile) -> str:
    if profile.description:
        return profile.description
    hours = profile.validity / dt.timedelta(hours=1)
    span = f"{hours / 24:g}-day" if hours % 24 == 0 else f"{hours:g}-hour"
    return f"{span} certificate"


def _bool(table: Mapping[str, Any], key: str, default: bool, where: str) -> bool:
    value = table.get(key, default)
    if not isinstance(value, bool):
        raise ValueError(f"{where}.{key} must be true or false")
    return value


def _profile(name: str, table: Mapping[str, Any], base: CertificateProfile) -> CertificateProfile:
    where = f"profiles.{name}"
    unknown = set(table) - _KEYS
    if unknown:
        raise ValueError(f"{where}: unknown keys {', '.join(sorted(unknown))}")
    validity = base.validity
    if "validity_days" in table and "validity_hours" in table:
        raise ValueError(f"{where}: give validity_days or validity_hours, not both")
    for key, unit in (("validity_days", "days"), ("validity_hours", "hours")):
        if key in table:
            value = table[key]
            if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{where}.{key} must be a positive number")
            validity = dt.timedelta(**{unit: value})
    max_names = table.get("max_names", base.max_names)
    if not isinstance(max_names, int) or isinstance(max_names, bool) or max_names < 1:
        raise ValueError(f"{where}.max_names must be a positive integer")
    description = table.get("description", base.description)
    if not isinstance(description, str):
        raise ValueError(f"{where}.description must be a string")
    return CertificateProfile(
        name=name,
        validity=validity,
        client_auth=_bool(table, "client_auth", base.client_auth, where),
        include_common_name=_bool(table, "common_name", base.include_common_name, where),
        revocation_pointers=_bool(table, "revocation_pointers", base.revocation_pointers, where),
        max_names=max_names,
        description=description,
    )


def profiles_from_config(
    tables: Mapping[str, Any] | None, default_profile: str
) -> dict[str, CertificateProfile]:
    """The shipped profiles, with `[profiles.NAME]` tables changing or adding to them.

    A table for a shipped name changes only the keys it gives; `profiles.NAME = false`
    withdraws a shipped profile. Raises `ValueError` for anything it cannot use.
    """
    profiles = dict(DEFAULT_PROFILES)
    for name, table in (tables or {}).items():
        if table is False:
            profiles.pop(name, None)
            continue
        if not isinstance(table, Mapping):
            raise ValueError(f"profiles.{name} must be a table (or false to withdraw it)")
        if not name or len(name) > 64:
            raise ValueError(f"profile name {name!r} must be 1 to 64 characters")
        base = profiles.get(name, CertificateProfile(name=name, description=""))
        profiles[name] = _profile(name, table, base)
    if default_profile not in profiles:
        raise ValueError(f"default_profile {default_profile!r} is not a configured profile")
    return profiles
