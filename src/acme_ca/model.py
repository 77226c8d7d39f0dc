"""Plain, frozen domain objects and the protocol's status vocabulary.

Imports only `errors`. Change objects with `dataclasses.replace`; persist them
through `storage`.
"""

from __future__ import annotations

import datetime as dt
import enum
from dataclasses import dataclass, field
from typing import Any

from acme_ca.errors import AcmeError, Identifier

__all__ = [
    "Account",
    "AccountStatus",
    "Authorization",
    "AuthzStatus",
    "Certificate",
    "Challenge",
    "ChallengeStatus",
    "ChallengeType",
    "Identifier",
    "IdentifierType",
    "Order",
    "OrderStatus",
    "RevocationReason",
]


class IdentifierType(enum.StrEnum):
    DNS = "dns"
    IP = "ip"


class AccountStatus(enum.StrEnum):
    VALID = "valid"
    DEACTIVATED = "deactivated"
    REVOKED = "revoked"


class OrderStatus(enum.StrEnum):
    PENDING = "pending"
    READY = "ready"
    PROCESSING = "processing"
    VALID = "valid"
    INVALID = "invalid"


class AuthzStatus(enum.StrEnum):
    PENDING = "pending"
    VALID = "valid"
    INVALID = "invalid"
    DEACTIVATED = "deactivated"
    EXPIRED = "expired"
    REVOKED = "revoked"


class ChallengeStatus(enum.StrEnum):
    PENDING = "pending"
    PROCESSING = "processing"
    VALID = "valid"
    INVALID = "invalid"


class ChallengeType(enum.StrEnum):
    HTTP_01 = "http-01"
    DNS_01 = "dns-01"
    TLS_ALPN_01 = "tls-alpn-01"


class RevocationReason(enum.IntEnum):
    """RFC 5280 §5.3.1 CRLReason codes (7 is unused)."""

    UNSPECIFIED = 0
    KEY_COMPROMISE = 1
    CA_COMPROMISE = 2
    AFFILIATION_CHANGED = 3
    SUPERSEDED = 4
    CESSATION_OF_OPERATION = 5
    CERTIFICATE_HOLD = 6
    REMOVE_FROM_CRL = 8
    PRIVILEGE_WITHDRAWN = 9
    AA_COMPROMISE = 10


@dataclass(frozen=True, slots=True, kw_only=True)
class Account:
    id: str
    status: AccountStatus
    jwk: dict[str, Any]
    """The account's public key as a JWK (RFC 7517), public members only."""
    thumbprint: str
    """RFC 7638 thumbprint of `jwk`, base64url; unique across accounts."""
    contact: tuple[str, ...] = ()
    tos_agreed: bool = False
    tos_agreed_url: str | None = None
    """The terms-of-service URL the account last agreed to (RFC 8555 §7.3.3); None for
    accounts from before it was recorded (migration 0004)."""
    created_at: dt.datetime
    eab_kid: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Challenge:
    id: str
    authz_id: str
    type: ChallengeType
    token: str
    status: ChallengeStatus
    validated: dt.datetime | None = None
    error: AcmeError | None = None
    validation_record: tuple[dict[str, Any], ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Authorization:
    id: str
    account_id: str
    identifier: Identifier
    status: AuthzStatus
    expires: dt.datetime
    wildcard: bool = False
    challenges: tuple[Challenge, ...] = ()
    created_at: dt.datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class Order:
    id: str
    account_id: str
    status: OrderStatus
    identifiers: tuple[Identifier, ...]
    authz_ids: tuple[str, ...]
    expires: dt.datetime
    not_before: dt.datetime | None = None
    not_after: dt.datetime | None = None
    error: AcmeError | None = None
    certificate_id: str | None = None
    profile: str | None = None
    replaces: str | None = None
    created_at: dt.datetime
    csr_der: bytes | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class Certificate:
    id: str
    serial: str
    """Lower-case hex, no leading zeros stripped beyond what `format(n, 'x')` gives."""
    account_id: str
    order_id: str
    identifiers: tuple[Identifier, ...]
    pem_chains: tuple[str, ...] = field(repr=False)
    """The leaf plus issuer chain in PEM; the first is the default, the rest alternates."""
    spki_sha256: str
    not_before: dt.datetime
    not_after: dt.datetime
    issued_at: dt.datetime
    revoked_at: dt.datetime | None = None
    revocation_reason: RevocationReason | None = None
