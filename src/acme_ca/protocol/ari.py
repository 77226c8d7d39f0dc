"""ACME Renewal Information (RFC 9773): certificate identifiers and the renewalInfo body."""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import re
from dataclasses import dataclass
from typing import Any

from acme_ca.errors import malformed
from acme_ca.protocol.messages import format_rfc3339

__all__ = ["CertId", "format_cert_id", "parse_cert_id", "render_renewal_info"]

_B64URL = re.compile(r"[A-Za-z0-9_-]+", re.ASCII)


@dataclass(frozen=True, slots=True, kw_only=True)
class CertId:
    """RFC 9773 §4.1: the AKI keyIdentifier and the serial of one certificate."""

    key_identifier: bytes
    serial: int

    def __str__(self) -> str:
        return format_cert_id(self.key_identifier, self.serial)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _serial_bytes(serial: int) -> bytes:
    # The DER INTEGER contents: big-endian two's complement, minimal (a 0x00 lead
    # when the top bit is set), as in `openssl x509 -serial` plus that sign octet.
    return serial.to_bytes(serial.bit_length() // 8 + 1, "big", signed=True)


def format_cert_id(key_identifier: bytes, serial: int) -> str:
    return f"{_b64url(key_identifier)}.{_b64url(_serial_bytes(serial))}"


def _decode(part: str, what: str) -> bytes:
    # RFC 9773 §4.1: base64url without padding (RFC 4648 §5).
    if not _B64URL.fullmatch(part) or len(part) % 4 == 1:
        raise malformed(f"certID {what} is not unpadded base64url")
    try:
        return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
    except (binascii.Error, ValueError):
        raise malformed(f"certID {what} is not unpadded base64url") from None


def parse_cert_id(text: str) -> CertId:
    """`base64url(AKI keyIdentifier) "." base64url(serial DER contents)`; else malformed."""
    aki_part, dot, serial_part = text.partition(".")
    if not dot or not aki_part or not serial_part:
        raise malformed("certID must be two base64url parts joined by '.' (RFC 9773 §4.1)")
    key_identifier = _decode(aki_part, "keyIdentifier")
    serial_der = _decode(serial_part, "serial")
    serial = int.from_bytes(serial_der, "big", signed=True)
    if serial <= 0:
        raise malformed("certID serial must be a positive integer")
    if _serial_bytes(serial) != serial_der:
        # One certificate, one certID: refuse non-minimal encodings.
        raise malformed("certID serial is not in minimal DER form")
    return CertId(key_identifier=key_identifier, serial=serial)


def render_renewal_info(
    start: dt.datetime, end: dt.datetime, *, explanation_url: str | None = None
) -> dict[str, Any]:
    """RFC 9773 §4.2 response body."""
    body: dict[str, Any] = {
        "suggestedWindow": {"start": format_rfc3339(start), "end": format_rfc3339(end)}
    }
    if explanation_url:
        body["explanationURL"] = explanation_url
    return body
