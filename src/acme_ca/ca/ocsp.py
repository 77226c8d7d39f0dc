"""The OCSP responder's signing core (RFC 6960): the delegated signer and its answers.

Responses are signed by a delegated OCSP signing certificate that the
intermediate issues (EKU id-kp-OCSPSigning, id-pkix-ocsp-nocheck, RFC 6960
§4.2.2.2), kept as ocsp.pem / ocsp-key.pem in the data directory and re-issued
when it nears expiry, so the intermediate's key signs nothing per request. This
module parses requests and signs answers; it looks up no status itself.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from acme_ca.ca.bootstrap import (
    INTERMEDIATE_CERT,
    INTERMEDIATE_KEY,
    IssuerKey,
    _write_cert,
    _write_key,
    authority_key_identifier,
    generate_key,
    leaf_key_usage,
    signature_hash,
)
from acme_ca.ca.crl import reason_flag
from acme_ca.clock import Clock
from acme_ca.model import RevocationReason

__all__ = [
    "OCSP_CERT",
    "OCSP_KEY",
    "CertStatus",
    "OcspQuery",
    "OcspSigner",
    "ensure_ocsp_signer",
    "parse_request",
]

OCSP_CERT = "ocsp.pem"
OCSP_KEY = "ocsp-key.pem"
_LOCK = ".ocsp.lock"
_SIGNER_VALIDITY = dt.timedelta(days=90)
_RENEW_BEFORE = dt.timedelta(days=30)
_BACKDATE = dt.timedelta(hours=1)
# RFC 6960 §4.1.1 CertID hashes that cryptography can answer by hash.
_HASHES: tuple[type[hashes.HashAlgorithm], ...] = (
    hashes.SHA1,
    hashes.SHA224,
    hashes.SHA256,
    hashes.SHA384,
    hashes.SHA512,
)

CertStatus = ocsp.OCSPCertStatus


@dataclass(frozen=True, slots=True, kw_only=True)
class OcspQuery:
    """One single-certificate request (RFC 6960 §4.1.1; RFC 5019 §2.1.1 allows one)."""

    serial: int
    hash_algorithm: hashes.HashAlgorithm
    issuer_name_hash: bytes
    issuer_key_hash: bytes
    nonce: bytes | None


def parse_request(der: bytes) -> OcspQuery:
    """Raise ValueError unless `der` is an OCSPRequest for one certificate."""
    try:
        request = ocsp.load_der_ocsp_request(der)
        algorithm = request.hash_algorithm
        serial = request.serial_number
    except (ValueError, x509.UnsupportedGeneralNameType) as exc:
        raise ValueError(f"not an OCSP request: {exc}") from exc
    try:
        nonce: bytes | None = request.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce
    except x509.ExtensionNotFound:
        nonce = None
    return OcspQuery(
        serial=serial,
        hash_algorithm=algorithm,
        issuer_name_hash=request.issuer_name_hash,
        issuer_key_hash=request.issuer_key_hash,
        nonce=nonce,
    )


def _key_bits(issuer: x509.Certificate) -> bytes:
    """The subjectPublicKey BIT STRING contents: what RFC 6960 §4.1.1 hashes."""
    public = issuer.public_key()
    if isinstance(public, ec.EllipticCurvePublicKey):
        return public.public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
    if isinstance(public, rsa.RSAPublicKey):
        return public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.PKCS1)
    raise ValueError("unsupported issuer key type")


def _digest(algorithm: hashes.HashAlgorithm, data: bytes) -> bytes:
    h = hashes.Hash(algorithm)
    h.update(data)
    return h.finalize()


class OcspSigner:
    """Answers for one issuer with its delegated responder certificate."""

    def __init__(self, *, issuer: x509.Certificate, cert: x509.Certificate, key: IssuerKey) -> None:
        """Raise ValueError (or InvalidSignature) unless `issuer` issued `cert` for `key`."""
        cert.verify_directly_issued_by(issuer)
        if cert.public_key() != key.public_key():
            raise ValueError("the OCSP signing key does not match its certificate")
        self._issuer = issuer
        self._cert = cert
        self._key = key
        self._hash = signature_hash(key)
        name_der = issuer.subject.public_bytes()
        key_bits = _key_bits(issuer)
        self._issuer_hashes = {
            algorithm().name: (_digest(algorithm(), name_der), _digest(algorithm(), key_bits))
            for algorithm in _HASHES
        }

    @classmethod
    def load(cls, data_dir: Path) -> OcspSigner:
        issuer = x509.load_pem_x509_certificates((data_dir / INTERMEDIATE_CERT).read_bytes())[0]
        cert = x509.load_pem_x509_certificate((data_dir / OCSP_CERT).read_bytes())
        key = serialization.load_pem_private_key((data_dir / OCSP_KEY).read_bytes(), password=None)
        if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
            raise ValueError(f"{data_dir / OCSP_KEY}: unsupported key type")
        return cls(issuer=issuer, cert=cert, key=key)

    @property
    def certificate(self) -> x509.Certificate:
        return self._cert

    @property
    def issuer(self) -> x509.Certificate:
        return self._issuer

    def knows_issuer(self, query: OcspQuery) -> bool:
        expected = self._issuer_hashes.get(query.hash_algorithm.name)
        return expected == (query.issuer_name_hash, query.issuer_key_hash)

    def sign(
        self,
        query: OcspQuery,
        *,
        status: ocsp.OCSPCertStatus,
        this_update: dt.datetime,
        next_update: dt.datetime,
        revoked_at: dt.datetime | None = None,
        reason: RevocationReason | None = None,
        nonce: bytes | None = None,
    ) -> bytes:
        """A successful BasicOCSPResponse, DER, for the CertID of `query`.

        Precondition: `knows_issuer(query)`. `nonce` is echoed (RFC 8954) when given.
        """
        revoked = status == ocsp.OCSPCertStatus.REVOKED
        if revoked and revoked_at is None:
            raise ValueError("a revoked answer needs the revocation time")
        flag = (
            reason_flag(reason)
            if revoked and reason is not None and reason != RevocationReason.UNSPECIFIED
            else None
        )
        builder = (
            ocsp.OCSPResponseBuilder()
            .add_response_by_hash(
                issuer_name_hash=query.issuer_name_hash,
                issuer_key_hash=query.issuer_key_hash,
                serial_number=query.serial,
                algorithm=query.hash_algorithm,
                cert_status=status,
                this_update=this_update,
                next_update=next_update,
                # RFC 5280 §4.1.2.5.2: GeneralizedTime without fractions.
                revocation_time=(
                    revoked_at.replace(microsecond=0) if revoked and revoked_at else None
                ),
                revocation_reason=flag,
            )
            # RFC 5019 §2.2.3: identify the responder by key hash.
            .responder_id(ocsp.OCSPResponderEncoding.HASH, self._cert)
            .certificates([self._cert])
        )
        if nonce is not None:
            builder = builder.add_extension(x509.OCSPNonce(nonce), critical=False)
        return builder.sign(self._key, self._hash).public_bytes(serialization.Encoding.DER)

    @staticmethod
    def unsuccessful(status: ocsp.OCSPResponseStatus) -> bytes:
        """malformedRequest, unauthorized, ... (RFC 6960 §4.2.1): unsigned, no body."""
        return ocsp.OCSPResponseBuilder.build_unsuccessful(status).public_bytes(
            serialization.Encoding.DER
        )


@contextlib.contextmanager
def _locked(data_dir: Path) -> Iterator[None]:
    # Serve processes on one host may start together: one creates, the others wait.
    with (data_dir / _LOCK).open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _current(data_dir: Path, now: dt.datetime) -> bool:
    try:
        signer = OcspSigner.load(data_dir)
    except (OSError, ValueError, TypeError, InvalidSignature):
        return False
    return signer.certificate.not_valid_after_utc - now > _RENEW_BEFORE


def ensure_ocsp_signer(data_dir: Path, *, clock: Clock) -> bool:
    """Issue ocsp.pem unless a current one exists; return whether it was (re)issued.

    Re-issued when missing, when its key does not match, when the intermediate
    changed, or when fewer than 30 days of its validity remain.
    """
    issuer = x509.load_pem_x509_certificates((data_dir / INTERMEDIATE_CERT).read_bytes())[0]
    with _locked(data_dir):
        now = clock.now()
        if _current(data_dir, now):
            return False
        issuer_key = serialization.load_pem_private_key(
            (data_dir / INTERMEDIATE_KEY).read_bytes(), password=None
        )
        if not isinstance(issuer_key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
            raise ValueError(f"{data_dir / INTERMEDIATE_KEY}: unsupported issuer key type")
        key = generate_key("rsa2048" if isinstance(issuer_key, rsa.RSAPrivateKey) else "p256")
        cert = _issue_signer(issuer, issuer_key, key, now)
        # Key first: a reader that sees the new certificate also finds its key.
        _write_key(data_dir / OCSP_KEY, key)
        _write_cert(data_dir / OCSP_CERT, [cert])
        return True


def _issue_signer(
    issuer: x509.Certificate, issuer_key: IssuerKey, key: IssuerKey, now: dt.datetime
) -> x509.Certificate:
    cns = issuer.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    base = str(cns[0].value) if cns else "acme-ca"
    public = key.public_key()
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{base} OCSP")]))
        .issuer_name(issuer.subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(min(now + _SIGNER_VALIDITY, issuer.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(leaf_key_usage(key_encipherment=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.OCSP_SIGNING]), critical=False)
        # RFC 6960 §4.2.2.2.1: relying parties need not check this certificate's status.
        .add_extension(x509.OCSPNoCheck(), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(authority_key_identifier(issuer), critical=False)
        .sign(issuer_key, signature_hash(issuer_key))
    )
