"""Typed request payloads with explicit parse functions (RFC 8555 §7).

Unknown members are ignored (RFC 8555 §7.1 allows extension), wrong types are
`malformed`.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import Any

from acme_ca.errors import AcmeError, Identifier, ProblemType, malformed
from acme_ca.protocol.jws import b64url_decode

__all__ = [
    "AccountUpdate",
    "FinalizeRequest",
    "NewAccountRequest",
    "NewOrderRequest",
    "RevokeRequest",
    "parse_account_update",
    "parse_authz_update",
    "parse_finalize",
    "parse_identifier",
    "parse_new_account",
    "parse_new_order",
    "parse_revoke",
    "parse_rfc3339",
    "format_rfc3339",
    "validate_contacts",
]

MAX_CONTACTS = 10
MAX_IDENTIFIERS = 100
# A conservative addr-spec: no quoted local parts, no IP-literal domains, no hfields.
_EMAIL = re.compile(
    r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}@[A-Za-z0-9-]{1,63}(\.[A-Za-z0-9-]{1,63})+$"
)
_RFC3339 = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})", re.ASCII
)
# RFC 9773 §5: `replaces` is a certificate identifier, two base64url parts; the
# bound keeps it within its column (String(255)) on every database.
_REPLACES = re.compile(r"[A-Za-z0-9_-]{1,127}\.[A-Za-z0-9_-]{1,127}", re.ASCII)


@dataclass(frozen=True, slots=True, kw_only=True)
class NewAccountRequest:
    contact: tuple[str, ...] | None
    terms_of_service_agreed: bool
    only_return_existing: bool
    external_account_binding: dict[str, Any] | None


@dataclass(frozen=True, slots=True, kw_only=True)
class AccountUpdate:
    contact: tuple[str, ...] | None
    deactivate: bool
    terms_of_service_agreed: bool | None


@dataclass(frozen=True, slots=True, kw_only=True)
class NewOrderRequest:
    identifiers: tuple[Identifier, ...]
    not_before: dt.datetime | None
    not_after: dt.datetime | None
    profile: str | None
    replaces: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class FinalizeRequest:
    csr_der: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class RevokeRequest:
    certificate_der: bytes
    reason: int | None


def _opt(payload: dict[str, Any], name: str, kind: type | tuple[type, ...]) -> Any:
    value = payload.get(name)
    if value is None:
        return None
    # bool is an int subclass: refuse it where an int is expected.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise malformed(f"Field {name!r} has the wrong type")
    return value


def validate_contacts(contacts: Any) -> tuple[str, ...]:
    """RFC 8555 §7.3: contact URLs; only `mailto:` is supported here."""
    if not isinstance(contacts, list) or not all(isinstance(c, str) for c in contacts):
        raise malformed("Field 'contact' must be an array of strings")
    if len(contacts) > MAX_CONTACTS:
        raise AcmeError(type=ProblemType.INVALID_CONTACT, detail="Too many contacts")
    for contact in contacts:
        scheme, sep, address = contact.partition(":")
        if not sep or scheme.lower() != "mailto":
            raise AcmeError(
                type=ProblemType.UNSUPPORTED_CONTACT,
                detail=f"Contact {contact!r} is not a mailto: URL",
            )
        if "?" in address or "," in address or not _EMAIL.fullmatch(address):
            raise AcmeError(
                type=ProblemType.INVALID_CONTACT,
                detail=f"Contact {contact!r} is not a valid email address",
            )
    return tuple(contacts)


def parse_new_account(payload: dict[str, Any]) -> NewAccountRequest:
    contact = payload.get("contact")
    return NewAccountRequest(
        contact=validate_contacts(contact) if contact is not None else None,
        terms_of_service_agreed=bool(_opt(payload, "termsOfServiceAgreed", bool)),
        only_return_existing=bool(_opt(payload, "onlyReturnExisting", bool)),
        external_account_binding=_opt(payload, "externalAccountBinding", dict),
    )


def parse_account_update(payload: dict[str, Any]) -> AccountUpdate:
    # RFC 8555 §7.3.2: the server MUST ignore updates to "status" other than the
    # deactivation of §7.3.6 (a client may post back the account object it holds).
    status = _opt(payload, "status", str)
    contact = payload.get("contact")
    return AccountUpdate(
        contact=validate_contacts(contact) if contact is not None else None,
        deactivate=status == "deactivated",
        terms_of_service_agreed=_opt(payload, "termsOfServiceAgreed", bool),
    )


def parse_authz_update(payload: dict[str, Any]) -> None:
    # RFC 8555 §7.5.2: the only change is deactivation.
    if payload.get("status") != "deactivated":
        raise malformed("Authorization status may only be set to 'deactivated'")


def parse_identifier(value: Any) -> Identifier:
    if not isinstance(value, dict):
        raise malformed("Identifier must be an object")
    id_type = value.get("type")
    id_value = value.get("value")
    if not isinstance(id_type, str) or not isinstance(id_value, str):
        raise malformed("Identifier needs string 'type' and 'value'")
    return Identifier(type=id_type, value=id_value)


def parse_rfc3339(value: Any, *, name: str) -> dt.datetime:
    if not isinstance(value, str):
        raise malformed(f"Field {name!r} must be an RFC 3339 date-time string")
    # RFC 3339 §5.6 `date-time` only: `fromisoformat` alone also takes ISO 8601
    # week dates, basic format and naive times.
    if not _RFC3339.fullmatch(value):
        raise malformed(f"Field {name!r} is not an RFC 3339 date-time with a time zone")
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
        # Near year 1 or 9999 the offset can carry the instant out of range.
        return parsed.astimezone(dt.UTC)
    except (ValueError, OverflowError) as exc:
        raise malformed(f"Field {name!r} is not an RFC 3339 date-time") from exc


def format_rfc3339(value: dt.datetime) -> str:
    # isoformat, not strftime("%Y"), which drops the zero padding of years below 1000.
    utc = value.astimezone(dt.UTC).replace(microsecond=0, tzinfo=None)
    return utc.isoformat(timespec="seconds") + "Z"


def parse_new_order(payload: dict[str, Any]) -> NewOrderRequest:
    identifiers = payload.get("identifiers")
    if not isinstance(identifiers, list) or not identifiers:
        # RFC 8555 §7.4: an array of at least one identifier.
        raise malformed("Field 'identifiers' must be a non-empty array")
    if len(identifiers) > MAX_IDENTIFIERS:
        raise AcmeError(
            type=ProblemType.REJECTED_IDENTIFIER,
            detail=f"An order may contain at most {MAX_IDENTIFIERS} identifiers",
        )
    not_before = payload.get("notBefore")
    not_after = payload.get("notAfter")
    return NewOrderRequest(
        identifiers=tuple(parse_identifier(i) for i in identifiers),
        not_before=parse_rfc3339(not_before, name="notBefore") if not_before is not None else None,
        not_after=parse_rfc3339(not_after, name="notAfter") if not_after is not None else None,
        profile=_opt(payload, "profile", str),
        replaces=_parse_replaces(_opt(payload, "replaces", str)),
    )


def _parse_replaces(value: str | None) -> str | None:
    if value is not None and not _REPLACES.fullmatch(value):
        raise malformed("Field 'replaces' is not an ARI certificate identifier (RFC 9773 §4.1)")
    return value


def parse_finalize(payload: dict[str, Any]) -> FinalizeRequest:
    csr = payload.get("csr")
    if not isinstance(csr, str) or not csr:
        raise malformed("Field 'csr' must be a base64url string")
    try:
        der = b64url_decode(csr, what="CSR")
    except AcmeError as exc:
        raise AcmeError(type=ProblemType.BAD_CSR, detail=exc.detail) from exc
    return FinalizeRequest(csr_der=der)


def parse_revoke(payload: dict[str, Any]) -> RevokeRequest:
    cert = payload.get("certificate")
    if not isinstance(cert, str) or not cert:
        raise malformed("Field 'certificate' must be a base64url string")
    return RevokeRequest(
        certificate_der=b64url_decode(cert, what="certificate"),
        reason=_opt(payload, "reason", int),
    )
