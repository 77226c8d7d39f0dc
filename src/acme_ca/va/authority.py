"""The validation authority: one call from a validation request to a result.

Dispatches by challenge type, bounds the whole validation in time, and turns
every failure, expected or not, into `ValidationResult.error`: `validate`
never raises (except to let the caller's own cancellation through). No
database and no state between calls.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
from typing import Any

from acme_ca.errors import AcmeError, Identifier, ProblemType
from acme_ca.model import ChallengeType, IdentifierType
from acme_ca.va.caa import CaaChecker
from acme_ca.va.dns01 import validate_dns01
from acme_ca.va.http01 import validate_http01
from acme_ca.va.resolver import DnsResolver, Resolver
from acme_ca.va.tlsalpn01 import validate_tlsalpn01
from acme_ca.va.types import VAConfig, ValidationRequest, ValidationResult

_log = logging.getLogger(__name__)

# RFC 8555 §8.1: a token is base64url without padding; anything else would
# change the http-01 path.
_TOKEN = re.compile(r"^[A-Za-z0-9_-]{1,256}$")


def _malformed(detail: str) -> AcmeError:
    return AcmeError(type=ProblemType.MALFORMED, detail=detail)


def _request_problem(request: ValidationRequest) -> AcmeError | None:
    """Caller bugs caught before any network traffic."""
    if not _TOKEN.match(request.token):
        return _malformed("The challenge token is not base64url")
    if not request.key_authorization.startswith(request.token + "."):
        return _malformed("The key authorization does not belong to the challenge token")
    identifier = request.identifier
    if identifier.type == IdentifierType.IP:
        try:
            ipaddress.ip_address(identifier.value)
        except ValueError:
            return _malformed(f"{identifier.value!r} is not an IP address")
        return None
    if identifier.type != IdentifierType.DNS:
        return AcmeError(
            type=ProblemType.UNSUPPORTED_IDENTIFIER,
            detail=f"Identifier type {identifier.type!r} cannot be validated",
        )
    if not identifier.value or not identifier.value.isascii() or "*" in identifier.value:
        # The caller strips a wildcard's "*." and converts IDNs to A-labels.
        return _malformed(f"{identifier.value!r} is not a DNS name that can be validated")
    return None


class ValidationAuthority:
    """Validates ACME challenges (RFC 8555 §8) against the live network."""

    def __init__(self, config: VAConfig, resolver: Resolver | None = None) -> None:
        self._config = config
        self._resolver: Resolver = resolver if resolver is not None else DnsResolver(config)
        self._caa = CaaChecker(self._resolver, config.caa_identities)

    @property
    def config(self) -> VAConfig:
        return self._config

    async def check_caa(
        self, identifier: Identifier, *, account_uri: str, method: str, wildcard: bool
    ) -> AcmeError | None:
        """CAA for one identifier (RFC 8659, RFC 8657); None when issuance is permitted."""
        try:
            async with asyncio.timeout(self._config.total_timeout):
                return await self._caa.check_caa(
                    identifier, account_uri=account_uri, method=method, wildcard=wildcard
                )
        except TimeoutError:
            # A lookup that never finished is a DNS problem, not a CAA refusal.
            return AcmeError(
                type=ProblemType.DNS, detail=f"CAA lookup for {identifier.value} timed out"
            )

    async def validate(self, request: ValidationRequest) -> ValidationResult:
        """Validate one challenge; `error is None` in the result means valid. Never raises."""
        records: list[dict[str, Any]] = []
        error: AcmeError | None
        try:
            error = _request_problem(request)
            if error is None:
                async with asyncio.timeout(self._config.total_timeout):
                    error = await self._dispatch(request, records)
        except AcmeError as exc:
            error = exc
        except TimeoutError:
            error = AcmeError(
                type=ProblemType.CONNECTION,
                detail=(
                    f"Timeout: the {request.challenge_type} validation did not complete "
                    f"within {self._config.total_timeout:g} seconds"
                ),
            )
        except Exception:
            # Logged here with its traceback; the result says nothing internal.
            _log.exception(
                "unexpected error during %s validation of %s",
                request.challenge_type,
                request.identifier.value,
            )
            error = AcmeError(
                type=ProblemType.SERVER_INTERNAL,
                detail="An internal error occurred while validating the challenge",
            )
        return ValidationResult(records=tuple(dict(r) for r in records), error=error)

    async def _dispatch(
        self, request: ValidationRequest, records: list[dict[str, Any]]
    ) -> AcmeError | None:
        match request.challenge_type:
            case ChallengeType.HTTP_01:
                return await validate_http01(
                    request, config=self._config, resolver=self._resolver, records=records
                )
            case ChallengeType.DNS_01:
                return await validate_dns01(request, resolver=self._resolver, records=records)
            case ChallengeType.TLS_ALPN_01:
                return await validate_tlsalpn01(
                    request, config=self._config, resolver=self._resolver, records=records
                )
        return _malformed(f"Unknown challenge type {request.challenge_type!r}")
