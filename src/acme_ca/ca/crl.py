"""Certificate revocation lists (RFC 5280 §5), sharded Let's Encrypt style.

A certificate's shard is derived from its serial (`shard_of`); the shard's URL is
both the certificate's CRL distribution point and the CRL's issuing distribution
point, so a relying party finds, and OpenSSL accepts, exactly one CRL per
certificate. This module signs and returns DER; it reads and stores nothing.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from acme_ca.ca.bootstrap import IssuerKey, authority_key_identifier, signature_hash
from acme_ca.model import RevocationReason

__all__ = [
    "ISSUER_PLACEHOLDER",
    "SHARD_PLACEHOLDER",
    "RevokedEntry",
    "build_crl",
    "crl_number",
    "fill_url",
    "issuer_id",
    "reason_flag",
    "shard_of",
]

# URL templates name the issuer and the shard with these; `fill_url` substitutes them.
ISSUER_PLACEHOLDER = "{issuer}"
SHARD_PLACEHOLDER = "{shard}"

_REASON_FLAGS: dict[RevocationReason, x509.ReasonFlags] = {
    RevocationReason.UNSPECIFIED: x509.ReasonFlags.unspecified,
    RevocationReason.KEY_COMPROMISE: x509.ReasonFlags.key_compromise,
    RevocationReason.CA_COMPROMISE: x509.ReasonFlags.ca_compromise,
    RevocationReason.AFFILIATION_CHANGED: x509.ReasonFlags.affiliation_changed,
    RevocationReason.SUPERSEDED: x509.ReasonFlags.superseded,
    RevocationReason.CESSATION_OF_OPERATION: x509.ReasonFlags.cessation_of_operation,
    RevocationReason.CERTIFICATE_HOLD: x509.ReasonFlags.certificate_hold,
    RevocationReason.REMOVE_FROM_CRL: x509.ReasonFlags.remove_from_crl,
    RevocationReason.PRIVILEGE_WITHDRAWN: x509.ReasonFlags.privilege_withdrawn,
    RevocationReason.AA_COMPROMISE: x509.ReasonFlags.aa_compromise,
}


@dataclass(frozen=True, slots=True, kw_only=True)
class RevokedEntry:
    serial: int
    revoked_at: dt.datetime
    reason: RevocationReason


def reason_flag(reason: RevocationReason) -> x509.ReasonFlags:
    return _REASON_FLAGS[reason]


def issuer_id(issuer: x509.Certificate) -> str:
    """A short, stable name for an issuing key: 16 hex digits of SHA-256 over its SPKI.

    The X1 and X2 intermediates share subject and key, hence one id and one CRL.
    """
    spki = issuer.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(spki).hexdigest()[:16]


def shard_of(serial: int, shards: int) -> int:
    """The shard a serial belongs to. Serials are random, so shards fill evenly.

    Changing the shard count moves certificates between shards while their CRL
    distribution points keep naming the old one: keep it fixed for a CA's life.
    """
    if shards < 1:
        raise ValueError("the shard count must be at least 1")
    return serial % shards


def fill_url(template: str, *, issuer: str, shard: int | None = None) -> str:
    url = template.replace(ISSUER_PLACEHOLDER, issuer)
    if shard is not None:
        url = url.replace(SHARD_PLACEHOLDER, str(shard))
    return url


def crl_number(this_update: dt.datetime) -> int:
    """RFC 5280 §5.2.3 wants increasing numbers per CRL scope; like Boulder, take the
    time in microseconds, so that processes sharing no state still increase it."""
    return int(this_update.timestamp() * 1_000_000)


def build_crl(
    *,
    issuer: x509.Certificate,
    issuer_key: IssuerKey,
    entries: Iterable[RevokedEntry],
    this_update: dt.datetime,
    next_update: dt.datetime,
    shard_url: str,
    number: int | None = None,
) -> bytes:
    """One signed shard, DER. `entries` must already be this shard's revoked serials."""
    if next_update <= this_update:
        raise ValueError("nextUpdate must be later than thisUpdate")
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer.subject)
        .last_update(this_update)
        .next_update(next_update)
        # RFC 5280 §5.2.1: conforming CRLs carry the AKI.
        .add_extension(authority_key_identifier(issuer), critical=False)
        .add_extension(
            x509.CRLNumber(number if number is not None else crl_number(this_update)),
            critical=False,
        )
        # RFC 5280 §5.2.5: the IDP is critical; it scopes this CRL to one shard of leaves.
        .add_extension(
            x509.IssuingDistributionPoint(
                full_name=[x509.UniformResourceIdentifier(shard_url)],
                relative_name=None,
                only_contains_user_certs=True,
                only_contains_ca_certs=False,
                only_some_reasons=None,
                indirect_crl=False,
                only_contains_attribute_certs=False,
            ),
            critical=True,
        )
    )
    for entry in sorted(entries, key=lambda e: e.serial):
        revoked = (
            x509.RevokedCertificateBuilder()
            .serial_number(entry.serial)
            .revocation_date(entry.revoked_at)
        )
        # RFC 5280 §5.3.1: omit reasonCode rather than say "unspecified".
        if entry.reason != RevocationReason.UNSPECIFIED:
            revoked = revoked.add_extension(
                x509.CRLReason(reason_flag(entry.reason)), critical=False
            )
        builder = builder.add_revoked_certificate(revoked.build())
    crl = builder.sign(issuer_key, signature_hash(issuer_key))
    return crl.public_bytes(serialization.Encoding.DER)
