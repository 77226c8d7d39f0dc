"""The ACME error vocabulary and the one internal error type.

Bottom floor: imports nothing from the project. Any layer raises `AcmeError`;
only the web front end renders it as an RFC 7807 problem document.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

_PREFIX = "urn:ietf:params:acme:error:"


class ProblemType(enum.StrEnum):
    """RFC 8555 §6.7 error types (plus RFC 8555 §7.3.4, RFC 9773 and draft profiles)."""

    ACCOUNT_DOES_NOT_EXIST = _PREFIX + "accountDoesNotExist"
    ALREADY_REPLACED = _PREFIX + "alreadyReplaced"
    ALREADY_REVOKED = _PREFIX + "alreadyRevoked"
    BAD_CSR = _PREFIX + "badCSR"
    BAD_NONCE = _PREFIX + "badNonce"
    BAD_PUBLIC_KEY = _PREFIX + "badPublicKey"
    BAD_REVOCATION_REASON = _PREFIX + "badRevocationReason"
    BAD_SIGNATURE_ALGORITHM = _PREFIX + "badSignatureAlgorithm"
    CAA = _PREFIX + "caa"
    COMPOUND = _PREFIX + "compound"
    CONNECTION = _PREFIX + "connection"
    DNS = _PREFIX + "dns"
    EXTERNAL_ACCOUNT_REQUIRED = _PREFIX + "externalAccountRequired"
    INCORRECT_RESPONSE = _PREFIX + "incorrectResponse"
    INVALID_CONTACT = _PREFIX + "invalidContact"
    INVALID_PROFILE = _PREFIX + "invalidProfile"
    MALFORMED = _PREFIX + "malformed"
    ORDER_NOT_READY = _PREFIX + "orderNotReady"
    RATE_LIMITED = _PREFIX + "rateLimited"
    REJECTED_IDENTIFIER = _PREFIX + "rejectedIdentifier"
    SERVER_INTERNAL = _PREFIX + "serverInternal"
    TLS = _PREFIX + "tls"
    UNAUTHORIZED = _PREFIX + "unauthorized"
    UNSUPPORTED_CONTACT = _PREFIX + "unsupportedContact"
    UNSUPPORTED_IDENTIFIER = _PREFIX + "unsupportedIdentifier"
    USER_ACTION_REQUIRED = _PREFIX + "userActionRequired"
    # No ACME type of their own: rendered as `malformed` with their HTTP status.
    NOT_FOUND = "about:blank#notFound"
    METHOD_NOT_ALLOWED = "about:blank#methodNotAllowed"
    CONFLICT = "about:blank#conflict"


# RFC 8555 §6.7 leaves statuses to the server; these follow Boulder and Pebble.
_STATUS: dict[ProblemType, int] = {
    ProblemType.ACCOUNT_DOES_NOT_EXIST: 400,
    ProblemType.ALREADY_REPLACED: 409,
    ProblemType.ALREADY_REVOKED: 400,
    ProblemType.BAD_CSR: 400,
    ProblemType.BAD_NONCE: 400,
    ProblemType.BAD_PUBLIC_KEY: 400,
    ProblemType.BAD_REVOCATION_REASON: 400,
    ProblemType.BAD_SIGNATURE_ALGORITHM: 400,
    ProblemType.CAA: 403,
    ProblemType.COMPOUND: 400,
    ProblemType.CONNECTION: 400,
    ProblemType.DNS: 400,
    ProblemType.EXTERNAL_ACCOUNT_REQUIRED: 400,
    ProblemType.INCORRECT_RESPONSE: 403,
    ProblemType.INVALID_CONTACT: 400,
    ProblemType.INVALID_PROFILE: 400,
    ProblemType.MALFORMED: 400,
    ProblemType.ORDER_NOT_READY: 403,
    ProblemType.RATE_LIMITED: 429,
    ProblemType.REJECTED_IDENTIFIER: 400,
    ProblemType.SERVER_INTERNAL: 500,
    ProblemType.TLS: 400,
    ProblemType.UNAUTHORIZED: 403,
    ProblemType.UNSUPPORTED_CONTACT: 400,
    ProblemType.UNSUPPORTED_IDENTIFIER: 400,
    ProblemType.USER_ACTION_REQUIRED: 403,
    ProblemType.NOT_FOUND: 404,
    ProblemType.METHOD_NOT_ALLOWED: 405,
    ProblemType.CONFLICT: 409,
}


@dataclass(frozen=True, slots=True, kw_only=True)
class Identifier:
    """An ACME identifier (RFC 8555 §7.1.3, RFC 8738)."""

    type: str
    value: str


@dataclass(frozen=True, slots=True, kw_only=True)
class SubProblem:
    """One failing identifier inside a compound problem (RFC 8555 §6.7.1)."""

    type: ProblemType
    detail: str
    identifier: Identifier | None = None


@dataclass(slots=True, kw_only=True)
class AcmeError(Exception):
    """The one internal error; the front end renders it as a problem document."""

    type: ProblemType
    detail: str
    subproblems: Sequence[SubProblem] = field(default_factory=tuple)
    status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    """Extra problem members, e.g. `algorithms` for badSignatureAlgorithm (RFC 8555 §6.2)."""

    def __post_init__(self) -> None:
        Exception.__init__(self, f"{self.type}: {self.detail}")

    @property
    def http_status(self) -> int:
        return self.status if self.status is not None else _STATUS[self.type]

    def __str__(self) -> str:
        return f"{self.type.rsplit(':', 1)[-1]}: {self.detail}"


def malformed(detail: str) -> AcmeError:
    return AcmeError(type=ProblemType.MALFORMED, detail=detail)


def unauthorized(detail: str) -> AcmeError:
    return AcmeError(type=ProblemType.UNAUTHORIZED, detail=detail)


def account_not_valid(status: str = "deactivated") -> AcmeError:
    """A request of an account that is no longer valid.

    RFC 8555 §7.3.6: 401 with type unauthorized (as ZeroSSL; Boulder and Pebble send 403,
    and every client tested reads the type, not the status).
    """
    return AcmeError(type=ProblemType.UNAUTHORIZED, detail=f"Account is {status}", status=401)


def not_found(detail: str = "Resource not found") -> AcmeError:
    return AcmeError(type=ProblemType.NOT_FOUND, detail=detail)


def server_internal(detail: str = "An internal error occurred") -> AcmeError:
    return AcmeError(type=ProblemType.SERVER_INTERNAL, detail=detail)
