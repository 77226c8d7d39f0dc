"""dns-01 validation (RFC 8555 §8.4).

Looks up the TXT records at `_acme-challenge.<domain>` through the VA's
resolver; one must equal base64url(SHA-256(key authorization)). Not defined
for IP identifiers (RFC 8738 §7).
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

from acme_ca.errors import AcmeError, ProblemType
from acme_ca.model import IdentifierType
from acme_ca.va.resolver import Resolver
from acme_ca.va.types import ValidationRequest


def dns01_txt_value(key_authorization: str) -> str:
    """The TXT value proving `key_authorization`: base64url of its SHA-256, unpadded."""
    digest = hashlib.sha256(key_authorization.encode("utf-8")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


async def validate_dns01(
    request: ValidationRequest,
    *,
    resolver: Resolver,
    records: list[dict[str, Any]],
) -> AcmeError | None:
    """Check a dns-01 challenge; returns None when valid, else the problem.

    Lookup failures are raised by the resolver as `AcmeError(dns)`.
    """
    if request.identifier.type != IdentifierType.DNS:
        return AcmeError(
            type=ProblemType.MALFORMED,
            detail="The dns-01 challenge is only defined for DNS identifiers",
        )
    domain = request.identifier.value.rstrip(".")
    records.append({"hostname": domain})
    name = f"_acme-challenge.{domain}"
    values = await resolver.txt(name)
    expected = dns01_txt_value(request.key_authorization)
    if expected in values:
        return None
    shown = ", ".join(json.dumps(v[:128]) for v in values[:3])
    more = f" and {len(values) - 3} more" if len(values) > 3 else ""
    return AcmeError(
        type=ProblemType.UNAUTHORIZED,
        detail=f"Incorrect TXT record {shown}{more} found at {name}",
    )
