"""The VA's value types: what it is asked, what it answers, and how it is bounded.

Plain frozen data; no I/O. Imports only `errors` and `model`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from acme_ca.errors import AcmeError, Identifier
from acme_ca.model import ChallengeType


@dataclass(frozen=True, slots=True, kw_only=True)
class ValidationRequest:
    """One challenge to check.

    `identifier` is of type "dns" (without a leading "*.": the caller strips the
    wildcard) or "ip". `key_authorization` is `token + "." + thumbprint`
    (RFC 8555 §8.1), computed by the caller.
    """

    challenge_type: ChallengeType
    identifier: Identifier
    token: str
    key_authorization: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ValidationResult:
    """The outcome: `error is None` means the challenge is valid.

    `records` are JSON-serialisable validation records with Boulder's keys
    (url, hostname, port, addressesResolved, addressUsed), one per HTTP hop.
    """

    records: tuple[dict[str, Any], ...]
    error: AcmeError | None

    @property
    def valid(self) -> bool:
        return self.error is None


@dataclass(frozen=True, slots=True, kw_only=True)
class VAConfig:
    """Ports, resolver and bounds of the VA.

    `http01_port` and `tlsalpn01_port` are where the VA connects for the
    logical ports 80 and 443; tests point them at loopback servers.
    `allow_private_addresses` lets the VA reach loopback and private ranges
    (tests and closed deployments only).
    """

    http01_port: int = 80
    tlsalpn01_port: int = 443
    allow_private_addresses: bool = False
    dns_resolver: tuple[str, int] | None = None
    """(host, port) of the recursive resolver; None uses the system's."""
    dns_timeout: float = 5.0
    """Lifetime of one DNS lookup, retries included."""
    dns_cache_max_ttl: float = 60.0
    """Longest time (seconds) a DNS answer is reused, whatever its TTL; 0 disables caching."""
    connect_timeout: float = 5.0
    total_timeout: float = 20.0
    """Bound on one whole validation, every hop and lookup included."""
    max_redirects: int = 10
    max_body_bytes: int = 8192
    """An http-01 body longer than this is refused (a key authorization is ~90 bytes)."""
    max_header_bytes: int = 16384
    """Total size of the response headers of one http-01 hop."""
    max_dns_answers: int = 64
    """Records kept from one DNS answer; the rest are ignored."""
    caa_identities: tuple[str, ...] = ("acme-ca.internal",)
    """Issuer domain names of this CA in CAA `issue` records (RFC 8659 §4.2)."""
