"""The issuer: signs leaf certificates from checked CSRs (RFC 8555 §7.4).

Loads its keys and renders its chains once. It signs and returns; it stores
nothing and decides nothing about who may have a certificate (that is the RA's
job; the CSR is checked by `acme_ca.ca.csr` first).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID, NameOID

from acme_ca.ca import crl
from acme_ca.ca.bootstrap import (
    INTERMEDIATE_CERT,
    INTERMEDIATE_KEY,
    INTERMEDIATE_X2_CERT,
    ROOT_CERT,
    ROOT_X2_CERT,
    IssuerKey,
    authority_key_identifier,
    leaf_key_usage,
    signature_hash,
)
from acme_ca.ca.csr import requests_must_staple
from acme_ca.clock import Clock
from acme_ca.errors import AcmeError, Identifier, ProblemType
from acme_ca.model import IdentifierType
from acme_ca.policy.keys import spki_sha256

__all__ = ["CertificateAuthority", "CertificateProfile", "IssuedCertificate"]

# RFC 5280 §4.1.2.2: serials are positive and at most 20 octets.
_MAX_SERIAL = 1 << 159
# Leaves are backdated to tolerate clients whose clocks run slow (Boulder does the same).
_BACKDATE = dt.timedelta(minutes=1)
# RFC 5280 upper bound (ub-common-name) for the subject CN.
_MAX_CN = 64


@dataclass(frozen=True, slots=True, kw_only=True)
class CertificateProfile:
    """The shape of a leaf certificate."""

    name: str = "classic"
    validity: dt.timedelta = dt.timedelta(days=90)
    client_auth: bool = True
    include_common_name: bool = True
    revocation_pointers: bool = True
    """Whether leaves carry the CRL distribution point and OCSP URL (short-lived: no)."""
    max_names: int = 100
    description: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class IssuedCertificate:
    """A signed leaf. `pem_chains[0]` leads to root.pem; the rest are alternates."""

    der: bytes
    serial: int
    not_before: dt.datetime
    not_after: dt.datetime
    pem_chains: tuple[str, ...]
    spki_sha256: str


class CertificateAuthority:
    """Signs leaves with the intermediate in a data directory made by `acme_ca.ca.bootstrap`."""

    def __init__(
        self,
        *,
        issuer: x509.Certificate,
        issuer_key: IssuerKey,
        chains: Sequence[Sequence[x509.Certificate]],
        roots: Sequence[x509.Certificate],
        clock: Clock,
        issuer_url: str | None = None,
        crl_url: str | None = None,
        ocsp_url: str | None = None,
        crl_shards: int = 1,
    ) -> None:
        """`chains[i]`: the certificates after the leaf in chain i, up to (excluding) `roots[i]`.

        `issuer_url` and `crl_url` may name the issuer as `{issuer}` (`acme_ca.ca.crl.issuer_id`);
        a `crl_url` with `{shard}` gives each leaf its shard's URL (`shard_of(serial, crl_shards)`).
        """
        if spki_sha256(issuer.public_key()) != spki_sha256(issuer_key.public_key()):
            raise ValueError("the issuer key does not match the issuer certificate")
        if not chains or len(chains) != len(roots):
            raise ValueError("one root is needed for each chain, and at least one chain")
        self._issuer = issuer
        self._key = issuer_key
        self._hash = signature_hash(issuer_key)
        self._clock = clock
        self._aki = authority_key_identifier(issuer)
        self._chain_pems = tuple(_pem(chain) for chain in chains)
        self._root_pems = tuple(_pem([root]) for root in roots)
        self._issuer_id = crl.issuer_id(issuer)
        issuer_url = crl.fill_url(issuer_url, issuer=self._issuer_id) if issuer_url else None
        crl_url = crl.fill_url(crl_url, issuer=self._issuer_id) if crl_url else None
        self._crl_shards = crl_shards
        self._sharded_crl_url = crl_url if crl_url and crl.SHARD_PLACEHOLDER in crl_url else None
        if self._sharded_crl_url:
            crl.shard_of(0, crl_shards)  # validates the shard count
            crl_url = None
        self._static_extensions = _static_extensions(issuer_url, ocsp_url, crl_url)
        self._no_revocation_extensions = _static_extensions(issuer_url, None, None)
        self._ocsp_url = ocsp_url

    @classmethod
    def load(
        cls,
        data_dir: Path,
        *,
        clock: Clock,
        issuer_url: str | None = None,
        crl_url: str | None = None,
        ocsp_url: str | None = None,
        crl_shards: int = 1,
    ) -> CertificateAuthority:
        """Load the intermediate, its key and chains; the X2 alternate is optional."""
        chain = x509.load_pem_x509_certificates((data_dir / INTERMEDIATE_CERT).read_bytes())
        key = serialization.load_pem_private_key(
            (data_dir / INTERMEDIATE_KEY).read_bytes(), password=None
        )
        if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
            raise ValueError(f"{data_dir / INTERMEDIATE_KEY}: unsupported issuer key type")
        chains: list[Sequence[x509.Certificate]] = [chain]
        roots = [x509.load_pem_x509_certificate((data_dir / ROOT_CERT).read_bytes())]
        alt_cert, alt_root = data_dir / INTERMEDIATE_X2_CERT, data_dir / ROOT_X2_CERT
        if alt_cert.exists() and alt_root.exists():
            chains.append(x509.load_pem_x509_certificates(alt_cert.read_bytes()))
            roots.append(x509.load_pem_x509_certificate(alt_root.read_bytes()))
        return cls(
            issuer=chain[0],
            issuer_key=key,
            chains=chains,
            roots=roots,
            clock=clock,
            issuer_url=issuer_url,
            crl_url=crl_url,
            ocsp_url=ocsp_url,
            crl_shards=crl_shards,
        )

    @property
    def issuer(self) -> x509.Certificate:
        return self._issuer

    @property
    def issuer_id(self) -> str:
        """The issuer's name in CRL and caIssuers URLs (`acme_ca.ca.crl.issuer_id`)."""
        return self._issuer_id

    @property
    def root_pem(self) -> str:
        """The root of the default chain."""
        return self._root_pems[0]

    @property
    def root_pems(self) -> tuple[str, ...]:
        """One root per chain, in the order of `chain_pems`."""
        return self._root_pems

    @property
    def chain_pems(self) -> tuple[str, ...]:
        """Per chain, the PEM certificates that follow the leaf (root excluded)."""
        return self._chain_pems

    @staticmethod
    def new_serial() -> int:
        """48 bits of the time in milliseconds, then 80 random bits: positive, under 2^128.

        CA/B BR §7.1 asks for at least 64 bits from a CSPRNG and for serials that are not
        sequential; the random 80 make them so. The time comes first so that the unique
        index on serials grows at its right-hand end, as the one on ids does
        (`ra.context.new_id`); the low bits, which pick a CRL shard, are random."""
        return (time.time_ns() // 1_000_000) << 80 | secrets.randbits(80)

    def can_staple(self, profile: CertificateProfile) -> bool:
        """Whether leaves of `profile` name an OCSP responder, so that they can carry
        OCSP Must-Staple (RFC 7633)."""
        return bool(self._ocsp_url) and profile.revocation_pointers

    def check_must_staple(
        self, csr: x509.CertificateSigningRequest, profile: CertificateProfile
    ) -> bool:
        """Whether the CSR asks for OCSP Must-Staple; badCSR if leaves of `profile` could
        not honour it (they name no OCSP responder: every TLS handshake would fail)."""
        if not requests_must_staple(csr):
            return False
        if not self.can_staple(profile):
            raise AcmeError(
                type=ProblemType.BAD_CSR,
                detail="CSR asks for OCSP Must-Staple, but this profile's certificates "
                "name no OCSP responder",
            )
        return True

    def issue(
        self,
        *,
        csr: x509.CertificateSigningRequest,
        identifiers: Sequence[Identifier],
        serial: int,
        not_before: dt.datetime | None = None,
        not_after: dt.datetime | None = None,
        profile: CertificateProfile = CertificateProfile(),  # frozen: a shared default is safe
    ) -> IssuedCertificate:
        """Sign a leaf for `identifiers` with the CSR's key.

        Precondition: the CSR passed `check_csr` for the same identifiers.
        """
        if not 0 < serial < _MAX_SERIAL:
            raise ValueError(f"serial {serial} is outside 1..2^159-1 (RFC 5280 §4.1.2.2)")
        public = csr.public_key()
        if not isinstance(
            public, rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey
        ):
            raise AcmeError(
                type=ProblemType.BAD_PUBLIC_KEY, detail="the CSR's key type cannot be certified"
            )
        sans, subject = _names(identifiers, include_cn=profile.include_common_name)
        start = not_before if not_before is not None else self._clock.now() - _BACKDATE
        end = not_after if not_after is not None else start + profile.validity
        if end > self._issuer.not_valid_after_utc:
            raise AcmeError(
                type=ProblemType.SERVER_INTERNAL,
                detail="the requested notAfter is past the issuing certificate's notAfter",
            )
        if end <= start:
            raise ValueError("notAfter must be later than notBefore")
        ekus = [ExtendedKeyUsageOID.SERVER_AUTH]
        if profile.client_auth:
            ekus.append(ExtendedKeyUsageOID.CLIENT_AUTH)
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self._issuer.subject)
            .public_key(public)
            .serial_number(serial)
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                leaf_key_usage(key_encipherment=isinstance(public, rsa.RSAPublicKey)),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage(ekus), critical=False)
            # RFC 5280 §4.2.1.6: the SAN is critical when the subject is empty.
            .add_extension(x509.SubjectAlternativeName(sans), critical=not subject)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .add_extension(self._aki, critical=False)
        )
        static = (
            self._static_extensions
            if profile.revocation_pointers
            else self._no_revocation_extensions
        )
        for extension in static:
            builder = builder.add_extension(extension, critical=False)
        if self._sharded_crl_url and profile.revocation_pointers:
            shard = crl.shard_of(serial, self._crl_shards)
            url = crl.fill_url(self._sharded_crl_url, issuer=self._issuer_id, shard=shard)
            builder = builder.add_extension(_crl_distribution_points(url), critical=False)
        if self.check_must_staple(csr, profile):
            # RFC 7633 §4.1: the TLS feature status_request, not marked critical.
            builder = builder.add_extension(
                x509.TLSFeature([x509.TLSFeatureType.status_request]), critical=False
            )
        cert = builder.sign(self._key, self._hash)
        leaf_pem = cert.public_bytes(serialization.Encoding.PEM).decode("ascii")
        return IssuedCertificate(
            der=cert.public_bytes(serialization.Encoding.DER),
            serial=serial,
            not_before=cert.not_valid_before_utc,
            not_after=cert.not_valid_after_utc,
            pem_chains=tuple(leaf_pem + chain for chain in self._chain_pems),
            spki_sha256=spki_sha256(public),
        )


