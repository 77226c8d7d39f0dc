"""Create or import the CA's key material in a data directory.

Files written (PEM): root.pem, root-key.pem, intermediate.pem (the issuing
certificate, then any further chain certificates below the root),
intermediate-key.pem, root-x2.pem, root-x2-key.pem, intermediate-x2.pem (the
same issuing key and subject cross-signed by root X2, for the alternate chain of
RFC 8555 §7.4.2), tls.pem (server leaf + intermediate) and tls-key.pem for the
CA's own HTTPS listener. Private keys are mode 0600; every file is replaced
atomically. This module knows files and keys only: no ACME, no storage.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from acme_ca.clock import Clock

__all__ = [
    "KeyType",
    "IssuerKey",
    "ROOT_CERT",
    "ROOT_KEY",
    "INTERMEDIATE_CERT",
    "INTERMEDIATE_KEY",
    "ROOT_X2_CERT",
    "ROOT_X2_KEY",
    "INTERMEDIATE_X2_CERT",
    "TLS_CERT",
    "TLS_KEY",
    "create_ca",
    "ensure_ca",
    "import_ca",
    "issue_tls_certificate",
    "authority_key_identifier",
    "generate_key",
    "leaf_key_usage",
    "signature_hash",
]

KeyType = Literal["p256", "p384", "rsa2048", "rsa3072", "rsa4096"]
IssuerKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey

ROOT_CERT = "root.pem"
ROOT_KEY = "root-key.pem"
INTERMEDIATE_CERT = "intermediate.pem"
INTERMEDIATE_KEY = "intermediate-key.pem"
ROOT_X2_CERT = "root-x2.pem"
ROOT_X2_KEY = "root-x2-key.pem"
INTERMEDIATE_X2_CERT = "intermediate-x2.pem"
TLS_CERT = "tls.pem"
TLS_KEY = "tls-key.pem"

_ROOT_VALIDITY = dt.timedelta(days=3653)
_INTERMEDIATE_VALIDITY = dt.timedelta(days=1827)
_TLS_VALIDITY = dt.timedelta(days=365)
# CA certificates are backdated so that clients with a slow clock accept them.
_CA_BACKDATE = dt.timedelta(hours=1)
_LEAF_BACKDATE = dt.timedelta(minutes=1)


def generate_key(key_type: KeyType) -> IssuerKey:
    if key_type == "p256":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "p384":
        return ec.generate_private_key(ec.SECP384R1())
    if key_type in get_args(KeyType):
        return rsa.generate_private_key(public_exponent=65537, key_size=int(key_type[3:]))
    raise ValueError(f"unknown key type {key_type!r}; expected one of {get_args(KeyType)}")


def signature_hash(key: IssuerKey) -> hashes.SHA256 | hashes.SHA384 | hashes.SHA512:
    """The hash an issuer signs with: matched to the curve for ECDSA, SHA-256 for RSA."""
    if isinstance(key, ec.EllipticCurvePrivateKey):
        if isinstance(key.curve, ec.SECP384R1):
            return hashes.SHA384()
        if isinstance(key.curve, ec.SECP521R1):
            return hashes.SHA512()
    return hashes.SHA256()


@dataclass(frozen=True, slots=True, kw_only=True)
class _Issuer:
    cert: x509.Certificate
    key: IssuerKey


def create_ca(
    data_dir: Path,
    *,
    clock: Clock,
    key_type: KeyType = "p256",
    name: str = "acme-ca",
    tls_names: Sequence[str] = ("localhost", "127.0.0.1", "::1"),
    overwrite: bool = False,
) -> None:
    """Create root X1, root X2, the intermediate (signed by both) and the TLS certificate.

    Refuses (FileExistsError) to replace an existing root.pem unless `overwrite`.
    """
    if not overwrite and (data_dir / ROOT_CERT).exists():
        raise FileExistsError(f"{data_dir / ROOT_CERT} exists; refusing to replace a CA")
    data_dir.mkdir(parents=True, exist_ok=True)
    now = clock.now()
    org = x509.NameAttribute(NameOID.ORGANIZATION_NAME, name)

    def subject(cn: str) -> x509.Name:
        return x509.Name([org, x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    root = _self_signed(subject(f"{name} Root X1"), generate_key(key_type), now)
    root_x2 = _self_signed(subject(f"{name} Root X2"), generate_key(key_type), now)
    int_key = generate_key(key_type)
    int_subject = subject(f"{name} Intermediate")
    intermediate = _sign_intermediate(int_subject, int_key, root, now)
    # RFC 8555 §7.4.2 alternate chain: same subject and key, issued by another root.
    intermediate_x2 = _sign_intermediate(int_subject, int_key, root_x2, now)

    _write_key(data_dir / ROOT_KEY, root.key)
    _write_cert(data_dir / ROOT_X2_CERT, [root_x2.cert])
    _write_key(data_dir / ROOT_X2_KEY, root_x2.key)
    _write_key(data_dir / INTERMEDIATE_KEY, int_key)
    _write_cert(data_dir / INTERMEDIATE_CERT, [intermediate])
    _write_cert(data_dir / INTERMEDIATE_X2_CERT, [intermediate_x2])
    tls_key_type: KeyType = "p256" if key_type.startswith("p") else "rsa2048"
    _issue_tls(
        data_dir,
        _Issuer(cert=intermediate, key=int_key),
        extra_chain=[],
        now=now,
        names=tls_names,
        key_type=tls_key_type,
    )
    # root.pem last: its presence is what `ensure_ca` takes as "the CA exists".
    _write_cert(data_dir / ROOT_CERT, [root.cert])


def ensure_ca(
    data_dir: Path,
    *,
    clock: Clock,
    key_type: KeyType = "p256",
    name: str = "acme-ca",
    tls_names: Sequence[str] = ("localhost", "127.0.0.1", "::1"),
) -> bool:
    """Create the CA unless root.pem exists; return whether it was created."""
    if (data_dir / ROOT_CERT).exists():
        return False
    create_ca(data_dir, clock=clock, key_type=key_type, name=name, tls_names=tls_names)
    return True


def import_ca(
    data_dir: Path,
    *,
    cert_pem: Path,
    key_pem: Path,
    chain_pem: Path | None,
    clock: Clock,
    tls_names: Sequence[str] = ("localhost", "127.0.0.1", "::1"),
) -> None:
    """Use an existing CA certificate and key as the issuer.

    `cert_pem`'s first certificate issues; `chain_pem` lists the certificates
    above it, ending at the root. root.pem is the chain's last certificate (or the
    CA certificate itself without a chain); the chain's other certificates follow
    the issuer in intermediate.pem. No X2 alternate is written. Raises ValueError
    when the key does not match, the certificate is not a CA, or the chain does
    not link.
    """
    cert = _load_certs(cert_pem)[0]
    key = serialization.load_pem_private_key(key_pem.read_bytes(), password=None)
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise ValueError(f"{key_pem}: only RSA and ECDSA issuer keys are supported")
    if _spki(key.public_key()) != _spki(cert.public_key()):
        raise ValueError(f"{key_pem} is not the private key of the certificate in {cert_pem}")
    _require_ca(cert, cert_pem)
    chain = _load_certs(chain_pem) if chain_pem is not None else []
    for child, parent in zip([cert, *chain], chain, strict=False):
        try:
            child.verify_directly_issued_by(parent)
        except Exception as exc:  # ValueError, TypeError, InvalidSignature
            raise ValueError(
                f"{chain_pem}: {child.subject.rfc4514_string()} is not issued by "
                f"{parent.subject.rfc4514_string()}: {exc or type(exc).__name__}"
            ) from exc
    root = chain[-1] if chain else cert
    data_dir.mkdir(parents=True, exist_ok=True)
    for stale in (ROOT_X2_CERT, ROOT_X2_KEY, INTERMEDIATE_X2_CERT):
        (data_dir / stale).unlink(missing_ok=True)
    _write_key(data_dir / INTERMEDIATE_KEY, key)
    _write_cert(data_dir / INTERMEDIATE_CERT, [cert, *chain[:-1]])
    tls_key_type: KeyType = "rsa2048" if isinstance(key, rsa.RSAPrivateKey) else "p256"
    _issue_tls(
        data_dir,
        _Issuer(cert=cert, key=key),
        extra_chain=chain[:-1],
        now=clock.now(),
        names=tls_names,
        key_type=tls_key_type,
    )
    _write_cert(data_dir / ROOT_CERT, [root])


def issue_tls_certificate(data_dir: Path, *, clock: Clock, names: Sequence[str]) -> None:
    """(Re)issue tls.pem and tls-key.pem from the intermediate in `data_dir`."""
    certs = _load_certs(data_dir / INTERMEDIATE_CERT)
    key = serialization.load_pem_private_key(
        (data_dir / INTERMEDIATE_KEY).read_bytes(), password=None
    )
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise ValueError(f"{data_dir / INTERMEDIATE_KEY}: unsupported issuer key type")
    key_type: KeyType = "rsa2048" if isinstance(key, rsa.RSAPrivateKey) else "p256"
    _issue_tls(
        data_dir,
        _Issuer(cert=certs[0], key=key),
        extra_chain=certs[1:],
        now=clock.now(),
        names=names,
        key_type=key_type,
    )


def _self_signed(subject: x509.Name, key: IssuerKey, now: dt.datetime) -> _Issuer:
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CA_BACKDATE)
        .not_valid_after(now + _ROOT_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
        .add_extension(_ca_key_usage(), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, signature_hash(key))
    )
    return _Issuer(cert=cert, key=key)


def _sign_intermediate(
    subject: x509.Name, key: IssuerKey, parent: _Issuer, now: dt.datetime
) -> x509.Certificate:
    public = key.public_key()
    not_after = min(now + _INTERMEDIATE_VALIDITY, parent.cert.not_valid_after_utc)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(parent.cert.subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CA_BACKDATE)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_ca_key_usage(), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(authority_key_identifier(parent.cert), critical=False)
        .sign(parent.key, signature_hash(parent.key))
    )


def _issue_tls(
    data_dir: Path,
    issuer: _Issuer,
    *,
    extra_chain: Sequence[x509.Certificate],
    now: dt.datetime,
    names: Sequence[str],
    key_type: KeyType,
) -> None:
    if not names:
        raise ValueError("the TLS certificate needs at least one name")
    sans: list[x509.GeneralName] = []
    dns_names: list[str] = []
    for value in names:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(value)))
        except ValueError:
            dns_names.append(value.lower())
            sans.append(x509.DNSName(value.lower()))
    key = generate_key(key_type)
    public = key.public_key()
    subject = x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, dns_names[0])]
        if dns_names and len(dns_names[0]) <= 64
        else []
    )
    not_after = min(now + _TLS_VALIDITY, issuer.cert.not_valid_after_utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.cert.subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _LEAF_BACKDATE)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            leaf_key_usage(key_encipherment=isinstance(key, rsa.RSAPrivateKey)), critical=True
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        # RFC 5280 §4.2.1.6: with an empty subject the SAN extension is critical.
        .add_extension(x509.SubjectAlternativeName(sans), critical=not subject)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(authority_key_identifier(issuer.cert), critical=False)
        .sign(issuer.key, signature_hash(issuer.key))
    )
    _write_key(data_dir / TLS_KEY, key)
    _write_cert(data_dir / TLS_CERT, [cert, issuer.cert, *extra_chain])


def authority_key_identifier(issuer: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    """AKI naming the issuer's SKI when it has one (RFC 5280 §4.2.1.1)."""
    try:
        ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        public = issuer.public_key()
        assert isinstance(public, rsa.RSAPublicKey | ec.EllipticCurvePublicKey)
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(public)
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


def _ca_key_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=True,
        encipher_only=False,
        decipher_only=False,
    )


def leaf_key_usage(*, key_encipherment: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=key_encipherment,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )


def _require_ca(cert: x509.Certificate, source: Path) -> None:
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        constraints = None
    if constraints is None or not constraints.ca:
        raise ValueError(f"{source}: the certificate is not a CA (basicConstraints cA is not set)")
    try:
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return
    if not usage.key_cert_sign:
        raise ValueError(f"{source}: the certificate's key usage does not allow keyCertSign")


def _load_certs(path: Path) -> list[x509.Certificate]:
    certs = x509.load_pem_x509_certificates(path.read_bytes())
    if not certs:
        raise ValueError(f"{path} holds no certificate")
    return certs


def _spki(key: object) -> bytes:
    assert isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey)
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _write_cert(path: Path, certs: Sequence[x509.Certificate]) -> None:
    pem = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)
    _atomic_write(path, pem, 0o644)


def _write_key(path: Path, key: IssuerKey) -> None:
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _atomic_write(path, pem, 0o600)


def _atomic_write(path: Path, data: bytes, mode: int) -> None:
    # mkstemp creates the file 0600, so a key is never readable by others, even briefly.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
