"""Validation authority: checks ACME challenges (RFC 8555 §8) against the network.

A pure function from a `ValidationRequest` to a `ValidationResult`: no
database, no state between calls, and failures are returned, never raised.
Imports only `errors`, `model` and `clock`; never storage, ca, ra, wfe or
protocol (the caller computes the key authorization).
"""

from acme_ca.va.address_guard import is_public_address
from acme_ca.va.authority import ValidationAuthority
from acme_ca.va.dns01 import dns01_txt_value
from acme_ca.va.resolver import DnsResolver, Resolver
from acme_ca.va.tlsalpn01 import ACME_TLS_1, ID_PE_ACME_IDENTIFIER, acme_identifier_value
from acme_ca.va.types import VAConfig, ValidationRequest, ValidationResult

__all__ = [
    "ValidationAuthority",
    "ValidationRequest",
    "ValidationResult",
    "VAConfig",
    "Resolver",
    "DnsResolver",
    "is_public_address",
    "dns01_txt_value",
    "acme_identifier_value",
    "ACME_TLS_1",
    "ID_PE_ACME_IDENTIFIER",
]