def _names(
    identifiers: Sequence[Identifier], *, include_cn: bool
) -> tuple[list[x509.GeneralName], x509.Name]:
    if not identifiers:
        raise ValueError("a certificate needs at least one identifier")
    sans: list[x509.GeneralName] = []
    first_dns: str | None = None
    for ident in identifiers:
        if ident.type == IdentifierType.DNS:
            name = ident.value.lower()
            first_dns = first_dns or name
            sans.append(x509.DNSName(name))
        elif ident.type == IdentifierType.IP:
            sans.append(x509.IPAddress(ipaddress.ip_address(ident.value)))
        else:
            raise AcmeError(
                type=ProblemType.UNSUPPORTED_IDENTIFIER,
                detail=f"identifier type {ident.type!r} cannot be certified",
            )
    if include_cn and first_dns is not None and len(first_dns) <= _MAX_CN:
        return sans, x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, first_dns)])
    return sans, x509.Name([])


def _static_extensions(
    issuer_url: str | None, ocsp_url: str | None, crl_url: str | None
) -> list[x509.ExtensionType]:
    extensions: list[x509.ExtensionType] = []
    access: list[x509.AccessDescription] = []
    if ocsp_url:
        access.append(
            x509.AccessDescription(
                AuthorityInformationAccessOID.OCSP, x509.UniformResourceIdentifier(ocsp_url)
            )
        )
    if issuer_url:
        access.append(
            x509.AccessDescription(
                AuthorityInformationAccessOID.CA_ISSUERS,
                x509.UniformResourceIdentifier(issuer_url),
            )
        )
    if access:
        extensions.append(x509.AuthorityInformationAccess(access))
    if crl_url:
        extensions.append(_crl_distribution_points(crl_url))
    return extensions


def _crl_distribution_points(url: str) -> x509.CRLDistributionPoints:
    point = x509.DistributionPoint(
        full_name=[x509.UniformResourceIdentifier(url)],
        relative_name=None,
        reasons=None,
        crl_issuer=None,
    )
    return x509.CRLDistributionPoints([point])


def _pem(certs: Sequence[x509.Certificate]) -> str:
    return "".join(c.public_bytes(serialization.Encoding.PEM).decode("ascii") for c in certs)
